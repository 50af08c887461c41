//! Key lifecycle for rotation jobs: rotate, retire/revoke, and the inventory.
//!
//! These run in short-lived commands (`aegis rotate`, `aegis retire`, `aegis keys
//! status`), never on the request path. They follow the operations runbook: rotate every
//! 30-90 days; keep previous versions verifiable until what they signed is re-signed or
//! expired, by recording them in the key's retention record (KV v2, check-and-set) with
//! a `retire_after`; raise Transit's `min_decryption_version` only past versions safely
//! recorded; drop entries whose window has passed.
//!
//! Every step re-reads Vault and converges, so a job that died half-way, or two jobs at
//! once, end in the same consistent state: every version Vault no longer accepts is
//! either recorded or past its window, and no record entry is lost (writes are CAS).
//! Every record write is endorsed through Transit ([`endorse`]), so a KV writer cannot
//! add, widen or revive trust.
//!
//! Revocation (`aegis retire --now`) is enforced by Vault itself, not only by the record:
//! the signing version is rotated away first, every lower version Vault still accepts is
//! recorded (so it keeps verifying through its entry), the version is marked revoked, and
//! then `min_encryption_version` and `min_decryption_version` are raised past it (in that
//! order: Vault requires the first to stay at or above the second once set). Vault then
//! refuses the version for sign and verify, and deleting the record cannot bring it back.
//! docs/revocation.md has the steps and what a retried job does after each.

mod commands;
mod endorse;
mod status;

use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::config::RetentionLocation;
use crate::keys::retention::{format_time, parse_time, RetentionRecord, RetiredVersion};
use crate::vault::{CasWrite, TransitKeyInfo, VaultClient, VaultError};

pub use commands::{run_endorse, run_retire, run_rotate, run_status, RetireArgs};
pub use endorse::endorse;
pub use status::{key_status, KeyStatus, VersionState, VersionStatusLine};

/// How many times a check-and-set write is retried against concurrent writers.
const CAS_ATTEMPTS: u32 = 10;

/// Why a lifecycle command failed; each maps to a documented exit code.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The request makes no sense for this key (unknown version, the signing version, ...).
    #[error("{0}")]
    Refused(String),
    /// The configuration cannot be used (TLS files): exit 64 like any configuration error.
    #[error("{0}")]
    Config(String),
    /// Vault said no (403): the job's policy lacks a capability.
    #[error("permission denied by Vault: {0}")]
    Denied(String),
    /// Vault unreachable or the job not authenticated.
    #[error("Vault unavailable: {0}")]
    Unavailable(String),
    /// Other writers kept changing the record; nothing was lost, run again.
    #[error("the retention record kept changing under concurrent writers; run again")]
    Contended,
    /// Vault refused a write because a concurrent one won; retried by the commands.
    #[error("a concurrent write to the key won; retrying")]
    Conflict,
    #[error("{0}")]
    Vault(String),
}

impl LifecycleError {
    /// The process exit code (sysexits-style, documented in the README).
    pub fn exit_code(&self) -> u8 {
        match self {
            LifecycleError::Config(_) => 64,
            LifecycleError::Refused(_) => 65,     // EX_DATAERR
            LifecycleError::Unavailable(_) => 69, // EX_UNAVAILABLE
            LifecycleError::Contended | LifecycleError::Conflict => 75, // EX_TEMPFAIL
            LifecycleError::Denied(_) => 77,      // EX_NOPERM
            LifecycleError::Vault(_) => 1,
        }
    }
}

impl From<VaultError> for LifecycleError {
    fn from(e: VaultError) -> Self {
        if e.is_write_conflict() {
            return LifecycleError::Conflict;
        }
        match e {
            VaultError::Status { status: 403, .. } => LifecycleError::Denied(e.to_string()),
            VaultError::Unreachable { .. }
            | VaultError::Unauthenticated(_)
            | VaultError::Redirect(_) => LifecycleError::Unavailable(e.to_string()),
            other => LifecycleError::Vault(other.to_string()),
        }
    }
}

/// One key in one Transit mount, with its record location.
pub struct KeyRef<'a> {
    pub vault: &'a VaultClient,
    pub mount: &'a str,
    pub key: &'a str,
    pub retention: &'a RetentionLocation,
}

/// `aegis rotate` options.
#[derive(Debug, Clone)]
pub struct RotateOptions {
    /// How long outgoing versions keep verifying (`--grace`).
    pub grace: Duration,
    /// Do not rotate again when the latest version is younger than this (`--min-interval`),
    /// so a retried job does not rotate twice; `--force` sets it to zero.
    pub min_interval: Duration,
    pub dry_run: bool,
    pub reason: String,
}

/// What a command did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Plan {
    pub key: String,
    pub dry_run: bool,
    /// The new signing version when the key was rotated.
    pub rotated_to: Option<u32>,
    /// Why no rotation happened, when none did.
    pub rotation_skipped: Option<String>,
    /// Versions newly recorded (or re-dated) in the retention record.
    pub recorded: Vec<u32>,
    /// `retire_after` given to them.
    pub retire_after: Option<String>,
    /// Versions dropped from the record because their window had passed.
    pub dropped: Vec<u32>,
    /// `min_decryption_version` before and after.
    pub min_decryption_version: (u32, u32),
    /// `aegis retention endorse`: the generation written, the versions endorsed, those
    /// whose public key Vault no longer serves (taken as the record had them), and what
    /// the record was before (`unendorsed`, `endorsed`, a refusal reason, `empty`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endorsed_generation: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endorsed: Vec<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unchecked: Vec<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previously: Option<String>,
    /// `min_encryption_version` before and after (0: Vault's "no minimum").
    pub min_encryption_version: (u32, u32),
    /// The version `retire --now` revoked.
    pub revoked: Option<u32>,
    /// Lower versions a revocation recorded so they keep verifying through the record
    /// once Vault's minimums pass them (also listed in `recorded`) ...
    pub kept_valid: Vec<u32>,
    /// ... until then (`retire --grace` from now).
    pub kept_valid_until: Option<String>,
}

/// Transit's two minimums, before and after a raise.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Minimums {
    encryption: (u32, u32),
    decryption: (u32, u32),
}

/// Which of Transit's minimums a step raises.
#[derive(Debug, Clone, Copy)]
enum Minimum {
    Encryption,
    Decryption,
}

/// How far a raise goes: past `floor` (the revoked version + 1, or 0), and whether
/// `min_encryption_version` must follow `min_decryption_version` even when unset.
#[derive(Debug, Clone, Copy)]
struct RaiseTo {
    floor: u32,
    revoking: bool,
}

impl KeyRef<'_> {
    fn record_path(&self) -> String {
        self.retention.path(self.mount, self.key)
    }

    async fn read_key(&self) -> Result<TransitKeyInfo, LifecycleError> {
        let info = self.vault.transit_read_key(self.mount, self.key).await?;
        if !info.supports_signing {
            return Err(LifecycleError::Refused(format!(
                "key {:?} is a {} key: it does not sign",
                self.key, info.key_type
            )));
        }
        Ok(info)
    }

    /// The record and its KV version (0 when absent).
    pub async fn read_record(&self) -> Result<(RetentionRecord, u64), LifecycleError> {
        let entry = self
            .vault
            .kv2_read(&self.retention.kv_mount, &self.record_path())
            .await?;
        if entry.data.is_null() {
            return Ok((self.empty_record(), entry.version));
        }
        let record = serde_json::from_value(entry.data).map_err(|e| {
            LifecycleError::Refused(format!(
                "the retention record at {}/{} is not in Aegis's format: {e}",
                self.retention.kv_mount,
                self.record_path()
            ))
        })?;
        Ok((record, entry.version))
    }

    fn empty_record(&self) -> RetentionRecord {
        RetentionRecord {
            key: self.key.to_string(),
            mount: self.mount.to_string(),
            ..RetentionRecord::default()
        }
    }

    /// Applies `change` to the record with check-and-set, re-reading on conflict. `change`
    /// gets the current key and record and returns whether it changed the record. Only a
    /// trusted record is built on; every write is endorsed as a new generation.
    async fn update_record<F>(&self, change: F) -> Result<RetentionRecord, LifecycleError>
    where
        F: FnMut(&TransitKeyInfo, &mut RetentionRecord) -> Result<bool, LifecycleError>,
    {
        self.update_record_as(endorse::Accept::Endorsed, change)
            .await
    }

    /// [`update_record`](Self::update_record), building on records `accept` allows.
    async fn update_record_as<F>(
        &self,
        accept: endorse::Accept,
        mut change: F,
    ) -> Result<RetentionRecord, LifecycleError>
    where
        F: FnMut(&TransitKeyInfo, &mut RetentionRecord) -> Result<bool, LifecycleError>,
    {
        let mut pauses = conflict_backoff();
        for attempt in 1..=CAS_ATTEMPTS {
            let info = self.read_key().await?;
            let (mut record, cas) = self.read_record().await?;
            let endorser = self.read_endorser().await?;
            self.check_record(&info, &record, cas, endorser.as_ref(), accept)?;
            if accept == endorse::Accept::Endorsed {
                self.converge_endorsements(&record, endorser.as_ref())
                    .await?;
            }
            if !change(&info, &mut record)? {
                return Ok(record);
            }
            if let Some(generation) = self
                .endorse_new_generation(&mut record, endorser.is_some())
                .await?
            {
                if self.write_record(&record, cas).await? {
                    self.retire_endorsements(generation).await?;
                    return Ok(record);
                }
            }
            warn!(
                key = self.key,
                attempt, "retention record changed meanwhile; retrying"
            );
            tokio::time::sleep(pauses.next_pause()).await;
        }
        Err(LifecycleError::Contended)
    }

    /// Check-and-set write of the record at KV version `cas`; false when another writer won.
    async fn write_record(
        &self,
        record: &RetentionRecord,
        cas: u64,
    ) -> Result<bool, LifecycleError> {
        let data = serde_json::to_value(record).expect("record serializes");
        let written = match self
            .vault
            .kv2_write_cas(&self.retention.kv_mount, &self.record_path(), &data, cas)
            .await
        {
            // Raced another writer inside Vault: re-read and converge, like a CAS miss.
            Err(e) if e.is_write_conflict() => CasWrite::Conflict,
            other => other?,
        };
        match written {
            CasWrite::Written(v) => {
                info!(
                    key = self.key,
                    kv_version = v,
                    generation = record.generation(),
                    "retention record written"
                );
                Ok(true)
            }
            CasWrite::Conflict => Ok(false),
        }
    }

    /// Raises `min_encryption_version`, then `min_decryption_version`, to the targets of
    /// [`target_minimums`] (never lowers either, never past the signing version). Each is
    /// a step of its own that re-reads the key and the record, so a job killed between
    /// them converges when run again.
    async fn raise_minimums(&self, to: RaiseTo) -> Result<Minimums, LifecycleError> {
        let encryption =
            on_write_conflict_retry(|| self.try_raise(Minimum::Encryption, to)).await?;
        let decryption =
            on_write_conflict_retry(|| self.try_raise(Minimum::Decryption, to)).await?;
        Ok(Minimums {
            encryption,
            decryption,
        })
    }

    async fn try_raise(&self, which: Minimum, to: RaiseTo) -> Result<(u32, u32), LifecycleError> {
        let info = self.read_key().await?;
        let (record, _) = self.read_record().await?;
        let target = target_minimums(&info, &record, to);
        let (before, after) = match which {
            Minimum::Encryption => target.encryption,
            Minimum::Decryption => target.decryption,
        };
        if after > before {
            let (v, m, k) = (self.vault, self.mount, self.key);
            match which {
                Minimum::Encryption => v.transit_set_min_encryption_version(m, k, after).await?,
                Minimum::Decryption => v.transit_set_min_decryption_version(m, k, after).await?,
            }
            info!(key = self.key, minimum = ?which, from = before, to = after, "minimum version raised");
        }
        Ok((before, after))
    }
}

/// The minimums the key should have: `min_decryption_version` at `to.floor` at least and
/// past the contiguous recorded versions above it, capped at the latest version;
/// `min_encryption_version` at least that when set (Vault requires it) or when revoking.
fn target_minimums(info: &TransitKeyInfo, record: &RetentionRecord, to: RaiseTo) -> Minimums {
    let latest = info.latest_version;
    let dec_before = info.min_decryption_version.max(1);
    let dec = advance_past_recorded(dec_before.max(to.floor.min(latest)), latest, record);
    let enc_before = info.min_encryption_version;
    let enc = if to.revoking || enc_before > 0 {
        enc_before.max(dec)
    } else {
        enc_before
    };
    Minimums {
        encryption: (enc_before, enc),
        decryption: (dec_before, dec),
    }
}

impl Plan {
    fn set_minimums(&mut self, m: Minimums) {
        self.min_encryption_version = m.encryption;
        self.min_decryption_version = m.decryption;
    }
}

/// Pauses between attempts against concurrent writers: short (they finish in
/// milliseconds), jittered so that two jobs do not collide again.
fn conflict_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(20), Duration::from_millis(500))
}

/// Runs `step` again while Vault refuses a write for a concurrent write to the same key
/// (OpenBao: "transaction commit failed"). Each step re-reads what it needs, so a repeat
/// converges instead of acting twice.
async fn on_write_conflict_retry<T, F, Fut>(mut step: F) -> Result<T, LifecycleError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LifecycleError>>,
{
    let mut pauses = conflict_backoff();
    for _ in 1..CAS_ATTEMPTS {
        match step().await {
            Err(LifecycleError::Conflict) => tokio::time::sleep(pauses.next_pause()).await,
            other => return other,
        }
    }
    match step().await {
        Err(LifecycleError::Conflict) => Err(LifecycleError::Contended),
        other => other,
    }
}

/// The smallest version >= `min` that the record does not hold, capped at `latest`.
fn advance_past_recorded(min: u32, latest: u32, record: &RetentionRecord) -> u32 {
    let mut v = min;
    while v < latest && record.get(v).is_some() {
        v += 1;
    }
    v
}

/// An entry for a version Vault still returns.
fn entry_from_vault(
    info: &TransitKeyInfo,
    version: u32,
    now: SystemTime,
    retire_after: SystemTime,
    reason: &str,
    revoked: bool,
) -> Option<RetiredVersion> {
    let entry = info.keys.get(&version.to_string())?;
    let field = |k: &str| {
        entry
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let public_key = field("public_key");
    if public_key.is_empty() {
        return None;
    }
    Some(RetiredVersion {
        version,
        public_key,
        created: field("creation_time"),
        retired_at: format_time(now),
        retire_after: format_time(retire_after),
        reason: reason.to_string(),
        revoked,
    })
}

/// `info` as it will be once the key's latest version is `latest` (for dry runs).
fn info_at(info: &TransitKeyInfo, latest: u32) -> TransitKeyInfo {
    TransitKeyInfo {
        latest_version: latest,
        ..info.clone()
    }
}

/// Rotates unless the key's latest version is already above `signing`: a rotation that
/// happened meanwhile (ours before a crash or a conflict, or another job's) counts, so a
/// retried job never rotates twice. Returns the new latest version.
async fn rotate_past(k: &KeyRef<'_>, signing: u32) -> Result<u32, LifecycleError> {
    let latest = on_write_conflict_retry(|| async {
        let now = k.read_key().await?.latest_version;
        if now > signing {
            return Ok(now);
        }
        k.vault.transit_rotate(k.mount, k.key).await?;
        Ok(k.read_key().await?.latest_version)
    })
    .await?;
    info!(key = k.key, version = latest, "key rotated");
    Ok(latest)
}

/// Why `rotate` did not rotate: the signing version is younger than `--min-interval`,
/// either because the key was just created or because a rotation ran recently (a retried
/// job), and what to type to rotate anyway.
fn skipped_rotation(latest: u32, age: Duration, min_interval: Duration) -> String {
    let age = humantime::format_duration(Duration::from_secs(age.as_secs()));
    let min = humantime::format_duration(min_interval);
    if latest == 1 {
        format!(
            "the key's only version (1) was created {age} ago, less than --min-interval {min}: not rotating a key this new (add --force to rotate now)"
        )
    } else {
        format!(
            "version {latest} was created {age} ago, less than --min-interval {min}: a rotation ran recently, not rotating again (add --force to rotate now)"
        )
    }
}

/// Age of the latest version, from Transit's `creation_time`.
fn latest_age(info: &TransitKeyInfo, now: SystemTime) -> Option<Duration> {
    let created = info.keys.get(&info.latest_version.to_string())?["creation_time"].as_str()?;
    now.duration_since(parse_time(created)?).ok()
}

/// `aegis rotate`: rotate (unless done within `min_interval`), record every version that
/// stops being the signing version, raise `min_decryption_version`, drop expired entries.
pub async fn rotate(k: &KeyRef<'_>, opts: &RotateOptions) -> Result<Plan, LifecycleError> {
    let now = SystemTime::now();
    let retire_after = now + opts.grace;
    let info = k.read_key().await?;
    let mut plan = Plan {
        key: k.key.to_string(),
        dry_run: opts.dry_run,
        retire_after: Some(format_time(retire_after)),
        ..Plan::default()
    };
    let mut latest = info.latest_version;
    match latest_age(&info, now) {
        Some(age) if age < opts.min_interval => {
            plan.rotation_skipped = Some(skipped_rotation(latest, age, opts.min_interval));
        }
        _ if opts.dry_run => {
            latest += 1;
            plan.rotated_to = Some(latest);
        }
        _ => {
            latest = rotate_past(k, latest).await?;
            plan.rotated_to = Some(latest);
        }
    }

    // Record every version Vault still accepts below the signing one; drop expired
    // entries that Vault no longer accepts either.
    let mut recorded = Vec::new();
    let mut dropped = Vec::new();
    let change = |info: &TransitKeyInfo, record: &mut RetentionRecord| {
        recorded.clear();
        dropped.clear();
        let min = info.min_decryption_version.max(1);
        let signing = if opts.dry_run {
            latest
        } else {
            info.latest_version
        };
        for v in min..signing {
            if record.get(v).is_none() {
                if let Some(e) = entry_from_vault(info, v, now, retire_after, &opts.reason, false) {
                    record.upsert(e);
                    recorded.push(v);
                }
            }
        }
        let entries = record.entries();
        record.previous_keys.retain(|e| {
            let expired = !entries[&e.version].valid_at(now) && e.version < min;
            if expired {
                dropped.push(e.version);
            }
            !expired
        });
        Ok(!recorded.is_empty() || !dropped.is_empty())
    };
    let to = RaiseTo {
        floor: 0,
        revoking: false,
    };
    if opts.dry_run {
        let mut change = change;
        let (mut record, _) = k.read_record().await?;
        change(&info, &mut record)?;
        plan.set_minimums(target_minimums(&info_at(&info, latest), &record, to));
    } else {
        k.update_record(change).await?;
        plan.set_minimums(k.raise_minimums(to).await?);
    }
    plan.recorded = recorded;
    plan.dropped = dropped;
    Ok(plan)
}

/// When `aegis retire` ends a version's validity.
#[derive(Debug, Clone, Copy)]
pub enum RetireAt {
    /// Revoked now (compromise): refused at once, by Vault too.
    Now,
    /// Keeps verifying until then.
    At(SystemTime),
}

/// `aegis retire` options.
#[derive(Debug, Clone)]
pub struct RetireOptions {
    pub at: RetireAt,
    pub reason: String,
    /// With `--now`: how long the lower versions it records keep verifying (`--grace`).
    pub grace: Duration,
    pub dry_run: bool,
}

/// `aegis retire`: early retirement (`--at`) or revocation (`--now`) of one version. The
/// signing version is rotated away first (once: a retried job sees it is no longer the
/// latest). `--now` also records every lower version Vault still accepts and raises
/// both minimums past the revoked one; `--at` only raises `min_decryption_version` past
/// contiguous recorded versions, as `rotate` does.
pub async fn retire(
    k: &KeyRef<'_>,
    version: u32,
    opts: &RetireOptions,
) -> Result<Plan, LifecycleError> {
    let now = SystemTime::now();
    let (until, revoked) = match opts.at {
        RetireAt::Now => (now, true),
        RetireAt::At(t) => (t, false),
    };
    let info = k.read_key().await?;
    if version == 0 || version > info.latest_version {
        return Err(LifecycleError::Refused(format!(
            "key {:?} has no version {version} (latest is {})",
            k.key, info.latest_version
        )));
    }
    let kept_until = now + opts.grace;
    let mut plan = Plan {
        key: k.key.to_string(),
        dry_run: opts.dry_run,
        retire_after: Some(format_time(until)),
        revoked: revoked.then_some(version),
        kept_valid_until: revoked.then(|| format_time(kept_until)),
        ..Plan::default()
    };
    let mut latest = info.latest_version;
    if version == latest {
        latest = match opts.dry_run {
            true => latest + 1,
            false => rotate_past(k, latest).await?,
        };
        plan.rotated_to = Some(latest);
    }
    let mut kept = Vec::new();
    let change = |info: &TransitKeyInfo, record: &mut RetentionRecord| {
        kept.clear();
        if revoked {
            let reason = format!("kept valid when version {version} was revoked");
            for v in info.min_decryption_version.max(1)..version {
                if record.get(v).is_none() {
                    if let Some(e) = entry_from_vault(info, v, now, kept_until, &reason, false) {
                        record.upsert(e);
                        kept.push(v);
                    }
                }
            }
        }
        let changed = retire_entry(k.key, info, record, version, (now, until), opts)?;
        Ok(changed || !kept.is_empty())
    };
    let to = RaiseTo {
        floor: if revoked { version + 1 } else { 0 },
        revoking: revoked,
    };
    if opts.dry_run {
        let mut change = change;
        let (mut record, _) = k.read_record().await?;
        change(&info, &mut record)?;
        plan.set_minimums(target_minimums(&info_at(&info, latest), &record, to));
    } else {
        k.update_record(change).await?;
        plan.set_minimums(k.raise_minimums(to).await?);
    }
    plan.recorded = kept.iter().copied().chain([version]).collect();
    plan.kept_valid = kept;
    Ok(plan)
}

/// Records `version` as retired until `times.1` (revoked with `--now`); `times.0` is now.
/// Retiring shortens a window, never lengthens or reopens it. Returns whether the record
/// changed.
fn retire_entry(
    key: &str,
    info: &TransitKeyInfo,
    record: &mut RetentionRecord,
    version: u32,
    (now, until): (SystemTime, SystemTime),
    opts: &RetireOptions,
) -> Result<bool, LifecycleError> {
    let revoked = matches!(opts.at, RetireAt::Now);
    let entry = match record.get(version) {
        Some(existing) => RetiredVersion {
            retire_after: match parse_time(&existing.retire_after) {
                Some(t) if t < until => existing.retire_after.clone(),
                _ => format_time(until),
            },
            reason: opts.reason.clone(),
            revoked: revoked || existing.revoked,
            ..existing.clone()
        },
        None => entry_from_vault(info, version, now, until, &opts.reason, revoked).ok_or_else(|| {
            LifecycleError::Refused(format!(
                "version {version} of key {key:?} is already refused everywhere: Vault no longer holds its public key and the retention record has no entry"
            ))
        })?,
    };
    let changed = record.get(version) != Some(&entry);
    record.upsert(entry);
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(versions: &[u32]) -> RetentionRecord {
        let mut r = RetentionRecord::default();
        for v in versions {
            r.upsert(RetiredVersion {
                version: *v,
                public_key: "pk".into(),
                created: String::new(),
                retired_at: "2026-01-01T00:00:00Z".into(),
                retire_after: "2026-02-01T00:00:00Z".into(),
                reason: String::new(),
                revoked: false,
            });
        }
        r
    }

    #[test]
    fn min_decryption_advances_only_past_contiguous_recorded_versions() {
        assert_eq!(advance_past_recorded(1, 4, &record(&[1, 2, 3])), 4);
        assert_eq!(advance_past_recorded(1, 4, &record(&[1, 3])), 2);
        assert_eq!(advance_past_recorded(2, 4, &record(&[1])), 2);
        // Never past the signing version, even if it were recorded.
        assert_eq!(advance_past_recorded(1, 2, &record(&[1, 2])), 2);
    }

    fn key(latest: u32, min_dec: u32, min_enc: u32) -> TransitKeyInfo {
        serde_json::from_value(serde_json::json!({
            "type": "ed25519", "latest_version": latest, "min_decryption_version": min_dec,
            "min_encryption_version": min_enc, "supports_signing": true, "keys": {}
        }))
        .unwrap()
    }

    #[test]
    fn minimums_pass_the_revoked_version_and_never_go_down_or_past_latest() {
        let revoke = |v: u32| RaiseTo {
            floor: v + 1,
            revoking: true,
        };
        let rotate = RaiseTo {
            floor: 0,
            revoking: false,
        };
        let m = |info, rec, to| {
            let t = target_minimums(&info, &rec, to);
            (t.encryption, t.decryption)
        };
        // Revoking v2 of 3 with v1 recorded: both minimums to 3.
        assert_eq!(
            m(key(3, 1, 0), record(&[1, 2]), revoke(2)),
            ((0, 3), (1, 3))
        );
        // Revoking a version already below min_decryption: nothing lowered; min_encryption
        // catches up with min_decryption.
        assert_eq!(
            m(key(5, 4, 0), record(&[1, 2, 3]), revoke(2)),
            ((0, 4), (4, 4))
        );
        assert_eq!(m(key(5, 4, 5), record(&[]), revoke(2)), ((5, 5), (4, 4)));
        // Never past the latest version.
        assert_eq!(
            m(key(3, 1, 0), record(&[1, 2, 3]), revoke(3)),
            ((0, 3), (1, 3))
        );
        // Rotation: min_encryption stays unset, or follows min_decryption once set.
        assert_eq!(
            m(key(4, 1, 0), record(&[1, 2, 3]), rotate),
            ((0, 0), (1, 4))
        );
        assert_eq!(m(key(4, 2, 2), record(&[2, 3]), rotate), ((2, 4), (2, 4)));
    }

    #[test]
    fn exit_codes_are_distinct() {
        let codes = [
            LifecycleError::Refused(String::new()).exit_code(),
            LifecycleError::Denied(String::new()).exit_code(),
            LifecycleError::Unavailable(String::new()).exit_code(),
            LifecycleError::Contended.exit_code(),
            LifecycleError::Vault(String::new()).exit_code(),
        ];
        let unique: std::collections::BTreeSet<_> = codes.iter().collect();
        assert_eq!(unique.len(), codes.len());
        assert!(!codes.contains(&64), "64 is the configuration error code");
        assert_eq!(LifecycleError::Config(String::new()).exit_code(), 64);
    }
}
