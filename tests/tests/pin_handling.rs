//! PIN handling against a real token: a wrong PIN is tried exactly once (counted by OpenSC's
//! PKCS#11 spy sitting between keyward and SoftHSM) and reported naming the token; the PIN
//! never appears in argv, environment, logs, audit records, config or CLI output; a PIN
//! file others can read is refused before any login.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use keyward_tests::{AgentProcess, Site};

const SPY: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so";

fn write_pin_file(site: &Site, name: &str, pin: &str, mode: u32) -> std::path::PathBuf {
    let path = site.path(name);
    std::fs::write(&path, pin).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn a_wrong_pin_is_tried_exactly_once_and_reported_naming_the_token() {
    let site = Site::new();
    assert!(std::path::Path::new(SPY).exists(), "pkcs11-spy.so missing: install package opensc");
    let wrong = "wrong-pin-5e1f";
    let wrong_file = write_pin_file(&site, "wrong-pin", wrong, 0o600);
    site.set_config("backend", "pin_file", wrong_file.to_str().unwrap().into());
    site.set_config("backend", "module", SPY.into());
    let spy_log = site.path("spy.log");
    let mut agent = AgentProcess::spawn_with_env(
        &site,
        &[("PKCS11SPY", site.hsm.module.as_os_str()), ("PKCS11SPY_OUTPUT", spy_log.as_os_str())],
    );
    let status = agent.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(6), "exit code for a rejected PIN; log:\n{}", agent.log_text());
    let log = agent.log_text();
    assert!(log.contains("PIN rejected by `fl-site`") && log.contains("not retried"), "{log}");
    assert!(!log.contains(wrong), "the PIN leaked into the agent's output");

    let spy = std::fs::read_to_string(&spy_log).expect("spy log");
    let logins = spy.lines().filter(|l| l.contains("C_Login")).count();
    assert_eq!(logins, 1, "expected exactly one C_Login, spy saw {logins}");
    assert!(spy.contains("CKR_PIN_INCORRECT"));

    // The token is not locked by that one attempt: the right PIN still works.
    site.set_config("backend", "pin_file", site.hsm.pin_file.to_str().unwrap().into());
    site.set_config("backend", "module", site.hsm.module.to_str().unwrap().into());
    let _agent = AgentProcess::start(&site);
}

#[test]
fn a_pin_file_readable_by_others_is_refused_before_any_login() {
    let site = Site::new();
    let pin = site.hsm.pin();
    let open_file = write_pin_file(&site, "open-pin", &pin, 0o644);
    site.set_config("backend", "pin_file", open_file.to_str().unwrap().into());
    let out = site.keyward(&["key", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mode 0644") && stderr.contains("open-pin"), "{stderr}");
    assert!(!stderr.contains(&pin));
}

#[test]
fn the_pin_appears_nowhere_keyward_writes_or_exposes() {
    let site = Site::new();
    let pin = site.hsm.pin();
    assert!(pin.len() >= 8);
    let mut outputs = Vec::new();
    for args in [vec!["key", "generate", "site-1"], vec!["key", "list"], vec!["key", "public", "site-1"]] {
        let out = site.keyward_ok(&args);
        outputs.push(String::from_utf8_lossy(&out.stdout).into_owned());
        outputs.push(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let agent = AgentProcess::spawn_with_env(&site, &[("KEYWARD_LOG", OsStr::new("trace"))]);
    // Wait until ready, then exercise every operation.
    let ready = AgentProcess::start_ready_check(&agent);
    assert!(ready, "agent not ready: {}", agent.log_text());
    let msg = site.path("m");
    std::fs::write(&msg, b"x").unwrap();
    for args in
        [vec!["status"], vec!["sign", "site-1", "--profile", "nvflare", "--in", msg.to_str().unwrap(), "--base64"]]
    {
        let out = site.keyward_ok(&args);
        outputs.push(String::from_utf8_lossy(&out.stdout).into_owned());
        outputs.push(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let wrong_key = site.keyward(&["sign", "nope", "--profile", "nvflare", "--in", msg.to_str().unwrap()]);
    outputs.push(String::from_utf8_lossy(&wrong_key.stderr).into_owned());

    let proc_dir = format!("/proc/{}", agent.pid());
    let cmdline = std::fs::read(format!("{proc_dir}/cmdline")).unwrap();
    let environ = std::fs::read(format!("{proc_dir}/environ")).unwrap();
    for (what, bytes) in [("cmdline", &cmdline), ("environ", &environ)] {
        assert!(!contains(bytes, pin.as_bytes()), "PIN found in the agent's {what}");
    }
    // No core dumps can carry the PIN or session state out of the agent.
    let limits = std::fs::read_to_string(format!("{proc_dir}/limits")).unwrap();
    let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap();
    assert_eq!(core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(), ["0", "0"], "{core}");
    drop(agent);
    let mut places = vec![
        ("config", std::fs::read_to_string(&site.config).unwrap()),
        ("audit log", std::fs::read_to_string(site.audit_log()).unwrap()),
    ];
    for entry in std::fs::read_dir(site.hsm.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            places.push(("agent log", std::fs::read_to_string(&path).unwrap()));
        }
    }
    places.extend(outputs.into_iter().map(|o| ("CLI output", o)));
    assert!(places.iter().any(|(w, t)| *w == "agent log" && t.contains("keyward agent ready")), "agent log captured");
    for (what, text) in places {
        assert!(!text.contains(&pin), "PIN found in {what}");
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
