//! The agent daemon: a Unix socket listener (peer credentials checked before the first
//! read), one task per connection, requests executed through the [`StoreHandle`], and a
//! graceful shutdown (stop accepting, finish in-flight requests, remove the socket).
//!
//! Files: `socket.rs` (binding safely), `listener.rs` (accept loop, connection limit),
//! `handler.rs` (frames of one connection), `ops.rs` (what each request does),
//! `stats.rs` (counters for `status`), `policy.rs` (per-key rules), `nvflare.rs` (the
//! NVFlare authenticator operations).

mod handler;
mod listener;
mod nvflare;
mod ops;
mod peer_limit;
mod policy;
mod socket;
mod stats;

use std::time::Instant;

use crate::audit::AuditLog;
use crate::certs::CertStore;
use crate::config::{AccessConfig, LimitsConfig};
use crate::store_handle::StoreHandle;

pub use listener::serve;
pub use nvflare::NvflareState;
pub use policy::Policies;
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
    /// Who may connect (uids, gids).
    pub access: Access,
    /// Counters.
    pub stats: Stats,
    /// Per-key rules.
    pub policies: Policies,
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
