//! Connections per peer process: a count of open connections by (uid, pid), so that one
//! process — a client in a reconnect loop, or a local process trying to starve others —
//! cannot take every slot of `limits.max_connections`. A [`PeerSlot`] is held for the life
//! of a connection and gives its place back when dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Who a slot is counted against: uid and pid from `SO_PEERCRED` (pid when the kernel has one).
pub type PeerKey = (u32, Option<i32>);

/// Open connections by peer, capped at `limit` each.
#[derive(Debug)]
pub struct PeerLimit {
    limit: usize,
    open: Arc<Mutex<HashMap<PeerKey, usize>>>,
}

/// One open connection of a peer; dropping it frees the slot.
#[derive(Debug)]
pub struct PeerSlot {
    key: PeerKey,
    open: Arc<Mutex<HashMap<PeerKey, usize>>>,
}

impl PeerLimit {
    /// At most `limit` connections per peer.
    pub fn new(limit: usize) -> Self {
        Self { limit, open: Arc::default() }
    }

    /// A slot for `key`, or `None` when it already holds `limit` connections.
    pub fn try_acquire(&self, key: PeerKey) -> Option<PeerSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(PeerSlot { key, open: Arc::clone(&self.open) })
    }

    /// Peers with at least one open connection (the map never keeps a zero count).
    #[cfg(test)]
    fn peers(&self) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_gets_at_most_its_limit_and_slots_come_back_on_drop() {
        let limit = PeerLimit::new(2);
        let a = (1000, Some(42));
        let first = limit.try_acquire(a).expect("first");
        let second = limit.try_acquire(a).expect("second");
        assert!(limit.try_acquire(a).is_none(), "third connection of the same process");
        assert!(limit.try_acquire((1000, Some(43))).is_some(), "another process of the same uid");
        drop(first);
        let third = limit.try_acquire(a).expect("a freed slot is reusable");
        drop((second, third));
        assert_eq!(limit.peers(), 0, "no entry left for a peer without connections");
    }
}
