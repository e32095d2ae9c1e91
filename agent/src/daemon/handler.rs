//! One connection: check the peer's credentials before reading anything, then read frames
//! (each within the read timeout), execute them in order and reply. Every failure of the
//! stream itself — an oversized length prefix, a frame cut short, a stalled half-frame — is
//! answered with its own error code before the connection is closed; a bad request inside a
//! good frame is answered and the connection stays open. Each reply must be taken up within
//! the write timeout, or the connection is closed (a client that never reads cannot hold a
//! slot). A config reload that removes the peer's uid and gid from `[access]` ends the
//! connection with `permission_denied`, idle or not.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use futures::{SinkExt, StreamExt};
use keyward_protocol::{self as protocol, ErrorCode, Response};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec, LengthDelimitedCodecError};
use tokio_util::sync::CancellationToken;

use super::{ops, peer_exe, Agent, Stats};
use crate::audit::{AuditRecord, Peer};

/// Serves one connection until it closes, fails, or the agent shuts down.
pub async fn handle(stream: UnixStream, agent: Arc<Agent>, shutdown: CancellationToken) {
    // Read before the credentials: the peer connected no later than this. CLOCK_BOOTTIME,
    // not `/proc/uptime` (hidden under ProcSubset=pid); `peer_exe.rs`.
    let connected = peer_exe::since_boot();
    let peer = match stream.peer_cred() {
        Ok(cred) => Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
            connected: connected.as_ref().copied().unwrap_or_default(),
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot read peer credentials; closing connection");
            return;
        }
    };
    let (read_half, write_half) = stream.into_split();
    let mut reader = FramedRead::new(read_half, protocol::codec(agent.limits.max_frame_bytes));
    // Replies have their own, larger limit: the request limit must not silently drop them.
    let mut writer = FramedWrite::new(write_half, protocol::codec(protocol::MAX_REPLY_BYTES));
    if let Err(e) = connected {
        // Never seen on Linux >= 2.6.39; refused with a reply and a record, not a silent close.
        tracing::error!(error = %e, "refusing a connection");
        refuse_connection(agent.as_ref(), peer, ErrorCode::Unsupported);
        send(&mut writer, Response::error(0, ErrorCode::Unsupported, e.to_string()), &agent).await;
        return;
    }
    if !agent.rules.load().access.allows(peer.uid, peer.gid) {
        tracing::warn!(uid = peer.uid, gid = peer.gid, pid = ?peer.pid, "refused connection from a peer that is not allowed");
        refuse_connection(agent.as_ref(), peer, ErrorCode::PermissionDenied);
        let message = format!("uid {} / gid {} is not allowed to use this agent", peer.uid, peer.gid);
        send(&mut writer, Response::error(0, ErrorCode::PermissionDenied, message), &agent).await;
        return;
    }
    Stats::bump(&agent.stats.connections);
    serve_frames(&mut reader, &mut writer, &agent, peer, &shutdown).await;
    agent.stats.connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

async fn serve_frames(
    reader: &mut FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
    writer: &mut FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>,
    agent: &Agent,
    peer: Peer,
    shutdown: &CancellationToken,
) {
    let mut rules_replaced = agent.rules.subscribe();
    loop {
        let deadline = tokio::time::Instant::now() + agent.limits.read_timeout();
        let next = loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                Ok(()) = rules_replaced.changed() => if !still_allowed(writer, agent, peer).await { return },
                next = tokio::time::timeout_at(deadline, reader.next()) => break next,
            }
        };
        let frame = match next {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => return,
            Ok(Some(Err(e))) => {
                let (code, message) = classify_stream_error(&e, agent.limits.max_frame_bytes);
                tracing::info!(uid = peer.uid, pid = ?peer.pid, %code, error = %e, "closing connection after a bad frame");
                record_stream_failure(agent, peer, code);
                send(writer, Response::error(0, code, message), agent).await;
                return;
            }
            Err(_) => {
                let code = ErrorCode::ReadTimeout;
                record_stream_failure(agent, peer, code);
                let message = format!("no complete frame within {} ms", agent.limits.read_timeout_ms);
                send(writer, Response::error(0, code, message), agent).await;
                return;
            }
        };
        // A reload may have landed between the wake-up above and this frame.
        if !still_allowed(writer, agent, peer).await {
            return;
        }
        let started = Instant::now();
        let response = ops::execute(agent, peer, &frame, started).await;
        if !send(writer, response, agent).await {
            return;
        }
    }
}

/// Whether `[access]` still lets the peer in; when it no longer does (a reload removed its
/// uid and gid), answers `permission_denied` and returns false so the connection closes.
async fn still_allowed(
    writer: &mut FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>,
    agent: &Agent,
    peer: Peer,
) -> bool {
    if agent.rules.load().access.allows(peer.uid, peer.gid) {
        return true;
    }
    tracing::warn!(uid = peer.uid, gid = peer.gid, pid = ?peer.pid, "closing a connection whose peer a config reload no longer allows");
    record_stream_failure(agent, peer, ErrorCode::PermissionDenied);
    let message =
        format!("uid {} / gid {} is no longer allowed to use this agent (config reloaded)", peer.uid, peer.gid);
    send(writer, Response::error(0, ErrorCode::PermissionDenied, message), agent).await;
    false
}

fn classify_stream_error(e: &io::Error, max: usize) -> (ErrorCode, String) {
    if e.get_ref().is_some_and(|inner| inner.is::<LengthDelimitedCodecError>()) {
        return (ErrorCode::FrameTooLarge, format!("frame exceeds the limit of {max} bytes; closing"));
    }
    if e.kind() == io::ErrorKind::Other && e.to_string().contains("bytes remaining") {
        return (ErrorCode::TruncatedFrame, "connection ended in the middle of a frame".into());
    }
    (ErrorCode::MalformedRequest, format!("stream error: {e}"))
}

/// The record of a connection refused before its first frame. Refused either way; flood
/// control bounds these records (audit/flood.rs).
fn refuse_connection(agent: &Agent, peer: Peer, code: ErrorCode) {
    let _ = agent.audit.record(&AuditRecord::new(peer, "connect", code.as_str()));
}

fn record_stream_failure(agent: &Agent, peer: Peer, code: ErrorCode) {
    Stats::bump(&agent.stats.requests_failed);
    let _ = agent.audit.record(&AuditRecord::new(peer, "frame", code.as_str()));
}

/// Sends a response within the write timeout; false when the peer is gone or did not take
/// the reply in time (the caller then closes the connection).
async fn send(
    writer: &mut FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>,
    response: Response,
    agent: &Agent,
) -> bool {
    let body = match serde_json::to_vec(&response) {
        Ok(body) => body,
        Err(e) => {
            tracing::error!(request_id = response.id, error = %e, "cannot encode response");
            return false;
        }
    };
    match tokio::time::timeout(agent.limits.write_timeout(), writer.send(bytes::Bytes::from(body))).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::info!(request_id = response.id, error = %e, "cannot send response; peer gone");
            false
        }
        Err(_) => {
            tracing::warn!(
                request_id = response.id,
                timeout_ms = agent.limits.write_timeout_ms,
                "client did not read its reply within the write timeout; closing connection"
            );
            false
        }
    }
}
