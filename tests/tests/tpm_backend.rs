//! What only the TPM backend has, on a real swtpm through the real `keyward` CLI and agent:
//! object attributes of generated and imported keys (read by tpm2-tools), key management
//! while the agent runs, keys that survive an swtpm restart with the agent reconnecting by
//! itself, the auth value, and TCTI strings tss-esapi would misread. The cases both
//! backends share (profiles, OAEP, import, no overwrite) are in `conformance.rs`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};

use keyward_tests::checks::{openssl_verifies, pss_sigopts};
use keyward_tests::tools::assert_success;
use keyward_tests::{openssl, AgentProcess, AgentSite, TpmSite};

fn openssl_verify(public: &Path, (msg, sig): &(PathBuf, PathBuf), digest: &str, extra: &[&str]) -> bool {
    openssl_verifies(public, msg, sig, digest, extra)
}

/// The key's TPMT_PUBLIC from its blob, printed by tpm2-tools' `tpm2_print`.
fn tpm2_print_public(site: &TpmSite, name: &str) -> String {
    let blob = std::fs::read(site.blob(name)).unwrap();
    assert_eq!(&blob[..9], b"KWTPMKEY\x01");
    let len = usize::from(u16::from_be_bytes([blob[9], blob[10]]));
    let public = site.path(&format!("{name}.tpmt_public"));
    std::fs::write(&public, &blob[11..11 + len]).unwrap();
    let out = std::process::Command::new("tpm2_print")
        .args(["-t", "TPMT_PUBLIC", public.to_str().unwrap()])
        .output()
        .expect("tpm2_print is installed (package tpm2-tools)");
    assert_success(&out, "tpm2_print");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn keys_are_born_in_the_tpm_and_never_overwritten() {
    let site = TpmSite::new();
    site.generate("site-1", "rsa-2048");
    site.generate("ec", "p-256");

    use std::os::unix::fs::PermissionsExt;
    let blob = site.blob("site-1");
    let before = std::fs::read(&blob).unwrap();
    assert_eq!(std::fs::metadata(&blob).unwrap().permissions().mode() & 0o777, 0o600);
    let out = site.keyward(&["key", "generate", "site-1", "--algorithm", "p-256"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already exists") && stderr.contains("site-1.tpmkey"), "{stderr}");
    assert_eq!(std::fs::read(&blob).unwrap(), before, "the existing blob was touched");

    let list = String::from_utf8(site.keyward_ok(&["key", "list"]).stdout).unwrap();
    assert!(list.lines().any(|l| l.starts_with("ec ") && l.contains("p-256") && l.contains("generated")), "{list}");
    assert!(list.lines().any(|l| l.starts_with("site-1 ") && l.contains("rsa-2048")), "{list}");

    // The attributes, read by tpm2-tools from the public area in the blob.
    for (name, want) in [
        ("site-1", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|decrypt|sign"),
        ("ec", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign"),
    ] {
        let text = tpm2_print_public(&site, name);
        assert!(text.lines().any(|l| l.trim() == format!("value: {want}")), "{name}:\n{text}");
    }

    for (name, want) in [("site-1", "Public-Key: (2048 bit)"), ("ec", "NIST CURVE: P-256")] {
        let pem = site.public_pem(name);
        let out = openssl(&["pkey", "-pubin", "-in", pem.to_str().unwrap(), "-noout", "-text"]);
        assert_success(&out, "openssl pkey");
        assert!(String::from_utf8_lossy(&out.stdout).contains(want), "{out:?}");
    }
}

#[test]
fn an_imported_key_is_held_by_the_tpm_but_does_not_claim_to_be_born_there() {
    let site = TpmSite::new();
    let source = site.path("client.key");
    let out = openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        source.to_str().unwrap(),
    ]);
    assert_success(&out, "openssl genpkey");
    site.keyward_ok(&["key", "import", "site-1", "--from", source.to_str().unwrap(), "--destroy-source"]);
    let text = tpm2_print_public(&site, "site-1");
    assert!(text.lines().any(|l| l.trim() == "value: userwithauth|decrypt|sign"), "{text}");
}

#[test]
fn key_management_while_the_agent_runs_does_not_break_it() {
    // swtpm has no resource manager: the CLI's connection flushes the agent's primary. The
    // agent notices the stale handle, reconnects and repeats the request once.
    let site = TpmSite::new();
    site.generate("site-1", "rsa-2048");
    let agent = AgentProcess::start(&site);
    let public = site.public_pem("site-1");
    let salt222 = pss_sigopts("rsa_pss_saltlen:222", "rsa_mgf1_md:sha256");
    assert!(openssl_verify(&public, &site.sign_file("site-1", "nvflare", b"before"), "-sha256", &salt222));
    site.generate("ec", "p-256");
    assert!(openssl_verify(&public, &site.sign_file("site-1", "nvflare", b"after"), "-sha256", &salt222));
    assert!(openssl_verify(&site.public_pem("ec"), &site.sign_file("ec", "tls", b"new key"), "-sha256", &[]));
    assert!(agent.log_text().contains("reconnecting and repeating once"), "{}", agent.log_text());
}

#[test]
fn a_key_survives_an_swtpm_restart_and_the_agent_reconnects_without_restarting() {
    let mut site = TpmSite::new();
    site.generate("site-1", "rsa-2048");
    let public = site.public_pem("site-1");
    let salt222 = pss_sigopts("rsa_pss_saltlen:222", "rsa_mgf1_md:sha256");

    // Reboot: swtpm stopped and started on the same state; a new agent signs with the key.
    site.swtpm.restart();
    let mut agent = AgentProcess::start(&site);
    assert!(openssl_verify(&public, &site.sign_file("site-1", "nvflare", b"after restart"), "-sha256", &salt222));

    // Crash: swtpm killed under a running agent fails fast as `backend_unavailable`...
    site.swtpm.kill();
    let msg = site.path("m");
    std::fs::write(&msg, b"while down").unwrap();
    let started = std::time::Instant::now();
    let out = site.keyward(&["sign", "site-1", "--profile", "nvflare", "--in", msg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("backend_unavailable"), "{out:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "took {:?}", started.elapsed());
    let out = site.keyward(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(1), "`keyward status` must fail while the TPM is down: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"backend_health\": \"down\""), "{out:?}");

    // A client hammering the agent meanwhile gets the same answer at once: the agent tries
    // to reconnect at most once per second.
    let hammer = std::time::Instant::now();
    for _ in 0..20 {
        let out = site.keyward(&["sign", "site-1", "--profile", "nvflare", "--in", msg.to_str().unwrap()]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("backend_unavailable"), "{out:?}");
    }
    assert!(hammer.elapsed() < std::time::Duration::from_secs(10), "20 refusals took {:?}", hammer.elapsed());

    // ...and once swtpm is back on the same state, the same agent signs again (within the
    // reconnect interval).
    site.swtpm.restart();
    let back = std::time::Instant::now();
    let again = loop {
        let sig = site.path("again.sig");
        let out = site.keyward(&[
            "sign",
            "site-1",
            "--profile",
            "nvflare",
            "--in",
            msg.to_str().unwrap(),
            "--out",
            sig.to_str().unwrap(),
        ]);
        if out.status.success() {
            break (msg.clone(), sig);
        }
        assert!(back.elapsed() < std::time::Duration::from_secs(5), "no signature 5 s after swtpm came back: {out:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    eprintln!("swtpm back -> first good signature in {:?}", back.elapsed());
    assert!(openssl_verify(&public, &again, "-sha256", &salt222));
    let status = String::from_utf8(site.keyward_ok(&["status", "--json"]).stdout).unwrap();
    assert!(status.contains("\"ok\"") && status.contains("\"tpm\""), "{status}");
    let log = agent.log_text();
    assert!(!log.contains("WARNING:esys") && !log.contains("ERROR:esys"), "libtss2 noise in log:\n{log}");
    assert!(agent.terminate().success());
}

#[test]
fn a_wrong_auth_value_fails_once_with_a_clear_error_and_is_not_retried() {
    use std::os::unix::fs::PermissionsExt;
    let site = TpmSite::new();
    let auth = site.path("auth");
    std::fs::write(&auth, "right horse battery\n").unwrap();
    std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o600)).unwrap();
    site.set_backend("auth_file", auth.to_str().unwrap());
    site.generate("site-1", "rsa-2048");
    let msg = site.path("m");
    std::fs::write(&msg, b"x").unwrap();
    let sign_args = ["sign", "site-1", "--profile", "nvflare", "--in", msg.to_str().unwrap()];
    {
        let _agent = AgentProcess::start(&site);
        site.keyward_ok(&sign_args);
    }

    std::fs::write(&auth, "wrong\n").unwrap();
    let agent = AgentProcess::start(&site);
    for _ in 0..2 {
        let out = site.keyward(&sign_args);
        assert_eq!(out.status.code(), Some(6), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("pin_incorrect") && stderr.contains("auth value"), "{stderr}");
        assert!(!stderr.contains("wrong"), "the auth value leaked: {stderr}");
    }
    let log = agent.log_text();
    assert_eq!(log.matches("rejected the key auth value").count(), 1, "offered more than once:\n{log}");
    assert!(!log.contains("right horse") && !log.contains("wrong\n"), "{log}");
}

#[test]
fn init_refuses_a_tcti_tss_esapi_would_misread() {
    let dir = tempfile::Builder::new().prefix("kwt").tempdir_in("/tmp").unwrap();
    let config = dir.path().join("keyward.toml");
    let out = std::process::Command::new(keyward_tests::tools::keyward_bin())
        .env("KEYWARD_CONFIG", &config)
        .args(["init", "--backend", "tpm", "--tcti", "swtpm:path=/tmp/tpm.sock", "--key-dir"])
        .arg(dir.path().join("keys"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("swtpm:path=/tmp/tpm.sock") && stderr.contains("localhost:2321"), "{stderr}");
    assert!(!config.exists());
}

/// Sets `[backend.persistent_handles]` in the site's config.
fn set_persistent_handles(site: &TpmSite, handles: &[(&str, &str)]) {
    let text = std::fs::read_to_string(site.config()).unwrap();
    let mut doc: toml::Table = toml::from_str(&text).unwrap();
    let table: toml::Table =
        handles.iter().map(|(k, v)| ((*k).to_owned(), toml::Value::String((*v).to_owned()))).collect();
    doc["backend"].as_table_mut().unwrap().insert("persistent_handles".into(), toml::Value::Table(table));
    std::fs::write(site.config(), toml::to_string(&doc).unwrap()).unwrap();
}

#[test]
fn a_key_at_a_persistent_handle_is_never_overwritten_and_survives_a_restart() {
    let mut site = TpmSite::new();
    set_persistent_handles(&site, &[("site-1", "0x81000010")]);
    site.generate("site-1", "rsa-2048");
    assert!(!site.blob("site-1").exists(), "a persistent key must not also be a blob");
    let public = site.public_pem("site-1");
    let list = String::from_utf8(site.keyward_ok(&["key", "list"]).stdout).unwrap();
    assert!(list.lines().any(|l| l.starts_with("site-1 ") && l.contains("generated")), "{list}");

    // Generating again, or another name bound to the same (now occupied) handle, is refused
    // with the handle named; the key is untouched.
    let out = site.keyward(&["key", "generate", "site-1", "--algorithm", "p-256"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("persistent handle 0x81000010 is occupied"), "{out:?}");
    set_persistent_handles(&site, &[("squatter", "0x81000010")]);
    let out = site.keyward(&["key", "generate", "squatter", "--algorithm", "p-256"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("0x81000010"), "{out:?}");
    set_persistent_handles(&site, &[("site-1", "0x81000010")]);

    // The key lives in the TPM's NV memory: it signs after an swtpm restart.
    site.swtpm.restart();
    let _agent = AgentProcess::start(&site);
    let salt222 = pss_sigopts("rsa_pss_saltlen:222", "rsa_mgf1_md:sha256");
    assert!(openssl_verify(&public, &site.sign_file("site-1", "nvflare", b"from NV"), "-sha256", &salt222));

    // Handles outside the owner's persistent range, or one handle for two keys, are refused.
    for (handles, want) in [
        (&[("site-1", "0x80000001")][..], "outside the owner's persistent range"),
        (&[("site-1", "81000010")][..], "not a hex handle"),
        (&[("a", "0x81000012"), ("b", "0x81000012")][..], "given to two keys"),
    ] {
        set_persistent_handles(&site, handles);
        let out = site.keyward(&["key", "list"]);
        assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains(want), "{want}: {out:?}");
    }
}
