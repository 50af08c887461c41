//! `POST /v1/aegis/model/verify`: a model server asks its sidecar whether a model
//! directory is the one signed with a Transit key, before loading it.
//!
//! Order: off unless `AEGIS_MODEL_ROOTS` is set (403); the body read within the body
//! limits and parsed (400); admission as [`Action::VerifyModel`] (the guard, the caller,
//! the allowlist, the caller policy's `verify_model`); the roots rule
//! ([`runtime::confine`], 403, nothing opened, nothing audited); the one verification slot
//! (429 with `Retry-After` when busy); the cached key set; then the check itself
//! ([`runtime::verify`]). Every request past the roots rule is audited as `verify_model`.

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
use crate::model::runtime::{self, Checked};
use crate::model::ModelError;
use crate::policy::{Action, Headers, Peer};
use crate::telemetry::metrics::{self, Operation};

/// Where the route is served.
pub const MODEL_VERIFY_PATH: &str = "/v1/aegis/model/verify";

/// `Retry-After` when another verification holds the slot.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

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
    if state.config.model_roots.is_empty() {
        return Err(Error::Refused(
            "model verification is not enabled: set AEGIS_MODEL_ROOTS".into(),
        ));
    }
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
    let paths = runtime::confine(
        &state.config.model_roots,
        &request.model,
        &request.signature,
    )
    .map_err(Error::Refused)?;
    let Some(_slot) = runtime::try_slot() else {
        return Err(Error::TooManyRequests {
            key,
            retry_after: BUSY_RETRY_AFTER,
        });
    };
    let set = state.keys.get(&key).await.map_err(|e| {
        if e.is_not_found() {
            Error::NotFound(format!("no key {key:?} in Transit"))
        } else {
            e.into()
        }
    })?;
    let model = paths.model.display().to_string();
    let checked = runtime::verify(set, paths, request).await;
    audit(state, &caller, &key, &model, &checked).await;
    if let Err(e) = &checked {
        metrics::get().model_verify_failure(&key, e.reason());
    } else if let Ok(Checked::Mismatch { .. }) = &checked {
        metrics::get().model_verify_failure(&key, "model_mismatch");
    }
    answer(checked).map(|data| envelope(data, None))
}

/// The `data` of the answer, or the 4xx: a bad signature or a model that differs is
/// `valid: false` (as Transit's verify answers a bad signature); a version the validity
/// rule refuses, or none matching, is a 400 (as the sidecar's verify answers one).
fn answer(checked: Result<Checked, ModelError>) -> Result<Value, Error> {
    match checked {
        Ok(Checked::Valid {
            key_version,
            model_name,
            files,
            bytes,
        }) => Ok(json!({
            "valid": true, "key_version": key_version, "model_name": model_name,
            "files": files, "bytes": bytes,
        })),
        Ok(Checked::Mismatch {
            key_version,
            changed,
            added,
            missing,
        }) => Ok(json!({
            "valid": false, "reason": "model_mismatch", "key_version": key_version,
            "changed": changed, "added": added, "missing": missing,
        })),
        Err(e @ ModelError::Signature(_)) => Ok(json!({
            "valid": false, "reason": e.reason(), "error": e.to_string(),
        })),
        Err(ModelError::Vault(e)) => Err(Error::Internal(e.to_string())),
        Err(e) => Err(Error::bad_request(e.to_string())),
    }
}

/// The `verify_model` audit event: the outcome, key, version and model path.
async fn audit(
    state: &AppState,
    caller: &str,
    key: &str,
    model: &str,
    checked: &Result<Checked, ModelError>,
) {
    if !state.auditor.is_enabled() {
        return;
    }
    let (outcome, version) = match checked {
        Ok(Checked::Valid { key_version, .. }) => (AuditOutcome::Ok, Some(*key_version)),
        Ok(Checked::Mismatch { key_version, .. }) => (
            AuditOutcome::error("the model does not match its signature"),
            Some(*key_version),
        ),
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
