//! The registration checks the server's agent makes, against certificates made here with
//! rcgen (a project root CA and client certificates shaped like `nvflare provision`'s: SAN
//! only, no KeyUsage/EKU) and PSS signatures made with the `rsa` crate at NVFlare's maximum
//! salt. The same flow runs against the real `nvflare` server in the Python end-to-end tests.

use std::time::SystemTime;

use rcgen::{ExtendedKeyUsagePurpose, KeyUsagePurpose};

use super::*;
use crate::nvflare::test_pki::{leaf_cert as client_cert, project_ca, pss_sign};

const SERVER_NONCE: &str = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";

fn check(trust: &ClientTrust, name: &str, cert: &str, sig: &[u8]) -> Result<VerifiedClient, ChallengeError> {
    let reg = ClientRegistration { client_name: name, cert_pem: cert.as_bytes(), signature: sig };
    trust.verify_registration(&reg, SERVER_NONCE, SystemTime::now())
}

#[test]
fn a_registration_signed_by_a_certified_client_is_accepted() {
    let pki = project_ca("project");
    let (key, cert) = client_cert(&pki, "site-1", |_| {});
    let trust = ClientTrust::new(pki.ca_pem.as_bytes()).unwrap();
    let sig = pss_sign(&key, format!("site-1{SERVER_NONCE}").as_bytes());
    assert_eq!(check(&trust, "site-1", &cert, &sig), Ok(VerifiedClient { cn: "site-1".into() }));
}

#[test]
fn a_client_of_another_root_is_untrusted() {
    let pki = project_ca("project");
    let rogue = project_ca("project");
    let (key, cert) = client_cert(&rogue, "site-1", |_| {});
    let trust = ClientTrust::new(pki.ca_pem.as_bytes()).unwrap();
    let sig = pss_sign(&key, format!("site-1{SERVER_NONCE}").as_bytes());
    assert!(matches!(check(&trust, "site-1", &cert, &sig), Err(ChallengeError::ClientUntrusted(_))));
}

#[test]
fn a_certificate_for_servers_only_or_without_digital_signature_is_refused() {
    let pki = project_ca("project");
    let trust = ClientTrust::new(pki.ca_pem.as_bytes()).unwrap();
    let (key, cert) =
        client_cert(&pki, "site-1", |p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]);
    let sig = pss_sign(&key, format!("site-1{SERVER_NONCE}").as_bytes());
    assert_eq!(
        check(&trust, "site-1", &cert, &sig),
        Err(ChallengeError::ClientUntrusted("ExtendedKeyUsage lacks clientAuth".into()))
    );
    let (key, cert) = client_cert(&pki, "site-1", |p| p.key_usages = vec![KeyUsagePurpose::KeyEncipherment]);
    let sig = pss_sign(&key, format!("site-1{SERVER_NONCE}").as_bytes());
    assert_eq!(
        check(&trust, "site-1", &cert, &sig),
        Err(ChallengeError::ClientUntrusted("KeyUsage lacks digitalSignature".into()))
    );
}

#[test]
fn a_registration_under_another_name_than_the_certificate_is_refused() {
    let pki = project_ca("project");
    let (key, cert) = client_cert(&pki, "site-1", |_| {});
    let trust = ClientTrust::new(pki.ca_pem.as_bytes()).unwrap();
    let sig = pss_sign(&key, format!("site-2{SERVER_NONCE}").as_bytes());
    assert_eq!(
        check(&trust, "site-2", &cert, &sig),
        Err(ChallengeError::ClientNameMismatch { claimed: "site-2".into(), presented: "site-1".into() })
    );
}

#[test]
fn a_signature_over_another_nonce_or_by_another_key_is_refused() {
    let pki = project_ca("project");
    let (key, cert) = client_cert(&pki, "site-1", |_| {});
    let (other, _) = client_cert(&pki, "site-1", |_| {});
    let trust = ClientTrust::new(pki.ca_pem.as_bytes()).unwrap();
    let stale = pss_sign(&key, b"site-10b4d07b5-5c3c-4b0e-9c5e-2f1d2a7f6c11");
    assert_eq!(check(&trust, "site-1", &cert, &stale), Err(ChallengeError::BadClientSignature));
    let forged = pss_sign(&other, format!("site-1{SERVER_NONCE}").as_bytes());
    assert_eq!(check(&trust, "site-1", &cert, &forged), Err(ChallengeError::BadClientSignature));
}

#[test]
fn the_messages_the_server_key_signs_are_nvflares() {
    assert_eq!(challenge_reply_message("server1", "n"), b"server1n".to_vec());
    assert_eq!(token_message("site-1", SERVER_NONCE).len(), 42);
}
