//! `PrivateKeyMaterial::from_pem`, the parser of a site's existing `client.key` for a
//! one-time import (`keyward key import`): PKCS#1, PKCS#8 and SEC1 in PEM. The first byte
//! picks raw PEM text or DER under one of the three PEM tags.

#![no_main]

use keyward_core::private_key::PrivateKeyMaterial;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

const TAGS: [&str; 3] = ["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY"];

fuzz_target!(|data: &[u8]| {
    let tag = TAGS[usize::from(data.first().copied().unwrap_or(0) / 2) % TAGS.len()];
    let input = common::pem_input(data, tag);
    if let Ok(key) = PrivateKeyMaterial::from_pem(&input) {
        assert!(!key.public_key().spki_der.is_empty());
        let _ = format!("{key:?}");
    }
});
