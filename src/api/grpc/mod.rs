//! The gRPC face: `aegis.v1.Signer` (proto/aegis/v1/signer.proto), the standard health
//! service and server reflection, mounted on the same listeners as the HTTP API.
//!
//! gRPC requests are told apart by their path (`/aegis.v1.Signer/...`,
//! `/grpc.health.v1.Health/...`, `/grpc.reflection.v1.ServerReflection/...`), which no
//! Transit route uses, over HTTP/2 (h2c) on the same port or Unix socket. Each Signer
//! call is admitted exactly as an HTTP request ([`AppState::admit`]: `x-vault-request`,
//! `origin`, the caller's token or peer credentials, allowlist, policy), then becomes the
//! Transit JSON the HTTP face would have received, so validation, coalescing, local
//! verification, audit and metrics are the same code. Errors become gRPC statuses through
//! [`Error`]'s one mapping (`error.rs`). The generated code (`generated/`) is committed;
//! `tests/proto_drift.rs` regenerates it with a vendored `protoc` and fails on any
//! difference.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::ConnectInfo;
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use tokio_stream::wrappers::ReceiverStream;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use super::budget::Held;
use super::AppState;
use crate::error::Error;
use crate::keys::{KeySet, VersionStatus};
use crate::policy::{Action, Caller, Headers, Peer};
use crate::telemetry::metrics::Operation;
use crate::transit::TransitRequest;

/// The code generated from proto/aegis/v1/signer.proto (server side only).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    include!("generated/aegis.v1.rs");
}

/// The encoded `FileDescriptorSet` of the proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("generated/aegis.v1.descriptor.bin");

use pb::signer_server::{Signer, SignerServer};

/// The gRPC services as an axum router (no fallback, so it merges with the HTTP
/// router), and the health reporter that [`report_health`] keeps in step with readiness.
pub fn routes(state: Arc<AppState>) -> (Router, tonic_health::server::HealthReporter) {
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let decodes = "the committed descriptor set decodes (tests/proto_drift.rs)";
    let reflection_v1 = reflection().build_v1().expect(decodes);
    let reflection_v1alpha = reflection().build_v1alpha().expect(decodes);
    // The same bound on a request as the HTTP body limit (AEGIS_MAX_BODY_BYTES); the
    // budget of bytes in flight is taken in each call (`GrpcSigner::hold`).
    let max_message = state.config.max_body_bytes;
    let signer = SignerServer::new(GrpcSigner { state }).max_decoding_message_size(max_message);
    let router = Router::new()
        .route_service(&path_of(&signer), signer)
        .route_service(&path_of(&health), health)
        .route_service(&path_of(&reflection_v1), reflection_v1)
        .route_service(&path_of(&reflection_v1alpha), reflection_v1alpha);
    (router, reporter)
}

/// The path prefix a tonic service answers on: `/{package.Service}/{method}`.
fn path_of<S: NamedService>(_: &S) -> String {
    format!("/{}/{{*rest}}", S::NAME)
}

/// Keeps the health service (overall and `aegis.v1.Signer`) in step with readiness:
/// SERVING while ready to sign, NOT_SERVING otherwise.
pub async fn report_health(state: Arc<AppState>, reporter: tonic_health::server::HealthReporter) {
    use tonic_health::ServingStatus;
    let mut last = None;
    loop {
        let serving = state.ready().is_ok();
        if last != Some(serving) {
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            reporter
                .set_service_status(<SignerServer<GrpcSigner> as NamedService>::NAME, status)
                .await;
            last = Some(serving);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The `aegis.v1.Signer` implementation.
pub struct GrpcSigner {
    state: Arc<AppState>,
}

impl GrpcSigner {
    /// Admits the call (see [`AppState::admit`]) with the connection's peer and metadata.
    async fn admit<T>(&self, req: &Request<T>, action: Action, key: &str) -> Result<Caller, Error> {
        let peer = req
            .extensions()
            .get::<ConnectInfo<Peer>>()
            .map(|c| c.0)
            .unwrap_or(Peer::Unix(None));
        let headers = Headers::from_map(AsRef::<http::HeaderMap>::as_ref(req.metadata()));
        Box::pin(self.state.admit(&peer, &headers, action, key)).await
    }

    /// Runs one call in a request span (continuing the caller's `traceparent` metadata)
    /// and counts it as the HTTP face does.
    async fn observed<T>(
        &self,
        operation: Operation,
        key: &str,
        metadata: &tonic::metadata::MetadataMap,
        call: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let span = super::request_span(operation, key, metadata.as_ref());
        span.record("rpc.system", "grpc");
        // Boxed: the signer's and verifier's futures are deep (as on the HTTP face).
        let result = Box::pin(call.instrument(span.clone())).await;
        let status = match &result {
            Ok(_) => 200,
            Err(e) => e.status().as_u16(),
        };
        let outcome = crate::telemetry::metrics::Outcome::from_status(status);
        span.record("outcome", outcome.as_str());
        if status >= 500 {
            crate::telemetry::trace::mark_error(&span, outcome.as_str());
        }
        self.state
            .count_request(operation, key, status, started.elapsed());
        result.map(Response::new).map_err(Status::from)
    }

    /// Takes the message's bytes from the budget of bytes in flight (see `api::budget`),
    /// held until the call ends; a refusal is audited. tonic has decoded the message
    /// already (at most `AEGIS_MAX_BODY_BYTES`); what the budget bounds is the work and
    /// copies made from it.
    async fn hold(
        &self,
        caller: &Caller,
        key: &str,
        message: &impl prost::Message,
    ) -> Result<Held<'_>, Error> {
        let held = self.state.body_budget.take(message.encoded_len());
        self.state.refused_if_err(&caller.actor, key, held).await
    }

    async fn sign_items(
        &self,
        caller: &Caller,
        key: &str,
        options: Option<&pb::SignOptions>,
        prehashed: bool,
        items: Vec<Map<String, Value>>,
    ) -> Result<pb::SignResponse, Error> {
        let request = transit_request(&self.state, options, prehashed, items);
        let request = self
            .state
            .refused_if_err(&caller.actor, key, request)
            .await?;
        let data = Box::pin(self.state.sign_audited(&caller.actor, key, None, &request)).await?;
        let results = answers(&request, &data)
            .map(|a| pb::SignResult {
                signature: a["signature"].as_str().unwrap_or_default().to_string(),
                key_version: a["key_version"]
                    .as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or_default(),
                reference: a["reference"].as_str().unwrap_or_default().to_string(),
                error: a["error"].as_str().unwrap_or_default().to_string(),
            })
            .collect();
        Ok(pb::SignResponse { results })
    }
}

/// Transit's answers one by one: the batch results, or the single answer.
fn answers<'a>(request: &TransitRequest, data: &'a Value) -> impl Iterator<Item = &'a Value> {
    let (n, batch) = (request.items.len(), request.batch);
    (0..n).map(move |i| {
        if batch {
            &data["batch_results"][i]
        } else {
            data
        }
    })
}

/// The Transit JSON body the HTTP face would have received, parsed the same way.
fn transit_request(
    state: &AppState,
    options: Option<&pb::SignOptions>,
    prehashed: bool,
    items: Vec<Map<String, Value>>,
) -> Result<TransitRequest, Error> {
    if items.is_empty() {
        return Err(Error::bad_request("at least one item is required"));
    }
    let mut body = Map::new();
    if let Some(o) = options {
        for (name, value) in [
            ("hash_algorithm", &o.hash_algorithm),
            ("signature_algorithm", &o.signature_algorithm),
            ("marshaling_algorithm", &o.marshaling_algorithm),
            ("salt_length", &o.salt_length),
        ] {
            if !value.is_empty() {
                body.insert(name.into(), json!(value));
            }
        }
        if o.key_version != 0 {
            body.insert("key_version".into(), json!(o.key_version));
        }
    }
    if prehashed || options.is_some_and(|o| o.prehashed) {
        body.insert("prehashed".into(), json!(true));
    }
    if items.len() == 1 {
        body.extend(items.into_iter().flatten());
    } else {
        body.insert(
            "batch_input".into(),
            Value::Array(items.into_iter().map(Value::Object).collect()),
        );
    }
    let bytes = serde_json::to_vec(&body).map_err(|e| Error::Internal(e.to_string()))?;
    TransitRequest::parse(bytes.into(), state.config.max_batch_items)
}

fn b64(bytes: &[u8]) -> Value {
    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// One Transit item: `input` (base64), and `context`/`reference` when given.
fn item(input: &[u8], context: &[u8], reference: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("input".into(), b64(input));
    if !context.is_empty() {
        m.insert("context".into(), b64(context));
    }
    if !reference.is_empty() {
        m.insert("reference".into(), json!(reference));
    }
    m
}

/// The proto view of a cached keyset: every version with its validity now.
fn key_message(set: &KeySet) -> pb::Key {
    let versions = set
        .versions
        .values()
        .map(|v| {
            let (validity, reason) = match set.version_status(v.version) {
                VersionStatus::Valid(_) => (pb::Validity::Valid, String::new()),
                VersionStatus::TooOld => (pb::Validity::TooOld, VersionStatus::TOO_OLD.into()),
                VersionStatus::Retired { message, revoked } => (
                    if revoked {
                        pb::Validity::Revoked
                    } else {
                        pb::Validity::Expired
                    },
                    message,
                ),
                VersionStatus::TooNew | VersionStatus::Missing => {
                    (pb::Validity::Unspecified, String::new())
                }
            };
            pb::KeyVersion {
                version: v.version,
                public_key: v.public_key.clone(),
                creation_time: v.creation_time.clone(),
                validity: validity as i32,
                retire_after: set
                    .retention
                    .get(&v.version)
                    .map(|r| r.retire_after_text.clone())
                    .unwrap_or_default(),
                reason,
            }
        })
        .collect();
    pb::Key {
        name: set.name.clone(),
        r#type: set.key_type.clone(),
        latest_version: set.latest_version,
        min_decryption_version: set.min_decryption_version,
        versions,
    }
}

/// The cached keyset of `key` as a message, loading it when absent; an unknown key is
/// NOT_FOUND.
async fn load_key(state: &AppState, key: &str) -> Result<pb::Key, Error> {
    load_set(state, key).await.map(|set| key_message(&set))
}

async fn load_set(state: &AppState, key: &str) -> Result<Arc<KeySet>, Error> {
    state.keys.get(key).await.map_err(|e| {
        if e.is_not_found() {
            Error::NotFound(format!("no key {key:?} in Transit"))
        } else {
            e.into()
        }
    })
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// At most this many keys in one WatchKeys call.
const MAX_WATCHED_KEYS: usize = 100;

#[tonic::async_trait]
impl Signer for GrpcSigner {
    async fn sign(
        &self,
        request: Request<pb::SignRequest>,
    ) -> Result<Response<pb::SignResponse>, Status> {
        let key = request.get_ref().key.clone();
        self.observed(Operation::Sign, &key, request.metadata(), async {
            let caller = self.admit(&request, Action::Sign, &key).await?;
            let req = request.get_ref();
            let _held = self.hold(&caller, &key, req).await?;
            let items = req
                .items
                .iter()
                .map(|i| item(&i.input, &i.context, &i.reference))
                .collect();
            self.sign_items(&caller, &key, req.options.as_ref(), false, items)
                .await
        })
        .await
    }

    async fn sign_digest(
        &self,
        request: Request<pb::SignDigestRequest>,
    ) -> Result<Response<pb::SignResponse>, Status> {
        let key = request.get_ref().key.clone();
        self.observed(Operation::Sign, &key, request.metadata(), async {
            let caller = self.admit(&request, Action::Sign, &key).await?;
            let req = request.get_ref();
            let _held = self.hold(&caller, &key, req).await?;
            if req.digest.is_empty() {
                return Err(Error::bad_request("digest is required"));
            }
            let items = vec![item(&req.digest, &[], "")];
            self.sign_items(&caller, &key, req.options.as_ref(), true, items)
                .await
        })
        .await
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let key = request.get_ref().key.clone();
        self.observed(Operation::Verify, &key, request.metadata(), async {
            let caller = self.admit(&request, Action::Verify, &key).await?;
            let req = request.get_ref();
            let _held = self.hold(&caller, &key, req).await?;
            let items = req
                .items
                .iter()
                .map(|i| {
                    let mut m = item(&i.input, &i.context, &i.reference);
                    m.insert("signature".into(), json!(i.signature));
                    m
                })
                .collect();
            let request = transit_request(&self.state, req.options.as_ref(), false, items);
            let request = self
                .state
                .refused_if_err(&caller.actor, &key, request)
                .await?;
            let outcome = Box::pin(self.state.verifier.verify(&key, None, &request)).await;
            self.state
                .audit_verify(&caller.actor, &key, &request, &outcome)
                .await;
            let data = outcome?;
            let results = answers(&request, &data)
                .map(|a| pb::VerifyResult {
                    valid: a["valid"] == true,
                    reference: a["reference"].as_str().unwrap_or_default().to_string(),
                    error: a["error"].as_str().unwrap_or_default().to_string(),
                })
                .collect();
            Ok(pb::VerifyResponse { results })
        })
        .await
    }

    async fn get_key(
        &self,
        request: Request<pb::GetKeyRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        let key = request.get_ref().key.clone();
        self.observed(Operation::ReadKey, &key, request.metadata(), async {
            self.admit(&request, Action::ReadKey, &key).await?;
            Box::pin(load_key(&self.state, &key)).await
        })
        .await
    }

    async fn verify_model(
        &self,
        request: Request<pb::VerifyModelRequest>,
    ) -> Result<Response<pb::VerifyModelResponse>, Status> {
        let key = request.get_ref().key.clone();
        self.observed(Operation::VerifyModel, &key, request.metadata(), async {
            super::model_verify::enabled(&self.state)?;
            let caller = self.admit(&request, Action::VerifyModel, &key).await?;
            let req = request.get_ref();
            let asked = crate::model::runtime::Request {
                model: req.model.clone().into(),
                signature: req.signature.clone().into(),
                key: key.clone(),
                ignore_paths: req.ignore_paths.iter().map(Into::into).collect(),
                ignore_git_paths: !req.hash_git_paths,
                allow_symlinks: false,
            };
            let data = super::model_verify::check(&self.state, &caller.actor, asked).await?;
            Ok(model_answer(&data))
        })
        .await
    }

    type WatchKeysStream = ReceiverStream<Result<pb::KeySet, Status>>;

    async fn watch_keys(
        &self,
        request: Request<pb::WatchKeysRequest>,
    ) -> Result<Response<Self::WatchKeysStream>, Status> {
        let mut keys = request.get_ref().keys.clone();
        if keys.is_empty() {
            keys = match self.state.config.keys.names() {
                Some(allowlist) => allowlist.iter().cloned().collect(),
                None => {
                    return Err(Error::bad_request(
                        "name the keys to watch (no allowlist AEGIS_KEYS to default to)",
                    )
                    .into())
                }
            };
        }
        keys.sort();
        keys.dedup();
        if keys.len() > MAX_WATCHED_KEYS {
            return Err(Error::bad_request(format!(
                "at most {MAX_WATCHED_KEYS} keys can be watched in one call"
            ))
            .into());
        }
        for key in &keys {
            self.admit(&request, Action::ReadKey, key).await?;
        }
        let mut updates = self.state.keys.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut last: Option<pb::KeySet> = None;
            loop {
                updates.mark_unchanged();
                let mut set = pb::KeySet::default();
                // A retention window closing changes a version's validity with no
                // change in Vault: wake then too.
                let mut next_change: Option<SystemTime> = None;
                for key in &keys {
                    match Box::pin(load_set(&state, key)).await {
                        Ok(k) => {
                            let change = k.next_validity_change(SystemTime::now());
                            next_change = next_change.into_iter().chain(change).min();
                            set.keys.push(key_message(&k));
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    }
                }
                let wake = next_change.map(|at| {
                    let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
                    // Just past the instant, so the version reads as expired.
                    tokio::time::Instant::now() + wait + Duration::from_millis(1)
                });
                if last.as_ref() != Some(&set) {
                    if tx.send(Ok(set.clone())).await.is_err() {
                        return;
                    }
                    last = Some(set);
                }
                tokio::select! {
                    changed = updates.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    () = tx.closed() => return,
                    () = sleep_until_some(wake) => {}
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The HTTP answer's `data` (`api::model_verify`) as the gRPC message.
fn model_answer(data: &Value) -> pb::VerifyModelResponse {
    let names = |field: &str| -> Vec<String> {
        data[field]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let text = |field: &str| data[field].as_str().unwrap_or_default().to_string();
    pb::VerifyModelResponse {
        valid: data["valid"] == true,
        key_version: data["key_version"].as_u64().unwrap_or_default() as u32,
        model_name: text("model_name"),
        files: data["files"].as_u64().unwrap_or_default(),
        bytes: data["bytes"].as_u64().unwrap_or_default(),
        reason: text("reason"),
        error: text("error"),
        changed: names("changed"),
        added: names("added"),
        missing: names("missing"),
    }
}
