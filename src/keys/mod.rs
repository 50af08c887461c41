//! The keyset cache: every version of every key ever seen, parsed once, kept fresh.
//!
//! A [`KeySet`] holds, per Transit key, the public key of every version the cache has
//! seen, including versions Vault has since retired (below `min_decryption_version`) and
//! no longer returns: Vault forgets them, Aegis does not. Whether such a version may
//! verify is decided by [`KeySet::version_status`], the one place that applies the
//! validity rule (ARCHITECTURE.md, "The validity rule": Vault's own rule, extended by the
//! key's endorsed retention record).
//!
//! Loading is single-flight (moka's `try_get_with`), and so is a refresh triggered by an
//! unknown version: concurrent requests wait for one Vault call. A background task
//! refreshes every cached key at the configured interval with jitter. Whoever asks, a key
//! is read from Vault at most once a second, and its age and failing reads are tracked
//! ([`bounds`]).

pub mod bounds;
pub mod publish;
pub mod retention;
pub mod snapshot;
pub mod trust;
pub mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value};
use tokio::sync::{Mutex, Notify};
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
pub use crate::config::RetentionLocation;
use crate::crypto::{KeyType, PublicKey};
use crate::vault::{TransitKeyInfo, VaultClient, VaultError};
use retention::{Retention, RetentionRecord, RetiredVersion};
use trust::{Evidence, RecordRead, Refusal, Verdict};

/// One version of a key.
#[derive(Clone)]
pub struct KeyVersion {
    pub version: u32,
    /// The public key exactly as Transit returned it (base64 or PEM).
    pub public_key: String,
    pub creation_time: String,
    /// Transit's `name` field for the version (the curve, `rsa-2048`, ...).
    pub name: String,
    /// The version's entry exactly as Vault returned it, to answer `GET keys` like Vault.
    pub vault_entry: Map<String, Value>,
    /// Parsed once; `None` when the key type is verified by Vault only.
    pub parsed: Option<PublicKey>,
}

/// What the cache knows of one Transit key.
#[derive(Clone)]
pub struct KeySet {
    pub name: String,
    pub key_type: String,
    /// `Some` when Aegis can verify this type locally.
    pub local_type: Option<KeyType>,
    pub derived: bool,
    pub supports_signing: bool,
    pub latest_version: u32,
    pub min_decryption_version: u32,
    pub min_encryption_version: u32,
    pub min_available_version: u32,
    /// Every version seen, retired ones included.
    pub versions: BTreeMap<u32, Arc<KeyVersion>>,
    /// The other fields of Vault's last answer, to answer `GET keys` like Vault.
    pub vault_fields: Map<String, Value>,
    /// The retention record in use: the last one accepted while its generation is current
    /// (empty when none). A refused record is never put here.
    pub record: RetentionRecord,
    /// How far the record is trusted (see [`trust`]).
    pub trust: RecordTrust,
    /// Retention of recorded versions, plus expired ones seen before and since dropped
    /// from the record (so a refusal can still say when they were retired).
    pub retention: BTreeMap<u32, Retention>,
    pub fetched_at: SystemTime,
    fetched_instant: Instant,
    /// The KV version of the record last read (0: none, or restored from a snapshot), for
    /// the [`watch`]er's first comparison.
    pub record_kv_version: u64,
}

/// What this sidecar knows of a key's retention record's trustworthiness.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordTrust {
    /// The highest generation accepted (0: none); never goes down, kept in the snapshot.
    pub accepted: u32,
    /// Why the record last read was refused, with its KV version (0: none), so that a
    /// refusal is logged and counted once per record, not once per refresh.
    pub refused: Option<(Refusal, u64)>,
}

/// What a refresh read besides the key: the record and the endorsement key.
pub(crate) struct Fetched {
    pub record: RecordRead,
    /// The record's KV version (0 when absent).
    pub kv_version: u64,
    /// The endorsement key's name and, when it exists, Transit's answer for it.
    pub endorsement_key: String,
    pub endorser: Option<TransitKeyInfo>,
}

impl Fetched {
    /// The retention rule is off: no record, no endorsement key.
    fn none() -> Self {
        Fetched {
            record: RecordRead::Absent,
            kv_version: 0,
            endorsement_key: String::new(),
            endorser: None,
        }
    }

    /// True when the record names a generation the endorsement key read does not show as
    /// current: a rotation job may have written between the two reads.
    fn maybe_raced(&self) -> bool {
        let (RecordRead::Decoded(r), Some(e)) = (&self.record, &self.endorser) else {
            return false;
        };
        let g = r.generation();
        g > 0 && (g < e.min_decryption_version.max(1) || g > e.latest_version)
    }
}

/// Whether a version may verify, and if not, why (Vault's message).
pub enum VersionStatus<'a> {
    Valid(&'a KeyVersion),
    /// Above `latest_version` as far as the cache knows.
    TooNew,
    /// Below `min_decryption_version`: Vault refuses it.
    TooOld,
    /// Within range, but the cache has no public key for it.
    Missing,
    /// Recorded as retired and past its `retire_after`, or revoked: the 400 message.
    Retired {
        message: String,
        revoked: bool,
    },
}

impl VersionStatus<'_> {
    pub const TOO_NEW: &'static str = "invalid signature: version is too new";
    pub const TOO_OLD: &'static str =
        "ciphertext or signature version is disallowed by policy (too old)";
}

impl KeySet {
    /// True when signatures of this key are checked here rather than by Vault.
    pub fn verifies_locally(&self) -> bool {
        self.local_type.is_some() && !self.derived
    }

    /// The validity rule (ARCHITECTURE.md), the one place it is applied. Version N verifies when
    /// the cache has its public key, N <= latest, and either N is recorded in the
    /// retention record with `retire_after` still ahead (even below
    /// `min_decryption_version`), or N is unrecorded and >= `min_decryption_version`.
    /// A recorded version past its `retire_after`, or revoked, is refused even above
    /// `min_decryption_version`.
    pub fn version_status(&self, version: u32) -> VersionStatus<'_> {
        self.version_status_at(version, SystemTime::now())
    }

    /// When the validity of a version next changes by time alone: the earliest
    /// `retire_after` still ahead of `now` (a retention window closing).
    pub fn next_validity_change(&self, now: SystemTime) -> Option<SystemTime> {
        self.retention
            .values()
            .filter(|r| r.valid_at(now))
            .map(|r| r.retire_after)
            .min()
    }

    fn version_status_at(&self, version: u32, now: SystemTime) -> VersionStatus<'_> {
        if version > self.latest_version {
            return VersionStatus::TooNew;
        }
        match self.retention.get(&version) {
            Some(r) if !r.valid_at(now) => {
                return VersionStatus::Retired {
                    message: r.refusal(&self.name, version),
                    revoked: r.revoked,
                }
            }
            Some(_) => {}
            None if version < self.min_decryption_version.max(1) => return VersionStatus::TooOld,
            None => {}
        }
        match self.versions.get(&version) {
            Some(v) => VersionStatus::Valid(v),
            None => VersionStatus::Missing,
        }
    }

    /// Builds the new keyset from Vault's answer and the key's retention record, keeping
    /// what Vault no longer returns.
    pub(crate) fn merge(
        info: TransitKeyInfo,
        record: RetentionRecord,
        previous: Option<&KeySet>,
    ) -> KeySet {
        let local_type = KeyType::from_transit(&info.key_type);
        let mut versions = BTreeMap::new();
        // Keep retired versions of the same key (same type, not above the new latest:
        // a key deleted and re-created starts again from version 1).
        if let Some(prev) = previous.filter(|p| p.key_type == info.key_type) {
            for (n, v) in prev.versions.range(..=info.latest_version) {
                versions.insert(*n, v.clone());
            }
        }
        for (n, entry) in &info.keys {
            let Ok(n) = n.parse::<u32>() else { continue };
            let Value::Object(entry) = entry else {
                // Symmetric keys list creation timestamps only: nothing to verify with.
                continue;
            };
            let text = entry
                .get("public_key")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if let Some(existing) = versions.get(&n) {
                if existing.public_key == text {
                    continue; // parsed already
                }
            }
            let parsed = match local_type {
                Some(t) if !text.is_empty() => match PublicKey::parse(t, text) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        let key = info.raw.get("name").and_then(Value::as_str).unwrap_or("?");
                        warn!(key, version = n, error = %e, "public key not usable locally; Vault will verify it");
                        None
                    }
                },
                _ => None,
            };
            let s = |k: &str| {
                entry
                    .get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            versions.insert(
                n,
                Arc::new(KeyVersion {
                    version: n,
                    public_key: text.to_string(),
                    creation_time: s("creation_time"),
                    name: s("name"),
                    vault_entry: entry.clone(),
                    parsed,
                }),
            );
        }
        // Versions Vault no longer returns but the retention record still holds.
        let key_name = info.raw.get("name").and_then(Value::as_str).unwrap_or("?");
        for e in &record.previous_keys {
            if versions.contains_key(&e.version) || e.version > info.latest_version {
                continue;
            }
            let parsed = local_type.and_then(|t| match PublicKey::parse(t, &e.public_key) {
                Ok(p) => Some(p),
                Err(err) => {
                    warn!(key = key_name, version = e.version, error = %err, "retention record holds an unusable public key");
                    None
                }
            });
            let mut entry = Map::new();
            entry.insert("public_key".into(), e.public_key.clone().into());
            entry.insert("creation_time".into(), e.created.clone().into());
            versions.insert(
                e.version,
                Arc::new(KeyVersion {
                    version: e.version,
                    public_key: e.public_key.clone(),
                    creation_time: e.created.clone(),
                    name: String::new(),
                    vault_entry: entry,
                    parsed,
                }),
            );
        }
        let mut retention = record.entries();
        if let Some(prev) = previous.filter(|p| p.key_type == info.key_type) {
            keep_ended(&mut retention, &prev.retention, info.latest_version);
        }
        let mut vault_fields = info.raw;
        vault_fields.remove("keys");
        KeySet {
            name: vault_fields
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            key_type: info.key_type,
            local_type,
            derived: info.derived,
            supports_signing: info.supports_signing,
            latest_version: info.latest_version,
            min_decryption_version: info.min_decryption_version,
            min_encryption_version: info.min_encryption_version,
            min_available_version: info.min_available_version,
            versions,
            vault_fields,
            record,
            trust: previous.map(|p| p.trust.clone()).unwrap_or_default(),
            retention,
            fetched_at: SystemTime::now(),
            fetched_instant: Instant::now(),
            record_kv_version: 0,
        }
    }

    /// Builds the keyset from a refresh: judges the record ([`trust::judge`]) against
    /// Transit, the pinned public keys and the generation accepted before, and merges only
    /// a trusted one (or, when refused, the last accepted one while it is still current).
    pub(crate) fn from_vault(
        mount: &str,
        name: &str,
        info: TransitKeyInfo,
        fetched: &Fetched,
        previous: Option<&KeySet>,
    ) -> KeySet {
        let prev = previous.filter(|p| p.key_type == info.key_type);
        let pins = prev
            .map(|p| p.pins(info.latest_version))
            .unwrap_or_default();
        let accepted = prev.map_or(0, |p| p.trust.accepted);
        let ev = Evidence {
            mount,
            key: name,
            signing: &info,
            endorsement_key: &fetched.endorsement_key,
            endorser: fetched.endorser.as_ref(),
            pins: &pins,
            accepted,
        };
        let (record, refused) = match trust::judge(&ev, &fetched.record) {
            Verdict::Trusted(r) => (r, None),
            Verdict::Empty => (RetentionRecord::default(), None),
            Verdict::Refused(reason) => (
                prev.and_then(|p| p.record_still_current(&ev))
                    .unwrap_or_default(),
                Some((reason, fetched.kv_version)),
            ),
        };
        let trust = RecordTrust {
            accepted: accepted.max(record.generation()),
            refused,
        };
        let mut set = KeySet::merge(info, record, prev);
        set.trust = trust;
        set.record_kv_version = fetched.kv_version;
        set
    }

    /// The public key of every version seen up to `latest`, pinned against the record.
    fn pins(&self, latest: u32) -> BTreeMap<u32, String> {
        self.versions
            .range(..=latest)
            .map(|(n, v)| (*n, v.public_key.clone()))
            .collect()
    }

    /// The record in use, if its generation is still current for `ev`'s endorsement key.
    fn record_still_current(&self, ev: &Evidence<'_>) -> Option<RetentionRecord> {
        let generation = self.record.generation();
        let endorser = ev.endorser?;
        let current = generation > 0
            && generation >= endorser.min_decryption_version.max(1)
            && trust::served_public_key(endorser, generation).is_some()
            && trust::check_public_keys(&self.record, ev.signing, ev.pins).is_ok();
        current.then(|| self.record.clone())
    }

    /// The versions whose validity ended (expired or revoked), as stored in a snapshot.
    fn ended(&self) -> Vec<RetiredVersion> {
        let now = SystemTime::now();
        self.retention
            .iter()
            .filter(|(_, r)| !r.valid_at(now))
            .map(|(n, r)| RetiredVersion {
                version: *n,
                public_key: String::new(),
                created: String::new(),
                retired_at: r.retired_at_text.clone(),
                retire_after: r.retire_after_text.clone(),
                reason: String::new(),
                revoked: r.revoked,
            })
            .collect()
    }

    /// `GET keys/{name}`'s `data`: Vault's fields, with `keys` listing every cached version.
    pub fn to_vault_json(&self) -> Value {
        let mut m = self.vault_fields.clone();
        let keys: Map<String, Value> = self
            .versions
            .values()
            .map(|v| (v.version.to_string(), Value::Object(v.vault_entry.clone())))
            .collect();
        m.insert("keys".into(), Value::Object(keys));
        for (k, v) in [
            ("latest_version", self.latest_version),
            ("min_decryption_version", self.min_decryption_version),
            ("min_encryption_version", self.min_encryption_version),
            ("min_available_version", self.min_available_version),
        ] {
            m.insert(k.into(), v.into());
        }
        Value::Object(m)
    }
}

/// Adds to `retention` every version whose validity ended in `seen` (expired or
/// revoked): once seen, an end stays in force whatever a later record says.
fn keep_ended(
    retention: &mut BTreeMap<u32, Retention>,
    seen: &BTreeMap<u32, Retention>,
    latest: u32,
) {
    let now = SystemTime::now();
    for (n, r) in seen {
        let still_valid_here = retention.get(n).is_none_or(|x| x.valid_at(now));
        if !r.valid_at(now) && *n <= latest && still_valid_here {
            retention.insert(*n, r.clone());
        }
    }
}

/// Where a snapshot entry keeps the key's retention record, next to Transit's fields.
const SNAPSHOT_RECORD_FIELD: &str = "aegis_retention_record";
/// Where it keeps the highest accepted generation.
const SNAPSHOT_GENERATION_FIELD: &str = "aegis_retention_generation";
/// Where it keeps the versions whose validity ended (revoked or expired).
const SNAPSHOT_ENDED_FIELD: &str = "aegis_retention_ended";
/// Where a snapshot entry keeps when the key was last read from Vault (its age).
const SNAPSHOT_REFRESHED_FIELD: &str = "aegis_refreshed_at";

/// The cache of keysets for one Transit mount.
pub struct KeyCache {
    vault: Arc<VaultClient>,
    mount: String,
    sets: moka::future::Cache<String, Arc<KeySet>>,
    /// Per-key lock so that a refresh is shared by everyone who asked for it meanwhile.
    refresh_locks: moka::sync::Cache<String, Arc<Mutex<()>>>,
    /// Freshness, read spacing and absent-key lookups (see [`bounds`]).
    bounds: bounds::Bounds,
    /// Signalled whenever a keyset changes, for the snapshot writer.
    changed: Notify,
    /// Bumped whenever a keyset changes, for any number of watchers (gRPC WatchKeys).
    updates: tokio::sync::watch::Sender<u64>,
    /// Where retention records live; `None`: the retention rule is off (Vault's rule only).
    retention: Option<RetentionLocation>,
    /// The [`watch`]er's progress, for the gauges.
    watch: watch::WatchStatus,
}

impl KeyCache {
    pub fn new(
        vault: Arc<VaultClient>,
        mount: impl Into<String>,
        retention: Option<RetentionLocation>,
    ) -> Self {
        KeyCache {
            vault,
            retention,
            mount: mount.into(),
            sets: moka::future::Cache::builder().max_capacity(10_000).build(),
            refresh_locks: moka::sync::Cache::builder().max_capacity(10_000).build(),
            bounds: bounds::Bounds::default(),
            changed: Notify::new(),
            updates: tokio::sync::watch::Sender::new(0),
            watch: watch::WatchStatus::default(),
        }
    }

    /// The cache the sidecar builds from its configuration: the Transit mount, the
    /// retention records (KV location, endorsement keys) and the keyset bounds. Commands
    /// that must apply the sidecar's validity rule (`aegis keys publish`) build the same.
    pub fn from_config(vault: Arc<VaultClient>, config: &crate::config::Config) -> Self {
        KeyCache::new(
            vault,
            config.transit_mount.clone(),
            Some(config.retention.clone()),
        )
        .with_bounds(config.keyset)
    }

    /// The same cache with `AEGIS_MAX_KEYSET_AGE`, `AEGIS_STALE_KEYSET` and
    /// `AEGIS_KEY_LOOKUP_RATE` from the configuration.
    pub fn with_bounds(mut self, limits: crate::config::KeysetBounds) -> Self {
        self.bounds = bounds::Bounds::new(limits);
        self
    }

    /// A receiver that sees a change whenever a keyset changes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.updates.subscribe()
    }

    /// Tells the snapshot writer and the watchers that a keyset changed.
    fn mark_changed(&self) {
        self.changed.notify_one();
        self.updates.send_modify(|g| *g = g.wrapping_add(1));
    }

    pub fn mount(&self) -> &str {
        &self.mount
    }

    pub fn vault(&self) -> &VaultClient {
        &self.vault
    }

    pub fn vault_arc(&self) -> Arc<VaultClient> {
        self.vault.clone()
    }

    /// Reads the key and the endorsement key from Transit (concurrently), then the
    /// retention record from KV (after the key: a rotation job writes the record before
    /// it raises `min_decryption_version`, so a record read after the key never misses a
    /// version the key read shows retired). When the record names a generation the
    /// endorsement key read does not show as current (a job wrote in between), the record
    /// and the endorsement key are read once more. A record or endorsement key that cannot
    /// be read fails the read (fail closed: a revocation is never forgotten); what was read
    /// is judged by [`KeySet::from_vault`].
    #[tracing::instrument(name = "keys.refresh", skip_all, fields(key = name))]
    async fn read(&self, name: &str) -> Result<(TransitKeyInfo, Fetched), VaultError> {
        let result = self.read_uncounted(name).await;
        crate::telemetry::metrics::get().keyset_refresh(result.is_ok());
        result
    }

    async fn read_uncounted(&self, name: &str) -> Result<(TransitKeyInfo, Fetched), VaultError> {
        let Some(loc) = &self.retention else {
            let info = self.vault.transit_read_key(&self.mount, name).await?;
            return Ok((info, Fetched::none()));
        };
        let endorsement_key = loc.endorsement_key(name);
        let (info, endorser) = tokio::join!(
            self.vault.transit_read_key(&self.mount, name),
            self.read_endorser(&endorsement_key)
        );
        let (info, mut endorser) = (info?, endorser?);
        let mut fetched = self
            .read_record(loc, name, endorsement_key.clone(), endorser)
            .await?;
        if fetched.maybe_raced() {
            endorser = self.read_endorser(&endorsement_key).await?;
            fetched = self
                .read_record(loc, name, endorsement_key, endorser)
                .await?;
        }
        Ok((info, fetched))
    }

    /// The endorsement key, `None` when Transit has no such key.
    async fn read_endorser(&self, key: &str) -> Result<Option<TransitKeyInfo>, VaultError> {
        match self.vault.transit_read_key(&self.mount, key).await {
            Ok(info) => Ok(Some(info)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.in_context(format_args!(
                "reading the retention record's endorsement key {}/keys/{key}",
                self.mount
            ))),
        }
    }

    async fn read_record(
        &self,
        loc: &RetentionLocation,
        name: &str,
        endorsement_key: String,
        endorser: Option<TransitKeyInfo>,
    ) -> Result<Fetched, VaultError> {
        let path = loc.path(&self.mount, name);
        let entry = self
            .vault
            .kv2_read(&loc.kv_mount, &path)
            .await
            // Say which read failed: a policy missing `read` on the record path
            // otherwise reads as a refusal of the key itself.
            .map_err(|e| {
                e.in_context(format_args!(
                    "reading the retention record {}/data/{path}",
                    loc.kv_mount
                ))
            })?;
        let record = if entry.data.is_null() {
            RecordRead::Absent
        } else {
            serde_json::from_value(entry.data).map_or(RecordRead::Undecodable, RecordRead::Decoded)
        };
        Ok(Fetched {
            record,
            kv_version: entry.version,
            endorsement_key,
            endorser,
        })
    }

    /// Builds the keyset from a refresh and reports a change of the record's trust.
    fn build(
        &self,
        name: &str,
        info: TransitKeyInfo,
        fetched: &Fetched,
        previous: Option<&KeySet>,
    ) -> KeySet {
        let set = KeySet::from_vault(&self.mount, name, info, fetched, previous);
        report_trust(name, previous.map(|p| &p.trust), &set.trust);
        set
    }

    /// The cached keyset, loading it (once, shared by concurrent callers) when absent. A
    /// key Vault just said it lacks is answered from memory for a second, and loads of
    /// keys not cached are limited to `AEGIS_KEY_LOOKUP_RATE` per second (429 beyond).
    pub async fn get(&self, name: &str) -> Result<Arc<KeySet>, VaultError> {
        self.load(name, true).await
    }

    /// [`get`](Self::get) without the lookup limit, for the allowlisted keys at start.
    pub async fn preload(&self, name: &str) -> Result<Arc<KeySet>, VaultError> {
        self.load(name, false).await
    }

    async fn load(&self, name: &str, limited: bool) -> Result<Arc<KeySet>, VaultError> {
        if let Some(set) = self.sets.get(name).await {
            return Ok(set);
        }
        if let Some(absent) = self.bounds.known_absent(name) {
            return Err(absent);
        }
        let loaded = std::sync::atomic::AtomicBool::new(false);
        // Boxed (only on a miss): the loader's future is deep.
        let set = Box::pin(self.sets.try_get_with_by_ref(name, async {
            if limited {
                self.bounds.admit_lookup(name)?;
            }
            let started = Instant::now();
            let (info, fetched) = self
                .read(name)
                .await
                .inspect_err(|e| self.bounds.remember_if_absent(name, e))?;
            self.bounds.loaded(name, started);
            loaded.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok(Arc::new(self.build(name, info, &fetched, None)))
        }))
        .await
        .map_err(|e: Arc<VaultError>| (*e).clone())?;
        if loaded.into_inner() {
            self.mark_changed(); // after the insert, so the snapshot includes it
        }
        Ok(set)
    }

    /// What the key gauges show, for every cached key (no I/O).
    pub fn gauges(&self) -> Vec<crate::telemetry::metrics::KeyGauge> {
        let now = SystemTime::now();
        self.sets
            .iter()
            .map(|(name, set)| crate::telemetry::metrics::KeyGauge {
                key: (*name).clone(),
                latest_version: set.latest_version,
                oldest_valid_version: set
                    .versions
                    .keys()
                    .copied()
                    .find(|v| matches!(set.version_status_at(*v, now), VersionStatus::Valid(_)))
                    .unwrap_or(0),
                age: set
                    .versions
                    .get(&set.latest_version)
                    .and_then(|v| retention::parse_time(&v.creation_time))
                    .and_then(|created| now.duration_since(created).ok()),
                keyset_age: self.bounds.age(&name),
            })
            .collect()
    }

    /// Whether the cache holds `name` (a key Vault has), without asking Vault.
    pub fn contains(&self, name: &str) -> bool {
        self.sets.contains_key(name)
    }

    /// The cached keyset, without asking Vault.
    pub async fn cached(&self, name: &str) -> Option<Arc<KeySet>> {
        self.sets.get(name).await
    }

    /// Refreshes because a request names `version`, which the cache lacks. When the key
    /// was read less than a second ago the cache answers now (the version is unknown) and
    /// one deferred refresh looks again at the end of that second; a version a sign answer
    /// showed waits for that refresh instead.
    pub async fn refresh_for_version(
        self: &Arc<Self>,
        name: &str,
        version: u32,
        not_before: Instant,
    ) -> Result<Arc<KeySet>, VaultError> {
        if self.bounds.known_to_exist(name, version) {
            return self.refresh_when_allowed(name, not_before).await;
        }
        let set = self.refresh(name, not_before).await?;
        if !set.versions.contains_key(&version) && set.fetched_instant < not_before {
            self.refresh_soon(name, not_before);
        }
        Ok(set)
    }

    /// [`refresh`](Self::refresh), waiting (at most a second) for the one-read-per-second
    /// rule rather than taking the last read's outcome.
    pub async fn refresh_when_allowed(
        &self,
        name: &str,
        not_before: Instant,
    ) -> Result<Arc<KeySet>, VaultError> {
        if let Some(at) = self.bounds.next_read(name) {
            tokio::time::sleep_until(at.into()).await;
        }
        self.refresh(name, not_before).await
    }

    /// A sign answer showed `version` of `name`, newer than the cache's latest: remembered
    /// as existing, and the key refreshed as soon as the rule allows.
    pub fn signed_with(self: &Arc<Self>, name: &str, version: u32, not_before: Instant) {
        self.bounds.signed_with(name, version);
        self.refresh_soon(name, not_before);
    }

    /// Refreshes `name` as soon as the one-read-per-second rule allows, in the background
    /// (at most one such refresh is waiting per key); skipped if a read after
    /// `not_before` happens meanwhile.
    pub fn refresh_soon(self: &Arc<Self>, name: &str, not_before: Instant) {
        let Some(at) = self.bounds.schedule(name) else {
            return;
        };
        let cache = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let _ = cache.refresh(&name, not_before).await;
            cache.bounds.unschedule(&name);
        });
    }

    /// Re-reads the key from Vault and merges; concurrent callers share one read. Returns
    /// at once with the current set if it was fetched after `not_before` (someone else
    /// refreshed while we waited for the lock), and with the last read's outcome if that
    /// read started less than a second ago ([`bounds::SPACING`]).
    pub async fn refresh(
        &self,
        name: &str,
        not_before: Instant,
    ) -> Result<Arc<KeySet>, VaultError> {
        let lock = self
            .refresh_locks
            .get_with_by_ref(name, || Arc::new(Mutex::new(())));
        let _guard = lock.lock().await;
        let previous = self.sets.get(name).await;
        if let Some(p) = previous
            .as_ref()
            .filter(|p| p.fetched_instant >= not_before)
        {
            return Ok(p.clone());
        }
        if let Some(p) = &previous {
            self.bounds.track(name, p.fetched_at); // a no-op unless its record was evicted
        }
        match (self.bounds.recent(name), &previous) {
            (Some(Err(e)), _) => return Err(e),
            (Some(Ok(())), Some(p)) => return Ok(p.clone()),
            _ => {}
        }
        let started = Instant::now();
        let result = self.read(name).await;
        self.bounds
            .record(name, started, result.as_ref().map(|_| ()));
        match result {
            Ok((info, fetched)) => Ok(self.install(name, previous, info, &fetched).await),
            Err(e) if e.is_not_found() => {
                warn!(
                    key = name,
                    "key no longer exists in Vault; dropped from the cache"
                );
                self.sets.invalidate(name).await;
                self.bounds.forget(name);
                self.bounds.remember_if_absent(name, &e);
                self.mark_changed();
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Merges a fresh read into the cache and tells whoever watches. An unchanged keyset
    /// still wakes the snapshot writer, so the snapshot keeps the key's age current.
    async fn install(
        &self,
        name: &str,
        previous: Option<Arc<KeySet>>,
        info: TransitKeyInfo,
        fetched: &Fetched,
    ) -> Arc<KeySet> {
        let set = Arc::new(self.build(name, info, fetched, previous.as_deref()));
        if previous.as_ref().is_none_or(|p| {
            p.latest_version != set.latest_version
                || p.min_decryption_version != set.min_decryption_version
        }) {
            info!(
                key = name,
                latest_version = set.latest_version,
                min_decryption_version = set.min_decryption_version,
                versions_cached = set.versions.len(),
                "keyset updated"
            );
        }
        let changed = previous.as_ref().is_none_or(|p| {
            p.to_vault_json() != set.to_vault_json()
                || p.record != set.record
                || p.trust != set.trust
        });
        self.sets.insert(name.to_string(), set.clone()).await;
        if changed {
            self.mark_changed();
        } else {
            self.changed.notify_one();
        }
        set
    }

    /// Refreshes every cached key once (the background refresher's tick). Failures are
    /// logged by [`bounds`] when they start and stop, and a key going stale once. True
    /// when every read succeeded.
    pub async fn refresh_all(&self) -> bool {
        let names: Vec<String> = self.sets.iter().map(|(k, _)| (*k).clone()).collect();
        let mut all_ok = true;
        for name in names {
            if let Err(e) = self.refresh(&name, Instant::now()).await {
                debug!(key = %name, error = %e, "background refresh failed");
                all_ok = false;
            }
            self.bounds.log_if_newly_stale(&name);
        }
        all_ok
    }

    /// Whether local verification may use `name`'s keyset now: `Err` when it is older
    /// than `AEGIS_MAX_KEYSET_AGE` and `AEGIS_STALE_KEYSET=refuse`.
    pub fn check_fresh(&self, name: &str) -> Result<(), bounds::Stale> {
        self.bounds.check(name)
    }

    /// Restores a snapshot ([`restore`](Self::restore)) keeping each key's age: the time
    /// of its last read as the snapshot stamped it, else the snapshot's time.
    pub async fn restore_aged(&self, mut payload: snapshot::Payload) -> usize {
        let written = retention::parse_time(&payload.written_at).unwrap_or(SystemTime::UNIX_EPOCH);
        let ages: Vec<(String, SystemTime)> = payload
            .keys
            .iter_mut()
            .map(|(name, data)| {
                let stamp = data
                    .as_object_mut()
                    .and_then(|m| m.remove(SNAPSHOT_REFRESHED_FIELD))
                    .and_then(|v| v.as_str().and_then(retention::parse_time));
                (name.clone(), stamp.unwrap_or(written))
            })
            .collect();
        let restored = self.restore(payload).await;
        for (name, at) in ages {
            if self.sets.contains_key(&name) {
                self.bounds.track(&name, at);
            }
        }
        restored
    }

    /// Stamps each key of a snapshot with the time of its last successful read.
    fn stamp_ages(&self, mut payload: snapshot::Payload) -> snapshot::Payload {
        for (name, data) in payload.keys.iter_mut() {
            let at = self.bounds.age(name).map(|age| SystemTime::now() - age);
            if let (Some(m), Some(at)) = (data.as_object_mut(), at) {
                m.insert(
                    SNAPSHOT_REFRESHED_FIELD.into(),
                    humantime::format_rfc3339_seconds(at).to_string().into(),
                );
            }
        }
        payload
    }

    /// Loads a snapshot's keysets (a start during a Vault outage). Returns how many keys
    /// were restored; keys already loaded from Vault are left alone. The snapshot's record
    /// was accepted when it was written; one that does not decode is refused (logged,
    /// counted), never read as empty.
    pub async fn restore(&self, payload: snapshot::Payload) -> usize {
        let mut restored = 0;
        for (name, data) in payload.keys {
            match restore_entry(&name, data) {
                Ok(set) if !self.sets.contains_key(&name) => {
                    report_trust(&name, None, &set.trust);
                    self.sets.insert(name, Arc::new(set)).await;
                    restored += 1;
                }
                Ok(_) => {}
                Err(e) => warn!(key = %name, error = %e, "snapshot entry unusable; skipped"),
            }
        }
        restored
    }

    /// What a snapshot of the current keysets holds.
    pub fn snapshot_payload(&self, vault: Vec<String>) -> snapshot::Payload {
        let keys = self
            .sets
            .iter()
            .map(|(name, set)| {
                let mut data = set.to_vault_json();
                if let (Value::Object(m), Ok(record), Ok(ended)) = (
                    &mut data,
                    serde_json::to_value(&set.record),
                    serde_json::to_value(set.ended()),
                ) {
                    m.insert(SNAPSHOT_RECORD_FIELD.into(), record);
                    m.insert(SNAPSHOT_GENERATION_FIELD.into(), set.trust.accepted.into());
                    m.insert(SNAPSHOT_ENDED_FIELD.into(), ended);
                }
                ((*name).clone(), data)
            })
            .collect();
        snapshot::Payload {
            mount: self.mount.clone(),
            vault,
            written_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            keys,
        }
    }

    /// Writes the snapshot to `dir` after every keyset change (never more than one write
    /// at a time; changes during a write lead to one more write).
    pub async fn run_snapshotter(self: Arc<Self>, dir: PathBuf, vault: Vec<String>) {
        loop {
            self.changed.notified().await;
            let payload = self.stamp_ages(self.snapshot_payload(vault.clone()));
            let count = payload.keys.len();
            let target = dir.clone();
            match tokio::task::spawn_blocking(move || snapshot::write(&target, &payload)).await {
                Ok(Ok(())) => debug!(keys = count, dir = %dir.display(), "keyset snapshot written"),
                Ok(Err(e)) => {
                    warn!(dir = %dir.display(), error = %e, "cannot write the keyset snapshot")
                }
                Err(e) => warn!(error = %e, "keyset snapshot task failed"),
            }
        }
    }

    /// Runs [`refresh_all`](Self::refresh_all) every `interval`, jittered by up to 10 %.
    /// The first round comes after a random part of the interval (sidecars started
    /// together, or back after an outage, spread over it); a failed round is tried again
    /// after a backoff from 30 s up to the interval, never sooner.
    pub async fn run_refresher(self: Arc<Self>, interval: Duration) {
        let mut failures = Backoff::new(FAILED_REFRESH_RETRY.min(interval), interval);
        tokio::time::sleep(interval.mul_f64(rand::random::<f64>())).await;
        loop {
            self.vault.pace().await;
            let wait = if self.refresh_all().await {
                failures.reset();
                interval.mul_f64(0.9 + rand::random::<f64>() * 0.2)
            } else {
                failures.next_pause()
            };
            tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
        }
    }

    /// What the watcher gauges read.
    pub fn watch_status(&self) -> Option<(Duration, Duration)> {
        self.watch.age()
    }
}

/// The first retry of a failed full refresh (doubling up to the refresh interval).
const FAILED_REFRESH_RETRY: Duration = Duration::from_secs(30);

/// One snapshot entry as a keyset: Transit's fields, the record accepted, the highest
/// generation accepted and the versions whose validity ended.
fn restore_entry(name: &str, mut data: Value) -> Result<KeySet, VaultError> {
    let mut take = |field| data.as_object_mut().and_then(|m| m.remove(field));
    let record = take(SNAPSHOT_RECORD_FIELD);
    let generation = take(SNAPSHOT_GENERATION_FIELD).and_then(|g| g.as_u64());
    let ended: Vec<RetiredVersion> = take(SNAPSHOT_ENDED_FIELD)
        .and_then(|e| serde_json::from_value(e).ok())
        .unwrap_or_default();
    let info = TransitKeyInfo::from_data(data)?;
    let (record, refused) = match record.map(serde_json::from_value::<RetentionRecord>) {
        None => (RetentionRecord::default(), None),
        Some(Ok(r)) => (r, None),
        Some(Err(_)) => (RetentionRecord::default(), Some((Refusal::Undecodable, 0))),
    };
    let latest = info.latest_version;
    let mut set = KeySet::merge(info, record, None);
    let ended = RetentionRecord {
        previous_keys: ended,
        ..RetentionRecord::default()
    };
    keep_ended(&mut set.retention, &ended.entries(), latest);
    let accepted = generation.and_then(|g| u32::try_from(g).ok()).unwrap_or(0);
    set.trust = RecordTrust {
        accepted: accepted.max(set.record.generation()),
        refused,
    };
    debug!(
        key = name,
        generation = set.trust.accepted,
        "keyset restored from the snapshot"
    );
    Ok(set)
}

/// Logs and counts a change of a record's trust: a refusal once per refused record (its
/// reason and KV version; never its contents), and the return to a trusted record.
fn report_trust(name: &str, before: Option<&RecordTrust>, after: &RecordTrust) {
    let metrics = crate::telemetry::metrics::get();
    metrics.record_trusted(name, after.refused.is_none());
    if before.and_then(|t| t.refused) == after.refused {
        return;
    }
    match after.refused {
        Some((reason, kv_version)) => {
            metrics.record_refused(name, reason.as_str());
            error!(
                key = name,
                reason = reason.as_str(),
                kv_version,
                accepted_generation = after.accepted,
                "retention record refused: none of its entries is used; retired versions verify only while the last accepted record is current (see docs/trust-model.md)"
            );
        }
        None => warn!(
            key = name,
            generation = after.accepted,
            "retention record trusted again"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Transit's answer for key `k` (ed25519): `versions` with one public key.
    pub(super) fn info(latest: u32, min_dec: u32, versions: &[u32]) -> TransitKeyInfo {
        let pk = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
        let keys = versions
            .iter()
            .map(|v| (v.to_string(), serde_json::json!({"public_key": pk, "creation_time": "2026-01-01T00:00:00Z", "name": "ed25519"})))
            .collect();
        let raw = serde_json::json!({"name": "k", "type": "ed25519", "latest_version": latest})
            .as_object()
            .unwrap()
            .clone();
        TransitKeyInfo {
            key_type: "ed25519".into(),
            latest_version: latest,
            min_decryption_version: min_dec,
            min_encryption_version: 0,
            min_available_version: 0,
            derived: false,
            supports_signing: true,
            keys,
            raw,
        }
    }

    #[test]
    fn retired_versions_stay_cached_but_are_refused_as_vault_does() {
        let first = KeySet::merge(info(2, 1, &[1, 2]), RetentionRecord::default(), None);
        assert!(matches!(first.version_status(1), VersionStatus::Valid(_)));
        // Vault raised min_decryption_version to 2 and stopped returning v1.
        let second = KeySet::merge(info(2, 2, &[2]), RetentionRecord::default(), Some(&first));
        assert_eq!(second.versions.keys().copied().collect::<Vec<_>>(), [1, 2]);
        assert!(matches!(second.version_status(1), VersionStatus::TooOld));
        assert!(matches!(second.version_status(0), VersionStatus::TooOld));
        assert!(matches!(second.version_status(2), VersionStatus::Valid(_)));
        assert!(matches!(second.version_status(3), VersionStatus::TooNew));
        let json = second.to_vault_json();
        assert!(json["keys"]["1"]["public_key"].is_string());
        assert_eq!(json["min_decryption_version"], 2);
        assert_eq!(json["name"], "k");
    }

    #[test]
    fn a_recreated_key_forgets_versions_above_its_latest() {
        let old = KeySet::merge(info(3, 1, &[1, 2, 3]), RetentionRecord::default(), None);
        let new = KeySet::merge(info(1, 1, &[1]), RetentionRecord::default(), Some(&old));
        assert_eq!(new.versions.keys().copied().collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn missing_public_key_in_range_is_reported_missing() {
        let s = KeySet::merge(info(3, 1, &[1, 3]), RetentionRecord::default(), None);
        assert!(matches!(s.version_status(2), VersionStatus::Missing));
    }

    /// A record of `(version, retire_after, revoked)` entries.
    pub(super) fn record(entries: &[(u32, SystemTime, bool)]) -> RetentionRecord {
        let mut r = RetentionRecord::default();
        for (version, retire_after, revoked) in entries {
            r.upsert(retention::RetiredVersion {
                version: *version,
                public_key: "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=".into(),
                created: "2026-01-01T00:00:00Z".into(),
                retired_at: "2026-02-01T00:00:00Z".into(),
                retire_after: retention::format_time(*retire_after),
                reason: "test".into(),
                revoked: *revoked,
            });
        }
        r
    }

    #[test]
    fn the_retention_rule() {
        let now = SystemTime::now();
        let later = now + Duration::from_secs(3600);
        let earlier = now - Duration::from_secs(3600);
        // Vault: latest 4, min_decryption_version 3, returns only v3 and v4.
        let set = KeySet::merge(
            info(4, 3, &[3, 4]),
            record(&[(1, earlier, false), (2, later, false), (3, later, true)]),
            None,
        );
        // v2: below min_decryption_version, retire_after ahead: retired but valid, with
        // the public key taken from the record.
        assert!(matches!(set.version_status(2), VersionStatus::Valid(v) if v.parsed.is_some()));
        // v1: retire_after passed: refused, naming the key, version and times.
        match set.version_status(1) {
            VersionStatus::Retired {
                message: m,
                revoked: false,
            } => {
                assert!(
                    m.contains("version 1 of key \"k\" was retired at 2026-02-01T00:00:00Z"),
                    "{m}"
                )
            }
            _ => panic!("v1 must be refused"),
        }
        // v3: revoked, although Vault still accepts it.
        assert!(
            matches!(set.version_status(3), VersionStatus::Retired { message, revoked: true } if message.contains("revoked"))
        );
        assert!(matches!(set.version_status(4), VersionStatus::Valid(_)));
        assert!(matches!(set.version_status(0), VersionStatus::TooOld));
        // Later the job drops the expired v1 from the record: still refused with its times.
        let next = KeySet::merge(
            info(4, 3, &[3, 4]),
            record(&[(2, later, false), (3, later, true)]),
            Some(&set),
        );
        assert!(matches!(
            next.version_status(1),
            VersionStatus::Retired { revoked: false, .. }
        ));
        // Once v2's window passes, it is refused too (time is an input of the rule).
        assert!(matches!(
            next.version_status_at(2, later + Duration::from_secs(1)),
            VersionStatus::Retired { .. }
        ));
    }
}
