//! The only code that talks to Vault.
//!
//! One pooled `reqwest` client (rustls, HTTP/2 when Vault offers it) carries all Vault
//! traffic. Every call goes through `VaultClient::execute`, which owns the rules that
//! keep the sidecar working against a real cluster:
//! - **HA:** calls go to one node, the home (`nodes`). With several addresses it is a
//!   standby, drawn per sidecar (`discover`: `sys/health` of every node at start and when
//!   the home fails, never periodically), else the active node; OpenBao 2.5+ standbys
//!   answer reads, Transit sign/verify and LISTs themselves and forward writes (login,
//!   renewal) to the active node. A standby's redirect moves calls to the active node; a
//!   connection failure, a sealed node (503) or a node that lost its leader moves to a new
//!   home or the next configured address. After each full round of nodes a call pauses
//!   (100 ms, doubling up to 400 ms), so one waiting out an election uses the new leader
//!   soon after it wins. Standby reads are eventually consistent (below).
//! - **Rate limits:** a 429 fails the call at once (a caller gets 429 with `Retry-After`);
//!   the client then asks background loops to hold back (`pace`).
//! - **Retries:** reads (and Transit verify, which changes nothing) are retried on any
//!   transport failure; sign is retried only when the request provably never reached a
//!   Vault that acted on it (connect failed, redirect, sealed or non-active node).
//! - **Timeouts:** connect and per-attempt bounds from the HTTP client, and a total bound
//!   over all attempts of one call.
//! - **Credential:** the token comes from `vault::auth`, which logs in, renews and logs in
//!   again; a 403 on a request leads to one check of the token, one re-login if it was
//!   revoked, and one retry (`VaultClient::with_relogin`).
//!
//! **Consistency.** What a standby answers is eventually consistent: right after a write
//! on the active node (a rotation, a raised `min_decryption_version`), a standby may answer
//! from the previous state for the raft replication delay (milliseconds on a healthy
//! cluster). That is safe here: a sign answer naming a version the cache does not know
//! makes the keyset refresh wait for it (`keys`), a stale refresh is followed by the next
//! one, and a revocation is enforced by Vault itself at sign (the minimums are raised on
//! the active node, and a standby's Transit policy cache is invalidated as it applies the
//! write). Lifecycle jobs, which write and read back at once, go to the active node
//! (`VaultConfig::prefer_standby` off).
//!
//! Logins and renewals are sent as raw JSON through `send_answer` (so Vault's `Retry-After` is
//! seen); vaultrs models the token lookup and unwrap; Transit calls on the request path are
//! sent as raw JSON so that every Transit parameter passes through unchanged. This module
//! never sees a caller's token.

mod auth;
mod discover;
mod kv;
mod nodes;
mod pace;
mod tls;
mod transit;

use std::future::Future;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::{debug, warn, Instrument as _};

use crate::backoff::Backoff;
use crate::config::{ConfigErrors, Secret, VaultConfig};
use crate::telemetry::{self, metrics, metrics::VaultEndpoint};

pub use auth::{AuthStatus, TokenInfo};
pub use kv::{CasWrite, KvEntry, KvListing};
pub use transit::TransitKeyInfo;

/// A failed Vault call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VaultError {
    /// Vault answered with an error status and its `errors` list.
    #[error("Vault answered {status}: {}", status_text(*.status, .errors))]
    Status { status: u16, errors: Vec<String> },
    /// Vault answered 429 (a rate-limit quota). `retry_after` is how long to wait: Vault's
    /// `Retry-After` as `send` read it, raised by `execute` to the client's pace (`pace`).
    #[error("Vault answered 429: {}", status_text(429, .errors))]
    RateLimited {
        errors: Vec<String>,
        retry_after: Option<Duration>,
    },
    /// No answer in time, connection refused or reset: Vault may be down. `sent` is false
    /// when the request provably never left (the connection was never established).
    #[error("{message}")]
    Unreachable { message: String, sent: bool },
    /// A standby pointed at the active node (handled inside `VaultClient::execute`).
    #[error("redirected to {0}")]
    Redirect(String),
    /// The sidecar holds no accepted credential right now (login failing or pending).
    #[error("not authenticated to Vault: {0}")]
    Unauthenticated(String),
    /// Vault answered something that is not the JSON we expect.
    #[error("cannot decode Vault's answer: {0}")]
    Decode(String),
}

/// Vault wraps some messages as `1 error occurred:\n\t* msg\n\n`; keep the message.
pub fn clean_message(msg: &str) -> String {
    let trimmed = msg.trim();
    match trimmed.strip_prefix("1 error occurred:") {
        Some(rest) => rest.trim().trim_start_matches('*').trim().to_string(),
        None => trimmed.to_string(),
    }
}

/// Vault's messages for a log line or a readiness reason, on one line; a 404 without a
/// message (Transit's answer for a missing key) says so.
fn status_text(status: u16, errors: &[String]) -> String {
    let text: Vec<String> = errors.iter().map(|e| clean_message(e)).collect();
    match (status, text.is_empty()) {
        (404, true) => "not found".into(),
        (_, true) => "no message".into(),
        _ => text.join("; ").replace(['\n', '\t'], " "),
    }
}

impl VaultError {
    /// Says which call failed: Vault's answer becomes one message, `what: <Vault's
    /// messages on one line>`, with the same status. Other failures are returned as they are.
    pub fn in_context(self, what: impl std::fmt::Display) -> Self {
        let context =
            |status, errors: &[String]| vec![format!("{what}: {}", status_text(status, errors))];
        match self {
            VaultError::Status { status, errors } => VaultError::Status {
                status,
                errors: context(status, &errors),
            },
            VaultError::RateLimited {
                errors,
                retry_after,
            } => VaultError::RateLimited {
                errors: context(429, &errors),
                retry_after,
            },
            other => other,
        }
    }

    /// Vault's answer with an error status (429 with its `Retry-After`, if any).
    fn answered(status: u16, errors: Vec<String>, retry_after: Option<Duration>) -> Self {
        match status {
            429 => VaultError::RateLimited {
                errors,
                retry_after,
            },
            _ => VaultError::Status { status, errors },
        }
    }

    /// A write OpenBao refused because a concurrent write to the same entry won (its storage
    /// transaction, or Transit's key archive, changed underneath). Whether any part of the
    /// write was applied is unknown, so only callers that re-read and converge retry it.
    pub fn is_write_conflict(&self) -> bool {
        matches!(self, VaultError::Status { status: 500, errors } if errors.iter().any(|e| write_conflict(e)))
    }

    /// True when Vault itself said the thing does not exist (404).
    pub fn is_not_found(&self) -> bool {
        matches!(self, VaultError::Status { status: 404, .. })
    }

    fn unreachable(message: impl Into<String>) -> Self {
        VaultError::Unreachable {
            message: message.into(),
            sent: true,
        }
    }
}

/// Whether a call may be sent again after a failure that left its fate unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Reads and verify: sending twice changes nothing.
    Idempotent,
    /// Sign (and writes): only when the request provably was not acted on.
    IfNotSent,
}

/// Which token a call carries.
#[derive(Clone)]
enum TokenUse {
    /// The sidecar's current token (403 triggers the re-login path).
    Current,
    /// None: login endpoints.
    Anonymous,
    /// A specific token (checking a candidate, unwrapping).
    Given(Secret),
}

/// Where one attempt goes and with what token.
struct Target {
    addr: String,
    token: Option<Secret>,
}

/// A request body for Vault: JSON to encode, or JSON text already encoded (a caller's
/// body forwarded as received, or a batch built from callers' texts) sent as it is.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    Json(&'a Value),
    Raw(&'a hyper::body::Bytes),
}

/// The Vault client shared by the whole process.
pub struct VaultClient {
    http: reqwest::Client,
    nodes: nodes::Nodes,
    /// The home search (`discover`), when there are several nodes and standbys are preferred.
    discovery: Option<discover::Discovery>,
    /// Until when Vault asked to hold back (`pace`).
    pace: pace::Pace,
    namespace: Option<String>,
    total_timeout: Duration,
    auth: auth::Auth,
    /// HTTP version of the last answer (1: HTTP/1.x, 2: HTTP/2), for diagnostics.
    last_version: std::sync::atomic::AtomicU8,
}

impl VaultClient {
    /// Builds the client; TLS material is read here, so bad files are configuration errors.
    pub fn new(cfg: &VaultConfig) -> Result<Self, ConfigErrors> {
        let tls = tls::client_config(&cfg.tls).map_err(ConfigErrors)?;
        if cfg.tls.skip_verify {
            warn!("VAULT_SKIP_VERIFY is set: Vault's TLS certificate is NOT verified; anyone on the path can impersonate Vault");
        }
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(cfg.timeout)
            .connect_timeout(cfg.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            // Said, not assumed: a request (or a batch) leaves in one write, at once.
            .tcp_nodelay(true)
            // Standby redirects are followed by `execute`, which knows the cluster's nodes.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("aegis/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigErrors(vec![format!("cannot build the HTTP client: {e}")]))?;
        let discovery = (cfg.prefer_standby && cfg.addrs.len() > 1)
            .then(|| discover::Discovery::new(cfg.connect_timeout));
        Ok(VaultClient {
            http,
            nodes: nodes::Nodes::new(cfg.addrs.clone()),
            discovery,
            pace: pace::Pace::new(),
            namespace: cfg.namespace.clone(),
            total_timeout: cfg.total_timeout,
            auth: auth::Auth::new(cfg.auth.clone()),
            last_version: std::sync::atomic::AtomicU8::new(0),
        })
    }

    /// The HTTP version Vault last answered with (`HTTP/2` when Vault offered it over TLS).
    pub fn http_version(&self) -> Option<&'static str> {
        match self.last_version.load(std::sync::atomic::Ordering::Relaxed) {
            1 => Some("HTTP/1.1"),
            2 => Some("HTTP/2"),
            _ => None,
        }
    }

    /// The node calls go to now (the home node, or where failover moved them).
    pub fn addr(&self) -> String {
        self.nodes.current().1
    }

    /// Sends one request to `/v1/{path}` with the sidecar's token and returns the `data`
    /// object of the answer (`Value::Null` for 204). GET is retried freely, others only
    /// when not sent; use [`request_with`](Self::request_with) to say otherwise.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, VaultError> {
        let retry = if method == reqwest::Method::GET {
            Retry::Idempotent
        } else {
            Retry::IfNotSent
        };
        self.request_with(retry, method, path, body).await
    }

    /// [`request`](Self::request) with an explicit retry rule.
    pub async fn request_with(
        &self,
        retry: Retry,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, VaultError> {
        self.request_body(retry, method, path, body.map(Body::Json))
            .await
    }

    /// [`request_with`](Self::request_with) with a [`Body`] (JSON to encode, or JSON
    /// text sent as it is).
    pub async fn request_body(
        &self,
        retry: Retry,
        method: reqwest::Method,
        path: &str,
        body: Option<Body<'_>>,
    ) -> Result<Value, VaultError> {
        let endpoint = VaultEndpoint::from_request(&method, path);
        self.with_relogin(retry, endpoint, |t| {
            self.send(t, method.clone(), path, body)
        })
        .await
    }

    /// `GET /v1/{path}` of a JSON document that is not in Vault's envelope (an Aegis
    /// sidecar's own routes, `/v1/aegis/...`): the whole answer. `anonymous`: no token.
    pub async fn get_document(&self, path: &str, anonymous: bool) -> Result<Value, VaultError> {
        let attempt = |t| self.send_answer(t, reqwest::Method::GET, path, None);
        if anonymous {
            let token = TokenUse::Anonymous;
            self.execute(Retry::Idempotent, token, VaultEndpoint::Other, attempt)
                .await
        } else {
            self.with_relogin(Retry::Idempotent, VaultEndpoint::Other, attempt)
                .await
        }
    }

    /// [`execute`](Self::execute) with the sidecar's token; on a 403, checks the token
    /// once, logs in again if Vault no longer accepts it, and retries once.
    async fn with_relogin<T, F, Fut>(
        &self,
        retry: Retry,
        endpoint: VaultEndpoint,
        mut attempt: F,
    ) -> Result<T, VaultError>
    where
        F: FnMut(Target) -> Fut,
        Fut: Future<Output = Result<T, VaultError>>,
    {
        let generation = self.auth.generation();
        match self
            .execute(retry, TokenUse::Current, endpoint, &mut attempt)
            .await
        {
            Err(VaultError::Status { status: 403, .. })
                if self.recover_from_403(generation).await =>
            {
                self.execute(retry, TokenUse::Current, endpoint, attempt)
                    .await
            }
            other => other,
        }
    }

    /// Like [`request`](Self::request), decoding `data` into `T`.
    pub async fn request_as<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, VaultError> {
        let data = self.request(method, path, body).await?;
        serde_json::from_value(data).map_err(|e| VaultError::Decode(e.to_string()))
    }

    /// Runs `attempt` against the home node until it succeeds, fails for good, or the
    /// total timeout passes, applying the HA, retry, pacing and re-login rules of this
    /// module. Each attempt is one `vault.request` span and one count in
    /// `aegis_vault_requests_total` (2xx answers count as `200`).
    async fn execute<T, F, Fut>(
        &self,
        retry: Retry,
        token: TokenUse,
        endpoint: VaultEndpoint,
        mut attempt: F,
    ) -> Result<T, VaultError>
    where
        F: FnMut(Target) -> Fut,
        Fut: Future<Output = Result<T, VaultError>>,
    {
        let deadline = Instant::now() + self.total_timeout;
        self.ensure_home(deadline).await;
        let mut misses = 0usize;
        let mut pauses: Option<Backoff> = None;
        loop {
            let (index, addr) = self.nodes.current();
            let secret = match &token {
                TokenUse::Current => Some(self.auth.token()?.0),
                TokenUse::Anonymous => None,
                TokenUse::Given(s) => Some(s.clone()),
            };
            let target = Target {
                addr: addr.clone(),
                token: secret,
            };
            let span = tracing::info_span!(
                "vault.request",
                otel.name = %format_args!("vault {}", endpoint.as_str()),
                otel.kind = "client",
                vault.endpoint = endpoint.as_str(),
                server.address = %addr,
                http.response.status_code = tracing::field::Empty,
            );
            let started = Instant::now();
            let answer =
                tokio::time::timeout_at(deadline.into(), attempt(target).instrument(span.clone()))
                    .await;
            let status = match &answer {
                Ok(Ok(_)) | Ok(Err(VaultError::Decode(_))) => Some(200),
                Ok(Err(VaultError::Status { status, .. })) => Some(*status),
                Ok(Err(VaultError::RateLimited { .. })) => Some(429),
                Ok(Err(VaultError::Redirect(_))) => Some(307),
                Ok(Err(VaultError::Unauthenticated(_))) => None,
                Ok(Err(VaultError::Unreachable { .. })) | Err(_) => Some(0),
            };
            if let Some(status) = status {
                let code = (status != 0).then_some(status);
                metrics::get().vault_request(endpoint, code, started.elapsed());
                if let Some(code) = code {
                    span.record("http.response.status_code", i64::from(code));
                }
                if code.is_none_or(|c| c >= 500) {
                    telemetry::trace::mark_error(&span, "Vault did not answer, or answered 5xx");
                }
            }
            let err = match answer {
                Ok(Ok(v)) => {
                    self.pace.succeeded();
                    return Ok(v);
                }
                Ok(Err(VaultError::RateLimited {
                    errors,
                    retry_after,
                })) => return Err(self.rate_limited(&addr, started, errors, retry_after)),
                Ok(Err(e)) => e,
                // The call's budget is spent; the node is not to blame for that.
                Err(_) => {
                    return Err(VaultError::unreachable(format!(
                        "no answer from Vault within the total timeout of {:?}",
                        self.total_timeout
                    )))
                }
            };
            if Instant::now() >= deadline {
                return Err(err);
            }
            match next_step(&err, retry) {
                Step::Fail => return Err(err),
                Step::Redirect(location) => match self.nodes.redirected(index, &location) {
                    Ok(()) => {
                        debug!(from = %addr, to = %location, "standby redirected to the active node")
                    }
                    Err(why) => {
                        warn!(
                            from = %addr,
                            to = %location,
                            reason = why.as_str(),
                            "standby redirect not followed; trying another configured node"
                        );
                        self.node_failed(index, deadline).await;
                    }
                },
                Step::OtherNode => {
                    debug!(node = %addr, error = %err, "Vault node unusable; trying another");
                    self.node_failed(index, deadline).await;
                }
            }
            misses += 1;
            // After a full round of nodes, wait a little before the next round.
            if misses.is_multiple_of(self.nodes.len()) {
                let pause = pauses.get_or_insert_with(round_backoff).next_pause();
                if Instant::now() + pause >= deadline {
                    return Err(err);
                }
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// A 429 from `addr` to a request sent at `sent`: the client's pace moves (see `pace`),
    /// and the error says how long to wait.
    fn rate_limited(
        &self,
        addr: &str,
        sent: Instant,
        errors: Vec<String>,
        retry_after: Option<Duration>,
    ) -> VaultError {
        let limited = self.pace.limited(sent, retry_after);
        if limited.new_episode {
            warn!(
                node = %addr,
                retry_after_s = retry_after.map(|d| d.as_secs()),
                wait_ms = limited.wait.as_millis() as u64,
                "Vault's rate limit refused a call (429); background calls hold back"
            );
        }
        VaultError::RateLimited {
            errors,
            retry_after: Some(limited.wait),
        }
    }

    /// One raw JSON request to one node; the answer's `data` (`Value::Null` for 204).
    async fn send(
        &self,
        target: Target,
        method: reqwest::Method,
        path: &str,
        body: Option<Body<'_>>,
    ) -> Result<Value, VaultError> {
        Ok(match self.send_answer(target, method, path, body).await? {
            Value::Object(mut m) => m.remove("data").unwrap_or(Value::Null),
            _ => Value::Null,
        })
    }

    /// One raw JSON request to one node; the whole answer (`Value::Null` for 204).
    async fn send_answer(
        &self,
        target: Target,
        method: reqwest::Method,
        path: &str,
        body: Option<Body<'_>>,
    ) -> Result<Value, VaultError> {
        let url = format!("{}/v1/{}", target.addr, path);
        let mut trace_headers = http::HeaderMap::new();
        telemetry::trace::inject_current(&mut trace_headers);
        let mut req = self
            .http
            .request(method, &url)
            .headers(trace_headers)
            .header("X-Vault-Request", "true");
        if let Some(t) = &target.token {
            req = req.header("X-Vault-Token", t.expose());
        }
        if let Some(ns) = &self.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        match body {
            Some(Body::Json(b)) => req = req.json(b),
            // A clone of `Bytes` shares the buffer: a retry sends the same bytes again.
            Some(Body::Raw(b)) => {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b.clone());
            }
            None => {}
        }
        let resp = req.send().await.map_err(transport_error)?;
        let version = if resp.version() == reqwest::Version::HTTP_2 {
            2
        } else {
            1
        };
        self.last_version
            .store(version, std::sync::atomic::Ordering::Relaxed);
        let status = resp.status();
        if status.is_redirection() {
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .unwrap_or_default()
                .to_string();
            return Err(VaultError::Redirect(location));
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(pace::parse_retry_after);
        let bytes = resp.bytes().await.map_err(transport_error)?;
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        if !status.is_success() {
            return Err(VaultError::answered(
                status.as_u16(),
                error_messages(&bytes),
                retry_after,
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| VaultError::Decode(e.to_string()))
    }

    /// Runs a vaultrs endpoint through [`execute`](Self::execute).
    async fn vaultrs_call<T, F, Fut>(
        &self,
        retry: Retry,
        token: TokenUse,
        endpoint: VaultEndpoint,
        f: F,
    ) -> Result<T, VaultError>
    where
        F: Fn(vaultrs::client::VaultClient) -> Fut,
        Fut: Future<Output = Result<T, vaultrs::error::ClientError>>,
    {
        self.execute(retry, token, endpoint, |t| {
            let fut = self.vaultrs_client(&t).map(&f);
            async move {
                match fut {
                    Ok(fut) => fut.await.map_err(from_vaultrs),
                    Err(e) => Err(e),
                }
            }
        })
        .await
    }

    /// A vaultrs client for one node and token, on the shared HTTP client.
    fn vaultrs_client(&self, t: &Target) -> Result<vaultrs::client::VaultClient, VaultError> {
        let address = url::Url::parse(&t.addr).map_err(|e| VaultError::Decode(e.to_string()))?;
        let token = t
            .token
            .as_ref()
            .map(|s| s.expose().to_string())
            .unwrap_or_default();
        let settings = vaultrs::client::VaultClientSettings {
            address: address.clone(),
            ca_certs: Vec::new(),
            identity: None,
            timeout: None,
            token: token.clone(),
            verify: true,
            version: 1,
            wrapping: false,
            namespace: self.namespace.clone(),
            proxy: None,
        };
        Ok(vaultrs::client::VaultClient {
            http: rustify::clients::reqwest::Client::new(address.as_str(), self.http.clone()),
            middle: vaultrs::api::EndpointMiddleware {
                token,
                version: "v1".into(),
                wrap: None,
                namespace: self.namespace.clone(),
            },
            settings,
        })
    }
}

/// Longest pause between two rounds of nodes. An election takes seconds; a call waiting
/// it out must not sleep much past it, nor give up much before its total timeout.
const MAX_ROUND_PAUSE: Duration = Duration::from_millis(400);

/// Pauses after full rounds of nodes failed: under 100 ms, doubling, under
/// [`MAX_ROUND_PAUSE`] (made only when a round fails: nothing on the happy path).
fn round_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), MAX_ROUND_PAUSE)
}

/// What [`VaultClient::execute`] does after a failed attempt.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Fail,
    /// The node did not act on the request: another node may.
    OtherNode,
    Redirect(String),
}

fn next_step(err: &VaultError, retry: Retry) -> Step {
    match err {
        VaultError::Unreachable { sent: false, .. } => Step::OtherNode,
        VaultError::Unreachable { sent: true, .. } if retry == Retry::Idempotent => Step::OtherNode,
        VaultError::Redirect(location) if !location.is_empty() => Step::Redirect(location.clone()),
        // A redirect without a location, a sealed node or a standby that cannot forward.
        VaultError::Redirect(_) => Step::OtherNode,
        // Sealed, or a standby with no active node: provably not acted on. Any other 503
        // (a load balancer after an upstream reset) may have been: reads only.
        VaultError::Status {
            status: 503,
            errors,
        } if retry == Retry::Idempotent || errors.iter().any(|e| not_active(e)) => Step::OtherNode,
        VaultError::Status {
            status: 500,
            errors,
        } if errors.iter().any(|e| not_active(e)) => Step::OtherNode,
        _ => Step::Fail,
    }
}

/// Messages of a write OpenBao refused because a concurrent write to the same entry won
/// (its storage transaction, or Transit's key archive, changed underneath).
fn write_conflict(msg: &str) -> bool {
    [
        "transaction commit failed",
        "archive version not up-to-date",
    ]
    .iter()
    .any(|m| msg.contains(m))
}

/// Messages of a node that is not (or no longer) the active one and did not act.
fn not_active(msg: &str) -> bool {
    [
        "node not active",
        "active cluster node not found",
        "not the active node",
        "Vault is sealed",
        "no active Vault instance found",
    ]
    .iter()
    .any(|m| msg.contains(m))
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<String>,
}

fn error_messages(bytes: &[u8]) -> Vec<String> {
    serde_json::from_slice::<ErrorBody>(bytes)
        .map(|b| b.errors)
        .unwrap_or_else(|_| vec![String::from_utf8_lossy(bytes).trim().to_string()])
}

fn transport_error(e: reqwest::Error) -> VaultError {
    let kind = if e.is_connect() {
        "connection failed"
    } else if e.is_timeout() {
        "timed out"
    } else {
        "transport error"
    };
    // The URL is ours (no secret in it); the token travels in a header and is never printed.
    VaultError::Unreachable {
        message: format!("{kind}: {}", error_chain(&e)),
        sent: !e.is_connect(),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let next = c.to_string();
        if !s.ends_with(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        cur = c.source();
    }
    s
}

fn from_vaultrs(e: vaultrs::error::ClientError) -> VaultError {
    use rustify::errors::ClientError as Rest;
    use vaultrs::error::ClientError;
    match e {
        ClientError::APIError { code, errors } => VaultError::answered(code, errors, None),
        ClientError::RestClientError { source } => match source {
            // A standby's redirect: rustify does not keep `Location`, so the call moves to
            // the next configured node (redirects are not followed: see `nodes`).
            Rest::ServerResponseError { code, .. } if (300..400).contains(&code) => {
                VaultError::Redirect(String::new())
            }
            Rest::ServerResponseError { code, content } => VaultError::answered(
                code,
                error_messages(content.unwrap_or_default().as_bytes()),
                None,
            ),
            Rest::RequestError { source, .. } | Rest::ResponseError { source } => {
                match source.downcast::<reqwest::Error>() {
                    Ok(e) => transport_error(e),
                    Err(other) => VaultError::unreachable(format!("{other:#}")),
                }
            }
            other => VaultError::unreachable(error_chain(&other)),
        },
        other => VaultError::Decode(other.to_string()),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn status_errors_read_on_one_line() {
        let e = |status, errors: &[&str]| {
            VaultError::Status {
                status,
                errors: errors.iter().map(|s| s.to_string()).collect(),
            }
            .to_string()
        };
        assert_eq!(e(404, &[]), "Vault answered 404: not found");
        assert_eq!(
            e(403, &["1 error occurred:\n\t* permission denied\n\n"]),
            "Vault answered 403: permission denied"
        );
        assert_eq!(e(400, &["a\nb", "c"]), "Vault answered 400: a b; c");
        let wrapped = VaultError::Status {
            status: 403,
            errors: vec!["1 error occurred:\n\t* permission denied\n\n".into()],
        }
        .in_context("reading the retention record secret/data/k");
        assert_eq!(
            wrapped.to_string(),
            "Vault answered 403: reading the retention record secret/data/k: permission denied"
        );
        let other = VaultError::Decode("x".into()).in_context("reading");
        assert_eq!(other.to_string(), "cannot decode Vault's answer: x");
    }

    use super::*;
    use crate::config::{AuthConfig, SecretSource, TlsConfig};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn client(addrs: &[&str], total_timeout: Duration) -> VaultClient {
        // Round robin and redirects only: no `sys/health` probes of these made-up hosts.
        client_with(addrs, total_timeout, false)
    }

    /// A client of `addrs` with a fixed token and short timeouts (also for `discover`).
    pub(super) fn client_with(
        addrs: &[&str],
        total_timeout: Duration,
        prefer_standby: bool,
    ) -> VaultClient {
        VaultClient::new(&VaultConfig {
            addrs: addrs.iter().map(|a| a.to_string()).collect(),
            auth: AuthConfig::Token {
                token: SecretSource::Value(Secret::new("hvs.test")),
            },
            tls: TlsConfig::default(),
            namespace: None,
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(500),
            total_timeout,
            prefer_standby,
        })
        .unwrap()
    }

    #[test]
    fn rounds_pause_briefly() {
        let mut b = round_backoff();
        let first = b.next_pause();
        assert!(first >= Duration::from_millis(50) && first < Duration::from_millis(100));
        for _ in 0..20 {
            assert!(b.next_pause() < MAX_ROUND_PAUSE);
        }
    }

    /// The active node died (connection refused) and the standbys redirect to it until a
    /// new leader is elected 1.6 s in. A sign with a 2 s budget keeps going round the nodes
    /// and is answered after the election: pauses doubling without a low cap (3.2 s)
    /// gave up at 1.5 s, and would otherwise have slept until 3.1 s.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_waiting_out_an_election_is_answered_soon_after_it() {
        let dead = "http://a:1";
        let vault = client(&[dead, "http://b:2", "http://c:3"], Duration::from_secs(2));
        let start = Instant::now();
        let elected = start + Duration::from_millis(1600);
        let attempts = AtomicUsize::new(0);
        let answer = vault
            .execute(
                Retry::IfNotSent,
                TokenUse::Anonymous,
                VaultEndpoint::Other,
                |t: Target| {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    async move {
                        if t.addr == dead {
                            Err(VaultError::Unreachable {
                                message: "connection refused".into(),
                                sent: false,
                            })
                        } else if Instant::now() < elected {
                            Err(VaultError::Redirect(format!("{dead}/v1/transit/sign/k")))
                        } else {
                            Ok(t.addr)
                        }
                    }
                },
            )
            .await;
        let took = start.elapsed();
        assert!(answer.is_ok(), "{answer:?} after {took:?}");
        assert!(took < Duration::from_millis(1600) + MAX_ROUND_PAUSE + Duration::from_millis(200));
        // Still a pause between rounds, not a busy loop.
        assert!(attempts.into_inner() < 40);

        // Never elected: the call uses its budget, less at most one pause.
        let start = Instant::now();
        let answer = vault
            .execute(
                Retry::IfNotSent,
                TokenUse::Anonymous,
                VaultEndpoint::Other,
                |t: Target| async move {
                    Err::<(), _>(VaultError::Redirect(format!("{}/v1/x", t.addr)))
                },
            )
            .await;
        let took = start.elapsed();
        assert!(matches!(answer, Err(VaultError::Redirect(_))), "{answer:?}");
        assert!(took >= Duration::from_secs(2) - MAX_ROUND_PAUSE, "{took:?}");
    }

    fn status(status: u16, msg: &str) -> VaultError {
        VaultError::Status {
            status,
            errors: vec![msg.into()],
        }
    }

    #[test]
    fn sign_moves_on_only_when_vault_did_not_act() {
        let never_sent = VaultError::Unreachable {
            message: "connection refused".into(),
            sent: false,
        };
        let lost = VaultError::unreachable("timed out");
        assert_eq!(next_step(&never_sent, Retry::IfNotSent), Step::OtherNode);
        assert_eq!(next_step(&lost, Retry::IfNotSent), Step::Fail);
        assert_eq!(next_step(&lost, Retry::Idempotent), Step::OtherNode);
        assert_eq!(
            next_step(
                &VaultError::Redirect("http://b:8200/v1/x".into()),
                Retry::IfNotSent
            ),
            Step::Redirect("http://b:8200/v1/x".into())
        );
        assert_eq!(
            next_step(&status(503, "Vault is sealed"), Retry::IfNotSent),
            Step::OtherNode
        );
        assert_eq!(
            next_step(
                &status(
                    500,
                    "local node not active but active cluster node not found"
                ),
                Retry::IfNotSent
            ),
            Step::OtherNode
        );
        assert_eq!(
            next_step(&status(500, "internal error"), Retry::IfNotSent),
            Step::Fail
        );
        assert_eq!(
            next_step(
                &status(500, "1 error occurred:\n\t* transaction commit failed\n\n"),
                Retry::IfNotSent
            ),
            Step::Fail
        );
        assert!(status(500, "* transaction commit failed").is_write_conflict());
        assert_eq!(
            next_step(&status(400, "bad input"), Retry::Idempotent),
            Step::Fail
        );
        assert_eq!(
            next_step(&status(403, "permission denied"), Retry::IfNotSent),
            Step::Fail
        );
        assert_eq!(
            next_step(&VaultError::Unauthenticated("x".into()), Retry::Idempotent),
            Step::Fail
        );
    }
}
