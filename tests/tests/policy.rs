//! Per-key policy against a real agent: callers refused by executable (the `keyward` CLI is
//! allowed and this test binary is not; then the Python client through a symlinked venv
//! interpreter is allowed and the CLI is not; a caller that exited before its request is refused),
//! by uid, by profile, and by rate (a burst is cut after exactly `burst` uses and allowed
//! again after the refill time). Every refusal has its precise code and an audit record, and
//! the agent keeps serving.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use keyward_client::BlockingAgentClient;
use keyward_client::ClientError;
use keyward_core::KeyId;
use keyward_protocol::{ErrorCode, Operation, Reply};
use keyward_tests::tools::{keyward_bin, run_python};
use keyward_tests::{AgentProcess, Site};

fn client(agent: &AgentProcess) -> BlockingAgentClient {
    BlockingAgentClient::connect(agent.socket(), Duration::from_secs(10)).unwrap()
}

fn sign(c: &mut BlockingAgentClient, key: &str, profile: &str) -> Result<Reply, ClientError> {
    c.call(Operation::Sign { key: KeyId::new(key).unwrap(), profile: profile.into(), data: b"policy test".to_vec() })
}

/// The refusal's code and message.
fn refused(result: Result<Reply, ClientError>) -> (ErrorCode, String) {
    match result {
        Err(ClientError::Agent { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn site_with(keys_toml: &str) -> Site {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    site.append_config(keys_toml);
    site
}

fn outcomes(site: &Site, op: &str) -> Vec<String> {
    site.audit_records().iter().filter(|r| r["op"] == op).map(|r| r["outcome"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn only_the_allowed_executable_may_use_the_key() {
    let bin = keyward_bin().canonicalize().unwrap();
    let site = site_with(&format!("[keys.site-1]\nallowed_executables = [\"{}\"]\n", bin.display()));
    let agent = AgentProcess::start(&site);

    // The keyward CLI is the allowed executable.
    let msg = site.path("m");
    std::fs::write(&msg, b"from the allowed binary").unwrap();
    site.keyward_ok(&["sign", "site-1", "--profile", "tls", "--in", msg.to_str().unwrap()]);

    // This test binary is not.
    let (code, message) = refused(sign(&mut client(&agent), "site-1", "tls"));
    assert_eq!(code, ErrorCode::PolicyDenied);
    let me = std::env::current_exe().unwrap().canonicalize().unwrap();
    assert!(message.contains(&format!("caller executable `{}`", me.display())), "{message}");
    assert!(message.contains("keys.site-1.allowed_executables"), "{message}");
    // Public information stays readable, and the agent keeps serving.
    client(&agent).call(Operation::PublicKey { key: KeyId::new("site-1").unwrap() }).unwrap();
    assert_eq!(outcomes(&site, "sign"), ["ok", "policy_denied"]);
}

#[test]
fn a_symlinked_interpreter_is_resolved_and_the_keyward_cli_is_then_refused() {
    // The venv's `python` is a chain of symlinks; the agent compares resolved paths.
    let python = keyward_tests::python();
    assert!(python.symlink_metadata().unwrap().file_type().is_symlink(), "{}", python.display());
    let site = site_with(&format!("[keys.site-1]\nallowed_executables = [\"{}\"]\n", python.display()));
    let agent = AgentProcess::start(&site);

    let script = "import sys\nfrom keyward import KeywardClient\nKeywardClient(sys.argv[1]).sign('site-1', 'tls', b'hi')\nprint('signed')";
    let out = std::process::Command::new(&python)
        .env("PYTHONPATH", keyward_tests::workspace_root().join("python/src"))
        .args(["-c", script, agent.socket().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "signed", "{out:?}");

    let msg = site.path("m");
    std::fs::write(&msg, b"from another binary").unwrap();
    let out = site.keyward(&["sign", "site-1", "--profile", "tls", "--in", msg.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("policy_denied") && stderr.contains("allowed_executables"), "{stderr}");
    assert_eq!(outcomes(&site, "sign"), ["ok", "policy_denied"]);
}

#[test]
fn a_caller_that_exited_after_connecting_is_refused() {
    let bin = keyward_bin().canonicalize().unwrap();
    let site = site_with(&format!("[keys.site-1]\nallowed_executables = [\"{}\"]\n", bin.display()));
    let agent = AgentProcess::start(&site);
    // The process that connects forks and exits at once; its child, which holds the
    // connection, sends the request only once the connecting process is gone.
    let script = r#"
import json, os, socket, struct, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
parent = os.getpid()
if os.fork() != 0:
    os._exit(0)
while os.getppid() == parent:
    time.sleep(0.01)
body = json.dumps({"v": 1, "id": 7, "op": "sign", "key": "site-1", "profile": "tls", "data": "aGk="}).encode()
s.sendall(struct.pack(">I", len(body)) + body)
n = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]
print(s.recv(n, socket.MSG_WAITALL).decode())
"#;
    let out = run_python(script, &[agent.socket().to_str().unwrap()]);
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{out:?}"));
    assert_eq!(reply["body"]["code"], "policy_denied", "{reply}");
    assert!(reply["body"]["message"].as_str().unwrap().contains("has exited"), "{reply}");
    assert_eq!(outcomes(&site, "sign"), ["policy_denied"]);
}

#[test]
fn profiles_and_callers_outside_the_policy_are_refused() {
    let site = site_with("[keys.site-1]\nprofiles = [\"nvflare\"]\n\n[keys.site-2]\nallowed_uids = [12345]\n");
    site.generate("site-2", "rsa-2048");
    let agent = AgentProcess::start(&site);
    let mut c = client(&agent);

    sign(&mut c, "site-1", "nvflare").unwrap();
    for profile in ["tls", "tls-rsa-pkcs1-sha256"] {
        let (code, message) = refused(sign(&mut c, "site-1", profile));
        assert_eq!(code, ErrorCode::PolicyDenied);
        assert!(message.contains(&format!("does not allow profile `{profile}` (keys.site-1.profiles)")), "{message}");
    }
    let (code, message) = refused(sign(&mut c, "site-2", "tls"));
    assert_eq!(code, ErrorCode::PolicyDenied);
    assert!(message.contains("keys.site-2.allowed_uids"), "{message}");
    // The same connection is still served.
    sign(&mut c, "site-1", "nvflare").unwrap();
    assert_eq!(outcomes(&site, "sign"), ["ok", "policy_denied", "policy_denied", "policy_denied", "ok"]);
}

#[test]
fn a_burst_is_cut_after_exactly_burst_uses_and_allowed_again_after_the_refill_time() {
    // 12 per minute: one token every 5 s.
    let site = site_with("[keys.site-1]\nrate_limit = { per_minute = 12, burst = 3 }\n");
    let agent = AgentProcess::start(&site);
    let mut c = client(&agent);

    for _ in 0..3 {
        sign(&mut c, "site-1", "tls").unwrap();
    }
    let cut = Instant::now();
    let (code, message) = refused(sign(&mut c, "site-1", "tls"));
    assert_eq!(code, ErrorCode::RateLimited);
    assert!(message.contains("(12 per minute, burst 3)") && message.contains("keys.site-1.rate_limit"), "{message}");
    // Decryption draws on the same key-wide bucket.
    let ct = vec![0u8; 256];
    let (code, _) = refused(c.call(Operation::Decrypt { key: KeyId::new("site-1").unwrap(), data: ct }));
    assert_eq!(code, ErrorCode::RateLimited);

    // Not before the refill time...
    std::thread::sleep(Duration::from_secs(3).saturating_sub(cut.elapsed()));
    assert_eq!(refused(sign(&mut c, "site-1", "tls")).0, ErrorCode::RateLimited);
    // ...and exactly one use once it has passed.
    std::thread::sleep(Duration::from_millis(5200).saturating_sub(cut.elapsed()));
    sign(&mut c, "site-1", "tls").unwrap();
    assert_eq!(refused(sign(&mut c, "site-1", "tls")).0, ErrorCode::RateLimited);
    assert_eq!(outcomes(&site, "sign"), ["ok", "ok", "ok", "rate_limited", "rate_limited", "ok", "rate_limited"]);
    assert_eq!(outcomes(&site, "decrypt"), ["rate_limited"]);
}
