//! Vault's HTTP API on the sidecar: `/v1/{mount}/sign|verify|keys/...`, health, readiness.
//!
//! Requests and answers use Transit's JSON and Vault's envelope, so Vault clients work
//! unchanged. The sidecar signs with its own credential: a caller's `X-Vault-Token` (or
//! `Authorization: Bearer`) only identifies the caller to the caller policy. Transit
//! requests pass [`AppState::admit`] first (the request-forgery guard, identity, allowlist,
//! policy); the probes (`/healthz`, `/readyz`, `/metrics`) and the OpenAPI document
//! (`/v1/aegis/openapi.json`, the repository's `openapi/aegis.openapi.json` embedded) do not.
//! Bodies are capped before they are read; every error is rendered as `{"errors":[...]}`
//! with the status from [`Error::status`] (and `Retry-After` when over a rate). The
//! document describes exactly the routes served here (checked by a unit test below).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::serve::IncomingStream;
use axum::Router;
use serde_json::{json, Value};
use tracing::{error, warn, Instrument as _};

use super::budget::{BodyBudget, Held};
use super::AppState;
use crate::error::Error;
use crate::policy::{Action, Headers, Peer};
use crate::telemetry::{
    self,
    metrics::{Operation, Outcome},
};
use crate::transit::TransitRequest;

/// Where this API's OpenAPI 3.1 document is served.
pub const OPENAPI_PATH: &str = "/v1/aegis/openapi.json";

/// Where the sidecar serves a key's JWK Set: `/v1/aegis/keys/{name}/jwks.json` (the
/// route template, as the OpenAPI document writes it).
pub const JWKS_PATH: &str = "/v1/aegis/keys/{name}/jwks.json";

/// How long a verifier may cache a JWK Set (`Cache-Control: max-age`), at most: a
/// revocation reaches verifiers within the keyset watch interval and this.
const JWKS_MAX_AGE: Duration = Duration::from_secs(30);

/// The OpenAPI 3.1 document of this API (`openapi/aegis.openapi.json`), served as it is
/// at [`OPENAPI_PATH`].
pub const OPENAPI_DOCUMENT: &[u8] = include_bytes!("../../openapi/aegis.openapi.json");

/// The HTTP router for one sidecar. Its routes are the probes, the OpenAPI document and
/// the Transit routes of [`TRANSIT_ROUTES`] (under the `/v1/{*path}` catch-all); a test
/// checks that the OpenAPI document describes exactly these.
pub fn router(state: Arc<AppState>) -> Router {
    probes()
        .route(OPENAPI_PATH, get(openapi))
        .route(JWKS_PATH, any(jwks))
        .route(
            super::model_verify::MODEL_VERIFY_PATH,
            any(super::model_verify::model_verify),
        )
        .route("/v1/{*path}", any(vault_api))
        .fallback(|| async {
            Error::NotFound(
                "no such path; Aegis serves /v1/<transit mount>/{sign,verify,keys}/...".into(),
            )
        })
        .with_state(state)
}

/// The router of the optional metrics listener (`AEGIS_METRICS_LISTEN`).
pub fn admin_router(state: Arc<AppState>) -> Router {
    probes().with_state(state)
}

/// The paths of [`probes`], all `GET`.
const PROBE_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// `/healthz`, `/readyz` and `/metrics`: on the main listener and the metrics listener.
fn probes() -> Router<Arc<AppState>> {
    let [healthz, ready, metrics_path] = PROBE_PATHS;
    Router::new()
        .route(
            healthz,
            get(|| async { (StatusCode::OK, axum::Json(json!({"status": "ok"}))) }),
        )
        .route(ready, get(readyz))
        .route(metrics_path, get(metrics))
}

/// The OpenAPI document. Like the probes it passes no caller checks: it is the static
/// file from the repository, names no key or setting of this sidecar, and does nothing.
async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        Bytes::from_static(OPENAPI_DOCUMENT),
    )
        .into_response()
}

/// Prometheus text exposition (format 0.0.4).
async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        telemetry::render_metrics(),
    )
        .into_response()
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            match &self {
                Error::Internal(detail) => error!(detail, "internal error"),
                other => warn!(status = status.as_u16(), error = %other, "request failed"),
            }
        }
        // An empty message is no message: Vault answers `{"errors":[]}` (e.g. a key read
        // of a key that does not exist), never `[""]`.
        let mut messages = self.messages();
        messages.retain(|m| !m.is_empty());
        let mut response = (status, axum::Json(json!({ "errors": messages }))).into_response();
        if let Some(secs) = self.retry_after_secs() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Peer::Tcp(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, tokio::net::UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        Peer::unix(stream.io())
    }
}

/// Room for a typical answer (a sign or verify envelope is 150 to 300 bytes; a key read
/// grows the buffer once or twice).
const ENVELOPE_CAPACITY: usize = 512;

/// Vault's response envelope around `data`, written in one pass into one buffer: the
/// fixed fields are literal text in Vault's order (`request_id`, `lease_id`, `renewable`,
/// `lease_duration`, `data`, `wrap_info`, `warnings`, `auth`), only the request id (from a
/// user-space RNG, not a syscall), `data` and the warning are serialized.
pub(super) fn envelope(data: Value, warnings: Option<String>) -> Response {
    let mut body = Vec::with_capacity(ENVELOPE_CAPACITY);
    body.extend_from_slice(br#"{"request_id":""#);
    let mut id = uuid::Uuid::encode_buffer();
    body.extend_from_slice(
        crate::ids::uuid_v4()
            .hyphenated()
            .encode_lower(&mut id)
            .as_bytes(),
    );
    body.extend_from_slice(br#"","lease_id":"","renewable":false,"lease_duration":0,"data":"#);
    let written = serde_json::to_writer(&mut body, &data).and_then(|()| {
        body.extend_from_slice(br#","wrap_info":null,"warnings":"#);
        match &warnings {
            Some(w) => serde_json::to_writer(&mut body, &[w]),
            None => {
                body.extend_from_slice(b"null");
                Ok(())
            }
        }
    });
    if let Err(e) = written {
        return Error::Internal(format!("cannot encode the answer: {e}")).into_response();
    }
    body.extend_from_slice(br#","auth":null}"#);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.ready() {
        Ok(()) => (StatusCode::OK, axum::Json(json!({"ready": true}))).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "ready": false,
                "errors": [crate::error::without_addresses(&format!("not ready: {reason}"))]
            })),
        )
            .into_response(),
    }
}

/// The Transit routes served under the mount (`/v1/{mount}/...`): the path template as the
/// OpenAPI document writes it, and what it does (which also decides its methods, see
/// [`methods`]). `route` matches request paths against this table only.
pub const TRANSIT_ROUTES: &[(&str, Action)] = &[
    ("sign/{name}", Action::Sign),
    ("sign/{name}/{hash_algorithm}", Action::Sign),
    ("verify/{name}", Action::Verify),
    ("verify/{name}/{hash_algorithm}", Action::Verify),
    ("keys/{name}", Action::ReadKey),
];

/// The methods a Transit route takes: `POST` or `PUT` (Vault's update) for sign and
/// verify, `GET` for a key read; others are answered 405.
pub fn methods(action: Action) -> &'static [Method] {
    const WRITE: &[Method] = &[Method::POST, Method::PUT];
    const READ: &[Method] = &[Method::GET];
    match action {
        Action::Sign | Action::Verify | Action::VerifyModel => WRITE,
        Action::ReadKey => READ,
    }
}

/// A Transit request the sidecar serves: what, with which key, with the hash in the path.
#[derive(Debug, PartialEq, Eq)]
struct Op<'a> {
    action: Action,
    key: &'a str,
    hash: Option<&'a str>,
}

/// What Vault makes of a request's path.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// Go's `ServeMux` answers a path with `.`, `..` or empty segments with a 307 to its
    /// clean form (query kept), before Vault sees it; so does the sidecar.
    Redirect(String),
    /// The path after `/v1/`, percent-decoded (as Go's `URL.Path`, which Vault routes on:
    /// `k%2Dx` is `k-x`, `k%2Fsha2-256` is key `k` with hash `sha2-256`).
    Path(String),
}

/// The [`Target`] of `uri`, or Vault's refusal: an invalid escape, a control character,
/// or a `.`/`..` segment after decoding ("relative paths not supported").
fn target(uri: &axum::http::Uri) -> Result<Target, Error> {
    let raw = uri.path();
    let clean = clean_path(raw);
    if clean != raw {
        return Ok(Target::Redirect(match uri.query() {
            Some(query) => format!("{clean}?{query}"),
            None => clean,
        }));
    }
    let decoded = decode_path(raw)?;
    let path = decoded.strip_prefix("/v1/").unwrap_or_default();
    if is_relative_path(path) {
        return Err(Error::bad_request("relative paths not supported"));
    }
    Ok(Target::Path(path.to_string()))
}

/// Go's `path.Clean` of a rooted path, keeping a trailing slash (what `ServeMux` redirects to).
fn clean_path(raw: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for segment in raw.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    let mut clean = format!("/{}", parts.join("/"));
    if raw.ends_with('/') && clean != "/" {
        clean.push('/');
    }
    clean
}

/// `raw` percent-decoded; every `%` must start two hex digits (Go refuses the request
/// otherwise), and the result must be UTF-8 without control characters.
fn decode_path(raw: &str) -> Result<String, Error> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let digit = |at: usize| bytes.get(at).and_then(|b| char::from(*b).to_digit(16));
        let (Some(high), Some(low)) = (digit(i + 1), digit(i + 2)) else {
            let escape: String = raw[i..].chars().take(3).collect();
            return Err(Error::bad_request(format!("invalid URL escape {escape:?}")));
        };
        out.push((high * 16 + low) as u8);
        i += 3;
    }
    match String::from_utf8(out) {
        Ok(path) if !path.chars().any(char::is_control) => Ok(path),
        _ => Err(Error::bad_request(
            "invalid URL path: not UTF-8, or a control character",
        )),
    }
}

/// OpenBao's `logical.IsRelativePath`: a `.` or `..` segment.
fn is_relative_path(path: &str) -> bool {
    path.split('/')
        .any(|segment| segment == "." || segment == "..")
}

fn redirect(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(location) => (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, location)],
        )
            .into_response(),
        Err(_) => Error::bad_request("invalid URL path").into_response(),
    }
}

/// Matches `{mount}/{rest}` against [`TRANSIT_ROUTES`] for the configured mount.
fn route<'a>(mount: &str, path: &'a str) -> Result<Op<'a>, Error> {
    let not_served = || {
        Error::NotFound(format!(
            "unsupported path: only {mount}/sign, {mount}/verify and {mount}/keys are served"
        ))
    };
    let rest = path
        .strip_prefix(mount)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(not_served)?;
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.iter().skip(1).any(|p| p.is_empty()) {
        return Err(Error::bad_request("cannot write to a path ending in '/'"));
    }
    TRANSIT_ROUTES
        .iter()
        .find_map(|(template, action)| {
            let segments: Vec<&str> = template.split('/').collect();
            if segments.len() != parts.len() {
                return None;
            }
            let mut op = Op {
                action: *action,
                key: "",
                hash: None,
            };
            for (segment, part) in segments.iter().zip(&parts) {
                match *segment {
                    "{name}" => op.key = part,
                    "{hash_algorithm}" => op.hash = Some(part),
                    literal if literal == *part => {}
                    _ => return None,
                }
            }
            Some(op)
        })
        .ok_or_else(not_served)
}

impl Op<'_> {
    fn operation(&self) -> Operation {
        match self.action {
            Action::Sign => Operation::Sign,
            Action::Verify => Operation::Verify,
            Action::ReadKey => Operation::ReadKey,
            Action::VerifyModel => Operation::VerifyModel,
        }
    }
}

/// One Transit request: its span (continuing the caller's trace), its answer, and its
/// count and duration in the metrics.
async fn vault_api(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let (path, refused) = match target(req.uri()) {
        Ok(Target::Redirect(location)) => {
            state.count_request(Operation::Other, "", 307, started.elapsed());
            return redirect(&location);
        }
        Ok(Target::Path(path)) => (path, None),
        Err(e) => (String::new(), Some(e)),
    };
    let op = match refused {
        Some(e) => Err(e),
        None => route(&state.config.transit_mount, &path),
    };
    let (operation, key) = match &op {
        Ok(op) => (op.operation(), op.key),
        Err(_) => (Operation::Other, ""),
    };
    let span = super::request_span(operation, key, req.headers());
    span.record("http.request.method", req.method().as_str());
    let answer = match op {
        Ok(op) => {
            Box::pin(handle(&state, peer, op, req))
                .instrument(span.clone())
                .await
        }
        Err(e) => Err(e),
    };
    let response = span.in_scope(|| answer.unwrap_or_else(IntoResponse::into_response));
    let status = response.status().as_u16();
    let outcome = Outcome::from_status(status);
    span.record("outcome", outcome.as_str());
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        telemetry::trace::mark_error(&span, outcome.as_str());
    }
    state.count_request(operation, key, status, started.elapsed());
    response
}

/// Vault's answer to a method a path does not take.
pub(super) fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(json!({"errors": ["unsupported operation"]})),
    )
        .into_response()
}

async fn handle(state: &AppState, peer: Peer, op: Op<'_>, req: Request) -> Result<Response, Error> {
    let Op { action, key, hash } = op;
    let caller = state
        .admit(&peer, &Headers::from_map(req.headers()), action, key)
        .await?;
    let caller = caller.actor;
    if !methods(action).contains(req.method()) {
        return Ok(method_not_allowed());
    }
    if action == Action::ReadKey {
        let set = state.keys.get(key).await.map_err(|e| {
            if e.is_not_found() {
                Error::NotFound(String::new())
            } else {
                e.into()
            }
        })?;
        return Ok(envelope(set.to_vault_json(), None));
    }
    // `_held`: the body's bytes in the budget, given back when this request ends.
    let (request, _held) = state
        .refused_if_err(&caller, key, read_request(state, req).await)
        .await?;
    let warning = request.unknown_fields_warning();
    let data = if action == Action::Sign {
        let data = state.sign_audited(&caller, key, hash, &request).await?;
        let first = if request.batch {
            &data["batch_results"][0]
        } else {
            &data
        };
        if let Some(v) = first["key_version"].as_i64() {
            tracing::Span::current().record("key_version", v);
        }
        data
    } else {
        if let Some(v) = request.items[0]
            .signature
            .as_deref()
            .and_then(|s| crate::verify::parse_signature(s).ok())
        {
            tracing::Span::current().record("key_version", v.version);
        }
        let outcome = state.verifier.verify(key, hash, &request).await;
        state.audit_verify(&caller, key, &request, &outcome).await;
        outcome?
    };
    Ok(envelope(data, warning))
}

/// `GET /v1/aegis/keys/{name}/jwks.json`: the key's published JWK Set
/// ([`crate::keys::publish`]), from the cache. Admitted as a key read (the guard, the
/// caller, the allowlist, the policy's keys and rate), counted as one.
async fn jwks(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let (req, _) = req.into_parts();
    let key = match target(&req.uri) {
        Ok(Target::Redirect(location)) => {
            state.count_request(Operation::Other, "", 307, started.elapsed());
            return redirect(&location);
        }
        Ok(Target::Path(path)) => path
            .strip_prefix("aegis/keys/")
            .and_then(|p| p.strip_suffix("/jwks.json"))
            .map(str::to_string)
            .ok_or_else(|| Error::NotFound("unsupported path".into())),
        Err(e) => Err(e),
    };
    let span = super::request_span(
        Operation::ReadKey,
        key.as_deref().unwrap_or_default(),
        &req.headers,
    );
    let (key, answer) = match key {
        Ok(key) => {
            let answer = serve_jwks(&state, peer, &key, &req)
                .instrument(span.clone())
                .await;
            (key, answer)
        }
        Err(e) => (String::new(), Err(e)),
    };
    let response = span.in_scope(|| answer.unwrap_or_else(IntoResponse::into_response));
    state.count_request(
        Operation::ReadKey,
        &key,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

async fn serve_jwks(
    state: &AppState,
    peer: Peer,
    key: &str,
    req: &axum::http::request::Parts,
) -> Result<Response, Error> {
    state
        .admit(
            &peer,
            &Headers::from_map(&req.headers),
            Action::ReadKey,
            key,
        )
        .await?;
    if req.method != Method::GET {
        return Ok(method_not_allowed());
    }
    let published = crate::keys::publish::published_keys(&state.keys, key)
        .await
        .map_err(|e| {
            if e.is_not_found() {
                Error::NotFound(format!("no key {key:?} in Transit"))
            } else {
                e.into()
            }
        })?;
    if let Err(stale) = state.keys.check_fresh(key) {
        state.keys.refresh_soon(key, Instant::now());
        return Err(Error::StaleKeyset(stale.to_string()));
    }
    if let Some(why) = published.no_public_keys() {
        return Err(Error::bad_request(why));
    }
    let until_change = published
        .next_change()
        .and_then(|t| t.duration_since(SystemTime::now()).ok())
        .unwrap_or(JWKS_MAX_AGE);
    let max_age = format!("max-age={}", until_change.min(JWKS_MAX_AGE).as_secs());
    let body = serde_json::to_vec(&published.jwks())
        .map_err(|e| Error::Internal(format!("cannot encode the JWK Set: {e}")))?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/jwk-set+json"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_str(&max_age).expect("ASCII"),
            ),
        ],
        body,
    )
        .into_response())
}

/// The body, read within `AEGIS_HTTP_READ_TIMEOUT`, `AEGIS_MAX_BODY_BYTES` and the budget
/// of bytes in flight, decoded; with its bytes held in the budget.
async fn read_request(state: &AppState, req: Request) -> Result<(TransitRequest, Held<'_>), Error> {
    let read_timeout = state.config.http_read_timeout;
    let read = read_body(req, state.config.max_body_bytes, &state.body_budget);
    let (body, held) = tokio::time::timeout(read_timeout, read)
        .await
        .map_err(|_| Error::RequestTimeout {
            after: read_timeout,
        })??;
    Ok((
        TransitRequest::parse(body, state.config.max_batch_items)?,
        held,
    ))
}

/// Past the limit, up to this much more is read and discarded before answering 413, so a
/// client still writing its body reads the answer instead of a broken pipe (Go's
/// net/http does the same). Beyond it the connection is simply closed.
const DRAIN_AFTER_LIMIT: usize = 1024 * 1024;

/// Reads the body, refusing more than `limit` bytes (by Content-Length first, then as
/// read). Its bytes are taken from `budget` before they are held: the declared length
/// before reading (refused at once when not free), or as read when none is declared. The
/// body is one buffer of its exact size (or the one frame it came in): no copy grows.
pub(super) async fn read_body(
    req: Request,
    limit: usize,
    budget: &BodyBudget,
) -> Result<(Bytes, Held<'_>), Error> {
    use http_body_util::BodyExt as _;
    let too_large = Error::PayloadTooLarge { limit };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    if declared.is_some_and(|n| n > limit.saturating_add(DRAIN_AFTER_LIMIT)) {
        return Err(too_large);
    }
    let mut body = req.into_body();
    let mut held = match budget.take(declared.unwrap_or(0).min(limit)) {
        Ok(held) => held,
        Err(busy) => return Err(drained(body, limit, budget, busy).await),
    };
    let mut first: Option<Bytes> = None;
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| Error::bad_request(format!("cannot read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len();
        if seen > limit.saturating_add(DRAIN_AFTER_LIMIT) {
            return Err(too_large);
        }
        if seen > limit {
            continue;
        }
        let more = seen.saturating_sub(held.bytes());
        if let Err(busy) = budget.grow(&mut held, more) {
            drop(held);
            return Err(drained(body, limit - seen, budget, busy).await);
        }
        match first.take() {
            None if buf.is_empty() => first = Some(data),
            None => buf.extend_from_slice(&data),
            Some(one) => {
                buf.reserve_exact(declared.unwrap_or(seen).min(limit));
                buf.extend_from_slice(&one);
                buf.extend_from_slice(&data);
            }
        }
    }
    if seen > limit {
        return Err(too_large);
    }
    Ok((first.unwrap_or_else(|| Bytes::from(buf)), held))
}

/// `refusal`, once the rest of `body` (up to `limit` and [`DRAIN_AFTER_LIMIT`] more) is
/// read and thrown away, so that a client still writing reads the answer (a 503 with
/// `Retry-After`) instead of a reset connection. Nothing read is kept; a few bodies are
/// drained at once ([`BodyBudget::drain`]), others answered at once (their connection is
/// then closed, as for a body far over the limit).
async fn drained(
    mut body: axum::body::Body,
    limit: usize,
    budget: &BodyBudget,
    refusal: Error,
) -> Error {
    use http_body_util::BodyExt as _;
    let Some(_draining) = budget.drain() else {
        return refusal;
    };
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        seen += frame.data_ref().map_or(0, Bytes::len);
        if seen > limit.saturating_add(DRAIN_AFTER_LIMIT) {
            break;
        }
    }
    refusal
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn op(action: Action, key: &'static str, hash: Option<&'static str>) -> Op<'static> {
        Op { action, key, hash }
    }

    #[test]
    fn routes() {
        assert_eq!(
            route("transit", "transit/sign/k").unwrap(),
            op(Action::Sign, "k", None)
        );
        assert_eq!(
            route("transit", "transit/sign/k/sha2-256").unwrap(),
            op(Action::Sign, "k", Some("sha2-256"))
        );
        assert_eq!(
            route("transit", "transit/verify/k").unwrap(),
            op(Action::Verify, "k", None)
        );
        assert_eq!(
            route("transit", "transit/verify/k/sha2-512").unwrap(),
            op(Action::Verify, "k", Some("sha2-512"))
        );
        assert_eq!(
            route("ml/transit", "ml/transit/keys/k").unwrap(),
            op(Action::ReadKey, "k", None)
        );
        for (path, status) in [
            ("other/sign/k", 404),
            ("transitx/sign/k", 404),
            ("transit/encrypt/k", 404),
            ("transit/keys", 404),
            ("transit/keys/k/sha2-256", 404),
            ("transit/sign", 404),
            ("transit/verify/k/", 400),
            ("transit/sign/k/a/b", 404),
        ] {
            assert_eq!(
                route("transit", path).unwrap_err().status(),
                status,
                "{path}"
            );
        }
    }

    /// Each case as OpenBao 2.7.2 answered it (raw requests with `curl --path-as-is`).
    #[test]
    fn paths_are_cleaned_decoded_and_refused_as_vault_does() {
        let t = |p: &str| target(&p.parse::<axum::http::Uri>().unwrap()).ok();
        let path = |p: &str| Some(Target::Path(p.to_string()));
        let to = |p: &str| Some(Target::Redirect(p.to_string()));
        assert_eq!(t("/v1/transit/sign/k%2Dx"), path("transit/sign/k-x"));
        assert_eq!(t("/v1/transit/sign/%6B-x"), path("transit/sign/k-x"));
        assert_eq!(t("/v1/transit/sign/k%2dx"), path("transit/sign/k-x"));
        assert_eq!(
            t("/v1/transit/sign/k%2Fsha2-256"),
            path("transit/sign/k/sha2-256")
        );
        assert_eq!(t("/v1/transit/sign/k-x%2F"), path("transit/sign/k-x/"));
        assert_eq!(
            t("/v1/transit/sign/a/../k-x?q=1"),
            to("/v1/transit/sign/k-x?q=1")
        );
        assert_eq!(t("/v1/transit/sign/./k-x"), to("/v1/transit/sign/k-x"));
        assert_eq!(t("/v1/transit/sign/k-x/."), to("/v1/transit/sign/k-x"));
        assert_eq!(t("/v1/transit/sign/.."), to("/v1/transit"));
        assert_eq!(
            t("/v1/transit/sign/k-x//sha2-256"),
            to("/v1/transit/sign/k-x/sha2-256")
        );
        assert_eq!(t("/v1/transit/sign/k-x/"), path("transit/sign/k-x/"));
        for (raw, message) in [
            ("/v1/transit/sign/%2E%2E", "relative paths not supported"),
            (
                "/v1/transit/sign/a%2F..%2Fk-x",
                "relative paths not supported",
            ),
            (
                "/v1/transit/sign/k-x%2Fsha2-256%2F..",
                "relative paths not supported",
            ),
            ("/v1/transit/sign/k-x%zz", "invalid URL escape \"%zz\""),
            ("/v1/transit/sign/k-x%2", "invalid URL escape \"%2\""),
            ("/v1/transit/sign/k%+1x", "invalid URL escape \"%+1\""),
            (
                "/v1/transit/sign/k-x%00",
                "invalid URL path: not UTF-8, or a control character",
            ),
            (
                "/v1/transit/sign/k%FFx",
                "invalid URL path: not UTF-8, or a control character",
            ),
        ] {
            let err = target(&raw.parse::<axum::http::Uri>().unwrap()).unwrap_err();
            assert_eq!(
                (err.status().as_u16(), err.to_string()),
                (400, message.to_string()),
                "{raw}"
            );
        }
    }

    #[test]
    fn key_names_are_vaults() {
        for name in ["k", "k-x", "k.x", "k_x", "K9", "a..b", "_", "0"] {
            assert!(crate::api::valid_key_name(name), "{name}");
        }
        for name in [
            "", "-kx", "kx-", "k@x", "k x", "k%2Dx", "k/x", ".", "..", "k.", "é",
        ] {
            assert!(!crate::api::valid_key_name(name), "{name}");
        }
    }

    /// The envelope is Vault's, field for field and in Vault's order.
    #[test]
    fn the_envelope_is_vaults() {
        let body = |r: Response| {
            let bytes =
                futures::executor::block_on(axum::body::to_bytes(r.into_body(), usize::MAX))
                    .unwrap();
            String::from_utf8(bytes.to_vec()).unwrap()
        };
        let response = envelope(json!({"valid": true}), Some("w \"1\"".into()));
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let text = body(response);
        let id = text
            .strip_prefix(r#"{"request_id":""#)
            .and_then(|t| t.get(..36))
            .unwrap();
        assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 4);
        assert_eq!(
            text.replace(id, "ID"),
            r#"{"request_id":"ID","lease_id":"","renewable":false,"lease_duration":0,"data":{"valid":true},"wrap_info":null,"warnings":["w \"1\""],"auth":null}"#
        );
        let text = body(envelope(json!({"k": 1}), None));
        assert!(
            text.ends_with(r#""data":{"k":1},"wrap_info":null,"warnings":null,"auth":null}"#),
            "{text}"
        );
    }

    #[test]
    fn an_empty_error_message_is_an_empty_list_as_vault_answers() {
        let body = |e: Error| {
            let response = e.into_response();
            let status = response.status();
            let bytes =
                futures::executor::block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
                    .unwrap();
            (status, String::from_utf8(bytes.to_vec()).unwrap())
        };
        assert_eq!(
            body(Error::NotFound(String::new())),
            (StatusCode::NOT_FOUND, r#"{"errors":[]}"#.to_string())
        );
        assert_eq!(
            body(Error::bad_request("bad")),
            (StatusCode::BAD_REQUEST, r#"{"errors":["bad"]}"#.to_string())
        );
    }

    /// The OpenAPI document describes exactly the routes the router serves, with their
    /// methods: the probes, the document itself and [`TRANSIT_ROUTES`] (which is all that
    /// [`route`] matches). A route added to any of them and not to the document (or the
    /// reverse) fails here.
    #[test]
    fn the_openapi_document_describes_every_route() {
        let doc: Value = serde_json::from_slice(OPENAPI_DOCUMENT).expect("the document is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        let documented: BTreeMap<String, Vec<String>> = doc["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .map(|(path, item)| {
                let mut verbs: Vec<String> = item
                    .as_object()
                    .expect("a path item")
                    .keys()
                    .filter(|k| {
                        [
                            "get", "put", "post", "delete", "options", "head", "patch", "trace",
                        ]
                        .contains(&k.as_str())
                    })
                    .cloned()
                    .collect();
                verbs.sort();
                (path.clone(), verbs)
            })
            .collect();
        let get = || vec!["get".to_string()];
        let mut served: BTreeMap<String, Vec<String>> = PROBE_PATHS
            .iter()
            .chain([&OPENAPI_PATH, &JWKS_PATH])
            .map(|p| (p.to_string(), get()))
            .collect();
        served.insert(
            super::super::model_verify::MODEL_VERIFY_PATH.into(),
            methods(Action::VerifyModel)
                .iter()
                .map(|m| m.as_str().to_ascii_lowercase())
                .collect(),
        );
        for (template, action) in TRANSIT_ROUTES {
            let mut verbs: Vec<String> = methods(*action)
                .iter()
                .map(|m| m.as_str().to_ascii_lowercase())
                .collect();
            verbs.sort();
            served.insert(format!("/v1/{{mount}}/{template}"), verbs);
        }
        assert_eq!(documented, served);
    }
}
