//! Keys on a real SoftHSM2 token: PKCS#11 attributes read back after generate and import,
//! import with and without `--destroy-source`. No-overwrite and the signature checks shared
//! with the TPM are in `conformance.rs`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use keyward_tests::softhsm::{private_key_listing, probe_private_key};
use keyward_tests::tools::assert_success;
use keyward_tests::{openssl, Site};

fn access_line(listing: &str) -> String {
    listing.lines().find(|l| l.trim_start().starts_with("Access:")).unwrap_or_default().to_owned()
}

#[test]
fn generated_keys_are_sensitive_never_extractable_and_cannot_be_read() {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    site.generate("tls-ec", "p-256");
    for name in ["site-1", "tls-ec"] {
        let listing = private_key_listing(&site.hsm, name);
        let access = access_line(&listing);
        for attr in ["sensitive", "always sensitive", "never extractable", "local"] {
            assert!(access.contains(attr), "`{name}` lacks `{attr}`: {listing}");
        }
        assert!(!access.contains(", extractable"), "{listing}");
        let probe = probe_private_key(&site.hsm, name);
        for (attr, want) in [
            ("sensitive", true),
            ("extractable", false),
            ("never_extractable", true),
            ("always_sensitive", true),
            ("private", true),
            ("local", true),
        ] {
            assert_eq!(probe[attr], want, "`{name}` {attr}: {probe}");
        }
        assert_eq!(probe["secret_attributes_returned"], 0, "{probe}");
    }
    let list = String::from_utf8(site.keyward_ok(&["key", "list"]).stdout).unwrap();
    assert!(list.contains("site-1") && list.contains("rsa-2048") && list.contains("generated"), "{list}");
    assert!(list.contains("tls-ec") && list.contains("p-256"), "{list}");
}

fn make_pem_key(site: &Site, name: &str, kind: &str) -> std::path::PathBuf {
    let path = site.path(name);
    let args: Vec<&str> = match kind {
        // What `nvflare provision` writes: PKCS#1 "BEGIN RSA PRIVATE KEY".
        "rsa" => vec!["genrsa", "-traditional", "-out", path.to_str().unwrap(), "2048"],
        _ => vec!["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path.to_str().unwrap()],
    };
    assert_success(&openssl(&args), "openssl key generation");
    path
}

fn spki_of_pem_key(key: &std::path::Path) -> Vec<u8> {
    let out = openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout", "-outform", "DER"]);
    assert_success(&out, "openssl pkey -pubout");
    out.stdout
}

#[test]
fn import_with_destroy_source_removes_the_file_and_the_key_signs() {
    let site = Site::new();
    let key = make_pem_key(&site, "client.key", "rsa");
    assert!(std::fs::read_to_string(&key).unwrap().contains("BEGIN RSA PRIVATE KEY"));
    let expected_spki = spki_of_pem_key(&key);

    let out = site.keyward_ok(&["key", "import", "site-1", "--from", key.to_str().unwrap(), "--destroy-source"]);
    assert!(!key.exists(), "source key file still exists");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("round trip OK") && stderr.contains("removed"), "{stderr}");

    let listing = private_key_listing(&site.hsm, "site-1");
    let access = access_line(&listing);
    assert!(access.contains("sensitive"), "{listing}");
    assert!(!access.contains(", extractable"), "{listing}");
    assert!(!access.contains("local"), "an imported key must not claim to be born on the token: {listing}");
    let probe = probe_private_key(&site.hsm, "site-1");
    for (attr, want) in [("sensitive", true), ("extractable", false), ("local", false)] {
        assert_eq!(probe[attr], want, "imported key {attr}: {probe}");
    }
    assert_eq!(probe["secret_attributes_returned"], 0, "{probe}");

    let der = site.path("site-1.der");
    site.keyward_ok(&["key", "public", "site-1", "--der", "--out", der.to_str().unwrap()]);
    assert_eq!(std::fs::read(&der).unwrap(), expected_spki, "token public key differs from the imported file");
    let list = String::from_utf8(site.keyward_ok(&["key", "list"]).stdout).unwrap();
    assert!(list.contains("imported"), "{list}");
}

#[test]
fn import_without_destroy_source_keeps_the_file_and_says_so() {
    let site = Site::new();
    let key = make_pem_key(&site, "ec.key", "ec");
    let out = site.keyward_ok(&["key", "import", "ec-1", "--from", key.to_str().unwrap()]);
    assert!(key.exists());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("still exists"), "{stderr}");
    // A second import under the same name is refused and changes nothing.
    let again = site.keyward(&["key", "import", "ec-1", "--from", key.to_str().unwrap(), "--destroy-source"]);
    assert_eq!(again.status.code(), Some(5));
    assert!(key.exists(), "a refused import must not destroy the source");
}

#[test]
fn import_refuses_a_file_that_is_not_a_private_key() {
    let site = Site::new();
    let not_key = site.path("cert.pem");
    std::fs::write(&not_key, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
    let out = site.keyward(&["key", "import", "x", "--from", not_key.to_str().unwrap(), "--destroy-source"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an unencrypted private key"), "{out:?}");
    assert!(not_key.exists());
}

/// `--destroy-source` on a symbolic link (to a key file of someone else's) or a FIFO is
/// refused before the import: the old code imported the link's target and zeroed it.
#[test]
fn destroy_source_refuses_a_symlink_or_a_fifo_and_leaves_the_target_alone() {
    let site = Site::new();
    let key = make_pem_key(&site, "target.pem", "rsa");
    let key_bytes = std::fs::read(&key).unwrap();
    let link = site.path("link.pem");
    std::os::unix::fs::symlink(&key, &link).unwrap();
    let out = site.keyward(&["key", "import", "site-1", "--from", link.to_str().unwrap(), "--destroy-source"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a symbolic link"), "{out:?}");
    assert_eq!(std::fs::read(&key).unwrap(), key_bytes, "the link's target must be untouched");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());

    let fifo = site.path("fifo.pem");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let out = site.keyward(&["key", "import", "site-1", "--from", fifo.to_str().unwrap(), "--destroy-source"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a FIFO, not a regular file"), "{out:?}");
    let list = String::from_utf8(site.keyward_ok(&["key", "list"]).stdout).unwrap();
    assert!(!list.contains("site-1"), "a refused import must import nothing: {list}");
}
