//! Counters reported by `status` and the metrics endpoint: lock-free totals updated by every
//! connection, plus one [`Series`] per (operation, key, profile) with its outcomes and a
//! latency [`Histogram`]. Series live in shards, one per connection ([`Shard`]): only the
//! connection's own thread writes its shard (an uncontended lock, no allocation once a
//! series exists), so connections never wait on each other; a reader (`status`, a scrape)
//! merges every shard, and a closed connection's shard is folded into the retired totals.
//!
//! Label values are bounded: operations and outcomes are fixed sets, a profile a client sent
//! that is not a known one is counted as `invalid`, and past [`MAX_SERIES`] series a new key
//! is counted as `_other` — a client inventing key names cannot grow the agent's memory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use keyward_core::{KeyId, SignProfile};

use super::histogram::Histogram;

/// Most (operation, key, profile) series kept before new keys are counted as `_other`.
pub const MAX_SERIES: usize = 256;
/// The key label used once [`MAX_SERIES`] is reached.
pub const OTHER_KEY: &str = "_other";

/// Agent counters.
#[derive(Debug)]
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
    shared: Mutex<Shared>,
    /// The shard of [`Stats::record`], for callers without a connection.
    own: Arc<Shard>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Every series label admitted so far (bounded by [`MAX_SERIES`], plus `_other` ones).
    labels: HashSet<SeriesKey>,
    /// The series of closed connections.
    retired: BTreeMap<SeriesKey, Series>,
    /// The shards of open connections.
    shards: Vec<Weak<Shard>>,
}

/// (operation, profile) → key → series.
type ShardSeries = HashMap<(&'static str, &'static str), HashMap<Box<str>, Series>>;

/// One connection's series.
#[derive(Debug, Default)]
pub struct Shard {
    series: Mutex<ShardSeries>,
}

/// The labels of one series; `key` and `profile` are empty when the request had none.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    /// Operation name (`sign`, `decrypt`, …; `invalid` for an undecodable request).
    pub op: &'static str,
    /// Key name, or [`OTHER_KEY`].
    pub key: String,
    /// Profile name (`nvflare`, `tls`, `tls-…`), or `invalid`.
    pub profile: String,
}

/// What happened to the requests of one series.
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// Requests by outcome: `ok` or a wire error code.
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Time from a whole frame read to its reply built.
    pub latency: Histogram,
}

impl Series {
    fn observe(&mut self, outcome: &'static str, elapsed: Duration) {
        *self.outcomes.entry(outcome).or_default() += 1;
        self.latency.observe(elapsed);
    }

    fn merge(&mut self, other: &Self) {
        for (outcome, n) in &other.outcomes {
            *self.outcomes.entry(outcome).or_default() += n;
        }
        self.latency.merge(&other.latency);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The profile label: a known profile's own name, `tls`, empty, or `invalid`.
fn profile_label(profile: Option<&str>) -> &'static str {
    match profile {
        None => "",
        Some("tls") => "tls",
        Some(p) => p.parse::<SignProfile>().map_or("invalid", SignProfile::name),
    }
}

impl Default for Stats {
    fn default() -> Self {
        let own = Arc::new(Shard::default());
        let shared = Shared { shards: vec![Arc::downgrade(&own)], ..Shared::default() };
        Self {
            connections: AtomicU64::new(0),
            requests_ok: AtomicU64::new(0),
            requests_failed: AtomicU64::new(0),
            signatures: AtomicU64::new(0),
            decryptions: AtomicU64::new(0),
            shared: Mutex::new(shared),
            own,
        }
    }
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

    /// A new shard for one connection, counted until [`Stats::retire`].
    pub fn new_shard(&self) -> Arc<Shard> {
        let shard = Arc::new(Shard::default());
        lock(&self.shared).shards.push(Arc::downgrade(&shard));
        shard
    }

    /// Folds a closed connection's shard into the retired totals.
    pub fn retire(&self, shard: &Arc<Shard>) {
        let mut shared = lock(&self.shared);
        let series = std::mem::take(&mut *lock(&shard.series));
        for ((op, profile), by_key) in series {
            for (key, s) in by_key {
                let labels = SeriesKey { op, key: key.into(), profile: profile.to_owned() };
                shared.retired.entry(labels).or_default().merge(&s);
            }
        }
        shared.shards.retain(|w| w.upgrade().is_some_and(|live| !Arc::ptr_eq(&live, shard)));
    }

    /// Records one answered request in the agent's own shard.
    pub fn record(
        &self,
        op: &'static str,
        key: Option<&KeyId>,
        profile: Option<&str>,
        outcome: &'static str,
        elapsed: Duration,
    ) {
        self.record_in(&self.own, op, key, profile, outcome, elapsed);
    }

    /// Records one answered request in `shard`.
    pub fn record_in(
        &self,
        shard: &Shard,
        op: &'static str,
        key: Option<&KeyId>,
        profile: Option<&str>,
        outcome: &'static str,
        elapsed: Duration,
    ) {
        let profile = profile_label(profile);
        let key = key.map_or("", KeyId::as_str);
        if let Some(series) = lock(&shard.series).get_mut(&(op, profile)).and_then(|by_key| by_key.get_mut(key)) {
            series.observe(outcome, elapsed);
            return;
        }
        // A series new to this shard: admitted under the global cap first (the shard's lock is
        // not held meanwhile: readers take the global lock, then shard locks).
        let key = self.admit(op, key, profile);
        lock(&shard.series).entry((op, profile)).or_default().entry(key.into()).or_default().observe(outcome, elapsed);
    }

    /// The key label a new series gets: its own, or [`OTHER_KEY`] past [`MAX_SERIES`].
    fn admit(&self, op: &'static str, key: &str, profile: &'static str) -> String {
        let mut shared = lock(&self.shared);
        let mut labels = SeriesKey { op, key: key.to_owned(), profile: profile.to_owned() };
        if shared.labels.len() >= MAX_SERIES && !shared.labels.contains(&labels) {
            OTHER_KEY.clone_into(&mut labels.key);
            return labels.key;
        }
        let key = labels.key.clone();
        shared.labels.insert(labels);
        key
    }

    /// Every series (all shards merged), in label order.
    pub fn series(&self) -> Vec<(SeriesKey, Series)> {
        let mut shared = lock(&self.shared);
        shared.shards.retain(|w| w.strong_count() > 0);
        let mut all = shared.retired.clone();
        for shard in shared.shards.iter().filter_map(Weak::upgrade) {
            for ((op, profile), by_key) in lock(&shard.series).iter() {
                for (key, s) in by_key {
                    let labels = SeriesKey { op, key: key.to_string(), profile: (*profile).to_owned() };
                    all.entry(labels).or_default().merge(s);
                }
            }
        }
        all.into_iter().collect()
    }

    /// Latency per operation (all keys and profiles merged), in operation order.
    pub fn latency_by_op(&self) -> BTreeMap<&'static str, Histogram> {
        let mut by_op: BTreeMap<&'static str, Histogram> = BTreeMap::new();
        for (labels, series) in self.series() {
            by_op.entry(labels.op).or_default().merge(&series.latency);
        }
        by_op
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> KeyId {
        KeyId::new(name).unwrap()
    }

    #[test]
    fn unknown_profiles_are_counted_as_invalid() {
        let stats = Stats::default();
        stats.record("sign", Some(&key("k")), Some("nvflare"), "ok", Duration::from_millis(1));
        stats.record("sign", Some(&key("k")), Some("made-up-profile"), "invalid_request", Duration::ZERO);
        let profiles: Vec<String> = stats.series().into_iter().map(|(k, _)| k.profile).collect();
        assert_eq!(profiles, ["invalid", "nvflare"]);
    }

    #[test]
    fn invented_key_names_do_not_grow_the_series_past_the_cap() {
        let stats = Stats::default();
        for i in 0..(MAX_SERIES + 50) {
            stats.record("sign", Some(&key(&format!("k{i}"))), Some("nvflare"), "unknown_key", Duration::ZERO);
        }
        let series = stats.series();
        assert_eq!(series.len(), MAX_SERIES + 1);
        let other = series.iter().find(|(k, _)| k.key == OTHER_KEY).unwrap();
        assert_eq!(other.1.outcomes["unknown_key"], 50);
    }

    #[test]
    fn shards_of_open_and_closed_connections_add_up_and_share_the_cap() {
        let stats = Stats::default();
        let (a, b) = (stats.new_shard(), stats.new_shard());
        stats.record_in(&a, "sign", Some(&key("k")), Some("nvflare"), "ok", Duration::from_millis(1));
        stats.record_in(&b, "sign", Some(&key("k")), Some("nvflare"), "timeout", Duration::from_millis(1));
        stats.retire(&a);
        drop(a);
        stats.record_in(&b, "sign", Some(&key("k")), Some("nvflare"), "ok", Duration::from_millis(1));
        let series = stats.series();
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].1.outcomes["ok"], 2);
        assert_eq!(series[0].1.outcomes["timeout"], 1);
        for i in 0..MAX_SERIES {
            stats.record_in(&b, "sign", Some(&key(&format!("n{i}"))), None, "unknown_key", Duration::ZERO);
        }
        assert_eq!(stats.series().len(), MAX_SERIES + 1, "one existing, 255 new, then `_other`");
    }

    #[test]
    fn latency_by_op_merges_keys() {
        let stats = Stats::default();
        stats.record("sign", Some(&key("a")), Some("nvflare"), "ok", Duration::from_millis(1));
        stats.record("sign", Some(&key("b")), Some("tls"), "ok", Duration::from_millis(2));
        stats.record("status", None, None, "ok", Duration::from_millis(3));
        let by_op = stats.latency_by_op();
        assert_eq!(by_op["sign"].count(), 2);
        assert_eq!(by_op["status"].count(), 1);
    }
}
