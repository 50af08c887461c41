//! How stale a cached keyset may get, and how often keys the cache lacks may be looked up.
//!
//! | variable | file (`[keyset]`) | meaning | default |
//! |---|---|---|---|
//! | `AEGIS_MAX_KEYSET_AGE` | `max_age` | time since a key's last successful refresh from Vault after which its keyset is stale (must exceed `AEGIS_REFRESH_INTERVAL`) | `1h` |
//! | `AEGIS_STALE_KEYSET` | `stale` | `refuse`: local verification of a stale key answers 503 saying why; `serve`: keep verifying from it | `refuse` |
//! | `AEGIS_KEYSET_WATCH_INTERVAL` | `watch_interval` | how often the retention records' metadata is listed (one call for every key) to see a rotation, retirement or revocation made by Aegis; `off` leaves changes to the full refresh (`AEGIS_REFRESH_INTERVAL`) and to sign answers (must be shorter than `AEGIS_REFRESH_INTERVAL`) | `8s` (`off` when unset and `AEGIS_REFRESH_INTERVAL` is 8 s or less) |
//! | `AEGIS_KEY_LOOKUP_RATE` | `lookup_rate` | Vault reads per second of keys not in the cache (a key seen once is cached; a missing one is remembered for a second), beyond which such requests get 429 | `10` |
//!
//! See docs/keyset-freshness.md for why these defaults.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::Deserialize;

use super::{parse_duration, Env};

/// The bounds on the keyset cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeysetBounds {
    /// `AEGIS_MAX_KEYSET_AGE`.
    pub max_age: Duration,
    /// `AEGIS_STALE_KEYSET`.
    pub stale: StaleKeyset,
    /// `AEGIS_KEY_LOOKUP_RATE`, per second (also the burst).
    pub lookup_rate: NonZeroU32,
    /// `AEGIS_KEYSET_WATCH_INTERVAL`; `None`: off.
    pub watch_interval: Option<Duration>,
}

impl Default for KeysetBounds {
    fn default() -> Self {
        KeysetBounds {
            max_age: Duration::from_secs(3600),
            stale: StaleKeyset::Refuse,
            lookup_rate: NonZeroU32::new(10).expect("non-zero"),
            watch_interval: Some(Duration::from_secs(8)),
        }
    }
}

/// What local verification does with a key whose keyset is older than the maximum age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleKeyset {
    /// Answer 503 with the reason (fail closed: a revocation cannot go unseen longer).
    Refuse,
    /// Keep verifying from the cached keyset (ride out a long Vault outage).
    Serve,
}

impl StaleKeyset {
    pub fn as_str(self) -> &'static str {
        match self {
            StaleKeyset::Refuse => "refuse",
            StaleKeyset::Serve => "serve",
        }
    }
}

/// The `[keyset]` table of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileKeyset {
    max_age: Option<String>,
    stale: Option<String>,
    lookup_rate: Option<u32>,
    watch_interval: Option<String>,
}

/// Reads the settings (environment over file), pushing every problem to `errors`.
pub(super) fn keyset_bounds(
    env: &dyn Env,
    file: FileKeyset,
    refresh_interval: Duration,
    errors: &mut Vec<String>,
) -> KeysetBounds {
    let defaults = KeysetBounds::default();
    let max_age = match env.var("AEGIS_MAX_KEYSET_AGE").or(file.max_age) {
        None => defaults.max_age,
        Some(v) => match parse_duration(&v) {
            Ok(d) if d > refresh_interval => d,
            Ok(d) => {
                errors.push(format!(
                    "AEGIS_MAX_KEYSET_AGE ({d:?}) must be longer than AEGIS_REFRESH_INTERVAL ({refresh_interval:?}), or every key goes stale between refreshes"
                ));
                defaults.max_age
            }
            Err(e) => {
                errors.push(format!("AEGIS_MAX_KEYSET_AGE: {e} (got {v:?})"));
                defaults.max_age
            }
        },
    };
    let stale = match env.var("AEGIS_STALE_KEYSET").or(file.stale).as_deref() {
        None | Some("refuse") => StaleKeyset::Refuse,
        Some("serve") => StaleKeyset::Serve,
        Some(other) => {
            errors.push(format!(
                "AEGIS_STALE_KEYSET: expected refuse or serve, got {other:?}"
            ));
            defaults.stale
        }
    };
    let lookup_rate = match env.var("AEGIS_KEY_LOOKUP_RATE") {
        Some(v) => v.trim().parse::<u32>().ok(),
        None => file.lookup_rate.or(Some(defaults.lookup_rate.get())),
    };
    let lookup_rate = lookup_rate.and_then(NonZeroU32::new).unwrap_or_else(|| {
        errors
            .push("AEGIS_KEY_LOOKUP_RATE: expected a positive integer (lookups per second)".into());
        defaults.lookup_rate
    });
    let watch_interval = watch_interval(env, file.watch_interval, refresh_interval, errors);
    KeysetBounds {
        max_age,
        stale,
        lookup_rate,
        watch_interval,
    }
}

/// `AEGIS_KEYSET_WATCH_INTERVAL`: a duration shorter than the full refresh, or `off`.
fn watch_interval(
    env: &dyn Env,
    file: Option<String>,
    refresh_interval: Duration,
    errors: &mut Vec<String>,
) -> Option<Duration> {
    // Unset with a full refresh as frequent as the watch: the watch would add nothing.
    let default = KeysetBounds::default()
        .watch_interval
        .filter(|d| *d < refresh_interval);
    let Some(v) = env.var("AEGIS_KEYSET_WATCH_INTERVAL").or(file) else {
        return default;
    };
    if v.trim() == "off" {
        return None;
    }
    match parse_duration(&v) {
        Ok(d) if !d.is_zero() && d < refresh_interval => Some(d),
        Ok(d) => {
            errors.push(format!(
                "AEGIS_KEYSET_WATCH_INTERVAL ({d:?}) must be above zero and shorter than AEGIS_REFRESH_INTERVAL ({refresh_interval:?}), or `off`"
            ));
            default
        }
        Err(e) => {
            errors.push(format!(
                "AEGIS_KEYSET_WATCH_INTERVAL: {e} (got {v:?}; a duration such as 8s, or off)"
            ));
            default
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(env: &[(&str, &str)]) -> (KeysetBounds, Vec<String>) {
        struct E<'a>(&'a [(&'a str, &'a str)]);
        impl Env for E<'_> {
            fn var(&self, name: &str) -> Option<String> {
                self.0
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        }
        let mut errors = Vec::new();
        let b = keyset_bounds(
            &E(env),
            FileKeyset::default(),
            Duration::from_secs(30),
            &mut errors,
        );
        (b, errors)
    }

    #[test]
    fn defaults_and_values() {
        assert_eq!(read(&[]), (KeysetBounds::default(), vec![]));
        let (b, errors) = read(&[
            ("AEGIS_MAX_KEYSET_AGE", "10m"),
            ("AEGIS_STALE_KEYSET", "serve"),
            ("AEGIS_KEY_LOOKUP_RATE", "3"),
            ("AEGIS_KEYSET_WATCH_INTERVAL", "2s"),
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(b.max_age, Duration::from_secs(600));
        assert_eq!(b.stale, StaleKeyset::Serve);
        assert_eq!(b.lookup_rate.get(), 3);
        assert_eq!(b.watch_interval, Some(Duration::from_secs(2)));
        let (b, errors) = read(&[("AEGIS_KEYSET_WATCH_INTERVAL", "off")]);
        assert_eq!((b.watch_interval, errors.len()), (None, 0));
    }

    #[test]
    fn every_problem_is_reported() {
        let (_, errors) = read(&[
            ("AEGIS_MAX_KEYSET_AGE", "20s"),
            ("AEGIS_STALE_KEYSET", "maybe"),
            ("AEGIS_KEY_LOOKUP_RATE", "0"),
            ("AEGIS_KEYSET_WATCH_INTERVAL", "30s"),
        ]);
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].contains("longer than AEGIS_REFRESH_INTERVAL"));
        assert!(errors[1].contains("refuse or serve"));
        assert!(errors[2].contains("AEGIS_KEY_LOOKUP_RATE"));
        assert!(errors[3].contains("shorter than AEGIS_REFRESH_INTERVAL"));
        let (_, errors) = read(&[("AEGIS_MAX_KEYSET_AGE", "soon")]);
        assert!(
            errors[0].starts_with("AEGIS_MAX_KEYSET_AGE: "),
            "{errors:?}"
        );
    }
}
