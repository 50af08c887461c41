//! `aegis keys status`: the inventory and expiration timeline of signing keys.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::{KeyRef, LifecycleError};
use crate::keys::retention::{parse_time, RetentionRecord};
use crate::vault::TransitKeyInfo;

/// Past this many entries `keys status` warns that the record nears Vault's JSON limits.
const RECORD_ENTRIES_WARNING: usize = 50;

/// How soon before a retention window ends a warning is given.
const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 86400);

/// Where a version stands under the retention rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionState {
    /// The latest version: new signatures use it.
    Signing,
    /// Accepted by Vault itself.
    Valid,
    /// Below `min_decryption_version`, kept valid by the retention record.
    RetiredValid,
    /// Retention window over.
    Expired,
    Revoked,
    /// Below `min_decryption_version` and not recorded: verifiable nowhere.
    Lost,
}

/// One version in the inventory.
#[derive(Debug, Clone, Serialize)]
pub struct VersionStatusLine {
    pub version: u32,
    pub state: VersionState,
    pub created: Option<String>,
    pub age_days: Option<u64>,
    pub retire_after: Option<String>,
    pub reason: Option<String>,
}

/// One key in the inventory.
#[derive(Debug, Clone, Serialize)]
pub struct KeyStatus {
    pub key: String,
    pub key_type: String,
    pub signing_version: u32,
    pub min_decryption_version: u32,
    pub signing_version_age_days: Option<u64>,
    /// Days until rotation is due (negative: overdue).
    pub rotation_due_in_days: Option<i64>,
    pub versions: Vec<VersionStatusLine>,
    pub warnings: Vec<String>,
}

fn days(d: Duration) -> u64 {
    d.as_secs() / 86400
}

/// The inventory line of one key, from Transit and its retention record.
pub async fn key_status(
    k: &KeyRef<'_>,
    rotation_period: Duration,
) -> Result<KeyStatus, LifecycleError> {
    let info = k.vault.transit_read_key(k.mount, k.key).await?;
    let (record, _) = k.read_record().await?;
    Ok(build(
        k.key,
        &info,
        &record,
        rotation_period,
        SystemTime::now(),
    ))
}

fn build(
    key: &str,
    info: &TransitKeyInfo,
    record: &RetentionRecord,
    period: Duration,
    now: SystemTime,
) -> KeyStatus {
    let min = info.min_decryption_version.max(1);
    let entries = record.entries();
    let created = |v: u32| -> Option<String> {
        info.keys
            .get(&v.to_string())
            .and_then(|e| e["creation_time"].as_str().map(String::from))
            .or_else(|| record.get(v).map(|e| e.created.clone()))
            .filter(|c| !c.is_empty())
    };
    let mut warnings = Vec::new();
    let mut lost = Vec::new();
    let versions: Vec<VersionStatusLine> = (1..=info.latest_version)
        .rev()
        .map(|v| {
            let entry = record.get(v);
            let retention = entries.get(&v);
            let state = match retention {
                _ if v == info.latest_version => VersionState::Signing,
                Some(r) if r.revoked => VersionState::Revoked,
                Some(r) if !r.valid_at(now) => VersionState::Expired,
                Some(r) => {
                    if r.retire_after.duration_since(now).unwrap_or_default() < EXPIRY_WARNING {
                        warnings.push(format!(
                            "version {v}: retention ends {} (within 7 days); re-sign what it signed",
                            r.retire_after_text
                        ));
                    }
                    if v >= min {
                        VersionState::Valid
                    } else {
                        VersionState::RetiredValid
                    }
                }
                None if v >= min => VersionState::Valid,
                None => {
                    lost.push(v);
                    VersionState::Lost
                }
            };
            let c = created(v);
            VersionStatusLine {
                version: v,
                state,
                age_days: c
                    .as_deref()
                    .and_then(parse_time)
                    .and_then(|t| now.duration_since(t).ok())
                    .map(days),
                created: c,
                retire_after: entry.map(|e| e.retire_after.clone()),
                reason: entry.map(|e| e.reason.clone()).filter(|r| !r.is_empty()),
            }
        })
        .collect();
    if record.previous_keys.len() > RECORD_ENTRIES_WARNING {
        warnings.push(format!(
            "the retention record holds {} entries; OpenBao's default request limits (1000 JSON strings) allow about 70: shorten --grace or retire old versions",
            record.previous_keys.len()
        ));
    }
    if !lost.is_empty() {
        warnings.push(format!(
            "versions {lost:?} are below min_decryption_version and not in the retention record: their signatures verify nowhere"
        ));
    }
    let signing_age = created(info.latest_version)
        .as_deref()
        .and_then(parse_time)
        .and_then(|t| now.duration_since(t).ok());
    let due =
        signing_age.map(|age| (period.as_secs() as i64 - age.as_secs() as i64).div_euclid(86400));
    if let Some(d) = due.filter(|d| *d < 0) {
        warnings.push(format!("rotation overdue by {} days", -d));
    }
    KeyStatus {
        key: key.to_string(),
        key_type: info.key_type.clone(),
        signing_version: info.latest_version,
        min_decryption_version: min,
        signing_version_age_days: signing_age.map(days),
        rotation_due_in_days: due,
        versions,
        warnings,
    }
}

impl KeyStatus {
    /// The terminal rendering.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let age = self
            .signing_version_age_days
            .map_or("?".into(), |d| format!("{d} d"));
        let due = self
            .rotation_due_in_days
            .map_or("?".into(), |d| format!("{d} d"));
        let _ = writeln!(
            out,
            "{} ({}): signing v{}, age {age}, rotation due in {due}, min_decryption_version {}",
            self.key, self.key_type, self.signing_version, self.min_decryption_version
        );
        for v in &self.versions {
            let _ = writeln!(
                out,
                "  v{:<4} {:<13} created {:<30} retire_after {}",
                v.version,
                format!("{:?}", v.state).to_lowercase(),
                v.created.as_deref().unwrap_or("-"),
                v.retire_after.as_deref().unwrap_or("-"),
            );
        }
        for w in &self.warnings {
            let _ = writeln!(out, "  WARNING: {w}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::retention::{format_time, RetiredVersion};

    #[test]
    fn states_due_dates_and_warnings() {
        let now = parse_time("2026-11-25T00:00:00Z").unwrap();
        let day = Duration::from_secs(86400);
        let keys = [(3, now - 100 * day), (4, now - 95 * day)]
            .iter()
            .map(|(v, t)| {
                (
                    v.to_string(),
                    serde_json::json!({"public_key": "pk", "creation_time": format_time(*t)}),
                )
            })
            .collect();
        let info = TransitKeyInfo {
            key_type: "ed25519".into(),
            latest_version: 4,
            min_decryption_version: 3,
            min_encryption_version: 0,
            min_available_version: 0,
            derived: false,
            supports_signing: true,
            keys,
            raw: Default::default(),
        };
        let mut record = RetentionRecord::default();
        for (v, until, revoked) in [(2, now + 3 * day, false), (3, now + 60 * day, true)] {
            record.upsert(RetiredVersion {
                version: v,
                public_key: "pk".into(),
                created: format_time(now - 200 * day),
                retired_at: format_time(now - 100 * day),
                retire_after: format_time(until),
                reason: "rotation".into(),
                revoked,
            });
        }
        let s = build("k", &info, &record, Duration::from_secs(90 * 86400), now);
        let states: Vec<_> = s.versions.iter().map(|v| (v.version, v.state)).collect();
        assert_eq!(
            states,
            [
                (4, VersionState::Signing),
                (3, VersionState::Revoked),
                (2, VersionState::RetiredValid),
                (1, VersionState::Lost)
            ]
        );
        assert_eq!(s.signing_version_age_days, Some(95));
        assert_eq!(s.rotation_due_in_days, Some(-5));
        let w = s.warnings.join("\n");
        assert!(w.contains("overdue by 5 days"), "{w}");
        assert!(w.contains("version 2: retention ends"), "{w}");
        assert!(w.contains("[1]"), "{w}");
        assert!(s.render().contains("v2    retiredvalid"), "{}", s.render());
    }
}
