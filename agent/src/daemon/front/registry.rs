//! [`Connections`]: every open connection, for the three things that reach across them —
//! the watchdog's scan for overdue requests (`watchdog.rs`), closing the connections of
//! peers a config reload no longer allows, and shutdown (stop reading everywhere, then
//! wait for the connections to finish their request in progress). The registry's lock is
//! taken when a connection opens or closes and by those three, never per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::conn::Conn;

/// The open connections.
#[derive(Default)]
pub struct Connections {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    closing: AtomicBool,
}

impl Connections {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh connection id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds a connection; false once shutdown has begun (the caller closes it).
    pub fn add(&self, conn: &Arc<Conn>) -> bool {
        let mut open = self.lock();
        if self.closing.load(Ordering::SeqCst) {
            return false;
        }
        open.insert(conn.id, Arc::clone(conn));
        true
    }

    /// Removes a closed connection.
    pub fn remove(&self, conn: &Conn) {
        self.lock().remove(&conn.id);
    }

    /// A copy of the list, to act on without holding the lock.
    pub fn all(&self) -> Vec<Arc<Conn>> {
        self.lock().values().cloned().collect()
    }

    /// Number of open connections.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Whether shutdown has begun.
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Begins shutdown: no new connection is added, and every connection stops reading
    /// (a thread waiting for a frame sees the end of the stream; one in a request finishes
    /// it and replies first).
    pub fn close_all(&self) {
        let open = self.lock();
        self.closing.store(true, Ordering::SeqCst);
        for conn in open.values() {
            conn.stop_reading();
        }
    }
}
