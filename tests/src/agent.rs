//! [`AgentProcess`]: the real `keyward serve` as a child process, its stderr in a log file,
//! ready once its socket answers `status`; dropped with SIGTERM (then SIGKILL after 5 s).

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use keyward_client::AgentClient;

/// A keyward config the agent can be started for (a SoftHSM [`crate::Site`] or a
/// [`crate::TpmSite`]).
pub trait AgentSite {
    /// A `keyward` command with the site's environment and config.
    fn command(&self) -> std::process::Command;
    /// A path inside the site's temp dir.
    fn path(&self, name: &str) -> PathBuf;
    /// The agent socket.
    fn socket(&self) -> PathBuf;
    /// The agent's audit log.
    fn audit_log(&self) -> PathBuf;

    /// The audit records, parsed, oldest first: the rotated files (`audit.log.1`, `.2`, …)
    /// in order, then the current one.
    fn audit_records(&self) -> Vec<serde_json::Value> {
        let log = self.audit_log();
        let mut files: Vec<(u64, PathBuf)> = (1..)
            .map(|n| (n, PathBuf::from(format!("{}.{n}", log.display()))))
            .take_while(|(_, path)| path.exists())
            .collect();
        files.push((u64::MAX, log));
        files
            .iter()
            .flat_map(|(_, path)| {
                std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect::<Vec<_>>()
            })
            .map(|l| serde_json::from_str(&l).expect("audit line is JSON"))
            .collect()
    }

    /// Runs `keyward ARGS` and returns its output.
    fn keyward(&self, args: &[&str]) -> std::process::Output {
        self.command().args(args).output().expect("run keyward")
    }

    /// Runs `keyward ARGS`, asserting success.
    fn keyward_ok(&self, args: &[&str]) -> std::process::Output {
        let out = self.keyward(args);
        crate::tools::assert_success(&out, &format!("keyward {}", args.join(" ")));
        out
    }

    /// Generates a key.
    fn generate(&self, name: &str, algorithm: &str) {
        self.keyward_ok(&["key", "generate", name, "--algorithm", algorithm]);
    }

    /// Signs `msg` with `keyward sign` through the agent; returns the message and signature
    /// files.
    fn sign_file(&self, key: &str, profile: &str, msg: &[u8]) -> (PathBuf, PathBuf) {
        let tag = format!("{key}-{profile}-{}", rand::random::<u32>());
        let msg_path = self.path(&format!("{tag}.msg"));
        std::fs::write(&msg_path, msg).expect("write message");
        let sig = self.path(&format!("{tag}.sig"));
        let (m, s) = (msg_path.to_str().expect("utf-8"), sig.to_str().expect("utf-8"));
        self.keyward_ok(&["sign", key, "--profile", profile, "--in", m, "--out", s]);
        (msg_path, sig)
    }

    /// A certificate for `key`: a CSR for `subject` made by `keyward csr` (signed in the token),
    /// issued by `ca` with the OpenSSL `extensions`; returns its path (`<key>.crt`), not installed.
    fn issue_certificate(&self, ca: &crate::TestCa, key: &str, subject: &str, extensions: &str) -> PathBuf {
        let csr = self.path(&format!("{key}.csr"));
        self.keyward_ok(&["csr", key, "--subject", subject, "--out", csr.to_str().expect("utf-8")]);
        let crt = self.path(&format!("{key}.crt"));
        ca.issue(&csr, &crt, extensions);
        crt
    }

    /// Installs `crt` as `key`'s certificate (`keyward cert install`).
    fn install_certificate(&self, key: &str, crt: &Path) {
        self.keyward_ok(&["cert", "install", key, crt.to_str().expect("utf-8")]);
    }

    /// Writes the key's public key PEM to a file and returns its path.
    fn public_pem(&self, name: &str) -> PathBuf {
        let path = self.path(&format!("{name}.pub.pem"));
        self.keyward_ok(&["key", "public", name, "--out", path.to_str().expect("utf-8")]);
        path
    }
}

/// How many audited events `records` stand for: one per record, except that a
/// `refusals_suppressed` summary stands for the `suppressed` refusals it counts (the
/// agent's refusal flood control, docs/security.md). With `outcome`, only those events.
pub fn audited_events(records: &[serde_json::Value], outcome: Option<&str>) -> u64 {
    records
        .iter()
        .filter(|r| outcome.is_none_or(|o| r["outcome"] == o))
        .map(|r| if r["op"] == "refusals_suppressed" { r["suppressed"].as_u64().unwrap_or(0) } else { 1 })
        .sum()
}

/// A running agent.
pub struct AgentProcess {
    child: Option<Child>,
    /// Its socket.
    pub socket: PathBuf,
    /// Its stderr log.
    pub log: PathBuf,
}

impl AgentProcess {
    /// Starts `keyward serve` for `site` and waits until it answers.
    pub fn start(site: &impl AgentSite) -> Self {
        let agent = Self::spawn(site);
        agent.wait_ready(Duration::from_secs(20));
        agent
    }

    /// As [`AgentProcess::start`], with extra environment variables.
    pub fn start_with_env(site: &impl AgentSite, env: &[(&str, &std::ffi::OsStr)]) -> Self {
        let agent = Self::spawn_with_env(site, env);
        agent.wait_ready(Duration::from_secs(20));
        agent
    }

    /// Starts `keyward serve` without waiting (for tests that expect it to fail).
    pub fn spawn(site: &impl AgentSite) -> Self {
        Self::spawn_with_env(site, &[])
    }

    /// As [`AgentProcess::spawn`], with extra environment variables.
    pub fn spawn_with_env(site: &impl AgentSite, env: &[(&str, &std::ffi::OsStr)]) -> Self {
        let log = site.path(&format!("agent-{}.log", rand::random::<u32>()));
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = site
            .command()
            .envs(env.iter().copied())
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn keyward serve");
        Self { child: Some(child), socket: site.socket(), log }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// Waits until an agent started with [`AgentProcess::spawn_with_env`] answers; false
    /// after 20 s.
    pub fn start_ready_check(agent: &Self) -> bool {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| agent.wait_ready(Duration::from_secs(20)))).is_ok()
    }

    fn wait_ready(&self, limit: Duration) {
        let start = Instant::now();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        loop {
            let ready = rt.block_on(async {
                let Ok(mut c) = AgentClient::connect(&self.socket).await else { return false };
                c.call(keyward_protocol::Operation::Hello).await.is_ok()
            });
            if ready {
                return;
            }
            assert!(start.elapsed() < limit, "agent not ready after {limit:?}; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the agent to exit by itself (up to `limit`).
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("child");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(start.elapsed() < limit, "agent still running after {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for exit.
    pub fn terminate(&mut self) -> ExitStatus {
        if let Some(child) = &self.child {
            let _ = nix_kill(child.id(), nix::sys::signal::Signal::SIGTERM);
        }
        self.wait_exit(Duration::from_secs(10))
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Signs a short message with `key` as `nvflare` over a new connection: `Ok` or the
    /// agent's error code.
    pub fn try_sign(&self, key: &str) -> Result<(), keyward_protocol::ErrorCode> {
        use keyward_client::ClientError;
        use keyward_protocol::{Operation, Reply};
        let mut c = keyward_client::BlockingAgentClient::connect(self.socket(), Duration::from_secs(20))
            .expect("connect to the agent");
        let key = keyward_core::KeyId::new(key).expect("key name");
        match c.call(Operation::Sign { key, profile: "nvflare".into(), data: b"m".to_vec() }) {
            Ok(Reply::Signature { .. }) => Ok(()),
            Err(ClientError::Agent { code, .. }) => Err(code),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

fn nix_kill(pid: u32, signal: nix::sys::signal::Signal) -> nix::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| nix::Error::EINVAL)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::tools::stop_child(&mut child);
        }
    }
}
