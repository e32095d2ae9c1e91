//! The server-reply checks against certificates made here with rcgen (a project root CA and
//! a server certificate shaped like `nvflare provision`'s) and PSS signatures made with the
//! `rsa` crate at NVFlare's maximum salt. The same checks run against the real `nvflare`
//! package in the Python end-to-end tests.

use std::time::SystemTime;

use base64::Engine;
use rcgen::{ExtendedKeyUsagePurpose, KeyUsagePurpose};

use super::*;
use crate::nvflare::test_pki::{leaf_cert as server_cert, project_ca, project_ca_with, pss_sign, pss_sign_with_salt};

const NONCE: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

fn check(trust: &ServerTrust, cert: &str, cn: &str, sig: &[u8]) -> Result<VerifiedServer, ChallengeError> {
    trust.verify_reply(&ServerReply { cert_pem: cert.as_bytes(), cn, signature: sig }, NONCE, SystemTime::now())
}

#[test]
fn a_genuine_reply_verifies_and_its_token_signature_too() {
    let pki = project_ca("example_project");
    let (key, cert) = server_cert(&pki, "server1", |_| {});
    let trust = ServerTrust::new(pki.ca_pem.as_bytes(), "server1").unwrap();
    let sig = pss_sign(&key, format!("server1{NONCE}").as_bytes());
    let server = check(&trust, &cert, "server1", &sig).unwrap();
    assert_eq!(server.cn, "server1");

    let token = "6f1d2b3e-2a6b-4d0e-9a37-3c1f7e8d9b10";
    let token_sig =
        base64::engine::general_purpose::STANDARD.encode(pss_sign(&key, format!("site-1{token}").as_bytes()));
    assert_eq!(server.verify_token("site-1", token, &token_sig), Ok(()));
    assert_eq!(server.verify_token("site-2", token, &token_sig), Err(ChallengeError::BadTokenSignature));
    assert_eq!(
        server.verify_token("site-1", token, "%%%"),
        Err(ChallengeError::Malformed("token signature (not base64)"))
    );
}

#[test]
fn every_class_of_forged_reply_is_refused_with_its_own_error() {
    let pki = project_ca("example_project");
    let trust = ServerTrust::new(pki.ca_pem.as_bytes(), "server1").unwrap();
    let (key, cert) = server_cert(&pki, "server1", |_| {});
    let good_sig = pss_sign(&key, format!("server1{NONCE}").as_bytes());

    // Another project's CA issued an otherwise perfect certificate.
    let rogue = project_ca("example_project");
    let (rogue_key, rogue_cert) = server_cert(&rogue, "server1", |_| {});
    let rogue_sig = pss_sign(&rogue_key, format!("server1{NONCE}").as_bytes());
    assert!(matches!(check(&trust, &rogue_cert, "server1", &rogue_sig), Err(ChallengeError::Untrusted(_))));

    // The reply claims another server name than the one configured.
    let claimed = check(&trust, &cert, "server2", &good_sig).unwrap_err();
    assert!(matches!(claimed, ChallengeError::IdentityMismatch { .. }));
    assert_eq!(
        claimed.to_string(),
        "server identity mismatch: expected `server1` (servers[0].identity), the server's reply claims `server2`"
    );

    // A certificate for another name, claiming the configured one: the message names the
    // configured identity and the certificate's CN (not the reply's claim as "expected").
    let (other_key, other_cert) = server_cert(&pki, "server2", |_| {});
    let other_sig = pss_sign(&other_key, format!("server1{NONCE}").as_bytes());
    let presented = check(&trust, &other_cert, "server1", &other_sig).unwrap_err();
    assert!(matches!(presented, ChallengeError::CertificateNameMismatch { .. }));
    assert_eq!(
        presented.to_string(),
        "server identity mismatch: expected `server1`, the server's certificate is issued to `server2`"
    );

    // Expired.
    let (old_key, old_cert) = server_cert(&pki, "server1", |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let old_sig = pss_sign(&old_key, format!("server1{NONCE}").as_bytes());
    assert_eq!(check(&trust, &old_cert, "server1", &old_sig), Err(ChallengeError::Expired));

    // EKU present without serverAuth; KU present without digitalSignature.
    let (eku_key, eku_cert) =
        server_cert(&pki, "server1", |p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth]);
    let eku_sig = pss_sign(&eku_key, format!("server1{NONCE}").as_bytes());
    assert!(matches!(check(&trust, &eku_cert, "server1", &eku_sig), Err(ChallengeError::Usage(_))));
    let (ku_key, ku_cert) = server_cert(&pki, "server1", |p| p.key_usages = vec![KeyUsagePurpose::KeyEncipherment]);
    let ku_sig = pss_sign(&ku_key, format!("server1{NONCE}").as_bytes());
    assert!(matches!(check(&trust, &ku_cert, "server1", &ku_sig), Err(ChallengeError::Usage(_))));

    // A signature over another nonce, a corrupted one, and one by another key.
    let stale = pss_sign(&key, b"server1another-nonce");
    assert_eq!(check(&trust, &cert, "server1", &stale), Err(ChallengeError::BadServerSignature));
    let mut corrupt = good_sig.clone();
    corrupt[5] ^= 0x40;
    assert_eq!(check(&trust, &cert, "server1", &corrupt), Err(ChallengeError::BadServerSignature));
    assert_eq!(check(&trust, &cert, "server1", &other_sig), Err(ChallengeError::BadServerSignature));

    // Garbage instead of a certificate.
    assert!(matches!(check(&trust, "not pem", "server1", &good_sig), Err(ChallengeError::Malformed(_))));
    // And the genuine one, last, still passes — with salt 32 as a TPM would make it.
    let tpm_style = pss_sign_with_salt(&key, format!("server1{NONCE}").as_bytes(), 32);
    assert!(check(&trust, &cert, "server1", &tpm_style).is_ok());
}

#[test]
fn an_expired_root_ca_is_refused() {
    let pki = project_ca_with("example_project", |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let (key, cert) = server_cert(&pki, "server1", |_| {});
    let trust = ServerTrust::new(pki.ca_pem.as_bytes(), "server1").unwrap();
    let sig = pss_sign(&key, format!("server1{NONCE}").as_bytes());
    assert_eq!(check(&trust, &cert, "server1", &sig), Err(ChallengeError::Expired));
}

#[test]
fn registration_message_is_cn_then_nonce_in_utf8() {
    assert_eq!(registration_message("site-1", NONCE).len(), 42);
    assert_eq!(registration_message("site-1", "n"), b"site-1n");
}
