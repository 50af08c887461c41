//! The one retry pause policy: jittered exponential backoff, from `backon`.
//!
//! Every loop that tries again after a failure (logins in `vault::auth`, rounds of Vault
//! nodes in `vault::execute`, the pause after Vault's 429s in `vault::pace`, check-and-set
//! conflicts in `lifecycle`, readiness in `server`, audit delivery in `audit::deliver`)
//! takes its pauses from a [`Backoff`]. Each
//! pause is drawn from `[step/2, step)`, the step doubling from `first` up to `cap`, so
//! sidecars that failed together do not retry together, and no pause exceeds `cap`.
//! Only the numbers differ per use; they are named where the loop is.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Pauses for one retry loop. Never runs out: the loop decides when to stop.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    pauses: ExponentialBackoff,
    cap: Duration,
}

impl Backoff {
    /// Pauses in `[first/2, first)`, then doubling, up to `[cap/2, cap)`.
    pub fn new(first: Duration, cap: Duration) -> Self {
        // backon's jitter adds up to one step: steps from first/2 to cap/2 give the
        // intervals above.
        let builder = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(first / 2)
            .with_max_delay(cap.max(first) / 2)
            .without_max_times();
        Backoff {
            pauses: builder.build(),
            builder,
            cap,
        }
    }

    /// The pause before the next attempt.
    pub fn next_pause(&mut self) -> Duration {
        // `without_max_times`: the iterator never ends; the cap is a safe answer anyway.
        self.pauses.next().unwrap_or(self.cap)
    }

    /// After a success: the next failure starts from `first` again.
    pub fn reset(&mut self) {
        self.pauses = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_with_jitter_up_to_the_cap_and_reset() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(200), ms(1000));
        let bounds = [(100, 200), (200, 400), (400, 800), (500, 1000), (500, 1000)];
        for (low, high) in bounds {
            let pause = b.next_pause();
            assert!(
                pause >= ms(low) && pause < ms(high),
                "{pause:?} not in {low}..{high} ms"
            );
        }
        b.reset();
        let first = b.next_pause();
        assert!(first >= ms(100) && first < ms(200), "{first:?}");
    }

    #[test]
    fn pauses_are_spread() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            seen.insert(Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_pause());
        }
        assert!(seen.len() > 10, "jitter draws differ: {seen:?}");
    }
}
