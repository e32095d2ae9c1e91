//! `keyward nvflare migrate` on a startup kit shaped like `nvflare provision`'s (made with
//! openssl here; the live-federation test in python/ uses a real provisioned kit): the key
//! moves into the token (or the TPM: the same case on swtpm), the kit keeps no private key,
//! the agent gets the kit's trust, and kits the change would break are refused untouched.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};

use keyward_tests::tools::assert_success;
use keyward_tests::{openssl, AgentProcess, AgentSite, Site, TestCa, TpmSite};

fn make_kit(site: &impl AgentSite) -> PathBuf {
    let dir = site.path("site-1/startup");
    std::fs::create_dir_all(&dir).unwrap();
    let pki = site.path("provision");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = TestCa::new(&pki, "root");
    let (key, cert) = ca.leaf("/CN=site-1/O=nvidia", "client", "subjectAltName=DNS:site-1\n");
    std::fs::copy(&ca.cert, dir.join("rootCA.pem")).unwrap();
    std::fs::copy(key, dir.join("client.key")).unwrap();
    std::fs::copy(cert, dir.join("client.crt")).unwrap();
    let fed = r#"{"format_version": 2, "servers": [{"name": "example_project", "identity": "server1",
        "service": {"scheme": "http", "target": "server1:8002"}}], "client": {"ssl_private_key": "client.key",
        "ssl_cert": "client.crt", "ssl_root_cert": "rootCA.pem", "connection_security": "tls"}}"#;
    std::fs::write(dir.join("fed_client.json"), fed).unwrap();
    dir
}

fn kit_holds_a_private_key(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let text = std::fs::read(e.unwrap().path()).unwrap_or_default();
        String::from_utf8_lossy(&text).contains("PRIVATE KEY")
    })
}

#[test]
fn migrate_moves_the_key_into_the_token_and_leaves_a_reference() {
    let site = Site::new();
    let config = site.config.clone();
    migrate_moves_the_key_and_leaves_a_reference(&site, &config);
}

#[test]
fn migrate_moves_the_key_into_the_tpm_and_leaves_a_reference() {
    let site = TpmSite::new();
    let config = site.config().to_owned();
    migrate_moves_the_key_and_leaves_a_reference(&site, &config);
}

/// The key moves into the backend (imported, certificate installed), the kit keeps a
/// reference and no key, the config gets the kit's trust, the agent serves the flow, and a
/// second migration is refused.
fn migrate_moves_the_key_and_leaves_a_reference(site: &impl AgentSite, config: &Path) {
    let kit = make_kit(site);
    let cert_spki = openssl(&["x509", "-in", kit.join("client.crt").to_str().unwrap(), "-pubkey", "-noout"]).stdout;
    assert!(kit_holds_a_private_key(&kit));

    let out = site.keyward_ok(&["nvflare", "migrate", kit.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("verified against client.crt") && stderr.contains("undo"), "{stderr}");

    assert!(!kit_holds_a_private_key(&kit), "a private key is still in the kit");
    let reference = std::fs::read_to_string(kit.join("client.key")).unwrap();
    assert!(reference.starts_with("-----BEGIN KEYWARD KEY REFERENCE-----\n"), "{reference}");
    let list = String::from_utf8(site.keyward_ok(&["key", "list"]).stdout).unwrap();
    let line = list.lines().find(|l| l.starts_with("site-1")).unwrap();
    assert!(line.contains("imported") && line.ends_with("yes"), "{list}");
    let public = std::fs::read_to_string(site.public_pem("site-1")).unwrap();
    assert_eq!(public.as_bytes(), cert_spki.as_slice());
    let config = std::fs::read_to_string(config).unwrap();
    assert!(config.contains("[keys.site-1.nvflare]") && config.contains("server_identity = \"server1\""), "{config}");

    // The agent starts with the kit's trust and serves the NVFlare flow for the key.
    let _agent = AgentProcess::start(site);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = keyward_agent::client::AgentClient::connect(&site.socket()).await.unwrap();
        let key = keyward_core::KeyId::new("site-1").unwrap();
        assert!(c.call(keyward_core::protocol::Operation::NvflareChallenge { key }).await.is_ok());
    });

    let again = site.keyward(&["nvflare", "migrate", kit.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already"), "{again:?}");
}

#[test]
fn kits_the_change_would_break_are_refused_untouched() {
    let site = Site::new();
    let kit = make_kit(&site);
    let key_before = std::fs::read(kit.join("client.key")).unwrap();

    std::fs::write(kit.join("signature.json"), "{}").unwrap();
    let out = site.keyward(&["nvflare", "migrate", kit.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("signature.json"), "{out:?}");
    std::fs::remove_file(kit.join("signature.json")).unwrap();

    // A key that does not belong to the certificate.
    let other = site.path("other.key");
    assert_success(&openssl(&["genrsa", "-traditional", "-out", other.to_str().unwrap(), "2048"]), "other key");
    std::fs::copy(&other, kit.join("client.key")).unwrap();
    let out = site.keyward(&["nvflare", "migrate", kit.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not the key of"), "{out:?}");
    std::fs::write(kit.join("client.key"), &key_before).unwrap();

    assert_eq!(std::fs::read(kit.join("client.key")).unwrap(), key_before);
    let list = String::from_utf8(site.keyward_ok(&["key", "list"]).stdout).unwrap();
    assert!(!list.contains("site-1"), "nothing may be imported by a refused migration: {list}");
    assert!(!std::fs::read_to_string(&site.config).unwrap().contains("nvflare"));
}

#[test]
fn enroll_wires_a_token_born_key_into_a_kit_without_a_key_file() {
    let site = Site::new();
    let kit = make_kit(&site);
    // The kit of a site enrolled with a token-born key has no client.key and a client.crt
    // issued for the token key's CSR.
    let private_key_file = std::fs::read(kit.join("client.key")).unwrap();
    std::fs::remove_file(kit.join("client.key")).unwrap();
    site.generate("site-1", "rsa-2048");
    let csr = site.path("site-1.csr");
    site.keyward_ok(&["csr", "site-1", "--subject", "CN=site-1,O=nvidia", "--out", csr.to_str().unwrap()]);
    let pki = site.path("enroll-ca");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = TestCa::new(&pki, "root");
    ca.issue(&csr, &kit.join("client.crt"), "subjectAltName=DNS:site-1\n");
    std::fs::copy(&ca.cert, kit.join("rootCA.pem")).unwrap();

    site.keyward_ok(&["nvflare", "enroll", kit.to_str().unwrap(), "--key", "site-1"]);
    let reference = std::fs::read_to_string(kit.join("client.key")).unwrap();
    assert!(reference.starts_with("-----BEGIN KEYWARD KEY REFERENCE-----\n"));
    assert!(std::fs::read_to_string(&site.config).unwrap().contains("[keys.site-1.nvflare]"));
    assert!(!kit_holds_a_private_key(&kit));

    // A kit that still holds a private key file is sent to `migrate` instead.
    std::fs::write(kit.join("client.key"), &private_key_file).unwrap();
    let out = site.keyward(&["nvflare", "enroll", kit.to_str().unwrap(), "--key", "site-1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("keyward nvflare migrate"), "{out:?}");
    assert_eq!(std::fs::read(kit.join("client.key")).unwrap(), private_key_file);
}

#[test]
fn an_admin_kit_migrates_with_the_server_identity_from_fed_admin_json() {
    let site = Site::new();
    let dir = site.path("admin@nvidia.com/startup");
    std::fs::create_dir_all(&dir).unwrap();
    let pki = site.path("provision");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = TestCa::new(&pki, "root");
    let (key, cert) = ca.leaf("/CN=admin@nvidia.com/O=nvidia", "admin", "subjectAltName=DNS:admin@nvidia.com\n");
    std::fs::copy(&ca.cert, dir.join("rootCA.pem")).unwrap();
    std::fs::copy(key, dir.join("client.key")).unwrap();
    std::fs::copy(cert, dir.join("client.crt")).unwrap();
    let fed_admin = r#"{"format_version": 1, "admin": {"username": "admin@nvidia.com", "server_identity": "server1",
        "host": "localhost", "port": 8003, "connection_security": "mtls", "client_key": "client.key"}}"#;
    std::fs::write(dir.join("fed_admin.json"), fed_admin).unwrap();

    // The admin CN is an e-mail address, not a key name: the CLI says to pass --key.
    let out = site.keyward(&["nvflare", "migrate", dir.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--key"), "{out:?}");

    let out = site.keyward_ok(&["nvflare", "migrate", dir.to_str().unwrap(), "--key", "admin"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("connection_security `mtls`"), "{stderr}");
    assert!(!kit_holds_a_private_key(&dir));
    let config = std::fs::read_to_string(&site.config).unwrap();
    assert!(config.contains("[keys.admin.nvflare]") && config.contains("server_identity = \"server1\""), "{config}");
}

#[test]
fn migrate_keeps_the_configs_owner_group_and_mode() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert!(nix::unistd::geteuid().is_root(), "this test needs root (chown to uid 65534); CI runs as root");
    let site = Site::new();
    let kit = make_kit(&site);
    // The documented deployment: the agent's group may read the config (`chgrp keyward; chmod 0640`).
    std::os::unix::fs::chown(&site.config, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&site.config, std::fs::Permissions::from_mode(0o640)).unwrap();
    site.keyward_ok(&["nvflare", "migrate", kit.to_str().unwrap()]);
    assert!(std::fs::read_to_string(&site.config).unwrap().contains("[keys.site-1.nvflare]"));
    let meta = std::fs::metadata(&site.config).unwrap();
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (65534, 65534, 0o640));
}
