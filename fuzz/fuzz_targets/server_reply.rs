//! `ServerTrust::verify_reply`, the check of an NVFlare server's challenge reply, which
//! comes from the network: the server certificate (PEM, or DER wrapped in PEM) and the
//! signature are fuzz input; the root CA (`seeds/pki/rootCA.pem`), the CN, the nonce and
//! the clock are fixed, so that a seed made from the real server certificate and signature
//! passes every check and mutations explore each one.
//!
//! Input: byte 0 picks PEM or DER (see `common.rs`), bytes 1–2 are the certificate length
//! (big-endian), then the certificate, then the signature.

#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use keyward_core::nvflare::{ServerReply, ServerTrust};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

const ROOT_CA: &[u8] = include_bytes!("../seeds/pki/rootCA.pem");
const SERVER_CN: &str = "server";
const NONCE: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
/// 2030-01-01T00:00:00Z, inside the validity of the seed certificates.
const NOW_UNIX: u64 = 1_893_456_000;

fn trust() -> &'static ServerTrust {
    static TRUST: OnceLock<ServerTrust> = OnceLock::new();
    TRUST.get_or_init(|| ServerTrust::new(ROOT_CA, SERVER_CN).expect("fixed root CA parses"))
}

fuzz_target!(|data: &[u8]| {
    let [mode, hi, lo, rest @ ..] = data else { return };
    let (cert, signature) = rest.split_at(usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len()));
    let mut framed = vec![*mode];
    framed.extend_from_slice(cert);
    let cert_pem = common::pem_input(&framed, "CERTIFICATE");
    let reply = ServerReply { cert_pem: &cert_pem, cn: SERVER_CN, signature };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_UNIX);
    if let Ok(verified) = trust().verify_reply(&reply, NONCE, now) {
        assert_eq!(verified.cn, SERVER_CN);
        let _ = verified.verify_token("site-1", "token", "AAAA");
    }
});
