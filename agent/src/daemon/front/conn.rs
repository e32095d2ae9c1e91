//! [`Conn`]: one open connection as the threads that may touch it see it — the thread
//! serving it, the watchdog (`watchdog.rs`), a config reload and shutdown
//! (`registry.rs`). Who may write to the socket is decided by one atomic word, the
//! connection's state and the deadline of the request in progress:
//!
//! - `IDLE`: the serving thread waits for a frame; a reload may claim it (`CLOSED`).
//! - `BUSY` + deadline: a request runs; past the deadline the watchdog may claim it
//!   (`RESCUED`) and answer `timeout` from a new thread, which then serves the connection.
//! - `WRITING`: the serving thread sends its reply; nobody else may claim it.
//! - `CLOSED`: whoever claimed it writes the last reply and shuts the socket.
//!
//! Every claim is a compare-and-swap, so exactly one thread writes each reply; a request
//! costs a few uncontended atomic operations, no lock shared between connections.

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;

use super::frame_io::FrameReader;
use crate::audit::Peer;
use crate::daemon::metrics::Shard;
use crate::daemon::ops::{Pending, Watched};

const IDLE: u64 = 0;
const BUSY: u64 = 1;
const WRITING: u64 = 2;
const RESCUED: u64 = 3;
const CLOSED: u64 = 4;
const STATE_BITS: u32 = 3;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;
/// The deadline of a request that has none yet.
const NO_DEADLINE: u64 = u64::MAX >> STATE_BITS;

/// Milliseconds since the first call: the clock of deadlines.
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(NO_DEADLINE)
}

fn ms_at(deadline: Instant) -> u64 {
    let now = Instant::now();
    let ahead = u64::try_from(deadline.saturating_duration_since(now).as_millis()).unwrap_or(NO_DEADLINE);
    now_ms().saturating_add(ahead).min(NO_DEADLINE - 1)
}

/// One open connection.
pub struct Conn {
    /// Registry key.
    pub id: u64,
    /// Who is on the other end.
    pub peer: Peer,
    /// The socket (its `SO_RCVTIMEO` and `SO_SNDTIMEO` are the configured timeouts).
    pub stream: UnixStream,
    /// The read side; held by the thread serving the connection while it reads.
    reader: Mutex<FrameReader>,
    word: AtomicU64,
    /// The request in progress, while it is watched.
    pending: Mutex<Option<Pending>>,
    /// The connection's metrics.
    pub shard: std::sync::Arc<Shard>,
    /// The rules generation last checked (`policy/reload.rs`).
    pub rules_seen: AtomicU64,
    /// The connection slots it holds, given back when it closes.
    slots: Mutex<Option<Box<dyn Send>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Conn {
    /// A connection from `peer` on `stream`, holding `slots` until it closes.
    pub fn new(
        id: u64,
        peer: Peer,
        stream: UnixStream,
        max_frame: usize,
        shard: std::sync::Arc<Shard>,
        slots: Box<dyn Send>,
    ) -> Self {
        Self {
            id,
            peer,
            stream,
            reader: Mutex::new(FrameReader::new(max_frame)),
            word: AtomicU64::new(IDLE),
            pending: Mutex::new(None),
            shard,
            rules_seen: AtomicU64::new(0),
            slots: Mutex::new(Some(slots)),
        }
    }

    /// The read side.
    pub fn reader(&self) -> MutexGuard<'_, FrameReader> {
        lock(&self.reader)
    }

    fn swap(&self, from: u64, to: u64) -> bool {
        self.word.compare_exchange(from, to, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }

    /// A frame arrived: `IDLE` → `BUSY`; false when a reload closed the connection first.
    pub fn begin(&self) -> bool {
        self.swap(IDLE, NO_DEADLINE << STATE_BITS | BUSY)
    }

    /// The reply is ready: `BUSY` → `WRITING`; false when the watchdog answered first.
    pub fn finish(&self) -> bool {
        let current = self.word.load(Ordering::SeqCst);
        current & STATE_MASK == BUSY && self.swap(current, WRITING)
    }

    /// The reply went out: `WRITING` (or a rescue's `RESCUED`) → `IDLE`.
    pub fn idle(&self) {
        self.word.store(IDLE, Ordering::SeqCst);
    }

    /// Claims an idle connection to close it (the reader on an error, a reload);
    /// false when someone else holds it.
    pub fn claim_idle(&self) -> bool {
        self.swap(IDLE, CLOSED)
    }

    /// Marks a connection its holder is closing.
    pub fn close(&self) {
        self.word.store(CLOSED, Ordering::SeqCst);
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.word.load(Ordering::SeqCst) & STATE_MASK == CLOSED
    }

    /// The watchdog's claim: a request past its deadline at `now_ms` → `RESCUED`, and its
    /// pending record. `None` when there is nothing to rescue.
    pub fn rescue(&self, now_ms: u64) -> Option<Pending> {
        let current = self.word.load(Ordering::SeqCst);
        if current & STATE_MASK != BUSY || current >> STATE_BITS > now_ms {
            return None;
        }
        if !self.swap(current, (current & !STATE_MASK) | RESCUED) {
            return None;
        }
        lock(&self.pending).take()
    }

    /// Takes the last answered frame's bytes off the socket if they are still in it
    /// (`frame_io.rs`), unless a thread is reading (it does that itself).
    pub fn discard_answered(&self) {
        if let Ok(mut reader) = self.reader.try_lock() {
            let _ = reader.discard_answered(&self.stream);
        }
    }

    /// Ends the connection: both directions shut, slots given back.
    pub fn shut(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        drop(lock(&self.slots).take());
    }

    /// Stops reading: a thread waiting for a frame sees the end of the stream.
    pub fn stop_reading(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Read);
    }
}

impl Watched for Conn {
    fn arm(&self, pending: Pending, deadline: Instant) {
        *lock(&self.pending) = Some(pending);
        // Only this thread changes a BUSY word without a deadline: a plain store is enough.
        self.word.store(ms_at(deadline) << STATE_BITS | BUSY, Ordering::SeqCst);
    }

    fn disarm(&self) -> Option<Pending> {
        let current = self.word.load(Ordering::SeqCst);
        if current & STATE_MASK != BUSY || !self.swap(current, NO_DEADLINE << STATE_BITS | BUSY) {
            return None;
        }
        lock(&self.pending).take()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn conn() -> Conn {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = Peer { uid: 1, gid: 1, pid: None, connected: Duration::ZERO };
        Conn::new(1, peer, a, 1024, std::sync::Arc::default(), Box::new(()))
    }

    fn pending() -> Pending {
        Pending::for_tests(7)
    }

    #[test]
    fn the_watchdog_claims_only_an_overdue_request_and_then_the_late_result_is_dropped() {
        let c = conn();
        assert!(c.begin());
        assert!(c.rescue(u64::MAX >> 4).is_none(), "no deadline armed");
        let deadline = Instant::now() + Duration::from_secs(60);
        c.arm(pending(), deadline);
        assert!(c.rescue(now_ms()).is_none(), "not overdue yet");
        assert!(c.rescue(ms_at(deadline) + 1).is_some(), "overdue: rescued");
        assert!(c.disarm().is_none(), "the late result is dropped");
        assert!(!c.finish());
        assert!(!c.claim_idle(), "a reload cannot claim a rescued connection");
    }

    #[test]
    fn a_request_that_finishes_in_time_cannot_be_rescued_and_a_reload_waits_for_idle() {
        let c = conn();
        assert!(c.begin());
        c.arm(pending(), Instant::now());
        assert!(c.disarm().is_some());
        assert!(c.rescue(u64::MAX >> 4).is_none(), "disarmed");
        assert!(!c.claim_idle(), "busy: a reload leaves it to the serving thread");
        assert!(c.finish());
        assert!(c.rescue(u64::MAX >> 4).is_none(), "writing");
        c.idle();
        assert!(c.claim_idle());
        assert!(!c.begin(), "closed by the reload");
    }
}
