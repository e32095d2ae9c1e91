//! The socket as a hostile client sees it: garbage, oversized, truncated and stalled
//! frames, unknown operations and keys — each answered with its precise error code, and the
//! agent still serving the next client. Peer uid/gid checks with a real second user
//! (`nobody`), and the socket's life: live-agent refusal, stale socket cleanup, removal on
//! SIGTERM.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use keyward_tests::{AgentProcess, Site};
use serde_json::Value;

fn connect(socket: &Path) -> UnixStream {
    let s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

fn read_reply(s: &mut UnixStream) -> Value {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("reply length");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).expect("reply body");
    serde_json::from_slice(&body).expect("reply is JSON")
}

fn error_code(reply: &Value) -> &str {
    assert_eq!(reply["status"], "error", "{reply}");
    reply["body"]["code"].as_str().expect("code")
}

fn request(s: &mut UnixStream, json: &str) -> Value {
    s.write_all(&frame(json.as_bytes())).unwrap();
    read_reply(s)
}

/// The connection was closed by the agent.
fn assert_closed(s: &mut UnixStream) {
    let mut buf = [0u8; 1];
    assert_eq!(s.read(&mut buf).expect("read after close"), 0, "connection still open");
}

/// A fresh client still gets answers.
fn assert_still_serving(socket: &Path) {
    let mut s = connect(socket);
    let reply = request(&mut s, r#"{"v":1,"id":99,"op":"hello"}"#);
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(reply["id"], 99);
}

#[test]
fn bad_frames_get_precise_errors_and_the_agent_keeps_serving() {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    site.set_config("limits", "read_timeout_ms", 400.into());
    let agent = AgentProcess::start(&site);
    let socket = agent.socket();

    // Garbage bytes (an HTTP request): "GET " read as a length is far over the limit.
    let mut s = connect(socket);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(error_code(&read_reply(&mut s)), "frame_too_large");
    assert_closed(&mut s);
    assert_still_serving(socket);

    // Garbage inside a well-formed frame: the request is refused, the connection stays.
    let mut s = connect(socket);
    s.write_all(&frame(b"\x00\x01\xffnot json")).unwrap();
    assert_eq!(error_code(&read_reply(&mut s)), "malformed_request");
    assert_eq!(request(&mut s, r#"{"v":1,"id":2,"op":"hello"}"#)["status"], "ok");

    // A length prefix over the limit, body never sent.
    let mut s = connect(socket);
    s.write_all(&((1u32 << 20) + 1).to_be_bytes()).unwrap();
    let reply = read_reply(&mut s);
    assert_eq!(error_code(&reply), "frame_too_large");
    assert!(reply["body"]["message"].as_str().unwrap().contains("1048576"), "{reply}");
    assert_closed(&mut s);
    assert_still_serving(socket);

    // A truncated frame: 10 of 100 bytes, then end of stream.
    let mut s = connect(socket);
    s.write_all(&100u32.to_be_bytes()).unwrap();
    s.write_all(b"{\"v\":1,\"id").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(error_code(&read_reply(&mut s)), "truncated_frame");
    assert_still_serving(socket);

    // Half a frame, then silence: the read timeout closes it.
    let mut s = connect(socket);
    s.write_all(&100u32.to_be_bytes()).unwrap();
    s.write_all(b"{\"v\":1").unwrap();
    assert_eq!(error_code(&read_reply(&mut s)), "read_timeout");
    assert_closed(&mut s);
    assert_still_serving(socket);

    // Request-level errors keep the connection open and echo the id.
    let mut s = connect(socket);
    let reply = request(&mut s, r#"{"v":1,"id":5,"op":"erase_token"}"#);
    assert_eq!((error_code(&reply), reply["id"].as_u64()), ("unknown_operation", Some(5)));
    let reply = request(&mut s, r#"{"v":1,"id":6,"op":"sign","key":"no-such-key","profile":"nvflare","data":"aGk="}"#);
    assert_eq!((error_code(&reply), reply["id"].as_u64()), ("unknown_key", Some(6)));
    assert!(reply["body"]["message"].as_str().unwrap().contains("no-such-key"), "{reply}");
    let reply = request(&mut s, r#"{"v":2,"id":7,"op":"hello"}"#);
    assert_eq!(error_code(&reply), "unsupported_version");
    let reply = request(&mut s, r#"{"v":1,"id":8,"op":"sign","key":"site-1","profile":"pss-please","data":"aGk="}"#);
    assert_eq!(error_code(&reply), "invalid_request");
    let reply = request(&mut s, r#"{"v":1,"id":9,"op":"decrypt","key":"site-1","data":"aGk="}"#);
    assert_eq!(error_code(&reply), "invalid_request", "a 2-byte ciphertext for a 256-byte key");
    let reply = request(&mut s, r#"{"v":1,"id":10,"op":"sign","key":"site-1","profile":"nvflare","data":"c2l0ZS0x"}"#);
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(reply["body"]["profile"], "nvflare");

    // Every one of those was audited, none with a secret.
    let records = site.audit_records();
    let outcomes: Vec<&str> = records.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    for code in
        ["frame_too_large", "malformed_request", "truncated_frame", "read_timeout", "unknown_operation", "unknown_key"]
    {
        assert!(outcomes.contains(&code), "no audit record with outcome {code}: {outcomes:?}");
    }
    let signed = records.iter().find(|r| r["op"] == "sign" && r["outcome"] == "ok").expect("sign audited");
    assert_eq!(signed["key"], "site-1");
    assert_eq!(signed["payload_len"], 6);
    assert_eq!(signed["payload_sha256"].as_str().unwrap().len(), 64);
    assert!(signed["peer"]["uid"].is_u64() && signed["peer"]["pid"].is_i64());
}

/// `keyward status` as `nobody`.
fn keyward_as_nobody(site: &Site, socket: &Path) -> std::process::Output {
    let socket = socket.to_str().unwrap();
    keyward_tests::tools::keyward_as_nobody(site.hsm.dir.path(), &["status", "--socket", socket], &[])
}

#[test]
fn a_peer_whose_uid_is_not_allowed_is_refused_before_any_request() {
    use std::os::unix::fs::PermissionsExt;
    let site = Site::new();
    // Let `nobody` reach the socket through the file system, so only keyward's own
    // SO_PEERCRED check stands in the way.
    std::fs::set_permissions(site.hsm.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    site.set_config("access", "socket_gid", 65534.into());
    let agent = AgentProcess::start(&site);
    let mode = std::fs::metadata(agent.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);

    let out = keyward_as_nobody(&site, agent.socket());
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("permission_denied") && stderr.contains("uid 65534"), "{stderr}");
    assert_still_serving(agent.socket());
    let refused = site.audit_records().into_iter().find(|r| r["op"] == "connect").expect("refusal audited");
    assert_eq!(refused["peer"]["uid"], 65534);
    assert_eq!(refused["outcome"], "permission_denied");
    drop(agent);

    // Control: the same user, once allowed by gid, gets through.
    site.set_config("access", "allowed_gids", vec![toml::Value::from(65534)].into());
    let agent = AgentProcess::start(&site);
    let out = keyward_as_nobody(&site, agent.socket());
    assert!(out.status.success(), "allowed gid still refused: {out:?}");
}

#[test]
fn the_socket_is_private_a_live_agent_is_not_replaced_and_sigterm_removes_the_socket() {
    use std::os::unix::fs::PermissionsExt;
    let site = Site::new();
    let mut first = AgentProcess::start(&site);
    let socket = site.socket.clone();
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(socket.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);

    let mut second = AgentProcess::spawn(&site);
    let status = second.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    assert!(second.log_text().contains("already serving"), "{}", second.log_text());
    assert_still_serving(&socket);

    assert!(first.terminate().success(), "agent exit status after SIGTERM");
    assert!(!socket.exists(), "socket left behind after SIGTERM");
    assert!(first.log_text().contains("stopped"));
}

#[test]
fn a_stale_socket_from_a_killed_agent_is_replaced() {
    let site = Site::new();
    let first = AgentProcess::start(&site);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first.pid() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(site.socket.exists(), "SIGKILL leaves the socket file");
    let second = AgentProcess::start(&site);
    assert!(second.log_text().contains("removed stale socket"), "{}", second.log_text());
    assert_still_serving(&site.socket);
    drop(first);
}
