//! The sidecar's own Vault credential: log in, renew, log in again; never handed out.
//!
//! [`VaultClient::run_auth`] is the one background task that keeps a token: it logs in
//! with the configured method (token, AppRole with an optionally response-wrapped
//! secret_id, Kubernetes, JWT/OIDC, TLS certificate), renews at two thirds of the TTL,
//! and logs in again when renewal is refused or the max TTL caps it. Failed logins back
//! off exponentially with jitter: 1 s to 5 min when Vault refuses the credential, 1 s to
//! 30 s when Vault cannot be reached (so a returning Vault is used within seconds). The
//! loop honours the client's pace (`vault::pace`): a login or renewal waits until the
//! time a 429 asked for (a login answered 429 waits at least its `Retry-After`), and a
//! renewal answered 429 is tried again after it rather than replaced by a login.
//!
//! Logins and renewals are raw JSON through `VaultClient::send_answer` (their 429s keep
//! `Retry-After`); the token lookup and unwrap go through vaultrs.
//!
//! A 403 on a call leads to [`VaultClient::recover_from_403`]: the token is checked
//! once; if Vault no longer accepts it (revoked), the sidecar logs in again and the call
//! is retried once. Concurrent 403s share one check and one login.
//!
//! Credential files (token, secret_id, JWT) are read at each login, so rotated files are
//! picked up; nothing read here is ever logged.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::{Body, Retry, TokenUse, VaultClient, VaultError};
use crate::backoff::Backoff;
use crate::config::{AuthConfig, Secret, SecretSource};
use crate::telemetry::metrics::{self, VaultEndpoint};

/// What `auth/token/lookup-self` says about a token (the parts Aegis uses).
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub accessor: String,
    pub display_name: String,
    pub entity_id: String,
    pub ttl: u64,
    pub renewable: bool,
    pub policies: Vec<String>,
}

/// The credential's state, for readiness and logs.
#[derive(Debug, Clone)]
pub struct AuthStatus {
    pub method: &'static str,
    /// Vault accepted the current token and it has not expired.
    pub authenticated: bool,
    /// `None` for a token that never expires (or none held).
    pub expires_in: Option<Duration>,
    pub last_error: Option<String>,
    /// Failed login attempts since start (for alerting on auth failures).
    pub login_failures: u64,
}

#[derive(Clone)]
struct Credential {
    token: Secret,
    /// Vault accepted it (a login, or a lookup of a given token).
    verified: bool,
    /// Zero: never expires.
    ttl: Duration,
    renewable: bool,
    obtained: Instant,
}

impl Credential {
    fn expired(&self, now: Instant) -> bool {
        !self.ttl.is_zero() && now >= self.obtained + self.ttl
    }
}

#[derive(Default)]
struct State {
    cred: Option<Credential>,
    generation: u64,
    needs_login: bool,
    last_error: Option<String>,
    /// Failed login attempts since start.
    login_failures: u64,
}

/// Credential state shared by every call.
pub(super) struct Auth {
    cfg: AuthConfig,
    state: RwLock<State>,
    changed: watch::Sender<u64>,
    login_lock: tokio::sync::Mutex<()>,
    /// The wrapping token last unwrapped and the secret_id it held.
    unwrapped: Mutex<Option<(Secret, Secret)>>,
}

impl Auth {
    pub(super) fn new(cfg: AuthConfig) -> Self {
        // A given token is used at once (unverified until Vault answers a lookup).
        let cred = match &cfg {
            AuthConfig::Token { token } => token.read().ok().map(|token| Credential {
                token,
                verified: false,
                ttl: Duration::ZERO,
                renewable: false,
                obtained: Instant::now(),
            }),
            _ => None,
        };
        Auth {
            cfg,
            state: RwLock::new(State {
                cred,
                ..State::default()
            }),
            changed: watch::channel(0).0,
            login_lock: tokio::sync::Mutex::new(()),
            unwrapped: Mutex::new(None),
        }
    }

    /// The token for a call and its generation, or why there is none.
    pub(super) fn token(&self) -> Result<(Secret, u64), VaultError> {
        let s = self.state.read().expect("auth lock");
        match &s.cred {
            Some(c) if !c.expired(Instant::now()) => Ok((c.token.clone(), s.generation)),
            _ => Err(VaultError::Unauthenticated(
                s.last_error
                    .clone()
                    .unwrap_or_else(|| "no login has succeeded yet".into()),
            )),
        }
    }

    pub(super) fn generation(&self) -> u64 {
        self.state.read().expect("auth lock").generation
    }

    /// Applies `f` to the state. Only a change of the credential itself (a new token, one
    /// accepted, one dropped) bumps the generation and wakes waiters: renewals and failed
    /// logins do not, so a failed login's backoff is not cut short by its own error.
    fn update(&self, f: impl FnOnce(&mut State)) {
        let identity = |s: &State| s.cred.as_ref().map(|c| (c.token.clone(), c.verified));
        let changed = {
            let mut s = self.state.write().expect("auth lock");
            let before = identity(&s);
            f(&mut s);
            let changed = identity(&s) != before;
            if changed {
                s.generation += 1;
            }
            changed.then_some(s.generation)
        };
        if let Some(generation) = changed {
            self.changed.send_replace(generation);
        }
    }

    /// Whether a fresh login can produce a different token than the one held.
    fn can_relogin(&self) -> bool {
        !matches!(
            &self.cfg,
            AuthConfig::Token {
                token: SecretSource::Value(_)
            }
        )
    }

    fn next_action(&self) -> Action {
        let s = self.state.read().expect("auth lock");
        let now = Instant::now();
        match &s.cred {
            Some(c) if !c.expired(now) && c.verified && !s.needs_login => {
                if c.ttl.is_zero() {
                    Action::Idle
                } else if c.renewable {
                    Action::RenewAt(c.obtained + c.ttl * 2 / 3)
                } else {
                    Action::LoginAt(c.obtained + c.ttl * 2 / 3)
                }
            }
            _ => Action::Login,
        }
    }
}

enum Action {
    Login,
    RenewAt(Instant),
    LoginAt(Instant),
    Idle,
}

#[derive(Deserialize)]
struct WrappedSecretId {
    secret_id: String,
}

/// The parts of a login's or renewal's `auth` that Aegis uses.
#[derive(Deserialize)]
struct AuthAnswer {
    client_token: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

impl VaultClient {
    /// The credential's state.
    pub fn auth_status(&self) -> AuthStatus {
        let s = self.auth.state.read().expect("auth lock");
        let now = Instant::now();
        let live = s.cred.as_ref().filter(|c| c.verified && !c.expired(now));
        AuthStatus {
            method: self.auth.cfg.method(),
            authenticated: live.is_some(),
            expires_in: live
                .filter(|c| !c.ttl.is_zero())
                .map(|c| (c.obtained + c.ttl).saturating_duration_since(now)),
            last_error: s.last_error.clone(),
            login_failures: s.login_failures,
        }
    }

    /// Returns once Vault has accepted a credential.
    pub async fn wait_authenticated(&self) {
        let mut rx = self.auth.changed.subscribe();
        while !self.auth_status().authenticated {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// `auth/token/lookup-self` with the sidecar's token (vaultrs).
    pub async fn lookup_self(&self) -> Result<TokenInfo, VaultError> {
        self.lookup(TokenUse::Current).await
    }

    async fn lookup(&self, token: TokenUse) -> Result<TokenInfo, VaultError> {
        let r = self
            .vaultrs_call(
                Retry::Idempotent,
                token,
                VaultEndpoint::LookupSelf,
                |c| async move { vaultrs::token::lookup_self(&c).await },
            )
            .await?;
        Ok(TokenInfo {
            accessor: r.accessor,
            display_name: r.display_name,
            entity_id: r.entity_id,
            ttl: r.ttl,
            renewable: r.renewable.unwrap_or(false),
            policies: r.policies,
        })
    }

    /// Logs in with the configured method. Concurrent callers share one login: whoever
    /// waited for the lock while another login succeeded returns at once.
    pub async fn login(&self) -> Result<(), VaultError> {
        let seen = self.auth.generation();
        let _guard = self.auth.login_lock.lock().await;
        if self.auth.generation() != seen && self.auth_status().authenticated {
            return Ok(());
        }
        self.login_locked().await
    }

    #[tracing::instrument(name = "vault.login", skip(self), fields(method = self.auth.cfg.method()))]
    async fn login_locked(&self) -> Result<(), VaultError> {
        let method = self.auth.cfg.method();
        match self.obtain().await {
            Ok(cred) => {
                info!(
                    method,
                    ttl_s = cred.ttl.as_secs(),
                    renewable = cred.renewable,
                    "logged in to Vault"
                );
                self.auth.update(|s| {
                    s.cred = Some(cred);
                    s.needs_login = false;
                    s.last_error = None;
                });
                Ok(())
            }
            Err(e) => {
                let refused =
                    matches!(e, VaultError::Status { status, .. } if (400..=403).contains(&status));
                if refused {
                    error!(method, error = %e, "Vault refused the sidecar's credential");
                } else if e.to_string().contains("certificate") {
                    error!(method, error = %e, "TLS to Vault failed: check VAULT_CACERT / VAULT_CAPATH / VAULT_TLS_SERVER_NAME against Vault's certificate");
                } else {
                    warn!(method, error = %e, "cannot log in to Vault");
                }
                metrics::get().auth_failure(method);
                let message = format!("{method} login failed: {e}");
                self.auth.update(|s| {
                    // A token Vault refuses is dropped; another method's old token stays
                    // in use until it expires.
                    if refused && !self.auth.can_relogin() {
                        s.cred = None;
                    }
                    s.last_error = Some(message);
                    s.login_failures += 1;
                });
                Err(e)
            }
        }
    }

    /// One login with the configured method.
    async fn obtain(&self) -> Result<Credential, VaultError> {
        let read = |source: &SecretSource, what: &str| {
            source
                .read()
                .map_err(|e| VaultError::Unauthenticated(format!("cannot read the {what}: {e}")))
        };
        let file = |path: &std::path::Path, what: &str| {
            read(&SecretSource::File(path.to_path_buf()), what)
        };
        let auth = match &self.auth.cfg {
            AuthConfig::Token { token } => {
                let token = read(token, "Vault token")?;
                if token.is_empty() {
                    return Err(VaultError::Unauthenticated(
                        "the Vault token is empty".into(),
                    ));
                }
                let info = self.lookup(TokenUse::Given(token.clone())).await?;
                return Ok(Credential {
                    token,
                    verified: true,
                    ttl: Duration::from_secs(info.ttl),
                    renewable: info.renewable,
                    obtained: Instant::now(),
                });
            }
            AuthConfig::AppRole {
                mount,
                role_id,
                secret_id,
                secret_id_wrapped,
            } => {
                let role_id = read(role_id, "AppRole role_id")?;
                let secret_id = if *secret_id_wrapped {
                    self.unwrap_secret_id(read(secret_id, "wrapped AppRole secret_id")?)
                        .await?
                } else {
                    read(secret_id, "AppRole secret_id")?
                };
                let body = json!({"role_id": role_id.expose(), "secret_id": secret_id.expose()});
                self.log_in_at(mount, &body).await?
            }
            AuthConfig::Kubernetes {
                mount,
                role,
                jwt_file,
            } => {
                let jwt = file(jwt_file, "service-account token")?;
                self.log_in_at(mount, &json!({"role": role, "jwt": jwt.expose()}))
                    .await?
            }
            AuthConfig::Jwt {
                mount,
                role,
                jwt_file,
            } => {
                let jwt = file(jwt_file, "JWT")?;
                let mut body = json!({"jwt": jwt.expose()});
                if let Some(role) = role {
                    body["role"] = json!(role);
                }
                self.log_in_at(mount, &body).await?
            }
            AuthConfig::Cert { mount, role } => {
                // The certificate is the credential; `name` restricts the login to one role.
                let body = role.as_ref().map_or(json!({}), |r| json!({ "name": r }));
                self.log_in_at(mount, &body).await?
            }
        };
        Ok(Credential {
            token: Secret::new(auth.client_token),
            verified: true,
            ttl: Duration::from_secs(auth.lease_duration),
            renewable: auth.renewable,
            obtained: Instant::now(),
        })
    }

    /// `POST auth/{mount}/login`: the `auth` of Vault's answer.
    async fn log_in_at(&self, mount: &str, body: &Value) -> Result<AuthAnswer, VaultError> {
        let path = format!("auth/{mount}/login");
        self.auth_call(
            Retry::IfNotSent,
            TokenUse::Anonymous,
            VaultEndpoint::Login,
            &path,
            body,
        )
        .await
    }

    /// A call answered with an `auth` object (login, renewal), sent as raw JSON through
    /// `send_answer` so that a 429's `Retry-After` is seen.
    async fn auth_call(
        &self,
        retry: Retry,
        token: TokenUse,
        endpoint: VaultEndpoint,
        path: &str,
        body: &Value,
    ) -> Result<AuthAnswer, VaultError> {
        let mut answer = self
            .execute(retry, token, endpoint, |t| {
                self.send_answer(t, reqwest::Method::POST, path, Some(Body::Json(body)))
            })
            .await?;
        serde_json::from_value(answer["auth"].take())
            .map_err(|e| VaultError::Decode(format!("the auth of {path}: {e}")))
    }

    /// Unwraps a response-wrapped secret_id. A wrapping token works once: the secret_id
    /// it held is kept in memory for later logins until the file holds a new one.
    async fn unwrap_secret_id(&self, wrapping_token: Secret) -> Result<Secret, VaultError> {
        if let Some((seen, secret_id)) = self.auth.unwrapped.lock().expect("unwrap lock").as_ref() {
            if *seen == wrapping_token {
                return Ok(secret_id.clone());
            }
        }
        let data: WrappedSecretId = self
            .vaultrs_call(
                Retry::IfNotSent,
                TokenUse::Given(wrapping_token.clone()),
                VaultEndpoint::Other,
                |c| async move { vaultrs::sys::wrapping::unwrap(&c, None).await },
            )
            .await
            .map_err(|e| match e {
                VaultError::Status { status, errors } => VaultError::Status {
                    status,
                    errors: vec![format!(
                        "cannot unwrap the secret_id (wrapping token expired or already used?): {}",
                        errors.join("; ")
                    )],
                },
                other => other,
            })?;
        let secret_id = Secret::new(data.secret_id);
        *self.auth.unwrapped.lock().expect("unwrap lock") =
            Some((wrapping_token, secret_id.clone()));
        Ok(secret_id)
    }

    /// `auth/token/renew-self`. Returns whether the max TTL capped the new lease.
    async fn renew(&self) -> Result<bool, VaultError> {
        let before = match &self.auth.state.read().expect("auth lock").cred {
            Some(c) => c.ttl,
            None => return Err(VaultError::Unauthenticated("no token to renew".into())),
        };
        let auth = self
            .auth_call(
                Retry::Idempotent,
                TokenUse::Current,
                VaultEndpoint::Renew,
                "auth/token/renew-self",
                &json!({}),
            )
            .await?;
        let ttl = Duration::from_secs(auth.lease_duration);
        self.auth.update(|s| {
            if let Some(c) = s.cred.as_mut() {
                if c.token.expose() == auth.client_token {
                    c.ttl = ttl;
                    c.renewable = auth.renewable;
                    c.obtained = Instant::now();
                }
            }
        });
        Ok(ttl < before || !auth.renewable)
    }

    /// After a 403: checks the token once; if Vault no longer accepts it, logs in again.
    /// True when the call should be retried with a new token.
    pub(super) async fn recover_from_403(&self, generation: u64) -> bool {
        let _guard = self.auth.login_lock.lock().await;
        if self.auth.generation() != generation {
            return true; // someone logged in again meanwhile
        }
        let Ok((token, _)) = self.auth.token() else {
            return false;
        };
        match self.lookup(TokenUse::Given(token)).await {
            // The token is fine: the 403 is the policy's answer.
            Ok(_) => false,
            Err(VaultError::Status { status: 403, .. }) => {
                warn!("Vault no longer accepts the sidecar's token (revoked or expired); logging in again");
                metrics::get().auth_failure(self.auth.cfg.method());
                self.auth.update(|s| {
                    s.cred = None;
                    s.needs_login = true;
                    s.last_error = Some("Vault no longer accepts the token (revoked?)".into());
                });
                self.login_locked().await.is_ok()
            }
            Err(_) => false,
        }
    }

    /// Keeps a valid token for as long as the process runs.
    pub async fn run_auth(self: Arc<Self>) {
        let mut rx = self.auth.changed.subscribe();
        let mut backoff = LoginBackoff::default();
        loop {
            rx.borrow_and_update();
            match self.auth.next_action() {
                Action::Login => {
                    self.pace().await;
                    match self.login().await {
                        Ok(()) => backoff.reset(),
                        Err(e) => {
                            // After a 429, its `Retry-After` (and the pace) is the floor.
                            let at = self.not_before(Instant::now() + backoff.next(&e));
                            let delay = at.saturating_duration_since(Instant::now());
                            info!(retry_in_ms = delay.as_millis() as u64, "next login attempt");
                            wait(at, &mut rx).await;
                        }
                    }
                }
                Action::RenewAt(at) => {
                    if wait(self.not_before(at), &mut rx).await {
                        continue;
                    }
                    match self.renew().await {
                        Ok(false) => {}
                        Ok(true) if !self.auth.can_relogin() => {}
                        Ok(true) => {
                            info!("token renewal capped by its max TTL; logging in again");
                            self.auth.update(|s| s.needs_login = true);
                        }
                        // Vault asked to slow down: renew again after the pause (the
                        // token is still good; a login would cost Vault more).
                        Err(VaultError::RateLimited { .. }) => {}
                        Err(e) => {
                            warn!(error = %e, "token renewal failed; logging in again");
                            self.auth.update(|s| s.needs_login = true);
                        }
                    }
                }
                Action::LoginAt(at) => {
                    if !wait(at, &mut rx).await {
                        self.auth.update(|s| s.needs_login = true);
                    }
                }
                Action::Idle => {
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

impl VaultClient {
    /// `at`, or later when Vault asked to hold back until then.
    fn not_before(&self, at: Instant) -> Instant {
        self.paced_until().map_or(at, |until| until.max(at))
    }
}

/// Waits until `at`, or until the credential changes (returns true then).
async fn wait(at: Instant, rx: &mut watch::Receiver<u64>) -> bool {
    tokio::select! {
        () = tokio::time::sleep_until(at.into()) => false,
        r = rx.changed() => r.is_ok(),
    }
}

/// Pauses between failed logins: a refusal (bad credential, policy) backs off up to
/// five minutes, an unreachable Vault up to 30 s, so a recovering cluster is retried soon.
struct LoginBackoff {
    refused: Backoff,
    unreachable: Backoff,
}

impl Default for LoginBackoff {
    fn default() -> Self {
        LoginBackoff {
            refused: Backoff::new(Duration::from_secs(1), Self::MAX_REFUSED),
            unreachable: Backoff::new(Duration::from_secs(1), Self::MAX_UNREACHABLE),
        }
    }
}

impl LoginBackoff {
    const MAX_REFUSED: Duration = Duration::from_secs(300);
    const MAX_UNREACHABLE: Duration = Duration::from_secs(30);

    fn reset(&mut self) {
        self.refused.reset();
        self.unreachable.reset();
    }

    /// The pause before the next attempt after `e`.
    fn next(&mut self, e: &VaultError) -> Duration {
        match e {
            VaultError::Status { .. } | VaultError::Unauthenticated(_) => self.refused.next_pause(),
            _ => self.unreachable.next_pause(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let mut b = LoginBackoff::default();
        let refused = VaultError::Status {
            status: 400,
            errors: vec![],
        };
        let delays: Vec<_> = (0..12).map(|_| b.next(&refused)).collect();
        assert!(delays[0] >= Duration::from_millis(500) && delays[0] <= Duration::from_secs(1));
        assert!(delays[3] >= Duration::from_secs(4) && delays[3] <= Duration::from_secs(8));
        assert!(delays.iter().all(|d| *d <= LoginBackoff::MAX_REFUSED));
        assert!(delays[11] >= LoginBackoff::MAX_REFUSED / 2);
        let down = VaultError::unreachable("connection refused");
        assert!(b.next(&down) <= Duration::from_secs(1), "its own step");
        for _ in 0..10 {
            assert!(b.next(&down) <= LoginBackoff::MAX_UNREACHABLE);
        }
        b.reset();
        assert!(b.next(&down) <= Duration::from_secs(1));
    }

    #[test]
    fn a_given_token_is_used_at_once_but_not_counted_as_accepted() {
        let auth = Auth::new(AuthConfig::Token {
            token: SecretSource::Value(Secret::new("hvs.x")),
        });
        assert_eq!(auth.token().unwrap().0.expose(), "hvs.x");
        assert!(matches!(auth.next_action(), Action::Login));
        let approle = Auth::new(AuthConfig::Cert {
            mount: "cert".into(),
            role: None,
        });
        assert!(matches!(
            approle.token(),
            Err(VaultError::Unauthenticated(_))
        ));
    }

    #[test]
    fn renewal_is_scheduled_at_two_thirds_of_the_ttl() {
        let auth = Auth::new(AuthConfig::Cert {
            mount: "cert".into(),
            role: None,
        });
        let obtained = Instant::now();
        auth.update(|s| {
            s.cred = Some(Credential {
                token: Secret::new("t"),
                verified: true,
                ttl: Duration::from_secs(30),
                renewable: true,
                obtained,
            })
        });
        match auth.next_action() {
            Action::RenewAt(at) => assert_eq!(at, obtained + Duration::from_secs(20)),
            _ => panic!("expected a renewal"),
        }
        auth.update(|s| s.needs_login = true);
        assert!(matches!(auth.next_action(), Action::Login));
    }
}
