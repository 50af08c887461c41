//! Signing: validate, forward to Transit with the sidecar's credential, keep versions current.
//!
//! Input that would make Vault answer 500 (an unknown RSA signature algorithm, a
//! `key_version` above the latest) is refused here with a 400, so callers never see a 5xx
//! for their own mistakes. A `key_version` that may not sign (too old for Vault, revoked
//! or past its retention window: `sign::version`) is refused before Vault is asked. A
//! signature made with a version newer than the cache knows triggers a keyset refresh as
//! soon as the one-read-per-second rule of `keys::bounds` allows (at once, or at the end
//! of that second).

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use tracing::debug;

use crate::crypto::{HashAlgorithm, KeyType, RsaScheme};
use crate::error::Error;
use crate::keys::{KeyCache, KeySet};
use crate::transit::TransitRequest;
use crate::vault::{VaultClient, VaultError};
use crate::verify::{
    decode_input, load_keyset, require_context_for_derived, resolve_encoding, resolve_for_key,
    rsa_scheme, Resolved,
};

pub mod coalesce;
mod version;

use coalesce::Coalescer;

/// Validates sign requests and sends them to Transit through the [`Coalescer`].
pub struct Signer {
    keys: Arc<KeyCache>,
    coalescer: Arc<Coalescer>,
}

impl Signer {
    /// `limits`: of each Transit sign call (see [`coalesce`]).
    pub fn new(keys: Arc<KeyCache>, vault: Arc<VaultClient>, limits: coalesce::Limits) -> Self {
        let coalescer = Coalescer::new(vault, keys.mount().to_string(), limits);
        Signer { keys, coalescer }
    }

    /// Signs a request for `key`; returns Transit's `data` object.
    pub async fn sign(
        &self,
        key: &str,
        path_hash: Option<&str>,
        req: &TransitRequest,
    ) -> Result<Value, Error> {
        let started = Instant::now();
        let encoding = resolve_encoding(&req.options)?;
        let mut set = load_keyset(&self.keys, key, "signing key not found").await?;
        let res = resolve_for_key(&set, &req.options, path_hash, encoding, false)?;
        if let Some(v) = req
            .options
            .key_version
            .filter(|v| *v > i64::from(set.latest_version))
        {
            set = self.keys.refresh_when_allowed(key, started).await?;
            if !req.batch && v > i64::from(set.latest_version) {
                return Err(Error::bad_request(
                    "requested version for signing is higher than the latest key version",
                ));
            }
        }
        if let Some(refusal) = version::refused_signing_version(&set, req.options.key_version) {
            if !req.batch {
                let message = version::single_refusal(&req.items[0], &refusal);
                return Err(Error::bad_request(message));
            }
            return Ok(version::batch_refusal(req, &refusal));
        }
        if !req.batch {
            refuse_what_vault_fails_on(&set, &res, req)?;
        }
        let data = if req.batch {
            self.coalescer.sign_batch(key, path_hash, req).await?
        } else {
            match self.coalescer.sign_one(key, path_hash, req).await {
                Ok(data) => data,
                Err(e) => return Err(self.stale_version_refusal(key, req, e, started).await),
            }
        };
        let newest = newest_key_version(&data);
        if newest > u64::from(set.latest_version) {
            debug!(
                key,
                key_version = newest,
                cached_latest = set.latest_version,
                "sign used a newer version; refreshing keyset"
            );
            let version = u32::try_from(newest).unwrap_or(u32::MAX);
            self.keys.signed_with(key, version, Instant::now());
        }
        Ok(data)
    }
}

impl Signer {
    /// Vault answers 500 to a `key_version` it no longer signs with. When the cached
    /// keyset predates that change (a revocation within the refresh interval), re-read it
    /// and answer the 400 a fresh cache gives; any other failure is passed on. A re-read
    /// finished after `started` counts, so concurrent refusals share one.
    async fn stale_version_refusal(
        &self,
        key: &str,
        req: &TransitRequest,
        e: VaultError,
        started: Instant,
    ) -> Error {
        let version_named = req.options.key_version.is_some_and(|v| v > 0);
        if !version_named || !matches!(e, VaultError::Status { status: 500, .. }) {
            return e.into();
        }
        // Waits (at most a second) for the one-read-per-second rule: a re-read is what
        // turns Vault's 500 into the caller's 400.
        let refusal = match self.keys.refresh_when_allowed(key, started).await {
            Ok(set) => version::refused_signing_version(&set, req.options.key_version),
            Err(_) => None,
        };
        refusal.map_or_else(|| e.into(), Error::bad_request)
    }
}

/// Single-mode input that Vault's sign step answers with a 500: refused here with a 400
/// and Vault's own message, before Vault is asked.
pub(crate) fn refuse_what_vault_fails_on(
    set: &KeySet,
    res: &Resolved,
    req: &TransitRequest,
) -> Result<(), Error> {
    let opts = &req.options;
    if opts.key_version.is_some_and(|v| v < 0) {
        return Err(Error::bad_request(
            "requested version for signing is negative",
        ));
    }
    require_context_for_derived(set, req)?;
    let item = &req.items[0];
    match set.local_type {
        Some(KeyType::Rsa(bits)) => {
            let scheme = rsa_scheme(set, res, opts)?;
            let input = decode_input(item)?;
            if res.hash == HashAlgorithm::None {
                if input.len() + 11 > bits as usize / 8 {
                    return Err(Error::bad_request(
                        "crypto/rsa: message too long for RSA key size",
                    ));
                }
            } else if res.prehashed && input.len() != res.hash.output_len() {
                return Err(Error::bad_request(match scheme {
                    RsaScheme::Pkcs1v15 => "crypto/rsa: input must be hashed message",
                    RsaScheme::Pss(_) => "crypto/rsa: input must be hashed with given hash",
                }));
            }
        }
        Some(KeyType::Ecdsa(_)) if res.prehashed && decode_input(item)?.is_empty() => {
            return Err(Error::bad_request("ecdsa: hash cannot be empty"));
        }
        _ => {}
    }
    Ok(())
}

/// The highest `key_version` in a sign answer (single or batch).
fn newest_key_version(data: &Value) -> u64 {
    let single = data.get("key_version").and_then(Value::as_u64).unwrap_or(0);
    let batch = data
        .get("batch_results")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.get("key_version").and_then(Value::as_u64))
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    single.max(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_version_from_single_and_batch_answers() {
        assert_eq!(
            newest_key_version(&serde_json::json!({"key_version": 3, "signature": "vault:v3:x"})),
            3
        );
        assert_eq!(
            newest_key_version(
                &serde_json::json!({"batch_results": [{"key_version": 2}, {"key_version": 0, "error": "x"}, {"key_version": 5}]})
            ),
            5
        );
        assert_eq!(newest_key_version(&serde_json::json!({})), 0);
    }
}
