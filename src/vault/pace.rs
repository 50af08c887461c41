//! Vault's "slow down": a 429 (a rate-limit quota) and its `Retry-After`.
//!
//! A call Vault answers 429 is not retried (a caller's sign gets the 429 with a
//! `Retry-After`, `error::Error::VaultRateLimited`). The client remembers a "Vault asked us
//! to wait until T" instant that background loops (token renewal and login, keyset
//! refreshes, watchers) honour through [`VaultClient::pace`] before their next round, so a
//! fleet of sidecars backs off together instead of hammering the quota. T is at least
//! Vault's `Retry-After` (whole seconds; an HTTP date is ignored), capped at
//! [`MAX_PACE`], and at least a pause from [`crate::backoff::Backoff`]: 1-2 s on the first
//! 429, doubling (jittered) on each 429 to a request sent after the previous pause ended,
//! up to 30-60 s. A 429 to a request sent during the pause belongs to the same episode and
//! does not double it (many calls in flight meet one limit together). A success resets the
//! doubling; T itself stands until it passes. Calls on the request path are not held:
//! each caller decides when to come back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::VaultClient;
use crate::backoff::Backoff;

/// The longest pause a 429 imposes, whatever `Retry-After` says (a bogus or hostile
/// header must not stop token renewal for hours; a quota still refusing is asked again).
pub(super) const MAX_PACE: Duration = Duration::from_secs(60);
/// The first pause is drawn from `[FIRST_PAUSE/2, FIRST_PAUSE)`: at least 1 s.
const FIRST_PAUSE: Duration = Duration::from_secs(2);

/// `Retry-After` as delta-seconds (RFC 9110); `None` for anything else.
pub(super) fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // More digits than a u64 holds is "a very long time": the cap applies.
    Some(v.parse().map_or(MAX_PACE, Duration::from_secs))
}

/// The client's pacing state (see the module docs).
pub(super) struct Pace {
    state: Mutex<State>,
    /// A 429 since the last success: a success has doubling to reset.
    doubled: AtomicBool,
}

struct State {
    until: Option<Instant>,
    pauses: Backoff,
}

/// What one 429 did to the pace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Limited {
    /// How long from now callers should wait.
    pub wait: Duration,
    /// It started a new episode (the first 429 after a pause ended), worth a log line.
    pub new_episode: bool,
}

impl Pace {
    pub(super) fn new() -> Self {
        Pace {
            state: Mutex::new(State {
                until: None,
                pauses: Backoff::new(FIRST_PAUSE, MAX_PACE),
            }),
            doubled: AtomicBool::new(false),
        }
    }

    /// A 429 answered now to a request sent at `sent`, with Vault's `Retry-After`.
    pub(super) fn limited(&self, sent: Instant, retry_after: Option<Duration>) -> Limited {
        self.limited_at(Instant::now(), sent, retry_after)
    }

    fn limited_at(&self, now: Instant, sent: Instant, retry_after: Option<Duration>) -> Limited {
        let asked = retry_after.unwrap_or(Duration::ZERO).min(MAX_PACE);
        let mut s = self.state.lock().expect("pace lock");
        let (until, new_episode) = match s.until {
            Some(until) if sent < until => (until.max(now + asked), false),
            _ => (now + asked.max(s.pauses.next_pause()), true),
        };
        s.until = Some(until);
        self.doubled.store(true, Ordering::Relaxed);
        Limited {
            wait: until.saturating_duration_since(now),
            new_episode,
        }
    }

    /// A call succeeded: the next 429 starts from the first pause again.
    pub(super) fn succeeded(&self) {
        // One atomic load on the happy path; the lock only after a 429.
        if self.doubled.swap(false, Ordering::Relaxed) {
            self.state.lock().expect("pace lock").pauses.reset();
        }
    }

    fn until_at(&self, now: Instant) -> Option<Instant> {
        self.state
            .lock()
            .expect("pace lock")
            .until
            .filter(|u| *u > now)
    }
}

impl VaultClient {
    /// Until when Vault asked this client to hold back (a 429), if that is still ahead.
    pub fn paced_until(&self) -> Option<Instant> {
        self.pace.until_at(Instant::now())
    }

    /// Waits until [`paced_until`](Self::paced_until) has passed (at once when Vault asked
    /// for nothing). For background loops, before each round.
    pub async fn pace(&self) {
        while let Some(until) = self.paced_until() {
            tokio::time::sleep_until(until.into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_whole_seconds() {
        let s = Duration::from_secs;
        assert_eq!(parse_retry_after("7"), Some(s(7)));
        assert_eq!(parse_retry_after(" 0 "), Some(s(0)));
        assert_eq!(parse_retry_after("120"), Some(s(120)));
        assert_eq!(parse_retry_after("99999999999999999999999"), Some(MAX_PACE));
        for bad in ["", "-1", "1.5", "soon", "Wed, 21 Oct 2015 07:28:00 GMT"] {
            assert_eq!(parse_retry_after(bad), None, "{bad:?}");
        }
    }

    fn in_range(d: Duration, low: u64, high: u64) -> bool {
        d >= Duration::from_secs(low) && d < Duration::from_secs(high)
    }

    #[test]
    fn a_first_429_waits_at_least_a_second_or_what_vault_asked() {
        let t0 = Instant::now();
        let pace = Pace::new();
        assert_eq!(pace.until_at(t0), None);
        let l = pace.limited_at(t0, t0, None);
        assert!(l.new_episode && in_range(l.wait, 1, 2), "{l:?}");
        assert_eq!(pace.until_at(t0), Some(t0 + l.wait));
        assert_eq!(pace.until_at(t0 + l.wait), None, "passed");

        let pace = Pace::new();
        let l = pace.limited_at(t0, t0, Some(Duration::from_secs(7)));
        assert_eq!(l.wait, Duration::from_secs(7));
        let pace = Pace::new();
        let l = pace.limited_at(t0, t0, Some(Duration::from_secs(3600)));
        assert_eq!(l.wait, MAX_PACE, "capped");
    }

    #[test]
    fn consecutive_429s_double_up_to_the_cap_and_a_success_resets() {
        let pace = Pace::new();
        let mut now = Instant::now();
        let mut waits = Vec::new();
        for _ in 0..8 {
            // Each request is sent once the previous pause has passed.
            let l = pace.limited_at(now, now, Some(Duration::ZERO));
            assert!(l.new_episode);
            waits.push(l.wait);
            now += l.wait;
        }
        let bounds = [
            (1, 2),
            (2, 4),
            (4, 8),
            (8, 16),
            (16, 32),
            (30, 60),
            (30, 60),
        ];
        for (wait, (low, high)) in waits.iter().zip(bounds) {
            assert!(in_range(*wait, low, high), "{waits:?}");
        }
        assert!(waits.iter().all(|w| *w <= MAX_PACE));
        pace.succeeded();
        let l = pace.limited_at(now, now, None);
        assert!(in_range(l.wait, 1, 2), "reset: {l:?}");
    }

    #[test]
    fn requests_sent_during_a_pause_share_its_episode() {
        let pace = Pace::new();
        let t0 = Instant::now();
        let first = pace.limited_at(t0, t0, None);
        let until = t0 + first.wait;
        // 50 calls in flight when the first 429 came meet the same limit: no doubling.
        for i in 0..50 {
            let now = t0 + Duration::from_millis(i);
            let l = pace.limited_at(now, t0, None);
            assert!(!l.new_episode);
            assert_eq!(now + l.wait, until);
        }
        // Vault asking for longer within the episode extends it, without doubling.
        let later = pace.limited_at(t0, t0, Some(Duration::from_secs(5)));
        assert_eq!(later.wait, Duration::from_secs(5));
        assert_eq!(pace.until_at(t0), Some(t0 + Duration::from_secs(5)));
        // A success does not cut short what Vault asked for.
        pace.succeeded();
        assert_eq!(pace.until_at(t0), Some(t0 + Duration::from_secs(5)));
    }
}
