//! The caller policy file (`AEGIS_POLICY_FILE`): who may call the sidecar, with which keys,
//! and how fast.
//!
//! ```toml
//! [[caller]]
//! name = "model-server"                             # the audit actor: caller:model-server
//! token_file = "/run/secrets/aegis/model-server"    # TCP: its bearer token (re-read)
//! uids = [1000]                                     # Unix socket: peer uid(s) ...
//! gids = [1000]                                     # ... or gid(s)
//! sign = ["model-sign"]                             # keys it may sign with ("*": any)
//! verify = ["*"]                                    # keys it may verify with
//! rate = 50.0                                       # requests per second per key
//! burst = 100                                       # token bucket size (default: rate)
//! ```
//!
//! Reading a key (`GET keys/{key}`, gRPC `GetKey`/`WatchKeys`) is allowed to a caller that
//! may sign or verify with it. Parsing checks everything and reports every problem at
//! once; token files are only checked to be readable here (their content is a secret and
//! is read when a request presents a token).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The parsed policy file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Callers, matched in file order.
    #[serde(default, rename = "caller")]
    pub callers: Vec<CallerRule>,
}

/// One caller: how it is recognised and what it may do.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerRule {
    pub name: String,
    /// TCP identity: a file holding the caller's bearer token.
    pub token_file: Option<PathBuf>,
    /// Unix socket identity: the peer's uid is one of these ...
    #[serde(default)]
    pub uids: Vec<u32>,
    /// ... or its primary gid is one of these.
    #[serde(default)]
    pub gids: Vec<u32>,
    /// Keys it may sign with; `*` is every key the allowlist (`AEGIS_KEYS`) allows.
    #[serde(default)]
    pub sign: Vec<String>,
    /// Keys it may verify with.
    #[serde(default)]
    pub verify: Vec<String>,
    /// Keys whose signed models it may verify (`POST /v1/aegis/model/verify`); never
    /// implied by `verify`.
    #[serde(default)]
    pub verify_model: Vec<String>,
    /// Requests per second per key (token bucket refill); unset: no limit.
    pub rate: Option<f64>,
    /// Bucket size: requests allowed at once; default the rate rounded up.
    pub burst: Option<u32>,
}

impl CallerRule {
    /// Whether `key` is in `list` (or the list holds `*`).
    pub fn lists(list: &[String], key: &str) -> bool {
        list.iter().any(|k| k == "*" || k == key)
    }
}

impl PolicyFile {
    /// Reads and checks the file; every problem is returned, prefixed with the path.
    pub fn load(path: &Path) -> Result<PolicyFile, Vec<String>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![format!(
                "cannot read the policy file {}: {e}",
                path.display()
            )]
        })?;
        let file: PolicyFile = toml::from_str(&text)
            .map_err(|e| vec![format!("{}: {}", path.display(), e.message())])?;
        let problems = file.problems();
        if problems.is_empty() {
            Ok(file)
        } else {
            Err(problems
                .into_iter()
                .map(|p| format!("{}: {p}", path.display()))
                .collect())
        }
    }

    /// Everything wrong with the policy (never a token: only file names are mentioned).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.callers.is_empty() {
            problems.push("no [[caller]]: every request would be refused".to_string());
        }
        let mut names = BTreeSet::new();
        for c in &self.callers {
            let who = format!("caller {:?}", c.name);
            if c.name.trim().is_empty() {
                problems.push("a caller has an empty name".into());
            } else if !names.insert(c.name.as_str()) {
                problems.push(format!("{who} is listed twice"));
            }
            if c.token_file.is_none() && c.uids.is_empty() && c.gids.is_empty() {
                problems.push(format!(
                    "{who}: needs token_file (TCP) or uids/gids (Unix socket) to be recognised"
                ));
            }
            if let Some(f) = &c.token_file {
                match std::fs::metadata(f) {
                    Ok(m) if m.is_file() => {}
                    Ok(_) => {
                        problems.push(format!("{who}: token_file {} is not a file", f.display()))
                    }
                    Err(e) => problems.push(format!("{who}: token_file {}: {e}", f.display())),
                }
            }
            if c.sign.is_empty() && c.verify.is_empty() && c.verify_model.is_empty() {
                problems.push(format!(
                    "{who}: may neither sign nor verify (set sign, verify and/or verify_model)"
                ));
            }
            if let Some(r) = c.rate {
                if !(r.is_finite() && r > 0.0) {
                    problems.push(format!(
                        "{who}: rate must be a positive number of requests per second"
                    ));
                }
            }
            if c.burst == Some(0) {
                problems.push(format!("{who}: burst must be at least 1"));
            }
            if c.burst.is_some() && c.rate.is_none() {
                problems.push(format!("{who}: burst needs a rate"));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_reports_every_problem() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("t");
        std::fs::write(&token, "s3cret\n").unwrap();
        let good = dir.path().join("good.toml");
        std::fs::write(
            &good,
            format!(
                "[[caller]]\nname = \"a\"\ntoken_file = \"{}\"\nsign = [\"k\"]\nrate = 2.5\n\n[[caller]]\nname = \"b\"\nuids = [0]\nverify = [\"*\"]\n",
                token.display()
            ),
        )
        .unwrap();
        let p = PolicyFile::load(&good).unwrap();
        assert_eq!(p.callers.len(), 2);
        assert_eq!(p.callers[0].rate, Some(2.5));
        assert!(CallerRule::lists(&p.callers[1].verify, "anything"));
        assert!(!CallerRule::lists(&p.callers[0].sign, "other"));

        let bad = dir.path().join("bad.toml");
        std::fs::write(
            &bad,
            "[[caller]]\nname = \"a\"\n\n[[caller]]\nname = \"a\"\ntoken_file = \"/nonexistent/t\"\nsign = [\"k\"]\nrate = -1.0\nburst = 0\n",
        )
        .unwrap();
        let errors = PolicyFile::load(&bad).unwrap_err().join("\n");
        for needle in [
            "needs token_file",
            "may neither sign nor verify",
            "listed twice",
            "/nonexistent/t",
            "rate must be",
            "burst must be",
        ] {
            assert!(errors.contains(needle), "{needle} missing in {errors}");
        }
        let unknown = dir.path().join("unknown.toml");
        std::fs::write(&unknown, "[[caller]]\nname = \"a\"\nuid = 1\n").unwrap();
        assert!(PolicyFile::load(&unknown).unwrap_err()[0].contains("unknown field"));
    }
}
