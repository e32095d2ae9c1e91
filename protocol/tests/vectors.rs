//! The golden vectors in `vectors/` against the types: the operation list and the error-code
//! list come from the types ([`OpKind::ALL`], [`ErrorCode::ALL`]); every operation has a
//! vector, every vector decodes to its operation and re-encodes to the same bytes, and its
//! fields are exactly the operation's. `python/tests/unit` reads the same files.
//!
//! To add the vector of a new operation, give it an example in [`example`] and run
//! `KEYWARD_WRITE_VECTORS=1 cargo test -p keyward-protocol --test vectors` once: it writes
//! the files that are missing (never overwrites one), then check them in.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod vector_files;

use keyward_core::{KeyAlgorithm, KeyId};
use keyward_protocol::{
    decode_request, encode_frame, ErrorCode, KeyEntry, KeyStatus, OpKind, OpLatency, Operation, Outcome, Reply,
    Request, Response, StatusReport,
};
use serde_json::{json, Value};
use vector_files::{error_codes_file, op_vector_names, read_json, vectors_dir, OpVector};

fn key(name: &str) -> KeyId {
    KeyId::new(name).unwrap()
}

/// One request and its reply for `kind`: the values the vector files were written from.
fn example(kind: OpKind) -> (Operation, Reply) {
    const NONCE: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
    const SESSION: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
    match kind {
        OpKind::Hello => {
            (Operation::Hello, Reply::Hello { agent: "keyward 0.1.0".into(), protocol: 1, backend: "pkcs11".into() })
        }
        OpKind::ListKeys => (
            Operation::ListKeys,
            Reply::Keys {
                keys: vec![KeyEntry {
                    key: key("site-1"),
                    algorithm: KeyAlgorithm::Rsa2048,
                    generated_on_device: true,
                    has_certificate: true,
                    empty_auth: false,
                }],
            },
        ),
        OpKind::PublicKey => (
            Operation::PublicKey { key: key("ec-1") },
            Reply::PublicKey {
                key: key("ec-1"),
                algorithm: KeyAlgorithm::EcP256,
                spki_der: vec![0x30, 0x59, 0x30, 0x13],
                certificate_pem: None,
            },
        ),
        OpKind::Sign => (
            Operation::Sign { key: key("site-1"), profile: "nvflare".into(), data: b"hi".to_vec() },
            Reply::Signature { profile: "nvflare".into(), signature: vec![1, 2] },
        ),
        OpKind::Decrypt => (
            Operation::Decrypt { key: key("site-1"), data: vec![0xff, 0x00] },
            Reply::Plaintext { plaintext: b"secret".to_vec() },
        ),
        OpKind::Status => (
            Operation::Status,
            Reply::Status(StatusReport {
                backend_health: "ok".into(),
                backend_error: None,
                backend_recovery_attempts: 0,
                backend: "pkcs11".into(),
                device: "token `fl-site` (SoftHSM project SoftHSM v2 serial 12bdb46c7f9405e2)".into(),
                uptime_seconds: 10,
                connections: 1,
                requests_ok: 8,
                requests_failed: 6,
                signatures: 3,
                decryptions: 0,
                workers: 2,
                keys: vec![KeyStatus {
                    key: key("site-1"),
                    algorithm: KeyAlgorithm::Rsa2048,
                    certificate_not_after: Some(1_893_456_000),
                    certificate_seconds_to_expiry: Some(86_400_000),
                    renewal: Some("valid".into()),
                    key_age_seconds: Some(2_592_000),
                    key_age_exceeded: false,
                    empty_auth: false,
                }],
                latency: vec![OpLatency { op: "sign".into(), count: 3, p50_us: 610, p99_us: 990 }],
            }),
        ),
        OpKind::NvflareChallenge => {
            (Operation::NvflareChallenge { key: key("site-1") }, Reply::NvflareChallenge { nonce: NONCE.into() })
        }
        OpKind::NvflareRegister => (
            Operation::NvflareRegister {
                key: key("site-1"),
                client_nonce: NONCE.into(),
                server_cert: b"-----BEGIN CERTIFICATE-----\n".to_vec(),
                server_cn: "server1".into(),
                server_signature: vec![3, 4],
                server_nonce: "3f2504e0-4f89-41d3-9a0c-0305e82c3301".into(),
            },
            Reply::NvflareRegistration {
                cn: "site-1".into(),
                cert: b"-----BEGIN CERTIFICATE-----\n".to_vec(),
                signature: vec![5, 6],
                session: SESSION.into(),
            },
        ),
        OpKind::NvflareVerifyToken => (
            Operation::NvflareVerifyToken {
                session: SESSION.into(),
                client_name: "site-1".into(),
                token: "3f2504e0-4f89-41d3-9a0c-0305e82c3301".into(),
                token_signature: "AQI=".into(),
            },
            Reply::TokenVerified { server_cn: "server1".into() },
        ),
        OpKind::RetireKey => (
            Operation::RetireKey { key: key("site-1"), replaced_by: key("site-1-2") },
            Reply::KeyRetired { key: key("site-1"), replaced_by: key("site-1-2"), audit_seq: 42 },
        ),
        OpKind::NvflareServerChallenge => (
            Operation::NvflareServerChallenge { key: key("server1"), client_nonce: NONCE.into() },
            Reply::NvflareServerChallenge {
                cn: "server1".into(),
                nonce: "3f2504e0-4f89-41d3-9a0c-0305e82c3301".into(),
                signature: vec![5, 6],
            },
        ),
        OpKind::NvflareServerRegister => (
            Operation::NvflareServerRegister {
                key: key("server1"),
                server_nonce: "3f2504e0-4f89-41d3-9a0c-0305e82c3301".into(),
                client_name: "site-1".into(),
                client_cert: b"-----BEGIN CERTIFICATE-----\n".to_vec(),
                client_signature: vec![3, 4],
                token: SESSION.into(),
            },
            Reply::NvflareClientRegistered { client_cn: "site-1".into(), token_signature: vec![5, 6] },
        ),
    }
}

/// The request id a new vector uses: its operation's place in [`OpKind::ALL`], from 1.
fn example_id(kind: OpKind) -> u64 {
    OpKind::ALL.iter().position(|k| *k == kind).map_or(0, |i| i as u64 + 1)
}

fn write_missing_vectors() {
    for kind in OpKind::ALL {
        let path = vectors_dir().join("ops").join(format!("{}.json", kind.name()));
        if path.exists() {
            continue;
        }
        let (op, reply) = example(*kind);
        let id = example_id(*kind);
        let request = encode_frame(&Request { v: 1, id, op }).unwrap();
        let response = encode_frame(&Response::ok(id, reply)).unwrap();
        std::fs::write(&path, OpVector::render(kind.name(), &request, &response)).unwrap();
        eprintln!("wrote {}", path.display());
    }
    let path = error_codes_file();
    if !path.exists() {
        let example = encode_frame(&Response::error(7, ErrorCode::UnknownKey, "no key named `x`")).unwrap();
        let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        let table = json!({
            "codes": codes,
            "example": {
                "reply": serde_json::from_slice::<Value>(&example[4..]).unwrap(),
                "reply_frame": hex::encode(&example),
            },
        });
        std::fs::write(&path, serde_json::to_string_pretty(&table).unwrap() + "\n").unwrap();
        eprintln!("wrote {}", path.display());
    }
}

#[test]
fn every_operation_has_a_vector_and_every_vector_is_an_operation() {
    if std::env::var_os("KEYWARD_WRITE_VECTORS").is_some() {
        write_missing_vectors();
    }
    let mut from_types: Vec<&str> = OpKind::ALL.iter().map(|k| k.name()).collect();
    from_types.sort_unstable();
    assert_eq!(op_vector_names(), from_types, "vectors/ops/*.json against OpKind::ALL");
}

#[test]
fn each_request_vector_decodes_to_its_operation_and_re_encodes_to_the_same_bytes() {
    for kind in OpKind::ALL {
        let spec = kind.spec();
        let vector = OpVector::load(kind.name());
        let body = vector.request_body();
        let request = decode_request(body).unwrap_or_else(|e| panic!("`{kind}`: {e}"));
        assert_eq!(request.op.kind(), *kind);
        assert_eq!(request.op.key().is_some(), spec.keyed, "`{kind}`");
        assert_eq!(encode_frame(&request).unwrap(), vector.request_frame, "`{kind}` re-encoded");
        assert_eq!(serde_json::from_slice::<Value>(body).unwrap(), vector.request, "`{kind}`: `request`");
        assert_eq!(request.op, example(*kind).0, "`{kind}`: the vector is the example it was written from");

        // Its fields are the operation's: each is required, no other is accepted.
        let object = vector.request.as_object().unwrap();
        let mut fields: Vec<&str> =
            object.keys().map(String::as_str).filter(|k| !["v", "id", "op"].contains(k)).collect();
        let mut listed = spec.fields.to_vec();
        fields.sort_unstable();
        listed.sort_unstable();
        assert_eq!(fields, listed, "`{kind}`: request fields against ops/{kind}.rs");
        for field in spec.fields {
            let mut without = object.clone();
            without.remove(*field);
            let e = decode_request(&serde_json::to_vec(&without).unwrap()).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidRequest, "`{kind}` without `{field}`");
        }
        let mut extra = object.clone();
        extra.insert("verbose".into(), json!(true));
        let e = decode_request(&serde_json::to_vec(&extra).unwrap()).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::InvalidRequest, "invalid request: unknown field `verbose`")
        );
        for (field, max) in spec.text_limits {
            let mut long = object.clone();
            long.insert((*field).into(), json!("x".repeat(max + 1)));
            let e = decode_request(&serde_json::to_vec(&long).unwrap()).unwrap_err();
            assert_eq!(e.message, format!("invalid request: `{field}` longer than {max} bytes"), "`{kind}`");
        }
    }
}

#[test]
fn each_reply_vector_is_its_operations_kind_and_re_encodes_to_the_same_bytes() {
    for kind in OpKind::ALL {
        let vector = OpVector::load(kind.name());
        let body = vector.reply_body();
        let response: Response = serde_json::from_slice(body).unwrap_or_else(|e| panic!("`{kind}`: {e}"));
        assert_eq!(response.id, decode_request(vector.request_body()).unwrap().id, "`{kind}`: reply id");
        assert!(matches!(response.outcome, Outcome::Ok(_)), "`{kind}`");
        assert_eq!(vector.reply["body"]["kind"], kind.spec().reply_kind, "`{kind}`: reply kind");
        assert_eq!(encode_frame(&response).unwrap(), vector.reply_frame, "`{kind}` re-encoded");
        assert_eq!(serde_json::from_slice::<Value>(body).unwrap(), vector.reply, "`{kind}`: `reply`");
        assert_eq!(response, Response::ok(response.id, example(*kind).1), "`{kind}`");
    }
}

#[test]
fn the_error_code_table_is_the_types_list() {
    let table = read_json(&error_codes_file());
    let listed: Vec<&str> = table["codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    let from_types: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(listed, from_types, "vectors/error_codes.json `codes` against ErrorCode::ALL");

    let example = &table["example"];
    let frame = hex::decode(example["reply_frame"].as_str().unwrap()).unwrap();
    let response: Response = serde_json::from_slice(&frame[4..]).unwrap();
    assert!(matches!(response.outcome, Outcome::Error(_)));
    assert_eq!(encode_frame(&response).unwrap(), frame);
    assert_eq!(serde_json::from_slice::<Value>(&frame[4..]).unwrap(), example["reply"]);
}
