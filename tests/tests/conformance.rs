//! One conformance suite, the same cases on both backends: every case is a function over
//! [`AgentSite`], instantiated once for a real SoftHSM2 token and once for a real swtpm.
//! Keys are generated and imported through the `keyward` CLI and used through a running
//! agent; every signature is checked by openssl with the exact PSS salt, and the `nvflare`
//! profile also by the real `nvflare` package's `verify_content`.
//!
//! Backend-specific behaviour (token attributes, TPM object attributes, swtpm restarts,
//! PIN and auth-value handling) is in `token_keys.rs`, `pin_handling.rs` and
//! `tpm_backend.rs`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};

use keyward_tests::checks::{assert_python_verifies_nvflare, openssl_oaep_encrypt, openssl_verifies, pss_sigopts};
use keyward_tests::tools::assert_success;
use keyward_tests::{openssl, AgentProcess, AgentSite};

/// Signs `msg` with `key` and `profile` through the agent; returns (message, signature) paths.
fn verifies(public: &Path, (msg, sig): &(PathBuf, PathBuf), digest: &str, extra: &[&str]) -> bool {
    openssl_verifies(public, msg, sig, digest, extra)
}

fn key_list(site: &impl AgentSite) -> String {
    String::from_utf8(site.keyward_ok(&["key", "list"]).stdout).unwrap()
}

/// A fresh private key PEM made by openssl (`genpkey` arguments).
fn openssl_key(site: &impl AgentSite, name: &str, genpkey: &[&str]) -> PathBuf {
    let path = site.path(&format!("{name}.key.pem"));
    let mut args = vec!["genpkey"];
    args.extend_from_slice(genpkey);
    args.extend(["-out", path.to_str().unwrap()]);
    assert_success(&openssl(&args), "openssl genpkey");
    path
}

fn spki_der_of_private(pem: &Path) -> Vec<u8> {
    let out = openssl(&["pkey", "-in", pem.to_str().unwrap(), "-pubout", "-outform", "DER"]);
    assert_success(&out, "openssl pkey -pubout");
    out.stdout
}

fn spki_der_of_public(pem: &Path) -> Vec<u8> {
    let out = openssl(&["pkey", "-pubin", "-in", pem.to_str().unwrap(), "-outform", "DER"]);
    assert_success(&out, "openssl pkey -pubin");
    out.stdout
}

fn generated_keys_are_listed_as_generated_and_never_overwritten(site: &impl AgentSite) {
    site.generate("rsa", "rsa-2048");
    site.generate("ec", "p-256");
    let before = spki_der_of_public(&site.public_pem("rsa"));

    let out = site.keyward(&["key", "generate", "rsa", "--algorithm", "p-256"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"), "{out:?}");
    assert_eq!(spki_der_of_public(&site.public_pem("rsa")), before, "the existing key changed");

    let list = key_list(site);
    for (name, algorithm) in [("rsa", "rsa-2048"), ("ec", "p-256")] {
        let line = list.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{list}"));
        assert!(line.contains(algorithm) && line.contains("generated"), "{line}");
    }
    let _agent = AgentProcess::start(site);
    let public = site.public_pem("rsa");
    let salt222 = pss_sigopts("rsa_pss_saltlen:222", "rsa_mgf1_md:sha256");
    assert!(verifies(&public, &site.sign_file("rsa", "nvflare", b"still the old key"), "-sha256", &salt222));
}

fn imported_keys_match_their_source_and_the_source_is_destroyed(site: &impl AgentSite) {
    for (name, genpkey, algorithm) in [
        ("imp-rsa", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..], "rsa-2048"),
        ("imp-ec", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"][..], "p-256"),
    ] {
        let source = openssl_key(site, name, genpkey);
        let expected = spki_der_of_private(&source);
        site.keyward_ok(&["key", "import", name, "--from", source.to_str().unwrap(), "--destroy-source"]);
        assert!(!source.exists(), "--destroy-source left `{}`", source.display());
        assert_eq!(spki_der_of_public(&site.public_pem(name)), expected, "{name}: public key differs from the source");
        let list = key_list(site);
        let line = list.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{list}"));
        assert!(line.contains(algorithm) && line.contains("imported"), "an imported key must say so: {line}");

        // Importing again under the same name is refused, like generating.
        let again = openssl_key(site, &format!("{name}-2"), genpkey);
        let out = site.keyward(&["key", "import", name, "--from", again.to_str().unwrap(), "--destroy-source"]);
        assert_eq!(out.status.code(), Some(5), "{out:?}");
        assert!(again.exists(), "a refused import must not destroy its source");
        assert_eq!(spki_der_of_public(&site.public_pem(name)), expected);
    }
    let _agent = AgentProcess::start(site);
    let public = site.public_pem("imp-rsa");
    let signed = site.sign_file("imp-rsa", "nvflare", b"site-1 registration from an imported key");
    assert_python_verifies_nvflare(&public, &signed.1, &signed.0);
    let ecdsa = site.sign_file("imp-ec", "tls", b"imported ec");
    assert!(verifies(&site.public_pem("imp-ec"), &ecdsa, "-sha256", &[]));
}

fn nvflare_profile_has_the_maximum_salt_and_passes_nvflares_verifier(site: &impl AgentSite) {
    site.generate("rsa", "rsa-2048");
    site.generate("rsa3k", "rsa-3072");
    let _agent = AgentProcess::start(site);
    for (key, salt, wrong) in
        [("rsa", "rsa_pss_saltlen:222", "rsa_pss_saltlen:32"), ("rsa3k", "rsa_pss_saltlen:350", "rsa_pss_saltlen:32")]
    {
        let public = site.public_pem(key);
        let signed = site.sign_file(key, "nvflare", b"site-1b0c2d1e6-3f4a-4b5c-9d8e-7f6a5b4c3d2e");
        assert_eq!(std::fs::read(&signed.1).unwrap().len(), if key == "rsa" { 256 } else { 384 });
        assert!(verifies(&public, &signed, "-sha256", &pss_sigopts(salt, "rsa_mgf1_md:sha256")), "{key} {salt}");
        assert!(!verifies(&public, &signed, "-sha256", &pss_sigopts(wrong, "rsa_mgf1_md:sha256")), "{key} {wrong}");
        assert_python_verifies_nvflare(&public, &signed.1, &signed.0);
    }
}

fn tls_profiles_verify_in_openssl(site: &impl AgentSite) {
    site.generate("rsa", "rsa-2048");
    site.generate("ec", "p-256");
    let (rsa, ec) = (site.public_pem("rsa"), site.public_pem("ec"));
    let _agent = AgentProcess::start(site);

    let ecdsa = site.sign_file("ec", "tls", b"tls 1.3 certificate verify content");
    assert_eq!(std::fs::read(&ecdsa.1).unwrap()[0], 0x30, "ECDSA signature must be DER");
    assert!(verifies(&ec, &ecdsa, "-sha256", &[]), "ECDSA P-256");
    let explicit = site.sign_file("ec", "tls-ecdsa-p256-sha256", b"explicit scheme");
    assert!(verifies(&ec, &explicit, "-sha256", &[]), "explicit tls-ecdsa-p256-sha256");
    let pss256 = site.sign_file("rsa", "tls", b"tls pss");
    assert!(verifies(&rsa, &pss256, "-sha256", &pss_sigopts("rsa_pss_saltlen:32", "rsa_mgf1_md:sha256")));
    let pss384 = site.sign_file("rsa", "tls-rsa-pss-sha384", b"tls pss 384");
    assert!(verifies(&rsa, &pss384, "-sha384", &pss_sigopts("rsa_pss_saltlen:48", "rsa_mgf1_md:sha384")));
    let pkcs1 = site.sign_file("rsa", "tls-rsa-pkcs1-sha256", b"tls 1.2");
    assert!(verifies(&rsa, &pkcs1, "-sha256", &[]), "RSA PKCS#1 v1.5 SHA-256");

    let out = site.keyward(&["sign", "ec", "--profile", "nvflare", "--in", ecdsa.0.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "an EC key cannot do the nvflare profile: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported"), "{out:?}");
}

fn oaep_sha256_ciphertexts_from_openssl_decrypt_and_tampered_ones_do_not(site: &impl AgentSite) {
    site.generate("rsa", "rsa-2048");
    let public = site.public_pem("rsa");
    let agent = AgentProcess::start(site);

    let plain = site.path("plain");
    let aes_key: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
    std::fs::write(&plain, &aes_key).unwrap();
    let ct = site.path("ct");
    openssl_oaep_encrypt(&public, "sha256", &plain, &ct);
    let decrypted = site.path("decrypted");
    let decrypt_ok = ["decrypt", "rsa", "--in", ct.to_str().unwrap(), "--out", decrypted.to_str().unwrap()];
    site.keyward_ok(&decrypt_ok);
    assert_eq!(std::fs::read(&decrypted).unwrap(), aes_key);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&decrypted).unwrap().permissions().mode() & 0o777, 0o600, "plaintext file mode");

    let mut bad = std::fs::read(&ct).unwrap();
    bad[100] ^= 0x55;
    let bad_ct = site.path("bad-ct");
    std::fs::write(&bad_ct, &bad).unwrap();
    let sha1_ct = site.path("sha1-ct");
    openssl_oaep_encrypt(&public, "sha1", &plain, &sha1_ct);
    for refused in [&bad_ct, &sha1_ct] {
        let out = site.keyward(&["decrypt", "rsa", "--in", refused.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(4), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("decryption_failed"), "{out:?}\n{}", agent.log_text());
    }
    site.keyward_ok(&decrypt_ok);
}

fn an_unknown_key_is_refused_and_the_agent_keeps_serving(site: &impl AgentSite) {
    site.generate("rsa", "rsa-2048");
    let _agent = AgentProcess::start(site);
    let msg = site.path("m");
    std::fs::write(&msg, b"x").unwrap();
    let out = site.keyward(&["sign", "nobody", "--profile", "tls", "--in", msg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_key"), "{out:?}");
    let out = site.keyward(&["key", "public", "nobody"]);
    assert!(!out.status.success(), "{out:?}");
    site.sign_file("rsa", "tls", b"still serving");
}

/// Instantiates every case for one backend, each on its own fresh site.
macro_rules! conformance {
    ($backend:ident, $site:expr) => {
        mod $backend {
            #[test]
            fn generated_keys_are_listed_as_generated_and_never_overwritten() {
                super::generated_keys_are_listed_as_generated_and_never_overwritten(&$site);
            }
            #[test]
            fn imported_keys_match_their_source_and_the_source_is_destroyed() {
                super::imported_keys_match_their_source_and_the_source_is_destroyed(&$site);
            }
            #[test]
            fn nvflare_profile_has_the_maximum_salt_and_passes_nvflares_verifier() {
                super::nvflare_profile_has_the_maximum_salt_and_passes_nvflares_verifier(&$site);
            }
            #[test]
            fn tls_profiles_verify_in_openssl() {
                super::tls_profiles_verify_in_openssl(&$site);
            }
            #[test]
            fn oaep_sha256_ciphertexts_from_openssl_decrypt_and_tampered_ones_do_not() {
                super::oaep_sha256_ciphertexts_from_openssl_decrypt_and_tampered_ones_do_not(&$site);
            }
            #[test]
            fn an_unknown_key_is_refused_and_the_agent_keeps_serving() {
                super::an_unknown_key_is_refused_and_the_agent_keeps_serving(&$site);
            }
        }
    };
}

conformance!(softhsm, keyward_tests::Site::new());
conformance!(swtpm, keyward_tests::TpmSite::new());
