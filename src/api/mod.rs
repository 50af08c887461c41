//! The faces callers talk to: `http` speaks Vault's own HTTP API, `grpc` the typed
//! `aegis.v1.Signer` API, on the same listeners.
//!
//! This layer knows routes and wire formats; it renders [`crate::error::Error`] through
//! the single status mapping in `error.rs`, and decides nothing about keys or Vault.
//! Every face admits a request through [`AppState::admit`] (the guard, the caller's
//! identity, the allowlist, the caller policy) before anything else is done, and audits
//! the refusals.

pub mod budget;
pub mod grpc;
pub mod http;
pub mod model_verify;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::audit::{Actor, AuditEvent, Auditor, EventKind, Outcome};
use crate::config::Config;
use crate::error::Error;
use crate::keys::KeyCache;
use crate::policy::{Action, Caller, Headers, Peer, Policy};
use crate::sign::Signer;
use crate::telemetry::metrics::KeyLabels;
use crate::transit::TransitRequest;
use crate::verify::Verifier;

/// Startup latch: true once the allowlisted keys are loaded. Readiness as a whole also
/// needs a live Vault credential: see [`AppState::ready`]. Once
/// [`begin_shutdown`](Self::begin_shutdown) is called it stays not ready for good.
#[derive(Default)]
pub struct Readiness {
    ready: AtomicBool,
    /// The reason, and whether shutdown has begun; changes are made under this lock.
    reason: Mutex<(String, bool)>,
}

impl Readiness {
    pub fn set_ready(&self) {
        let latch = self.reason.lock().expect("readiness lock");
        if !latch.1 {
            self.ready.store(true, Ordering::Release);
        }
    }
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        let mut latch = self.reason.lock().expect("readiness lock");
        if !latch.1 {
            self.ready.store(false, Ordering::Release);
            latch.0 = reason.into();
        }
    }
    /// Not ready from now on, whatever the startup tasks still do.
    pub fn begin_shutdown(&self) {
        let mut latch = self.reason.lock().expect("readiness lock");
        self.ready.store(false, Ordering::Release);
        *latch = ("shutting down".into(), true);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
    pub fn reason(&self) -> String {
        self.reason.lock().expect("readiness lock").0.clone()
    }
}

impl AppState {
    /// Signs `req` with `key` so that no signature is handed out without its audit
    /// event: room for one event per item is reserved before Vault is asked (refused with
    /// a 503 when the audit trail has none in time, unless it fails open), then each item
    /// is audited with its outcome: the version Vault signed with, or Vault's (or the
    /// sidecar's) refusal, and the SHA-256 of the input (never the input).
    pub async fn sign_audited(
        &self,
        caller: &str,
        key: &str,
        hash: Option<&str>,
        req: &TransitRequest,
    ) -> Result<Value, Error> {
        let mut room = self
            .auditor
            .reserve(req.items.len())
            .await
            .map_err(|e| Error::AuditUnavailable(e.to_string()))?;
        let result = Box::pin(self.signer.sign(key, hash, req)).await;
        if self.auditor.is_enabled() {
            for event in self.sign_events(caller, key, req, &result) {
                room.record(event);
            }
        }
        result
    }

    /// One sign event per item of `req`, with the item's outcome in `result`.
    fn sign_events<'a>(
        &'a self,
        caller: &'a str,
        key: &'a str,
        req: &'a TransitRequest,
        result: &'a Result<Value, Error>,
    ) -> impl Iterator<Item = AuditEvent> + 'a {
        // A refusal of the whole request is described once, whatever the number of items.
        let refused = result
            .as_ref()
            .err()
            .map(|e| Outcome::error(e.messages().join("; ")));
        req.items.iter().enumerate().map(move |(i, item)| {
            let answer = match result {
                Ok(data) if req.batch => &data["batch_results"][i],
                Ok(data) => data,
                Err(_) => &Value::Null,
            };
            let outcome = match (&refused, answer["error"].as_str().filter(|e| !e.is_empty())) {
                (Some(refused), _) => refused.clone(),
                (None, Some(e)) => Outcome::error(e),
                (None, None) => Outcome::Ok,
            };
            let mut event = self.event(EventKind::Sign, caller, key, outcome);
            if let Some(v) = answer["key_version"].as_u64().filter(|v| *v > 0) {
                event = event.versions([v]);
            }
            if let Some(input) = &item.input {
                event = event.input(&input_bytes(input));
            }
            event
        })
    }

    /// One audit event per verify item that was refused: an invalid signature, or an
    /// error (a retired or revoked version, bad input).
    pub async fn audit_verify(
        &self,
        caller: &str,
        key: &str,
        req: &TransitRequest,
        outcome: &Result<Value, Error>,
    ) {
        if !self.auditor.is_enabled() {
            return;
        }
        for (i, item) in req.items.iter().enumerate() {
            let refusal = match outcome {
                Err(e) => Some(e.messages().join("; ")),
                Ok(data) => {
                    let answer = if req.batch {
                        &data["batch_results"][i]
                    } else {
                        data
                    };
                    match answer["error"].as_str().filter(|e| !e.is_empty()) {
                        Some(e) => Some(e.to_string()),
                        None if answer["valid"] == false => Some("invalid signature".into()),
                        None => None,
                    }
                }
            };
            let Some(refusal) = refusal else { continue };
            let mut event = self.event(
                EventKind::VerifyRefused,
                caller,
                key,
                Outcome::error(refusal),
            );
            if let Some(v) = item
                .signature
                .as_deref()
                .and_then(|s| crate::verify::parse_signature(s).ok())
                .and_then(|p| u64::try_from(p.version).ok())
            {
                event = event.versions([v]);
            }
            if let Some(input) = &item.input {
                event = event.input(&input_bytes(input));
            }
            self.auditor.record(event).await;
        }
    }

    /// Admits a Transit request or refuses it before Vault is asked: the key name (a name
    /// Vault has no route for is a 404, as Vault answers; see [`valid_key_name`]), the
    /// request-forgery guard, the caller's identity, the key allowlist, then the caller
    /// policy (its keys and rate). A refusal after the name check is audited under the
    /// caller's identity (or its peer when it could not be identified).
    pub async fn admit(
        &self,
        peer: &Peer,
        headers: &Headers<'_>,
        action: Action,
        key: &str,
    ) -> Result<Caller, Error> {
        if !valid_key_name(key) {
            return Err(Error::NotFound("unsupported path".into()));
        }
        let caller = match self.policy.guard(headers).map_err(|e| (peer.describe(), e)) {
            Ok(()) => self.policy.identify(peer, headers.token),
            Err(refused) => Err(refused),
        };
        let caller = match caller {
            Ok(c) => c,
            Err((actor, e)) => {
                self.audit_refusal(&actor, key, &e).await;
                return Err(e);
            }
        };
        let allowed = if self.config.key_allowed(key) {
            self.policy.authorize(&caller, action, key)
        } else {
            Err(Error::PermissionDenied)
        };
        if let Err(e) = allowed {
            self.audit_refusal(&caller.actor, key, &e).await;
            return Err(e);
        }
        Ok(caller)
    }

    /// Counts one finished request in the metrics (`aegis_requests_total` and its
    /// duration), with the key label bounded by [`KeyLabels`].
    pub fn count_request(
        &self,
        operation: crate::telemetry::metrics::Operation,
        key: &str,
        status: u16,
        took: std::time::Duration,
    ) {
        use crate::telemetry::metrics;
        // An empty key (no route) is never held by the cache: it counts as `_other`.
        let label = self.key_labels.value(key, || self.keys.contains(key));
        metrics::get().request(
            operation,
            label,
            metrics::Outcome::from_status(status),
            took,
        );
    }

    /// Passes `result` on, auditing a failure as a refusal: for what is refused after the
    /// caller was admitted (a body over the limit or too slow, a batch too large,
    /// malformed JSON), so every refusal is in the audit trail.
    async fn refused_if_err<T>(
        &self,
        actor: &str,
        key: &str,
        result: Result<T, Error>,
    ) -> Result<T, Error> {
        if let Err(e) = &result {
            self.audit_refusal(actor, key, e).await;
        }
        result
    }

    async fn audit_refusal(&self, actor: &str, key: &str, e: &Error) {
        if self.auditor.is_enabled() {
            let event = self.event(EventKind::Refused, actor, key, Outcome::error(e));
            self.auditor.record(event).await;
        }
    }

    pub(crate) fn event(
        &self,
        kind: EventKind,
        caller: &str,
        key: &str,
        result: Outcome,
    ) -> AuditEvent {
        AuditEvent::new(
            kind,
            Actor::caller(caller),
            &self.config.transit_mount,
            key,
            result,
        )
    }

    /// Ready to sign: Vault accepts the sidecar's credential now and the allowlisted keys
    /// are loaded. Verification from cache works whether ready or not.
    pub fn ready(&self) -> Result<(), String> {
        let auth = self.keys.vault().auth_status();
        if !auth.authenticated {
            return Err(format!(
                "not authenticated to Vault ({} auth): {}",
                auth.method,
                auth.last_error.as_deref().unwrap_or("login pending")
            ));
        }
        if !self.readiness.is_ready() {
            return Err(self.readiness.reason());
        }
        Ok(())
    }
}

/// Whether Vault's Transit routes take `name` as a key name (OpenBao's
/// `framework.GenericNameRegex`: `\w(([\w-.]+)?\w)?`, with Go's ASCII `\w`). Both faces
/// check the name they were given (the HTTP face after percent-decoding the path, as Vault
/// does), so one key has one name: one rate bucket, one cache entry, one audit name.
pub fn valid_key_name(name: &str) -> bool {
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    let bytes = name.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            word(first) && word(last) && bytes.iter().all(|b| word(b) || matches!(b, b'-' | b'.'))
        }
        _ => false,
    }
}

/// The bytes an input stands for (base64-decoded; the text itself if it is not base64),
/// only ever hashed.
fn input_bytes(input: &str) -> Vec<u8> {
    crate::b64::decode(input, crate::b64::Encoding::Standard)
        .unwrap_or_else(|_| input.as_bytes().to_vec())
}

/// The span of one Transit request on either face (`aegis sign|verify|...`), continuing
/// the trace context the caller sent in `headers` (HTTP headers or gRPC metadata). The
/// faces record `key_version`, `outcome` and their own protocol fields on it.
pub fn request_span(
    operation: crate::telemetry::metrics::Operation,
    key: &str,
    headers: &::http::HeaderMap,
) -> tracing::Span {
    let span = tracing::info_span!(
        "aegis.request",
        otel.name = %format_args!("aegis {}", operation.as_str()),
        otel.kind = "server",
        operation = operation.as_str(),
        key,
        key_version = tracing::field::Empty,
        outcome = tracing::field::Empty,
        rpc.system = tracing::field::Empty,
        http.request.method = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    crate::telemetry::trace::continue_from(&span, headers);
    span
}

/// What every handler shares.
pub struct AppState {
    pub config: Arc<Config>,
    pub keys: Arc<KeyCache>,
    pub signer: Signer,
    pub verifier: Verifier,
    pub readiness: Arc<Readiness>,
    /// The audit trail (sign and refused verify events).
    pub auditor: Auditor,
    /// Bounds the `key` label of the metrics.
    pub key_labels: Arc<KeyLabels>,
    /// The request-forgery guard and the caller policy.
    pub policy: Policy,
    /// Request bytes in flight (`AEGIS_MAX_BODY_BYTES_IN_FLIGHT`), both faces.
    pub body_budget: budget::BodyBudget,
}
