//! One connection: check the peer's credentials before reading anything, then read frames
//! (each within the read timeout), execute them in order and reply. Every failure of the
//! stream itself — an oversized length prefix, a frame cut short, a stalled half-frame — is
//! answered with its own error code before the connection is closed; a bad request inside a
//! good frame is answered and the connection stays open.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use futures::{SinkExt, StreamExt};
use keyward_core::protocol::{self, ErrorCode, Response};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec, LengthDelimitedCodecError};
use tokio_util::sync::CancellationToken;

use super::{ops, peer_exe, Agent, Stats};
use crate::audit::{AuditRecord, Peer};

/// Serves one connection until it closes, fails, or the agent shuts down.
pub async fn handle(stream: UnixStream, agent: Arc<Agent>, shutdown: CancellationToken) {
    // Read before the credentials: the peer connected no later than this.
    let connected = match peer_exe::since_boot() {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the time since boot; closing connection");
            return;
        }
    };
    let peer = match stream.peer_cred() {
        Ok(cred) => Peer { uid: cred.uid(), gid: cred.gid(), pid: cred.pid(), connected },
        Err(e) => {
            tracing::warn!(error = %e, "cannot read peer credentials; closing connection");
            return;
        }
    };
    let (read_half, write_half) = stream.into_split();
    let mut reader = FramedRead::new(read_half, protocol::codec(agent.limits.max_frame_bytes));
    // Replies have their own, larger limit: the request limit must not silently drop them.
    let mut writer = FramedWrite::new(write_half, protocol::codec(protocol::MAX_REPLY_BYTES));
    if !agent.rules.load().access.allows(peer.uid, peer.gid) {
        tracing::warn!(uid = peer.uid, gid = peer.gid, pid = ?peer.pid, "refused connection from a peer that is not allowed");
        // Refused either way; flood control bounds these records (audit/flood.rs).
        let _ = agent.audit.record(&AuditRecord::new(peer, "connect", ErrorCode::PermissionDenied.as_str()));
        let message = format!("uid {} / gid {} is not allowed to use this agent", peer.uid, peer.gid);
        send(&mut writer, Response::error(0, ErrorCode::PermissionDenied, message)).await;
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
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return,
            next = tokio::time::timeout(agent.limits.read_timeout(), reader.next()) => next,
        };
        let frame = match next {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => return,
            Ok(Some(Err(e))) => {
                let (code, message) = classify_stream_error(&e, agent.limits.max_frame_bytes);
                tracing::info!(uid = peer.uid, pid = ?peer.pid, %code, error = %e, "closing connection after a bad frame");
                record_stream_failure(agent, peer, code);
                send(writer, Response::error(0, code, message)).await;
                return;
            }
            Err(_) => {
                let code = ErrorCode::ReadTimeout;
                record_stream_failure(agent, peer, code);
                let message = format!("no complete frame within {} ms", agent.limits.read_timeout_ms);
                send(writer, Response::error(0, code, message)).await;
                return;
            }
        };
        let started = Instant::now();
        let response = ops::execute(agent, peer, &frame, started).await;
        if !send(writer, response).await {
            return;
        }
    }
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

fn record_stream_failure(agent: &Agent, peer: Peer, code: ErrorCode) {
    Stats::bump(&agent.stats.requests_failed);
    let _ = agent.audit.record(&AuditRecord::new(peer, "frame", code.as_str()));
}

/// Sends a response; false when the peer is gone.
async fn send(writer: &mut FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>, response: Response) -> bool {
    let body = match serde_json::to_vec(&response) {
        Ok(body) => body,
        Err(e) => {
            tracing::error!(request_id = response.id, error = %e, "cannot encode response");
            return false;
        }
    };
    match writer.send(bytes::Bytes::from(body)).await {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(request_id = response.id, error = %e, "cannot send response; peer gone");
            false
        }
    }
}
