//! `keyward.toml`: loading (every field named in errors, unknown fields refused), defaults,
//! resolving relative paths against the config file's folder, and atomic writing for
//! `keyward init`. The PIN itself is never in the config: only where to read it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Environment variable naming the config file.
pub const CONFIG_ENV: &str = "KEYWARD_CONFIG";
/// Environment variable naming a PIN file (used when the config names none).
pub const PIN_FILE_ENV: &str = "KEYWARD_PIN_FILE";
/// Default config path.
pub const DEFAULT_CONFIG: &str = "/etc/keyward/keyward.toml";
/// Default `audit_max_bytes`: 64 MiB.
pub const DEFAULT_AUDIT_MAX_BYTES: u64 = 64 << 20;
/// Default `audit_max_files`: rotated audit files kept (with the live one, at most 11 ×
/// `audit_max_bytes` on disk).
pub const DEFAULT_AUDIT_MAX_FILES: u64 = 10;
/// Default `audit_refusals_per_second`: refusal records per uid per second before the rest
/// are counted in one summary record.
pub const DEFAULT_AUDIT_REFUSALS_PER_SECOND: u32 = 10;
/// systemd credential name looked up in `$CREDENTIALS_DIRECTORY` when nothing else is set.
pub const DEFAULT_PIN_CREDENTIAL: &str = "keyward-pin";

/// The whole config file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The agent's Unix socket.
    pub socket: PathBuf,
    /// Where certificates (`certs/<key>.pem`) live.
    pub state_dir: PathBuf,
    /// Audit log (JSON lines). Default: `<state_dir>/audit.log`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_log: Option<PathBuf>,
    /// Size at which the audit log is renamed to `<audit_log>.<N>` and a new one started (the
    /// hash chain continues across files). Default: 64 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_max_bytes: Option<u64>,
    /// Rotated audit files kept; older ones are removed. Default: 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_max_files: Option<u64>,
    /// Refusal records per uid per second; more are counted in a `refusals_suppressed`
    /// record. Default: 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_refusals_per_second: Option<u32>,
    /// Who may connect.
    #[serde(default)]
    pub access: AccessConfig,
    /// Limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The key store.
    pub backend: BackendConfig,
    /// How the agent process runs (`[agent]`).
    #[serde(default, skip_serializing_if = "AgentConfig::is_default")]
    pub agent: AgentConfig,
    /// The Prometheus endpoint (`[metrics]`); absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
    /// Per-key policy and NVFlare settings, by key name (`[keys.site-1]`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keys: BTreeMap<String, KeyConfig>,
}

/// How the agent process runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Whether `keyward serve` may run as root (euid 0). Off: it refuses, because a root
    /// agent turns any bug into a root compromise; run it as a dedicated user instead.
    #[serde(default)]
    pub allow_root: bool,
}

impl AgentConfig {
    fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

/// The Prometheus text endpoint (docs/configuration.md, `[metrics]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Loopback address and port to serve `GET /metrics` on, e.g. `127.0.0.1:9464`.
    pub listen: std::net::SocketAddr,
}

/// What one key may be used for.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Whether the plain `sign` operation is allowed (NVFlare's cell cipher and TLS need it).
    #[serde(default = "yes")]
    pub allow_sign: bool,
    /// Whether `decrypt` is allowed (NVFlare's cell cipher needs it).
    #[serde(default = "yes")]
    pub allow_decrypt: bool,
    /// Signing profiles allowed: `nvflare`, `tls` (every TLS scheme) or exact names such as
    /// `tls-rsa-pss-sha256`. Empty (the default): all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    /// Caller uids allowed to use this key (any of these, or a gid below). Both empty: every
    /// caller `[access]` lets in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_uids: Vec<u32>,
    /// Caller primary gids allowed to use this key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_gids: Vec<u32>,
    /// Absolute paths of the executables allowed to use this key, compared with the caller's
    /// `/proc/<pid>/exe`. Empty: any executable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_executables: Vec<PathBuf>,
    /// A token bucket over every use of the private key (`sign`, `decrypt`, `nvflare_register`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    /// Token buckets per signing profile family (`nvflare`, `tls`), on top of `rate_limit`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub profile_rate_limits: BTreeMap<String, RateLimitConfig>,
    /// The NVFlare authenticator flow for this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvflare: Option<NvflareConfig>,
    /// The server side of the NVFlare authenticator flow, for an NVFlare server's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvflare_server: Option<NvflareServerConfig>,
    /// When its certificate is due for renewal and the key for rotation (`renewal.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal: Option<crate::renewal::RenewalConfig>,
}

/// A token bucket: `burst` uses at once, refilled at `per_minute`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained uses per minute (1 or more).
    pub per_minute: u32,
    /// Uses allowed back to back when the bucket is full (1 or more).
    pub burst: u32,
}

/// The site's NVFlare trust settings, from its startup kit.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvflareConfig {
    /// The project root CA (`startup/rootCA.pem`).
    pub root_ca: PathBuf,
    /// The server identity the site expects (`servers[0].identity` in `fed_client.json`).
    pub server_identity: String,
}

/// An NVFlare server's trust settings, from its startup kit.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvflareServerConfig {
    /// The project root CA its clients' certificates chain to (`startup/rootCA.pem`).
    pub root_ca: PathBuf,
}

impl KeyConfig {
    fn validate(&self) -> Result<()> {
        for profile in &self.profiles {
            if profile != "tls" && profile.parse::<keyward_core::SignProfile>().is_err() {
                bail!("field `profiles`: unknown profile `{profile}` (nvflare, tls, or tls-<scheme>)");
            }
        }
        for family in self.profile_rate_limits.keys() {
            if family != "nvflare" && family != "tls" {
                bail!("field `profile_rate_limits`: unknown profile family `{family}` (nvflare or tls)");
            }
        }
        for exe in &self.allowed_executables {
            if !exe.is_absolute() {
                bail!("field `allowed_executables`: `{}` is not an absolute path", exe.display());
            }
        }
        if let Some(renewal) = &self.renewal {
            renewal.policy().map_err(|e| anyhow::anyhow!("[renewal]: {e}"))?;
        }
        let limits = self.rate_limit.iter().chain(self.profile_rate_limits.values());
        if limits.into_iter().any(|l| l.per_minute == 0 || l.burst == 0) {
            bail!("rate limits need `per_minute` and `burst` of 1 or more");
        }
        Ok(())
    }
}

fn yes() -> bool {
    true
}

/// Who may use the socket.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// Peer uids allowed. Empty (the default): only the uid that runs the agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_uids: Vec<u32>,
    /// Peer primary gids allowed, in addition to `allowed_uids`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_gids: Vec<u32>,
    /// When set, the socket is made group `socket_gid` with mode 0660 (and its folder 0750),
    /// so that group's members can reach it; otherwise socket 0600 in a 0700 folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_gid: Option<u32>,
}

/// Resource limits, with safe defaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request frame in bytes.
    pub max_frame_bytes: usize,
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections one peer process (uid and pid) may hold at once, so that one process
    /// cannot take every slot.
    pub max_connections_per_peer: usize,
    /// How long a connection may take to deliver its next whole frame.
    pub read_timeout_ms: u64,
    /// How long one reply may take to be taken up by the client; a client that stops
    /// reading is disconnected after this, so it cannot hold a connection slot.
    pub write_timeout_ms: u64,
    /// How long a backend operation may take.
    pub request_timeout_ms: u64,
    /// Requests waiting for a key store session (all in use) before `busy` is answered.
    pub queue_depth: usize,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: keyward_protocol::DEFAULT_MAX_FRAME_BYTES,
            max_connections: 256,
            max_connections_per_peer: 128,
            read_timeout_ms: 30_000,
            write_timeout_ms: 10_000,
            request_timeout_ms: 10_000,
            queue_depth: 1024,
            shutdown_grace_ms: 5_000,
        }
    }
}

impl LimitsConfig {
    /// `read_timeout_ms` as a duration.
    pub fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.read_timeout_ms)
    }
    /// `write_timeout_ms` as a duration.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }
    /// `request_timeout_ms` as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// Which backend holds the keys (`type = "pkcs11"` or `type = "tpm"`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum BackendConfig {
    /// A PKCS#11 token.
    Pkcs11 {
        /// Module path.
        module: PathBuf,
        /// Token label or `pkcs11:` URI.
        token: String,
        /// File holding the user PIN (mode 0600 or 0400, owned by the agent's user).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pin_file: Option<PathBuf>,
        /// Worker threads, each with its own session. Default: 2.
        #[serde(default = "default_workers")]
        workers: usize,
    },
    /// A TPM 2.0 (one worker: the TPM serves one request at a time).
    Tpm {
        /// How to reach it: `device:/dev/tpmrm0`, or `swtpm:host=127.0.0.1,port=2321` for swtpm
        /// over TCP (control on port+1). `swtpm:path=...` is refused.
        tcti: String,
        /// Folder of the wrapped key blobs (`<name>.tpmkey`); created 0700 if missing.
        key_dir: PathBuf,
        /// File holding the keys' auth value (mode 0600 or 0400); none: empty auth value.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        auth_file: Option<PathBuf>,
        /// Keys kept at persistent handles instead of blob files, by key name:
        /// `{ site-1 = "0x81000010" }` (owner range 0x81000000-0x817FFFFF).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        persistent_handles: BTreeMap<String, String>,
    },
}

fn default_workers() -> usize {
    2
}

impl Config {
    /// Where the config is: `--config`, else `$KEYWARD_CONFIG`, else the default.
    pub fn locate(flag: Option<&Path>) -> PathBuf {
        flag.map(Path::to_path_buf)
            .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
    }

    /// Reads and checks a config file; relative paths are taken from the file's folder.
    ///
    /// # Errors
    /// Names the file and the field on any problem.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config `{}`", path.display()))?;
        let mut config: Config =
            toml::from_str(&text).with_context(|| format!("invalid config `{}`", path.display()))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        config.resolve_paths(&base);
        config.validate().with_context(|| format!("invalid config `{}`", path.display()))?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.socket);
        fix(&mut self.state_dir);
        if let Some(p) = &mut self.audit_log {
            fix(p);
        }
        for key in self.keys.values_mut() {
            if let Some(nvflare) = &mut key.nvflare {
                fix(&mut nvflare.root_ca);
            }
            if let Some(server) = &mut key.nvflare_server {
                fix(&mut server.root_ca);
            }
        }
        match &mut self.backend {
            BackendConfig::Pkcs11 { module, pin_file, .. } => {
                fix(module);
                if let Some(p) = pin_file {
                    fix(p);
                }
            }
            BackendConfig::Tpm { key_dir, auth_file, .. } => {
                fix(key_dir);
                if let Some(p) = auth_file {
                    fix(p);
                }
            }
        }
    }

    fn validate(&self) -> Result<()> {
        let l = &self.limits;
        if !(64..=16 << 20).contains(&l.max_frame_bytes) {
            bail!("field `limits.max_frame_bytes` must be between 64 and 16777216");
        }
        if l.max_connections == 0
            || l.max_connections_per_peer == 0
            || l.queue_depth == 0
            || l.read_timeout_ms == 0
            || l.write_timeout_ms == 0
            || l.request_timeout_ms == 0
        {
            bail!("fields in `limits` must be greater than zero");
        }
        if self.socket.as_os_str().len() > 100 {
            bail!("field `socket`: path `{}` is too long for a Unix socket (max 100 bytes)", self.socket.display());
        }
        if self.audit_max_bytes.is_some_and(|n| n < 4096) {
            bail!("field `audit_max_bytes` must be at least 4096");
        }
        if self.audit_max_files == Some(0) {
            bail!("field `audit_max_files` must be at least 1");
        }
        if self.audit_refusals_per_second == Some(0) {
            bail!("field `audit_refusals_per_second` must be at least 1");
        }
        for (name, key) in &self.keys {
            keyward_core::KeyId::new(name).with_context(|| format!("table `keys.{name}`"))?;
            key.validate().with_context(|| format!("table `keys.{name}`"))?;
        }
        if let Some(m) = &self.metrics {
            if !m.listen.ip().is_loopback() {
                bail!("field `metrics.listen`: `{}` is not a loopback address; metrics are served on 127.0.0.1 or ::1 only", m.listen);
            }
        }
        if let BackendConfig::Pkcs11 { workers, .. } = &self.backend {
            if !(1..=64).contains(workers) {
                bail!("field `backend.workers` must be between 1 and 64");
            }
        }
        Ok(())
    }

    /// The audit log path.
    pub fn audit_log(&self) -> PathBuf {
        self.audit_log.clone().unwrap_or_else(|| self.state_dir.join("audit.log"))
    }

    /// The audit log's rotation size.
    pub fn audit_max_bytes(&self) -> u64 {
        self.audit_max_bytes.unwrap_or(DEFAULT_AUDIT_MAX_BYTES)
    }

    /// Rotated audit files kept.
    pub fn audit_max_files(&self) -> u64 {
        self.audit_max_files.unwrap_or(DEFAULT_AUDIT_MAX_FILES)
    }

    /// Refusal records per uid per second.
    pub fn audit_refusals_per_second(&self) -> u32 {
        self.audit_refusals_per_second.unwrap_or(DEFAULT_AUDIT_REFUSALS_PER_SECOND)
    }

    /// The audit head file (both ends of the chain, for `keyward audit verify`).
    pub fn audit_head(&self) -> PathBuf {
        self.state_dir.join("audit.head")
    }

    /// The folder of installed certificates.
    pub fn cert_dir(&self) -> PathBuf {
        self.state_dir.join("certs")
    }

    /// Where the PIN comes from: `pin_file`, else `$KEYWARD_PIN_FILE`, else the systemd
    /// credential `keyward-pin`.
    ///
    /// # Errors
    /// When none is set.
    pub fn pin_path(&self) -> Result<PathBuf> {
        let BackendConfig::Pkcs11 { pin_file, .. } = &self.backend else {
            bail!("a TPM backend has no PIN; its keys' auth value comes from `backend.auth_file`")
        };
        if let Some(p) = pin_file {
            return Ok(p.clone());
        }
        if let Some(p) = std::env::var_os(PIN_FILE_ENV) {
            return Ok(PathBuf::from(p));
        }
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let p = Path::new(&dir).join(DEFAULT_PIN_CREDENTIAL);
            if p.exists() {
                return Ok(p);
            }
        }
        bail!("no PIN source: set `backend.pin_file`, or ${PIN_FILE_ENV}, or a systemd credential `{DEFAULT_PIN_CREDENTIAL}`")
    }

    /// Writes the config to `path` atomically, refusing to replace an existing file.
    ///
    /// # Errors
    /// When the file exists or cannot be written.
    pub fn write_new(&self, path: &Path) -> Result<()> {
        if path.exists() {
            bail!(
                "config `{}` already exists; not overwriting it (edit it, or choose another --config)",
                path.display()
            );
        }
        let text = format!(
            "# keyward agent configuration (reference: docs/configuration.md)\n{}",
            toml::to_string_pretty(self).context("serialising config")?
        );
        crate::files::write_atomic(path, text.as_bytes(), 0o600, false)
            .with_context(|| format!("writing config `{}`", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        let mut c: Config = toml::from_str(text)?;
        c.resolve_paths(Path::new("/etc/keyward"));
        c.validate()?;
        Ok(c)
    }

    const MINIMAL: &str = r#"
socket = "run/agent.sock"
state_dir = "/var/lib/keyward"
[backend]
type = "pkcs11"
module = "/usr/lib/softhsm/libsofthsm2.so"
token = "fl-site"
"#;

    #[test]
    fn minimal_config_gets_defaults_and_absolute_paths() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.socket, PathBuf::from("/etc/keyward/run/agent.sock"));
        assert_eq!(c.limits.max_frame_bytes, 1 << 20);
        assert_eq!(c.audit_log(), PathBuf::from("/var/lib/keyward/audit.log"));
    }

    #[test]
    fn unknown_field_is_named() {
        let err = parse(&format!("{MINIMAL}pin = \"1234\"\n")).unwrap_err();
        assert!(format!("{err:#}").contains("unknown field `pin`"), "{err:#}");
    }

    #[test]
    fn tpm_backend_parses_with_relative_key_dir() {
        let c = parse(
            "socket = \"s\"\nstate_dir = \"st\"\n[backend]\ntype = \"tpm\"\ntcti = \"device:/dev/tpmrm0\"\nkey_dir = \"keys\"\n",
        )
        .unwrap();
        let BackendConfig::Tpm { key_dir, auth_file, .. } = &c.backend else { panic!("not tpm") };
        assert_eq!(key_dir, &PathBuf::from("/etc/keyward/keys"));
        assert!(auth_file.is_none());
        assert!(c.pin_path().is_err());
    }

    #[test]
    fn root_is_refused_and_metrics_off_unless_configured() {
        let c = parse(MINIMAL).unwrap();
        assert!(!c.agent.allow_root);
        assert!(c.metrics.is_none());
        let c =
            parse(&format!("{MINIMAL}[agent]\nallow_root = true\n[metrics]\nlisten = \"127.0.0.1:9464\"\n")).unwrap();
        assert!(c.agent.allow_root);
        assert_eq!(c.metrics.unwrap().listen.port(), 9464);
    }

    #[test]
    fn metrics_on_a_non_loopback_address_is_refused() {
        let err = parse(&format!("{MINIMAL}[metrics]\nlisten = \"0.0.0.0:9464\"\n")).unwrap_err();
        assert!(format!("{err:#}").contains("metrics.listen"), "{err:#}");
    }

    #[test]
    fn bad_limit_is_named() {
        let err = parse(&format!("{MINIMAL}[limits]\nmax_frame_bytes = 1\n")).unwrap_err();
        assert!(err.to_string().contains("limits.max_frame_bytes"));
    }
}
