//! KV v2 reads and check-and-set writes (the retention record lives there).

use reqwest::Method;
use serde_json::{json, Value};

use super::{Retry, VaultClient, VaultError};

/// A KV v2 secret's data and the version it was read at (0: no secret yet).
#[derive(Debug, Clone, PartialEq)]
pub struct KvEntry {
    pub data: Value,
    pub version: u64,
}

/// The outcome of a check-and-set write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasWrite {
    /// Written; the secret's new version.
    Written(u64),
    /// Someone else wrote first: read again and retry.
    Conflict,
}

fn data_path(mount: &str, path: &str) -> String {
    format!(
        "{}/data/{}",
        mount.trim_matches('/'),
        path.trim_matches('/')
    )
}

impl VaultClient {
    /// Reads `mount/data/path`. A missing (or deleted) secret is `version: 0`, `data: null`.
    pub async fn kv2_read(&self, mount: &str, path: &str) -> Result<KvEntry, VaultError> {
        match self
            .request(Method::GET, &data_path(mount, path), None)
            .await
        {
            Ok(d) => Ok(KvEntry {
                version: d["metadata"]["version"].as_u64().unwrap_or(0),
                data: d.get("data").cloned().unwrap_or(Value::Null),
            }),
            Err(e) if e.is_not_found() => Ok(KvEntry {
                data: Value::Null,
                version: 0,
            }),
            Err(e) => Err(e),
        }
    }

    /// Writes `data` if the secret is still at version `cas` (0: must not exist yet).
    pub async fn kv2_write_cas(
        &self,
        mount: &str,
        path: &str,
        data: &Value,
        cas: u64,
    ) -> Result<CasWrite, VaultError> {
        let body = json!({ "options": { "cas": cas }, "data": data });
        match self
            .request_with(
                Retry::IfNotSent,
                Method::POST,
                &data_path(mount, path),
                Some(&body),
            )
            .await
        {
            Ok(d) => Ok(CasWrite::Written(d["version"].as_u64().unwrap_or(cas + 1))),
            Err(VaultError::Status {
                status: 400,
                errors,
            }) if errors.iter().any(|e| e.contains("check-and-set")) => Ok(CasWrite::Conflict),
            Err(e) => Err(e),
        }
    }
}
