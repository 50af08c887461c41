//! Endorsing the retention record: every generation the rotation job writes is signed by a
//! new version of the key's endorsement key, and Vault is then told to forget the older ones.
//!
//! The endorsement key is `{AEGIS_RETENTION_ENDORSEMENT_PREFIX}{key}` in the key's Transit
//! mount (ed25519). For each write ([`super::KeyRef::update_record`]): create it if absent,
//! rotate it to a new version N, sign [`RetentionRecord::endorsed_bytes`] with `key_version`
//! N, check-and-set the record, then raise the endorsement key's `min_decryption_version`
//! and `min_encryption_version` to N (never lower) and `trim` it to N, so Vault holds no
//! key that would verify a superseded generation. A job that died between the write and
//! the raise is finished by the next run ([`super::KeyRef::converge_endorsements`]).
//! The job never builds on a record it cannot trust ([`crate::keys::trust::judge`]); an
//! unendorsed record is taken over once, by `aegis retention endorse` ([`endorse`]).

use tracing::info;

use super::{on_write_conflict_retry, KeyRef, LifecycleError, Plan};
use crate::keys::retention::{Endorsement, RetentionRecord};
use crate::keys::trust::{self, Evidence, RecordRead, Refusal, Verdict};
use crate::vault::TransitKeyInfo;

/// Which records a write may build on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Accept {
    /// Only a record the sidecars would trust (every rotate and retire).
    Endorsed,
    /// Any record whose entries agree with Vault where Vault still serves the version
    /// (`aegis retention endorse`, the one-time migration).
    Checked,
}

impl KeyRef<'_> {
    /// The Transit key that endorses this key's record.
    pub(super) fn endorsement_key(&self) -> String {
        self.retention.endorsement_key(self.key)
    }

    /// The endorsement key, `None` while it does not exist.
    pub(super) async fn read_endorser(&self) -> Result<Option<TransitKeyInfo>, LifecycleError> {
        let key = self.endorsement_key();
        match self.vault.transit_read_key(self.mount, &key).await {
            Ok(info) => Ok(Some(info)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e
                .in_context(format_args!(
                    "reading the endorsement key {}/keys/{key}",
                    self.mount
                ))
                .into()),
        }
    }

    /// Judges the record read at KV version `cas` as a sidecar would (without pins).
    pub(super) fn judge_record(
        &self,
        info: &TransitKeyInfo,
        record: &RetentionRecord,
        cas: u64,
        endorser: Option<&TransitKeyInfo>,
    ) -> Verdict {
        let key = self.endorsement_key();
        let pins = Default::default();
        let ev = Evidence {
            mount: self.mount,
            key: self.key,
            signing: info,
            endorsement_key: &key,
            endorser,
            pins: &pins,
            accepted: 0,
        };
        let read = if cas == 0 {
            RecordRead::Absent
        } else {
            RecordRead::Decoded(record.clone())
        };
        trust::judge(&ev, &read)
    }

    /// Refuses to build on a record that `accept` does not allow.
    pub(super) fn check_record(
        &self,
        info: &TransitKeyInfo,
        record: &RetentionRecord,
        cas: u64,
        endorser: Option<&TransitKeyInfo>,
        accept: Accept,
    ) -> Result<(), LifecycleError> {
        let verdict = self.judge_record(info, record, cas, endorser);
        match (verdict, accept) {
            (Verdict::Empty | Verdict::Trusted(_), _) => Ok(()),
            (Verdict::Refused(reason), Accept::Endorsed) => Err(self.untrusted(reason)),
            (Verdict::Refused(_), Accept::Checked) => {
                let named = record.key == self.key && record.mount == self.mount;
                if cas > 0 && !named {
                    return Err(self.untrusted(Refusal::WrongKey));
                }
                trust::check_public_keys(record, info, &Default::default())
                    .map_err(|reason| self.untrusted(reason))
            }
        }
    }

    fn untrusted(&self, reason: Refusal) -> LifecycleError {
        LifecycleError::Refused(format!(
            "the retention record {}/data/{} is not trusted ({}): sidecars ignore it; check it (KV history: `vault kv metadata get`), restore a good version, then run `aegis retention endorse --key {}`",
            self.retention.kv_mount,
            self.record_path(),
            reason.as_str(),
            self.key
        ))
    }

    /// Finishes a job that died between writing generation G and raising the endorsement
    /// key's minimum versions: raises them to the trusted record's generation.
    pub(super) async fn converge_endorsements(
        &self,
        record: &RetentionRecord,
        endorser: Option<&TransitKeyInfo>,
    ) -> Result<(), LifecycleError> {
        let generation = record.generation();
        match endorser {
            Some(e) if generation > e.min_decryption_version.max(1) => {
                self.retire_endorsements(generation).await
            }
            _ => Ok(()),
        }
    }

    /// Signs `record` with a new endorsement key version; `None` when a concurrent job
    /// raised the key past that version first (read again and retry).
    pub(super) async fn endorse_new_generation(
        &self,
        record: &mut RetentionRecord,
        exists: bool,
    ) -> Result<Option<u32>, LifecycleError> {
        let key = self.endorsement_key();
        if !exists {
            self.vault
                .transit_create_key(self.mount, &key, "ed25519")
                .await?;
            info!(key = self.key, endorsement_key = %key, "endorsement key created");
        }
        on_write_conflict_retry(|| async {
            Ok(self.vault.transit_rotate(self.mount, &key).await?)
        })
        .await?;
        let generation = self
            .read_endorser()
            .await?
            .map(|e| e.latest_version)
            .ok_or_else(|| LifecycleError::Vault(format!("endorsement key {key:?} vanished")))?;
        let bytes = record.endorsed_bytes(&key, generation);
        let signature = match self
            .vault
            .transit_sign_version(self.mount, &key, &bytes, generation)
            .await
        {
            Ok(s) if s.starts_with(&format!("vault:v{generation}:")) => s,
            Ok(_) => {
                return Err(LifecycleError::Vault(
                    "sign used another key version".into(),
                ))
            }
            // Below min_encryption_version: another job endorsed a newer generation.
            Err(crate::vault::VaultError::Status { status: 400, .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        record.endorsement = Some(Endorsement {
            key,
            generation,
            signature,
        });
        Ok(Some(generation))
    }

    /// Raises the endorsement key's `min_decryption_version` and `min_encryption_version`
    /// to `generation` (never lowers them), then trims it there: Vault forgets the key of
    /// every superseded generation.
    pub(super) async fn retire_endorsements(&self, generation: u32) -> Result<(), LifecycleError> {
        let key = self.endorsement_key();
        on_write_conflict_retry(|| async {
            let Some(e) = self.read_endorser().await? else {
                return Ok(());
            };
            let floor = e.min_decryption_version.max(e.min_encryption_version);
            if e.min_decryption_version < generation || e.min_encryption_version < generation {
                let to = generation.max(floor);
                self.vault
                    .transit_set_min_versions(self.mount, &key, to)
                    .await?;
                info!(
                    key = self.key,
                    generation = to,
                    "superseded endorsements refused by Vault"
                );
            }
            if e.min_available_version < generation {
                self.vault
                    .transit_trim(self.mount, &key, generation)
                    .await?;
            }
            Ok(())
        })
        .await
    }
}

/// `aegis retention endorse`: takes over the current record (typically one written before
/// endorsements) after checking that every entry agrees with Vault where Vault still
/// serves the version, and endorses it as a new generation. Entries Vault no longer
/// serves cannot be checked against it: they are listed in `unchecked`.
pub async fn endorse(k: &KeyRef<'_>, dry_run: bool) -> Result<Plan, LifecycleError> {
    let info = k.read_key().await?;
    let (record, cas) = k.read_record().await?;
    let endorser = k.read_endorser().await?;
    k.check_record(&info, &record, cas, endorser.as_ref(), Accept::Checked)?;
    let previously = match k.judge_record(&info, &record, cas, endorser.as_ref()) {
        Verdict::Empty => "empty".to_string(),
        Verdict::Trusted(_) => "endorsed".to_string(),
        Verdict::Refused(r) => r.as_str().to_string(),
    };
    let mut plan = Plan {
        key: k.key.to_string(),
        dry_run,
        min_decryption_version: (info.min_decryption_version, info.min_decryption_version),
        endorsed: record.previous_keys.iter().map(|e| e.version).collect(),
        unchecked: unchecked(&record, &info),
        previously: Some(previously),
        ..Plan::default()
    };
    if dry_run {
        return Ok(plan);
    }
    let written = k.update_record_as(Accept::Checked, |_, _| Ok(true)).await?;
    plan.endorsed = written.previous_keys.iter().map(|e| e.version).collect();
    plan.unchecked = unchecked(&written, &k.read_key().await?);
    plan.endorsed_generation = Some(written.generation());
    Ok(plan)
}

/// The record's versions whose public key Vault no longer serves.
fn unchecked(record: &RetentionRecord, info: &TransitKeyInfo) -> Vec<u32> {
    record
        .previous_keys
        .iter()
        .filter(|e| trust::served_public_key(info, e.version).is_none())
        .map(|e| e.version)
        .collect()
}
