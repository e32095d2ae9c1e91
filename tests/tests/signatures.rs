//! Signatures and decryption through the agent, checked by independent implementations:
//! openssl with an exact PSS salt, Python `cryptography` the way NVFlare verifies, and an
//! OAEP-SHA-256 ciphertext made by openssl decrypted by the agent.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use keyward_tests::checks::{assert_python_verifies_nvflare, openssl_oaep_encrypt};
use keyward_tests::tools::assert_success;
use keyward_tests::{openssl, AgentProcess, Site};

struct Signed {
    msg: std::path::PathBuf,
    sig: std::path::PathBuf,
    public: std::path::PathBuf,
}

fn sign(site: &Site, key: &str, profile: &str, msg: &[u8]) -> Signed {
    let tag = format!("{key}-{profile}-{}", rand::random::<u32>());
    let msg_path = site.path(&format!("{tag}.msg"));
    std::fs::write(&msg_path, msg).unwrap();
    let sig = site.path(&format!("{tag}.sig"));
    site.keyward_ok(&[
        "sign",
        key,
        "--profile",
        profile,
        "--in",
        msg_path.to_str().unwrap(),
        "--out",
        sig.to_str().unwrap(),
    ]);
    Signed { msg: msg_path, sig, public: site.public_pem(key) }
}

fn openssl_verify(s: &Signed, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["dgst", "-sha256"];
    args.extend_from_slice(extra);
    args.extend([
        "-verify",
        s.public.to_str().unwrap(),
        "-signature",
        s.sig.to_str().unwrap(),
        s.msg.to_str().unwrap(),
    ]);
    openssl(&args)
}

const PSS_222: [&str; 6] =
    ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:222", "-sigopt", "rsa_mgf1_md:sha256"];

#[test]
fn nvflare_profile_verifies_with_exact_salt_222_in_openssl_and_in_python_cryptography() {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    let _agent = AgentProcess::start(&site);
    let challenge = b"site-1b0c2d1e6-3f4a-4b5c-9d8e-7f6a5b4c3d2e";
    let s = sign(&site, "site-1", "nvflare", challenge);
    assert_eq!(std::fs::read(&s.sig).unwrap().len(), 256);
    assert_success(&openssl_verify(&s, &PSS_222), "openssl verify, salt 222");
    // The same signature with salt 32 must fail: the salt really is 222.
    let salt32 = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32", "-sigopt", "rsa_mgf1_md:sha256"];
    assert!(!openssl_verify(&s, &salt32).status.success(), "salt-32 verification unexpectedly passed");

    // NVFlare's verify_content: PSS(MGF1(SHA256), PSS.MAX_LENGTH) + SHA256; and exact 222.
    assert_python_verifies_nvflare(&s.public, &s.sig, &s.msg);
}

#[test]
fn rsa_3072_nvflare_signature_uses_salt_350() {
    let site = Site::new();
    site.generate("big", "rsa-3072");
    let _agent = AgentProcess::start(&site);
    let s = sign(&site, "big", "nvflare", b"site-1nonce");
    let salt350 =
        ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:350", "-sigopt", "rsa_mgf1_md:sha256"];
    assert_success(&openssl_verify(&s, &salt350), "openssl verify, salt 350");
}

#[test]
fn tls_profiles_verify_in_openssl_for_rsa_and_ecdsa() {
    let site = Site::new();
    site.generate("rsa", "rsa-2048");
    site.generate("ec", "p-256");
    let _agent = AgentProcess::start(&site);

    let ec = sign(&site, "ec", "tls", b"tls 1.3 certificate verify content");
    let der = std::fs::read(&ec.sig).unwrap();
    assert_eq!(der[0], 0x30, "ECDSA signature must be DER");
    assert_success(&openssl_verify(&ec, &[]), "openssl ECDSA verify");
    assert_success(&openssl_verify(&sign(&site, "ec", "tls-ecdsa-p256-sha256", b"m"), &[]), "explicit ECDSA scheme");

    let pss = sign(&site, "rsa", "tls", b"tls pss");
    let salt32 = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32", "-sigopt", "rsa_mgf1_md:sha256"];
    assert_success(&openssl_verify(&pss, &salt32), "TLS RSA-PSS-SHA256 with salt 32");

    let pkcs1 = sign(&site, "rsa", "tls-rsa-pkcs1-sha256", b"tls 1.2");
    assert_success(&openssl_verify(&pkcs1, &[]), "RSA PKCS#1 v1.5 SHA-256");

    let pss384 = sign(&site, "rsa", "tls-rsa-pss-sha384", b"tls pss 384");
    let out = openssl(&[
        "dgst",
        "-sha384",
        "-sigopt",
        "rsa_padding_mode:pss",
        "-sigopt",
        "rsa_pss_saltlen:48",
        "-sigopt",
        "rsa_mgf1_md:sha384",
        "-verify",
        pss384.public.to_str().unwrap(),
        "-signature",
        pss384.sig.to_str().unwrap(),
        pss384.msg.to_str().unwrap(),
    ]);
    assert_success(&out, "TLS RSA-PSS-SHA384 with salt 48");
}

#[test]
fn a_profile_the_key_cannot_do_is_refused_not_substituted() {
    let site = Site::new();
    site.generate("ec", "p-256");
    let _agent = AgentProcess::start(&site);
    let msg = site.path("m");
    std::fs::write(&msg, b"x").unwrap();
    let out = site.keyward(&["sign", "ec", "--profile", "nvflare", "--in", msg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unsupported") && stderr.contains("nvflare"), "{stderr}");
}

#[test]
fn an_openssl_oaep_sha256_ciphertext_decrypts_through_the_agent() {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    let _agent = AgentProcess::start(&site);
    let public = site.public_pem("site-1");
    let plain = site.path("plain");
    let aes_key: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
    std::fs::write(&plain, &aes_key).unwrap();
    let ct = site.path("ct");
    openssl_oaep_encrypt(&public, "sha256", &plain, &ct);
    let decrypted = site.path("decrypted");
    for _ in 0..2 {
        site.keyward_ok(&["decrypt", "site-1", "--in", ct.to_str().unwrap(), "--out", decrypted.to_str().unwrap()]);
        assert_eq!(std::fs::read(&decrypted).unwrap(), aes_key);
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&decrypted).unwrap().permissions().mode() & 0o777, 0o600);

    // A corrupted ciphertext is a clean `decryption_failed`, and the agent keeps serving.
    let mut bad = std::fs::read(&ct).unwrap();
    bad[100] ^= 0x55;
    let bad_ct = site.path("bad-ct");
    std::fs::write(&bad_ct, &bad).unwrap();
    let out = site.keyward(&["decrypt", "site-1", "--in", bad_ct.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("decryption_failed"), "{out:?}");
    // SHA-1 OAEP (what SoftHSM does natively) must not be accepted as SHA-256 OAEP.
    let sha1_ct = site.path("sha1-ct");
    openssl_oaep_encrypt(&public, "sha1", &plain, &sha1_ct);
    let out = site.keyward(&["decrypt", "site-1", "--in", sha1_ct.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    site.keyward_ok(&["decrypt", "site-1", "--in", ct.to_str().unwrap(), "--out", decrypted.to_str().unwrap()]);
}
