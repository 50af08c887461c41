//! The metric set: every instrument Aegis records, with bounded label values.
//!
//! Instruments are OpenTelemetry's, created once from the global meter provider that
//! [`super::init`] installs (before that, and in commands that never install one, they
//! are no-ops). The Prometheus exporter serves them at `GET /metrics` under exactly the
//! names below; OTLP carries the same names.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `aegis_requests_total` | counter | operation, key, outcome |
//! | `aegis_request_duration_seconds` | histogram | operation |
//! | `aegis_verify_results_total` | counter | key, result |
//! | `aegis_sign_batch_size` | histogram (items per Transit sign call) | |
//! | `aegis_vault_requests_total` | counter | endpoint, status |
//! | `aegis_vault_request_duration_seconds` | histogram | endpoint |
//! | `aegis_vault_auth_failures_total` | counter | method |
//! | `aegis_keyset_refreshes_total` | counter | outcome |
//! | `aegis_keyset_watch_total` | counter (listings of the retention records' metadata) | outcome |
//! | `aegis_keyset_watch_changes_total` | counter (keys read because their record changed) | |
//! | `aegis_keyset_watch_age_seconds`, `aegis_keyset_watch_interval_seconds` | gauge (since the last successful listing; `AEGIS_KEYSET_WATCH_INTERVAL`) | |
//! | `aegis_retention_record_refused_total` | counter (once per refused record) | key, reason |
//! | `aegis_retention_record_trusted` | gauge (0/1, at each refresh) | key |
//! | `aegis_ready`, `aegis_vault_authenticated` | gauge (0/1) | |
//! | `aegis_vault_token_ttl_seconds` | gauge | |
//! | `aegis_key_latest_version`, `aegis_key_oldest_valid_version` | gauge | key |
//! | `aegis_key_age_seconds`, `aegis_key_rotation_period_seconds` | gauge | key |
//! | `aegis_keyset_age_seconds`, `aegis_keyset_max_age_seconds`, `aegis_keyset_refresh_interval_seconds` | gauge (since the last successful read from Vault; `AEGIS_MAX_KEYSET_AGE`; `AEGIS_REFRESH_INTERVAL`) | key |
//! | `aegis_build_info` | gauge (1) | version |
//! | `aegis_model_verify_failures_total` | counter (`aegis model verify`, pushed over OTLP) | key, reason |
//! | `aegis_audit_events_dropped_total` | counter (events not recorded) | reason |
//! | `aegis_audit_refused_signs_total` | counter (signatures not made: no room for their audit events) | |
//! | `aegis_sign_queued` | up-down counter (single signs waiting for a coalesced Transit call now) | |
//! | `aegis_body_budget_refusals_total` | counter (requests refused with 503: over `AEGIS_MAX_BODY_BYTES_IN_FLIGHT`) | |
//!
//! Label values come from closed enums, except `key`: see [`KeyLabels`].

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, ObservableGauge, UpDownCounter};
use opentelemetry::{KeyValue, StringValue, Value};

/// What a caller asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Sign,
    Verify,
    ReadKey,
    ListKeys,
    VerifyModel,
    Other,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Sign => "sign",
            Operation::Verify => "verify",
            Operation::ReadKey => "read_key",
            Operation::ListKeys => "list_keys",
            Operation::VerifyModel => "verify_model",
            Operation::Other => "other",
        }
    }
}

/// How a request ended, from its status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// 4xx: the caller's mistake or a refusal.
    ClientError,
    /// 502: Vault answered with an error the caller could not have avoided.
    VaultError,
    /// 503/504: Vault unreachable, sealed, or the sidecar not authenticated.
    Unavailable,
    InternalError,
}

impl Outcome {
    pub fn from_status(status: u16) -> Self {
        match status {
            200..=399 => Outcome::Ok,
            400..=499 => Outcome::ClientError,
            502 => Outcome::VaultError,
            503 | 504 => Outcome::Unavailable,
            _ => Outcome::InternalError,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ClientError => "client_error",
            Outcome::VaultError => "vault_error",
            Outcome::Unavailable => "unavailable",
            Outcome::InternalError => "internal_error",
        }
    }
}

/// The verdict on one verified signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyResult {
    Valid,
    /// The signature does not match, or cannot be parsed.
    Invalid,
    /// Made by a version past its retention window, or below `min_decryption_version`.
    Retired,
    /// Made by a version recorded as revoked.
    Revoked,
    /// A version within range whose public key nobody has any more.
    UnknownVersion,
    /// Above the key's latest version.
    TooNew,
}

impl VerifyResult {
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyResult::Valid => "valid",
            VerifyResult::Invalid => "invalid",
            VerifyResult::Retired => "retired",
            VerifyResult::Revoked => "revoked",
            VerifyResult::UnknownVersion => "unknown_version",
            VerifyResult::TooNew => "too_new",
        }
    }
}

/// The Vault endpoint a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaultEndpoint {
    Sign,
    Verify,
    ReadKey,
    ListKeys,
    Rotate,
    Config,
    Login,
    Renew,
    LookupSelf,
    KvRead,
    KvWrite,
    KvList,
    Health,
    Other,
}

impl VaultEndpoint {
    /// Classifies a raw request by method and path (below `/v1/`).
    pub fn from_request(method: &reqwest::Method, path: &str) -> Self {
        let segments: Vec<&str> = path.split('/').collect();
        let read = *method == reqwest::Method::GET || method.as_str() == "LIST";
        let has = |s: &str| segments.contains(&s);
        match segments.as_slice() {
            ["sys", "health"] => VaultEndpoint::Health,
            ["auth", "token", "lookup-self"] => VaultEndpoint::LookupSelf,
            ["auth", "token", "renew-self"] => VaultEndpoint::Renew,
            ["auth", .., "login"] | ["auth", .., "login", _] => VaultEndpoint::Login,
            [.., "keys", _, "rotate"] => VaultEndpoint::Rotate,
            [.., "keys", _, "config"] => VaultEndpoint::Config,
            [.., "keys"] if read => VaultEndpoint::ListKeys,
            [.., "keys", _] if read => VaultEndpoint::ReadKey,
            _ if has("sign") => VaultEndpoint::Sign,
            _ if has("verify") => VaultEndpoint::Verify,
            _ if has("detailed-metadata") && read => VaultEndpoint::KvList,
            _ if has("data") && read => VaultEndpoint::KvRead,
            _ if has("data") => VaultEndpoint::KvWrite,
            _ => VaultEndpoint::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VaultEndpoint::Sign => "sign",
            VaultEndpoint::Verify => "verify",
            VaultEndpoint::ReadKey => "read_key",
            VaultEndpoint::ListKeys => "list_keys",
            VaultEndpoint::Rotate => "rotate",
            VaultEndpoint::Config => "config",
            VaultEndpoint::Login => "login",
            VaultEndpoint::Renew => "renew",
            VaultEndpoint::LookupSelf => "lookup_self",
            VaultEndpoint::KvRead => "kv_read",
            VaultEndpoint::KvWrite => "kv_write",
            VaultEndpoint::KvList => "kv_list",
            VaultEndpoint::Health => "health",
            VaultEndpoint::Other => "other",
        }
    }
}

/// Bounds the `key` label: a key is named when the allowlist names it, or, without an
/// allowlist, when it exists in Vault, up to [`KeyLabels::MAX`] distinct names. Anything
/// else (a caller's typo, a scan of random names) is counted as `_other`.
///
/// Labels are handed out as shared values ([`KeyLabels::value`]): a request clones a
/// reference count, never a string. With an allowlist the table is fixed at start and read
/// without a lock; without one, names already seen are read under a shared lock.
pub struct KeyLabels {
    allowlist: Option<HashMap<String, Value>>,
    seen: RwLock<HashMap<String, Value>>,
}

impl KeyLabels {
    pub const MAX: usize = 256;
    pub const OTHER: &'static str = "_other";

    pub fn new(allowlist: Option<BTreeSet<String>>) -> Self {
        KeyLabels {
            allowlist: allowlist.map(|names| {
                names
                    .into_iter()
                    .map(|name| {
                        let value = shared(&name);
                        (name, value)
                    })
                    .collect()
            }),
            seen: RwLock::new(HashMap::new()),
        }
    }

    /// The label for `key`; `exists` says whether Vault has such a key.
    pub fn label(&self, key: &str, exists: bool) -> String {
        self.value(key, || exists).as_str().into_owned()
    }

    /// The label for `key` as a metric attribute value; `exists` (asked only when the
    /// answer depends on it) says whether Vault has such a key.
    pub fn value(&self, key: &str, exists: impl FnOnce() -> bool) -> Value {
        if let Some(allow) = &self.allowlist {
            return allow.get(key).cloned().unwrap_or_else(other);
        }
        if let Some(value) = self.seen.read().expect("key labels lock").get(key) {
            return value.clone();
        }
        if !exists() {
            return other();
        }
        let mut seen = self.seen.write().expect("key labels lock");
        if let Some(value) = seen.get(key) {
            return value.clone();
        }
        if seen.len() < Self::MAX {
            let value = shared(key);
            seen.insert(key.to_string(), value.clone());
            return value;
        }
        other()
    }
}

/// The `_other` key label (static text: no allocation).
fn other() -> Value {
    Value::from(KeyLabels::OTHER)
}

/// A label value shared by reference count.
fn shared(text: &str) -> Value {
    Value::String(StringValue::from(Arc::<str>::from(text)))
}

/// Buckets for latencies: 100 µs (a local verify) to 10 s (the Vault total timeout).
const SECONDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Buckets for items per Transit sign call.
const BATCH: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 249.0, 500.0, 1000.0,
];

/// Why an audit event was not recorded (`aegis_audit_events_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditDrop {
    /// The queue stayed full for `AEGIS_AUDIT_QUEUE_TIMEOUT`.
    QueueFull,
    /// The writer thread is gone.
    WriterStopped,
}

impl AuditDrop {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditDrop::QueueFull => "queue_full",
            AuditDrop::WriterStopped => "writer_stopped",
        }
    }
}

/// The recording instruments.
pub struct Metrics {
    requests: Counter<u64>,
    request_duration: Histogram<f64>,
    verify_results: Counter<u64>,
    sign_batch_size: Histogram<u64>,
    vault_requests: Counter<u64>,
    vault_duration: Histogram<f64>,
    auth_failures: Counter<u64>,
    keyset_refreshes: Counter<u64>,
    keyset_watch: Counter<u64>,
    keyset_watch_changes: Counter<u64>,
    model_verify_failures: Counter<u64>,
    records_refused: Counter<u64>,
    record_trusted: Gauge<f64>,
    audit_dropped: Counter<u64>,
    audit_refused_signs: Counter<u64>,
    body_budget_refusals: Counter<u64>,
    sign_queued: UpDownCounter<i64>,
    sync_writes: Counter<u64>,
    sync_errors: Counter<u64>,
    sync_rounds: Counter<u64>,
    sync_last_success: Gauge<f64>,
}

/// The process's instruments.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| Metrics::new(&meter()))
}

fn meter() -> Meter {
    opentelemetry::global::meter("aegis")
}

impl Metrics {
    fn new(meter: &Meter) -> Self {
        let seconds = |name: &'static str, help: &'static str| {
            meter
                .f64_histogram(name)
                .with_description(help)
                .with_boundaries(SECONDS.to_vec())
                .build()
        };
        Metrics {
            requests: meter
                .u64_counter("aegis_requests_total")
                .with_description("Requests served, by operation, key and outcome")
                .build(),
            request_duration: seconds(
                "aegis_request_duration_seconds",
                "Time to answer a request, by operation",
            ),
            verify_results: meter
                .u64_counter("aegis_verify_results_total")
                .with_description("Verified signatures, by key and result")
                .build(),
            sign_batch_size: meter
                .u64_histogram("aegis_sign_batch_size")
                .with_description("Items per Transit sign call")
                .with_boundaries(BATCH.to_vec())
                .build(),
            vault_requests: meter
                .u64_counter("aegis_vault_requests_total")
                .with_description(
                    "Requests to Vault, by endpoint and HTTP status (or \"unreachable\")",
                )
                .build(),
            vault_duration: seconds(
                "aegis_vault_request_duration_seconds",
                "Time Vault took to answer, by endpoint",
            ),
            auth_failures: meter
                .u64_counter("aegis_vault_auth_failures_total")
                .with_description("Failed logins to Vault and tokens Vault stopped accepting")
                .build(),
            model_verify_failures: meter
                .u64_counter("aegis_model_verify_failures_total")
                .with_description("Models that failed `aegis model verify`, by key and reason")
                .build(),
            keyset_refreshes: meter
                .u64_counter("aegis_keyset_refreshes_total")
                .with_description("Reads of a key's public keys and retention record from Vault")
                .build(),
            keyset_watch: meter
                .u64_counter("aegis_keyset_watch_total")
                .with_description("Listings of the retention records' metadata, by outcome")
                .build(),
            keyset_watch_changes: meter
                .u64_counter("aegis_keyset_watch_changes_total")
                .with_description("Keys read from Vault because their retention record changed")
                .build(),
            records_refused: meter
                .u64_counter("aegis_retention_record_refused_total")
                .with_description("Retention records refused (once per record), by key and reason")
                .build(),
            record_trusted: meter
                .f64_gauge("aegis_retention_record_trusted")
                .with_description(
                    "1 when the key's retention record last read was trusted, 0 when refused",
                )
                .build(),
            audit_dropped: meter
                .u64_counter("aegis_audit_events_dropped_total")
                .with_description("Audit events not recorded, by reason")
                .build(),
            audit_refused_signs: meter
                .u64_counter("aegis_audit_refused_signs_total")
                .with_description(
                    "Signatures refused before Vault was asked: the audit queue had no room for their events",
                )
                .build(),
            sign_queued: meter
                .i64_up_down_counter("aegis_sign_queued")
                .with_description("Single sign requests waiting for a coalesced Transit call")
                .build(),
            sync_writes: meter
                .u64_counter("aegis_sync_writes_total")
                .with_description("Kubernetes writes by `aegis sync`, by kind and action (create, update, delete, restart)")
                .build(),
            sync_errors: meter
                .u64_counter("aegis_sync_errors_total")
                .with_description("Targets `aegis sync` could not bring in step, by stage (vault, kubernetes, mapping, audit)")
                .build(),
            sync_rounds: meter
                .u64_counter("aegis_sync_rounds_total")
                .with_description("Rounds of `aegis sync`, by outcome (ok, failed, aborted: nothing written)")
                .build(),
            sync_last_success: meter
                .f64_gauge("aegis_sync_last_success_timestamp_seconds")
                .with_description("Unix time of the last `aegis sync` round in which every target was in step")
                .build(),
            body_budget_refusals: meter
                .u64_counter("aegis_body_budget_refusals_total")
                .with_description(
                    "Requests refused with 503: their body would take the request bytes in flight over AEGIS_MAX_BODY_BYTES_IN_FLIGHT",
                )
                .build(),
        }
    }

    /// Creates the series alerts watch at 0, so that `increase()` sees their first event:
    /// auth failures of `method`, keyset refresh outcomes, audit drops and refused signs,
    /// and each verify result of each allowlisted key.
    pub fn start_series<'a>(&self, method: &'static str, keys: impl IntoIterator<Item = &'a str>) {
        self.auth_failures
            .add(0, &[KeyValue::new("method", method)]);
        for outcome in ["ok", "error"] {
            self.keyset_refreshes
                .add(0, &[KeyValue::new("outcome", outcome)]);
            self.keyset_watch
                .add(0, &[KeyValue::new("outcome", outcome)]);
        }
        self.keyset_watch_changes.add(0, &[]);
        for reason in [AuditDrop::QueueFull, AuditDrop::WriterStopped] {
            self.audit_dropped
                .add(0, &[KeyValue::new("reason", reason.as_str())]);
        }
        self.audit_refused_signs.add(0, &[]);
        self.body_budget_refusals.add(0, &[]);
        self.sign_queued.add(0, &[]);
        for key in keys {
            for reason in crate::keys::trust::Refusal::ALL {
                self.records_refused.add(
                    0,
                    &[
                        KeyValue::new("key", key.to_string()),
                        KeyValue::new("reason", reason.as_str()),
                    ],
                );
            }
            for result in [
                VerifyResult::Valid,
                VerifyResult::Invalid,
                VerifyResult::Retired,
                VerifyResult::Revoked,
                VerifyResult::UnknownVersion,
                VerifyResult::TooNew,
            ] {
                self.verify_results(key.to_string(), result, 0);
            }
        }
    }

    /// One answered request; `key` is its label (see [`KeyLabels::value`]).
    pub fn request(&self, op: Operation, key: impl Into<Value>, outcome: Outcome, took: Duration) {
        self.requests.add(
            1,
            &[
                KeyValue::new("operation", op.as_str()),
                KeyValue::new("key", key),
                KeyValue::new("outcome", outcome.as_str()),
            ],
        );
        self.request_duration.record(
            took.as_secs_f64(),
            &[KeyValue::new("operation", op.as_str())],
        );
    }

    /// `n` signatures of `key` (a label, see [`KeyLabels::value`]) judged `result`.
    pub fn verify_results(&self, key: impl Into<Value>, result: VerifyResult, n: u64) {
        self.verify_results.add(
            n,
            &[
                KeyValue::new("key", key),
                KeyValue::new("result", result.as_str()),
            ],
        );
    }

    /// One Transit sign call carrying `items` inputs.
    pub fn sign_batch(&self, items: usize) {
        self.sign_batch_size.record(items as u64, &[]);
    }

    /// One attempt at a Vault request: its HTTP status, or `None` when no answer came.
    pub fn vault_request(&self, endpoint: VaultEndpoint, status: Option<u16>, took: Duration) {
        let status = status_label(status);
        self.vault_requests.add(
            1,
            &[
                KeyValue::new("endpoint", endpoint.as_str()),
                KeyValue::new("status", status),
            ],
        );
        self.vault_duration.record(
            took.as_secs_f64(),
            &[KeyValue::new("endpoint", endpoint.as_str())],
        );
    }

    /// A login Vault refused or could not answer, or a token it stopped accepting.
    pub fn auth_failure(&self, method: &'static str) {
        self.auth_failures
            .add(1, &[KeyValue::new("method", method)]);
    }

    /// A model that did not verify (`reason`: the error's class, see `model::ModelError`).
    pub fn model_verify_failure(&self, key: &str, reason: &'static str) {
        self.model_verify_failures.add(
            1,
            &[
                KeyValue::new("key", key.to_string()),
                KeyValue::new("reason", reason),
            ],
        );
    }

    /// A retention record refused for `reason` (a `keys::trust::Refusal` name).
    pub fn record_refused(&self, key: &str, reason: &'static str) {
        self.records_refused.add(
            1,
            &[
                KeyValue::new("key", key.to_string()),
                KeyValue::new("reason", reason),
            ],
        );
    }

    /// Whether `key`'s retention record last read was trusted.
    pub fn record_trusted(&self, key: &str, trusted: bool) {
        self.record_trusted.record(
            if trusted { 1.0 } else { 0.0 },
            &[KeyValue::new("key", key.to_string())],
        );
    }

    /// One audit event not recorded.
    pub fn audit_dropped(&self, reason: AuditDrop) {
        self.audit_dropped
            .add(1, &[KeyValue::new("reason", reason.as_str())]);
    }

    /// `signs` signatures refused because the audit queue had no room for their events.
    pub fn audit_refused_signs(&self, signs: u64) {
        self.audit_refused_signs.add(signs, &[]);
    }

    /// `n` more (or, negative, fewer) single signs waiting for a coalesced Transit call.
    pub fn sign_queued(&self, n: i64) {
        self.sign_queued.add(n, &[]);
    }

    /// One request refused: its body would go over the request bytes in flight.
    pub fn body_budget_refusal(&self) {
        self.body_budget_refusals.add(1, &[]);
    }

    /// One listing of the retention records' metadata by the keyset watcher.
    pub fn keyset_watch(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.keyset_watch
            .add(1, &[KeyValue::new("outcome", outcome)]);
    }

    /// The watcher read a key because its record changed.
    pub fn keyset_watch_change(&self) {
        self.keyset_watch_changes.add(1, &[]);
    }

    /// One Kubernetes write by `aegis sync` (label values from `sync`'s closed enums).
    pub fn sync_write(&self, kind: &'static str, action: &'static str) {
        self.sync_writes.add(
            1,
            &[KeyValue::new("kind", kind), KeyValue::new("action", action)],
        );
    }

    /// One target `aegis sync` failed at `stage`.
    pub fn sync_error(&self, stage: &'static str) {
        self.sync_errors.add(1, &[KeyValue::new("stage", stage)]);
    }

    /// One round of `aegis sync`; a fully successful one also sets the last-success time.
    pub fn sync_round(&self, outcome: &'static str, now: std::time::SystemTime) {
        self.sync_rounds
            .add(1, &[KeyValue::new("outcome", outcome)]);
        if outcome == "ok" {
            let at = now
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            self.sync_last_success.record(at.as_secs_f64(), &[]);
        }
    }

    pub fn keyset_refresh(&self, ok: bool) {
        self.keyset_refreshes.add(
            1,
            &[KeyValue::new("outcome", if ok { "ok" } else { "error" })],
        );
    }
}

/// The `status` label of `aegis_vault_requests_total`: the HTTP status, or `unreachable`;
/// the statuses Vault commonly answers are static text, others are formatted.
fn status_label(status: Option<u16>) -> Value {
    let text = match status {
        None => "unreachable",
        Some(200) => "200",
        Some(204) => "204",
        Some(307) => "307",
        Some(400) => "400",
        Some(403) => "403",
        Some(404) => "404",
        Some(429) => "429",
        Some(500) => "500",
        Some(502) => "502",
        Some(503) => "503",
        Some(other) => return Value::from(other.to_string()),
    };
    Value::from(text)
}

/// What the state gauges read at each collection.
pub struct KeyGauge {
    pub key: String,
    pub latest_version: u32,
    pub oldest_valid_version: u32,
    /// Since the latest version was created, when Vault said when.
    pub age: Option<Duration>,
    /// Since the keyset was last read from Vault successfully (a restored snapshot's age).
    pub keyset_age: Option<Duration>,
}

/// Where the state gauges read from: closures over the running sidecar.
pub struct GaugeSources {
    pub ready: Box<dyn Fn() -> bool + Send + Sync>,
    /// Authenticated, and the token's remaining TTL (none for a token that never expires).
    pub auth: Box<dyn Fn() -> (bool, Option<Duration>) + Send + Sync>,
    pub keys: Box<dyn Fn() -> Vec<KeyGauge> + Send + Sync>,
    pub rotation_period: Duration,
    /// `AEGIS_MAX_KEYSET_AGE`.
    pub max_keyset_age: Duration,
    /// `AEGIS_REFRESH_INTERVAL`.
    pub refresh_interval: Duration,
    /// The keyset watcher: (since its last successful listing, its interval); `None`
    /// when it does not run.
    pub watch: Box<dyn Fn() -> Option<(Duration, Duration)> + Send + Sync>,
}

/// Reads a gauge's points (value, labels) at a collection.
type ReadPoints = Box<dyn Fn(&GaugeSources) -> Vec<(f64, Vec<KeyValue>)> + Send + Sync>;

/// Registers the state gauges. Called once by the server; later calls are ignored.
pub fn register_gauges(sources: GaugeSources) {
    static GAUGES: OnceLock<Vec<ObservableGauge<f64>>> = OnceLock::new();
    let sources = Arc::new(sources);
    GAUGES.get_or_init(|| {
        let meter = meter();
        let gauge = |name: &'static str, help: &'static str, read: ReadPoints| {
            let sources = sources.clone();
            meter
                .f64_observable_gauge(name)
                .with_description(help)
                .with_callback(move |o| {
                    for (value, labels) in read(&sources) {
                        o.observe(value, &labels);
                    }
                })
                .build()
        };
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let per_key = |f: fn(&KeyGauge, &GaugeSources) -> Option<f64>| {
            Box::new(move |s: &GaugeSources| {
                (s.keys)()
                    .iter()
                    .filter_map(|k| {
                        f(k, s).map(|v| (v, vec![KeyValue::new("key", k.key.clone())]))
                    })
                    .collect()
            }) as ReadPoints
        };
        vec![
            gauge(
                "aegis_ready",
                "1 when the sidecar can sign: Vault accepts its credential and the allowlisted keys are loaded",
                Box::new(move |s| vec![(flag((s.ready)()), vec![])]),
            ),
            gauge(
                "aegis_vault_authenticated",
                "1 while Vault accepts the sidecar's credential",
                Box::new(move |s| vec![(flag((s.auth)().0), vec![])]),
            ),
            gauge(
                "aegis_vault_token_ttl_seconds",
                "Remaining TTL of the sidecar's Vault token",
                Box::new(|s| {
                    let (live, ttl) = (s.auth)();
                    match (live, ttl) {
                        (true, Some(ttl)) => vec![(ttl.as_secs_f64(), vec![])],
                        (true, None) => vec![],
                        (false, _) => vec![(0.0, vec![])],
                    }
                }),
            ),
            gauge(
                "aegis_key_latest_version",
                "The key's latest (signing) version",
                per_key(|k, _| Some(f64::from(k.latest_version))),
            ),
            gauge(
                "aegis_key_oldest_valid_version",
                "The oldest version whose signatures still verify",
                per_key(|k, _| Some(f64::from(k.oldest_valid_version))),
            ),
            gauge(
                "aegis_key_age_seconds",
                "Time since the key's latest version was created",
                per_key(|k, _| k.age.map(|a| a.as_secs_f64())),
            ),
            gauge(
                "aegis_key_rotation_period_seconds",
                "The configured rotation period (AEGIS_ROTATION_PERIOD)",
                per_key(|_, s| Some(s.rotation_period.as_secs_f64())),
            ),
            gauge(
                "aegis_keyset_age_seconds",
                "Time since the key's keyset was last read from Vault successfully",
                per_key(|k, _| k.keyset_age.map(|a| a.as_secs_f64())),
            ),
            gauge(
                "aegis_keyset_max_age_seconds",
                "The configured maximum keyset age (AEGIS_MAX_KEYSET_AGE)",
                per_key(|_, s| Some(s.max_keyset_age.as_secs_f64())),
            ),
            gauge(
                "aegis_keyset_refresh_interval_seconds",
                "The configured full refresh interval (AEGIS_REFRESH_INTERVAL)",
                per_key(|_, s| Some(s.refresh_interval.as_secs_f64())),
            ),
            gauge(
                "aegis_keyset_watch_age_seconds",
                "Time since the keyset watcher last listed the retention records' metadata successfully",
                Box::new(|s| (s.watch)().map(|(age, _)| (age.as_secs_f64(), vec![])).into_iter().collect()),
            ),
            gauge(
                "aegis_keyset_watch_interval_seconds",
                "The configured keyset watch interval (AEGIS_KEYSET_WATCH_INTERVAL)",
                Box::new(|s| (s.watch)().map(|(_, i)| (i.as_secs_f64(), vec![])).into_iter().collect()),
            ),
            gauge(
                "aegis_build_info",
                "Always 1; the version label names the build",
                Box::new(|_| {
                    vec![(
                        1.0,
                        vec![KeyValue::new("version", env!("CARGO_PKG_VERSION"))],
                    )]
                }),
            ),
        ]
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::Method;

    #[test]
    fn vault_endpoints_are_classified_from_paths() {
        let list = Method::from_bytes(b"LIST").unwrap();
        for (method, path, want) in [
            (Method::POST, "transit/sign/k", VaultEndpoint::Sign),
            (
                Method::POST,
                "ml/transit/sign/k/sha2-256",
                VaultEndpoint::Sign,
            ),
            (Method::POST, "transit/verify/k", VaultEndpoint::Verify),
            (Method::GET, "transit/keys/k", VaultEndpoint::ReadKey),
            (list.clone(), "transit/keys", VaultEndpoint::ListKeys),
            (Method::POST, "transit/keys/k/rotate", VaultEndpoint::Rotate),
            (Method::POST, "transit/keys/k/config", VaultEndpoint::Config),
            (
                Method::GET,
                "secret/data/aegis/keys/transit/k",
                VaultEndpoint::KvRead,
            ),
            (
                Method::POST,
                "secret/data/aegis/keys/transit/k",
                VaultEndpoint::KvWrite,
            ),
            (
                list.clone(),
                "secret/detailed-metadata/aegis/keys/transit/",
                VaultEndpoint::KvList,
            ),
            (Method::GET, "sys/health", VaultEndpoint::Health),
            (Method::POST, "auth/approle/login", VaultEndpoint::Login),
            (Method::POST, "auth/token/renew-self", VaultEndpoint::Renew),
            (Method::POST, "transit/encrypt/k", VaultEndpoint::Other),
        ] {
            assert_eq!(
                VaultEndpoint::from_request(&method, path),
                want,
                "{method} {path}"
            );
        }
    }

    #[test]
    fn outcomes_follow_status_classes() {
        assert_eq!(Outcome::from_status(200), Outcome::Ok);
        assert_eq!(Outcome::from_status(403), Outcome::ClientError);
        assert_eq!(Outcome::from_status(502), Outcome::VaultError);
        assert_eq!(Outcome::from_status(503), Outcome::Unavailable);
        assert_eq!(Outcome::from_status(500), Outcome::InternalError);
    }

    #[test]
    fn key_labels_are_bounded() {
        let allow = KeyLabels::new(Some(["a".to_string()].into()));
        assert_eq!(allow.label("a", false), "a");
        assert_eq!(allow.label("b", true), KeyLabels::OTHER);

        let open = KeyLabels::new(None);
        assert_eq!(open.label("nope", false), KeyLabels::OTHER);
        for i in 0..KeyLabels::MAX {
            assert_eq!(open.label(&format!("k{i}"), true), format!("k{i}"));
        }
        assert_eq!(open.label("one-too-many", true), KeyLabels::OTHER);
        // Names already labelled stay labelled.
        assert_eq!(open.label("k0", false), "k0");
        assert_eq!(open.value("k1", || false).as_str(), "k1");
        assert_eq!(allow.value("a", || false).as_str(), "a");
        assert_eq!(allow.value("b", || true).as_str(), KeyLabels::OTHER);
    }

    #[test]
    fn vault_statuses_are_labelled_by_their_number() {
        for (status, want) in [
            (None, "unreachable"),
            (Some(200), "200"),
            (Some(503), "503"),
            (Some(418), "418"),
        ] {
            assert_eq!(status_label(status).as_str(), want);
        }
    }
}
