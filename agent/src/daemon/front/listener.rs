//! The accept loop (on the async runtime; it is not on the request path): a connection
//! limit (a semaphore; over the limit a client gets a `busy` reply instead of a silent
//! close), a per-process limit (`peer_limit.rs`, also answered `busy`), a short back-off
//! when `accept` fails (for example out of file descriptors), one thread per accepted
//! connection (`connection.rs`), the watchdog (`watchdog.rs`), closing connections a config
//! reload no longer allows, and a graceful stop: stop accepting, stop reading, let requests
//! in progress finish (up to the grace period). Each `busy` refusal is audited (`connect`,
//! `busy`), within the refusal flood control.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::SinkExt;
use keyward_protocol::{self as protocol, ErrorCode, Response};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::{self, deny_after_reload};
use super::peer_exe;
use super::peer_limit::PeerLimit;
use super::watchdog::Watchdog;
use crate::audit::{AuditRecord, Peer};
use crate::daemon::Agent;

/// Serves `listener` until `shutdown` is cancelled, then waits (up to the configured grace
/// period) for open connections to finish their current request.
pub async fn serve(listener: &UnixListener, agent: Arc<Agent>, shutdown: CancellationToken) {
    let refusals = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(agent.limits.max_connections));
    let per_peer = PeerLimit::new(agent.limits.max_connections_per_peer);
    let watchdog = match Watchdog::start(&agent) {
        Ok(w) => Some(w),
        Err(e) => {
            // Fail closed: without the watchdog a hung device call would never be answered.
            tracing::error!(error = %e, "cannot start the watchdog thread; not serving");
            shutdown.cancel();
            None
        }
    };
    let revoker = tokio::spawn(close_on_reload(Arc::clone(&agent), shutdown.clone()));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Read before the credentials: the peer connected no later than this. CLOCK_BOOTTIME,
        // not `/proc/uptime` (hidden under ProcSubset=pid); `peer_exe.rs`.
        let connected = peer_exe::since_boot();
        let cred = match stream.peer_cred() {
            Ok(cred) => cred,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read peer credentials; closing connection");
                continue;
            }
        };
        let peer = Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
            connected: connected.as_ref().copied().unwrap_or_default(),
        };
        let Some(peer_slot) = per_peer.try_acquire((peer.uid, peer.pid)) else {
            tracing::warn!(
                peer = ?(peer.uid, peer.pid),
                limit = agent.limits.max_connections_per_peer,
                "per-process connection limit reached; refusing a connection"
            );
            let message = "too many connections from this process; try again later";
            refusals.spawn(refuse_busy(stream, Arc::clone(&agent), peer, message));
            continue;
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(limit = agent.limits.max_connections, "connection limit reached; refusing a connection");
            let message = "too many connections; try again later";
            refusals.spawn(refuse_busy(stream, Arc::clone(&agent), peer, message));
            continue;
        };
        let stream = match stream.into_std().and_then(|s| s.set_nonblocking(false).map(|()| s)) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "cannot make the connection blocking; closing it");
                continue;
            }
        };
        let serving = Arc::clone(&agent);
        let started = std::thread::Builder::new().name("keyward-conn".into()).spawn(move || {
            connection::serve(stream, &serving, peer, connected, Box::new((permit, peer_slot)));
        });
        if let Err(e) = started {
            tracing::warn!(error = %e, "cannot start a connection thread; closing the connection");
        }
    }
    agent.connections.close_all();
    let grace = Duration::from_millis(agent.limits.shutdown_grace_ms);
    let began = Instant::now();
    while !agent.connections.is_empty() && began.elapsed() < grace {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if !agent.connections.is_empty() {
        tracing::warn!(open = agent.connections.len(), "shutdown grace period over; closing remaining connections");
    }
    revoker.abort();
    refusals.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), refusals.wait()).await;
    if let Some(watchdog) = watchdog {
        let _ = tokio::task::spawn_blocking(move || watchdog.stop()).await;
    }
}

/// After each config reload: every idle connection whose peer `[access]` no longer lets in
/// is answered `permission_denied` and closed (a busy one is closed by its own thread once
/// its request is answered, `connection.rs`).
async fn close_on_reload(agent: Arc<Agent>, shutdown: CancellationToken) {
    let mut replaced = agent.rules.subscribe();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = replaced.changed() => if changed.is_err() { return },
        }
        let rules = agent.rules.load();
        for conn in agent.connections.all() {
            if rules.access.allows(conn.peer.uid, conn.peer.gid) || !conn.claim_idle() {
                continue;
            }
            let agent = Arc::clone(&agent);
            // The reply may wait up to the write timeout for a client that does not read.
            tokio::task::spawn_blocking(move || {
                deny_after_reload(&conn, &agent);
                conn.shut();
            });
        }
    }
}

async fn refuse_busy(stream: UnixStream, agent: Arc<Agent>, peer: Peer, message: &'static str) {
    // Refused either way; flood control bounds these records (audit/flood.rs).
    let _ = agent.audit.record(&AuditRecord::new(peer, "connect", ErrorCode::Busy.as_str()));
    let mut framed = Framed::new(stream, protocol::codec(protocol::DEFAULT_MAX_FRAME_BYTES));
    let reply = Response::error(0, ErrorCode::Busy, message);
    if let Ok(body) = serde_json::to_vec(&reply) {
        let _ = tokio::time::timeout(Duration::from_secs(1), framed.send(bytes::Bytes::from(body))).await;
    }
}
