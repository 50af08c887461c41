//! Where audit events go, and how hard the sinks try.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use url::{Host, Url};

/// The audit sinks. Filled by `config` from the environment; with neither `file` nor
/// `http_url` set, auditing is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// `AEGIS_AUDIT_FILE`: an append-only local file, one JSON event per line, created with
    /// mode 0600, fsynced before an event counts as written.
    pub file: Option<PathBuf>,
    /// `AEGIS_AUDIT_URL`: an `http://` or `https://` endpoint each event is POSTed to, as a
    /// JSON body. Needs `spool_dir`. Must not carry credentials (`user:pass@`); use
    /// `http_bearer_token_file`.
    pub http_url: Option<String>,
    /// `AEGIS_AUDIT_SPOOL_DIR`: where events wait (one file each, mode 0600, directory 0700)
    /// until the endpoint accepts them. Survives restarts: what one process could not
    /// deliver, the next one delivers.
    pub spool_dir: Option<PathBuf>,
    /// `AEGIS_AUDIT_TOKEN_FILE`: a file holding a bearer token for the endpoint, re-read
    /// before every request (so a rotated token is picked up) and sent as
    /// `Authorization: Bearer <token>`.
    pub http_bearer_token_file: Option<PathBuf>,
    /// Timeout of each HTTP request (connect included). Default 10 s.
    pub http_timeout: Duration,
    /// First wait after a failed delivery; it doubles, with jitter, up to `retry_max`.
    /// Default 200 ms.
    pub retry_initial: Duration,
    /// Longest wait between delivery attempts. Default 30 s.
    pub retry_max: Duration,
    /// `AEGIS_AUDIT_QUEUE_SIZE`: events queued for the background writer, including the
    /// slots reserved by signs in flight at Vault. Default 16384 (at least
    /// `AEGIS_MAX_BATCH_ITEMS`, so the largest batch fits).
    pub queue_capacity: usize,
    /// `AEGIS_AUDIT_QUEUE_TIMEOUT`: how long a sign waits for room for its events before
    /// it is refused (or, failing open, made unaudited), and how long
    /// [`Auditor::record`](crate::audit::Auditor::record) waits before it drops a verify_refused or
    /// refused event (counted, logged). Lifecycle events always wait. Default 100 ms.
    pub enqueue_wait: Duration,
    /// `AEGIS_AUDIT_FAIL_OPEN`: when the queue has no room for a sign's events within
    /// `enqueue_wait`, sign anyway and count the events as dropped, instead of refusing the
    /// sign with a 503. Default false (never a signature without its event).
    pub fail_open: bool,
    /// `AEGIS_AUDIT_FLUSH_TIMEOUT`: how long a command (or shutdown) waits for the HTTP sink
    /// before exiting; what is left stays spooled for the next process. Default 10 s.
    pub flush_timeout: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            file: None,
            http_url: None,
            spool_dir: None,
            http_bearer_token_file: None,
            http_timeout: Duration::from_secs(10),
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
            queue_capacity: 16384,
            enqueue_wait: Duration::from_millis(100),
            fail_open: false,
            flush_timeout: Duration::from_secs(10),
        }
    }
}

impl AuditConfig {
    /// Whether any sink is configured.
    pub fn is_enabled(&self) -> bool {
        self.file.is_some() || self.http_url.is_some()
    }

    /// Every problem at once, each naming its setting; values are never echoed (a URL may
    /// carry secrets). Empty when the configuration is usable.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match &self.http_url {
            Some(url) => self.check_endpoint(url, &mut problems),
            None => {
                if self.spool_dir.is_some() {
                    problems.push(
                        "AEGIS_AUDIT_SPOOL_DIR: set without AEGIS_AUDIT_URL; nothing would deliver the spooled events".into(),
                    );
                }
                if self.http_bearer_token_file.is_some() {
                    problems.push("AEGIS_AUDIT_TOKEN_FILE: set without AEGIS_AUDIT_URL".into());
                }
            }
        }
        if let (Some(file), Some(spool)) = (&self.file, &self.spool_dir) {
            if file.starts_with(spool) {
                problems.push("AEGIS_AUDIT_FILE: must not be inside AEGIS_AUDIT_SPOOL_DIR".into());
            }
        }
        self.check_limits(&mut problems);
        problems
    }

    fn check_endpoint(&self, url: &str, problems: &mut Vec<String>) {
        if self.spool_dir.is_none() {
            problems.push(
                "AEGIS_AUDIT_SPOOL_DIR: required with AEGIS_AUDIT_URL (events wait there until delivered)".into(),
            );
        }
        let url = match Url::parse(url) {
            Ok(url) => url,
            Err(e) => return problems.push(format!("AEGIS_AUDIT_URL: not a valid URL: {e}")),
        };
        if !matches!(url.scheme(), "http" | "https") {
            problems.push(format!(
                "AEGIS_AUDIT_URL: must be an http:// or https:// URL, not {}://",
                url.scheme()
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            problems.push(
                "AEGIS_AUDIT_URL: must not carry credentials; use AEGIS_AUDIT_TOKEN_FILE".into(),
            );
        }
        if self.http_bearer_token_file.is_some() && url.scheme() == "http" && !is_loopback(&url) {
            problems.push(
                "AEGIS_AUDIT_TOKEN_FILE: the token would cross the network in clear over http://; use https://".into(),
            );
        }
    }

    fn check_limits(&self, problems: &mut Vec<String>) {
        let positive = [
            ("http_timeout", self.http_timeout),
            ("retry_initial", self.retry_initial),
            (
                "queue_timeout (AEGIS_AUDIT_QUEUE_TIMEOUT)",
                self.enqueue_wait,
            ),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                problems.push(format!("audit {name}: must be greater than zero"));
            }
        }
        if self.retry_max < self.retry_initial {
            problems.push("audit retry_max: must not be shorter than retry_initial".into());
        }
        if self.queue_capacity == 0 {
            problems.push("AEGIS_AUDIT_QUEUE_SIZE: must be greater than zero".into());
        }
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(url: &str) -> AuditConfig {
        AuditConfig {
            http_url: Some(url.into()),
            spool_dir: Some("/var/spool/aegis".into()),
            ..AuditConfig::default()
        }
    }

    #[test]
    fn defaults_are_valid_and_disabled() {
        let c = AuditConfig::default();
        assert!(c.validate().is_empty());
        assert!(!c.is_enabled());
    }

    #[test]
    fn file_only_and_https_with_token_are_valid() {
        let file = AuditConfig {
            file: Some("/var/log/aegis/audit.jsonl".into()),
            ..AuditConfig::default()
        };
        assert!(file.validate().is_empty());
        assert!(file.is_enabled());
        let mut https = http("https://audit.example/events");
        https.http_bearer_token_file = Some("/run/secrets/audit".into());
        assert!(https.validate().is_empty(), "{:?}", https.validate());
        let mut local = http("http://127.0.0.1:9000/events");
        local.http_bearer_token_file = Some("/run/secrets/audit".into());
        assert!(local.validate().is_empty());
    }

    #[test]
    fn url_without_spool_dir_is_refused() {
        let mut c = http("https://audit.example/");
        c.spool_dir = None;
        let problems = c.validate();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("AEGIS_AUDIT_SPOOL_DIR: required"));
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_them() {
        for (url, expected) in [
            ("ftp://audit.example/", "must be an http:// or https:// URL"),
            ("not a url s3cr3t", "not a valid URL"),
            (
                "https://user:s3cr3t@audit.example/",
                "must not carry credentials",
            ),
        ] {
            let problems = http(url).validate();
            assert_eq!(problems.len(), 1, "{url}: {problems:?}");
            assert!(problems[0].contains(expected), "{problems:?}");
            assert!(!problems[0].contains("s3cr3t"));
        }
    }

    #[test]
    fn token_over_plain_http_to_a_remote_host_is_refused() {
        let mut c = http("http://audit.example/");
        c.http_bearer_token_file = Some("/run/secrets/audit".into());
        assert!(c.validate()[0].contains("in clear"));
    }

    #[test]
    fn stray_and_inconsistent_settings_are_all_reported() {
        let c = AuditConfig {
            file: Some("/spool/audit.jsonl".into()),
            spool_dir: Some("/spool".into()),
            http_bearer_token_file: Some("/t".into()),
            retry_initial: Duration::ZERO,
            queue_capacity: 0,
            ..AuditConfig::default()
        };
        let problems = c.validate();
        assert_eq!(problems.len(), 5, "{problems:?}");
    }
}
