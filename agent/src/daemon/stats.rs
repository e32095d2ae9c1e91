//! Counters reported by `status`: lock-free, updated by every connection.

use std::sync::atomic::{AtomicU64, Ordering};

/// Agent counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections open now.
    pub connections: AtomicU64,
    /// Successful requests.
    pub requests_ok: AtomicU64,
    /// Failed requests.
    pub requests_failed: AtomicU64,
    /// Signatures made.
    pub signatures: AtomicU64,
    /// Decryptions made.
    pub decryptions: AtomicU64,
}

impl Stats {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
