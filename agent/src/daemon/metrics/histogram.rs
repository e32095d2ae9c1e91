//! A fixed-bucket latency histogram: fourteen bucket bounds from 250 µs to 10 s, enough to
//! tell a SoftHSM signature (about a millisecond) from a TPM one (tens of milliseconds) and
//! from a hang. It feeds both the Prometheus `_bucket` series (`endpoint.rs`) and the
//! p50/p99 that `status` shows; no dependency, no allocation per observation.

use std::time::Duration;

/// Upper bounds of the buckets, in microseconds (Prometheus `le`, converted to seconds there).
pub const BUCKET_BOUNDS_US: [u64; 14] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 10_000_000,
];

/// Counts of observations per bucket (the last one is `+Inf`), their sum and maximum.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    buckets: [u64; BUCKET_BOUNDS_US.len() + 1],
    count: u64,
    sum_us: u64,
    max_us: u64,
}

impl Histogram {
    /// Adds one observation.
    pub fn observe(&mut self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let index = BUCKET_BOUNDS_US.iter().position(|&bound| us <= bound).unwrap_or(BUCKET_BOUNDS_US.len());
        self.buckets[index] += 1;
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.max_us = self.max_us.max(us);
    }

    /// Adds another histogram's observations to this one.
    pub fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        self.max_us = self.max_us.max(other.max_us);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of all observations, in microseconds.
    pub fn sum_us(&self) -> u64 {
        self.sum_us
    }

    /// Cumulative counts per bucket bound, as Prometheus wants them: `(Some(bound_us), n)`
    /// for each bound, then `(None, count)` for `+Inf`.
    pub fn cumulative(&self) -> Vec<(Option<u64>, u64)> {
        let mut total = 0;
        let mut out = Vec::with_capacity(self.buckets.len());
        for (i, n) in self.buckets.iter().enumerate() {
            total += n;
            out.push((BUCKET_BOUNDS_US.get(i).copied(), total));
        }
        out
    }

    /// The `q` quantile (0 < q ≤ 1) in microseconds, interpolated linearly inside its bucket
    /// (as Prometheus's `histogram_quantile` does); the maximum seen when it falls in the
    /// `+Inf` bucket. None when empty.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut below = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            if below + n >= rank {
                let Some(&upper) = BUCKET_BOUNDS_US.get(i) else { return Some(self.max_us) };
                let lower = if i == 0 { 0 } else { BUCKET_BOUNDS_US[i - 1] };
                let upper = upper.min(self.max_us.max(lower));
                return Some(lower + (upper - lower) * (rank - below) / n);
            }
            below += n;
        }
        Some(self.max_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(micros: &[u64]) -> Histogram {
        let mut h = Histogram::default();
        for &us in micros {
            h.observe(Duration::from_micros(us));
        }
        h
    }

    #[test]
    fn empty_histogram_has_no_quantiles() {
        assert_eq!(Histogram::default().quantile_us(0.5), None);
    }

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_they_do_not_exceed() {
        let h = of(&[250, 251, 10_000_001]);
        let cumulative = h.cumulative();
        assert_eq!(cumulative[0], (Some(250), 1));
        assert_eq!(cumulative[1], (Some(500), 2));
        assert_eq!(cumulative.last(), Some(&(None, 3)));
        assert_eq!(cumulative[cumulative.len() - 2], (Some(10_000_000), 2));
        assert_eq!(h.sum_us(), 250 + 251 + 10_000_001);
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket_and_never_exceed_the_maximum() {
        // 100 observations of 1.2 ms: all in the (1 ms, 2.5 ms] bucket, capped by the max.
        let h = of(&[1_200; 100]);
        assert_eq!(h.quantile_us(0.5), Some(1_000 + 200 * 50 / 100));
        assert_eq!(h.quantile_us(0.99), Some(1_000 + 200 * 99 / 100));
        // 99 fast and one slow: p50 is fast, p99 is still fast, p100 is the slow one.
        let mut micros = vec![300; 99];
        micros.push(3_000_000);
        let h = of(&micros);
        assert!(h.quantile_us(0.5).unwrap() <= 500);
        assert!(h.quantile_us(0.99).unwrap() <= 500);
        assert_eq!(h.quantile_us(1.0), Some(3_000_000));
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = of(&[100, 2_000]);
        a.merge(&of(&[2_000, 20_000_000]));
        assert_eq!(a.count(), 4);
        assert_eq!(a.quantile_us(1.0), Some(20_000_000));
        assert_eq!(a.cumulative()[3], (Some(2_500), 3));
    }
}
