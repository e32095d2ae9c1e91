//! Flood control for refusal records: per uid at most `per_window` refusal records in each
//! one-second window; the rest are counted per (operation, outcome) and written as one
//! `refusals_suppressed` summary when the window closes. Without it, a uid that is refused
//! at `connect` wrote 130,000 records (31 MB) in 5 s by connecting and closing. Keyed by uid
//! rather than pid, since a new process per connection is free. Successes never come here.
//!
//! Pure logic over an injected clock (`now`), driven by `log.rs`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::record::Peer;

/// The window length.
pub const WINDOW: Duration = Duration::from_secs(1);

/// Most uids tracked at once; refusals of further uids share one overflow entry (uid
/// `u32::MAX`), so memory stays bounded even for a caller that can take many uids.
const MAX_TRACKED: usize = 4096;

/// Whether to write a refusal record.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Write it.
    Write,
    /// Counted; a summary follows when the window closes.
    Suppress,
}

/// Refusals of one kind that were counted, not written.
#[derive(Debug)]
pub struct Summary {
    /// The last suppressed caller (uid `u32::MAX`: the overflow entry of many uids).
    pub peer: Peer,
    /// The refused operation.
    pub op: String,
    /// The outcome (error code).
    pub outcome: String,
    /// How many.
    pub suppressed: u64,
}

struct Window {
    started: Instant,
    written: u32,
    /// (op, outcome) → (count, last peer).
    suppressed: BTreeMap<(String, String), (u64, Peer)>,
}

/// Per-uid refusal windows.
pub struct RefusalLimiter {
    per_window: u32,
    windows: HashMap<u32, Window>,
}

impl RefusalLimiter {
    /// At most `per_window` refusal records per uid per [`WINDOW`].
    pub fn new(per_window: u32) -> Self {
        Self { per_window: per_window.max(1), windows: HashMap::new() }
    }

    /// Decides for one refusal. Call [`RefusalLimiter::take_due`] first, so that a closed
    /// window is summarised before a new one starts.
    pub fn admit(&mut self, peer: Peer, op: &str, outcome: &str, now: Instant) -> Admit {
        let uid = if self.windows.len() >= MAX_TRACKED && !self.windows.contains_key(&peer.uid) {
            u32::MAX
        } else {
            peer.uid
        };
        let window =
            self.windows.entry(uid).or_insert_with(|| Window { started: now, written: 0, suppressed: BTreeMap::new() });
        if window.written < self.per_window {
            window.written += 1;
            return Admit::Write;
        }
        // The overflow entry names no single uid.
        let peer = Peer { uid, ..peer };
        let entry = window.suppressed.entry((op.to_owned(), outcome.to_owned())).or_insert((0, peer));
        entry.0 += 1;
        entry.1 = peer;
        Admit::Suppress
    }

    /// Ends the windows that are over at `now`, returning a summary for each kind of
    /// refusal that was suppressed in them.
    pub fn take_due(&mut self, now: Instant) -> Vec<Summary> {
        let due: Vec<u32> = self
            .windows
            .iter()
            .filter(|(_, w)| now.saturating_duration_since(w.started) >= WINDOW)
            .map(|(uid, _)| *uid)
            .collect();
        due.into_iter().filter_map(|uid| self.windows.remove(&uid)).flat_map(summaries).collect()
    }

    /// Ends every window (at shutdown).
    pub fn take_all(&mut self) -> Vec<Summary> {
        self.windows.drain().flat_map(|(_, w)| summaries(w)).collect()
    }
}

fn summaries(window: Window) -> impl Iterator<Item = Summary> {
    window.suppressed.into_iter().map(|((op, outcome), (suppressed, peer))| Summary { peer, op, outcome, suppressed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, pid: i32) -> Peer {
        Peer { uid, gid: uid, pid: Some(pid), connected: Duration::ZERO }
    }

    #[test]
    fn a_uid_gets_its_budget_then_one_summary_per_kind_when_the_window_closes() {
        let mut limiter = RefusalLimiter::new(3);
        let t0 = Instant::now();
        let mut written = 0;
        for n in 0..1000 {
            // A new process per connection changes nothing: the budget is per uid.
            if limiter.admit(peer(1001, n), "connect", "permission_denied", t0) == Admit::Write {
                written += 1;
            }
        }
        assert_eq!(limiter.admit(peer(1001, 7), "frame", "read_timeout", t0), Admit::Suppress);
        assert_eq!(written, 3);
        assert!(limiter.take_due(t0 + WINDOW / 2).is_empty(), "the window is still open");
        let mut due = limiter.take_due(t0 + WINDOW);
        due.sort_by(|a, b| a.op.cmp(&b.op));
        assert_eq!(due.len(), 2);
        assert_eq!(
            (due[0].op.as_str(), due[0].outcome.as_str(), due[0].suppressed),
            ("connect", "permission_denied", 997)
        );
        assert_eq!(due[0].peer.pid, Some(999));
        assert_eq!((due[1].op.as_str(), due[1].suppressed), ("frame", 1));
        // A new window: a new budget.
        assert_eq!(limiter.admit(peer(1001, 1), "connect", "permission_denied", t0 + WINDOW), Admit::Write);
    }

    #[test]
    fn uids_have_separate_budgets_and_quiet_windows_leave_no_summary() {
        let mut limiter = RefusalLimiter::new(1);
        let t0 = Instant::now();
        assert_eq!(limiter.admit(peer(1, 1), "connect", "busy", t0), Admit::Write);
        assert_eq!(limiter.admit(peer(2, 1), "connect", "busy", t0), Admit::Write);
        assert_eq!(limiter.admit(peer(1, 1), "connect", "busy", t0), Admit::Suppress);
        let due = limiter.take_all();
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].peer.uid, due[0].suppressed), (1, 1));
        assert!(limiter.take_due(t0 + WINDOW * 5).is_empty());
    }

    #[test]
    fn memory_stays_bounded_when_many_uids_are_refused() {
        let mut limiter = RefusalLimiter::new(1);
        let t0 = Instant::now();
        for uid in 0..(MAX_TRACKED as u32 + 100) {
            limiter.admit(peer(uid, 1), "connect", "permission_denied", t0);
            limiter.admit(peer(uid, 1), "connect", "permission_denied", t0);
        }
        assert!(limiter.windows.len() <= MAX_TRACKED + 1);
        let overflow: u64 = limiter.take_all().iter().filter(|s| s.peer.uid == u32::MAX).map(|s| s.suppressed).sum();
        assert_eq!(overflow, 199, "the overflow entry wrote one record and counted the rest");
    }
}
