//! Wire compatibility tests: exact JSON shapes (the ones `docs/protocol.md` shows) and the
//! error classification of bad frames.

use super::*;
use crate::key::KeyId;

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
fn every_operation_decodes_from_its_own_frame_and_refuses_fields_of_others() {
    let ok = |body: &str| decode_request(body.as_bytes()).unwrap();
    assert_eq!(ok(r#"{"v":1,"id":2,"op":"hello"}"#).op, Operation::Hello);
    assert_eq!(ok(r#"{"op":"status","id":2,"v":1}"#).op, Operation::Status);
    let key = KeyId::new("k").unwrap();
    assert_eq!(ok(r#"{"v":1,"id":2,"op":"public_key","key":"k"}"#).op, Operation::PublicKey { key: key.clone() });
    assert_eq!(
        ok(r#"{"v":1,"id":2,"op":"decrypt","key":"k","data":"AAE="}"#).op,
        Operation::Decrypt { key: key.clone(), data: vec![0, 1] }
    );
    // An escaped string is decoded, not borrowed.
    let escaped = ok(r#"{"v":1,"id":2,"op":"sign","key":"k","profile":"nv\u0066lare","data":""}"#);
    assert_eq!(escaped.op, Operation::Sign { key, profile: "nvflare".into(), data: Vec::new() });
    let e = decode_request(br#"{"v":1,"id":2,"op":"public_key","key":"k","data":""}"#).unwrap_err();
    assert_eq!((e.code, e.message.as_str()), (ErrorCode::InvalidRequest, "invalid request: unknown field `data`"));
    let e = decode_request(br#"{"v":1,"id":2,"op":"sign","key":"k","profile":7,"data":""}"#).unwrap_err();
    assert_eq!(e.message, "invalid request: field `profile` must be a string");
    let e = decode_request(br#"{"v":1,"id":2,"op":"sign","key":"k","profile":"tls"}"#).unwrap_err();
    assert_eq!(e.message, "invalid request: missing field `data`");
}

#[test]
fn a_repeated_key_anywhere_is_malformed_even_inside_an_unknown_field() {
    let code = |body: &str| decode_request(body.as_bytes()).unwrap_err().code;
    assert_eq!(code(r#"{"v":1,"id":1,"op":"hello","x":{"a":1,"a":2}}"#), ErrorCode::MalformedRequest);
    assert_eq!(code(r#"{"v":1,"id":1,"op":"hello","x":1,"x":1}"#), ErrorCode::MalformedRequest);
    assert_eq!(code(r#"[{"a":1,"a":2}]"#), ErrorCode::MalformedRequest);
    assert_eq!(code(r#"{"v":1,"id":1,"op":"hello"} x"#), ErrorCode::MalformedRequest);
    assert_eq!(code(r#"{"v":-1,"id":1,"op":"hello"}"#), ErrorCode::UnsupportedVersion);
    assert_eq!(code(r#"{"v":1,"id":-1,"op":"hello"}"#), ErrorCode::InvalidRequest);
}
