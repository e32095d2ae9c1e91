//! A backend call that hangs, for real: SoftHSM2 takes POSIX (fcntl) locks on its token
//! files, so another process holding them makes the agent's `C_Sign` block. The request
//! gets `timeout` after `limits.request_timeout_ms`, `status` and `hello` keep answering at
//! once (they need no worker), the connection that got `timeout` keeps answering, `status`
//! reports the stuck backend, and once the locks are released the same agent signs again.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keyward_client::BlockingAgentClient;
use keyward_protocol::{ErrorCode, Operation, Reply, StatusReport};
use keyward_tests::{python, AgentProcess, Site};

const LOCKER: &str = r#"
import fcntl, os, sys
folder = sys.argv[1]
fds = []
for name in sorted(os.listdir(folder)):
    fd = os.open(os.path.join(folder, name), os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    fds.append(fd)
print("locked", len(fds), flush=True)
sys.stdin.read()
"#;

/// A process holding exclusive fcntl locks on every file of the token; released on drop.
struct TokenLocks(Child);

impl TokenLocks {
    fn take(site: &Site) -> Self {
        let tokens = site.hsm.dir.path().join("hsm/tokens");
        let folder = std::fs::read_dir(&tokens).unwrap().next().unwrap().unwrap().path();
        let mut child = Command::new(python())
            .args(["-c", LOCKER])
            .arg(&folder)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("locked "), "locker said {line:?}");
        Self(child)
    }
}

impl Drop for TokenLocks {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `status`, and how long it took.
fn status(agent: &AgentProcess) -> (StatusReport, Duration) {
    let started = Instant::now();
    let mut c = BlockingAgentClient::connect(agent.socket(), Duration::from_secs(20)).unwrap();
    let Reply::Status(s) = c.call(Operation::Status).unwrap() else { panic!("status reply") };
    (s, started.elapsed())
}

#[test]
fn a_hung_token_call_times_out_while_status_keeps_answering_and_signing_resumes_after() {
    let site = Site::new();
    site.set_config("limits", "request_timeout_ms", toml::Value::Integer(1000));
    site.generate("site-1", "rsa-2048");
    let agent = AgentProcess::start(&site);
    let pid = agent.pid();
    assert_eq!(agent.try_sign("site-1"), Ok(()));

    let locks = TokenLocks::take(&site);
    let started = Instant::now();
    assert_eq!(agent.try_sign("site-1"), Err(ErrorCode::Timeout));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1000) && took < Duration::from_secs(3), "timeout after {took:?}");

    // The connection that got `timeout` stays usable while its device call still hangs: the
    // watchdog answered for it and another thread serves the connection's next request.
    let mut same = BlockingAgentClient::connect(agent.socket(), Duration::from_secs(20)).unwrap();
    let key = keyward_core::KeyId::new("site-1").unwrap();
    let sign = Operation::Sign { key, profile: "nvflare".into(), data: b"m".to_vec() };
    match same.call(sign) {
        Err(keyward_client::ClientError::Agent { code: ErrorCode::Timeout, .. }) => {}
        other => panic!("expected timeout, got {other:?}"),
    }
    let t = Instant::now();
    assert!(matches!(same.call(Operation::Hello).unwrap(), Reply::Hello { .. }));
    assert!(t.elapsed() < Duration::from_millis(500), "hello on the timed-out connection took {:?}", t.elapsed());

    // The workers are stuck in C_Sign; status and hello need none and answer at once.
    let mut slowest = Duration::ZERO;
    let wait_down = Instant::now();
    let down = loop {
        let (s, took) = status(&agent);
        slowest = slowest.max(took);
        if s.backend_health == "down" {
            break s;
        }
        assert!(wait_down.elapsed() < Duration::from_secs(6), "status never said down: {s:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut c = BlockingAgentClient::connect(agent.socket(), Duration::from_secs(20)).unwrap();
    let t = Instant::now();
    assert!(matches!(c.call(Operation::Hello).unwrap(), Reply::Hello { .. }));
    slowest = slowest.max(t.elapsed());
    eprintln!("hung backend: sign answered timeout after {took:?}; slowest status/hello {slowest:?}; {down:?}");
    assert!(slowest < Duration::from_millis(500), "status/hello took {slowest:?} while the backend hung");
    assert!(down.backend_error.unwrap().contains("no worker answered a health check"));

    // Locks released: the stuck calls finish and the same agent signs again.
    drop(locks);
    let released = Instant::now();
    loop {
        match agent.try_sign("site-1") {
            Ok(()) => break,
            Err(ErrorCode::Timeout | ErrorCode::Busy) if released.elapsed() < Duration::from_secs(10) => {}
            other => panic!("after release: {other:?}\n{}", agent.log_text()),
        }
    }
    eprintln!("hung backend: locks released -> first good signature in {:?}", released.elapsed());
    let back = Instant::now();
    while status(&agent).0.backend_health != "ok" {
        assert!(back.elapsed() < Duration::from_secs(5), "status not ok again");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(agent.pid(), pid);
}
