//! The end of a key rotation, `keyward key retire <old> --replaced-by <new>` (the agent's
//! `retire_key`), on a real agent with real SoftHSM2 and swtpm: refused while the successor is
//! not proven (no certificate, a certificate for another subject) and when its audit record
//! cannot be written (a full file system): the old key keeps signing. Once proven, the record
//! `destroying` is in the log before the key is gone from the token (private and public
//! objects), the record of the outcome follows, the chain still verifies, the certificate moves
//! to `certs/retired/`, and the successor signs. A TPM key is retired the same way: a wrapped blob
//! is removed; a key at a persistent handle is evicted and its auth file removed.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use keyward_protocol::ErrorCode;
use keyward_tests::softhsm::pkcs11_tool;
use keyward_tests::tmpfs::Tmpfs;
use keyward_tests::{AgentProcess, AgentSite, Site, TestCa, TpmSite};
use serde_json::Value;

/// Makes `key` with a CSR for `cn` and a certificate from `ca` (installed when `install`).
fn key_with_certificate(site: &impl AgentSite, ca: &TestCa, key: &str, cn: &str, install: bool) {
    site.keyward_ok(&["key", "generate", key]);
    let crt = site.issue_certificate(ca, key, &format!("CN={cn},O=nvidia"), &format!("subjectAltName=DNS:{cn}\n"));
    if install {
        site.install_certificate(key, &crt);
    }
}

/// `keyward key retire`: exit code, stdout, stderr.
fn retire(site: &impl AgentSite, key: &str, successor: &str) -> (Option<i32>, String, String) {
    let out = site.command().args(["key", "retire", key, "--replaced-by", successor]).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

fn retire_records(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|r| r["op"] == "retire_key").collect()
}

fn labels_on_token(site: &Site) -> String {
    let out = pkcs11_tool(&site.hsm, &["--list-objects"]);
    keyward_tests::tools::assert_success(&out, "pkcs11-tool --list-objects");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn has_label(listing: &str, label: &str) -> bool {
    listing.lines().any(|l| l.trim() == format!("label:      {label}"))
}

#[test]
fn a_key_is_destroyed_only_after_its_successor_is_proven_and_its_audit_record_is_written() {
    let site = Site::new();
    let ca = TestCa::new(site.hsm.dir.path(), "ca");
    key_with_certificate(&site, &ca, "site-1", "site-1", true);
    key_with_certificate(&site, &ca, "site-1-2", "site-1", false);
    key_with_certificate(&site, &ca, "other", "site-9", true);
    let agent = AgentProcess::start(&site);

    // No certificate installed for the successor: refused, nothing destroyed.
    let (code, _, err) = retire(&site, "site-1", "site-1-2");
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("`site-1-2` has no installed certificate"), "{err}");
    // A successor whose certificate names another subject: refused.
    let (code, _, err) = retire(&site, "site-1", "other");
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("not its successor"), "{err}");
    // A key cannot replace itself.
    let (code, _, err) = retire(&site, "site-1", "site-1");
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("cannot replace itself"), "{err}");
    assert_eq!(agent.try_sign("site-1"), Ok(()), "the old key still serves after refusals");
    let refusals: Vec<String> =
        retire_records(&site.audit_records()).iter().map(|r| r["outcome"].as_str().unwrap().to_owned()).collect();
    assert_eq!(refusals, ["policy_denied", "policy_denied", "invalid_request"]);

    site.install_certificate("site-1-2", &site.path("site-1-2.crt"));
    let (code, out, err) = retire(&site, "site-1", "site-1-2");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("retired `site-1`"), "{out}");

    assert_eq!(agent.try_sign("site-1"), Err(ErrorCode::UnknownKey));
    assert_eq!(agent.try_sign("site-1-2"), Ok(()));
    let listing = labels_on_token(&site);
    assert!(!has_label(&listing, "site-1"), "no object labelled site-1 is left:\n{listing}");
    assert!(has_label(&listing, "site-1-2") && has_label(&listing, "other"), "{listing}");

    let records = site.audit_records();
    let retires = retire_records(&records);
    let [.., destroying, done] = retires.as_slice() else { panic!("{retires:?}") };
    assert_eq!(destroying["outcome"], "destroying", "{destroying}");
    assert_eq!(destroying["key"], "site-1");
    assert_eq!(destroying["replaced_by"], "site-1-2");
    assert_eq!(destroying["retired_spki_sha256"].as_str().unwrap().len(), 64);
    let seq = destroying["seq"].as_u64().unwrap();
    assert!(out.contains(&format!("audit record seq {seq}")), "{out}");
    assert_eq!((done["outcome"].as_str(), done["seq"].as_u64()), (Some("ok"), Some(seq + 1)), "{done}");

    let certs = site.state_dir.join("certs");
    assert!(!certs.join("site-1.pem").exists());
    let retired: Vec<_> = std::fs::read_dir(certs.join("retired")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(retired.len(), 1, "{retired:?}");
    let verify = site.keyward(&["audit", "verify"]);
    keyward_tests::tools::assert_success(&verify, "keyward audit verify");

    // Retiring it again: the key is gone.
    let (code, _, err) = retire(&site, "site-1", "site-1-2");
    assert_eq!(code, Some(4), "{err}");
}

#[test]
fn no_audit_record_means_no_destroy() {
    let site = Site::new();
    let ca = TestCa::new(site.hsm.dir.path(), "ca");
    key_with_certificate(&site, &ca, "site-1", "site-1", true);
    key_with_certificate(&site, &ca, "site-1-2", "site-1", true);
    let fs = Tmpfs::mount(site.path("auditfs"), "64k");
    let log = fs.dir.join("audit.log");
    let text = std::fs::read_to_string(&site.config).unwrap();
    std::fs::write(&site.config, format!("audit_log = \"{}\"\n{text}", log.display())).unwrap();
    let agent = AgentProcess::start(&site);
    let filler = fs.fill();
    // The log's last page may still hold a few records: sign until one is withheld.
    let withheld = (0..40).find_map(|_| agent.try_sign("site-1").err());
    assert_eq!(withheld, Some(ErrorCode::AuditFailed));

    let (code, _, err) = retire(&site, "site-1", "site-1-2");
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("so `site-1` was not destroyed"), "{err}");
    assert!(has_label(&labels_on_token(&site), "site-1"));

    std::fs::remove_file(filler).unwrap();
    assert_eq!(agent.try_sign("site-1"), Ok(()), "the old key still serves");
    let (code, _, err) = retire(&site, "site-1", "site-1-2");
    assert_eq!(code, Some(0), "{err}");
    assert!(!has_label(&labels_on_token(&site), "site-1"));
}

#[test]
fn a_tpm_key_is_retired_the_same_way() {
    let site = TpmSite::new();
    let ca = TestCa::new(site.dir.path(), "ca");
    key_with_certificate(&site, &ca, "site-1", "site-1", true);
    key_with_certificate(&site, &ca, "site-1-2", "site-1", true);
    let agent = AgentProcess::start(&site);
    let (code, out, err) = retire(&site, "site-1", "site-1-2");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("retired `site-1`"), "{out}");
    assert_eq!(agent.try_sign("site-1"), Err(ErrorCode::UnknownKey));
    assert_eq!(agent.try_sign("site-1-2"), Ok(()));
    assert!(!site.blob("site-1").exists() && site.blob("site-1-2").exists());
    let records = site.audit_records();
    let outcomes: Vec<&str> = retire_records(&records).iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["destroying", "ok"]);
}

/// A key at a persistent handle: retire evicts the handle from the TPM's NV memory and removes
/// its auth value file; the handle is free again (another TPM client sees it gone, and a new key
/// can be made there).
#[test]
fn a_tpm_key_at_a_persistent_handle_is_evicted_and_its_auth_file_removed() {
    let mut site = TpmSite::new();
    let ca = TestCa::new(site.dir.path(), "ca");
    site.set_persistent_handles(&[("site-1", "0x81000012")]);
    key_with_certificate(&site, &ca, "site-1", "site-1", true);
    key_with_certificate(&site, &ca, "site-1-2", "site-1", true);
    assert!(site.auth_file("site-1").exists() && !site.blob("site-1").exists());
    let mut agent = AgentProcess::start(&site);
    let (code, out, err) = retire(&site, "site-1", "site-1-2");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("retired `site-1`"), "{out}");
    assert_eq!(agent.try_sign("site-1"), Err(ErrorCode::UnknownKey));
    assert_eq!(agent.try_sign("site-1-2"), Ok(()));
    assert!(!site.auth_file("site-1").exists());
    agent.terminate();

    // swtpm serves one client at a time: ask it with the agent stopped.
    let out = site.swtpm.tpm2("tpm2_getcap").arg("handles-persistent").output().unwrap();
    keyward_tests::tools::assert_success(&out, "tpm2_getcap handles-persistent");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("0x81000012"), "{out:?}");
    // The eviction is in NV memory: after a TPM restart the handle takes a new key.
    site.swtpm.restart();
    let out = site.command().args(["key", "generate", "site-1"]).output().unwrap();
    keyward_tests::tools::assert_success(&out, "key generate at the freed handle");
    let records = site.audit_records();
    let outcomes: Vec<&str> = retire_records(&records).iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["destroying", "ok"]);
}

/// Retiring is for root or the agent's own user: another uid is refused even where `[access]`
/// lets it sign, the refusal is audited, and the key keeps signing.
#[test]
fn only_root_or_the_agents_user_may_retire_a_key() {
    use std::os::unix::fs::PermissionsExt;
    let site = Site::new();
    let ca = TestCa::new(site.hsm.dir.path(), "ca");
    key_with_certificate(&site, &ca, "site-1", "site-1", true);
    key_with_certificate(&site, &ca, "site-1-2", "site-1", true);
    std::fs::set_permissions(site.hsm.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    site.set_config("access", "socket_gid", 65534.into());
    site.set_config("access", "allowed_gids", vec![toml::Value::from(65534)].into());
    let agent = AgentProcess::start(&site);
    // A config `nobody` can read, naming the same socket.
    let config = site.path("keyward-nobody.toml");
    std::fs::copy(&site.config, &config).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();

    let args = ["key", "retire", "site-1", "--replaced-by", "site-1-2"];
    let out = keyward_tests::tools::keyward_as_nobody(site.hsm.dir.path(), &args, &[("KEYWARD_CONFIG", &config)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(stderr.contains("not uid 65534"), "{stderr}");
    assert_eq!(agent.try_sign("site-1"), Ok(()));
    let records = site.audit_records();
    let refused = retire_records(&records);
    assert_eq!(refused.len(), 1, "{records:?}");
    assert_eq!(
        (refused[0]["peer"]["uid"].as_u64(), refused[0]["outcome"].as_str()),
        (Some(65534), Some("policy_denied"))
    );
}
