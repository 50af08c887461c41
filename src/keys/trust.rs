//! Whether a retention record may be used: the record can narrow trust, never add to it.
//!
//! Anyone who can write the record's KV path could otherwise put their own public key in
//! an entry, stretch a `retire_after`, or write back an older record (KV v2 keeps every
//! version). So the sidecar uses a record's entries only when all of this holds
//! (docs/trust-model.md):
//! - it is endorsed by the key's endorsement key (`{prefix}{key}` in the same Transit
//!   mount, ed25519, signed by the rotation job only), whose public keys come from
//!   Transit like any key's;
//! - its generation (the endorsement key version that signed) is one Transit still
//!   serves (>= `min_decryption_version`: the job raises it after every write, so Vault
//!   forgets superseded generations) and not below the highest one this sidecar accepted;
//! - the signature verifies over [`RetentionRecord::endorsed_bytes`];
//! - mount and key are this key's, and every entry's public key equals Transit's for a
//!   version Transit still serves and the one pinned for that version.
//!
//! [`judge`] is pure (no I/O): the sidecar ([`super::KeyCache`]) and the rotation job
//! (`lifecycle`, which never builds on a record it cannot trust) use the same rule.

use std::collections::BTreeMap;

use serde_json::Value;

use super::retention::RetentionRecord;
use crate::crypto::{KeyType, PublicKey};
use crate::vault::TransitKeyInfo;

/// Why a record was refused: the `reason` label of `aegis_retention_record_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No endorsement, or no endorsement key in Transit.
    Unendorsed,
    /// The endorsement does not verify (forged or altered record).
    BadSignature,
    /// A generation Vault no longer serves, or older than one already accepted (replay).
    Superseded,
    /// An entry's public key differs from Transit's, or from the one pinned for its version.
    KeyMismatch,
    /// The record names another mount, key or endorsement key.
    WrongKey,
    /// The record is not in Aegis's format.
    Undecodable,
    /// A record that existed is gone (404, soft-deleted, metadata deleted): this sidecar
    /// accepted one, or the endorsement key shows a completed write.
    Disappeared,
}

impl Refusal {
    /// Every reason, for starting the counter's series at 0.
    pub const ALL: [Refusal; 7] = [
        Refusal::Unendorsed,
        Refusal::BadSignature,
        Refusal::Superseded,
        Refusal::KeyMismatch,
        Refusal::WrongKey,
        Refusal::Undecodable,
        Refusal::Disappeared,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unendorsed => "unendorsed",
            Refusal::BadSignature => "bad_signature",
            Refusal::Superseded => "superseded",
            Refusal::KeyMismatch => "key_mismatch",
            Refusal::WrongKey => "wrong_key",
            Refusal::Undecodable => "undecodable",
            Refusal::Disappeared => "disappeared",
        }
    }
}

/// The record as read from KV.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordRead {
    /// 404, soft-deleted or destroyed.
    Absent,
    Decoded(RetentionRecord),
    Undecodable,
}

/// What the record is judged against.
pub struct Evidence<'a> {
    pub mount: &'a str,
    pub key: &'a str,
    /// The signing key as Transit serves it now.
    pub signing: &'a TransitKeyInfo,
    pub endorsement_key: &'a str,
    /// The endorsement key as Transit serves it; `None` when it does not exist.
    pub endorser: Option<&'a TransitKeyInfo>,
    /// Public keys pinned per version (every version seen, by this sidecar).
    pub pins: &'a BTreeMap<u32, String>,
    /// The highest generation accepted so far (0: none).
    pub accepted: u32,
}

/// The verdict on one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// No record and nothing says one should exist: a key never retired by Aegis.
    Empty,
    Trusted(RetentionRecord),
    Refused(Refusal),
}

/// Judges `read` against `ev` (see the module documentation for the rule).
pub fn judge(ev: &Evidence<'_>, read: &RecordRead) -> Verdict {
    // A record existed once this sidecar accepted one, or once a job finished a write
    // (it raises the endorsement key's minimum past 1; until then the first write may
    // still be under way, and its absence is no alarm).
    let existed = ev.accepted > 0 || ev.endorser.is_some_and(|e| e.min_decryption_version > 1);
    let record = match read {
        RecordRead::Absent if existed => return Verdict::Refused(Refusal::Disappeared),
        RecordRead::Absent => return Verdict::Empty,
        RecordRead::Undecodable => return Verdict::Refused(Refusal::Undecodable),
        RecordRead::Decoded(r) => r,
    };
    if !existed && record.endorsement.is_none() && record.previous_keys.is_empty() {
        return Verdict::Empty; // grants nothing
    }
    match check(ev, record) {
        Ok(()) => Verdict::Trusted(record.clone()),
        Err(reason) => Verdict::Refused(reason),
    }
}

fn check(ev: &Evidence<'_>, record: &RetentionRecord) -> Result<(), Refusal> {
    if record.mount != ev.mount || record.key != ev.key {
        return Err(Refusal::WrongKey);
    }
    let (Some(endorsement), Some(endorser)) = (&record.endorsement, ev.endorser) else {
        return Err(Refusal::Unendorsed);
    };
    if endorsement.key != ev.endorsement_key {
        return Err(Refusal::WrongKey);
    }
    let generation = endorsement.generation;
    if generation < ev.accepted || generation < endorser.min_decryption_version.max(1) {
        return Err(Refusal::Superseded);
    }
    let Some(public_key) = served_public_key(endorser, generation) else {
        // Above latest: no such generation (yet); below: trimmed away.
        return Err(if generation > endorser.latest_version {
            Refusal::BadSignature
        } else {
            Refusal::Superseded
        });
    };
    let bytes = record.endorsed_bytes(ev.endorsement_key, generation);
    if !verifies(public_key, generation, &endorsement.signature, &bytes) {
        return Err(Refusal::BadSignature);
    }
    check_public_keys(record, ev.signing, ev.pins)
}

/// Every entry's public key equals Transit's where Transit serves the version, and the
/// pinned one where a key was pinned.
pub fn check_public_keys(
    record: &RetentionRecord,
    signing: &TransitKeyInfo,
    pins: &BTreeMap<u32, String>,
) -> Result<(), Refusal> {
    for e in &record.previous_keys {
        let served = served_public_key(signing, e.version);
        let pinned = pins.get(&e.version).map(String::as_str);
        if served.is_some_and(|k| k != e.public_key) || pinned.is_some_and(|k| k != e.public_key) {
            return Err(Refusal::KeyMismatch);
        }
    }
    Ok(())
}

/// A version's public key as Transit serves it.
pub fn served_public_key(info: &TransitKeyInfo, version: u32) -> Option<&str> {
    info.keys
        .get(&version.to_string())?
        .get("public_key")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
}

/// True when `signature` is `vault:v{generation}:<base64>` by `public_key` over `bytes`.
fn verifies(public_key: &str, generation: u32, signature: &str, bytes: &[u8]) -> bool {
    use base64::Engine as _;
    let prefix = format!("vault:v{generation}:");
    let Some(raw) = signature
        .strip_prefix(&prefix)
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
    else {
        return false;
    };
    match PublicKey::parse(KeyType::Ed25519, public_key) {
        Ok(PublicKey::Ed25519(key)) => key.verify_sig(bytes, &raw).is_ok(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::retention::{Endorsement, RetiredVersion};
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    use base64::Engine as _;

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    fn info(versions: &[(u32, String)], min_dec: u32) -> TransitKeyInfo {
        let keys = versions
            .iter()
            .map(|(v, pk)| (v.to_string(), serde_json::json!({ "public_key": pk })))
            .collect();
        TransitKeyInfo {
            key_type: "ed25519".into(),
            latest_version: versions.iter().map(|v| v.0).max().unwrap_or(0),
            min_decryption_version: min_dec,
            min_encryption_version: min_dec,
            min_available_version: 0,
            derived: false,
            supports_signing: true,
            keys,
            raw: serde_json::Map::new(),
        }
    }

    struct Fixture {
        signer: Vec<Ed25519KeyPair>,
        signing: TransitKeyInfo,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                signer: (0..3)
                    .map(|_| Ed25519KeyPair::generate().unwrap())
                    .collect(),
                signing: info(&[(3, "pk3".into())], 3),
            }
        }

        /// The endorsement key serving generations `from..=3`, `min_decryption_version` `from`.
        fn endorser(&self, from: u32) -> TransitKeyInfo {
            let versions: Vec<(u32, String)> = (from..=3)
                .map(|v| (v, b64(self.signer[v as usize - 1].public_key().as_ref())))
                .collect();
            info(&versions, from)
        }

        fn record(&self, generation: u32, retire_after: &str) -> RetentionRecord {
            let mut r = RetentionRecord {
                key: "k".into(),
                mount: "transit".into(),
                ..RetentionRecord::default()
            };
            r.upsert(RetiredVersion {
                version: 2,
                public_key: "pk2".into(),
                created: String::new(),
                retired_at: "2026-01-01T00:00:00Z".into(),
                retire_after: retire_after.into(),
                reason: "rotation".into(),
                revoked: false,
            });
            let bytes = r.endorsed_bytes("e.k", generation);
            let sig = self.signer[generation as usize - 1].sign(&bytes);
            r.endorsement = Some(Endorsement {
                key: "e.k".into(),
                generation,
                signature: format!("vault:v{generation}:{}", b64(sig.as_ref())),
            });
            r
        }

        fn judge(
            &self,
            endorser: Option<&TransitKeyInfo>,
            accepted: u32,
            r: RecordRead,
        ) -> Verdict {
            let pins = BTreeMap::from([(2, "pk2".to_string())]);
            let ev = Evidence {
                mount: "transit",
                key: "k",
                signing: &self.signing,
                endorsement_key: "e.k",
                endorser,
                pins: &pins,
                accepted,
            };
            judge(&ev, &r)
        }
    }

    fn refused(v: Verdict) -> Option<Refusal> {
        match v {
            Verdict::Refused(r) => Some(r),
            _ => None,
        }
    }

    #[test]
    fn an_endorsed_current_record_is_trusted() {
        let f = Fixture::new();
        let e = f.endorser(2);
        let r = f.record(2, "2099-01-01T00:00:00Z");
        assert_eq!(
            f.judge(Some(&e), 0, RecordRead::Decoded(r.clone())),
            Verdict::Trusted(r.clone())
        );
        assert_eq!(
            f.judge(Some(&e), 2, RecordRead::Decoded(r)),
            Verdict::Trusted(f.record(2, "2099-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn every_attack_is_refused_with_its_reason() {
        let f = Fixture::new();
        let e = f.endorser(2);
        let judge = |accepted, r: RetentionRecord| {
            refused(f.judge(Some(&e), accepted, RecordRead::Decoded(r)))
        };
        let mut widened = f.record(2, "2026-02-01T00:00:00Z");
        widened.previous_keys[0].retire_after = "2099-01-01T00:00:00Z".into();
        assert_eq!(judge(0, widened), Some(Refusal::BadSignature));
        let mut forged = f.record(2, "2099-01-01T00:00:00Z");
        forged.previous_keys[0].public_key = "attacker".into();
        assert_eq!(judge(0, forged), Some(Refusal::BadSignature));
        let mut unendorsed = f.record(2, "2099-01-01T00:00:00Z");
        unendorsed.endorsement = None;
        assert_eq!(judge(0, unendorsed), Some(Refusal::Unendorsed));
        // Generation 1: trimmed by Vault (below min_decryption_version 2).
        assert_eq!(
            judge(0, f.record(1, "2099-01-01T00:00:00Z")),
            Some(Refusal::Superseded)
        );
        // Generation 2 after this sidecar accepted 3: a replay.
        assert_eq!(
            judge(3, f.record(2, "2099-01-01T00:00:00Z")),
            Some(Refusal::Superseded)
        );
        let mut other = f.record(2, "2099-01-01T00:00:00Z");
        other.key = "other".into();
        assert_eq!(judge(0, other), Some(Refusal::WrongKey));
        // An endorsed record whose entry disagrees with the pinned key.
        let f2 = Fixture {
            signing: info(&[(2, "vault-pk2".into()), (3, "pk3".into())], 2),
            ..Fixture::new()
        };
        let e2 = f2.endorser(2);
        assert_eq!(
            refused(f2.judge(
                Some(&e2),
                0,
                RecordRead::Decoded(f2.record(2, "2099-01-01T00:00:00Z"))
            )),
            Some(Refusal::KeyMismatch)
        );
    }

    #[test]
    fn a_missing_record_is_empty_only_when_none_ever_existed() {
        let f = Fixture::new();
        let e = f.endorser(2);
        assert_eq!(f.judge(None, 0, RecordRead::Absent), Verdict::Empty);
        // The endorsement key exists but no write completed yet (first write under way).
        assert_eq!(
            f.judge(Some(&f.endorser(1)), 0, RecordRead::Absent),
            Verdict::Empty
        );
        assert_eq!(
            refused(f.judge(Some(&e), 0, RecordRead::Absent)),
            Some(Refusal::Disappeared)
        );
        assert_eq!(
            refused(f.judge(None, 2, RecordRead::Absent)),
            Some(Refusal::Disappeared)
        );
        assert_eq!(
            refused(f.judge(None, 0, RecordRead::Undecodable)),
            Some(Refusal::Undecodable)
        );
        let empty = RetentionRecord {
            key: "k".into(),
            mount: "transit".into(),
            ..RetentionRecord::default()
        };
        assert_eq!(f.judge(None, 0, RecordRead::Decoded(empty)), Verdict::Empty);
        assert_eq!(
            refused(f.judge(
                None,
                0,
                RecordRead::Decoded(f.record(2, "2099-01-01T00:00:00Z"))
            )),
            Some(Refusal::Unendorsed)
        );
    }
}
