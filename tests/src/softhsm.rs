//! [`SoftHsm`]: a private SoftHSM2 token in its own temp dir, made by the same script users
//! run (`scripts/init-softhsm-token.sh`); [`Site`]: a keyward config for that token
//! and a way to run the `keyward` CLI against it.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::agent::AgentSite;
use crate::tools::{assert_success, keyward_bin, workspace_root};

/// A SoftHSM2 token in a temp dir.
pub struct SoftHsm {
    /// The temp dir (removed on drop).
    pub dir: tempfile::TempDir,
    /// `SOFTHSM2_CONF` for this token.
    pub conf: PathBuf,
    /// Token label.
    pub label: String,
    /// File holding the user PIN.
    pub pin_file: PathBuf,
    /// File holding the SO PIN.
    pub so_pin_file: PathBuf,
    /// The module.
    pub module: PathBuf,
}

impl SoftHsm {
    /// Initialises a fresh token labelled `label`.
    pub fn new(label: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("kw").tempdir_in("/tmp").expect("temp dir");
        let script = workspace_root().join("scripts/init-softhsm-token.sh");
        let out =
            Command::new("bash").arg(&script).arg(dir.path().join("hsm")).arg(label).output().expect("run init script");
        assert_success(&out, "init-softhsm-token.sh");
        let exports = String::from_utf8(out.stdout).expect("utf-8");
        let var = |name: &str| -> PathBuf {
            let prefix = format!("export {name}='");
            let line =
                exports.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("{name} in {exports}"));
            PathBuf::from(line[prefix.len()..].trim_end_matches('\''))
        };
        Self {
            conf: var("SOFTHSM2_CONF"),
            pin_file: var("KEYWARD_PIN_FILE"),
            so_pin_file: var("KEYWARD_SO_PIN_FILE"),
            module: var("KEYWARD_PKCS11_MODULE"),
            label: label.to_owned(),
            dir,
        }
    }

    /// The user PIN (tests only: to check it never leaks).
    pub fn pin(&self) -> String {
        std::fs::read_to_string(&self.pin_file).expect("pin file")
    }
}

/// A token plus a keyward config (`<dir>/keyward.toml`) for it.
pub struct Site {
    /// The token.
    pub hsm: SoftHsm,
    /// The config file.
    pub config: PathBuf,
    /// The agent socket.
    pub socket: PathBuf,
    /// State dir (certificates, audit log).
    pub state_dir: PathBuf,
}

impl Site {
    /// A new token and a config written by `keyward init`.
    pub fn new() -> Self {
        let hsm = SoftHsm::new("fl-site");
        let base = hsm.dir.path().to_path_buf();
        let site = Self {
            config: base.join("keyward.toml"),
            socket: base.join("run/agent.sock"),
            state_dir: base.join("state"),
            hsm,
        };
        let module = site.hsm.module.display().to_string();
        let pin = site.hsm.pin_file.display().to_string();
        let socket = site.socket.display().to_string();
        let state = site.state_dir.display().to_string();
        let label = site.hsm.label.clone();
        let out = site.keyward(&[
            "init",
            "--backend",
            "pkcs11",
            "--module",
            &module,
            "--token",
            &label,
            "--pin-file",
            &pin,
            "--socket",
            &socket,
            "--state-dir",
            &state,
            // CI runs as root; the agent refuses that unless the config opts in.
            "--allow-root",
        ]);
        assert_success(&out, "keyward init");
        site
    }

    /// Sets `[table] key = value` in the config (tests that need other limits or access).
    pub fn set_config(&self, table: &str, key: &str, value: toml::Value) {
        let text = std::fs::read_to_string(&self.config).expect("config");
        let mut doc: toml::Table = toml::from_str(&text).expect("config parses");
        let section = doc.entry(table).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        section.as_table_mut().expect("table").insert(key.to_owned(), value);
        std::fs::write(&self.config, toml::to_string(&doc).expect("serialise")).expect("write config");
    }

    /// Appends raw TOML (new tables only) to the config.
    pub fn append_config(&self, toml_text: &str) {
        let mut text = std::fs::read_to_string(&self.config).expect("config");
        text.push('\n');
        text.push_str(toml_text);
        std::fs::write(&self.config, text).expect("write config");
    }

    /// A `keyward` command with this site's environment.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(keyward_bin());
        cmd.env("SOFTHSM2_CONF", &self.hsm.conf)
            .env("KEYWARD_CONFIG", &self.config)
            .env_remove("KEYWARD_PIN_FILE")
            .env("KEYWARD_LOG", "info");
        cmd
    }

    /// Runs `keyward ARGS` and returns its output.
    pub fn keyward(&self, args: &[&str]) -> Output {
        AgentSite::keyward(self, args)
    }

    /// Runs `keyward ARGS`, asserting success.
    pub fn keyward_ok(&self, args: &[&str]) -> Output {
        AgentSite::keyward_ok(self, args)
    }

    /// Generates a key.
    pub fn generate(&self, name: &str, algorithm: &str) {
        AgentSite::generate(self, name, algorithm)
    }

    /// Writes the key's public key PEM to a file and returns its path.
    pub fn public_pem(&self, name: &str) -> PathBuf {
        AgentSite::public_pem(self, name)
    }

    /// A path inside the site's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.hsm.dir.path().join(name)
    }

    /// The audit log path.
    pub fn audit_log(&self) -> PathBuf {
        self.state_dir.join("audit.log")
    }

    /// The audit records, parsed.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        AgentSite::audit_records(self)
    }
}

impl AgentSite for Site {
    fn command(&self) -> Command {
        Site::command(self)
    }
    fn path(&self, name: &str) -> PathBuf {
        Site::path(self, name)
    }
    fn socket(&self) -> PathBuf {
        self.socket.clone()
    }
    fn audit_log(&self) -> PathBuf {
        Site::audit_log(self)
    }
}

impl Default for Site {
    fn default() -> Self {
        Self::new()
    }
}

/// Lists the token's private key objects with OpenSC's `pkcs11-tool`, which prints each
/// key's access attributes ("sensitive, always sensitive, never extractable, local").
/// The PIN is in argv here: acceptable for a throwaway test token only.
pub fn pkcs11_tool(hsm: &SoftHsm, args: &[&str]) -> Output {
    Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", &hsm.conf)
        .arg("--module")
        .arg(&hsm.module)
        .args(["--token-label", &hsm.label, "--login", "--pin", hsm.pin().trim_end()])
        .args(args)
        .output()
        .expect("pkcs11-tool is installed (package opensc)")
}

/// The attribute block `pkcs11-tool --list-objects --type privkey` prints for `label`.
pub fn private_key_listing(hsm: &SoftHsm, label: &str) -> String {
    let out = pkcs11_tool(hsm, &["--list-objects", "--type", "privkey"]);
    assert_success(&out, "pkcs11-tool --list-objects");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split("Private Key Object")
        .find(|block| block.lines().any(|l| l.trim() == format!("label:      {label}")))
        .unwrap_or_else(|| panic!("no private key `{label}` in:\n{text}"))
        .to_owned()
}

/// Runs `token-probe` on the private key `label` and returns its JSON report.
pub fn probe_private_key(hsm: &SoftHsm, label: &str) -> serde_json::Value {
    let bin = crate::tools::sibling_bin("token-probe");
    let out = Command::new(bin)
        .env("SOFTHSM2_CONF", &hsm.conf)
        .arg(&hsm.module)
        .arg(&hsm.label)
        .arg(&hsm.pin_file)
        .arg(label)
        .output()
        .expect("run token-probe");
    assert_success(&out, "token-probe");
    serde_json::from_slice(&out.stdout).expect("token-probe prints JSON")
}
