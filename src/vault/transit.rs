//! Transit calls: read a key, sign, verify (for what cannot be verified locally).

use std::collections::BTreeMap;

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value};

use hyper::body::Bytes;

use super::{Body, Retry, VaultClient, VaultError};

/// `GET {mount}/keys/{name}` as Transit answers it.
#[derive(Debug, Clone, Deserialize)]
pub struct TransitKeyInfo {
    #[serde(rename = "type")]
    pub key_type: String,
    pub latest_version: u32,
    #[serde(default)]
    pub min_decryption_version: u32,
    #[serde(default)]
    pub min_encryption_version: u32,
    #[serde(default)]
    pub min_available_version: u32,
    #[serde(default)]
    pub derived: bool,
    #[serde(default)]
    pub supports_signing: bool,
    /// Version number to an entry: for asymmetric keys `{public_key, creation_time, name}`,
    /// for symmetric keys a creation timestamp.
    #[serde(default)]
    pub keys: BTreeMap<String, Value>,
    /// Every field, as Vault sent it, to answer `GET keys` the way Vault does.
    #[serde(skip)]
    pub raw: Map<String, Value>,
}

fn path(mount: &str, op: &str, key: &str, hash: Option<&str>) -> String {
    match hash {
        Some(h) => format!("{mount}/{op}/{key}/{h}"),
        None => format!("{mount}/{op}/{key}"),
    }
}

impl TransitKeyInfo {
    /// Decodes `GET keys`' `data` (from Vault, or from a snapshot of it).
    pub fn from_data(data: Value) -> Result<Self, VaultError> {
        let raw = match &data {
            Value::Object(m) => m.clone(),
            _ => return Err(VaultError::Decode("key data is not an object".into())),
        };
        let mut info: TransitKeyInfo =
            serde_json::from_value(data).map_err(|e| VaultError::Decode(e.to_string()))?;
        info.raw = raw;
        Ok(info)
    }
}

impl VaultClient {
    pub async fn transit_read_key(
        &self,
        mount: &str,
        key: &str,
    ) -> Result<TransitKeyInfo, VaultError> {
        let data = self
            .request(Method::GET, &path(mount, "keys", key, None), None)
            .await?;
        TransitKeyInfo::from_data(data)
    }

    /// `POST {mount}/{op}/{key}[/{hash}]` for `op` = `sign` or `verify`, with the body as
    /// given; returns `data`. Verify changes nothing, so it is retried like a read; sign
    /// only when Vault provably did not act on it.
    pub async fn transit_write(
        &self,
        op: &str,
        mount: &str,
        key: &str,
        hash: Option<&str>,
        body: &Value,
    ) -> Result<Value, VaultError> {
        let retry = if op == "verify" {
            Retry::Idempotent
        } else {
            Retry::IfNotSent
        };
        self.request_with(retry, Method::POST, &path(mount, op, key, hash), Some(body))
            .await
    }

    /// [`transit_write`](Self::transit_write) with a body of JSON text sent as it is (a
    /// caller's body as received, or a batch built from callers' texts).
    pub async fn transit_write_raw(
        &self,
        op: &str,
        mount: &str,
        key: &str,
        hash: Option<&str>,
        body: &Bytes,
    ) -> Result<Value, VaultError> {
        let retry = if op == "verify" {
            Retry::Idempotent
        } else {
            Retry::IfNotSent
        };
        self.request_body(
            retry,
            Method::POST,
            &path(mount, op, key, hash),
            Some(Body::Raw(body)),
        )
        .await
    }
}

impl VaultClient {
    /// One key-management `POST` (rotate, config, trim, create) whose answer is not needed.
    async fn post_key_op(&self, retry: Retry, path: &str, body: &Value) -> Result<(), VaultError> {
        self.request_with(retry, Method::POST, path, Some(body))
            .await
            .map(drop)
    }

    /// `POST {mount}/keys/{key}/rotate`: a new latest version (rotation jobs only).
    pub async fn transit_rotate(&self, mount: &str, key: &str) -> Result<(), VaultError> {
        self.post_key_op(
            Retry::IfNotSent,
            &format!("{mount}/keys/{key}/rotate"),
            &Value::Object(Map::new()),
        )
        .await
    }

    /// `POST {mount}/keys/{key}/config` with `min_decryption_version` (setting the same
    /// value twice changes nothing, so it is retried like a read).
    pub async fn transit_set_min_decryption_version(
        &self,
        mount: &str,
        key: &str,
        version: u32,
    ) -> Result<(), VaultError> {
        self.transit_set_min_version(mount, key, "min_decryption_version", version)
            .await
    }

    /// `POST {mount}/keys/{key}/config` with `min_encryption_version`: Vault then refuses
    /// to sign with a lower `key_version` (retried like a read, as above).
    pub async fn transit_set_min_encryption_version(
        &self,
        mount: &str,
        key: &str,
        version: u32,
    ) -> Result<(), VaultError> {
        self.transit_set_min_version(mount, key, "min_encryption_version", version)
            .await
    }

    async fn transit_set_min_version(
        &self,
        mount: &str,
        key: &str,
        field: &str,
        version: u32,
    ) -> Result<(), VaultError> {
        self.post_key_op(
            Retry::Idempotent,
            &format!("{mount}/keys/{key}/config"),
            &serde_json::json!({ field: version }),
        )
        .await
    }

    /// `POST {mount}/keys/{key}` with `type`: creates a key (an existing key of that name
    /// is left as it is, so this is retried like a read).
    pub async fn transit_create_key(
        &self,
        mount: &str,
        key: &str,
        key_type: &str,
    ) -> Result<(), VaultError> {
        self.post_key_op(
            Retry::Idempotent,
            &format!("{mount}/keys/{key}"),
            &serde_json::json!({ "type": key_type }),
        )
        .await
    }

    /// `POST {mount}/sign/{key}` of `input` with version `key_version` pinned; returns
    /// Transit's `vault:vN:...` signature (rotation jobs: record endorsements).
    pub async fn transit_sign_version(
        &self,
        mount: &str,
        key: &str,
        input: &[u8],
        key_version: u32,
    ) -> Result<String, VaultError> {
        use base64::Engine as _;
        let body = serde_json::json!({
            "input": base64::engine::general_purpose::STANDARD.encode(input),
            "key_version": key_version,
        });
        let data = self.transit_write("sign", mount, key, None, &body).await?;
        data["signature"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| VaultError::Decode("sign answered without a signature".into()))
    }

    /// `POST {mount}/keys/{key}/config` with `min_decryption_version` and
    /// `min_encryption_version` both set to `version` (idempotent).
    pub async fn transit_set_min_versions(
        &self,
        mount: &str,
        key: &str,
        version: u32,
    ) -> Result<(), VaultError> {
        self.post_key_op(
            Retry::Idempotent,
            &format!("{mount}/keys/{key}/config"),
            &serde_json::json!({
                "min_decryption_version": version,
                "min_encryption_version": version,
            }),
        )
        .await
    }

    /// `POST {mount}/keys/{key}/trim` with `min_available_version`: Vault deletes the key
    /// material of every lower version for good (idempotent).
    pub async fn transit_trim(
        &self,
        mount: &str,
        key: &str,
        min_available_version: u32,
    ) -> Result<(), VaultError> {
        self.post_key_op(
            Retry::Idempotent,
            &format!("{mount}/keys/{key}/trim"),
            &serde_json::json!({ "min_available_version": min_available_version }),
        )
        .await
    }

    /// `LIST {mount}/keys`: every key name (empty when there is none).
    pub async fn transit_list_keys(&self, mount: &str) -> Result<Vec<String>, VaultError> {
        let list = Method::from_bytes(b"LIST").expect("LIST is a valid method");
        match self
            .request_with(Retry::Idempotent, list, &format!("{mount}/keys"), None)
            .await
        {
            Ok(d) => Ok(d["keys"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()),
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}
