//! Running as a service: the agent refuses root unless its config opts in; the systemd unit
//! in `deploy/systemd/` (with each drop-in) passes `systemd-analyze verify` without a single
//! warning and keeps its `systemd-analyze security` exposure under a measured threshold; and
//! `READY=1` reaches `$NOTIFY_SOCKET` only once the agent's socket answers, `STOPPING=1` at
//! SIGTERM.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keyward_client::AgentClient;
use keyward_protocol::Operation;
use keyward_tests::tools::{assert_success, keyward_bin};
use keyward_tests::{workspace_root, AgentProcess, Site};

/// Highest overall exposure accepted from `systemd-analyze security` (systemd 252 measured
/// 0.4 for the unit alone, 1.1 with the loopback TCP drop-in; 10 is fully exposed).
const MAX_EXPOSURE: f64 = 1.5;

#[test]
fn serve_as_root_is_refused_unless_the_config_allows_it() {
    let site = Site::new(); // written with `init --allow-root`
    site.set_config("agent", "allow_root", false.into());
    let out = site.keyward(&["serve"]);
    if nix::unistd::geteuid().is_root() {
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("refusing to run as root") && stderr.contains("allow_root"), "{stderr}");
        assert!(!site.socket.exists(), "no socket is bound before the refusal");
        site.set_config("agent", "allow_root", true.into());
        let agent = AgentProcess::start(&site);
        assert!(agent.log_text().contains("running as root because `agent.allow_root = true`"));
    } else {
        // Not root: the setting does not matter; the agent starts (and is stopped below).
        drop(out);
        let _agent = AgentProcess::start(&site);
    }
}

/// The unit with `ExecStart` pointing at the built binary (verify checks it is executable),
/// plus the named drop-ins, in a fresh folder.
fn unit_copy(dir: &Path, drop_ins: &[&str]) -> PathBuf {
    let source = workspace_root().join("deploy/systemd");
    let text = std::fs::read_to_string(source.join("keyward.service")).unwrap();
    assert!(text.contains("ExecStart=/usr/bin/keyward "), "unit ExecStart changed; update this test");
    let unit = dir.join("keyward.service");
    let exec = format!("ExecStart={} ", keyward_bin().display());
    std::fs::write(&unit, text.replace("ExecStart=/usr/bin/keyward ", &exec)).unwrap();
    let d = dir.join("keyward.service.d");
    std::fs::create_dir_all(&d).unwrap();
    for name in drop_ins {
        std::fs::copy(source.join("drop-ins").join(name), d.join(name)).unwrap();
    }
    unit
}

fn systemd_analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .env("SYSTEMD_PAGER", "")
        .output()
        .expect("systemd-analyze is installed (package systemd, scripts/install-packages.sh)")
}

#[test]
fn systemd_unit_verifies_cleanly_and_its_exposure_stays_low() {
    for drop_ins in [
        &[][..],
        &["tpm.conf"],
        &["loopback-tcp.conf"],
        &["softhsm.conf"],
        &["softhsm.conf", "allowed-executables.conf"],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let unit = unit_copy(dir.path(), drop_ins);
        let unit = unit.to_str().unwrap();
        // verify exits 0 on unknown keys and bad values (it only warns): any output fails.
        let out = systemd_analyze(&["verify", unit]);
        assert_success(&out, "systemd-analyze verify");
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(said.trim().is_empty(), "systemd-analyze verify with {drop_ins:?} warned:\n{said}");

        let out = systemd_analyze(&["security", "--offline=yes", "--no-pager", unit]);
        assert_success(&out, "systemd-analyze security");
        let text = String::from_utf8_lossy(&out.stdout);
        let exposure: f64 = text
            .lines()
            .find_map(|l| {
                l.split_once("Overall exposure level for keyward.service: ")?.1.split(' ').next()?.parse().ok()
            })
            .unwrap_or_else(|| panic!("no exposure line in:\n{text}"));
        eprintln!("exposure with {drop_ins:?}: {exposure}");
        assert!(exposure <= MAX_EXPOSURE, "exposure {exposure} > {MAX_EXPOSURE} with {drop_ins:?}:\n{text}");
    }
}

#[test]
fn systemd_verify_catches_a_mistyped_setting() {
    // The check above would be worthless if verify stayed silent on a broken unit.
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path(), &[]);
    let text = std::fs::read_to_string(&unit).unwrap().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes");
    std::fs::write(&unit, text).unwrap();
    let out = systemd_analyze(&["verify", unit.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unknown key"), "{out:?}");
}

#[test]
fn ready_is_notified_only_once_the_socket_answers_and_stopping_at_sigterm() {
    let site = Site::new();
    let notify_path = site.path("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut agent = AgentProcess::spawn_with_env(&site, &[("NOTIFY_SOCKET", notify_path.as_os_str())]);

    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).unwrap_or_else(|e| panic!("no notification ({e}); log:\n{}", agent.log_text()));
    assert_eq!(&buf[..n], b"READY=1");
    // The very first connection after READY=1 must be served: no retry, no sleep.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut client = AgentClient::connect(&site.socket).await.expect("socket bound before READY=1");
        client.call(Operation::Hello).await.expect("agent serves right after READY=1");
    });

    let status = agent.terminate();
    assert!(status.success(), "{status:?}");
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
}

#[test]
fn a_failed_start_never_notifies_ready() {
    let site = Site::new();
    std::fs::write(&site.hsm.pin_file, "wrong-pin\n").unwrap();
    let notify_path = site.path("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_nonblocking(true).unwrap();
    let mut agent = AgentProcess::spawn_with_env(&site, &[("NOTIFY_SOCKET", notify_path.as_os_str())]);
    let status = agent.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(6), "wrong PIN exit code; log:\n{}", agent.log_text());
    let mut buf = [0u8; 256];
    assert!(notify.recv(&mut buf).is_err(), "got {:?}", String::from_utf8_lossy(&buf));
}
