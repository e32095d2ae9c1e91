//! [`SessionPool`]: the key stores (one PKCS#11 session each, or the one TPM context),
//! lent to the thread that has a request for one. The thread runs its job itself, so a
//! request crosses no thread to reach the device; a store is only ever used by the one
//! thread that holds it (the `&mut` of [`KeyStore`]), and the pool's lock hands it over
//! with the memory ordering a move between threads needs. An idle store is taken with one
//! uncontended lock and no system call; only when every store is out does a thread sleep,
//! woken by the next one given back (one wake-up). At most `max_waiting` threads wait:
//! more get `busy` at once, and a wait ends with `timeout` at the request's deadline.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use keyward_core::{KeyStore, StoreError};

struct Idle {
    stores: Vec<Box<dyn KeyStore>>,
    waiting: usize,
    closed: bool,
}

/// The stores and the threads waiting for one.
pub struct SessionPool {
    idle: Mutex<Idle>,
    returned: Condvar,
    max_waiting: usize,
    size: usize,
}

/// A store lent to one thread; given back when dropped.
pub struct Session<'a> {
    pool: &'a SessionPool,
    store: Option<Box<dyn KeyStore>>,
}

impl Session<'_> {
    /// The store.
    pub fn store(&mut self) -> &mut dyn KeyStore {
        // Present from `acquire` until `drop`.
        self.store.as_deref_mut().expect("a session holds its store until dropped")
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if let Some(store) = self.store.take() {
            let mut idle = self.pool.lock();
            if idle.closed {
                drop(idle);
                drop(store);
                return;
            }
            idle.stores.push(store);
            // A notify is a system call; make it only when someone sleeps. And after the lock
            // is released: a waiter woken while it is held would only go back to sleep on it.
            let someone_waits = idle.waiting > 0;
            drop(idle);
            if someone_waits {
                self.pool.returned.notify_one();
            }
        }
    }
}

impl SessionPool {
    /// A pool of `stores`, with at most `max_waiting` threads waiting for one.
    pub fn new(stores: Vec<Box<dyn KeyStore>>, max_waiting: usize) -> Self {
        let size = stores.len();
        Self {
            idle: Mutex::new(Idle { stores, waiting: 0, closed: false }),
            returned: Condvar::new(),
            max_waiting,
            size,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of stores, lent or not.
    pub fn size(&self) -> usize {
        self.size
    }

    /// A store, waiting for one until `deadline`.
    ///
    /// # Errors
    /// [`StoreError::Busy`] when `max_waiting` threads already wait, [`StoreError::Timeout`]
    /// (naming `timeout`, the request timeout) at the deadline, [`StoreError::Unavailable`]
    /// once the pool is closed.
    pub fn acquire(&self, deadline: Instant, timeout: Duration) -> Result<Session<'_>, StoreError> {
        let mut idle = self.lock();
        if let Some(store) = idle.stores.pop() {
            return Ok(Session { pool: self, store: Some(store) });
        }
        if idle.closed {
            return Err(closed());
        }
        if idle.waiting >= self.max_waiting {
            return Err(StoreError::Busy);
        }
        idle.waiting += 1;
        let got = loop {
            if let Some(store) = idle.stores.pop() {
                break Ok(store);
            }
            if idle.closed {
                break Err(closed());
            }
            let now = Instant::now();
            if now >= deadline {
                break Err(StoreError::Timeout { millis: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX) });
            }
            idle = self.returned.wait_timeout(idle, deadline - now).unwrap_or_else(PoisonError::into_inner).0;
        };
        idle.waiting -= 1;
        got.map(|store| Session { pool: self, store: Some(store) })
    }

    /// Closes the pool: idle stores are dropped now (sessions closed), lent ones when given
    /// back, and waiting threads get `backend_unavailable`.
    pub fn close(&self) {
        let stores = {
            let mut idle = self.lock();
            idle.closed = true;
            std::mem::take(&mut idle.stores)
        };
        self.returned.notify_all();
        drop(stores);
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable { what: "the agent is stopping".into(), source: None }
}

#[cfg(test)]
mod tests;
