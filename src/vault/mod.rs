//! The only code that talks to Vault.
//!
//! One pooled `reqwest` client (rustls) carries all Vault traffic, with a connect timeout
//! and a per-request timeout, so that no caller ever waits on Vault longer than
//! configured. vaultrs is used for Vault's own endpoints it models well (token
//! lookup); Transit calls on the request path are sent as raw JSON so that every Transit
//! parameter passes through unchanged, including the ones vaultrs does not model
//! (`batch_input`, `salt_length`, `marshaling_algorithm`, ...).
//!
//! This module knows nothing about callers: it never sees a caller's token.

mod transit;

use std::sync::RwLock;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::{Secret, TokenSource, VaultConfig};

pub use transit::TransitKeyInfo;

/// A failed Vault call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VaultError {
    /// Vault answered with an error status and its `errors` list.
    #[error("Vault answered {status}: {}", .errors.join("; "))]
    Status { status: u16, errors: Vec<String> },
    /// No answer in time, connection refused or reset: Vault may be down.
    #[error("{0}")]
    Unreachable(String),
    /// Vault answered something that is not the JSON we expect.
    #[error("cannot decode Vault's answer: {0}")]
    Decode(String),
}

impl VaultError {
    /// True when Vault itself said the thing does not exist (404, or Transit's 400 "not found").
    pub fn is_not_found(&self) -> bool {
        matches!(self, VaultError::Status { status: 404, .. })
    }
}

/// The Vault client shared by the whole process.
pub struct VaultClient {
    http: reqwest::Client,
    addr: String,
    token_source: TokenSource,
    token: RwLock<Secret>,
}

/// What `auth/token/lookup-self` says about our token (the parts Aegis uses).
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub accessor: String,
    pub display_name: String,
    pub ttl: u64,
    pub renewable: bool,
    pub policies: Vec<String>,
}

impl VaultClient {
    pub fn new(cfg: &VaultConfig) -> Result<Self, VaultError> {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("aegis/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| VaultError::Unreachable(format!("cannot build the HTTP client: {e}")))?;
        let token = Self::read_token(&cfg.token)?;
        Ok(VaultClient {
            http,
            addr: cfg.addr.clone(),
            token_source: cfg.token.clone(),
            token: RwLock::new(token),
        })
    }

    fn read_token(source: &TokenSource) -> Result<Secret, VaultError> {
        match source {
            TokenSource::Value(s) => Ok(s.clone()),
            TokenSource::File(path) => std::fs::read_to_string(path)
                .map(|t| Secret::new(t.trim()))
                .map_err(|e| {
                    VaultError::Unreachable(format!(
                        "cannot read token file {}: {e}",
                        path.display()
                    ))
                }),
        }
    }

    /// Re-reads a file-based token (a rotated projected token, a new Agent sink file).
    pub fn reload_token(&self) -> Result<(), VaultError> {
        if let TokenSource::File(_) = self.token_source {
            let t = Self::read_token(&self.token_source)?;
            *self.token.write().expect("token lock poisoned") = t;
        }
        Ok(())
    }

    fn token(&self) -> Secret {
        self.token.read().expect("token lock poisoned").clone()
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Checks the credential with vaultrs' `lookup-self` on the shared HTTP client.
    pub async fn lookup_self(&self) -> Result<TokenInfo, VaultError> {
        let client = self.vaultrs_client()?;
        let r = vaultrs::token::lookup_self(&client)
            .await
            .map_err(from_vaultrs)?;
        Ok(TokenInfo {
            accessor: r.accessor,
            display_name: r.display_name,
            ttl: r.ttl,
            renewable: r.renewable.unwrap_or(false),
            policies: r.policies,
        })
    }

    fn vaultrs_client(&self) -> Result<vaultrs::client::VaultClient, VaultError> {
        let address = url::Url::parse(&self.addr).map_err(|e| VaultError::Decode(e.to_string()))?;
        let token = self.token();
        let settings = vaultrs::client::VaultClientSettings {
            address: address.clone(),
            ca_certs: Vec::new(),
            identity: None,
            timeout: None,
            token: token.expose().to_string(),
            verify: true,
            version: 1,
            wrapping: false,
            namespace: None,
            proxy: None,
        };
        Ok(vaultrs::client::VaultClient {
            http: rustify::clients::reqwest::Client::new(address.as_str(), self.http.clone()),
            middle: vaultrs::api::EndpointMiddleware {
                token: token.expose().to_string(),
                version: "v1".into(),
                wrap: None,
                namespace: None,
            },
            settings,
        })
    }

    /// Sends one request to `/v1/{path}` and returns the `data` object of the answer
    /// (or `Value::Null` for 204).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, VaultError> {
        let url = format!("{}/v1/{}", self.addr, path);
        let mut req = self
            .http
            .request(method, &url)
            .header("X-Vault-Token", self.token().expose())
            .header("X-Vault-Request", "true");
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(transport_error)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(transport_error)?;
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        if !status.is_success() {
            let errors = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.errors)
                .unwrap_or_else(|_| vec![String::from_utf8_lossy(&bytes).trim().to_string()]);
            return Err(VaultError::Status {
                status: status.as_u16(),
                errors,
            });
        }
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|e| VaultError::Decode(e.to_string()))?;
        Ok(match v {
            Value::Object(mut m) => m.remove("data").unwrap_or(Value::Null),
            _ => Value::Null,
        })
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
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<String>,
}

fn transport_error(e: reqwest::Error) -> VaultError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "transport error"
    };
    // The URL is ours (no secret in it); the token travels in a header and is never printed.
    VaultError::Unreachable(format!("{kind}: {}", error_chain(&e)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn from_vaultrs(e: vaultrs::error::ClientError) -> VaultError {
    use vaultrs::error::ClientError;
    match e {
        ClientError::APIError { code, errors } => VaultError::Status {
            status: code,
            errors,
        },
        ClientError::RestClientError { source } => VaultError::Unreachable(error_chain(&source)),
        other => VaultError::Decode(other.to_string()),
    }
}
