//! What only the TPM backend has, on a real swtpm through the real `keyward` CLI and agent:
//! object attributes of generated and imported keys (read by tpm2-tools), key management
//! while the agent runs, keys that survive an swtpm restart with the agent reconnecting by
//! itself, the auth value (each key's own, which other TPM clients do not have: tried with
//! tpm2-tools), and TCTI strings tss-esapi would misread. The cases both
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
    assert_eq!(&blob[..9], b"KWTPMKEY\x02", "a new key's blob holds its own auth value (format 2)");
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
        ("site-1", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|decrypt|sign"),
        ("ec", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|sign"),
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
    assert!(text.lines().any(|l| l.trim() == "value: userwithauth|noda|decrypt|sign"), "{text}");
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

#[test]
fn a_key_at_a_persistent_handle_is_never_overwritten_and_survives_a_restart() {
    let mut site = TpmSite::new();
    site.set_persistent_handles(&[("site-1", "0x81000010")]);
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
    site.set_persistent_handles(&[("squatter", "0x81000010")]);
    let out = site.keyward(&["key", "generate", "squatter", "--algorithm", "p-256"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("0x81000010"), "{out:?}");
    site.set_persistent_handles(&[("site-1", "0x81000010")]);

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
        site.set_persistent_handles(handles);
        let out = site.keyward(&["key", "list"]);
        assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains(want), "{want}: {out:?}");
    }
}

// ---- Sealed keys: another TPM client (tpm2-tools, its own process and connection) cannot
// use a key, neither at its persistent handle nor as the object the agent has loaded.

/// What tpm2-tools says when the TPM refuses an auth value (TPM_RC_AUTH_FAIL / BAD_AUTH).
fn refused_for_auth(out: &std::process::Output) -> bool {
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    !out.status.success()
        && ["0x98e", "0x9a2", "authorization hmac check failed", "authorization failure"]
            .iter()
            .any(|s| stderr.contains(s))
}

/// `tpm2_sign` (RSASSA-SHA256, or ECDSA for an EC key) of `msg` with `key` (a handle or a
/// context file), in another process; `auth` is the auth value, none: empty. (As `hex:`
/// in argv, on a throwaway test TPM: tpm2-tools' `file:` reads a C string, so random bytes
/// with a 0x00 or a newline in them would be cut.)
fn tpm2_sign(site: &TpmSite, key: &str, auth: Option<&[u8]>, msg: &Path, sig: &Path) -> std::process::Output {
    let mut cmd = site.swtpm.tpm2("tpm2_sign");
    cmd.args(["-c", key, "-g", "sha256", "-f", "plain", "-o"]).arg(sig);
    if let Some(auth) = auth {
        cmd.arg("-p").arg(format!("hex:{}", hex::encode(auth)));
    }
    cmd.arg(msg).output().expect("tpm2_sign is installed (package tpm2-tools)")
}

/// Flushes every transient object (tpm2-tools leave theirs loaded on swtpm, which has 3 slots).
fn tpm2_flush(site: &TpmSite) {
    assert_success(&site.swtpm.tpm2("tpm2_flushcontext").arg("-t").output().unwrap(), "tpm2_flushcontext -t");
}

/// The DA lockout counter (each refused auth value counts unless the object is noDA).
fn lockout_counter(site: &TpmSite) -> String {
    let out = site.swtpm.tpm2("tpm2_getcap").arg("properties-variable").output().unwrap();
    assert_success(&out, "tpm2_getcap properties-variable");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().find(|l| l.contains("TPM2_PT_LOCKOUT_COUNTER")).unwrap_or_default().trim().to_owned()
}

/// Loads the blob of `name` under keyward's storage primary (recreated by tpm2-tools from
/// the same template), as any local process that can read the blob could; returns the
/// context file.
fn tpm2_load_blob(site: &TpmSite, name: &str) -> PathBuf {
    tpm2_flush(site);
    let blob = std::fs::read(site.blob(name)).unwrap();
    let public_len = usize::from(u16::from_be_bytes([blob[9], blob[10]]));
    let private_at = 11 + public_len;
    let private_len = usize::from(u16::from_be_bytes([blob[private_at], blob[private_at + 1]]));
    // TPM2B_PUBLIC and TPM2B_PRIVATE: the parts with their u16 sizes, as tpm2_load reads them.
    let (public, private) = (site.path(&format!("{name}.pub")), site.path(&format!("{name}.priv")));
    std::fs::write(&public, [&(public_len as u16).to_be_bytes()[..], &blob[11..private_at]].concat()).unwrap();
    std::fs::write(&private, &blob[private_at..private_at + 2 + private_len]).unwrap();
    let primary = site.path("primary.ctx");
    let out = site
        .swtpm
        .tpm2("tpm2_createprimary")
        .args(["-C", "o", "-G", "rsa2048:aes128cfb", "-g", "sha256", "-Q", "-c"])
        .arg(&primary)
        .output()
        .unwrap();
    assert_success(&out, "tpm2_createprimary");
    let context = site.path(&format!("{name}.ctx"));
    let out = site
        .swtpm
        .tpm2("tpm2_load")
        .arg("-C")
        .arg(&primary)
        .arg("-u")
        .arg(&public)
        .arg("-r")
        .arg(&private)
        .arg("-c")
        .arg(&context)
        .arg("-Q")
        .output()
        .unwrap();
    assert_success(&out, "tpm2_load of keyward's blob under the same primary");
    tpm2_flush(site);
    context
}

#[test]
fn another_tpm_client_cannot_sign_with_a_key_at_its_persistent_handle() {
    use std::os::unix::fs::PermissionsExt;
    let site = TpmSite::new();
    site.set_persistent_handles(&[("site-1", "0x81000010")]);
    let out = site.keyward_ok(&["key", "generate", "site-1", "--algorithm", "rsa-2048"]);

    // Another process on the machine, with the handle and the TPM but not the auth value.
    let msg = site.path("m");
    std::fs::write(&msg, b"signed by someone else").unwrap();
    let sig = site.path("m.sig");
    let refused = tpm2_sign(&site, "0x81000010", None, &msg, &sig);
    assert!(refused_for_auth(&refused), "tpm2_sign with the empty auth value was not refused: {refused:?}");
    // noDA: that failure does not count towards a lockout of the agent's keys.
    assert_eq!(lockout_counter(&site), "TPM2_PT_LOCKOUT_COUNTER: 0x0");

    // The auth value is kept for the agent only: 0600, beside the key's name.
    let auth = site.auth_file("site-1");
    assert_eq!(std::fs::metadata(&auth).unwrap().permissions().mode() & 0o777, 0o600);
    let secret = std::fs::read(&auth).unwrap();
    assert_eq!(secret.len(), 32, "the auth value is as long as the SHA-256 name digest allows");
    // The only thing missing was the auth value.
    let allowed = tpm2_sign(&site, "0x81000010", Some(&secret), &msg, &sig);
    assert_success(&allowed, "tpm2_sign with the key's auth value");
    let public = site.public_pem("site-1");
    assert!(openssl_verify(&public, &(msg.clone(), sig), "-sha256", &[]));

    // The agent signs (verified by openssl) and never logs the auth value.
    let agent = AgentProcess::start(&site);
    let salt222 = pss_sigopts("rsa_pss_saltlen:222", "rsa_mgf1_md:sha256");
    assert!(openssl_verify(&public, &site.sign_file("site-1", "nvflare", b"by the agent"), "-sha256", &salt222));
    let logs = [agent.log_text(), String::from_utf8_lossy(&out.stderr).into_owned()].concat();
    assert!(!logs.to_lowercase().contains(&hex::encode(&secret)), "the auth value was logged:\n{logs}");
    assert!(!logs.contains("empty auth value"), "{logs}");
}

#[test]
fn another_tpm_client_cannot_use_the_key_the_agent_has_loaded_nor_load_its_blob() {
    let site = TpmSite::new();
    site.generate("site-1", "rsa-2048");
    let public = site.public_pem("site-1");
    let salt222 = pss_sigopts("rsa_pss_saltlen:222", "rsa_mgf1_md:sha256");
    let agent = AgentProcess::start(&site);
    assert!(openssl_verify(&public, &site.sign_file("site-1", "nvflare", b"loads it"), "-sha256", &salt222));

    // swtpm has no resource manager: the agent's loaded key is a transient handle any
    // client sees. The one that can sign (the other is the restricted primary) refuses.
    let out = site.swtpm.tpm2("tpm2_getcap").arg("handles-transient").output().unwrap();
    assert_success(&out, "tpm2_getcap handles-transient");
    let handles: Vec<String> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.strip_prefix("- ")).map(str::to_owned).collect();
    let signing: Vec<&String> = handles
        .iter()
        .filter(|h| {
            let out = site.swtpm.tpm2("tpm2_readpublic").args(["-c", h]).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.lines().any(|l| l.trim().starts_with("value:") && l.contains("sign") && !l.contains("restricted"))
        })
        .collect();
    assert_eq!(signing.len(), 1, "the agent's loaded key among {handles:?}");
    let msg = site.path("m");
    std::fs::write(&msg, b"signed by someone else").unwrap();
    let sig = site.path("m.sig");
    let refused = tpm2_sign(&site, signing[0], None, &msg, &sig);
    assert!(refused_for_auth(&refused), "the agent's loaded key signed for another client: {refused:?}");

    // Nor can a process that reads the blob load it itself and sign with the empty auth.
    let context = tpm2_load_blob(&site, "site-1");
    let refused = tpm2_sign(&site, context.to_str().unwrap(), None, &msg, &sig);
    assert!(refused_for_auth(&refused), "the loaded blob signed with the empty auth value: {refused:?}");
    assert_eq!(lockout_counter(&site), "TPM2_PT_LOCKOUT_COUNTER: 0x0", "noDA: no lockout to drive the agent into");

    // The agent reconnects (its objects were flushed) and signs.
    assert!(openssl_verify(&public, &site.sign_file("site-1", "nvflare", b"still mine"), "-sha256", &salt222));
    let list = String::from_utf8(site.keyward_ok(&["key", "list"]).stdout).unwrap();
    assert!(!list.contains("auth: none"), "{list}");
    drop(agent);

    // An imported key gets its own auth value too.
    let source = site.path("client.key");
    assert_success(
        &openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            source.to_str().unwrap(),
        ]),
        "openssl genpkey",
    );
    site.keyward_ok(&["key", "import", "imported", "--from", source.to_str().unwrap()]);
    let context = tpm2_load_blob(&site, "imported");
    let refused = tpm2_sign(&site, context.to_str().unwrap(), None, &msg, &sig);
    assert!(refused_for_auth(&refused), "the imported key signed with the empty auth value: {refused:?}");
}

/// Writes a blob in the format of keyward before keys had their own auth value (version 1),
/// for a key tpm2-tools created with the empty auth value under keyward's primary.
fn write_legacy_blob(site: &TpmSite, name: &str) {
    tpm2_flush(site);
    let primary = site.path("primary.ctx");
    let out = site
        .swtpm
        .tpm2("tpm2_createprimary")
        .args(["-C", "o", "-G", "rsa2048:aes128cfb", "-g", "sha256", "-Q", "-c"])
        .arg(&primary)
        .output()
        .unwrap();
    assert_success(&out, "tpm2_createprimary");
    tpm2_flush(site);
    let (public, private) = (site.path("legacy.pub"), site.path("legacy.priv"));
    let out = site
        .swtpm
        .tpm2("tpm2_create")
        .arg("-C")
        .arg(&primary)
        .args(["-G", "rsa2048", "-a", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|decrypt|sign", "-Q"])
        .arg("-u")
        .arg(&public)
        .arg("-r")
        .arg(&private)
        .output()
        .unwrap();
    assert_success(&out, "tpm2_create");
    tpm2_flush(site);
    let (public, private) = (std::fs::read(public).unwrap(), std::fs::read(private).unwrap());
    let mut blob = b"KWTPMKEY\x01".to_vec();
    blob.extend_from_slice(&public);
    blob.extend_from_slice(&private);
    std::fs::write(site.blob(name), blob).unwrap();
}

#[test]
fn a_key_with_the_empty_auth_value_from_an_older_version_still_signs_and_is_flagged() {
    let site = TpmSite::new();
    site.generate("new", "p-256");
    write_legacy_blob(&site, "old");
    let list = String::from_utf8(site.keyward_ok(&["key", "list"]).stdout).unwrap();
    assert!(list.lines().any(|l| l.starts_with("old ") && l.contains("auth: none")), "{list}");
    assert!(list.lines().any(|l| l.starts_with("new ") && !l.contains("auth: none")), "{list}");

    let agent = AgentProcess::start(&site);
    let public = site.public_pem("old");
    let salt222 = pss_sigopts("rsa_pss_saltlen:222", "rsa_mgf1_md:sha256");
    assert!(openssl_verify(&public, &site.sign_file("old", "nvflare", b"legacy"), "-sha256", &salt222));
    let status = String::from_utf8(site.keyward_ok(&["status"]).stdout).unwrap();
    assert!(status.lines().any(|l| l.contains("old") && l.contains("auth: none")), "{status}");
    assert!(!status.lines().any(|l| l.contains("new") && l.contains("auth: none")), "{status}");
    let json = String::from_utf8(site.keyward_ok(&["status", "--json"]).stdout).unwrap();
    assert_eq!(json.matches("\"empty_auth\": true").count(), 1, "{json}");
    assert!(agent.log_text().contains("TPM key has an empty auth value"), "{}", agent.log_text());
}

#[test]
fn a_left_over_auth_file_is_never_replaced_and_nothing_is_made_persistent() {
    use std::os::unix::fs::PermissionsExt;
    let site = TpmSite::new();
    site.set_persistent_handles(&[("site-1", "0x81000011")]);
    std::fs::create_dir_all(&site.key_dir).unwrap();
    let stale = site.auth_file("site-1");
    std::fs::write(&stale, b"left by an interrupted generate").unwrap();
    std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = site.keyward(&["key", "generate", "site-1", "--algorithm", "p-256"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("site-1.tpmauth") && stderr.contains("never replaces"), "{stderr}");
    assert_eq!(std::fs::read(&stale).unwrap(), b"left by an interrupted generate");
    let out = site.swtpm.tpm2("tpm2_getcap").arg("handles-persistent").output().unwrap();
    assert_success(&out, "tpm2_getcap handles-persistent");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("0x81000011"), "{out:?}");
}
