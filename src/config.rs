//! The one typed [`Config`], read from an optional TOML file and then the environment.
//!
//! This is the only module that reads environment variables. Vault settings use Vault's
//! own variable names (`VAULT_ADDR`, `VAULT_TOKEN`, ...), Aegis's own start with `AEGIS_`.
//! The environment wins over the file. Every problem is collected and reported at once
//! ([`ConfigErrors`]), and no secret value is ever echoed in an error.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A secret string (a Vault token): never printed by `Debug` or `Display`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself, for the one place that must send it (the Vault client).
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// Where the sidecar's Vault token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `VAULT_TOKEN` (or `vault.token` in the file).
    Value(Secret),
    /// `AEGIS_VAULT_TOKEN_FILE`: read at start and whenever a fresh token is needed.
    File(PathBuf),
}

/// Connection to Vault.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// `VAULT_ADDR`.
    pub addr: String,
    pub token: TokenSource,
    /// Bound on one Vault request (connect + answer), `AEGIS_VAULT_TIMEOUT`, default 5 s.
    pub timeout: Duration,
    /// TCP connect bound, `AEGIS_VAULT_CONNECT_TIMEOUT`, default 2 s.
    pub connect_timeout: Duration,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, text otherwise.
    Auto,
    Json,
    Text,
}

/// Everything `aegis serve` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// `AEGIS_LISTEN_ADDR`, default `127.0.0.1:8201`.
    pub listen_addr: SocketAddr,
    /// `AEGIS_TRANSIT_MOUNT`, default `transit`.
    pub transit_mount: String,
    /// `AEGIS_KEYS`: when set, the only keys served; others get 403 before Vault is asked.
    pub keys: Option<BTreeSet<String>>,
    /// `AEGIS_MAX_BODY_BYTES`, default 32 MiB (Vault's own default).
    pub max_body_bytes: usize,
    /// `AEGIS_MAX_BATCH_ITEMS`, default 10 000.
    pub max_batch_items: usize,
    /// `AEGIS_REFRESH_INTERVAL`, default 30 s, jittered by up to 10 %.
    pub refresh_interval: Duration,
    /// `AEGIS_LOG_FORMAT`: auto, json or text.
    pub log_format: LogFormat,
    /// `RUST_LOG`: the log filter, default `info`.
    pub log_filter: Option<String>,
    pub vault: VaultConfig,
}

/// Every problem found in the configuration.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

/// The TOML file's shape. Every field optional; names match the env variables' meaning.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen_addr: Option<String>,
    transit_mount: Option<String>,
    keys: Option<Vec<String>>,
    max_body_bytes: Option<usize>,
    max_batch_items: Option<usize>,
    refresh_interval: Option<String>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    vault: FileVault,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileVault {
    addr: Option<String>,
    token: Option<Secret>,
    token_file: Option<PathBuf>,
    timeout: Option<String>,
    connect_timeout: Option<String>,
}

/// A source of environment variables: the process environment in production, a map in tests.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

/// Values that take precedence over another source (`aegis dev` layers its own settings
/// over the process environment).
pub struct Layered<'a> {
    pub over: Vec<(String, String)>,
    pub under: &'a dyn Env,
}

impl Env for Layered<'_> {
    fn var(&self, name: &str) -> Option<String> {
        self.over
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| self.under.var(name))
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

/// Parses a duration as `30s`, `1m30s`, `250ms` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

impl Config {
    /// Reads `file` (if any), then applies the environment. All problems are reported together.
    pub fn load(file: Option<&Path>, env: &dyn Env) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let fc = match file {
            None => FileConfig::default(),
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => toml::from_str::<FileConfig>(&text).unwrap_or_else(|e| {
                    errors.push(format!("{}: {}", path.display(), e.message()));
                    FileConfig::default()
                }),
                Err(e) => {
                    errors.push(format!("cannot read config file {}: {e}", path.display()));
                    FileConfig::default()
                }
            },
        };

        // A setting: env value if present, else file value, else default; named for errors.
        let pick = |env_name: &str, file_value: Option<String>| env.var(env_name).or(file_value);

        let listen_addr = pick("AEGIS_LISTEN_ADDR", fc.listen_addr)
            .unwrap_or_else(|| "127.0.0.1:8201".into())
            .parse::<SocketAddr>()
            .map_err(|e| errors.push(format!("AEGIS_LISTEN_ADDR / listen_addr: {e}")))
            .unwrap_or_else(|()| SocketAddr::from(([127, 0, 0, 1], 8201)));

        let transit_mount = pick("AEGIS_TRANSIT_MOUNT", fc.transit_mount)
            .unwrap_or_else(|| "transit".into())
            .trim_matches('/')
            .to_string();
        if transit_mount.is_empty() || transit_mount.contains(char::is_whitespace) {
            errors
                .push("AEGIS_TRANSIT_MOUNT / transit_mount: must be a non-empty mount path".into());
        }

        let keys = match env.var("AEGIS_KEYS") {
            Some(list) => Some(
                list.split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(String::from)
                    .collect::<BTreeSet<_>>(),
            ),
            None => fc.keys.map(|v| v.into_iter().collect()),
        };
        if keys.as_ref().is_some_and(BTreeSet::is_empty) {
            errors.push("AEGIS_KEYS / keys: the allowlist is set but names no key".into());
        }

        let mut number = |name: &str, file: Option<usize>, default: usize| -> usize {
            match env.var(name) {
                Some(v) => v
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| {
                        errors.push(format!("{name}: expected a positive integer, got {v:?}"));
                        default
                    }),
                None => file.unwrap_or(default),
            }
        };
        let max_body_bytes = number("AEGIS_MAX_BODY_BYTES", fc.max_body_bytes, 32 * 1024 * 1024);
        let max_batch_items = number("AEGIS_MAX_BATCH_ITEMS", fc.max_batch_items, 10_000);

        let mut duration = |name: &str, file: Option<String>, default: Duration| -> Duration {
            match pick(name, file) {
                None => default,
                Some(v) => match parse_duration(&v) {
                    Ok(d) if !d.is_zero() => d,
                    Ok(_) => {
                        errors.push(format!("{name}: must be greater than zero"));
                        default
                    }
                    Err(e) => {
                        errors.push(format!("{name}: {e} (got {v:?})"));
                        default
                    }
                },
            }
        };
        let refresh_interval = duration(
            "AEGIS_REFRESH_INTERVAL",
            fc.refresh_interval,
            Duration::from_secs(30),
        );
        let timeout = duration(
            "AEGIS_VAULT_TIMEOUT",
            fc.vault.timeout,
            Duration::from_secs(5),
        );
        let connect_timeout = duration(
            "AEGIS_VAULT_CONNECT_TIMEOUT",
            fc.vault.connect_timeout,
            Duration::from_secs(2),
        );

        let log_format = match env.var("AEGIS_LOG_FORMAT").as_deref() {
            None => fc.log_format.unwrap_or(LogFormat::Auto),
            Some("auto") => LogFormat::Auto,
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(other) => {
                errors.push(format!(
                    "AEGIS_LOG_FORMAT: expected auto, json or text, got {other:?}"
                ));
                LogFormat::Auto
            }
        };

        let addr = pick("VAULT_ADDR", fc.vault.addr).unwrap_or_default();
        if addr.is_empty() {
            errors
                .push("VAULT_ADDR / vault.addr: required (e.g. https://vault.example:8200)".into());
        } else if !(addr.starts_with("http://") || addr.starts_with("https://")) {
            errors.push(format!(
                "VAULT_ADDR / vault.addr: must start with http:// or https://, got {addr:?}"
            ));
        }
        let token = match (
            env.var("VAULT_TOKEN").map(Secret::new).or(fc.vault.token),
            pick(
                "AEGIS_VAULT_TOKEN_FILE",
                fc.vault.token_file.map(|p| p.display().to_string()),
            ),
        ) {
            (Some(_), Some(_)) => {
                errors
                    .push("VAULT_TOKEN and AEGIS_VAULT_TOKEN_FILE are both set: choose one".into());
                TokenSource::Value(Secret::default())
            }
            (Some(t), None) if !t.is_empty() => TokenSource::Value(t),
            (None, Some(path)) => TokenSource::File(PathBuf::from(path)),
            _ => {
                errors
                    .push("no Vault credential: set VAULT_TOKEN or AEGIS_VAULT_TOKEN_FILE".into());
                TokenSource::Value(Secret::default())
            }
        };

        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Config {
            listen_addr,
            transit_mount,
            keys,
            max_body_bytes,
            max_batch_items,
            refresh_interval,
            log_format,
            log_filter: env.var("RUST_LOG"),
            vault: VaultConfig {
                addr: addr.trim_end_matches('/').to_string(),
                token,
                timeout,
                connect_timeout,
            },
        })
    }

    /// Whether `key` may be served (the allowlist, when one is set).
    pub fn key_allowed(&self, key: &str) -> bool {
        self.keys.as_ref().is_none_or(|k| k.contains(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_with_only_vault_settings() {
        let c = Config::load(
            None,
            &[
                ("VAULT_ADDR", "http://127.0.0.1:8200/"),
                ("VAULT_TOKEN", "s.abc"),
            ],
        )
        .unwrap();
        assert_eq!(c.listen_addr.to_string(), "127.0.0.1:8201");
        assert_eq!(c.transit_mount, "transit");
        assert_eq!(c.keys, None);
        assert_eq!(c.max_body_bytes, 32 * 1024 * 1024);
        assert_eq!(c.refresh_interval, Duration::from_secs(30));
        assert_eq!(c.vault.addr, "http://127.0.0.1:8200");
        assert_eq!(c.vault.token, TokenSource::Value(Secret::new("s.abc")));
        assert!(c.key_allowed("anything"));
    }

    #[test]
    fn env_overrides_file_and_allowlist_parses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aegis.toml");
        std::fs::write(
            &path,
            "listen_addr = \"127.0.0.1:9000\"\ntransit_mount = \"ml-transit\"\nkeys = [\"a\"]\n[vault]\naddr = \"http://file:8200\"\ntoken_file = \"/var/run/token\"\ntimeout = \"2s\"\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&path),
            &[
                ("AEGIS_LISTEN_ADDR", "127.0.0.1:9100"),
                ("AEGIS_KEYS", "k1, k2,,"),
            ],
        )
        .unwrap();
        assert_eq!(c.listen_addr.port(), 9100);
        assert_eq!(c.transit_mount, "ml-transit");
        assert_eq!(
            c.keys.as_ref().unwrap().iter().collect::<Vec<_>>(),
            ["k1", "k2"]
        );
        assert!(!c.key_allowed("a"));
        assert_eq!(c.vault.addr, "http://file:8200");
        assert_eq!(c.vault.token, TokenSource::File("/var/run/token".into()));
        assert_eq!(c.vault.timeout, Duration::from_secs(2));
    }

    #[test]
    fn every_problem_is_reported_at_once_without_secrets() {
        let err = Config::load(
            None,
            &[
                ("AEGIS_LISTEN_ADDR", "nope"),
                ("AEGIS_MAX_BODY_BYTES", "-1"),
                ("AEGIS_REFRESH_INTERVAL", "soon"),
                ("VAULT_ADDR", "vault:8200"),
                ("VAULT_TOKEN", "hvs.supersecret"),
                ("AEGIS_VAULT_TOKEN_FILE", "/t"),
            ],
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 5, "{err}");
        let text = err.to_string();
        assert!(!text.contains("supersecret"));
        for needle in [
            "AEGIS_LISTEN_ADDR",
            "AEGIS_MAX_BODY_BYTES",
            "AEGIS_REFRESH_INTERVAL",
            "VAULT_ADDR",
            "both set",
        ] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
    }

    #[test]
    fn missing_credential_and_unknown_file_keys_are_errors() {
        let err = Config::load(None, &[("VAULT_ADDR", "http://x")]).unwrap_err();
        assert!(err.to_string().contains("no Vault credential"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "listen = 1\n").unwrap();
        let err = Config::load(
            Some(&path),
            &[("VAULT_ADDR", "http://x"), ("VAULT_TOKEN", "t")],
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn secret_debug_is_redacted() {
        assert_eq!(format!("{:?}", Secret::new("hvs.x")), "Secret(<redacted>)");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("x").is_err());
    }
}
