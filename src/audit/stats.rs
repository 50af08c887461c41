//! Counters for a later metrics module: plain atomics, read with [`Counters::snapshot`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What the auditor has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Events written to every configured local sink (file line fsynced, spool file in place).
    pub written: u64,
    /// Events the HTTP endpoint acknowledged with a 2xx.
    pub delivered: u64,
    /// Events spooled and not yet delivered, including those an earlier process left
    /// (a gauge, recounted from the directory at every pass of the deliverer).
    pub pending: u64,
    /// Request-path events dropped because the queue stayed full for `enqueue_wait`, or
    /// the writer had stopped: verify_refused and refused events, and sign events when
    /// failing open (`fail_open`).
    pub dropped: u64,
    /// Signatures refused (not made) because the queue had no room for their events
    /// within `enqueue_wait` (or the writer had stopped), failing closed.
    pub refused_signs: u64,
    /// Events at least one local sink failed to write (I/O errors).
    pub write_errors: u64,
    /// Delivery attempts that failed (each is retried).
    pub delivery_failures: u64,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) written: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) pending: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) refused_signs: AtomicU64,
    pub(super) write_errors: AtomicU64,
    pub(super) delivery_failures: AtomicU64,
}

impl Counters {
    pub(super) fn snapshot(&self) -> AuditStats {
        AuditStats {
            written: self.written.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            pending: self.pending.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            refused_signs: self.refused_signs.load(Relaxed),
            write_errors: self.write_errors.load(Relaxed),
            delivery_failures: self.delivery_failures.load(Relaxed),
        }
    }

    /// Adds one; returns the new total.
    pub(super) fn bump(counter: &AtomicU64) -> u64 {
        counter.fetch_add(1, Relaxed) + 1
    }

    /// Adds `n`; returns the total before.
    pub(super) fn add(counter: &AtomicU64, n: usize) -> u64 {
        counter.fetch_add(n as u64, Relaxed)
    }

    pub(super) fn set_pending(&self, n: usize) {
        self.pending.store(n as u64, Relaxed);
    }

    /// One pending event fewer (never below zero: the gauge may lag a recount).
    pub(super) fn pending_done(&self) {
        let _ = self
            .pending
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
    }
}
