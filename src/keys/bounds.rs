//! What keeps the keyset cache honest and cheap: each key's freshness, the spacing of its
//! Vault reads, and the lookups of keys the cache does not hold.
//!
//! - **Freshness.** Per cached key: when it was last read from Vault successfully (a
//!   snapshot restore keeps the snapshot's time), and since when reading it fails. Past
//!   `AEGIS_MAX_KEYSET_AGE` the keyset is stale: [`Bounds::check`] refuses it unless
//!   `AEGIS_STALE_KEYSET=serve`. A refresh that starts or stops failing is logged once
//!   (warn, then info), not at every tick.
//! - **Spacing.** A key is read from Vault at most once per [`SPACING`], whoever asks
//!   (verify of an unknown version, sign showing a newer version, the background tick):
//!   in between, the last read's outcome stands, and a refresh asked for meanwhile is
//!   deferred to the end of the second, one per key.
//! - **Absent keys.** A 404 is remembered for [`SPACING`] per name (at most
//!   [`ABSENT_CAPACITY`] names), and loads of keys the cache lacks are limited to
//!   `AEGIS_KEY_LOOKUP_RATE` per second in all, so ever-new names cost bounded memory and
//!   bounded Vault calls.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use governor::{clock::Clock as _, DefaultDirectRateLimiter, Quota, RateLimiter};
use tracing::{error, info, warn};

use crate::config::{KeysetBounds, StaleKeyset};
use crate::vault::VaultError;

/// The least time between two Vault reads of one key.
pub const SPACING: Duration = Duration::from_secs(1);
/// Key names remembered as absent at once (each for [`SPACING`]).
pub const ABSENT_CAPACITY: u64 = 10_000;
/// Keys whose freshness is tracked (as many as the cache holds).
const TRACKED_CAPACITY: u64 = 10_000;

/// What is known of one cached key's reads from Vault.
#[derive(Debug)]
struct KeyState {
    /// The last successful read (wall clock: it survives in the snapshot).
    refreshed_at: SystemTime,
    /// When the last read started, and its error if it failed.
    last_attempt: Option<(Instant, Option<VaultError>)>,
    /// Since when reads fail (the first failure after a success).
    failing_since: Option<SystemTime>,
    /// A deferred refresh is scheduled.
    pending: bool,
    /// The newest version a sign answer from Vault showed (evidence that it exists).
    signed_version: u32,
    /// The keyset's staleness was logged (once per stale period).
    stale_logged: bool,
}

impl KeyState {
    fn fresh(at: SystemTime) -> Self {
        KeyState {
            refreshed_at: at,
            last_attempt: None,
            failing_since: None,
            pending: false,
            signed_version: 0,
            stale_logged: false,
        }
    }
}

/// Why a key's keyset may not be used: it is older than the maximum age.
#[derive(Debug, Clone)]
pub struct Stale {
    pub key: String,
    pub age: Duration,
    pub max_age: Duration,
    pub refreshed_at: SystemTime,
    /// Since when, and why, reading the key from Vault fails (none: not tried since).
    pub failing: Option<(SystemTime, String)>,
}

impl fmt::Display for Stale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the cached keyset of key {:?} is {} s old (last read from Vault at {}), past AEGIS_MAX_KEYSET_AGE ({} s): ",
            self.key,
            self.age.as_secs(),
            humantime::format_rfc3339_seconds(self.refreshed_at),
            self.max_age.as_secs(),
        )?;
        match &self.failing {
            Some((since, why)) => write!(
                f,
                "reading it from Vault fails since {}: {why}",
                humantime::format_rfc3339_seconds(*since)
            ),
            None => f.write_str("no read from Vault has succeeded since"),
        }
    }
}

/// The bounds of one [`super::KeyCache`].
pub struct Bounds {
    limits: KeysetBounds,
    keys: moka::sync::Cache<String, Arc<Mutex<KeyState>>>,
    absent: moka::sync::Cache<String, VaultError>,
    lookups: DefaultDirectRateLimiter,
}

impl Bounds {
    pub fn new(limits: KeysetBounds) -> Self {
        Bounds {
            limits,
            keys: moka::sync::Cache::builder()
                .max_capacity(TRACKED_CAPACITY)
                .build(),
            absent: moka::sync::Cache::builder()
                .max_capacity(ABSENT_CAPACITY)
                .time_to_live(SPACING)
                .build(),
            lookups: RateLimiter::direct(Quota::per_second(limits.lookup_rate)),
        }
    }

    pub fn limits(&self) -> KeysetBounds {
        self.limits
    }

    fn with<T>(&self, name: &str, f: impl FnOnce(&mut KeyState) -> T) -> Option<T> {
        let state = self.keys.get(name)?;
        let mut state = state.lock().expect("key state lock");
        Some(f(&mut state))
    }

    /// A key entered the cache from a Vault read that started at `started`.
    pub fn loaded(&self, name: &str, started: Instant) {
        let mut state = KeyState::fresh(SystemTime::now());
        state.last_attempt = Some((started, None));
        self.keys
            .insert(name.to_string(), Arc::new(Mutex::new(state)));
    }

    /// Tracks a cached key last read at `refreshed_at` (a snapshot's time for a restored
    /// key), unless it is tracked already.
    pub fn track(&self, name: &str, refreshed_at: SystemTime) {
        self.keys
            .entry_by_ref(name)
            .or_insert_with(|| Arc::new(Mutex::new(KeyState::fresh(refreshed_at))));
    }

    /// The key left the cache (Vault no longer has it).
    pub fn forget(&self, name: &str) {
        self.keys.invalidate(name);
    }

    /// The outcome of a read of `name` that started less than [`SPACING`] ago, if any:
    /// it stands for every refresh asked for until then.
    pub fn recent(&self, name: &str) -> Option<Result<(), VaultError>> {
        self.with(name, |s| match &s.last_attempt {
            Some((at, outcome)) if at.elapsed() < SPACING => {
                Some(outcome.clone().map_or(Ok(()), Err))
            }
            _ => None,
        })
        .flatten()
    }

    /// Records a read of a cached key that started at `started`; logs when reading starts
    /// or stops failing (once per change).
    pub fn record(&self, name: &str, started: Instant, outcome: Result<(), &VaultError>) {
        self.with(name, |s| {
            s.last_attempt = Some((started, outcome.err().cloned()));
            match (outcome, s.failing_since) {
                (Ok(()), failing) => {
                    if let Some(since) = failing {
                        let failed_for = since.elapsed().unwrap_or_default().as_secs();
                        info!(key = name, failed_for_secs = failed_for, "keyset refresh recovered; the key is read from Vault again");
                    }
                    s.refreshed_at = SystemTime::now();
                    s.failing_since = None;
                    s.stale_logged = false;
                }
                (Err(e), None) => {
                    warn!(key = name, error = %e, "keyset refresh failing; verifying from the cached keyset until it is older than AEGIS_MAX_KEYSET_AGE");
                    s.failing_since = Some(SystemTime::now());
                }
                (Err(_), Some(_)) => {}
            }
        });
    }

    /// Reserves the deferred refresh of `name`: when it may run, or `None` when one is
    /// already scheduled (or the key is not cached).
    pub fn schedule(&self, name: &str) -> Option<Instant> {
        self.with(name, |s| {
            if s.pending {
                return None;
            }
            s.pending = true;
            Some(
                s.last_attempt
                    .as_ref()
                    .map_or_else(Instant::now, |(at, _)| *at + SPACING),
            )
        })
        .flatten()
    }

    /// When the next read of `name` may start, if not now.
    pub fn next_read(&self, name: &str) -> Option<Instant> {
        self.with(name, |s| {
            s.last_attempt.as_ref().map(|(at, _)| *at + SPACING)
        })
        .flatten()
        .filter(|at| *at > Instant::now())
    }

    /// A sign answer from Vault used `version` of `name`.
    pub fn signed_with(&self, name: &str, version: u32) {
        self.with(name, |s| s.signed_version = s.signed_version.max(version));
    }

    /// Whether Vault has shown that `version` of `name` exists (a sign answer used it).
    pub fn known_to_exist(&self, name: &str, version: u32) -> bool {
        self.with(name, |s| version <= s.signed_version) == Some(true)
    }

    /// The deferred refresh of `name` ran.
    pub fn unschedule(&self, name: &str) {
        self.with(name, |s| s.pending = false);
    }

    /// Time since the key's last successful read.
    pub fn age(&self, name: &str) -> Option<Duration> {
        self.with(name, |s| s.refreshed_at.elapsed().unwrap_or_default())
    }

    /// Why `name`'s keyset is stale, if it is (whatever `AEGIS_STALE_KEYSET` says).
    pub fn stale(&self, name: &str) -> Option<Stale> {
        self.with(name, |s| {
            let age = s.refreshed_at.elapsed().unwrap_or_default();
            (age > self.limits.max_age).then(|| Stale {
                key: name.to_string(),
                age,
                max_age: self.limits.max_age,
                refreshed_at: s.refreshed_at,
                failing: s.failing_since.map(|since| {
                    let why = match &s.last_attempt {
                        Some((_, Some(e))) => e.to_string(),
                        _ => "unknown".to_string(),
                    };
                    (since, why)
                }),
            })
        })
        .flatten()
    }

    /// Whether local verification may use `name`'s keyset now.
    pub fn check(&self, name: &str) -> Result<(), Stale> {
        match (self.limits.stale, self.stale(name)) {
            (StaleKeyset::Refuse, Some(stale)) => Err(stale),
            _ => Ok(()),
        }
    }

    /// Logs, once per stale period, that `name`'s keyset went stale and what that means.
    pub fn log_if_newly_stale(&self, name: &str) {
        let Some(stale) = self.stale(name) else {
            return;
        };
        let first = self.with(name, |s| !std::mem::replace(&mut s.stale_logged, true));
        if first == Some(true) {
            error!(key = name, stale_keyset = self.limits.stale.as_str(), reason = %stale, "keyset is stale: local verification of this key is {}", match self.limits.stale {
                StaleKeyset::Refuse => "refused (503) until a refresh succeeds",
                StaleKeyset::Serve => "still served (AEGIS_STALE_KEYSET=serve)",
            });
        }
    }

    /// Vault's 404 for `name`, if it answered one less than [`SPACING`] ago.
    pub fn known_absent(&self, name: &str) -> Option<VaultError> {
        self.absent.get(name)
    }

    /// Remembers a load's 404 for [`SPACING`].
    pub fn remember_if_absent(&self, name: &str, e: &VaultError) {
        if e.is_not_found() {
            self.absent.insert(name.to_string(), e.clone());
        }
    }

    /// Takes one of the `AEGIS_KEY_LOOKUP_RATE` lookups of this second, or refuses with
    /// a 429 saying when to come back.
    pub fn admit_lookup(&self, name: &str) -> Result<(), VaultError> {
        self.lookups.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(self.lookups.clock().now());
            VaultError::Status {
                status: 429,
                errors: vec![format!(
                    "key {name:?} is not cached and more than AEGIS_KEY_LOOKUP_RATE ({}/s) keys not in the cache were asked for: retry in {} ms",
                    self.limits.lookup_rate,
                    wait.as_millis().max(1)
                )],
            }
        })
    }
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds::new(KeysetBounds::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn down() -> VaultError {
        VaultError::Status {
            status: 403,
            errors: vec!["permission denied".into()],
        }
    }

    #[test]
    fn reads_are_spaced_and_their_outcome_stands() {
        let b = Bounds::default();
        assert!(b.recent("k").is_none(), "untracked key");
        b.loaded("k", Instant::now());
        assert!(matches!(b.recent("k"), Some(Ok(()))));
        b.record("k", Instant::now(), Err(&down()));
        assert!(matches!(
            b.recent("k"),
            Some(Err(VaultError::Status { status: 403, .. }))
        ));
        b.record("k", Instant::now() - SPACING, Err(&down()));
        assert!(b.recent("k").is_none(), "a second later a read may go");
    }

    #[test]
    fn one_deferred_refresh_per_key() {
        let b = Bounds::default();
        let started = Instant::now();
        b.loaded("k", started);
        assert_eq!(b.schedule("k"), Some(started + SPACING));
        assert_eq!(b.schedule("k"), None);
        b.unschedule("k");
        assert!(b.schedule("k").is_some());
        assert_eq!(b.schedule("absent"), None);
    }

    #[test]
    fn versions_vault_signed_with_are_known_to_exist() {
        let b = Bounds::default();
        let started = Instant::now();
        b.loaded("k", started);
        assert_eq!(b.next_read("k"), Some(started + SPACING));
        assert!(!b.known_to_exist("k", 2));
        b.signed_with("k", 3);
        b.signed_with("k", 2);
        assert!(b.known_to_exist("k", 2) && b.known_to_exist("k", 3));
        assert!(!b.known_to_exist("k", 4));
        b.record("k", started - SPACING, Ok(()));
        assert_eq!(b.next_read("k"), None, "the second is over");
    }

    #[test]
    fn age_and_staleness() {
        let limits = KeysetBounds {
            max_age: Duration::from_secs(60),
            ..KeysetBounds::default()
        };
        let b = Bounds::new(limits);
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        b.track("k", hour_ago);
        b.track("k", SystemTime::now()); // tracking again does not rejuvenate it
        assert!(b.age("k").unwrap() >= Duration::from_secs(3600));
        let stale = b.check("k").unwrap_err();
        assert!(
            stale
                .to_string()
                .contains("no read from Vault has succeeded since"),
            "{stale}"
        );
        b.record("k", Instant::now(), Err(&down()));
        let stale = b.check("k").unwrap_err().to_string();
        assert!(
            stale.starts_with("the cached keyset of key \"k\" is 3600 s old"),
            "{stale}"
        );
        assert!(
            stale.contains("past AEGIS_MAX_KEYSET_AGE (60 s): reading it from Vault fails since "),
            "{stale}"
        );
        assert!(
            stale.ends_with("Vault answered 403: permission denied"),
            "{stale}"
        );
        b.record("k", Instant::now(), Ok(()));
        assert!(b.check("k").is_ok());
        assert!(b.age("k").unwrap() < Duration::from_secs(5));

        let serve = Bounds::new(KeysetBounds {
            stale: StaleKeyset::Serve,
            ..limits
        });
        serve.track("k", hour_ago);
        assert!(serve.check("k").is_ok());
        assert!(serve.stale("k").is_some());
    }

    #[test]
    fn lookups_of_uncached_keys_are_limited() {
        let b = Bounds::new(KeysetBounds {
            lookup_rate: NonZeroU32::new(2).unwrap(),
            ..KeysetBounds::default()
        });
        assert!(b.admit_lookup("a").is_ok());
        assert!(b.admit_lookup("b").is_ok());
        let refused = b.admit_lookup("c").unwrap_err();
        assert!(matches!(&refused, VaultError::Status { status: 429, .. }));
        assert!(
            refused.to_string().contains("AEGIS_KEY_LOOKUP_RATE (2/s)"),
            "{refused}"
        );
        let nf = VaultError::Status {
            status: 404,
            errors: vec![],
        };
        b.remember_if_absent("a", &nf);
        b.remember_if_absent("b", &down());
        assert!(b.known_absent("a").is_some_and(|e| e.is_not_found()));
        assert!(b.known_absent("b").is_none());
    }
}
