//! The agent daemon: a Unix socket listener (peer credentials checked before the first
//! read), one task per connection, requests executed through the [`StoreHandle`], and a
//! graceful shutdown (stop accepting, finish in-flight requests, remove the socket).
//!
//! Files: `socket.rs` (binding safely), `listener.rs` (accept loop, connection limit),
//! `handler.rs` (frames of one connection), `ops.rs` (what each request does),
//! `stats.rs` (counters for `status`), `policy.rs` (per-key rules, with `rate_limit.rs` and
//! `peer_exe.rs`), `nvflare.rs` (the NVFlare authenticator operations), `reload.rs` (SIGHUP:
//! swapping policies and access), `histogram.rs` (latency buckets), `exposition.rs` (the
//! Prometheus text format), `status.rs` (keys and latency in `status`), `metrics.rs` (the
//! Prometheus endpoint).

mod exposition;
mod handler;
mod histogram;
mod listener;
mod metrics;
mod nvflare;
mod ops;
mod peer_exe;
mod peer_limit;
mod policy;
mod rate_limit;
mod reload;
mod socket;
mod stats;
mod status;

use std::time::Instant;

use crate::audit::AuditLog;
use crate::certs::CertStore;
use crate::config::{AccessConfig, LimitsConfig};
use crate::store_handle::StoreHandle;

pub use listener::serve;
pub use metrics::{bind_metrics, serve_metrics};
pub use nvflare::NvflareState;
pub use policy::Policies;
pub use reload::{Live, Reloader, Rules};
pub use socket::{bind_socket, BoundSocket};
pub use stats::Stats;

/// Everything a connection needs, shared by all of them.
pub struct Agent {
    /// The key store.
    pub store: StoreHandle,
    /// Installed certificates.
    pub certs: CertStore,
    /// The audit log.
    pub audit: AuditLog,
    /// Limits.
    pub limits: LimitsConfig,
    /// Per-key rules and who may connect; replaced as a whole on SIGHUP (`reload.rs`).
    pub rules: Live<Rules>,
    /// Counters.
    pub stats: Stats,
    /// NVFlare nonces and sessions.
    pub nvflare: NvflareState,
    /// When the agent started.
    pub started: Instant,
}

/// The resolved access rules.
#[derive(Clone, Debug)]
pub struct Access {
    uids: Vec<u32>,
    gids: Vec<u32>,
}

impl Access {
    /// From config; an empty uid list means "only the uid running the agent".
    pub fn from_config(config: &AccessConfig) -> Self {
        let mut uids = config.allowed_uids.clone();
        if uids.is_empty() {
            uids.push(nix::unistd::geteuid().as_raw());
        }
        Self { uids, gids: config.allowed_gids.clone() }
    }

    /// Whether a peer with this uid and gid may use the agent.
    pub fn allows(&self, uid: u32, gid: u32) -> bool {
        self.uids.contains(&uid) || self.gids.contains(&gid)
    }
}
