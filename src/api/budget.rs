//! The budget of request bytes in flight (`AEGIS_MAX_BODY_BYTES_IN_FLIGHT`): what bounds
//! the sidecar's memory however many callers send large bodies at once.
//!
//! Each request takes the bytes of its body from one budget shared by both faces before
//! they are held: the HTTP face by the body's `Content-Length` before reading it (and as
//! read, for a body without one), the gRPC face by the size of the decoded message. It
//! gives them back when the request ends (answer made, or the caller gone). A request
//! whose bytes are not free now is refused at once with [`Error::OverBodyBudget`] (503,
//! `Retry-After: 1`) and counted in `aegis_body_budget_refusals_total`; nothing waits, so
//! a burst of large bodies cannot pile up memory or hold connections.

use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::error::Error;
use crate::telemetry::metrics;

/// Refused bodies read and thrown away at once, at most: each costs its connection's read
/// buffer (hyper's, up to about 400 KiB), which the budget does not count: 16 of them
/// are about 6 MiB, and a burst of up to 16 refused uploads still reads its 503.
const DRAINS: usize = 16;

/// Request bytes in flight, all requests together (see the module docs).
pub struct BodyBudget {
    bytes: Semaphore,
    limit: usize,
    drains: Semaphore,
}

/// Bytes taken from a [`BodyBudget`], given back when dropped.
pub struct Held<'a> {
    permit: Option<SemaphorePermit<'a>>,
    bytes: usize,
}

impl BodyBudget {
    pub fn new(limit: usize) -> Self {
        let limit = limit.min(Semaphore::MAX_PERMITS);
        BodyBudget {
            bytes: Semaphore::new(limit),
            limit,
            drains: Semaphore::new(DRAINS),
        }
    }

    /// Leave to read a refused body to its end and throw it away (so its client reads the
    /// refusal), while fewer than `DRAINS` are; `None`: close the connection instead.
    pub fn drain(&self) -> Option<SemaphorePermit<'_>> {
        self.drains.try_acquire().ok()
    }

    /// The refusal (counted in `aegis_body_budget_refusals_total`).
    fn refused(&self) -> Error {
        metrics::get().body_budget_refusal();
        Error::OverBodyBudget { limit: self.limit }
    }

    /// The bytes free now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    /// Takes `n` bytes, or refuses (and counts the refusal) when fewer are free now.
    pub fn take(&self, n: usize) -> Result<Held<'_>, Error> {
        let mut held = Held {
            permit: None,
            bytes: 0,
        };
        self.grow(&mut held, n)?;
        Ok(held)
    }

    /// Takes `n` bytes, waiting at most `within` for them (in turn: while this waits, bytes
    /// given back go to it before later requests); then refuses as [`Self::take`] does.
    /// For a model verification, which holds the one slot while it waits, so at most one
    /// waits; sign bodies never wait.
    pub async fn take_within(&self, n: usize, within: Duration) -> Result<Held<'_>, Error> {
        let permits = u32::try_from(n).map_err(|_| self.refused())?;
        match tokio::time::timeout(within, self.bytes.acquire_many(permits)).await {
            Ok(Ok(permit)) => Ok(Held {
                permit: Some(permit),
                bytes: n,
            }),
            _ => Err(self.refused()),
        }
    }

    /// Takes `n` more bytes for `held` (a body read without a declared length).
    pub fn grow<'a>(&'a self, held: &mut Held<'a>, n: usize) -> Result<(), Error> {
        if n == 0 {
            return Ok(());
        }
        let permits = u32::try_from(n).map_err(|_| self.refused())?;
        let permit = self
            .bytes
            .try_acquire_many(permits)
            .map_err(|_| self.refused())?;
        match &mut held.permit {
            Some(p) => p.merge(permit),
            None => held.permit = Some(permit),
        }
        held.bytes += n;
        Ok(())
    }
}

impl Held<'_> {
    /// The bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_refused_when_not_free_and_given_back_when_dropped() {
        let budget = BodyBudget::new(100);
        let a = budget.take(60).unwrap();
        assert_eq!(a.bytes(), 60);
        let e = budget.take(41).err().expect("over the budget");
        assert_eq!((e.status().as_u16(), e.retry_after_secs()), (503, Some(1)));
        let mut b = budget.take(30).unwrap();
        budget.grow(&mut b, 10).unwrap();
        assert_eq!(b.bytes(), 40);
        assert!(budget.grow(&mut b, 1).is_err());
        drop(a);
        budget.grow(&mut b, 60).unwrap();
        assert!(budget.take(1).is_err());
        drop(b);
        assert_eq!(budget.take(100).unwrap().bytes(), 100);
        assert_eq!(budget.take(0).unwrap().bytes(), 0);
    }

    #[tokio::test]
    async fn a_waiting_take_is_served_before_later_requests_and_gives_up_in_time() {
        let budget = BodyBudget::new(100);
        let a = budget.take(60).unwrap();
        let short = Duration::from_millis(20);
        let e = budget
            .take_within(50, short)
            .await
            .err()
            .expect("not free in time");
        assert_eq!((e.status().as_u16(), e.retry_after_secs()), (503, Some(1)));
        let waiting = budget.take_within(50, Duration::from_secs(60));
        tokio::pin!(waiting);
        assert!(futures::poll!(&mut waiting).is_pending());
        drop(a);
        // The 60 bytes given back went to the waiter: a later request finds 50, not 100.
        assert!(budget.take(51).is_err());
        assert_eq!(waiting.await.unwrap().bytes(), 50);
        assert_eq!(budget.available(), 100);
    }
}
