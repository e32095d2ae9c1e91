//! [`Swtpm`]: an swtpm TPM 2.0 simulator as a child process, on its own state dir and a free
//! loopback TCP port pair (P for commands, P+1 for control: tss-esapi 7.x cannot use swtpm's
//! Unix sockets), ready once its control port accepts; killed on drop. It can be stopped,
//! killed and restarted on the same state and ports, like a rebooted machine.
//! [`TpmSite`]: a keyward config for it written by `keyward init --backend tpm`.

use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tools::{assert_success, keyward_bin};

/// A running (or stopped) swtpm.
pub struct Swtpm {
    /// The TPM state dir (removed on drop).
    pub state: tempfile::TempDir,
    /// Command port; control is `port + 1`.
    pub port: u16,
    child: Option<Child>,
}

/// A port P below the ephemeral range with P and P+1 free right now.
fn free_port_pair() -> u16 {
    crate::tls::free_ports(2)
}

impl Swtpm {
    /// Starts a fresh swtpm.
    pub fn start() -> Self {
        Self::start_on(tempfile::Builder::new().prefix("kwtpm").tempdir_in("/tmp").expect("temp dir"))
    }

    /// Starts an swtpm manufactured by `maker`: an EK and its certificate (from the maker's
    /// CA) in NV, as a real TPM leaves the factory.
    pub fn start_manufactured(maker: &crate::tpm_maker::TpmMaker) -> Self {
        let state = tempfile::Builder::new().prefix("kwtpm").tempdir_in("/tmp").expect("temp dir");
        maker.manufacture(state.path());
        Self::start_on(state)
    }

    fn start_on(state: tempfile::TempDir) -> Self {
        let mut tpm = Self { state, port: free_port_pair(), child: None };
        for _ in 0..10 {
            if tpm.try_start() {
                return tpm;
            }
            tpm.port = free_port_pair();
        }
        panic!("swtpm did not start on 10 port pairs");
    }

    /// The TCTI for keyward and tss-esapi.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Spawns swtpm and waits until its control port accepts; false if it exited (port taken).
    fn try_start(&mut self) -> bool {
        let log = std::fs::File::create(self.state.path().join("swtpm.log")).expect("swtpm log");
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", self.state.path().display()))
            .arg("--server")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", self.port))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", self.port + 1))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("swtpm is installed (scripts/install-packages.sh)");
        let child = self.child.insert(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if child.try_wait().expect("try_wait").is_some() {
                self.child = None;
                return false;
            }
            // The control channel, not the command port: swtpm serves one command client.
            if TcpStream::connect((Ipv4Addr::LOCALHOST, self.port + 1)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("swtpm not ready after 10 s; log:\n{}", self.log_text());
    }

    /// Stops swtpm (SIGTERM, then SIGKILL after 5 s). State persists in the state dir.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::tools::stop_child(&mut child);
        }
    }

    /// Kills swtpm with SIGKILL, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts swtpm again on the same state dir and ports.
    pub fn restart(&mut self) {
        self.stop();
        let start = Instant::now();
        while !self.try_start() {
            assert!(start.elapsed() < Duration::from_secs(10), "swtpm restart failed; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A tpm2-tools command (`tpm2_sign`, ...) talking to this swtpm, as another TPM client
    /// would; libtss2's error text stays on its stderr.
    pub fn tpm2(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        cmd.env("TPM2TOOLS_TCTI", self.tcti()).env_remove("TSS2_LOG");
        cmd
    }

    /// swtpm's log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.state.path().join("swtpm.log")).unwrap_or_default()
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An swtpm plus a keyward config (`<dir>/keyward.toml`) for it.
pub struct TpmSite {
    /// The TPM.
    pub swtpm: Swtpm,
    /// The site's temp dir (config, socket, state, key blobs).
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    /// The agent socket.
    pub socket: PathBuf,
    /// The folder of key blobs.
    pub key_dir: PathBuf,
}

impl TpmSite {
    /// A new swtpm and a config written by `keyward init --backend tpm`.
    pub fn new() -> Self {
        Self::on(Swtpm::start())
    }

    /// A config written by `keyward init --backend tpm` for `swtpm`.
    pub fn on(swtpm: Swtpm) -> Self {
        let dir = tempfile::Builder::new().prefix("kwt").tempdir_in("/tmp").expect("temp dir");
        let base = dir.path().to_path_buf();
        let site = Self {
            config: base.join("keyward.toml"),
            socket: base.join("run/agent.sock"),
            key_dir: base.join("keys"),
            swtpm,
            dir,
        };
        let (tcti, keys) = (site.swtpm.tcti(), site.key_dir.display().to_string());
        let (socket, state) = (site.socket.display().to_string(), base.join("state").display().to_string());
        let args = ["init", "--backend", "tpm", "--tcti", &tcti, "--key-dir", &keys, "--socket", &socket];
        // CI runs as root; the agent refuses that unless the config opts in.
        let out =
            site.command().args(args).args(["--state-dir", &state, "--allow-root"]).output().expect("run keyward");
        assert_success(&out, "keyward init --backend tpm");
        site
    }

    /// Sets `backend.<key> = value` in the config.
    pub fn set_backend(&self, key: &str, value: &str) {
        let text = std::fs::read_to_string(&self.config).expect("config");
        let mut doc: toml::Table = toml::from_str(&text).expect("config parses");
        let backend = doc.get_mut("backend").and_then(toml::Value::as_table_mut).expect("[backend]");
        backend.insert(key.to_owned(), toml::Value::String(value.to_owned()));
        std::fs::write(&self.config, toml::to_string(&doc).expect("serialise")).expect("write config");
    }

    /// Sets `[backend.persistent_handles]` (key name -> handle) in the config.
    pub fn set_persistent_handles(&self, handles: &[(&str, &str)]) {
        let text = std::fs::read_to_string(&self.config).expect("config");
        let mut doc: toml::Table = toml::from_str(&text).expect("config parses");
        let table: toml::Table =
            handles.iter().map(|(k, v)| ((*k).to_owned(), toml::Value::String((*v).to_owned()))).collect();
        let backend = doc.get_mut("backend").and_then(toml::Value::as_table_mut).expect("[backend]");
        backend.insert("persistent_handles".into(), toml::Value::Table(table));
        std::fs::write(&self.config, toml::to_string(&doc).expect("serialise")).expect("write config");
    }

    /// A `keyward` command with this site's environment; libtss2's stderr noise is off.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(keyward_bin());
        cmd.env("KEYWARD_CONFIG", &self.config)
            .env("TSS2_LOG", "all+none")
            .env_remove("KEYWARD_PIN_FILE")
            .env("KEYWARD_LOG", "info");
        cmd
    }

    /// A path inside the site's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The key blob of `name`.
    pub fn blob(&self, name: &str) -> PathBuf {
        self.key_dir.join(format!("{name}.tpmkey"))
    }

    /// The auth value file of the persistent key `name`.
    pub fn auth_file(&self, name: &str) -> PathBuf {
        self.key_dir.join(format!("{name}.tpmauth"))
    }

    /// The config path.
    pub fn config(&self) -> &Path {
        &self.config
    }
}

impl Default for TpmSite {
    fn default() -> Self {
        Self::new()
    }
}

impl crate::agent::AgentSite for TpmSite {
    fn command(&self) -> Command {
        TpmSite::command(self)
    }
    fn path(&self, name: &str) -> PathBuf {
        TpmSite::path(self, name)
    }
    fn socket(&self) -> PathBuf {
        self.socket.clone()
    }
    fn audit_log(&self) -> PathBuf {
        self.dir.path().join("state/audit.log")
    }
}
