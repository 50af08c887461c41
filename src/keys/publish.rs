//! The public keys of a key that verify now, for verifiers outside Aegis: every version
//! [`KeySet::version_status`] accepts (retired-but-valid versions included, with the end
//! of their window), as a PEM bundle and as a JWK Set (RFC 7517).
//!
//! Vault stops returning a version's public key once `min_decryption_version` passes it;
//! the cache keeps it, and the key's trusted retention record keeps it valid until its
//! `retire_after`. Publishing only what Vault returns would make cosign, Kyverno or
//! `model_signing` refuse signatures Aegis still accepts right after a rotation. What is
//! published is decided by the one validity rule (no second copy here): a version that is
//! revoked, past its window, or recorded only in an untrusted record is left out.
//!
//! Both renderings are deterministic (no time of generation in them), newest version
//! first, so that a tool taking one key gets the signing version and a ConfigMap written
//! from them changes only when the set does. Used by `aegis keys publish|export`, the
//! sidecar's `GET /v1/aegis/keys/{key}/jwks.json` and `aegis sync`.

use std::time::SystemTime;

use serde_json::{json, Value};

use super::retention::{format_time, parse_time};
use super::{KeyCache, KeySet, VersionStatus};
use crate::crypto::KeyType;
use crate::model::keys::{jwk, jwk_spki, spki_pem, transit_spki};
use crate::vault::VaultError;

/// The JWK member holding a retired version's `retire_after` (RFC 3339, UTC): not a
/// registered JWK parameter (RFC 7517 §4, IANA "JSON Web Key Parameters"), so verifiers
/// ignore it; absent for a current version.
pub const RETIRE_AFTER_MEMBER: &str = "aegis_retire_after";

/// Why a published version verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishedStatus {
    /// Vault's own rule accepts it (at or above `min_decryption_version`, not recorded).
    Current,
    /// Recorded in the trusted retention record: valid until `retire_after`.
    Retired { retire_after: SystemTime },
}

/// One version that verifies.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedVersion {
    pub version: u32,
    /// The SubjectPublicKeyInfo, DER.
    pub spki_der: Vec<u8>,
    pub status: PublishedStatus,
    /// Its JWK (`kid` `"{key}:v{version}"`), checked when the version was taken in.
    jwk: Value,
}

impl PublishedVersion {
    /// The end of a retired version's window.
    pub fn retire_after(&self) -> Option<SystemTime> {
        match self.status {
            PublishedStatus::Current => None,
            PublishedStatus::Retired { retire_after } => Some(retire_after),
        }
    }
}

/// What verifies of one key now.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedKeys {
    /// The Transit key name.
    pub key: String,
    /// Transit's `type` (`ed25519`, `ecdsa-p256`, ...).
    pub key_type: String,
    /// Newest first.
    pub versions: Vec<PublishedVersion>,
    /// `None` for a key with no public keys (hmac, aes, derived).
    local_type: Option<KeyType>,
}

/// The `kid` of a version: key name and version.
pub fn kid(key: &str, version: u32) -> String {
    format!("{key}:v{version}")
}

impl PublishedKeys {
    /// The versions of `set` that verify at `now` by [`KeySet::version_status`]. A version
    /// whose public key cannot be rendered (logged when it entered the cache) is left out.
    pub fn from_keyset(name: &str, set: &KeySet, now: SystemTime) -> PublishedKeys {
        let local_type = set.local_type.filter(|_| !set.derived);
        let versions = local_type.map_or_else(Vec::new, |t| {
            set.versions
                .keys()
                .rev()
                .filter_map(|n| published_version(name, set, t, *n, now))
                .collect()
        });
        PublishedKeys {
            key: name.to_string(),
            key_type: set.key_type.clone(),
            versions,
            local_type,
        }
    }

    /// Reads back a JWK Set written by [`jwks`](Self::jwks) (a sidecar's
    /// `/v1/aegis/keys/{key}/jwks.json`): every member must be a version of `key`.
    pub fn from_jwks(key: &str, jwks: &Value) -> Result<PublishedKeys, String> {
        let entries = jwks["keys"]
            .as_array()
            .ok_or("not a JWK Set (no \"keys\" array)")?;
        let mut out = PublishedKeys {
            key: key.to_string(),
            key_type: String::new(),
            versions: Vec::new(),
            local_type: None,
        };
        for entry in entries {
            let v = read_jwk(key, entry)?;
            let (key_type, _) = jwk_spki(entry).map_err(|e| e.to_string())?;
            if out.local_type.is_some_and(|t| t != key_type) {
                return Err(format!("the JWK Set of {key:?} mixes key types"));
            }
            out.local_type = Some(key_type);
            out.key_type = key_type.transit_name();
            out.versions.push(v);
        }
        out.versions.sort_by_key(|v| std::cmp::Reverse(v.version));
        Ok(out)
    }

    /// Why nothing can be published for this key type (its refusal), if so.
    pub fn no_public_keys(&self) -> Option<String> {
        self.local_type.is_none().then(|| {
            format!(
                "key {:?} is a {} key: it has no public key to publish",
                self.key, self.key_type
            )
        })
    }

    /// The version `version`, if it verifies.
    pub fn version(&self, version: u32) -> Option<&PublishedVersion> {
        self.versions.iter().find(|v| v.version == version)
    }

    /// The same set with only `version` (empty when it does not verify).
    pub fn only(&self, version: u32) -> PublishedKeys {
        PublishedKeys {
            versions: self.version(version).into_iter().cloned().collect(),
            ..self.clone()
        }
    }

    /// When this set changes by time alone: the earliest window end.
    pub fn next_change(&self) -> Option<SystemTime> {
        self.versions
            .iter()
            .filter_map(PublishedVersion::retire_after)
            .min()
    }

    /// One `PUBLIC KEY` PEM block per version, each preceded by `#` comment lines naming
    /// the key, the version (its `kid`) and its window; PEM parsers (OpenSSL, Python's
    /// `cryptography`) skip text outside the BEGIN/END lines.
    pub fn pem_bundle(&self) -> String {
        let mut out = format!(
            "# Public keys of Transit key {:?} that verify, newest first ({}).\n",
            self.key,
            match self.versions.len() {
                0 => "none verifies".to_string(),
                1 => "1 version".to_string(),
                n => format!("{n} versions"),
            }
        );
        for v in &self.versions {
            let window = match v.retire_after() {
                None => "current".to_string(),
                Some(t) => format!("retired, verifies until {}", format_time(t)),
            };
            out.push_str(&format!(
                "\n# key {:?} version {} (kid {:?}): {window}\n",
                self.key,
                v.version,
                kid(&self.key, v.version)
            ));
            out.push_str(&spki_pem(&v.spki_der));
        }
        out
    }

    /// The JWK Set: one JWK per version (`kid` `"{key}:v{N}"`, `use` `sig`, `alg` except for
    /// RSA, whose Transit signatures may be PSS or PKCS#1 v1.5), a retired version with
    /// its window end in [`RETIRE_AFTER_MEMBER`].
    pub fn jwks(&self) -> Value {
        json!({ "keys": self.versions.iter().map(|v| v.jwk.clone()).collect::<Vec<_>>() })
    }
}

/// Version `n` of `set` as published, when it verifies at `now`.
fn published_version(
    name: &str,
    set: &KeySet,
    key_type: KeyType,
    n: u32,
    now: SystemTime,
) -> Option<PublishedVersion> {
    let VersionStatus::Valid(v) = set.version_status_at(n, now) else {
        return None;
    };
    let spki_der = transit_spki(key_type, &v.public_key).ok()?;
    let status = match set.retention.get(&n) {
        Some(r) => PublishedStatus::Retired {
            retire_after: r.retire_after,
        },
        None => PublishedStatus::Current,
    };
    let mut jwk = jwk(key_type, &spki_der, &kid(name, n)).ok()?;
    if let (PublishedStatus::Retired { retire_after }, Value::Object(m)) = (status, &mut jwk) {
        m.insert(RETIRE_AFTER_MEMBER.into(), format_time(retire_after).into());
    }
    Some(PublishedVersion {
        version: n,
        spki_der,
        status,
        jwk,
    })
}

/// One member of a JWK Set of `key`, as [`PublishedKeys::jwks`] wrote it.
fn read_jwk(key: &str, entry: &Value) -> Result<PublishedVersion, String> {
    let kid_text = entry["kid"].as_str().unwrap_or_default();
    let version = kid_text
        .strip_prefix(key)
        .and_then(|r| r.strip_prefix(":v"))
        .and_then(|n| n.parse::<u32>().ok())
        .ok_or_else(|| format!("JWK kid {kid_text:?} does not name a version of {key:?}"))?;
    let (_, spki_der) = jwk_spki(entry).map_err(|e| format!("{kid_text}: {e}"))?;
    let status = match &entry[RETIRE_AFTER_MEMBER] {
        Value::Null => PublishedStatus::Current,
        t => PublishedStatus::Retired {
            retire_after: t.as_str().and_then(parse_time).ok_or_else(|| {
                format!("{kid_text}: {RETIRE_AFTER_MEMBER} is not an RFC 3339 time")
            })?,
        },
    };
    Ok(PublishedVersion {
        version,
        spki_der,
        status,
        jwk: entry.clone(),
    })
}

/// What verifies of `key` now, loaded through the cache as verification loads it (no
/// Vault call when the key is cached).
pub async fn published_keys(cache: &KeyCache, key: &str) -> Result<PublishedKeys, VaultError> {
    let set = cache.get(key).await?;
    Ok(PublishedKeys::from_keyset(key, &set, SystemTime::now()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{info, record};
    use super::*;

    /// Vault: latest 5, min_decryption_version 3 (returns v3..v5); the record holds v1
    /// (window ended), v2 (window open) and v4 (revoked).
    fn keyset(now: SystemTime) -> KeySet {
        let hour = Duration::from_secs(3600);
        let record = record(&[
            (1, now - Duration::from_secs(60), false),
            (2, now + hour, false),
            (4, now + hour, true),
        ]);
        KeySet::merge(info(5, 3, &[3, 4, 5]), record, None)
    }

    #[test]
    fn publishes_exactly_what_verifies_newest_first() {
        let now = SystemTime::now();
        let p = PublishedKeys::from_keyset("k", &keyset(now), now);
        let kids: Vec<_> = p.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(kids, ["k:v5", "k:v3", "k:v2"]);
        let window = format_time(now + Duration::from_secs(3600));
        assert_eq!(p.jwks()["keys"][2][RETIRE_AFTER_MEMBER], window.as_str());
        assert!(p.jwks()["keys"][0].get(RETIRE_AFTER_MEMBER).is_none());
        assert_eq!(p.next_change().map(format_time), Some(window.clone()));
        let pem = p.pem_bundle();
        assert_eq!(pem.matches("-----BEGIN PUBLIC KEY-----").count(), 3);
        assert!(pem.contains(&format!(
            "# key \"k\" version 2 (kid \"k:v2\"): retired, verifies until {window}\n-----BEGIN PUBLIC KEY-----\n"
        )), "{pem}");
        assert!(pem.contains("# key \"k\" version 5 (kid \"k:v5\"): current\n"));
        // Time is an input: once v2's window ends it is left out.
        let later = PublishedKeys::from_keyset("k", &keyset(now), now + Duration::from_secs(3601));
        assert_eq!(
            later.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
            [5, 3]
        );
        assert_eq!(p.only(2).versions.len(), 1);
        assert!(p.only(4).versions.is_empty());
    }

    #[test]
    fn a_jwk_set_reads_back_to_the_same_keys() {
        let now = SystemTime::now();
        let p = PublishedKeys::from_keyset("k", &keyset(now), now);
        let back = PublishedKeys::from_jwks("k", &p.jwks()).unwrap();
        // Windows are published to the second.
        assert_eq!(back.jwks(), p.jwks());
        assert_eq!(back.pem_bundle(), p.pem_bundle());
        assert_eq!(back.key_type, "ed25519");
        let e = PublishedKeys::from_jwks("other", &p.jwks()).unwrap_err();
        assert!(e.contains("does not name a version of \"other\""), "{e}");
        assert!(PublishedKeys::from_jwks("k", &json!({})).is_err());
    }

    #[test]
    fn keys_without_public_keys_say_so() {
        let now = SystemTime::now();
        let mut set = keyset(now);
        set.local_type = None;
        set.key_type = "hmac".into();
        let p = PublishedKeys::from_keyset("k", &set, now);
        assert!(p.versions.is_empty());
        assert_eq!(
            p.no_public_keys().as_deref(),
            Some("key \"k\" is a hmac key: it has no public key to publish")
        );
        assert_eq!(p.jwks(), json!({"keys": []}));
    }
}
