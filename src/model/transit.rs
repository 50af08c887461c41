//! The Transit calls model signing makes, through [`VaultClient`] to whatever `VAULT_ADDR`
//! names (the sidecar, or Vault itself): read a key's versions, sign a digest, and ask
//! whether a version may still verify.
//!
//! Signing sends only the PAE's digest (`prehashed`, with the hash OMS fixes for the
//! curve, `asn1` marshaling) and pins `key_version` to the version whose public key the
//! bundle names. Verification asks Transit's verify endpoint about the chosen version,
//! so the endpoint's validity rule applies: through the sidecar, the retention rule
//! (retired versions verify until `retire_after`, revoked ones never); against Vault,
//! Vault's `min_decryption_version`.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{json, Value};

use super::bundle::Pae;
use super::keys::{transit_spki, SignerKey};
use super::ModelError;
use crate::crypto::KeyType;
use crate::vault::{VaultClient, VaultError};

/// A Transit key as the endpoint lists it.
pub struct TransitKey {
    pub name: String,
    /// Transit's `type`.
    pub type_name: String,
    pub key_type: Option<KeyType>,
    pub latest_version: u32,
    pub min_decryption_version: u32,
    /// SubjectPublicKeyInfo DER of every listed version.
    pub versions: BTreeMap<u32, Vec<u8>>,
}

impl TransitKey {
    /// The signing key of `version`, when it is an ECDSA key OMS accepts.
    pub fn signer(&self, version: u32) -> Result<SignerKey, ModelError> {
        let der = self.versions.get(&version).ok_or_else(|| {
            ModelError::Key(format!(
                "key {:?} lists no public key for version {version}",
                self.name
            ))
        })?;
        SignerKey::from_spki(der).map_err(|e| {
            ModelError::Key(format!(
                "key {:?} is a {} key: {e}; create it with type ecdsa-p256, ecdsa-p384 or ecdsa-p521",
                self.name, self.type_name
            ))
        })
    }
}

/// Errors of one Transit call about key `key`.
pub(super) fn vault_error(key: &str, e: VaultError) -> ModelError {
    match e {
        VaultError::Status { status: 404, .. } => {
            ModelError::Key(format!("Transit has no key {key:?} ({e})"))
        }
        other => ModelError::Vault(other.into()),
    }
}

/// `GET {mount}/keys/{key}`: every version with its public key.
pub async fn read_key(
    vault: &VaultClient,
    mount: &str,
    key: &str,
) -> Result<TransitKey, ModelError> {
    let info = vault
        .transit_read_key(mount, key)
        .await
        .map_err(|e| vault_error(key, e))?;
    let key_type = KeyType::from_transit(&info.key_type);
    let mut versions = BTreeMap::new();
    for (n, entry) in &info.keys {
        let (Ok(n), Some(kt), Some(text)) = (
            n.parse::<u32>(),
            key_type,
            entry.get("public_key").and_then(Value::as_str),
        ) else {
            continue;
        };
        if let Ok(der) = transit_spki(kt, text) {
            versions.insert(n, der);
        }
    }
    Ok(TransitKey {
        name: key.to_string(),
        type_name: info.key_type,
        key_type,
        latest_version: info.latest_version,
        min_decryption_version: info.min_decryption_version,
        versions,
    })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// One version of a Transit key, with its public key: what signs and what verifies.
pub struct KeyVersion<'a> {
    pub vault: &'a VaultClient,
    pub mount: &'a str,
    pub key: &'a str,
    pub version: u32,
    pub signer: &'a SignerKey,
}

impl KeyVersion<'_> {
    /// Transit's sign or verify of the PAE's digest (`prehashed`, the curve's hash, asn1).
    async fn call(
        &self,
        op: &str,
        pae: &Pae<'_>,
        extra: (&str, Value),
    ) -> Result<Value, VaultError> {
        let mut body = json!({
            "input": b64(&self.signer.digest(pae)),
            "prehashed": true,
            "marshaling_algorithm": "asn1",
        });
        body[extra.0] = extra.1;
        let hash = self.signer.hash().name();
        self.vault
            .transit_write(op, self.mount, self.key, Some(hash), &body)
            .await
    }

    /// Transit signs the PAE with this version; returns the DER signature without its
    /// `vault:vN:` prefix.
    pub async fn sign(&self, pae: &Pae<'_>) -> Result<Vec<u8>, ModelError> {
        let (key, version) = (self.key, self.version);
        let data = self
            .call("sign", pae, ("key_version", version.into()))
            .await
            .map_err(|e| vault_error(key, e))?;
        let text = data["signature"].as_str().unwrap_or_default();
        let prefix = format!("vault:v{version}:");
        let encoded = text.strip_prefix(&prefix).ok_or_else(|| {
            ModelError::Signature(format!(
                "Transit answered a signature that is not by version {version}: {:?}",
                text.split(':').take(2).collect::<Vec<_>>().join(":")
            ))
        })?;
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| ModelError::Signature(format!("Transit's signature is not base64: {e}")))
    }

    /// Asks Transit whether `signature` by this version over the PAE verifies now: the
    /// endpoint's validity rule decides (retired, revoked, too old).
    pub async fn check(&self, pae: &Pae<'_>, signature: &[u8]) -> Result<(), ModelError> {
        let (key, version) = (self.key, self.version);
        let sig = format!("vault:v{version}:{}", b64(signature));
        match self.call("verify", pae, ("signature", sig.into())).await {
            Ok(data) if data["valid"] == true => Ok(()),
            Ok(_) => Err(ModelError::Signature(format!(
                "Transit does not accept the signature for version {version} of key {key:?}"
            ))),
            Err(VaultError::Status {
                status: 400,
                errors,
            }) => Err(ModelError::KeyVersionRefused(format!(
                "version {version} of key {key:?} no longer verifies: {}",
                errors.join("; ")
            ))),
            Err(e) => Err(vault_error(key, e)),
        }
    }
}
