//! The keyset watcher: how a change reaches a sidecar within seconds at the cost of one
//! Vault call per interval, whatever the number of keys.
//!
//! Every change Aegis makes to a key (`aegis rotate`, `aegis retire`, `--now` revocation,
//! `aegis retention endorse`) writes the key's retention record in KV v2. So instead of
//! reading every key every few seconds, the watcher lists the records' folder with their
//! metadata in one call (`LIST {kv_mount}/detailed-metadata/{prefix}/{transit_mount}/`,
//! OpenBao 2.2+) at most `AEGIS_KEYSET_WATCH_INTERVAL` apart (default 8 s; each wait is
//! 80 % to 100 % of it, the first one a random part of it, so sidecars started together do
//! not poll together). A cached key whose record metadata differs from what the watcher saw
//! last (a new version, a deletion, a destroyed version: the whole metadata is compared)
//! is read in full at once: Transit key, endorsement key and record, through the same
//! [`KeyCache::refresh`] as every other read, so the one-read-per-second rule holds.
//!
//! What the listing cannot see (a change made outside Aegis: `auto_rotate_period`, the
//! `bao` CLI raising `min_decryption_version`) is seen by the full refresh of every key
//! (`AEGIS_REFRESH_INTERVAL`, default 10 min), and at once when a sign answer or a
//! signature names a version the cache lacks. The listing grants nothing: it only decides
//! when to read, so a KV writer can make a sidecar read more often (once per interval per
//! key at most), never trust more.
//!
//! Failures back off (jittered, up to four intervals), and Vault's `Retry-After` is
//! respected through [`VaultClient::pace`](crate::vault::VaultClient::pace). A server
//! without the endpoint, or a policy without `list` on the folder, is reported loudly once:
//! revocations then reach this sidecar only at the full refresh.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tracing::{debug, error, info, warn};

use super::KeyCache;
use crate::backoff::Backoff;
use crate::config::RetentionLocation;
use crate::vault::{KvListing, VaultError};

/// What the gauges read of the watcher.
#[derive(Debug, Default)]
pub struct WatchStatus {
    inner: Mutex<Option<Progress>>,
}

#[derive(Debug, Clone, Copy)]
struct Progress {
    interval: Duration,
    last_ok: Option<Instant>,
    started: Instant,
}

impl WatchStatus {
    /// `(time since the last successful listing (or since the watcher started), interval)`;
    /// `None` when no watcher runs.
    pub fn age(&self) -> Option<(Duration, Duration)> {
        let p = (*self.inner.lock().expect("watch status lock"))?;
        Some((p.last_ok.unwrap_or(p.started).elapsed(), p.interval))
    }

    fn start(&self, interval: Duration) {
        *self.inner.lock().expect("watch status lock") = Some(Progress {
            interval,
            last_ok: None,
            started: Instant::now(),
        });
    }

    fn succeeded(&self) {
        if let Some(p) = self.inner.lock().expect("watch status lock").as_mut() {
            p.last_ok = Some(Instant::now());
        }
    }
}

/// How the last listing went, so each change of state is logged once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ok,
    Failing,
    Unsupported,
}

/// The record metadata seen last per cached key (`None`: the key has no record).
type Seen = HashMap<String, Option<Value>>;

impl KeyCache {
    /// Lists the records' metadata every `interval` and reads in full each cached key whose
    /// record changed. `fallback` (the full refresh interval) paces retries when the
    /// listing is not available. Returns at once when the retention rule is off.
    pub async fn run_watcher(self: Arc<Self>, interval: Duration, fallback: Duration) {
        let Some(loc) = self.retention.clone() else {
            return;
        };
        self.watch.start(interval);
        // A listing before the credential is accepted could only fail.
        self.vault.wait_authenticated().await;
        let mut seen = Seen::new();
        let mut failures = Backoff::new(interval, interval * 4);
        let mut state = State::Ok;
        tokio::time::sleep(interval.mul_f64(rand::random::<f64>())).await;
        loop {
            self.vault.pace().await;
            let (next, wait) = match self.watch_once(&loc, &mut seen).await {
                Ok(()) => {
                    failures.reset();
                    self.watch.succeeded();
                    (
                        State::Ok,
                        // 80 % to 100 %: the interval is the longest gap, so it bounds how
                        // long a change takes to be seen; sidecars drift apart.
                        interval.mul_f64(0.8 + rand::random::<f64>() * 0.2),
                    )
                }
                Err(Failure::Unsupported(e)) => report(state, State::Unsupported, fallback, &e),
                Err(Failure::Vault(e)) => report(state, State::Failing, failures.next_pause(), &e),
            };
            if next == State::Ok && state != State::Ok {
                info!("keyset watch recovered: record changes reach this sidecar again");
            }
            state = next;
            tokio::time::sleep(wait).await;
        }
    }

    /// One listing, and a full read of each cached key whose record changed.
    async fn watch_once(&self, loc: &RetentionLocation, seen: &mut Seen) -> Result<(), Failure> {
        let folder = loc.path(&self.mount, "");
        let context = |e: VaultError| {
            e.in_context(format_args!(
                "listing {}/detailed-metadata/{folder}",
                loc.kv_mount
            ))
        };
        let entries = match self.vault.kv2_list_detailed(&loc.kv_mount, &folder).await {
            Ok(KvListing::Entries(e)) => e,
            Ok(KvListing::Unsupported(e)) => return Err(Failure::Unsupported(context(e))),
            Err(e @ VaultError::Status { status: 403, .. }) => {
                return Err(Failure::Unsupported(context(e)))
            }
            Err(e) => return Err(Failure::Vault(context(e))),
        };
        crate::telemetry::metrics::get().keyset_watch(true);
        let cached: Vec<(String, u64)> = self
            .sets
            .iter()
            .map(|(name, set)| ((*name).clone(), set.record_kv_version))
            .collect();
        let names: HashSet<&str> = cached.iter().map(|(n, _)| n.as_str()).collect();
        seen.retain(|name, _| names.contains(name.as_str()));
        for (name, kv_version) in cached {
            let now = entries.get(&name);
            if !changed(seen.get(&name), now, kv_version) {
                seen.insert(name, now.cloned());
                continue;
            }
            debug!(key = %name, "retention record changed; reading the key");
            crate::telemetry::metrics::get().keyset_watch_change();
            match self.refresh_when_allowed(&name, Instant::now()).await {
                Ok(_) => seen.insert(name, now.cloned()),
                // Looked at again next time.
                Err(_) => seen.remove(&name),
            };
        }
        Ok(())
    }
}

/// Whether a key must be read: its record's metadata differs from what was seen last, or,
/// when nothing was seen yet, its current version differs from the one the cache read.
fn changed(before: Option<&Option<Value>>, now: Option<&Value>, kv_version: u64) -> bool {
    match before {
        Some(before) => before.as_ref() != now,
        None => now.map_or(0, |m| m["current_version"].as_u64().unwrap_or(0)) != kv_version,
    }
}

/// Why a listing did not happen.
enum Failure {
    /// No such endpoint, or no `list` permission: only the full refresh sees changes.
    Unsupported(VaultError),
    /// Vault down, sealed, slow, rate limiting: retried with backoff.
    Vault(VaultError),
}

/// Counts a failed listing and logs it once per change of state; returns `(next, wait)`.
fn report(before: State, next: State, wait: Duration, e: &VaultError) -> (State, Duration) {
    crate::telemetry::metrics::get().keyset_watch(false);
    match (next, before == next) {
        (_, true) => debug!(error = %e, "keyset watch still failing"),
        (State::Unsupported, false) => error!(
            error = %e,
            retry_in_s = wait.as_secs(),
            "cannot list the retention records' metadata (needs OpenBao 2.2+ and `list` on that path: see deploy/vault/aegis-sidecar.hcl): revocations and rotations reach this sidecar only at the full refresh (AEGIS_REFRESH_INTERVAL)"
        ),
        _ => warn!(
            error = %e,
            retry_in_ms = wait.as_millis() as u64,
            "keyset watch failed; cached keys keep verifying, changes are seen when Vault answers again"
        ),
    }
    (next, wait)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_key_is_read_when_its_record_metadata_changed() {
        let v2 = json!({"current_version": 2, "updated_time": "t2"});
        let v2_deleted = json!({"current_version": 2, "updated_time": "t3"});
        // First listing: compared with the version the cache read.
        assert!(!changed(None, Some(&v2), 2));
        assert!(changed(None, Some(&v2), 1));
        assert!(!changed(None, None, 0), "no record, none read");
        assert!(changed(None, None, 3), "the record went away");
        // Later listings: any difference of the metadata (a deletion changes updated_time).
        assert!(!changed(Some(&Some(v2.clone())), Some(&v2), 0));
        assert!(changed(Some(&Some(v2.clone())), Some(&v2_deleted), 2));
        assert!(changed(Some(&Some(v2)), None, 2));
        assert!(changed(Some(&None), Some(&v2_deleted), 0));
    }
}
