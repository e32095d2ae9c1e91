//! Counters reported by `status` and the metrics endpoint: lock-free totals updated by every
//! connection, plus one [`Series`] per (operation, key, profile) with its outcomes and a
//! latency [`Histogram`]. Label values are bounded: operations and outcomes are fixed sets,
//! a profile a client sent that is not a known one is counted as `invalid`, and past
//! [`MAX_SERIES`] key names a new key is counted as `_other` — a client inventing key names
//! cannot grow the agent's memory.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use keyward_core::{KeyId, SignProfile};

use super::histogram::Histogram;

/// Most (operation, key, profile) series kept before new keys are counted as `_other`.
pub const MAX_SERIES: usize = 256;
/// The key label used once [`MAX_SERIES`] is reached.
pub const OTHER_KEY: &str = "_other";

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
    series: Mutex<BTreeMap<SeriesKey, Series>>,
}

/// The labels of one series; `key` and `profile` are empty when the request had none.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
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

impl Stats {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Records one answered request.
    pub fn record(
        &self,
        op: &'static str,
        key: Option<&KeyId>,
        profile: Option<&str>,
        outcome: &'static str,
        elapsed: Duration,
    ) {
        let profile = match profile {
            None => "",
            Some(p) if p == "tls" || p.parse::<SignProfile>().is_ok() => p,
            Some(_) => "invalid",
        };
        let Ok(mut series) = self.series.lock() else { return };
        let mut labels =
            SeriesKey { op, key: key.map(|k| k.as_str().to_owned()).unwrap_or_default(), profile: profile.to_owned() };
        if series.len() >= MAX_SERIES && !series.contains_key(&labels) {
            OTHER_KEY.clone_into(&mut labels.key);
        }
        let entry = series.entry(labels).or_default();
        *entry.outcomes.entry(outcome).or_default() += 1;
        entry.latency.observe(elapsed);
    }

    /// A copy of every series, in label order.
    pub fn series(&self) -> Vec<(SeriesKey, Series)> {
        self.series.lock().map(|s| s.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
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
