//! The accept loop: a connection limit (a semaphore; over the limit a client gets a `busy`
//! reply instead of a silent close), a per-process limit (`peer_limit.rs`, also answered
//! `busy`), a short back-off when `accept` fails (for example out
//! of file descriptors), and a graceful stop that waits for in-flight connections. Each
//! `busy` refusal is audited (`connect`, `busy`), within the refusal flood control.

use std::sync::Arc;
use std::time::Duration;

use futures::SinkExt;
use keyward_protocol::{self as protocol, ErrorCode, Response};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::peer_limit::PeerLimit;
use super::{handler, Agent};
use crate::audit::{AuditRecord, Peer};

/// Serves `listener` until `shutdown` is cancelled, then waits (up to the configured grace
/// period) for open connections to finish their current request.
pub async fn serve(listener: &UnixListener, agent: Arc<Agent>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(agent.limits.max_connections));
    let per_peer = PeerLimit::new(agent.limits.max_connections_per_peer);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let cred = stream.peer_cred().ok();
                let refused =
                    cred.map(|c| Peer { uid: c.uid(), gid: c.gid(), pid: c.pid(), connected: Duration::ZERO });
                let peer = cred.map(|c| (c.uid(), c.pid()));
                let peer_slot = match peer.map(|key| per_peer.try_acquire(key)) {
                    Some(None) => {
                        tracing::warn!(
                            peer = ?peer,
                            limit = agent.limits.max_connections_per_peer,
                            "per-process connection limit reached; refusing a connection"
                        );
                        let message = "too many connections from this process; try again later";
                        tracker.spawn(refuse_busy(stream, Arc::clone(&agent), refused, message));
                        continue;
                    }
                    // No credentials: the handler refuses the connection before reading.
                    Some(Some(slot)) => Some(slot),
                    None => None,
                };
                match Arc::clone(&slots).try_acquire_owned() {
                    Ok(permit) => {
                        let agent = Arc::clone(&agent);
                        let shutdown = shutdown.clone();
                        tracker.spawn(async move {
                            handler::handle(stream, agent, shutdown).await;
                            drop((permit, peer_slot));
                        });
                    }
                    Err(_) => {
                        tracing::warn!(
                            limit = agent.limits.max_connections,
                            "connection limit reached; refusing a connection"
                        );
                        let message = "too many connections; try again later";
                        tracker.spawn(refuse_busy(stream, Arc::clone(&agent), refused, message));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    tracker.close();
    let grace = Duration::from_millis(agent.limits.shutdown_grace_ms);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(open = tracker.len(), "shutdown grace period over; closing remaining connections");
    }
}

async fn refuse_busy(stream: UnixStream, agent: Arc<Agent>, peer: Option<Peer>, message: &'static str) {
    if let Some(peer) = peer {
        // Refused either way; flood control bounds these records (audit/flood.rs).
        let _ = agent.audit.record(&AuditRecord::new(peer, "connect", ErrorCode::Busy.as_str()));
    }
    let mut framed = Framed::new(stream, protocol::codec(protocol::DEFAULT_MAX_FRAME_BYTES));
    let reply = Response::error(0, ErrorCode::Busy, message);
    if let Ok(body) = serde_json::to_vec(&reply) {
        let _ = tokio::time::timeout(Duration::from_secs(1), framed.send(bytes::Bytes::from(body))).await;
    }
}
