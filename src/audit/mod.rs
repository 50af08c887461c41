//! The audit trail: one JSON event per rotate, retire, sign and refused verify, written
//! to an append-only local file and/or delivered to an HTTP(S) endpoint.
//!
//! # Sinks
//!
//! - **File** (`AEGIS_AUDIT_FILE`): opened with `O_APPEND` (created mode 0600), one JSON
//!   object per line. A line torn by a crash is closed with a newline before the next
//!   write, so every later event stays parseable.
//! - **HTTP** (`AEGIS_AUDIT_URL`, needs `AEGIS_AUDIT_SPOOL_DIR`; optional
//!   `AEGIS_AUDIT_TOKEN_FILE`): every event is first written to the spool directory as its
//!   own file (temporary file, fsync, rename, directory fsync; mode 0600). A background
//!   task POSTs the spooled events oldest first (`Content-Type: application/json`,
//!   `Authorization: Bearer <token>` with the token file re-read for each request) and
//!   deletes a file only after a 2xx. Any other answer (redirects are not followed), a
//!   timeout or a refused connection is retried with jittered backoff (200 ms doubling to
//!   30 s by default), forever: an event is never dropped from the spool. At start the
//!   deliverer sends whatever an earlier process left there, and an idle deliverer looks
//!   again every 30 s, so a sidecar sharing the spool directory with short-lived CLI
//!   commands sends what they could not.
//!
//! # Guarantees
//!
//! - **When [`Auditor::record_durable`] returns `Ok`**, the event is on disk in every
//!   configured local sink: its line in the audit file is fsynced, and its spool file is
//!   fsynced and renamed into place with the directory fsynced. A crash after that point
//!   loses nothing. It does *not* mean the HTTP endpoint has it; [`Auditor::flush`] waits
//!   for that, bounded. Rotation jobs use `record_durable`, then `flush` before exiting.
//! - **HTTP delivery is at least once.** A file is deleted only after a 2xx, so if the
//!   2xx is lost (timeout after the receiver committed, crash between the answer and the
//!   delete, two processes sharing a spool), the event is sent again. Receivers
//!   deduplicate by the event's `id` (a UUID v4). Order is preserved: the oldest spooled
//!   event is retried until accepted before the next is sent.
//! - **Group commit on the hot path.** All events go through one bounded queue
//!   (`AEGIS_AUDIT_QUEUE_SIZE`) to a writer thread that takes up to 512 at a time and
//!   writes them with one fsync per sink. Nothing on the request path waits for the disk.
//!   With an HTTP sink each event also costs its own spool file (write, fsync, rename);
//!   the directory fsync is shared by the batch.
//! - **No signature without its event.** A sign first takes room in the queue for one
//!   event per item with [`Auditor::reserve`], waiting at most `enqueue_wait`
//!   (`AEGIS_AUDIT_QUEUE_TIMEOUT`, 100 ms by default), *before* Vault is asked; the events
//!   (with Vault's outcome, success or refusal) are then queued into that room without
//!   waiting and cannot be dropped. If there is no room in time (a stalled disk or pipe),
//!   the sign is refused and counted ([`AuditStats::refused_signs`],
//!   `aegis_audit_refused_signs_total`), or, with `fail_open` (`AEGIS_AUDIT_FAIL_OPEN`),
//!   made anyway with its events queued if room appears and otherwise dropped and counted
//!   ([`AuditStats::dropped`], `aegis_audit_events_dropped_total`). Other request-path
//!   events (verify_refused, refused) go through [`Auditor::record`], which drops them
//!   (counted, logged) after `enqueue_wait`. A lifecycle event (rotate, retire) is never
//!   dropped: `record` waits for room as long as it takes.
//! - Events never hold a signed input or a token: [`AuditEvent`] has fixed, typed fields
//!   only; an input can only be given to [`AuditEvent::input`], which keeps its SHA-256.
//!
//! Events given to [`Auditor::record`] and still queued when the process exits without
//! [`Auditor::flush`] are lost (`record_durable` has no such window); events spooled but
//! not delivered are sent by the next process started on the same spool directory.

mod deliver;
mod event;
mod file;
mod spool;
mod stats;
mod writer;

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;

pub use crate::config::AuditConfig;
pub use event::{Actor, AuditEvent, EventKind, InputDigest, Outcome};
pub use stats::AuditStats;

use crate::telemetry::metrics::{self, AuditDrop};
use deliver::Deliverer;
use stats::Counters;
use writer::{Entry, Job, Writer};

/// Why an event could not be recorded, or the auditor could not start.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("audit configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error("audit file {}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("audit spool {}: {source}", path.display())]
    Spool {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("cannot build the audit HTTP client: {0}")]
    Client(#[source] Arc<reqwest::Error>),
    #[error("cannot start the audit writer thread: {0}")]
    Thread(#[source] Arc<io::Error>),
    #[error("the audit HTTP sink needs a Tokio runtime")]
    NoRuntime,
    #[error("the audit writer has stopped")]
    Stopped,
    #[error("the audit queue had no room within {} ms", .waited.as_millis())]
    QueueFull { waited: Duration },
}

impl AuditError {
    fn file(path: &Path, e: io::Error) -> Self {
        AuditError::File {
            path: path.to_owned(),
            source: Arc::new(e),
        }
    }

    fn spool(path: &Path, e: io::Error) -> Self {
        AuditError::Spool {
            path: path.to_owned(),
            source: Arc::new(e),
        }
    }
}

/// State shared by the auditor handles, the writer thread and the deliverer task.
#[derive(Debug, Default)]
struct Shared {
    stats: Counters,
    /// Writer to deliverer: new events are spooled.
    spooled: Notify,
    /// Deliverer to `flush`: an attempt finished or the spool was recounted.
    progress: Notify,
}

/// Records audit events. Cheap to clone; the background writer and deliverer stop when
/// the last clone is dropped (the writer after writing what was queued).
#[derive(Debug, Clone)]
pub struct Auditor {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    jobs: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    spool_dir: Option<PathBuf>,
    enqueue_wait: Duration,
    fail_open: bool,
    /// Dropped with the last handle: tells the deliverer to stop.
    _stop: watch::Sender<()>,
}

impl Auditor {
    /// An auditor that records nothing (no sink configured).
    pub fn disabled() -> Self {
        Auditor { inner: None }
    }

    /// Opens the sinks of `config` and starts the writer thread and, with an endpoint,
    /// the deliverer task (which first sends what an earlier process left in the spool).
    /// Must be called within a Tokio runtime when `http_url` is set. A configuration
    /// without sinks gives [`Auditor::disabled`].
    pub fn start(config: &AuditConfig) -> Result<Self, AuditError> {
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(AuditError::Config(problems));
        }
        if !config.is_enabled() {
            return Ok(Auditor::disabled());
        }
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = watch::channel(());
        let writer = open_sinks(config, &shared)?;
        let spool_dir = writer.spool.as_ref().map(|s| s.dir().to_owned());
        if let (Some(url), Some(dir)) = (&config.http_url, &spool_dir) {
            spawn_deliverer(config, url, dir, &shared, stopped)?;
        }
        let (jobs, queue) = mpsc::channel(config.queue_capacity);
        writer
            .spawn(queue)
            .map_err(|e| AuditError::Thread(Arc::new(e)))?;
        tracing::info!(
            file = ?config.file,
            spool = ?spool_dir,
            http = config.http_url.is_some(),
            pending = spool_dir.as_deref().map_or(0, spool::count),
            "audit trail enabled"
        );
        Ok(Auditor {
            inner: Some(Arc::new(Inner {
                jobs,
                shared,
                spool_dir,
                enqueue_wait: config.enqueue_wait,
                fail_open: config.fail_open,
                _stop: stop,
            })),
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Queues `event` for the background writer without waiting for the disk: for the
    /// request path (verify_refused, refused). A full queue is waited on for at most
    /// `enqueue_wait`, then the event is dropped, counted and logged; lifecycle events
    /// (rotate, retire) wait as long as it takes and are never dropped. Signs use
    /// [`reserve`](Self::reserve) instead.
    pub async fn record(&self, event: AuditEvent) {
        let Some(inner) = &self.inner else { return };
        let kind = event.kind();
        let job = Job::Event(entry(event, None));
        let queued = if kind.is_lifecycle() {
            inner
                .jobs
                .send(job)
                .await
                .map_err(|_| AuditDrop::WriterStopped)
        } else {
            inner
                .jobs
                .send_timeout(job, inner.enqueue_wait)
                .await
                .map_err(|e| match e {
                    mpsc::error::SendTimeoutError::Timeout(_) => AuditDrop::QueueFull,
                    mpsc::error::SendTimeoutError::Closed(_) => AuditDrop::WriterStopped,
                })
        };
        if let Err(reason) = queued {
            inner.dropped(kind, reason);
        }
    }

    /// Takes room in the queue for `events` events (one per item of a sign), waiting at
    /// most `enqueue_wait`; call it before Vault is asked. Events recorded through the
    /// [`Reservation`] are then queued without waiting and never dropped. Without room in
    /// time the sign is refused with the error (counted, logged), unless the auditor fails
    /// open: then the reservation holds no room, and its events are queued only if there
    /// is room when they are recorded (dropped and counted otherwise).
    pub async fn reserve(&self, events: usize) -> Result<Reservation<'_>, AuditError> {
        let Some(inner) = &self.inner else {
            return Ok(Reservation::default());
        };
        let permits = match inner.reserve(events).await {
            Ok(permits) => Some(permits),
            Err(_) if inner.fail_open => None,
            Err(e) => {
                inner.refused(events, &e);
                return Err(e);
            }
        };
        Ok(Reservation {
            inner: Some(inner),
            permits,
        })
    }

    /// Records `event` and returns once it is durably on disk in every local sink (see the
    /// module docs). For lifecycle commands. If this future is dropped early, the event is
    /// still written.
    pub async fn record_durable(&self, event: AuditEvent) -> Result<(), AuditError> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let (ack, written) = oneshot::channel();
        inner
            .jobs
            .send(Job::Event(entry(event, Some(ack))))
            .await
            .map_err(|_| AuditError::Stopped)?;
        written.await.map_err(|_| AuditError::Stopped)?
    }

    /// Waits, at most `deadline`, until everything queued is written and the spool is
    /// delivered. Returns how many events are not yet at their destination: still queued
    /// or spooled. Spooled events are not lost; the next process delivers them.
    pub async fn flush(&self, deadline: Duration) -> usize {
        let Some(inner) = &self.inner else { return 0 };
        let until = Instant::now() + deadline;
        let drained = tokio::time::timeout_at(until, inner.drain_queue()).await;
        let queued = if drained.is_ok() { 0 } else { inner.queued() };
        queued + inner.await_delivery(until).await
    }

    /// Counters for metrics.
    pub fn stats(&self) -> AuditStats {
        self.inner
            .as_ref()
            .map_or_else(AuditStats::default, |inner| inner.shared.stats.snapshot())
    }
}

/// Room in the audit queue for the events of one sign, taken by [`Auditor::reserve`]
/// before Vault is asked. Room not used is given back when it is dropped.
#[derive(Default)]
pub struct Reservation<'a> {
    /// None for a disabled auditor.
    inner: Option<&'a Inner>,
    /// None when failing open without room.
    permits: Option<mpsc::PermitIterator<'a, Job>>,
}

impl Reservation<'_> {
    /// Queues `event` into the reserved room, without waiting. Past the reserved room (or
    /// failing open without any), the event is queued if there is room now, else dropped
    /// and counted.
    pub fn record(&mut self, event: AuditEvent) {
        let Some(inner) = self.inner else { return };
        let kind = event.kind();
        let job = Job::Event(entry(event, None));
        match self.permits.as_mut().and_then(Iterator::next) {
            Some(permit) => permit.send(job),
            None => {
                if let Err(e) = inner.jobs.try_send(job) {
                    let reason = match e {
                        TrySendError::Full(_) => AuditDrop::QueueFull,
                        TrySendError::Closed(_) => AuditDrop::WriterStopped,
                    };
                    inner.dropped(kind, reason);
                }
            }
        }
    }
}

/// Logged at the first time and then at every 1024th, so a disk stall cannot flood logs.
fn worth_logging(total: u64) -> bool {
    total == 1 || total.is_multiple_of(1024)
}

impl Inner {
    fn dropped(&self, kind: EventKind, reason: AuditDrop) {
        let total = Counters::bump(&self.shared.stats.dropped);
        metrics::get().audit_dropped(reason);
        if worth_logging(total) {
            tracing::warn!(
                event = %kind,
                reason = reason.as_str(),
                dropped_total = total,
                "audit queue full or writer stopped: audit event dropped"
            );
        }
    }

    /// Counts `signs` signatures refused for want of room; logged the first time and then
    /// about every 1024th.
    fn refused(&self, signs: usize, err: &AuditError) {
        let before = Counters::add(&self.shared.stats.refused_signs, signs);
        metrics::get().audit_refused_signs(signs as u64);
        let after = before + signs as u64;
        if before == 0 || before / 1024 != after / 1024 {
            tracing::error!(
                error = %err,
                refused_signs_total = after,
                "audit trail has no room: signs refused before Vault was asked (AEGIS_AUDIT_FAIL_OPEN=false)"
            );
        }
    }

    /// Room for `events` events within `enqueue_wait`.
    async fn reserve(&self, events: usize) -> Result<mpsc::PermitIterator<'_, Job>, AuditError> {
        let full = AuditError::QueueFull {
            waited: self.enqueue_wait,
        };
        if events > self.jobs.max_capacity() {
            return Err(full);
        }
        match tokio::time::timeout(self.enqueue_wait, self.jobs.reserve_many(events)).await {
            Ok(Ok(permits)) => Ok(permits),
            Ok(Err(_)) => Err(AuditError::Stopped),
            Err(_) => Err(full),
        }
    }

    /// Returns once every event queued before the call is written.
    async fn drain_queue(&self) {
        let (done, drained) = oneshot::channel();
        if self.jobs.send(Job::Barrier(done)).await.is_ok() {
            let _ = drained.await;
        }
    }

    fn queued(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }

    /// Waits until the spool is empty or `until`; returns how many events are spooled.
    async fn await_delivery(&self, until: Instant) -> usize {
        let Some(dir) = &self.spool_dir else { return 0 };
        loop {
            let progress = self.shared.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            // The gauge is cheap; the directory has the last word.
            if self.shared.stats.snapshot().pending == 0 || Instant::now() >= until {
                let left = count_spooled(dir).await;
                if left == 0 || Instant::now() >= until {
                    return left;
                }
            }
            tokio::select! {
                _ = progress => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }
}

/// The queued form of `event`: its JSON, and its id (moved, not copied).
fn entry(event: AuditEvent, ack: Option<writer::Ack>) -> Entry {
    let json = event.to_json();
    Entry {
        id: event.into_id(),
        json,
        ack,
    }
}

fn open_sinks(config: &AuditConfig, shared: &Arc<Shared>) -> Result<Writer, AuditError> {
    let file = config
        .file
        .as_deref()
        .map(|path| file::AuditFile::open(path).map_err(|e| AuditError::file(path, e)))
        .transpose()?;
    let spool = config
        .spool_dir
        .as_deref()
        .map(|dir| spool::Spool::open(dir).map_err(|e| AuditError::spool(dir, e)))
        .transpose()?;
    Ok(Writer {
        file,
        spool,
        shared: Arc::clone(shared),
        failing: false,
    })
}

fn spawn_deliverer(
    config: &AuditConfig,
    url: &str,
    dir: &Path,
    shared: &Arc<Shared>,
    stop: watch::Receiver<()>,
) -> Result<(), AuditError> {
    // validate() has checked the URL.
    let endpoint = reqwest::Url::parse(url).map_err(|e| AuditError::Config(vec![e.to_string()]))?;
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| AuditError::NoRuntime)?;
    let deliverer = Deliverer::new(config, endpoint, dir.to_owned(), Arc::clone(shared), stop)?;
    runtime.spawn(deliverer.run());
    Ok(())
}

async fn count_spooled(dir: &Path) -> usize {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || spool::count(&dir))
        .await
        .unwrap_or(0)
}

/// Opens `path` with `options`, creating it with mode 0600 where modes exist.
fn private_file(options: &mut OpenOptions, path: &Path) -> io::Result<File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.create(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    fn sign() -> AuditEvent {
        AuditEvent::new(
            EventKind::Sign,
            Actor::caller("uid:1000"),
            "transit",
            "k",
            Outcome::Ok,
        )
        .versions([1])
        .input(b"payload")
    }

    fn rotate() -> AuditEvent {
        AuditEvent::new(
            EventKind::Rotate,
            Actor::token("approle", "", "acc"),
            "transit",
            "k",
            Outcome::Ok,
        )
        .versions([1, 2])
    }

    /// An auditor whose queue the test holds instead of a writer thread.
    fn queue_only(capacity: usize) -> (Auditor, mpsc::Receiver<Job>) {
        queue_only_failing(capacity, false)
    }

    fn queue_only_failing(capacity: usize, fail_open: bool) -> (Auditor, mpsc::Receiver<Job>) {
        let (jobs, queue) = mpsc::channel(capacity);
        let inner = Inner {
            jobs,
            shared: Arc::default(),
            spool_dir: None,
            enqueue_wait: Duration::from_millis(20),
            fail_open,
            _stop: watch::channel(()).0,
        };
        let auditor = Auditor {
            inner: Some(Arc::new(inner)),
        };
        (auditor, queue)
    }

    #[tokio::test]
    async fn full_queue_drops_sign_events_but_not_lifecycle_events() {
        let (auditor, mut queue) = queue_only(1);
        auditor.record(sign()).await;
        auditor.record(sign()).await;
        assert_eq!(auditor.stats().dropped, 1);

        let waiting = tokio::spawn({
            let auditor = auditor.clone();
            async move { auditor.record(rotate()).await }
        });
        let mut waiting = std::pin::pin!(waiting);
        // Still waiting for room well past enqueue_wait.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), waiting.as_mut())
                .await
                .is_err()
        );
        assert!(matches!(queue.recv().await, Some(Job::Event(_))));
        tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
        assert_eq!(auditor.stats().dropped, 1);
        assert!(matches!(queue.try_recv(), Ok(Job::Event(e)) if e.json.starts_with(b"{")));
    }

    #[tokio::test]
    async fn a_sign_gets_room_for_all_its_events_or_is_refused() {
        let (auditor, mut queue) = queue_only(3);
        let mut room = auditor.reserve(2).await.unwrap();
        let err = auditor.reserve(2).await.err().unwrap();
        assert_eq!(err.to_string(), "the audit queue had no room within 20 ms");
        assert!(matches!(
            auditor.reserve(4).await,
            Err(AuditError::QueueFull { .. })
        ));
        room.record(sign());
        room.record(sign());
        drop(room);
        let stats = auditor.stats();
        assert_eq!((stats.refused_signs, stats.dropped), (6, 0));
        // Room not used is given back when the reservation goes.
        let unused = auditor.reserve(1).await.unwrap();
        drop(unused);
        assert!(matches!(queue.try_recv(), Ok(Job::Event(_))));
        assert!(matches!(queue.try_recv(), Ok(Job::Event(_))));
        assert!(queue.try_recv().is_err());
        assert!(auditor.reserve(3).await.is_ok());
    }

    #[tokio::test]
    async fn failing_open_signs_without_room_and_counts_what_it_drops() {
        let (auditor, mut queue) = queue_only_failing(1, true);
        let mut first = auditor.reserve(1).await.unwrap();
        let mut second = auditor.reserve(1).await.unwrap();
        second.record(sign());
        first.record(sign());
        let stats = auditor.stats();
        assert_eq!((stats.refused_signs, stats.dropped), (0, 1));
        assert!(matches!(queue.try_recv(), Ok(Job::Event(_))));
        second.record(sign());
        assert_eq!(auditor.stats().dropped, 1);
    }

    #[tokio::test]
    async fn stopped_writer_is_reported_to_durable_callers() {
        let (auditor, queue) = queue_only(4);
        drop(queue);
        assert!(matches!(
            auditor.record_durable(rotate()).await,
            Err(AuditError::Stopped)
        ));
        auditor.record(sign()).await;
        assert_eq!(auditor.stats().dropped, 1);
    }

    #[tokio::test]
    async fn disabled_auditor_accepts_everything_and_holds_nothing() {
        let auditor = Auditor::start(&AuditConfig::default()).unwrap();
        assert!(!auditor.is_enabled());
        auditor.record(sign()).await;
        auditor.record_durable(rotate()).await.unwrap();
        assert_eq!(auditor.flush(WAIT).await, 0);
        assert_eq!(auditor.stats(), AuditStats::default());
    }

    #[tokio::test]
    async fn invalid_configuration_is_refused_at_start() {
        let config = AuditConfig {
            http_url: Some("https://audit.example/".into()),
            ..AuditConfig::default()
        };
        let err = Auditor::start(&config).unwrap_err();
        assert!(err.to_string().contains("AEGIS_AUDIT_SPOOL_DIR"), "{err}");
    }

    #[tokio::test]
    async fn durable_record_is_on_disk_when_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let auditor = Auditor::start(&AuditConfig {
            file: Some(path.clone()),
            ..AuditConfig::default()
        })
        .unwrap();
        let event = rotate();
        let id = event.id().to_owned();
        auditor.record_durable(event).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with('\n') && text.contains(&id));
        auditor.record(sign()).await;
        assert_eq!(auditor.flush(WAIT).await, 0);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
        assert_eq!(auditor.stats().written, 2);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn write_failures_reach_durable_callers_and_are_counted() {
        let auditor = Auditor::start(&AuditConfig {
            file: Some("/dev/full".into()),
            ..AuditConfig::default()
        })
        .unwrap();
        let err = auditor.record_durable(rotate()).await.unwrap_err();
        assert!(matches!(err, AuditError::File { .. }), "{err}");
        auditor.record(sign()).await;
        auditor.flush(WAIT).await;
        let stats = auditor.stats();
        assert_eq!((stats.written, stats.write_errors), (0, 2));
    }
}
