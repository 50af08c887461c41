//! The HTTP deliverer: a Tokio task that POSTs spooled events in order, deleting each
//! spool file only after a 2xx, and retries the oldest one with jittered backoff until the
//! endpoint takes it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use tokio::sync::watch;

use super::spool;
use super::stats::Counters;
use super::{AuditConfig, AuditError, Shared};
use crate::backoff::Backoff;

/// How often an idle deliverer looks at the spool anyway (events another process left).
const RESCAN: Duration = Duration::from_secs(30);
/// Most response body read (and thrown away) so the connection can be reused.
const MAX_RESPONSE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("the endpoint answered {0}")]
    Status(StatusCode),
    #[error("request failed: {0}")]
    Transport(reqwest::Error),
    #[error("cannot read spooled event: {0}")]
    Spool(io::Error),
    #[error("cannot read the bearer token file {}: {source}", path.display())]
    TokenFile { path: PathBuf, source: io::Error },
    #[error("the bearer token file {} is empty or holds characters not allowed in a header", .0.display())]
    BadToken(PathBuf),
}

/// What became of the oldest spooled event.
enum Attempt {
    Delivered,
    /// Already gone (delivered by another process) or set aside as damaged.
    Gone,
}

pub(super) struct Deliverer {
    client: reqwest::Client,
    endpoint: Url,
    token_file: Option<PathBuf>,
    dir: PathBuf,
    backoff: Backoff,
    shared: Arc<Shared>,
    /// Closed when the last `Auditor` is dropped.
    stop: watch::Receiver<()>,
}

impl Deliverer {
    pub(super) fn new(
        config: &AuditConfig,
        endpoint: Url,
        dir: PathBuf,
        shared: Arc<Shared>,
        stop: watch::Receiver<()>,
    ) -> Result<Self, AuditError> {
        let client = reqwest::Client::builder()
            .timeout(config.http_timeout)
            .connect_timeout(config.http_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("aegis-audit/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AuditError::Client(Arc::new(e)))?;
        Ok(Deliverer {
            client,
            endpoint,
            token_file: config.http_bearer_token_file.clone(),
            dir,
            backoff: Backoff::new(config.retry_initial, config.retry_max),
            shared,
            stop,
        })
    }

    pub(super) async fn run(mut self) {
        loop {
            let files = match blocking({
                let dir = self.dir.clone();
                move || spool::list(&dir)
            })
            .await
            {
                Ok(files) => files,
                Err(e) => {
                    tracing::warn!(error = %e, dir = %self.dir.display(), "cannot list the audit spool");
                    if !self.pause().await {
                        return;
                    }
                    continue;
                }
            };
            self.shared.stats.set_pending(files.len());
            self.shared.progress.notify_waiters();
            let keep_going = if files.is_empty() {
                self.idle().await
            } else {
                self.deliver_all(&files).await
            };
            if !keep_going {
                return;
            }
        }
    }

    /// Delivers `files` in order; false once the auditor is gone.
    async fn deliver_all(&mut self, files: &[PathBuf]) -> bool {
        for path in files {
            if !self.deliver(path).await {
                return false;
            }
        }
        true
    }

    /// Retries `path` until it is delivered or gone; false once the auditor is gone.
    async fn deliver(&mut self, path: &Path) -> bool {
        let mut failures = 0u32;
        loop {
            let outcome = self.attempt(path).await;
            self.shared.progress.notify_waiters();
            match outcome {
                Ok(attempt) => {
                    self.done(attempt, failures);
                    return true;
                }
                Err(e) => {
                    failures += 1;
                    Counters::bump(&self.shared.stats.delivery_failures);
                    let retry_in = self.backoff.next_pause();
                    tracing::warn!(
                        error = %e,
                        endpoint = %redacted(&self.endpoint),
                        attempt = failures,
                        pending = self.shared.stats.snapshot().pending,
                        retry_in_ms = retry_in.as_millis() as u64,
                        "audit event not delivered yet; it stays spooled"
                    );
                    if !self.sleep(retry_in).await {
                        return false;
                    }
                }
            }
        }
    }

    fn done(&mut self, attempt: Attempt, failures: u32) {
        self.backoff.reset();
        self.shared.stats.pending_done();
        if let Attempt::Delivered = attempt {
            Counters::bump(&self.shared.stats.delivered);
            if failures > 0 {
                tracing::info!(
                    after_failures = failures,
                    "audit endpoint accepts events again"
                );
            }
        }
    }

    async fn attempt(&self, path: &Path) -> Result<Attempt, DeliveryError> {
        let body = match tokio::fs::read(path).await {
            Ok(body) => body,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Attempt::Gone),
            Err(e) => return Err(DeliveryError::Spool(e)),
        };
        if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
            set_aside(path).await;
            return Ok(Attempt::Gone);
        }
        self.post(body).await?;
        match tokio::fs::remove_file(path).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                // Not lost, only delivered again later: receivers deduplicate by id.
                tracing::warn!(error = %e, file = %path.display(), "cannot remove a delivered audit event");
            }
            _ => {}
        }
        Ok(Attempt::Delivered)
    }

    async fn post(&self, body: Vec<u8>) -> Result<(), DeliveryError> {
        let mut request = self
            .client
            .post(self.endpoint.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(token) = self.authorization().await? {
            request = request.header(AUTHORIZATION, token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| DeliveryError::Transport(e.without_url()))?;
        let status = response.status();
        drain(response).await;
        if status.is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Status(status))
        }
    }

    /// `Bearer <token>`, the file read afresh so a rotated token is used at once.
    async fn authorization(&self) -> Result<Option<HeaderValue>, DeliveryError> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let text =
            tokio::fs::read_to_string(path)
                .await
                .map_err(|source| DeliveryError::TokenFile {
                    path: path.clone(),
                    source,
                })?;
        let token = text.trim();
        let bad = || DeliveryError::BadToken(path.clone());
        if token.is_empty() {
            return Err(bad());
        }
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| bad())?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    /// Waits for new spool files, the periodic rescan, or the end; false at the end.
    async fn idle(&mut self) -> bool {
        tokio::select! {
            _ = self.shared.spooled.notified() => true,
            _ = tokio::time::sleep(RESCAN) => true,
            _ = self.stop.changed() => false,
        }
    }

    async fn pause(&mut self) -> bool {
        let wait = self.backoff.next_pause();
        self.sleep(wait).await
    }

    async fn sleep(&mut self, wait: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = self.stop.changed() => false,
        }
    }
}

/// Reads (a bounded part of) the response so the connection can be reused.
async fn drain(mut response: reqwest::Response) {
    let mut left = MAX_RESPONSE;
    while let Ok(Some(chunk)) = response.chunk().await {
        match left.checked_sub(chunk.len()) {
            Some(rest) => left = rest,
            None => break,
        }
    }
}

async fn set_aside(path: &Path) {
    let path = path.to_owned();
    match blocking(move || spool::quarantine(&path)).await {
        Ok(bad) => tracing::error!(
            file = %bad.display(),
            "a spooled audit event is not valid JSON; set aside, not delivered"
        ),
        Err(e) => tracing::error!(error = %e, "cannot set aside a damaged spooled audit event"),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// The endpoint without query or fragment, for logs.
fn redacted(url: &Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_endpoint_drops_query_and_fragment() {
        let url = Url::parse("https://audit.example:8443/in?key=s3cr3t#x").unwrap();
        assert_eq!(redacted(&url), "https://audit.example:8443/in");
    }
}
