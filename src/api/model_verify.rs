//! `POST /v1/aegis/model/verify`: a model server asks its sidecar whether a model
//! directory is the one signed with a Transit key, before loading it.
//!
//! Order: off unless `AEGIS_MODEL_ROOTS` is set (403); the body read within the body
//! limits and parsed (400); admission as [`Action::VerifyModel`] (the guard, the caller,
//! the allowlist, the caller policy's `verify_model`); the roots rule
//! ([`runtime::confine`], 403, nothing opened, nothing audited); the one verification slot
//! (429 with `Retry-After` when busy); what the verification may hold, taken from the
//! body budget (`Config::model_verify_budget`), waited for in turn for up to 5 s (then 503
//! with `Retry-After`); the cached key set; then the check itself ([`runtime::verify`],
//! within `AEGIS_MODEL_MAX_SIGNATURE_BYTES` and `AEGIS_MODEL_MAX_RESOURCES`). Every request
//! past the roots rule is audited as `verify_model`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tracing::Instrument as _;

use super::http::{envelope, method_not_allowed, read_body};
use super::AppState;
use crate::audit::{EventKind, Outcome as AuditOutcome};
use crate::error::Error;
use crate::model::runtime;
use crate::model::{Limits, ModelError, Signer, Verified};
use crate::policy::{Action, Headers, Peer};
use crate::telemetry::metrics::{self, Operation};

/// Where the route is served.
pub const MODEL_VERIFY_PATH: &str = "/v1/aegis/model/verify";

/// `Retry-After` when another verification holds the slot.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// How long a verification waits for its share of the body budget (holding the slot)
/// before it is answered 503.
const BUDGET_WAIT: Duration = Duration::from_secs(5);

/// One model verification request: its span, answer and count.
pub async fn model_verify(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let span = super::request_span(Operation::VerifyModel, "", req.headers());
    let mut key = String::new();
    let answer = serve(&state, peer, req, &mut key)
        .instrument(span.clone())
        .await;
    let response = span.in_scope(|| answer.unwrap_or_else(IntoResponse::into_response));
    state.count_request(
        Operation::VerifyModel,
        &key,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

async fn serve(
    state: &AppState,
    peer: Peer,
    req: Request,
    key_out: &mut String,
) -> Result<Response, Error> {
    enabled(state)?;
    if req.method() != Method::POST && req.method() != Method::PUT {
        return Ok(method_not_allowed());
    }
    let headers = req.headers().clone();
    let read = read_body(req, state.config.max_body_bytes, &state.body_budget);
    let (body, _held) = tokio::time::timeout(state.config.http_read_timeout, read)
        .await
        .map_err(|_| Error::RequestTimeout {
            after: state.config.http_read_timeout,
        })??;
    let request: runtime::Request = serde_json::from_slice(&body)
        .map_err(|e| Error::bad_request(format!("invalid request body: {e}")))?;
    key_out.clone_from(&request.key);
    let key = request.key.clone();
    let caller = state
        .admit(
            &peer,
            &Headers::from_map(&headers),
            Action::VerifyModel,
            &key,
        )
        .await?
        .actor;
    let answer = check(state, &caller, request).await?;
    Ok(envelope(answer, None))
}

/// Refuses (403) while `AEGIS_MODEL_ROOTS` is unset: the endpoint is off.
pub(crate) fn enabled(state: &AppState) -> Result<(), Error> {
    if state.config.model_roots.is_empty() {
        return Err(Error::Refused(
            "model verification is not enabled: set AEGIS_MODEL_ROOTS".into(),
        ));
    }
    Ok(())
}

/// What both faces do once the caller is admitted: the roots rule (403, nothing opened,
/// nothing audited), the one slot (429), its share of the body budget (503), the cached
/// key set, the verification, its audit event and failure count; the answer's `data`.
pub(crate) async fn check(
    state: &AppState,
    caller: &str,
    request: runtime::Request,
) -> Result<Value, Error> {
    let paths = runtime::confine(
        &state.config.model_roots,
        &request.model,
        &request.signature,
    )
    .map_err(Error::Refused)?;
    let key = request.key.clone();
    let Some(_slot) = runtime::try_slot() else {
        return Err(Error::TooManyRequests {
            key,
            retry_after: BUSY_RETRY_AFTER,
        });
    };
    // What the verification may hold, from the body budget: waited for in turn, so a
    // stream of sign bodies cannot starve it (503 after BUDGET_WAIT).
    let _held = state
        .body_budget
        .take_within(state.config.model_verify_budget(), BUDGET_WAIT)
        .await?;
    let set = state.keys.get(&key).await.map_err(|e| {
        if e.is_not_found() {
            Error::NotFound(format!("no key {key:?} in Transit"))
        } else {
            e.into()
        }
    })?;
    let limits = Limits {
        max_signature_bytes: state.config.model_max_signature_bytes as u64,
        max_resources: state.config.model_max_resources,
    };
    let checked = runtime::verify(
        &set,
        &paths,
        &request,
        state.config.cache_dir.clone(),
        limits,
    )
    .await;
    audit(
        state,
        caller,
        &key,
        &paths.model.display().to_string(),
        &checked,
    )
    .await;
    if let Err(e) = &checked {
        metrics::get().model_verify_failure(&key, e.reason());
    }
    answer(checked)
}

/// The `data` of the answer, or the 4xx: a model that differs or a signature that does
/// not verify is `valid: false` (as Transit's verify answers a bad signature); anything
/// else is refused through `Error` (a version the validity rule refuses is a 400).
fn answer(checked: Result<Verified, ModelError>) -> Result<Value, Error> {
    match checked {
        Ok(v) => {
            let Signer::Transit { version, .. } = v.signer else {
                return Err(Error::Internal(
                    "a cached key verified without a version".into(),
                ));
            };
            Ok(json!({
                "valid": true, "key_version": version, "model_name": v.model_name,
                "files": v.files, "bytes": v.bytes,
            }))
        }
        Err(ModelError::Mismatch(d)) => Ok(json!({
            "valid": false, "reason": "model_mismatch", "error": format!("the model does not match its signature: {d}"),
            "changed": d.changed, "added": d.added, "missing": d.missing,
        })),
        Err(e @ ModelError::Signature(_)) => Ok(json!({
            "valid": false, "reason": e.reason(), "error": e.to_string(),
            "changed": [], "added": [], "missing": [],
        })),
        Err(e) => Err(e.into()),
    }
}

/// The `verify_model` audit event: the outcome, key, version and model path.
async fn audit(
    state: &AppState,
    caller: &str,
    key: &str,
    model: &str,
    checked: &Result<Verified, ModelError>,
) {
    if !state.auditor.is_enabled() {
        return;
    }
    let (outcome, version) = match checked {
        Ok(Verified {
            signer: Signer::Transit { version, .. },
            ..
        }) => (AuditOutcome::Ok, Some(*version)),
        Ok(_) => (AuditOutcome::Ok, None),
        Err(e) => (AuditOutcome::error(e), None),
    };
    let mut event = state
        .event(EventKind::VerifyModel, caller, key, outcome)
        .target(model);
    if let Some(v) = version {
        event = event.versions([u64::from(v)]);
    }
    state.auditor.record(event).await;
}
