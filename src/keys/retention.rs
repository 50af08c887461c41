//! The retention record: which retired versions of a key still verify, and until when.
//!
//! Vault forgets the public keys of versions below `min_decryption_version`; signatures
//! they made would stop verifying everywhere. The rotation job (`aegis rotate`) records
//! each outgoing version in the key's retention record in Vault KV v2 (the runbook's
//! "`previous_keys` list with a `retire_after` timestamp") before it raises
//! `min_decryption_version`. The sidecar reads the record with the key and applies the
//! rule in [`super::KeySet::version_status`]:
//! - a recorded version verifies until its `retire_after`, even below
//!   `min_decryption_version` ("retired but valid");
//! - a recorded version whose `retire_after` has passed, or that was revoked, is refused,
//!   even above `min_decryption_version` (revocation always wins).
//!
//! The record is written with check-and-set (KV v2 `cas`), so two jobs never lose an entry.
//! Each generation is endorsed by the rotation job through Transit ([`Endorsement`]) over
//! [`RetentionRecord::endorsed_bytes`]; the sidecar uses a record only when that
//! endorsement holds (see [`super::trust`] and docs/trust-model.md).

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// K's retention record, as stored in KV v2 (the secret's `data`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RetentionRecord {
    /// Transit key name.
    #[serde(default)]
    pub key: String,
    /// Transit mount.
    #[serde(default)]
    pub mount: String,
    /// Retired versions, ascending.
    #[serde(default)]
    pub previous_keys: Vec<RetiredVersion>,
    /// The rotation job's signature over this generation; `None` in records written
    /// before endorsements (refused until `aegis retention endorse` runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endorsement: Option<Endorsement>,
}

/// The endorsement of one record generation by the rotation job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endorsement {
    /// The Transit key that signed: `{AEGIS_RETENTION_ENDORSEMENT_PREFIX}{key}`.
    pub key: String,
    /// The endorsement key's version that signed, new for every generation: Vault
    /// forgets superseded ones (`min_decryption_version`, `trim`).
    pub generation: u32,
    /// Transit's `vault:v{generation}:...` over [`RetentionRecord::endorsed_bytes`].
    pub signature: String,
}

/// The first line of the endorsed bytes: what they are and the format's version.
const ENDORSED_DOMAIN: &str = "aegis-retention-endorsement/1\n";

/// The endorsed content, in a fixed field order (serde keeps declaration order).
#[derive(Serialize)]
struct Endorsed<'a> {
    mount: &'a str,
    key: &'a str,
    endorsement_key: &'a str,
    generation: u32,
    entries: Vec<EndorsedEntry<'a>>,
}

#[derive(Serialize)]
struct EndorsedEntry<'a> {
    version: u32,
    public_key: &'a str,
    created: &'a str,
    retired_at: &'a str,
    retire_after: &'a str,
    revoked: bool,
    reason: &'a str,
}

/// One retired version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetiredVersion {
    pub version: u32,
    /// The public key as Transit returned it (base64 or PEM).
    pub public_key: String,
    /// Transit's `creation_time` of the version.
    #[serde(default)]
    pub created: String,
    /// When the version stopped signing / was retired (RFC 3339).
    pub retired_at: String,
    /// Until when its signatures verify (RFC 3339).
    pub retire_after: String,
    #[serde(default)]
    pub reason: String,
    /// Revoked (compromise): refused at once, whatever `retire_after` says.
    #[serde(default)]
    pub revoked: bool,
}

/// A recorded version as the cache uses it: times parsed once.
#[derive(Debug, Clone, PartialEq)]
pub struct Retention {
    pub retired_at: SystemTime,
    pub retire_after: SystemTime,
    pub revoked: bool,
    /// The RFC 3339 texts, for messages.
    pub retired_at_text: String,
    pub retire_after_text: String,
}

impl Retention {
    /// True while the version's signatures still verify.
    pub fn valid_at(&self, now: SystemTime) -> bool {
        !self.revoked && now < self.retire_after
    }

    /// The 400 message for a signature by a version no longer valid.
    pub fn refusal(&self, key: &str, version: u32) -> String {
        if self.revoked {
            format!(
                "signature version {version} of key {key:?} was revoked at {}",
                self.retired_at_text
            )
        } else {
            format!(
                "signature version {version} of key {key:?} was retired at {}; its retention ended at {}",
                self.retired_at_text, self.retire_after_text
            )
        }
    }
}

/// Parses an RFC 3339 time as written by Aegis or Vault (fractional seconds allowed).
pub fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text.trim()).ok()
}

/// RFC 3339 (seconds, UTC) for records and messages.
pub fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl RetentionRecord {
    /// The recorded versions with usable times. An entry whose times do not parse is
    /// treated as revoked now: an unreadable record never makes a signature valid.
    pub fn entries(&self) -> BTreeMap<u32, Retention> {
        self.previous_keys
            .iter()
            .map(|e| {
                let retired_at = parse_time(&e.retired_at);
                let retire_after = parse_time(&e.retire_after);
                let usable = retired_at.is_some() && retire_after.is_some();
                let retention = Retention {
                    retired_at: retired_at.unwrap_or(SystemTime::UNIX_EPOCH),
                    retire_after: retire_after.unwrap_or(SystemTime::UNIX_EPOCH),
                    revoked: e.revoked || !usable,
                    retired_at_text: e.retired_at.clone(),
                    retire_after_text: e.retire_after.clone(),
                };
                (e.version, retention)
            })
            .collect()
    }

    /// The entry for `version`, if recorded.
    pub fn get(&self, version: u32) -> Option<&RetiredVersion> {
        self.previous_keys.iter().find(|e| e.version == version)
    }

    /// The bytes the endorsement signs (the one serialization writer and verifier use):
    /// the domain line, then compact JSON binding mount, key, endorsement key, generation
    /// and every field of every entry, entries by version.
    pub fn endorsed_bytes(&self, endorsement_key: &str, generation: u32) -> Vec<u8> {
        let mut entries: Vec<EndorsedEntry<'_>> = self
            .previous_keys
            .iter()
            .map(|e| EndorsedEntry {
                version: e.version,
                public_key: &e.public_key,
                created: &e.created,
                retired_at: &e.retired_at,
                retire_after: &e.retire_after,
                revoked: e.revoked,
                reason: &e.reason,
            })
            .collect();
        entries.sort_by_key(|e| e.version);
        let body = Endorsed {
            mount: &self.mount,
            key: &self.key,
            endorsement_key,
            generation,
            entries,
        };
        let mut out = ENDORSED_DOMAIN.as_bytes().to_vec();
        serde_json::to_writer(&mut out, &body).expect("endorsed bytes serialize");
        out
    }

    /// The endorsement's generation, 0 when unendorsed.
    pub fn generation(&self) -> u32 {
        self.endorsement.as_ref().map_or(0, |e| e.generation)
    }

    /// Inserts or replaces the entry for its version, keeping the list ascending.
    pub fn upsert(&mut self, entry: RetiredVersion) {
        self.previous_keys.retain(|e| e.version != entry.version);
        self.previous_keys.push(entry);
        self.previous_keys.sort_by_key(|e| e.version);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(version: u32, retire_after: &str, revoked: bool) -> RetiredVersion {
        RetiredVersion {
            version,
            public_key: "pk".into(),
            created: "2026-01-01T00:00:00.123456789Z".into(),
            retired_at: "2026-02-01T00:00:00Z".into(),
            retire_after: retire_after.into(),
            reason: "rotation".into(),
            revoked,
        }
    }

    #[test]
    fn window_and_revocation() {
        let mut r = RetentionRecord::default();
        r.upsert(entry(2, "2026-06-01T00:00:00Z", false));
        r.upsert(entry(1, "2026-03-01T00:00:00Z", false));
        r.upsert(entry(3, "2099-01-01T00:00:00Z", true));
        r.upsert(entry(4, "not a time", false));
        assert_eq!(
            r.previous_keys
                .iter()
                .map(|e| e.version)
                .collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        let e = r.entries();
        let may = parse_time("2026-05-01T00:00:00Z").unwrap();
        assert!(!e[&1].valid_at(may), "past retire_after");
        assert!(e[&2].valid_at(may));
        assert!(!e[&2].valid_at(may + Duration::from_secs(90 * 86400)));
        assert!(
            !e[&3].valid_at(may),
            "revoked wins over a future retire_after"
        );
        assert!(!e[&4].valid_at(may), "an unreadable time never validates");
        assert!(e[&3]
            .refusal("k", 3)
            .contains("revoked at 2026-02-01T00:00:00Z"));
        assert!(e[&1]
            .refusal("k", 1)
            .contains("retention ended at 2026-03-01T00:00:00Z"));
    }

    #[test]
    fn vault_creation_times_parse() {
        assert!(parse_time("2026-11-25T18:29:14.733136682Z").is_some());
        assert!(parse_time("2026-11-25T18:29:14Z").is_some());
        assert!(parse_time("yesterday").is_none());
    }

    #[test]
    fn record_json_round_trip() {
        let mut r = RetentionRecord {
            key: "k".into(),
            mount: "transit".into(),
            previous_keys: vec![],
            endorsement: None,
        };
        r.upsert(entry(1, "2026-03-01T00:00:00Z", false));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v["previous_keys"][0]["retire_after"],
            "2026-03-01T00:00:00Z"
        );
        assert_eq!(serde_json::from_value::<RetentionRecord>(v).unwrap(), r);
    }

    #[test]
    fn endorsed_bytes_bind_every_field_and_ignore_entry_order() {
        let mut r = RetentionRecord {
            key: "k".into(),
            mount: "transit".into(),
            ..RetentionRecord::default()
        };
        r.upsert(entry(1, "2026-03-01T00:00:00Z", false));
        r.upsert(entry(2, "2026-04-01T00:00:00Z", false));
        let base = r.endorsed_bytes("aegis-retention.k", 3);
        let text = String::from_utf8(base.clone()).unwrap();
        assert!(text.starts_with("aegis-retention-endorsement/1\n{\"mount\":\"transit\",\"key\":\"k\",\"endorsement_key\":\"aegis-retention.k\",\"generation\":3,\"entries\":[{\"version\":1,"), "{text}");
        let mut reordered = r.clone();
        reordered.previous_keys.reverse();
        assert_eq!(reordered.endorsed_bytes("aegis-retention.k", 3), base);
        assert_ne!(r.endorsed_bytes("aegis-retention.k", 4), base);
        assert_ne!(r.endorsed_bytes("other", 3), base);
        let changes: [fn(&mut RetentionRecord); 9] = [
            |r| r.mount = "t2".into(),
            |r| r.key = "k2".into(),
            |r| r.previous_keys[0].version = 9,
            |r| r.previous_keys[0].public_key = "pk2".into(),
            |r| r.previous_keys[0].created = "x".into(),
            |r| r.previous_keys[0].retired_at = "x".into(),
            |r| r.previous_keys[0].retire_after = "2099-01-01T00:00:00Z".into(),
            |r| r.previous_keys[0].revoked = true,
            |r| r.previous_keys[0].reason = "x".into(),
        ];
        for change in changes {
            let mut c = r.clone();
            change(&mut c);
            assert_ne!(c.endorsed_bytes("aegis-retention.k", 3), base);
        }
        let mut fewer = r.clone();
        fewer.previous_keys.pop();
        assert_ne!(fewer.endorsed_bytes("aegis-retention.k", 3), base);
    }
}
