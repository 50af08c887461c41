//! The writer thread: takes queued events in batches and writes each batch to the local
//! sinks with one fsync per sink (group commit), then answers the waiting callers.
//!
//! It is a plain thread, not a Tokio task, because every step is blocking file I/O. It
//! stops when the last [`Auditor`](super::Auditor) is dropped, after writing what was
//! queued.

use std::sync::Arc;
use std::thread;

use tokio::sync::{mpsc, oneshot};

use super::file::AuditFile;
use super::spool::Spool;
use super::stats::Counters;
use super::{AuditError, Shared};

/// Most events written with one fsync.
const MAX_BATCH: usize = 512;

pub(super) type Ack = oneshot::Sender<Result<(), AuditError>>;

pub(super) enum Job {
    Event(Entry),
    /// Answered once every job queued before it is written.
    Barrier(oneshot::Sender<()>),
}

pub(super) struct Entry {
    pub(super) id: String,
    pub(super) json: Vec<u8>,
    /// Present for `record_durable`: answered after the fsyncs.
    pub(super) ack: Option<Ack>,
}

pub(super) struct Writer {
    pub(super) file: Option<AuditFile>,
    pub(super) spool: Option<Spool>,
    pub(super) shared: Arc<Shared>,
    /// Whether the last batch failed, so failures and recovery are logged once each.
    pub(super) failing: bool,
}

impl Writer {
    pub(super) fn spawn(self, jobs: mpsc::Receiver<Job>) -> std::io::Result<()> {
        thread::Builder::new()
            .name("aegis-audit-writer".into())
            .spawn(move || self.run(jobs))
            .map(drop)
    }

    fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(first) = jobs.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
    }

    fn commit(&mut self, batch: Vec<Job>) {
        let mut entries = Vec::with_capacity(batch.len());
        let mut barriers = Vec::new();
        for job in batch {
            match job {
                Job::Event(entry) => entries.push(entry),
                Job::Barrier(done) => barriers.push(done),
            }
        }
        let appended = self.append(&entries);
        let spooled = self.spool_each(&entries);
        let results: Vec<_> = spooled
            .into_iter()
            .map(|s| appended.clone().and(s))
            .collect();
        self.note(&results);
        for (entry, result) in entries.into_iter().zip(results) {
            if let Some(ack) = entry.ack {
                let _ = ack.send(result);
            }
        }
        for done in barriers {
            let _ = done.send(());
        }
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), AuditError> {
        match &mut self.file {
            Some(file) if !entries.is_empty() => file
                .append(entries.iter().map(|e| e.json.as_slice()))
                .map_err(|e| AuditError::file(file.path(), e)),
            _ => Ok(()),
        }
    }

    /// One spool file per event, then one directory fsync for the batch.
    fn spool_each(&mut self, entries: &[Entry]) -> Vec<Result<(), AuditError>> {
        let Some(spool) = &mut self.spool else {
            return vec![Ok(()); entries.len()];
        };
        let dir = spool.dir().to_owned();
        let mut results: Vec<_> = entries
            .iter()
            .map(|e| {
                spool
                    .put(&e.id, &e.json)
                    .map_err(|err| AuditError::spool(&dir, err))
            })
            .collect();
        let written = results.iter().filter(|r| r.is_ok()).count();
        if written == 0 {
            return results;
        }
        if let Err(e) = spool.sync() {
            let err = AuditError::spool(&dir, e);
            for r in results.iter_mut().filter(|r| r.is_ok()) {
                *r = Err(err.clone());
            }
        }
        // Even unsynced, the files are in place and deliverable.
        Counters::add(&self.shared.stats.pending, written);
        self.shared.spooled.notify_one();
        results
    }

    fn note(&mut self, results: &[Result<(), AuditError>]) {
        let stats = &self.shared.stats;
        let failed = results.iter().filter(|r| r.is_err()).count();
        Counters::add(&stats.written, results.len() - failed);
        Counters::add(&stats.write_errors, failed);
        match results.iter().find_map(|r| r.as_ref().err()) {
            Some(e) if !self.failing => {
                tracing::error!(error = %e, events = failed, "audit events could not be written");
                self.failing = true;
            }
            None if self.failing && !results.is_empty() => {
                tracing::info!("audit events are written again");
                self.failing = false;
            }
            _ => {}
        }
    }
}
