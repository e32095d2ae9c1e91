//! Wire compatibility tests: exact JSON shapes (the ones `docs/protocol.md` shows) and the
//! error classification of bad frames.

use super::*;
use keyward_core::KeyId;

#[test]
fn sign_request_has_the_documented_shape() {
    let req = Request {
        v: 1,
        id: 7,
        op: Operation::Sign { key: KeyId::new("site-1").unwrap(), profile: "nvflare".into(), data: b"hi".to_vec() },
    };
    let json = serde_json::to_string(&req).unwrap();
    assert_eq!(json, r#"{"v":1,"id":7,"op":"sign","key":"site-1","profile":"nvflare","data":"aGk="}"#);
    assert_eq!(decode_request(json.as_bytes()).unwrap(), req);
}

#[test]
fn replies_have_the_documented_shape() {
    let ok = Response::ok(7, Reply::Signature { profile: "nvflare".into(), signature: vec![1, 2] });
    assert_eq!(
        serde_json::to_string(&ok).unwrap(),
        r#"{"v":1,"id":7,"status":"ok","body":{"kind":"signature","profile":"nvflare","signature":"AQI="}}"#
    );
    let err = Response::error(7, ErrorCode::UnknownKey, "no key named `x`");
    assert_eq!(
        serde_json::to_string(&err).unwrap(),
        r#"{"v":1,"id":7,"status":"error","body":{"code":"unknown_key","message":"no key named `x`"}}"#
    );
    let back: Response = serde_json::from_str(&serde_json::to_string(&ok).unwrap()).unwrap();
    assert_eq!(back, ok);
}

#[test]
fn bad_frames_get_precise_codes() {
    let code = |body: &str| decode_request(body.as_bytes()).unwrap_err().code;
    assert_eq!(code("\u{1}garbage"), ErrorCode::MalformedRequest);
    assert_eq!(code("[1,2]"), ErrorCode::MalformedRequest);
    assert_eq!(code(r#"{"id":1,"op":"hello"}"#), ErrorCode::UnsupportedVersion);
    assert_eq!(code(r#"{"v":9,"id":1,"op":"hello"}"#), ErrorCode::UnsupportedVersion);
    assert_eq!(code(r#"{"v":1,"id":1,"op":"format_disk"}"#), ErrorCode::UnknownOperation);
    assert_eq!(code(r#"{"v":1,"id":1,"op":"sign","key":"k"}"#), ErrorCode::InvalidRequest);
    assert_eq!(
        code(r#"{"v":1,"id":1,"op":"sign","key":"../k","profile":"nvflare","data":""}"#),
        ErrorCode::InvalidRequest
    );
    assert_eq!(code(r#"{"v":1,"id":1,"op":"decrypt","key":"k","data":"***"}"#), ErrorCode::InvalidRequest);
    assert_eq!(code(r#"{"v":1,"id":1,"op":"hello","extra":1}"#), ErrorCode::InvalidRequest);
    assert_eq!(code(r#"{"v":1.0,"id":1,"op":"hello"}"#), ErrorCode::UnsupportedVersion);
    let long = format!(r#"{{"v":1,"id":1,"op":"sign","key":"k","profile":"{}","data":""}}"#, "p".repeat(65));
    assert_eq!(code(&long), ErrorCode::InvalidRequest);
    let e = decode_request(br#"{"v":1,"id":5,"op":"nope"}"#).unwrap_err();
    assert_eq!(e.id, Some(5));
}

#[test]
fn a_repeated_key_is_a_malformed_request_naming_the_key() {
    let e = decode_request(br#"{"v":1,"id":3,"op":"sign","key":"k","profile":"tls","profile":"nvflare","data":""}"#)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::MalformedRequest);
    assert_eq!(e.message, "frame is not valid JSON: duplicate key `profile`");
    let twice_op = decode_request(br#"{"v":1,"id":3,"op":"hello","op":"status"}"#).unwrap_err();
    assert_eq!(twice_op.code, ErrorCode::MalformedRequest);
}

#[test]
fn the_sign_fast_path_accepts_exactly_what_the_general_path_accepts() {
    let valid = r#"{"v":1,"id":7,"op":"sign","key":"site-1","profile":"nvflare","data":"aGk="}"#;
    let frames = [
        valid,
        r#" {"data":"aGk=","profile":"tls","key":"k","op":"sign","id":18446744073709551615,"v":1} "#,
        r#"{"v":1,"id":7,"op":"sign","key":"site-1","profile":"nvfl\u0061re","data":"aGk="}"#,
        r#"{"v":1,"id":7,"op":"sign","key":"site-1","profile":"","data":""}"#,
        r#"[1,7,"sign","site-1","nvflare","aGk="]"#,
        r#"{"v":1,"id":7,"op":"sign","key":"site-1","profile":"nvflare","data":"aGk=","extra":1}"#,
        r#"{"v":1,"id":7,"op":"sign","key":"site-1","key":"other","profile":"nvflare","data":"aGk="}"#,
        r#"{"v":1,"id":7,"op":"sign","key":"site-1","profile":"nvflare"}"#,
        r#"{"v":2,"id":7,"op":"sign","key":"site-1","profile":"nvflare","data":"aGk="}"#,
        r#"{"v":65537,"id":7,"op":"sign","key":"site-1","profile":"nvflare","data":"aGk="}"#,
        r#"{"v":1,"id":-7,"op":"sign","key":"site-1","profile":"nvflare","data":"aGk="}"#,
        r#"{"v":1,"id":7.0,"op":"sign","key":"site-1","profile":"nvflare","data":"aGk="}"#,
        r#"{"v":1,"id":7,"op":"decrypt","key":"site-1","profile":"nvflare","data":"aGk="}"#,
        r#"{"v":1,"id":7,"op":"sign","key":"../x","profile":"nvflare","data":"aGk="}"#,
        r#"{"v":1,"id":7,"op":"sign","key":"site-1","profile":{"a":1},"data":"aGk="}"#,
        r#"{"v":1,"id":7,"op":"sign","key":"site-1","profile":"nvflare","data":"***"}"#,
        r#"{"v":1,"id":7,"op":"sign","key":"site-1","profile":"nvflare","data":"aGk="} x"#,
        r#"{"v":1,"id":7,"op":"sign","key":"site-1","profile":"nvflare","data":null}"#,
    ];
    let long = valid.replace("nvflare", &"p".repeat(MAX_PROFILE_NAME + 1));
    let mut vectors: Vec<String> = frames.iter().map(|f| (*f).to_owned()).chain([long]).collect();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/ops")).unwrap() {
        let vector: serde_json::Value = serde_json::from_slice(&std::fs::read(entry.unwrap().path()).unwrap()).unwrap();
        vectors.push(vector["request"].to_string());
    }
    let mut fast = 0;
    for body in &vectors {
        let general = request::decode_general(body.as_bytes());
        match sign_fast::decode(body.as_bytes()) {
            Some(request) => {
                fast += 1;
                assert_eq!(Ok(request), general, "{body}");
            }
            None => assert!(general.as_ref().map_or(true, |r| r.op.name() != "sign"), "{body}: {general:?}"),
        }
    }
    assert!(fast >= 5, "the valid sign frames take the fast path ({fast})");
}
