//! Config reload on SIGHUP: the agent re-reads its config file and, when the whole file is
//! valid (it parses, has no unknown field, every NVFlare root CA loads), swaps the per-key
//! policies and the access rules in one step for requests that start afterwards. A bad
//! file is rejected with a log line naming the problem, and the running rules stay.
//!
//! Open connections follow a reload too: the front end hears of each replacement
//! ([`Live::subscribe`], [`Live::generation`]) and closes, with `permission_denied`, every
//! connection whose peer's uid and gid `[access]` no longer lets in (`front/registry.rs`),
//! instead of leaving it the access it had when it connected.
//!
//! What the running process cannot change — socket, state and audit paths, limits, the
//! backend (module, token, PIN file, workers) — is left as it is, with a log line saying a
//! restart is needed for it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Policies;
use crate::config::Config;
use crate::daemon::{Access, Agent};

/// The rules a reload replaces, swapped together.
pub struct Rules {
    /// Per-key rules.
    pub policies: Policies,
    /// Who may connect.
    pub access: Access,
    /// Renewal policies, for `status` and the metrics.
    pub renewal: crate::renewal::RenewalRules,
}

impl Rules {
    /// Builds both from a config.
    ///
    /// # Errors
    /// As [`Policies::from_config`].
    pub fn from_config(config: &Config) -> Result<Self> {
        Ok(Self {
            policies: Policies::from_config(config)?,
            access: Access::from_config(&config.access),
            renewal: crate::renewal::RenewalRules::from_config(config),
        })
    }
}

/// A value replaced as a whole: readers take an `Arc` of the current one (the lock is held
/// only to clone it), so a request keeps the rules it started with. Subscribers hear of
/// every replacement.
pub struct Live<T> {
    value: RwLock<Arc<T>>,
    replaced: watch::Sender<()>,
    /// Bumped after each replacement: a connection compares it with the one it last checked
    /// (one atomic load per request instead of a lock).
    generation: AtomicU64,
}

impl<T> Live<T> {
    /// Wraps the first value.
    pub fn new(value: T) -> Self {
        Self { value: RwLock::new(Arc::new(value)), replaced: watch::Sender::new(()), generation: AtomicU64::new(0) }
    }

    /// The current value.
    pub fn load(&self) -> Arc<T> {
        Arc::clone(&self.value.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the value for every later [`Live::load`], then wakes every subscriber.
    pub fn replace(&self, value: T) {
        *self.value.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(value);
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.replaced.send_replace(());
    }

    /// How many times the value was replaced (read with `SeqCst`, after the reader's own
    /// `SeqCst` store: either it sees a replacement, or the replacer sees the reader's store).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// A receiver whose `changed()` completes after each later [`Live::replace`].
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.replaced.subscribe()
    }
}

/// The SIGHUP listener, installed before the agent says it is ready (SIGHUP's default
/// action would end the process).
pub struct Reloader {
    hangup: Signal,
    path: PathBuf,
    running: Config,
}

impl Reloader {
    /// Installs the SIGHUP handler. Call inside the runtime.
    ///
    /// # Errors
    /// When the handler cannot be installed.
    pub fn install(path: &Path, running: Config) -> Result<Self> {
        let hangup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
        Ok(Self { hangup, path: path.to_owned(), running })
    }

    /// Reloads on every SIGHUP until `shutdown`.
    pub async fn run(mut self, agent: Arc<Agent>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                got = self.hangup.recv() => if got.is_none() { return },
            }
            tracing::info!(config = %self.path.display(), "SIGHUP: reloading config");
            match load(&self.path) {
                Ok((config, rules)) => {
                    for what in needs_restart(&self.running, &config) {
                        tracing::warn!(config = %self.path.display(), "config reload: `{what}` changed; it takes effect only after a restart");
                    }
                    agent.rules.replace(rules);
                    tracing::info!(config = %self.path.display(), keys = config.keys.len(), "config reloaded: key policies and access rules replaced");
                    self.running = config;
                }
                Err(e) => {
                    // TOML errors span several lines (a source excerpt); keep the log line one line.
                    let error =
                        format!("{e:#}").lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
                    tracing::error!(config = %self.path.display(), %error, "config reload rejected; the previous config stays in force");
                }
            }
        }
    }
}

fn load(path: &Path) -> Result<(Config, Rules)> {
    let config = Config::load(path)?;
    let rules = Rules::from_config(&config)?;
    Ok((config, rules))
}

/// The parts of the config a reload does not apply that differ between `old` and `new`.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let differs = |a: serde_json::Result<serde_json::Value>, b: serde_json::Result<serde_json::Value>| match (a, b) {
        (Ok(a), Ok(b)) => a != b,
        _ => true,
    };
    let mut out = Vec::new();
    if old.socket != new.socket {
        out.push("socket");
    }
    if old.state_dir != new.state_dir {
        out.push("state_dir");
    }
    if old.audit_log() != new.audit_log() {
        out.push("audit_log");
    }
    if old.audit_max_bytes() != new.audit_max_bytes()
        || old.audit_max_files() != new.audit_max_files()
        || old.audit_refusals_per_second() != new.audit_refusals_per_second()
    {
        out.push("audit_max_bytes, audit_max_files or audit_refusals_per_second");
    }
    if old.access.socket_gid != new.access.socket_gid {
        out.push("access.socket_gid");
    }
    if differs(serde_json::to_value(&old.limits), serde_json::to_value(&new.limits)) {
        out.push("limits");
    }
    if differs(serde_json::to_value(&old.backend), serde_json::to_value(&new.backend)) {
        out.push("backend");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
socket = "/run/keyward/agent.sock"
state_dir = "/var/lib/keyward"
[backend]
type = "pkcs11"
module = "/usr/lib/softhsm/libsofthsm2.so"
token = "fl-site"
"#;

    fn parse(text: &str) -> Config {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn only_parts_a_reload_cannot_apply_are_named() {
        let old = parse(BASE);
        let rules_only = parse(&format!("{BASE}[keys.site-1]\nallow_sign = false\n"));
        assert!(needs_restart(&old, &rules_only).is_empty());
        let backend = parse(&BASE.replace("token = \"fl-site\"", "token = \"other\"\nworkers = 4"));
        assert_eq!(needs_restart(&old, &backend), ["backend"]);
        let moved = parse(&format!("{}[limits]\nqueue_depth = 8\n", BASE.replace("/run/keyward", "/run/kw")));
        assert_eq!(needs_restart(&old, &moved), ["socket", "limits"]);
        let audit = parse(&format!("audit_max_files = 3\n{BASE}"));
        assert_eq!(needs_restart(&old, &audit), ["audit_max_bytes, audit_max_files or audit_refusals_per_second"]);
    }

    #[tokio::test]
    async fn a_subscriber_hears_of_each_replace() {
        let live = Live::new(1);
        let mut replaced = live.subscribe();
        assert!(!replaced.has_changed().unwrap());
        live.replace(2);
        tokio::time::timeout(std::time::Duration::from_secs(1), replaced.changed()).await.unwrap().unwrap();
        assert_eq!(*live.load(), 2);
    }

    #[test]
    fn a_reader_keeps_the_value_it_loaded_across_a_replace() {
        let live = Live::new(1);
        let before = live.load();
        live.replace(2);
        assert_eq!((*before, *live.load()), (1, 2));
    }
}
