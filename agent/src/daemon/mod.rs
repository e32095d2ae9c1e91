//! The agent daemon, as rooms by job, so the front/back split shows in the folder names:
//!
//! - `front/`: the socket, the accept loop, one thread per connection (peer checks before
//!   the first read, frames, replies), the watchdog for hung backend calls.
//! - `ops/`: one file per wire operation, named by its wire name, and `execute`, which
//!   decodes, runs, audits and counts each request.
//! - `back/`: the key stores — a pool of sessions lent to the thread that has a request, a
//!   [`back::BackendJob`] enum of everything asked of a store, the side thread and health.
//! - `policy/`: per-key rules, rate limits, SIGHUP reload.
//! - `metrics/`: counters and histograms (sharded per connection), `status`'s latency, the
//!   Prometheus endpoint.
//! - The audit log is `crate::audit`.
//!
//! The request path: the connection's thread reads a frame, decodes it, takes a session from
//! the pool, calls the token, writes the audit record, and replies — client → agent →
//! client, with no thread hand-off in between (docs/architecture.md, "Request path").

pub mod back;
pub mod front;
pub mod metrics;
pub mod ops;
pub mod policy;

use std::sync::Arc;
use std::time::Instant;

use crate::audit::AuditLog;
use crate::certs::CertStore;
use crate::config::{AccessConfig, LimitsConfig};

pub use back::{Back, BackThreads};
pub use front::{bind_socket, serve, BoundSocket, Connections};
pub use metrics::{bind_metrics, serve_metrics, Stats};
pub use ops::NvflareState;
pub use policy::{Live, Policies, Reloader, Rules};

/// Everything a connection needs, shared by all of them.
pub struct Agent {
    /// The key stores.
    pub back: Arc<Back>,
    /// Installed certificates.
    pub certs: CertStore,
    /// The audit log.
    pub audit: AuditLog,
    /// Limits.
    pub limits: LimitsConfig,
    /// Per-key rules and who may connect; replaced as a whole on SIGHUP (`policy/reload.rs`).
    pub rules: Live<Rules>,
    /// Counters.
    pub stats: Stats,
    /// NVFlare nonces and sessions.
    pub nvflare: NvflareState,
    /// The open connections.
    pub connections: Connections,
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
