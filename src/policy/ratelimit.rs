//! Per caller and key rate limits: a token bucket (governor's GCRA) per (caller, key).
//!
//! Each request takes one token, whatever its batch size (batch size has its own limit,
//! `AEGIS_MAX_BATCH_ITEMS`). When the bucket is empty the request is refused with the time
//! until a token is back, which the HTTP face sends as `Retry-After`.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use governor::clock::Clock as _;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Every this many checks, buckets back at full (indistinguishable from new ones) are
/// dropped, so a caller naming ever new keys (with `AEGIS_KEYS=*` and `keys = ["*"]`)
/// cannot grow the map without bound.
const PRUNE_EVERY: u32 = 1024;

/// One caller's limiter, keyed by key name.
pub struct KeyLimiter {
    limiter: DefaultKeyedRateLimiter<String>,
    checks: AtomicU32,
}

impl std::fmt::Debug for KeyLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyLimiter")
    }
}

impl KeyLimiter {
    /// `rate` requests per second (> 0), `burst` at once (default: the rate rounded up).
    pub fn new(rate: f64, burst: Option<u32>) -> KeyLimiter {
        let burst = burst
            .or_else(|| u32::try_from(rate.ceil() as u64).ok())
            .and_then(NonZeroU32::new)
            .unwrap_or(NonZeroU32::MIN);
        let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .expect("a non-zero period")
            .allow_burst(burst);
        KeyLimiter {
            limiter: RateLimiter::keyed(quota),
            checks: AtomicU32::new(0),
        }
    }

    /// Takes a token for `key`, or says how long until one is back.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&key.to_string())
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// Buckets held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_with_a_wait_per_key() {
        let l = KeyLimiter::new(1.0, Some(2));
        assert!(l.check("a").is_ok());
        assert!(l.check("a").is_ok());
        let wait = l.check("a").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Another key has its own bucket.
        assert!(l.check("b").is_ok());
    }

    #[test]
    fn buckets_of_keys_no_longer_used_are_dropped() {
        // A fast refill: a bucket used once is full again long before the next prune.
        let l = KeyLimiter::new(1e6, Some(1));
        for i in 0..(4 * PRUNE_EVERY) {
            let _ = l.check(&format!("key-{i}"));
            std::thread::sleep(Duration::from_micros(2));
        }
        assert!(l.len() <= PRUNE_EVERY as usize, "{} buckets kept", l.len());
        // A bucket still empty is kept: its caller stays limited.
        let slow = KeyLimiter::new(0.001, Some(1));
        assert!(slow.check("busy").is_ok());
        for i in 0..PRUNE_EVERY {
            let _ = slow.check(&format!("other-{i}"));
        }
        assert!(slow.check("busy").is_err());
    }
}
