//! Defects a hostile review found in the daemon, each shown fixed against the real agent on a
//! real SoftHSM2 token (and swtpm where the backends could differ):
//! - a client that sends requests and never reads its replies is disconnected after
//!   `limits.write_timeout_ms`, and its connection slot frees;
//! - a SIGHUP that removes a peer from `[access]` ends that peer's open connections, idle or
//!   in use;
//! - a request refused after admission (unknown key, a profile the key cannot do, a bad
//!   ciphertext length) gives its rate-limit token back;
//! - a ciphertext not below the modulus is `decryption_failed` on both backends;
//! - a request with a repeated JSON key is `malformed_request`;
//! - a socket folder that is a symbolic link is refused at start;
//! - a PIN file that is a FIFO is refused at once (no hang) by the agent and the CLI, and a
//!   PIN file of two lines is refused without showing it.
//!
//! The NVFlare parts (nonces per caller, the server nonce's shape) are in `nvflare_flow.rs`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use keyward_client::BlockingAgentClient;
use keyward_client::ClientError;
use keyward_core::KeyId;
use keyward_protocol::{ErrorCode, Operation, Reply};
use keyward_tests::raw::{error_code, frame, RawConn};
use keyward_tests::{AgentProcess, AgentSite, Site, TpmSite};

fn client(socket: &Path) -> BlockingAgentClient {
    BlockingAgentClient::connect(socket, Duration::from_secs(10)).unwrap()
}

fn code_of(result: Result<Reply, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Agent { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn key(name: &str) -> KeyId {
    KeyId::new(name).unwrap()
}

fn hangup(agent: &AgentProcess) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(agent.pid()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
}

/// Waits until the agent's log contains `needle`.
fn wait_for_log(agent: &AgentProcess, needle: &str) {
    let started = Instant::now();
    while !agent.log_text().contains(needle) {
        assert!(started.elapsed() < Duration::from_secs(5), "no `{needle}` in the log:\n{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `hello` on a fresh connection: `None` when served, else the error code.
fn hello_code(socket: &Path) -> Option<String> {
    let mut c = RawConn::connect(socket);
    // A refused connection may be closed before the write lands; its reply is still there.
    let _ = c.stream.write_all(&frame(br#"{"v":1,"id":1,"op":"hello"}"#));
    error_code(&c.read_reply()).map(str::to_owned)
}

/// A connection that got its slot: the readiness probe's connection may still hold the only
/// slot for a moment after it closed, so retry while the agent answers `busy`.
fn served_connection(socket: &Path) -> RawConn {
    let started = Instant::now();
    loop {
        let mut c = RawConn::connect(socket);
        let _ = c.stream.write_all(&frame(br#"{"v":1,"id":1,"op":"hello"}"#));
        match error_code(&c.read_reply()) {
            None => return c,
            Some("busy") if started.elapsed() < Duration::from_secs(5) => std::thread::sleep(Duration::from_millis(50)),
            Some(other) => panic!("no slot for the test connection: {other}"),
        }
    }
}

#[test]
fn a_client_that_never_reads_is_disconnected_after_the_write_timeout_its_slot_frees_and_it_is_audited() {
    let site = Site::new();
    site.set_config("limits", "max_connections", 1.into());
    site.set_config("limits", "write_timeout_ms", 1000.into());
    let agent = AgentProcess::start(&site);

    // Pipeline `status` requests and never read: the replies fill both socket buffers, the
    // agent's write stalls, it stops reading, and then our writes stall too.
    let mut stalled = served_connection(agent.socket());
    stalled.stream.set_write_timeout(Some(Duration::from_millis(300))).unwrap();
    let request = frame(br#"{"v":1,"id":7,"op":"status"}"#);
    let mut sent = 0;
    while sent < 100_000 {
        match stalled.stream.write_all(&request) {
            Ok(()) => sent += 1,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("write failed before the buffers filled: {e}"),
        }
    }
    assert!(sent < 100_000, "the agent never stopped taking requests");
    let stalled_at = Instant::now();
    // While the stalled client holds the only slot, others are turned away.
    assert_eq!(hello_code(agent.socket()).as_deref(), Some("busy"));

    // After the write timeout the slot frees and another client is served.
    while hello_code(agent.socket()).is_some() {
        assert!(stalled_at.elapsed() < Duration::from_secs(8), "slot still held; log:\n{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let freed = stalled_at.elapsed();
    assert!(agent.log_text().contains("write timeout"), "{}", agent.log_text());
    // The reply that was never taken up is in the audit log, after the request's own record.
    let records = site.audit_records();
    let untaken = records.iter().filter(|r| r["op"] == "reply" && r["outcome"] == "write_timeout").count();
    assert_eq!(untaken, 1, "one write_timeout record expected: {records:?}");

    // The stalled connection itself was closed: what was buffered, then end of stream.
    let mut drained = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stalled.stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => drained += n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("stalled connection not closed by the agent: {e}"),
        }
    }
    eprintln!("{sent} requests written before the stall; slot free {freed:?} later; {drained} reply bytes buffered");
}

#[test]
fn a_reload_that_removes_a_peer_from_access_closes_its_open_connections() {
    let site = Site::new();
    let agent = AgentProcess::start(&site);
    let mut busy = RawConn::connect(agent.socket());
    assert_eq!(error_code(&busy.request(br#"{"v":1,"id":1,"op":"hello"}"#)), None);
    let mut idle = RawConn::connect(agent.socket());
    assert_eq!(error_code(&idle.request(br#"{"v":1,"id":1,"op":"hello"}"#)), None);

    // Only uid 12345 from now on: this process (the agent's own uid) is no longer allowed.
    site.set_config("access", "allowed_uids", vec![toml::Value::from(12345)].into());
    hangup(&agent);
    wait_for_log(&agent, "config reloaded");

    // The idle connection is told and closed without sending anything.
    let told = idle.read_reply();
    assert_eq!(error_code(&told), Some("permission_denied"), "{told}");
    assert!(told["body"]["message"].as_str().unwrap().contains("no longer allowed"), "{told}");
    assert!(idle.is_closed());
    // The connection in use gets no further request served.
    let _ = busy.stream.write_all(&frame(br#"{"v":1,"id":2,"op":"status"}"#));
    let reply = busy.read_reply();
    assert_eq!(error_code(&reply), Some("permission_denied"), "{reply}");
    assert!(busy.is_closed());
    // And a new connection is refused as before.
    assert_eq!(hello_code(agent.socket()).as_deref(), Some("permission_denied"));
}

#[test]
fn a_request_refused_after_admission_takes_no_rate_limit_token() {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    site.append_config(
        "[keys.site-1]\nrate_limit = { per_minute = 1, burst = 2 }\n\n[keys.ghost]\nrate_limit = { per_minute = 1, burst = 1 }\n",
    );
    let agent = AgentProcess::start(&site);
    let mut c = client(agent.socket());
    for _ in 0..4 {
        // A profile an RSA key cannot do, and a ciphertext of the wrong length: both pass
        // the policy, then fail before the key is used.
        let ecdsa =
            Operation::Sign { key: key("site-1"), profile: "tls-ecdsa-p256-sha256".into(), data: b"m".to_vec() };
        assert_eq!(code_of(c.call(ecdsa)), ErrorCode::Unsupported);
        assert_eq!(
            code_of(c.call(Operation::Decrypt { key: key("site-1"), data: vec![1, 2] })),
            ErrorCode::InvalidRequest
        );
        // A key with a policy but not in the token.
        let ghost = Operation::Sign { key: key("ghost"), profile: "nvflare".into(), data: b"m".to_vec() };
        assert_eq!(code_of(c.call(ghost)), ErrorCode::UnknownKey);
    }
    // The whole budget is still there: exactly `burst` signatures, then the limit.
    let sign = || Operation::Sign { key: key("site-1"), profile: "nvflare".into(), data: b"m".to_vec() };
    assert!(matches!(c.call(sign()), Ok(Reply::Signature { .. })));
    assert!(matches!(c.call(sign()), Ok(Reply::Signature { .. })));
    assert_eq!(code_of(c.call(sign())), ErrorCode::RateLimited);
}

/// `decrypt` of all-0xFF bytes (greater than any modulus of that length) through the agent
/// of `site`, then a real OAEP-SHA-256 ciphertext made by openssl to show the key still works.
fn decrypt_out_of_range_and_then_a_real_ciphertext(site: &impl AgentSite) {
    site.generate("site-1", "rsa-2048");
    let public = site.public_pem("site-1");
    let agent = AgentProcess::start(site);
    let mut c = client(agent.socket());
    let result = c.call(Operation::Decrypt { key: key("site-1"), data: vec![0xff; 256] });
    match result {
        Err(ClientError::Agent { code, message }) => {
            assert_eq!(code, ErrorCode::DecryptionFailed, "{message}");
            assert_eq!(message, "decryption failed");
        }
        other => panic!("expected decryption_failed, got {other:?}"),
    }
    let (plain, ct) = (site.path("plain"), site.path("ct"));
    std::fs::write(&plain, b"cell key").unwrap();
    let out = keyward_tests::openssl(&[
        "pkeyutl",
        "-encrypt",
        "-pubin",
        "-inkey",
        public.to_str().unwrap(),
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-pkeyopt",
        "rsa_oaep_md:sha256",
        "-pkeyopt",
        "rsa_mgf1_md:sha256",
        "-in",
        plain.to_str().unwrap(),
        "-out",
        ct.to_str().unwrap(),
    ]);
    keyward_tests::tools::assert_success(&out, "openssl OAEP encryption");
    let reply = c.call(Operation::Decrypt { key: key("site-1"), data: std::fs::read(&ct).unwrap() }).unwrap();
    assert_eq!(reply, Reply::Plaintext { plaintext: b"cell key".to_vec() });
}

#[test]
fn a_ciphertext_not_below_the_modulus_is_decryption_failed_on_softhsm() {
    decrypt_out_of_range_and_then_a_real_ciphertext(&Site::new());
}

#[test]
fn a_ciphertext_not_below_the_modulus_is_decryption_failed_on_swtpm() {
    decrypt_out_of_range_and_then_a_real_ciphertext(&TpmSite::new());
}

#[test]
fn a_request_with_a_repeated_json_key_is_malformed_and_the_connection_stays_open() {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    let agent = AgentProcess::start(&site);
    let mut c = RawConn::connect(agent.socket());
    let twice = br#"{"v":1,"id":4,"op":"sign","key":"site-1","profile":"tls","data":"bQ==","profile":"nvflare"}"#;
    let reply = c.request(twice);
    assert_eq!(error_code(&reply), Some("malformed_request"), "{reply}");
    assert_eq!(reply["body"]["message"], "frame is not valid JSON: duplicate key `profile`");
    assert_eq!(error_code(&c.request(br#"{"v":1,"id":5,"op":"hello"}"#)), None);
    let records = site.audit_records();
    assert!(records.iter().any(|r| r["outcome"] == "malformed_request"), "refusal not audited");
    assert!(!records.iter().any(|r| r["op"] == "sign"), "nothing was signed");
}

#[test]
fn a_socket_folder_that_is_a_symbolic_link_is_refused() {
    let site = Site::new();
    let real = site.path("real-run");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&real, site.socket.parent().unwrap()).unwrap();

    let mut agent = AgentProcess::spawn(&site);
    let status = agent.wait_exit(Duration::from_secs(20));
    assert!(!status.success(), "agent served through a symlinked socket folder");
    let log = agent.log_text();
    assert!(log.contains("is a symbolic link") && log.contains("real-run"), "{log}");
    assert_eq!(std::fs::read_dir(&real).unwrap().count(), 0, "nothing bound in the link's target");
}

/// Runs `cmd` with a deadline: its output, or a failure naming `what` if it hangs.
fn output_within(mut cmd: Command, limit: Duration, what: &str) -> Output {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_pin_file_that_is_a_fifo_or_has_two_lines_is_refused_at_once() {
    let site = Site::new();
    let fifo = site.path("pin-fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    site.set_config("backend", "pin_file", fifo.to_str().unwrap().into());

    let mut list = site.command();
    list.args(["key", "list"]);
    let out = output_within(list, Duration::from_secs(10), "`keyward key list` with a FIFO PIN file");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pin-fifo") && stderr.contains("is a FIFO, not a regular file"), "{stderr}");

    let mut agent = AgentProcess::spawn(&site);
    let status = agent.wait_exit(Duration::from_secs(10));
    assert!(!status.success());
    assert!(agent.log_text().contains("is a FIFO, not a regular file"), "{}", agent.log_text());

    let pin = site.hsm.pin();
    let two_lines = site.path("pin-two-lines");
    std::fs::write(&two_lines, format!("{}\nsecond line\n", pin.trim_end())).unwrap();
    std::fs::set_permissions(&two_lines, std::fs::Permissions::from_mode(0o600)).unwrap();
    site.set_config("backend", "pin_file", two_lines.to_str().unwrap().into());
    let out = site.keyward(&["key", "list"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has more than one line"), "{stderr}");
    assert!(!stderr.contains(pin.trim_end()) && !stderr.contains("second line"), "PIN file content leaked: {stderr}");
}
