//! Token buckets for `keys.<name>.rate_limit` and `profile_rate_limits`: a bucket holds up
//! to `burst` tokens, starts full, and refills continuously at `per_minute`. A use takes one
//! token from every bucket that applies, or from none: a refusal by one bucket does not
//! drain another. A use refused afterwards for another reason, before the key was put to
//! work, gets its tokens back ([`Bucket::put_back`]). Buckets live in memory; a restart or a
//! config reload starts them full.

use std::time::{Duration, Instant};

use crate::config::RateLimitConfig;

/// One token bucket.
#[derive(Clone, Debug)]
pub struct Bucket {
    limit: RateLimitConfig,
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(limit: RateLimitConfig, now: Instant) -> Self {
        Self { limit, tokens: f64::from(limit.burst), updated: now }
    }

    /// The configured limit.
    pub fn limit(&self) -> RateLimitConfig {
        self.limit
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        let rate = f64::from(self.limit.per_minute) / 60.0;
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(self.limit.burst));
        self.updated = now;
    }

    /// Gives back a token taken by a use that was then refused (never beyond `burst`).
    pub fn put_back(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens + 1.0).min(f64::from(self.limit.burst));
    }

    /// How long until a token is available (zero when one is).
    fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            return Duration::ZERO;
        }
        let rate = f64::from(self.limit.per_minute) / 60.0;
        Duration::from_secs_f64((1.0 - self.tokens) / rate)
    }
}

/// Takes one token from each bucket, or, when any is empty, none; then returns the index of
/// the first empty bucket and how long until it has a token.
pub fn take_all(buckets: &mut [&mut Bucket], now: Instant) -> Result<(), (usize, Duration)> {
    for (i, bucket) in buckets.iter_mut().enumerate() {
        let wait = bucket.wait(now);
        if !wait.is_zero() {
            return Err((i, wait));
        }
    }
    for bucket in buckets.iter_mut() {
        bucket.tokens -= 1.0;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimitConfig = RateLimitConfig { per_minute: 30, burst: 3 };

    #[test]
    fn a_full_bucket_allows_exactly_burst_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(LIMIT, t0);
        for _ in 0..3 {
            assert_eq!(take_all(&mut [&mut b], t0), Ok(()));
        }
        let (index, wait) = take_all(&mut [&mut b], t0).unwrap_err();
        assert_eq!(index, 0);
        assert_eq!(wait, Duration::from_secs(2)); // 30 per minute: one token every 2 s
        assert!(take_all(&mut [&mut b], t0 + Duration::from_millis(1900)).is_err());
        assert_eq!(take_all(&mut [&mut b], t0 + Duration::from_secs(2)), Ok(()));
        assert!(take_all(&mut [&mut b], t0 + Duration::from_secs(2)).is_err());
        // A long pause refills to `burst`, not beyond.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(take_all(&mut [&mut b], later), Ok(()));
        }
        assert!(take_all(&mut [&mut b], later).is_err());
    }

    #[test]
    fn a_token_put_back_can_be_used_again_but_never_beyond_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(LIMIT, t0);
        for _ in 0..3 {
            assert_eq!(take_all(&mut [&mut b], t0), Ok(()));
        }
        b.put_back(t0);
        assert_eq!(take_all(&mut [&mut b], t0), Ok(()));
        assert!(take_all(&mut [&mut b], t0).is_err());
        let mut full = Bucket::new(LIMIT, t0);
        full.put_back(t0);
        for _ in 0..3 {
            assert_eq!(take_all(&mut [&mut full], t0), Ok(()));
        }
        assert!(take_all(&mut [&mut full], t0).is_err());
    }

    #[test]
    fn a_refusal_by_one_bucket_does_not_drain_the_other() {
        let t0 = Instant::now();
        let mut key = Bucket::new(RateLimitConfig { per_minute: 60, burst: 5 }, t0);
        let mut profile = Bucket::new(RateLimitConfig { per_minute: 60, burst: 1 }, t0);
        assert_eq!(take_all(&mut [&mut key, &mut profile], t0), Ok(()));
        assert_eq!(take_all(&mut [&mut key, &mut profile], t0).unwrap_err().0, 1);
        // The key bucket lost one token (the first use), not two.
        for _ in 0..4 {
            assert_eq!(take_all(&mut [&mut key], t0), Ok(()));
        }
        assert!(take_all(&mut [&mut key], t0).is_err());
    }
}
