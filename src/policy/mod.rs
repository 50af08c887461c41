//! Who may call what: the request-forgery guard, caller identity, and the caller policy.
//!
//! Every Transit request (HTTP or gRPC) passes, in order and before Vault is asked:
//! 1. the **guard** ([`Policy::guard`]): a request carrying an `Origin` header (a browser)
//!    is refused (403), and, unless `AEGIS_REQUIRE_REQUEST_HEADER=false`, one without
//!    `X-Vault-Request: true` gets 412, as Vault Proxy's `require_request_header` does;
//! 2. **identity** ([`Policy::identify`]): on the Unix socket the peer's uid/gid/pid from
//!    the kernel (SO_PEERCRED); on TCP the bearer token (`Authorization: Bearer` or
//!    `X-Vault-Token`) compared in constant time with the callers' token files;
//! 3. the key allowlist (`AEGIS_KEYS`, checked by the caller of this module), then
//!    [`Policy::authorize`]: the caller's keys per action, and its rate per key.
//!
//! Without a policy file (`AEGIS_POLICY_FILE`) every local caller is accepted, identified
//! by its address or peer credentials, and may use every allowlisted key. With one, only
//! the callers it lists are. This module does no I/O beyond reading its own files.

pub mod ratelimit;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq as _;
use tracing::warn;

pub use crate::config::policy_file::{self as file, CallerRule, PolicyFile};
use crate::error::Error;
use ratelimit::KeyLimiter;

/// Where a connection comes from: the connection info of both listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Tcp(SocketAddr),
    /// A Unix socket peer; `None` when the kernel would not say who it is.
    Unix(Option<PeerCred>),
}

/// A Unix socket peer's credentials, as the kernel gives them (SO_PEERCRED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl Peer {
    /// The peer of a Unix stream, from the kernel.
    pub fn unix(stream: &tokio::net::UnixStream) -> Peer {
        Peer::Unix(stream.peer_cred().ok().map(|c| PeerCred {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
        }))
    }

    /// How an anonymous caller is named in the audit trail.
    pub fn describe(&self) -> String {
        match self {
            Peer::Tcp(addr) => format!("tcp:{}", addr.ip()),
            Peer::Unix(Some(c)) => match c.pid {
                Some(pid) => format!("unix:uid={},gid={},pid={pid}", c.uid, c.gid),
                None => format!("unix:uid={},gid={}", c.uid, c.gid),
            },
            Peer::Unix(None) => "unix:unknown".into(),
        }
    }
}

/// What a Transit request wants to do with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Sign,
    Verify,
    ReadKey,
    /// Verify a model directory against its signature (`/v1/aegis/model/verify`).
    VerifyModel,
}

/// The caller of one request, once identified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The audit actor: `caller:<name>` (with its peer), or the peer alone without a policy.
    pub actor: String,
    /// Index of its rule in the policy; `None` without a policy file.
    rule: Option<usize>,
}

/// What the guard and identity need of a request's headers (HTTP headers, or gRPC
/// metadata, which are the same on the wire).
#[derive(Debug, Clone, Copy, Default)]
pub struct Headers<'a> {
    /// An `Origin` header is present.
    pub origin: bool,
    /// `X-Vault-Request` is present once, with the value `true`.
    pub request_header: bool,
    /// `Authorization: Bearer <token>`, else `X-Vault-Token`.
    pub token: Option<&'a str>,
}

impl<'a> Headers<'a> {
    pub fn from_map(map: &'a http::HeaderMap) -> Headers<'a> {
        let mut values = map.get_all("x-vault-request").iter();
        let request_header = matches!(
            (values.next(), values.next()),
            (Some(v), None) if v.as_bytes() == b"true"
        );
        let bearer = map
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        let vault_token = map.get("x-vault-token").and_then(|v| v.to_str().ok());
        Headers {
            origin: map.contains_key(http::header::ORIGIN),
            request_header,
            token: bearer.or(vault_token).filter(|t| !t.trim().is_empty()),
        }
    }
}

/// How often a token file is re-read at most (a rotated token works within this time).
const TOKEN_REREAD: Duration = Duration::from_secs(1);

/// A caller's token file: its SHA-256 is kept, re-read at most every [`TOKEN_REREAD`].
#[derive(Debug)]
struct TokenSource {
    path: PathBuf,
    cached: Mutex<Option<(Instant, Option<[u8; 32]>)>>,
}

impl TokenSource {
    fn new(path: PathBuf) -> Self {
        TokenSource {
            path,
            cached: Mutex::new(None),
        }
    }

    /// The current token's digest; `None` when the file is unreadable or empty (no
    /// token matches then: deleting the file revokes the caller).
    fn digest(&self) -> Option<[u8; 32]> {
        let mut cached = self.cached.lock().expect("token cache lock");
        if let Some((read_at, digest)) = *cached {
            if read_at.elapsed() < TOKEN_REREAD {
                return digest;
            }
        }
        let digest = match std::fs::read_to_string(&self.path) {
            Ok(t) if !t.trim().is_empty() => Some(sha256(t.trim().as_bytes())),
            Ok(_) => {
                warn!(file = %self.path.display(), "caller token file is empty; its caller is refused");
                None
            }
            Err(e) => {
                warn!(file = %self.path.display(), error = %e, "cannot read a caller token file; its caller is refused");
                None
            }
        };
        *cached = Some((Instant::now(), digest));
        digest
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// One rule of the policy file, ready to use.
#[derive(Debug)]
struct Rule {
    rule: CallerRule,
    token: Option<TokenSource>,
    limiter: Option<KeyLimiter>,
}

/// The guard and the caller policy.
#[derive(Debug)]
pub struct Policy {
    require_request_header: bool,
    /// `None`: no policy file, every local caller is accepted.
    rules: Option<Vec<Rule>>,
}

impl Policy {
    pub fn new(require_request_header: bool, file: Option<&PolicyFile>) -> Policy {
        let rules = file.map(|f| {
            f.callers
                .iter()
                .map(|c| Rule {
                    token: c.token_file.clone().map(TokenSource::new),
                    limiter: c.rate.map(|r| KeyLimiter::new(r, c.burst)),
                    rule: c.clone(),
                })
                .collect()
        });
        Policy {
            require_request_header,
            rules,
        }
    }

    /// The request-forgery guard: no browser (`Origin`), and `X-Vault-Request: true`.
    pub fn guard(&self, headers: &Headers<'_>) -> Result<(), Error> {
        if headers.origin {
            return Err(Error::Refused(
                "requests from browsers (with an Origin header) are not accepted".into(),
            ));
        }
        if self.require_request_header && !headers.request_header {
            return Err(Error::PreconditionFailed(
                "missing \"X-Vault-Request\" header (send X-Vault-Request: true; Vault clients do)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Who is calling. On refusal, the error comes with the actor to audit it under.
    pub fn identify(&self, peer: &Peer, token: Option<&str>) -> Result<Caller, (String, Error)> {
        let anonymous = peer.describe();
        let Some(rules) = &self.rules else {
            return Ok(Caller {
                actor: anonymous,
                rule: None,
            });
        };
        let found = match peer {
            Peer::Tcp(_) => {
                let presented = token.map(|t| sha256(t.trim().as_bytes()));
                // Every caller's digest is compared, in constant time, whichever matches.
                let mut found = None;
                for (i, r) in rules.iter().enumerate() {
                    let Some(expected) = r.token.as_ref().and_then(TokenSource::digest) else {
                        continue;
                    };
                    let equal = presented.is_some_and(|p| bool::from(p[..].ct_eq(&expected[..])));
                    if equal && found.is_none() {
                        found = Some(i);
                    }
                }
                found.ok_or(if token.is_some() {
                    "no caller in the policy holds this token"
                } else {
                    "a caller token is required (Authorization: Bearer or X-Vault-Token)"
                })
            }
            Peer::Unix(Some(cred)) => rules
                .iter()
                .position(|r| r.rule.uids.contains(&cred.uid) || r.rule.gids.contains(&cred.gid))
                .ok_or("no caller in the policy matches this uid/gid"),
            Peer::Unix(None) => Err("the peer's credentials are unknown"),
        };
        match found {
            Ok(i) => Ok(Caller {
                actor: format!("caller:{} ({anonymous})", rules[i].rule.name),
                rule: Some(i),
            }),
            Err(reason) => Err((anonymous, Error::Refused(reason.into()))),
        }
    }

    /// Whether `caller` may do `action` with `key` now (its keys, then its rate). The
    /// allowlist (`AEGIS_KEYS`) is checked before this.
    pub fn authorize(&self, caller: &Caller, action: Action, key: &str) -> Result<(), Error> {
        let (Some(rules), Some(i)) = (&self.rules, caller.rule) else {
            return Ok(());
        };
        let rule = &rules[i];
        let allowed = match action {
            Action::Sign => CallerRule::lists(&rule.rule.sign, key),
            Action::Verify => CallerRule::lists(&rule.rule.verify, key),
            Action::VerifyModel => CallerRule::lists(&rule.rule.verify_model, key),
            Action::ReadKey => {
                CallerRule::lists(&rule.rule.sign, key) || CallerRule::lists(&rule.rule.verify, key)
            }
        };
        if !allowed {
            let what = match action {
                Action::Sign => "sign with",
                Action::Verify => "verify with",
                Action::ReadKey => "read",
                Action::VerifyModel => "verify models signed with",
            };
            return Err(Error::Refused(format!(
                "caller {:?} may not {what} key {key:?}",
                rule.rule.name
            )));
        }
        if let Some(limiter) = &rule.limiter {
            limiter
                .check(key)
                .map_err(|retry_after| Error::TooManyRequests {
                    key: key.to_string(),
                    retry_after,
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(dir: &std::path::Path) -> Policy {
        let token = dir.join("tok");
        std::fs::write(&token, "good-token\n").unwrap();
        let file = PolicyFile {
            callers: vec![
                CallerRule {
                    name: "srv".into(),
                    token_file: Some(token),
                    uids: vec![1000],
                    gids: vec![],
                    sign: vec!["k".into()],
                    verify: vec!["*".into()],
                    verify_model: vec!["m".into()],
                    rate: Some(1.0),
                    burst: Some(1),
                },
                CallerRule {
                    name: "group".into(),
                    token_file: None,
                    uids: vec![],
                    gids: vec![50],
                    sign: vec![],
                    verify: vec!["k".into()],
                    verify_model: vec![],
                    rate: None,
                    burst: None,
                },
            ],
        };
        Policy::new(true, Some(&file))
    }

    const LOCAL: Peer = Peer::Tcp(SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        1234,
    ));

    fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, http::HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn headers_are_read_as_vault_reads_them() {
        let h = headers(&[("x-vault-request", "true"), ("authorization", "Bearer abc")]);
        let h = Headers::from_map(&h);
        assert!(h.request_header && !h.origin);
        assert_eq!(h.token, Some("abc"));
        let h = headers(&[("x-vault-request", "true"), ("x-vault-request", "true")]);
        assert!(!Headers::from_map(&h).request_header);
        let h = headers(&[
            ("x-vault-request", "1"),
            ("x-vault-token", "t"),
            ("origin", "https://evil"),
        ]);
        let h = Headers::from_map(&h);
        assert!(!h.request_header && h.origin);
        assert_eq!(h.token, Some("t"));
    }

    #[test]
    fn guard() {
        let p = Policy::new(true, None);
        let ok = Headers {
            request_header: true,
            ..Headers::default()
        };
        assert!(p.guard(&ok).is_ok());
        assert_eq!(p.guard(&Headers::default()).unwrap_err().status(), 412);
        let browser = Headers { origin: true, ..ok };
        assert_eq!(p.guard(&browser).unwrap_err().status(), 403);
        let off = Policy::new(false, None);
        assert!(off.guard(&Headers::default()).is_ok());
        assert_eq!(off.guard(&browser).unwrap_err().status(), 403);
    }

    #[test]
    fn identity_permissions_and_rate() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy(dir.path());
        let srv = p.identify(&LOCAL, Some("good-token")).unwrap();
        assert_eq!(srv.actor, "caller:srv (tcp:127.0.0.1)");
        let (actor, e) = p.identify(&LOCAL, Some("bad-token")).unwrap_err();
        assert_eq!(
            (actor.as_str(), e.status().as_u16()),
            ("tcp:127.0.0.1", 403)
        );
        assert!(e.to_string().contains("no caller"), "{e}");
        assert!(!e.to_string().contains("bad-token"));
        assert!(p.identify(&LOCAL, None).is_err());

        let by_gid = p
            .identify(
                &Peer::Unix(Some(PeerCred {
                    uid: 7,
                    gid: 50,
                    pid: Some(9),
                })),
                None,
            )
            .unwrap();
        assert_eq!(by_gid.actor, "caller:group (unix:uid=7,gid=50,pid=9)");
        assert!(p
            .identify(
                &Peer::Unix(Some(PeerCred {
                    uid: 65534,
                    gid: 65534,
                    pid: None
                })),
                None
            )
            .is_err());
        assert!(p.identify(&Peer::Unix(None), None).is_err());

        assert!(p.authorize(&by_gid, Action::Verify, "k").is_ok());
        assert!(p.authorize(&by_gid, Action::ReadKey, "k").is_ok());
        // `verify` never implies `verify_model`.
        let e = p.authorize(&by_gid, Action::VerifyModel, "k").unwrap_err();
        assert!(e.to_string().contains("may not verify models"), "{e}");
        assert_eq!(
            p.authorize(&by_gid, Action::Sign, "k")
                .unwrap_err()
                .status(),
            403
        );
        assert!(p.authorize(&srv, Action::Sign, "k").is_ok());
        let e = p.authorize(&srv, Action::Sign, "k").unwrap_err();
        assert_eq!(e.status(), 429);
        assert!(e.retry_after_secs().is_some());
        assert_eq!(
            p.authorize(&srv, Action::Sign, "other")
                .unwrap_err()
                .status(),
            403
        );
    }

    #[test]
    fn token_files_are_re_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy(dir.path());
        assert!(p.identify(&LOCAL, Some("good-token")).is_ok());
        std::fs::write(dir.path().join("tok"), "rotated").unwrap();
        // Re-read once the cached digest is older than TOKEN_REREAD.
        if let Some(rules) = &p.rules {
            *rules[0].token.as_ref().unwrap().cached.lock().unwrap() = None;
        }
        assert!(p.identify(&LOCAL, Some("good-token")).is_err());
        assert!(p.identify(&LOCAL, Some("rotated")).is_ok());
    }

    #[test]
    fn without_a_policy_every_local_caller_is_known_by_its_peer() {
        let p = Policy::new(true, None);
        let c = p.identify(&LOCAL, None).unwrap();
        assert_eq!(c.actor, "tcp:127.0.0.1");
        assert!(p.authorize(&c, Action::Sign, "any").is_ok());
    }
}
