//! The one typed [`Config`], read from an optional TOML file and then the environment.
//!
//! This is the only module that reads environment variables. Vault settings use Vault's
//! own variable names (`VAULT_ADDR`, `VAULT_TOKEN`, ...), Aegis's own start with `AEGIS_`.
//! The environment wins over the file. Every problem is collected and reported at once
//! ([`ConfigErrors`]), and no secret value is ever echoed in an error.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod audit;
mod keyset;
pub mod policy_file;
pub mod sync_file;
mod telemetry;

pub use audit::AuditConfig;
pub use keyset::{KeysetBounds, StaleKeyset};
pub use policy_file::PolicyFile;
pub use telemetry::{OtlpExport, OtlpProtocol, Sampler, TelemetryConfig};

const MIB: usize = 1024 * 1024;

/// A secret string (a Vault token): never printed by `Debug` or `Display`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself, for the one place that must send it (the Vault client).
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// The KV v2 location of retention records: `{kv_mount}/data/{prefix}/{transit mount}/{key}`,
/// and the name prefix of their endorsement keys in the Transit mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionLocation {
    pub kv_mount: String,
    pub prefix: String,
    /// `AEGIS_RETENTION_ENDORSEMENT_PREFIX`: key K's record is endorsed by `{this}{K}`.
    pub endorsement_prefix: String,
}

impl RetentionLocation {
    /// The record's path inside the KV mount.
    pub fn path(&self, transit_mount: &str, key: &str) -> String {
        format!("{}/{transit_mount}/{key}", self.prefix.trim_matches('/'))
    }

    /// The Transit key that endorses `key`'s record.
    pub fn endorsement_key(&self, key: &str) -> String {
        format!("{}{key}", self.endorsement_prefix)
    }
}

/// A secret read from the environment/file config, or from a file each time it is needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Given inline (`VAULT_TOKEN`, `VAULT_SECRET_ID`, ...).
    Value(Secret),
    /// Read, trimmed, whenever a login needs it, so a rotated file is picked up.
    File(PathBuf),
}

impl SecretSource {
    /// The current value: inline, or the file's trimmed contents.
    pub fn read(&self) -> std::io::Result<Secret> {
        match self {
            SecretSource::Value(s) => Ok(s.clone()),
            SecretSource::File(path) => std::fs::read_to_string(path)
                .map(|t| Secret::new(t.trim()))
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
    }
}

/// How the sidecar gets its Vault token (`AEGIS_AUTH_METHOD`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthConfig {
    /// A token given to the sidecar (`VAULT_TOKEN` or `AEGIS_VAULT_TOKEN_FILE`), renewed
    /// while renewable; a token file is re-read when the token stops working.
    Token { token: SecretSource },
    /// AppRole: role_id and secret_id; a response-wrapped secret_id is unwrapped first.
    AppRole {
        mount: String,
        role_id: SecretSource,
        secret_id: SecretSource,
        secret_id_wrapped: bool,
    },
    /// Kubernetes: the pod's service-account token (projected, re-read at each login).
    Kubernetes {
        mount: String,
        role: String,
        jwt_file: PathBuf,
    },
    /// JWT/OIDC: a JWT from a file (projected token, CI OIDC token), re-read at each login.
    Jwt {
        mount: String,
        role: Option<String>,
        jwt_file: PathBuf,
    },
    /// TLS certificate: the client certificate of `VAULT_CLIENT_CERT` logs in.
    Cert { mount: String, role: Option<String> },
}

impl AuthConfig {
    /// The method's name, as in `AEGIS_AUTH_METHOD` and metrics labels.
    pub fn method(&self) -> &'static str {
        match self {
            AuthConfig::Token { .. } => "token",
            AuthConfig::AppRole { .. } => "approle",
            AuthConfig::Kubernetes { .. } => "kubernetes",
            AuthConfig::Jwt { .. } => "jwt",
            AuthConfig::Cert { .. } => "cert",
        }
    }
}

/// TLS towards Vault (Vault's own variable names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// `VAULT_CACERT`: PEM file of the CA(s) to trust instead of the system roots.
    pub ca_cert: Option<PathBuf>,
    /// `VAULT_CAPATH`: a directory of PEM CA files to trust instead of the system roots.
    pub ca_path: Option<PathBuf>,
    /// `VAULT_CLIENT_CERT` / `VAULT_CLIENT_KEY`: the client certificate for mTLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// `VAULT_TLS_SERVER_NAME`: the name Vault's certificate is checked against.
    pub server_name: Option<String>,
    /// `VAULT_SKIP_VERIFY`: accept any certificate (logged loudly at start).
    pub skip_verify: bool,
}

/// Connection to Vault.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// `VAULT_ADDR`, or `AEGIS_VAULT_ADDRS` (comma-separated) for the nodes of an HA cluster.
    pub addrs: Vec<String>,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    /// `VAULT_NAMESPACE`.
    pub namespace: Option<String>,
    /// Bound on one attempt (connect + answer), `AEGIS_VAULT_TIMEOUT`, default 5 s.
    pub timeout: Duration,
    /// TCP + TLS connect bound, `AEGIS_VAULT_CONNECT_TIMEOUT`, default 2 s.
    pub connect_timeout: Duration,
    /// Bound on one call including retries and failover, `AEGIS_VAULT_TOTAL_TIMEOUT`, default 10 s.
    pub total_timeout: Duration,
    /// With several addresses, make a standby the home node (`AEGIS_VAULT_PREFER_STANDBY`,
    /// default true): OpenBao 2.5+ standbys answer reads and sign themselves. Off: calls
    /// start at the first address and follow the active node, as before.
    pub prefer_standby: bool,
}

impl VaultConfig {
    /// The first configured address, for logs.
    pub fn primary_addr(&self) -> &str {
        self.addrs.first().map(String::as_str).unwrap_or_default()
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, text otherwise.
    Auto,
    Json,
    Text,
}

/// Everything `aegis serve` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// `AEGIS_LISTEN_ADDR`, default `127.0.0.1:8201`.
    pub listen_addr: SocketAddr,
    /// `AEGIS_LISTEN_UNIX`: a Unix socket (mode 0660) serving the same API; callers are
    /// identified by their peer credentials. Unset: none.
    pub listen_unix: Option<PathBuf>,
    /// `AEGIS_REQUIRE_REQUEST_HEADER`, default true: Transit requests without
    /// `X-Vault-Request: true` get 412 (the request-forgery guard).
    pub require_request_header: bool,
    /// `AEGIS_POLICY_FILE`: the caller policy (see [`policy_file`]), read and
    /// checked at start. Unset: every local caller may use every allowlisted key.
    pub policy: Option<PolicyFile>,
    /// `AEGIS_TRANSIT_MOUNT`, default `transit`.
    pub transit_mount: String,
    /// `AEGIS_KEYS`: the keys served; others get 403 before Vault is asked.
    pub keys: KeyScope,
    /// `AEGIS_MAX_BODY_BYTES`, default 8 MiB: the largest request body (HTTP) or gRPC
    /// message. Sized with [`max_body_bytes_in_flight`](Self::max_body_bytes_in_flight)
    /// for the shipped 64 MiB memory limit (README, "Memory bounds").
    pub max_body_bytes: usize,
    /// `AEGIS_MAX_BODY_BYTES_IN_FLIGHT`, default 16 MiB: request bytes held at once, all
    /// requests together; a request that would go over it is refused with 503 and
    /// `Retry-After`. At least `AEGIS_MAX_BODY_BYTES`.
    pub max_body_bytes_in_flight: usize,
    /// `AEGIS_HTTP_READ_TIMEOUT`, default 30 s (Vault's listener `http_read_timeout`):
    /// a caller that has not sent its whole body by then gets 408.
    pub http_read_timeout: Duration,
    /// `AEGIS_MAX_BATCH_ITEMS`, default 10 000.
    pub max_batch_items: usize,
    /// `AEGIS_SIGN_MAX_BATCH`, default 200: items per Transit sign call (coalesced
    /// requests, and the parts a caller's larger batch is split into; OpenBao refuses
    /// requests of more than 1 000 JSON strings).
    pub sign_max_batch: usize,
    /// `AEGIS_SIGN_MAX_IN_FLIGHT`, default 2: concurrent Transit sign calls per key and
    /// options before requests queue to be coalesced.
    pub sign_max_in_flight: usize,
    /// `AEGIS_SIGN_MAX_BATCH_BYTES`, default 1 MiB: body bytes per coalesced Transit sign
    /// call (and per part of a caller's batch that is split); a single request larger
    /// than this goes alone. Keep it under Vault's `max_request_size` (32 MiB).
    pub sign_max_batch_bytes: usize,
    /// `AEGIS_REFRESH_INTERVAL`, default 10 min, jittered by up to 10 %: the full read of
    /// every key (what the keyset watcher cannot see, changes made outside Aegis).
    pub refresh_interval: Duration,
    /// `AEGIS_MAX_KEYSET_AGE`, `AEGIS_STALE_KEYSET`, `AEGIS_KEY_LOOKUP_RATE` (see
    /// `config::keyset`).
    pub keyset: KeysetBounds,
    /// `AEGIS_LOG_FORMAT`: auto, json or text.
    pub log_format: LogFormat,
    /// `RUST_LOG`: the log filter, default `info`.
    pub log_filter: Option<String>,
    /// `AEGIS_CACHE_DIR`: where the keyset snapshot is kept, so a restart during a Vault
    /// outage still verifies, and the model digest cache (`model-digests/`). Unset:
    /// neither.
    pub cache_dir: Option<PathBuf>,
    /// `AEGIS_MODEL_ROOTS`: the absolute directories `POST /v1/aegis/model/verify` may
    /// read models and signatures under (colon- or comma-separated). Empty: the endpoint
    /// is off.
    pub model_roots: Vec<PathBuf>,
    /// `AEGIS_MODEL_MAX_SIGNATURE_BYTES`, default 2 MiB: the largest signature file the
    /// sidecar reads for one model verification (about 7 000 resources with short names).
    pub model_max_signature_bytes: usize,
    /// `AEGIS_MODEL_MAX_RESOURCES`, default 8192: the most files, and the most
    /// resources (files or shards), the sidecar walks and hashes for one model. With
    /// the signature bound, what one verification may hold (README, "Memory bounds").
    pub model_max_resources: usize,
    /// Where retention records live: `AEGIS_RETENTION_KV_MOUNT` (default `secret`, a KV v2
    /// mount) and `AEGIS_RETENTION_PREFIX` (default `aegis/keys`); the record of key K is
    /// `{kv_mount}/data/{prefix}/{transit_mount}/{K}`. It is endorsed by the Transit key
    /// `{AEGIS_RETENTION_ENDORSEMENT_PREFIX}{K}` (default prefix `aegis-retention.`).
    pub retention: RetentionLocation,
    /// `AEGIS_ROTATION_PERIOD`, default 90 days: when `keys status` says a rotation is due.
    pub rotation_period: Duration,
    /// The audit trail: `AEGIS_AUDIT_FILE`, `AEGIS_AUDIT_URL`, `AEGIS_AUDIT_SPOOL_DIR`,
    /// `AEGIS_AUDIT_TOKEN_FILE`, `AEGIS_AUDIT_QUEUE_SIZE`, `AEGIS_AUDIT_QUEUE_TIMEOUT`,
    /// `AEGIS_AUDIT_FAIL_OPEN` (see [`crate::audit`]).
    pub audit: AuditConfig,
    /// Traces and metrics export: the standard `OTEL_*` variables (see
    /// `config::telemetry`), and `AEGIS_METRICS_LISTEN`.
    pub telemetry: TelemetryConfig,
    pub vault: VaultConfig,
    /// `AEGIS_SHUTDOWN_GRACE`, default 25 s: after SIGTERM/SIGINT (and the delay below),
    /// how long in-flight requests get to finish once the listeners stop accepting;
    /// requests still running then are answered 503 (gRPC `UNAVAILABLE`). See
    /// `server::drain`.
    pub shutdown_grace: Duration,
    /// `AEGIS_SHUTDOWN_DELAY`, default 0: after SIGTERM/SIGINT, how long the sidecar keeps
    /// serving while reporting not ready, before it stops accepting (time for Kubernetes
    /// to take the pod out of Service endpoints).
    pub shutdown_delay: Duration,
    /// `KUBECONFIG`: the kubeconfig file `aegis sync` uses (one file; `--kubeconfig`
    /// overrides it). Unset: the pod's service account.
    pub kubeconfig: Option<PathBuf>,
}

/// Every problem found in the configuration.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

/// The TOML file's shape. Every field optional; names match the env variables' meaning.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen_addr: Option<String>,
    listen_unix: Option<String>,
    require_request_header: Option<bool>,
    policy_file: Option<String>,
    transit_mount: Option<String>,
    keys: Option<Vec<String>>,
    max_body_bytes: Option<usize>,
    max_body_bytes_in_flight: Option<usize>,
    http_read_timeout: Option<String>,
    max_batch_items: Option<usize>,
    sign_max_batch: Option<usize>,
    sign_max_in_flight: Option<usize>,
    sign_max_batch_bytes: Option<usize>,
    refresh_interval: Option<String>,
    log_format: Option<LogFormat>,
    cache_dir: Option<String>,
    rotation_period: Option<String>,
    shutdown_grace: Option<String>,
    shutdown_delay: Option<String>,
    #[serde(default)]
    retention: FileRetention,
    #[serde(default)]
    keyset: keyset::FileKeyset,
    #[serde(default)]
    audit: FileAudit,
    #[serde(default)]
    vault: FileVault,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileVault {
    addr: Option<String>,
    addrs: Option<Vec<String>>,
    token: Option<Secret>,
    token_file: Option<String>,
    namespace: Option<String>,
    timeout: Option<String>,
    connect_timeout: Option<String>,
    total_timeout: Option<String>,
    prefer_standby: Option<bool>,
    #[serde(default)]
    auth: FileAuth,
    #[serde(default)]
    tls: FileTls,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAudit {
    file: Option<String>,
    url: Option<String>,
    spool_dir: Option<String>,
    token_file: Option<String>,
    flush_timeout: Option<String>,
    queue_size: Option<usize>,
    queue_timeout: Option<String>,
    fail_open: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRetention {
    kv_mount: Option<String>,
    prefix: Option<String>,
    endorsement_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    method: Option<String>,
    mount: Option<String>,
    role: Option<String>,
    role_id: Option<String>,
    role_id_file: Option<String>,
    secret_id_file: Option<String>,
    secret_id_wrapped: Option<bool>,
    jwt_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    ca_cert: Option<String>,
    ca_path: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
    server_name: Option<String>,
    skip_verify: Option<bool>,
}

/// A source of environment variables: the process environment in production, a map in tests.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

/// `AEGIS_MODEL_ROOTS`: colon- or comma-separated directories, each absolute.
fn model_roots(value: Option<String>, errors: &mut Vec<String>) -> Vec<PathBuf> {
    let Some(value) = value else {
        return Vec::new();
    };
    let roots: Vec<PathBuf> = value
        .split([':', ','])
        .filter(|r| !r.is_empty())
        .map(PathBuf::from)
        .collect();
    for r in roots.iter().filter(|r| !r.is_absolute()) {
        errors.push(format!(
            "AEGIS_MODEL_ROOTS: {} is not an absolute directory",
            r.display()
        ));
    }
    roots
}

/// `AEGIS_CACHE_DIR` alone, for `aegis model verify --public-key`, which loads no other
/// configuration.
pub fn cache_dir_from_env(env: &dyn Env) -> Option<PathBuf> {
    env.var("AEGIS_CACHE_DIR").map(PathBuf::from)
}

/// Values that take precedence over another source (`aegis dev` layers its own settings
/// over the process environment).
pub struct Layered<'a> {
    pub over: Vec<(String, String)>,
    pub under: &'a dyn Env,
}

impl Env for Layered<'_> {
    fn var(&self, name: &str) -> Option<String> {
        self.over
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| self.under.var(name))
    }
}

/// `first`, falling back to `then` for the variables `first` lacks: defaults under the
/// environment.
pub struct Fallback<'a> {
    pub first: &'a dyn Env,
    pub then: &'a dyn Env,
}

impl Env for Fallback<'_> {
    fn var(&self, name: &str) -> Option<String> {
        self.first.var(name).or_else(|| self.then.var(name))
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

/// Parses a duration as `30s`, `1m30s`, `250ms` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// `true`/`false` the way Vault's CLI reads its boolean variables.
fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "t" | "yes" | "y" | "on" => Some(true),
        "0" | "false" | "f" | "no" | "n" | "off" | "" => Some(false),
        _ => None,
    }
}

/// The Vault node addresses: `AEGIS_VAULT_ADDRS` (several nodes) or `VAULT_ADDR` (one).
fn vault_addrs(
    env: &dyn Env,
    file_addr: Option<String>,
    file_addrs: Option<Vec<String>>,
    errors: &mut Vec<String>,
) -> Vec<String> {
    let list = env
        .var("AEGIS_VAULT_ADDRS")
        .map(|l| {
            l.split(',')
                .map(|a| a.trim().to_string())
                .collect::<Vec<_>>()
        })
        .or(file_addrs);
    let single = env.var("VAULT_ADDR").or(file_addr);
    let addrs = match (list, single) {
        (Some(_), Some(_)) => {
            errors.push(
                "VAULT_ADDR and AEGIS_VAULT_ADDRS (vault.addr and vault.addrs) are both set: choose one"
                    .into(),
            );
            return Vec::new();
        }
        (Some(list), None) => list.into_iter().filter(|a| !a.is_empty()).collect(),
        (None, Some(a)) => vec![a],
        (None, None) => Vec::new(),
    };
    if addrs.is_empty() {
        errors.push("VAULT_ADDR / vault.addr: required (e.g. https://vault.example:8200)".into());
    }
    addrs
        .into_iter()
        .filter_map(|a| match url::Url::parse(&a) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                Some(a.trim_end_matches('/').to_string())
            }
            _ => {
                errors.push(format!(
                    "VAULT_ADDR: {a:?} is not an http:// or https:// address"
                ));
                None
            }
        })
        .collect()
}

/// Whether the configuration must name a Vault credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// The sidecar and the rotation jobs: a Vault credential is required.
    Required,
    /// A Transit client (`aegis model`, `aegis keys export`) that may talk to the sidecar,
    /// which needs none: the token method without a token sends an empty one.
    Optional,
}

/// The auth method and its settings. Secrets are named in errors, never echoed.
#[allow(clippy::too_many_arguments)]
fn auth_config(
    env: &dyn Env,
    file_token: Option<Secret>,
    file_token_file: Option<String>,
    fa: FileAuth,
    secret_id_wrapped: bool,
    tls: &TlsConfig,
    credential: Credential,
    errors: &mut Vec<String>,
) -> AuthConfig {
    let pick = |name: &str, file: Option<String>| env.var(name).or(file);
    let token = env.var("VAULT_TOKEN").map(Secret::new).or(file_token);
    let token_file = pick("AEGIS_VAULT_TOKEN_FILE", file_token_file);
    let method = pick("AEGIS_AUTH_METHOD", fa.method)
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_else(|| "token".into());
    let mount = |default: &str| {
        pick("AEGIS_AUTH_MOUNT", fa.mount.clone())
            .unwrap_or_else(|| default.into())
            .trim_matches('/')
            .to_string()
    };
    let role = pick("AEGIS_AUTH_ROLE", fa.role.clone());
    let jwt_file = pick("AEGIS_JWT_FILE", fa.jwt_file.clone()).map(PathBuf::from);
    let placeholder = AuthConfig::Token {
        token: SecretSource::Value(Secret::default()),
    };
    match method.as_str() {
        "token" => match (token, token_file) {
            (Some(_), Some(_)) => {
                errors
                    .push("VAULT_TOKEN and AEGIS_VAULT_TOKEN_FILE are both set: choose one".into());
                placeholder
            }
            (Some(t), None) if !t.is_empty() => AuthConfig::Token {
                token: SecretSource::Value(t),
            },
            (None, Some(path)) => AuthConfig::Token {
                token: SecretSource::File(path.into()),
            },
            _ if credential == Credential::Optional => placeholder,
            _ => {
                errors.push(
                    "no Vault credential: set VAULT_TOKEN or AEGIS_VAULT_TOKEN_FILE, or choose another AEGIS_AUTH_METHOD (approle, kubernetes, jwt, cert)"
                        .into(),
                );
                placeholder
            }
        },
        "approle" => {
            let role_id = match (
                pick("VAULT_ROLE_ID", fa.role_id),
                pick("AEGIS_ROLE_ID_FILE", fa.role_id_file),
            ) {
                (Some(v), None) => Some(SecretSource::Value(Secret::new(v))),
                (None, Some(p)) => Some(SecretSource::File(p.into())),
                (Some(_), Some(_)) => {
                    errors.push(
                        "VAULT_ROLE_ID and AEGIS_ROLE_ID_FILE are both set: choose one".into(),
                    );
                    None
                }
                (None, None) => {
                    errors.push("approle auth needs VAULT_ROLE_ID or AEGIS_ROLE_ID_FILE".into());
                    None
                }
            };
            let secret_id = match (
                env.var("VAULT_SECRET_ID"),
                pick("AEGIS_SECRET_ID_FILE", fa.secret_id_file),
            ) {
                (Some(v), None) => Some(SecretSource::Value(Secret::new(v))),
                (None, Some(p)) => Some(SecretSource::File(p.into())),
                (Some(_), Some(_)) => {
                    errors.push(
                        "VAULT_SECRET_ID and AEGIS_SECRET_ID_FILE are both set: choose one".into(),
                    );
                    None
                }
                (None, None) => {
                    errors
                        .push("approle auth needs VAULT_SECRET_ID or AEGIS_SECRET_ID_FILE".into());
                    None
                }
            };
            match (role_id, secret_id) {
                (Some(role_id), Some(secret_id)) => AuthConfig::AppRole {
                    mount: mount("approle"),
                    role_id,
                    secret_id,
                    secret_id_wrapped,
                },
                _ => placeholder,
            }
        }
        "kubernetes" => match role {
            Some(role) => AuthConfig::Kubernetes {
                mount: mount("kubernetes"),
                role,
                jwt_file: jwt_file.unwrap_or_else(|| {
                    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
                }),
            },
            None => {
                errors.push(
                    "kubernetes auth needs AEGIS_AUTH_ROLE (the Vault role to log in as)".into(),
                );
                placeholder
            }
        },
        "jwt" | "oidc" => match jwt_file {
            Some(jwt_file) => AuthConfig::Jwt {
                mount: mount("jwt"),
                role,
                jwt_file,
            },
            None => {
                errors.push("jwt auth needs AEGIS_JWT_FILE (a file holding the JWT)".into());
                placeholder
            }
        },
        "cert" => {
            if tls.client_cert.is_none() {
                errors.push("cert auth needs VAULT_CLIENT_CERT and VAULT_CLIENT_KEY".into());
            }
            AuthConfig::Cert {
                mount: mount("cert"),
                role,
            }
        }
        other => {
            errors.push(format!(
                "AEGIS_AUTH_METHOD: expected token, approle, kubernetes, jwt or cert, got {other:?}"
            ));
            placeholder
        }
    }
}

/// Bytes of the body budget (`AEGIS_MAX_BODY_BYTES_IN_FLIGHT`) one model verification in
/// the sidecar takes while it runs. The budget counts a body's bytes, and a body costs
/// about twice its size in memory; a verification holds about twice its signature file
/// (its text, then its payload and parsed statement) and about 1.5 KiB per file or
/// resource (the walk, both manifests, the digest cache), measured at the limits by
/// `scripts/bench-model-memory.py`. So it takes the signature bound plus 768 bytes per
/// resource: 8 MiB with the defaults, half the default budget.
pub const fn model_verify_budget(max_signature_bytes: usize, max_resources: usize) -> usize {
    max_signature_bytes.saturating_add(max_resources.saturating_mul(768))
}

impl Config {
    /// Bytes of the body budget one model verification takes (see [`model_verify_budget`]).
    pub fn model_verify_budget(&self) -> usize {
        model_verify_budget(self.model_max_signature_bytes, self.model_max_resources)
    }

    /// The limits of each Transit sign call the signer makes.
    pub fn sign_limits(&self) -> crate::sign::coalesce::Limits {
        crate::sign::coalesce::Limits {
            max_batch: self.sign_max_batch,
            max_batch_bytes: self.sign_max_batch_bytes,
            max_in_flight: self.sign_max_in_flight,
        }
    }

    /// Reads `file` (if any), then applies the environment. All problems are reported together.
    pub fn load(file: Option<&Path>, env: &dyn Env) -> Result<Config, ConfigErrors> {
        Self::load_with(file, env, Credential::Required)
    }

    /// [`load`](Self::load), saying whether a Vault credential is required.
    pub fn load_with(
        file: Option<&Path>,
        env: &dyn Env,
        credential: Credential,
    ) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let fc = match file {
            None => FileConfig::default(),
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => toml::from_str::<FileConfig>(&text).unwrap_or_else(|e| {
                    errors.push(format!("{}: {}", path.display(), e.message()));
                    FileConfig::default()
                }),
                Err(e) => {
                    errors.push(format!("cannot read config file {}: {e}", path.display()));
                    FileConfig::default()
                }
            },
        };

        // A setting: env value if present, else file value, else default; named for errors.
        let pick = |env_name: &str, file_value: Option<String>| env.var(env_name).or(file_value);

        let listen_addr = pick("AEGIS_LISTEN_ADDR", fc.listen_addr)
            .unwrap_or_else(|| "127.0.0.1:8201".into())
            .parse::<SocketAddr>()
            .map_err(|e| errors.push(format!("AEGIS_LISTEN_ADDR / listen_addr: {e}")))
            .unwrap_or_else(|()| SocketAddr::from(([127, 0, 0, 1], 8201)));

        let transit_mount = pick("AEGIS_TRANSIT_MOUNT", fc.transit_mount)
            .unwrap_or_else(|| "transit".into())
            .trim_matches('/')
            .to_string();
        if transit_mount.is_empty() || transit_mount.contains(char::is_whitespace) {
            errors
                .push("AEGIS_TRANSIT_MOUNT / transit_mount: must be a non-empty mount path".into());
        }

        let keys = match env.var("AEGIS_KEYS") {
            Some(list) => KeyScope::parse(list.split(',')),
            None => fc.keys.map_or(KeyScope::Unset, |v| {
                KeyScope::parse(v.iter().map(String::as_str))
            }),
        };
        if matches!(&keys, KeyScope::Only(k) if k.is_empty()) {
            errors.push("AEGIS_KEYS / keys: the allowlist is set but names no key".into());
        }

        // Transit key names: a word character first, then word characters, '-' or '.'.
        let endorsement_prefix = pick(
            "AEGIS_RETENTION_ENDORSEMENT_PREFIX",
            fc.retention.endorsement_prefix.clone(),
        )
        .unwrap_or_else(|| "aegis-retention.".into());
        let name_char = |c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '.');
        if !endorsement_prefix.starts_with(|c: char| c.is_alphanumeric() || c == '_')
            || !endorsement_prefix.chars().all(name_char)
        {
            errors.push(format!(
                "AEGIS_RETENTION_ENDORSEMENT_PREFIX / retention.endorsement_prefix: must start with a letter, digit or '_' and hold only those, '-' and '.' (a Transit key name prefix), got {endorsement_prefix:?}"
            ));
        }

        let mut number = |name: &str, file: Option<usize>, default: usize| -> usize {
            match env.var(name) {
                Some(v) => v
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| {
                        errors.push(format!("{name}: expected a positive integer, got {v:?}"));
                        default
                    }),
                None => file.unwrap_or(default),
            }
        };
        let max_body_bytes = number("AEGIS_MAX_BODY_BYTES", fc.max_body_bytes, 8 * MIB);
        let max_body_bytes_in_flight = number(
            "AEGIS_MAX_BODY_BYTES_IN_FLIGHT",
            fc.max_body_bytes_in_flight,
            16 * MIB,
        );
        let sign_max_batch_bytes =
            number("AEGIS_SIGN_MAX_BATCH_BYTES", fc.sign_max_batch_bytes, MIB);
        let max_batch_items = number("AEGIS_MAX_BATCH_ITEMS", fc.max_batch_items, 10_000);
        let sign_max_batch = number("AEGIS_SIGN_MAX_BATCH", fc.sign_max_batch, 200);
        let sign_max_in_flight = number("AEGIS_SIGN_MAX_IN_FLIGHT", fc.sign_max_in_flight, 2);
        let model_max_signature_bytes = number("AEGIS_MODEL_MAX_SIGNATURE_BYTES", None, 2 * MIB);
        let model_max_resources = number("AEGIS_MODEL_MAX_RESOURCES", None, 8192);
        let audit_queue_size = number(
            "AEGIS_AUDIT_QUEUE_SIZE",
            fc.audit.queue_size,
            AuditConfig::default().queue_capacity,
        );
        if max_body_bytes_in_flight < max_body_bytes {
            errors.push(format!(
                "AEGIS_MAX_BODY_BYTES_IN_FLIGHT ({max_body_bytes_in_flight}) must be at least AEGIS_MAX_BODY_BYTES ({max_body_bytes}): a body of the largest size could never be read"
            ));
        }

        let mut duration = |name: &str, file: Option<String>, default: Duration| -> Duration {
            match pick(name, file) {
                None => default,
                Some(v) => match parse_duration(&v) {
                    Ok(d) if !d.is_zero() => d,
                    Ok(_) => {
                        errors.push(format!("{name}: must be greater than zero"));
                        default
                    }
                    Err(e) => {
                        errors.push(format!("{name}: {e} (got {v:?})"));
                        default
                    }
                },
            }
        };
        let refresh_interval = duration(
            "AEGIS_REFRESH_INTERVAL",
            fc.refresh_interval,
            Duration::from_secs(600),
        );
        let timeout = duration(
            "AEGIS_VAULT_TIMEOUT",
            fc.vault.timeout,
            Duration::from_secs(5),
        );
        let connect_timeout = duration(
            "AEGIS_VAULT_CONNECT_TIMEOUT",
            fc.vault.connect_timeout,
            Duration::from_secs(2),
        );
        let audit_flush = duration(
            "AEGIS_AUDIT_FLUSH_TIMEOUT",
            fc.audit.flush_timeout.clone(),
            Duration::from_secs(10),
        );
        let audit_queue_timeout = duration(
            "AEGIS_AUDIT_QUEUE_TIMEOUT",
            fc.audit.queue_timeout.clone(),
            AuditConfig::default().enqueue_wait,
        );
        let rotation_period = duration(
            "AEGIS_ROTATION_PERIOD",
            fc.rotation_period,
            Duration::from_secs(90 * 86400),
        );
        let total_timeout = duration(
            "AEGIS_VAULT_TOTAL_TIMEOUT",
            fc.vault.total_timeout,
            Duration::from_secs(10),
        );
        let http_read_timeout = duration(
            "AEGIS_HTTP_READ_TIMEOUT",
            fc.http_read_timeout,
            Duration::from_secs(30),
        );
        let shutdown_grace = duration(
            "AEGIS_SHUTDOWN_GRACE",
            fc.shutdown_grace,
            Duration::from_secs(25),
        );
        // Zero (the default) is allowed: stop accepting at once.
        let shutdown_delay = match pick("AEGIS_SHUTDOWN_DELAY", fc.shutdown_delay) {
            None => Duration::ZERO,
            Some(v) => parse_duration(&v).unwrap_or_else(|e| {
                errors.push(format!("AEGIS_SHUTDOWN_DELAY: {e} (got {v:?})"));
                Duration::ZERO
            }),
        };
        let keyset = keyset::keyset_bounds(env, fc.keyset, refresh_interval, &mut errors);
        let kubeconfig = env
            .var("KUBECONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);

        let log_format = match env.var("AEGIS_LOG_FORMAT").as_deref() {
            None => fc.log_format.unwrap_or(LogFormat::Auto),
            Some("auto") => LogFormat::Auto,
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(other) => {
                errors.push(format!(
                    "AEGIS_LOG_FORMAT: expected auto, json or text, got {other:?}"
                ));
                LogFormat::Auto
            }
        };

        if total_timeout < timeout {
            errors.push(format!(
                "AEGIS_VAULT_TOTAL_TIMEOUT ({total_timeout:?}) must be at least AEGIS_VAULT_TIMEOUT ({timeout:?})"
            ));
        }

        let addrs = vault_addrs(env, fc.vault.addr, fc.vault.addrs, &mut errors);
        let telemetry = telemetry::telemetry_config(env, &mut errors);
        let audit = AuditConfig {
            file: pick("AEGIS_AUDIT_FILE", fc.audit.file).map(PathBuf::from),
            http_url: pick("AEGIS_AUDIT_URL", fc.audit.url),
            spool_dir: pick("AEGIS_AUDIT_SPOOL_DIR", fc.audit.spool_dir).map(PathBuf::from),
            http_bearer_token_file: pick("AEGIS_AUDIT_TOKEN_FILE", fc.audit.token_file)
                .map(PathBuf::from),
            flush_timeout: audit_flush,
            queue_capacity: audit_queue_size,
            enqueue_wait: audit_queue_timeout,
            ..AuditConfig::default()
        };
        errors.extend(audit.validate());
        if audit.is_enabled() && audit_queue_size < max_batch_items {
            errors.push(format!(
                "AEGIS_AUDIT_QUEUE_SIZE ({audit_queue_size}) must be at least AEGIS_MAX_BATCH_ITEMS ({max_batch_items}): a batch's audit events are reserved before it is signed"
            ));
        }
        let mut flag = |name: &str, file: Option<bool>| -> bool {
            match env.var(name) {
                None => file.unwrap_or(false),
                Some(v) => parse_bool(&v).unwrap_or_else(|| {
                    errors.push(format!("{name}: expected true or false, got {v:?}"));
                    false
                }),
            }
        };
        let skip_verify = flag("VAULT_SKIP_VERIFY", fc.vault.tls.skip_verify);
        let prefer_standby = flag(
            "AEGIS_VAULT_PREFER_STANDBY",
            Some(fc.vault.prefer_standby.unwrap_or(true)),
        );
        let secret_id_wrapped = flag("AEGIS_SECRET_ID_WRAPPED", fc.vault.auth.secret_id_wrapped);
        let audit = AuditConfig {
            fail_open: flag("AEGIS_AUDIT_FAIL_OPEN", fc.audit.fail_open),
            ..audit
        };
        let require_request_header = match env.var("AEGIS_REQUIRE_REQUEST_HEADER") {
            None => fc.require_request_header.unwrap_or(true),
            Some(v) => parse_bool(&v).unwrap_or_else(|| {
                errors.push(format!(
                    "AEGIS_REQUIRE_REQUEST_HEADER: expected true or false, got {v:?}"
                ));
                true
            }),
        };
        let policy = pick("AEGIS_POLICY_FILE", fc.policy_file).and_then(|path| {
            PolicyFile::load(Path::new(&path))
                .map_err(|problems| errors.extend(problems))
                .ok()
        });
        let listen_unix = pick("AEGIS_LISTEN_UNIX", fc.listen_unix).map(PathBuf::from);
        let model_roots = model_roots(env.var("AEGIS_MODEL_ROOTS"), &mut errors);
        let verify_budget = model_verify_budget(model_max_signature_bytes, model_max_resources);
        if !model_roots.is_empty() && verify_budget > max_body_bytes_in_flight {
            errors.push(format!(
                "AEGIS_MODEL_MAX_SIGNATURE_BYTES ({model_max_signature_bytes}) and AEGIS_MODEL_MAX_RESOURCES ({model_max_resources}) make a model verification take {verify_budget} bytes of AEGIS_MAX_BODY_BYTES_IN_FLIGHT ({max_body_bytes_in_flight}), more than all of it: lower them or raise the budget (and the pod's memory limit)"
            ));
        }
        let path = |name: &str, file: Option<String>| pick(name, file).map(PathBuf::from);
        let tls = TlsConfig {
            ca_cert: path("VAULT_CACERT", fc.vault.tls.ca_cert),
            ca_path: path("VAULT_CAPATH", fc.vault.tls.ca_path),
            client_cert: path("VAULT_CLIENT_CERT", fc.vault.tls.client_cert),
            client_key: path("VAULT_CLIENT_KEY", fc.vault.tls.client_key),
            server_name: pick("VAULT_TLS_SERVER_NAME", fc.vault.tls.server_name),
            skip_verify,
        };
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            errors.push("VAULT_CLIENT_CERT and VAULT_CLIENT_KEY must be set together".into());
        }
        let auth = auth_config(
            env,
            fc.vault.token,
            fc.vault.token_file,
            fc.vault.auth,
            secret_id_wrapped,
            &tls,
            credential,
            &mut errors,
        );

        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Config {
            listen_addr,
            listen_unix,
            require_request_header,
            policy,
            transit_mount,
            keys,
            max_body_bytes,
            max_body_bytes_in_flight,
            http_read_timeout,
            max_batch_items,
            sign_max_batch,
            sign_max_in_flight,
            sign_max_batch_bytes,
            refresh_interval,
            keyset,
            log_format,
            log_filter: env.var("RUST_LOG"),
            cache_dir: pick("AEGIS_CACHE_DIR", fc.cache_dir).map(PathBuf::from),
            model_roots,
            model_max_signature_bytes,
            model_max_resources,
            retention: RetentionLocation {
                kv_mount: pick("AEGIS_RETENTION_KV_MOUNT", fc.retention.kv_mount)
                    .unwrap_or_else(|| "secret".into())
                    .trim_matches('/')
                    .to_string(),
                prefix: pick("AEGIS_RETENTION_PREFIX", fc.retention.prefix)
                    .unwrap_or_else(|| "aegis/keys".into())
                    .trim_matches('/')
                    .to_string(),
                endorsement_prefix,
            },
            rotation_period,
            audit,
            telemetry,
            vault: VaultConfig {
                addrs,
                auth,
                tls,
                namespace: pick("VAULT_NAMESPACE", fc.vault.namespace)
                    .map(|n| n.trim_matches('/').to_string())
                    .filter(|n| !n.is_empty()),
                timeout,
                connect_timeout,
                total_timeout,
                prefer_standby,
            },
            shutdown_grace,
            shutdown_delay,
            kubeconfig,
        })
    }

    /// Whether `key` may be served.
    pub fn key_allowed(&self, key: &str) -> bool {
        self.keys.allows(key)
    }
}

/// Which Transit keys the sidecar serves (`AEGIS_KEYS`, or `keys` in the config file).
///
/// A fresh install serves no key until told which: `aegis serve` refuses to start with
/// the setting absent ([`KeyScope::require_set`]), so a sidecar never signs with every
/// key its Vault token happens to reach unless `*` says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyScope {
    /// Not configured: no key is served (the lifecycle commands do not need it).
    Unset,
    /// `*`: every key the sidecar's Vault token may use.
    Every,
    /// The allowlist.
    Only(BTreeSet<String>),
}

impl KeyScope {
    /// From the comma-separated (or file list) entries; a lone `*` means every key.
    fn parse<'a>(entries: impl Iterator<Item = &'a str>) -> Self {
        let names: BTreeSet<String> = entries
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(String::from)
            .collect();
        if names.len() == 1 && names.contains("*") {
            KeyScope::Every
        } else {
            KeyScope::Only(names)
        }
    }

    /// Whether `key` may be used.
    pub fn allows(&self, key: &str) -> bool {
        match self {
            KeyScope::Unset => false,
            KeyScope::Every => true,
            KeyScope::Only(names) => names.contains(key),
        }
    }

    /// The allowlisted names, when there is an allowlist.
    pub fn names(&self) -> Option<&BTreeSet<String>> {
        match self {
            KeyScope::Only(names) => Some(names),
            KeyScope::Unset | KeyScope::Every => None,
        }
    }

    /// What `aegis serve` checks before it starts.
    pub fn require_set(&self) -> Result<(), ConfigErrors> {
        match self {
            KeyScope::Unset => Err(ConfigErrors(vec![
                "AEGIS_KEYS is not set: name the Transit keys this sidecar may use \
                 (comma-separated), or set it to * to serve every key its Vault token can use"
                    .into(),
            ])),
            KeyScope::Every | KeyScope::Only(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_bounds_must_fit_in_the_body_budget_when_the_endpoint_is_on() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        let load = |roots: Option<&str>, resources: &str| {
            let env = [
                ("VAULT_ADDR", "http://127.0.0.1:8200"),
                ("VAULT_TOKEN", "s.abc"),
                ("AEGIS_MAX_BODY_BYTES", "1048576"),
                ("AEGIS_MAX_BODY_BYTES_IN_FLIGHT", "2097152"),
                ("AEGIS_MODEL_MAX_SIGNATURE_BYTES", "1048576"),
                ("AEGIS_MODEL_MAX_RESOURCES", resources),
                roots.map_or(("UNSET", ""), |r| ("AEGIS_MODEL_ROOTS", r)),
            ];
            Config::load(None, &env)
        };
        // 1 MiB + 1366 x 768 B = 2 097 664 B: over the 2 MiB budget by 512 bytes.
        let e = load(Some(root), "1366").unwrap_err().to_string();
        assert!(
            e.contains("take 2097664 bytes of AEGIS_MAX_BODY_BYTES_IN_FLIGHT (2097152)"),
            "{e}"
        );
        assert_eq!(
            load(Some(root), "1365").unwrap().model_verify_budget(),
            2_096_896
        );
        // With the endpoint off the bounds are not used, so not checked.
        assert!(load(None, "1366").is_ok());
        let e = load(Some(root), "0").unwrap_err().to_string();
        assert!(
            e.contains("AEGIS_MODEL_MAX_RESOURCES: expected a positive integer"),
            "{e}"
        );
    }

    #[test]
    fn defaults_with_only_vault_settings() {
        let c = Config::load(
            None,
            &[
                ("VAULT_ADDR", "http://127.0.0.1:8200/"),
                ("VAULT_TOKEN", "s.abc"),
            ],
        )
        .unwrap();
        assert_eq!(c.listen_addr.to_string(), "127.0.0.1:8201");
        assert_eq!(c.transit_mount, "transit");
        assert_eq!(c.keys, KeyScope::Unset);
        assert_eq!(c.max_body_bytes, 8 * 1024 * 1024);
        assert_eq!(c.max_body_bytes_in_flight, 16 * 1024 * 1024);
        assert_eq!(c.model_max_signature_bytes, 2 * 1024 * 1024);
        assert_eq!(c.model_max_resources, 8192);
        assert_eq!(c.model_verify_budget(), 8 * 1024 * 1024);
        assert_eq!(c.sign_max_batch_bytes, 1024 * 1024);
        assert_eq!(c.http_read_timeout, Duration::from_secs(30));
        assert_eq!(c.refresh_interval, Duration::from_secs(600));
        assert_eq!(c.vault.addrs, ["http://127.0.0.1:8200"]);
        assert_eq!(
            c.vault.auth,
            AuthConfig::Token {
                token: SecretSource::Value(Secret::new("s.abc"))
            }
        );
        assert_eq!(c.vault.total_timeout, Duration::from_secs(10));
        assert!(c.vault.prefer_standby);
        assert_eq!(c.vault.tls, TlsConfig::default());
        assert_eq!(c.cache_dir, None);
        assert!(
            !c.key_allowed("anything"),
            "no key until AEGIS_KEYS names some"
        );
        assert!(c.require_request_header);
        assert_eq!((c.listen_unix, c.policy), (None, None));
    }

    #[test]
    fn a_transit_client_may_go_without_a_credential() {
        let env = [("VAULT_ADDR", "http://127.0.0.1:8201")];
        let e = Config::load(None, &env).unwrap_err();
        assert!(e.to_string().contains("no Vault credential"), "{e}");
        let c = Config::load_with(None, &env, Credential::Optional).unwrap();
        assert_eq!(
            c.vault.auth,
            AuthConfig::Token {
                token: SecretSource::Value(Secret::default())
            }
        );
        // Other methods still need their settings.
        let env = [
            ("VAULT_ADDR", "http://127.0.0.1:8201"),
            ("AEGIS_AUTH_METHOD", "approle"),
        ];
        assert!(Config::load_with(None, &env, Credential::Optional).is_err());
    }

    #[test]
    fn env_overrides_file_and_allowlist_parses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aegis.toml");
        std::fs::write(
            &path,
            "listen_addr = \"127.0.0.1:9000\"\ntransit_mount = \"ml-transit\"\nkeys = [\"a\"]\n[vault]\naddr = \"http://file:8200\"\ntoken_file = \"/var/run/token\"\ntimeout = \"2s\"\nprefer_standby = false\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&path),
            &[
                ("AEGIS_LISTEN_ADDR", "127.0.0.1:9100"),
                ("AEGIS_KEYS", "k1, k2,,"),
            ],
        )
        .unwrap();
        assert_eq!(c.listen_addr.port(), 9100);
        assert_eq!(c.transit_mount, "ml-transit");
        assert_eq!(
            c.keys.names().unwrap().iter().collect::<Vec<_>>(),
            ["k1", "k2"]
        );
        assert!(!c.key_allowed("a"));
        assert_eq!(c.vault.addrs, ["http://file:8200"]);
        assert_eq!(
            c.vault.auth,
            AuthConfig::Token {
                token: SecretSource::File("/var/run/token".into())
            }
        );
        assert_eq!(c.vault.timeout, Duration::from_secs(2));
        assert!(!c.vault.prefer_standby, "from the file");
        let on = Config::load(
            Some(&path),
            &[("AEGIS_KEYS", "k"), ("AEGIS_VAULT_PREFER_STANDBY", "true")],
        )
        .unwrap();
        assert!(on.vault.prefer_standby, "the environment wins");
        let err = Config::load(
            Some(&path),
            &[
                ("AEGIS_KEYS", "k"),
                ("AEGIS_VAULT_PREFER_STANDBY", "standby"),
            ],
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("AEGIS_VAULT_PREFER_STANDBY: expected true or false"),
            "{err}"
        );
    }

    #[test]
    fn key_scope_unset_star_and_list() {
        let base = [("VAULT_ADDR", "http://v:8200"), ("VAULT_TOKEN", "t")];
        let unset = Config::load(None, &base).unwrap();
        assert_eq!(unset.keys, KeyScope::Unset);
        assert!(!unset.key_allowed("any"));
        assert!(unset.keys.require_set().is_err());
        let with = |keys: &str| {
            let env = [base[0], base[1], ("AEGIS_KEYS", keys)];
            Config::load(None, &env).map(|c| c.keys)
        };
        let every = with(" * ").unwrap();
        assert_eq!(every, KeyScope::Every);
        assert!(every.allows("any") && every.require_set().is_ok() && every.names().is_none());
        // `*` beside names is a key named `*`, not a wildcard (Vault key names may not
        // hold it, so it matches nothing).
        let mixed = with("a,*").unwrap();
        assert!(mixed.allows("a") && !mixed.allows("b"));
        assert!(with(" , ").is_err());
    }

    #[test]
    fn every_problem_is_reported_at_once_without_secrets() {
        let err = Config::load(
            None,
            &[
                ("AEGIS_LISTEN_ADDR", "nope"),
                ("AEGIS_MAX_BODY_BYTES", "-1"),
                ("AEGIS_REFRESH_INTERVAL", "soon"),
                ("VAULT_ADDR", "vault:8200"),
                ("VAULT_TOKEN", "hvs.supersecret"),
                ("AEGIS_VAULT_TOKEN_FILE", "/t"),
            ],
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 5, "{err}");
        let text = err.to_string();
        assert!(!text.contains("supersecret"));
        for needle in [
            "AEGIS_LISTEN_ADDR",
            "AEGIS_MAX_BODY_BYTES",
            "AEGIS_REFRESH_INTERVAL",
            "VAULT_ADDR",
            "both set",
        ] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
    }

    #[test]
    fn missing_credential_and_unknown_file_keys_are_errors() {
        let err = Config::load(None, &[("VAULT_ADDR", "http://x")]).unwrap_err();
        assert!(err.to_string().contains("no Vault credential"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "listen = 1\n").unwrap();
        let err = Config::load(
            Some(&path),
            &[("VAULT_ADDR", "http://x"), ("VAULT_TOKEN", "t")],
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn auth_methods_tls_namespace_and_nodes() {
        let c = Config::load(
            None,
            &[
                ("AEGIS_VAULT_ADDRS", "https://v1:8200, https://v2:8200/"),
                ("AEGIS_AUTH_METHOD", "approle"),
                ("VAULT_ROLE_ID", "role-1"),
                ("AEGIS_SECRET_ID_FILE", "/run/secret-id"),
                ("AEGIS_SECRET_ID_WRAPPED", "true"),
                ("VAULT_CACERT", "/ca.pem"),
                ("VAULT_TLS_SERVER_NAME", "vault.internal"),
                ("VAULT_NAMESPACE", "/ml/"),
                ("AEGIS_CACHE_DIR", "/var/cache/aegis"),
            ],
        )
        .unwrap();
        assert_eq!(c.vault.addrs, ["https://v1:8200", "https://v2:8200"]);
        assert_eq!(
            c.vault.auth,
            AuthConfig::AppRole {
                mount: "approle".into(),
                role_id: SecretSource::Value(Secret::new("role-1")),
                secret_id: SecretSource::File("/run/secret-id".into()),
                secret_id_wrapped: true,
            }
        );
        assert_eq!(c.vault.tls.ca_cert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(c.vault.tls.server_name.as_deref(), Some("vault.internal"));
        assert_eq!(c.vault.namespace.as_deref(), Some("ml"));
        assert_eq!(c.cache_dir, Some(PathBuf::from("/var/cache/aegis")));

        let k = Config::load(
            None,
            &[
                ("VAULT_ADDR", "http://v"),
                ("AEGIS_AUTH_METHOD", "kubernetes"),
                ("AEGIS_AUTH_ROLE", "model"),
                ("AEGIS_AUTH_MOUNT", "/k8s-prod/"),
            ],
        )
        .unwrap();
        assert_eq!(
            k.vault.auth,
            AuthConfig::Kubernetes {
                mount: "k8s-prod".into(),
                role: "model".into(),
                jwt_file: "/var/run/secrets/kubernetes.io/serviceaccount/token".into(),
            }
        );
    }

    #[test]
    fn auth_and_tls_problems_are_all_reported() {
        let err = Config::load(
            None,
            &[
                ("VAULT_ADDR", "http://v"),
                ("AEGIS_VAULT_ADDRS", "http://w"),
                ("AEGIS_AUTH_METHOD", "approle"),
                ("VAULT_SECRET_ID", "sid-supersecret"),
                ("AEGIS_SECRET_ID_FILE", "/f"),
                ("VAULT_CLIENT_CERT", "/c.pem"),
                ("VAULT_SKIP_VERIFY", "maybe"),
                ("AEGIS_VAULT_TIMEOUT", "20s"),
            ],
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("supersecret"), "{text}");
        for needle in [
            "both set: choose one",
            "VAULT_ROLE_ID",
            "VAULT_SECRET_ID and AEGIS_SECRET_ID_FILE",
            "VAULT_CLIENT_KEY",
            "VAULT_SKIP_VERIFY",
            "AEGIS_VAULT_TOTAL_TIMEOUT",
        ] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
        for (method, needle) in [
            ("kubernetes", "AEGIS_AUTH_ROLE"),
            ("jwt", "AEGIS_JWT_FILE"),
            ("cert", "VAULT_CLIENT_CERT"),
            ("ldap", "expected token, approle"),
        ] {
            let err = Config::load(
                None,
                &[("VAULT_ADDR", "http://v"), ("AEGIS_AUTH_METHOD", method)],
            )
            .unwrap_err();
            assert!(err.to_string().contains(needle), "{method}: {err}");
        }
    }

    #[test]
    fn caller_security_settings() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("t");
        std::fs::write(&token, "tok").unwrap();
        let policy = dir.path().join("policy.toml");
        std::fs::write(
            &policy,
            format!(
                "[[caller]]\nname = \"a\"\ntoken_file = \"{}\"\nsign = [\"k\"]\n",
                token.display()
            ),
        )
        .unwrap();
        let c = Config::load(
            None,
            &[
                ("VAULT_ADDR", "http://v"),
                ("VAULT_TOKEN", "t"),
                ("AEGIS_REQUIRE_REQUEST_HEADER", "false"),
                ("AEGIS_LISTEN_UNIX", "/run/aegis.sock"),
                ("AEGIS_POLICY_FILE", policy.to_str().unwrap()),
            ],
        )
        .unwrap();
        assert!(!c.require_request_header);
        assert_eq!(c.listen_unix, Some(PathBuf::from("/run/aegis.sock")));
        assert_eq!(c.policy.unwrap().callers[0].name, "a");
        let err = Config::load(
            None,
            &[
                ("VAULT_ADDR", "http://v"),
                ("VAULT_TOKEN", "t"),
                ("AEGIS_REQUIRE_REQUEST_HEADER", "perhaps"),
                ("AEGIS_POLICY_FILE", "/nonexistent/policy.toml"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("AEGIS_REQUIRE_REQUEST_HEADER"), "{err}");
        assert!(err.contains("/nonexistent/policy.toml"), "{err}");
    }

    #[test]
    fn secret_debug_is_redacted() {
        assert_eq!(format!("{:?}", Secret::new("hvs.x")), "Secret(<redacted>)");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn shutdown_settings_default_set_and_refused() {
        const VAULT: [(&str, &str); 2] = [
            ("VAULT_ADDR", "http://127.0.0.1:8200"),
            ("VAULT_TOKEN", "s.abc"),
        ];
        let c = Config::load(None, &VAULT).unwrap();
        assert_eq!(c.shutdown_grace, Duration::from_secs(25));
        assert_eq!(c.shutdown_delay, Duration::ZERO);
        let [addr, token] = VAULT;
        let c = Config::load(
            None,
            &[
                addr,
                token,
                ("AEGIS_SHUTDOWN_GRACE", "1500ms"),
                ("AEGIS_SHUTDOWN_DELAY", "5s"),
            ],
        )
        .unwrap();
        assert_eq!(c.shutdown_grace, Duration::from_millis(1500));
        assert_eq!(c.shutdown_delay, Duration::from_secs(5));
        let c = Config::load(None, &[addr, token, ("AEGIS_SHUTDOWN_DELAY", "0")]).unwrap();
        assert_eq!(c.shutdown_delay, Duration::ZERO);
        let err = Config::load(
            None,
            &[
                addr,
                token,
                ("AEGIS_SHUTDOWN_GRACE", "0s"),
                ("AEGIS_SHUTDOWN_DELAY", "soon"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("AEGIS_SHUTDOWN_GRACE: must be greater than zero"),
            "{err}"
        );
        assert!(err.contains("AEGIS_SHUTDOWN_DELAY"), "{err}");
    }

    #[test]
    fn audit_backpressure_settings_default_set_and_refused() {
        const VAULT: [(&str, &str); 3] = [
            ("VAULT_ADDR", "http://127.0.0.1:8200"),
            ("VAULT_TOKEN", "s.abc"),
            ("AEGIS_AUDIT_FILE", "/var/log/aegis/audit.jsonl"),
        ];
        let c = Config::load(None, &VAULT).unwrap();
        assert_eq!(
            (
                c.audit.queue_capacity,
                c.audit.enqueue_wait,
                c.audit.fail_open
            ),
            (16384, Duration::from_millis(100), false)
        );
        let [addr, token, file] = VAULT;
        let set = [
            addr,
            token,
            file,
            ("AEGIS_AUDIT_QUEUE_SIZE", "64"),
            ("AEGIS_MAX_BATCH_ITEMS", "64"),
            ("AEGIS_AUDIT_QUEUE_TIMEOUT", "250ms"),
            ("AEGIS_AUDIT_FAIL_OPEN", "true"),
        ];
        let c = Config::load(None, &set).unwrap();
        assert_eq!(
            (
                c.audit.queue_capacity,
                c.audit.enqueue_wait,
                c.audit.fail_open
            ),
            (64, Duration::from_millis(250), true)
        );
        let bad = [
            addr,
            token,
            file,
            ("AEGIS_AUDIT_QUEUE_SIZE", "100"),
            ("AEGIS_AUDIT_QUEUE_TIMEOUT", "0s"),
            ("AEGIS_AUDIT_FAIL_OPEN", "maybe"),
        ];
        let err = Config::load(None, &bad).unwrap_err().to_string();
        for expected in [
            "AEGIS_AUDIT_QUEUE_SIZE (100) must be at least AEGIS_MAX_BATCH_ITEMS (10000)",
            "AEGIS_AUDIT_QUEUE_TIMEOUT: must be greater than zero",
            "AEGIS_AUDIT_FAIL_OPEN: expected true or false",
        ] {
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }
}
