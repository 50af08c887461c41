//! KV v2 reads, check-and-set writes (the retention record lives there) and the
//! metadata listing of a folder that the keyset watcher polls.

use std::collections::BTreeMap;

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

/// The entries of a `key_info` object, sub-folders left out.
fn detailed_entries(key_info: Value) -> BTreeMap<String, Value> {
    match key_info {
        Value::Object(m) => m.into_iter().filter(|(k, _)| !k.ends_with('/')).collect(),
        _ => BTreeMap::new(),
    }
}

fn data_path(mount: &str, path: &str) -> String {
    format!(
        "{}/data/{}",
        mount.trim_matches('/'),
        path.trim_matches('/')
    )
}

/// What one `LIST {mount}/detailed-metadata/{folder}` showed: each entry's name and its
/// full metadata (`current_version`, `updated_time`, per-version deletion times...).
#[derive(Debug, Clone)]
pub enum KvListing {
    /// The entries of the folder (none: an empty or absent folder, which Vault answers 404).
    Entries(BTreeMap<String, Value>),
    /// The server has no `detailed-metadata` endpoint (HashiCorp Vault, OpenBao before
    /// 2.2): Vault's answer.
    Unsupported(VaultError),
}

impl VaultClient {
    /// Lists the entries of a KV v2 folder with their metadata in one call (OpenBao 2.2+).
    /// Sub-folders (`name/`) are left out. Needs `list` on `{mount}/detailed-metadata/{folder}`.
    pub async fn kv2_list_detailed(
        &self,
        mount: &str,
        folder: &str,
    ) -> Result<KvListing, VaultError> {
        let path = format!(
            "{}/detailed-metadata/{}/",
            mount.trim_matches('/'),
            folder.trim_matches('/')
        );
        let list = Method::from_bytes(b"LIST").expect("LIST is a valid method");
        match self
            .request_with(Retry::Idempotent, list, &path, None)
            .await
        {
            Ok(mut d) => Ok(KvListing::Entries(detailed_entries(d["key_info"].take()))),
            Err(VaultError::Status {
                status: 404,
                errors,
            }) if errors.is_empty() => Ok(KvListing::Entries(BTreeMap::new())),
            Err(
                e @ VaultError::Status {
                    status: 404 | 405, ..
                },
            ) => Ok(KvListing::Unsupported(e)),
            Err(e) => Err(e),
        }
    }

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

    /// Reads `mount/data/path`; `None` only when Vault says the secret is not there (never
    /// written, or its current version deleted or destroyed: a 404 with no error text). A
    /// 404 with a message (no such mount) is an error: absence is never guessed.
    pub async fn kv2_get(&self, mount: &str, path: &str) -> Result<Option<KvEntry>, VaultError> {
        match self
            .request(Method::GET, &data_path(mount, path), None)
            .await
        {
            Ok(d) => Ok(Some(KvEntry {
                version: d["metadata"]["version"].as_u64().unwrap_or(0),
                data: d.get("data").cloned().unwrap_or(Value::Null),
            })),
            Err(VaultError::Status {
                status: 404,
                errors,
            }) if errors.is_empty() => Ok(None),
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
