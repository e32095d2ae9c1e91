//! One connection, on its own thread: check the peer's credentials before reading
//! anything, then read frames (each within the read timeout), execute each on this same
//! thread — the key store call included, with a session from the pool — and reply: a
//! request costs the client one round trip and the agent no hand-off between threads.
//!
//! Every failure of the stream itself — an oversized length prefix, a frame cut short, a
//! stalled half-frame — is answered with its own error code before the connection is
//! closed; a bad request inside a good frame is answered and the connection stays open.
//! Each reply must be taken up within the write timeout, or the connection is closed (a
//! client that never reads cannot hold a slot). A config reload that removes the peer's uid
//! and gid from `[access]` ends the connection with `permission_denied`, idle or not. When
//! a backend call hangs, the watchdog answers `timeout` and a new thread carries on with
//! the connection ([`resume`]); the stuck thread drops its late result and ends.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_protocol::{ErrorCode, Response};

use super::conn::Conn;
use super::frame_io::{encode, write_frame, ReadError};
use super::peer_exe::PeerExeError;
use crate::audit::{AuditRecord, Peer};
use crate::daemon::metrics::Stats;
use crate::daemon::ops::{self, Pending};
use crate::daemon::Agent;

/// How a thread left a connection.
enum Left {
    /// The connection is over; this thread closes it.
    Closed,
    /// The watchdog answered the request in progress; another thread serves the connection.
    Abandoned,
}

/// Serves a new connection on this thread until it closes, fails, or the agent stops.
/// `connected` is when it was accepted (time since boot, `peer_exe.rs`); `slots` are the
/// connection-limit places it holds.
pub fn serve(
    stream: UnixStream,
    agent: &Arc<Agent>,
    peer: Peer,
    connected: Result<Duration, PeerExeError>,
    slots: Box<dyn Send>,
) {
    let limits = &agent.limits;
    if stream.set_read_timeout(Some(limits.read_timeout())).is_err()
        || stream.set_write_timeout(Some(limits.write_timeout())).is_err()
    {
        tracing::warn!("cannot set socket timeouts; closing connection");
        return;
    }
    if let Err(e) = connected {
        // Never seen on Linux >= 2.6.39; refused with a reply and a record, not a silent close.
        tracing::error!(error = %e, "refusing a connection");
        refuse(agent, &stream, peer, ErrorCode::Unsupported, e.to_string());
        return;
    }
    let rules_seen = agent.rules.generation();
    if !agent.rules.load().access.allows(peer.uid, peer.gid) {
        tracing::warn!(uid = peer.uid, gid = peer.gid, pid = ?peer.pid, "refused connection from a peer that is not allowed");
        let message = format!("uid {} / gid {} is not allowed to use this agent", peer.uid, peer.gid);
        refuse(agent, &stream, peer, ErrorCode::PermissionDenied, message);
        return;
    }
    let id = agent.connections.next_id();
    let conn = Arc::new(Conn::new(id, peer, stream, limits.max_frame_bytes, agent.stats.new_shard(), slots));
    conn.rules_seen.store(rules_seen, std::sync::atomic::Ordering::Relaxed);
    if !agent.connections.add(&conn) {
        conn.shut();
        return;
    }
    Stats::bump(&agent.stats.connections);
    if let Left::Closed = frames(&conn, agent) {
        end(&conn, agent);
    }
}

/// Carries on with a connection whose request the watchdog took over: answers `timeout`
/// for it, then serves the connection's next frames on this thread.
pub fn resume(conn: &Arc<Conn>, agent: &Arc<Agent>, pending: &Pending) {
    let response = ops::timed_out(agent, conn.peer, &conn.shard, pending, agent.back.timeout());
    if send(conn, agent, &response) {
        conn.idle();
        if let Left::Abandoned = frames(conn, agent) {
            return;
        }
    }
    end(conn, agent);
}

/// Ends a connection: closed, removed, its metrics retired, the gauge decremented.
pub(super) fn end(conn: &Conn, agent: &Agent) {
    conn.close();
    conn.discard_answered();
    conn.shut();
    agent.connections.remove(conn);
    agent.stats.retire(&conn.shard);
    agent.stats.connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

/// Reads and answers frames until the connection ends or the watchdog takes it over.
fn frames(conn: &Arc<Conn>, agent: &Agent) -> Left {
    let read_timeout = agent.limits.read_timeout();
    let mut frame = Vec::new();
    loop {
        if agent.connections.closing() || !still_allowed(conn, agent, false) {
            return Left::Closed;
        }
        {
            let mut reader = conn.reader();
            match reader.read_frame(&conn.stream, read_timeout) {
                Ok(body) => {
                    frame.clear();
                    frame.extend_from_slice(body);
                }
                Err(e) => {
                    drop(reader);
                    if conn.claim_idle() && !agent.connections.closing() {
                        answer_stream_failure(conn, agent, &e);
                    }
                    return Left::Closed;
                }
            }
        }
        if !conn.begin() {
            // A reload closed it while the frame came in.
            return Left::Closed;
        }
        // A reload may have landed between the wake-up above and this frame.
        if !still_allowed(conn, agent, true) {
            return Left::Closed;
        }
        let Some(response) = ops::execute(agent, conn.peer, conn.as_ref(), &conn.shard, &frame, Instant::now()) else {
            return Left::Abandoned;
        };
        if !conn.finish() {
            return Left::Abandoned;
        }
        if !send(conn, agent, &response) {
            return Left::Closed;
        }
        conn.idle();
    }
}

/// Whether `[access]` still lets the peer in (checked again only after a reload); when it
/// no longer does, answers `permission_denied` and returns false. `holding`: the caller
/// already holds the connection (a request began); otherwise it must claim it from idle.
fn still_allowed(conn: &Conn, agent: &Agent, holding: bool) -> bool {
    let generation = agent.rules.generation();
    if generation == conn.rules_seen.load(std::sync::atomic::Ordering::Relaxed) {
        return true;
    }
    conn.rules_seen.store(generation, std::sync::atomic::Ordering::Relaxed);
    let peer = conn.peer;
    if agent.rules.load().access.allows(peer.uid, peer.gid) {
        return true;
    }
    if holding || conn.claim_idle() {
        deny_after_reload(conn, agent);
    }
    false
}

/// The `permission_denied` of a connection a reload no longer allows; the caller holds it.
pub fn deny_after_reload(conn: &Conn, agent: &Agent) {
    let peer = conn.peer;
    tracing::warn!(uid = peer.uid, gid = peer.gid, pid = ?peer.pid, "closing a connection whose peer a config reload no longer allows");
    record_stream_failure(agent, peer, ErrorCode::PermissionDenied);
    let message =
        format!("uid {} / gid {} is no longer allowed to use this agent (config reloaded)", peer.uid, peer.gid);
    send(conn, agent, &Response::error(0, ErrorCode::PermissionDenied, message));
    conn.close();
}

fn answer_stream_failure(conn: &Conn, agent: &Agent, e: &ReadError) {
    let peer = conn.peer;
    let max = agent.limits.max_frame_bytes;
    let (code, message) = match e {
        ReadError::Closed => return,
        ReadError::TooLarge => (ErrorCode::FrameTooLarge, format!("frame exceeds the limit of {max} bytes; closing")),
        ReadError::Truncated => (ErrorCode::TruncatedFrame, "connection ended in the middle of a frame".into()),
        ReadError::TimedOut => {
            (ErrorCode::ReadTimeout, format!("no complete frame within {} ms", agent.limits.read_timeout_ms))
        }
        ReadError::Io(e) => (ErrorCode::MalformedRequest, format!("stream error: {e}")),
    };
    if code != ErrorCode::ReadTimeout {
        tracing::info!(uid = peer.uid, pid = ?peer.pid, %code, error = ?e, "closing connection after a bad frame");
    }
    record_stream_failure(agent, peer, code);
    send(conn, agent, &Response::error(0, code, message));
}

/// A connection refused before its first frame: its record (refused either way; flood
/// control bounds these records, audit/flood.rs), then the reply.
fn refuse(agent: &Agent, stream: &UnixStream, peer: Peer, code: ErrorCode, message: String) {
    let _ = agent.audit.record(&AuditRecord::new(peer, "connect", code.as_str()));
    if let Ok(frame) = encode(&Response::error(0, code, message)) {
        let _ = write_frame(stream, &frame, agent.limits.write_timeout());
    }
}

fn record_stream_failure(agent: &Agent, peer: Peer, code: ErrorCode) {
    Stats::bump(&agent.stats.requests_failed);
    let _ = agent.audit.record(&AuditRecord::new(peer, "frame", code.as_str()));
}

/// Sends a response within the write timeout; false when the peer is gone or did not take
/// the reply in time (the caller then closes the connection).
fn send(conn: &Conn, agent: &Agent, response: &Response) -> bool {
    let frame = match encode(response) {
        Ok(frame) => frame,
        Err(e) => {
            tracing::error!(request_id = response.id, error = %e, "cannot encode response");
            return false;
        }
    };
    match write_frame(&conn.stream, &frame, agent.limits.write_timeout()) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            tracing::warn!(
                request_id = response.id,
                timeout_ms = agent.limits.write_timeout_ms,
                "client did not read its reply within the write timeout; closing connection"
            );
            // The request's own record says what was done; this one says the caller never took
            // the reply (a signature written there may be partly in its socket buffer).
            let record =
                AuditRecord { request_id: response.id, ..AuditRecord::new(conn.peer, "reply", "write_timeout") };
            let _ = agent.audit.record(&record);
            false
        }
        Err(e) => {
            tracing::info!(request_id = response.id, error = %e, "cannot send response; peer gone");
            false
        }
    }
}
