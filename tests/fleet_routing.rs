//! Issue 17, fleet scale, against a REAL OpenBao dev server with real rate-limit quotas:
//! on `transit/sign`, the caller gets Vault's 429 with `Retry-After` in Vault's error
//! shape, and `VaultClient::pace` holds background calls back until the time the 429
//! asked for; a login answered 429 makes the client wait at least Vault's `Retry-After`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis::config::{AuthConfig, Secret, SecretSource, TlsConfig, VaultConfig};
use aegis::vault::{VaultClient, VaultError};
use common::{b64, Bao, Sidecar};
use serde_json::{json, Value};

const TOTAL_TIMEOUT: Duration = Duration::from_secs(5);

fn vault_config(addrs: &str, token: &str) -> VaultConfig {
    VaultConfig {
        addrs: addrs.split(',').map(str::to_string).collect(),
        auth: AuthConfig::Token {
            token: SecretSource::Value(Secret::new(token)),
        },
        tls: TlsConfig::default(),
        namespace: None,
        timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_millis(500),
        total_timeout: TOTAL_TIMEOUT,
    }
}

/// A real rate-limit quota on `bao`: one request to `path` per `interval`, with OpenBao's
/// rate-limit headers (`Retry-After`) on.
async fn one_per(bao: &Bao, path: &str, interval: &str) {
    bao.api_ok(
        "POST",
        "sys/quotas/config",
        json!({"enable_rate_limit_response_headers": true}),
    )
    .await;
    bao.api_ok(
        "POST",
        &format!("sys/quotas/rate-limit/{}", path.replace('/', "-")),
        json!({"rate": 1, "interval": interval, "path": path}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vaults_429_reaches_the_caller_and_paces_background_calls() {
    let bao = Bao::dev().await;
    bao.create_key("k", "ed25519").await;
    one_per(&bao, "transit/sign/k", "3s").await;
    let side = Sidecar::start(&bao, &[("AEGIS_KEYS", "k")]).await;
    let vault = side.state.keys.vault_arc();
    assert_eq!(vault.paced_until(), None);
    let url = format!("{}/v1/transit/sign/k", side.addr);
    let body = json!({"input": b64(b"hello")});
    let first = side.client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(first.status(), 200);

    let sent = Instant::now();
    let refused = side.client.post(&url).json(&body).send().await.unwrap();
    let answered = Instant::now();
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let text = refused.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v,
        json!({"errors": ["request path \"transit/sign/k\": rate limit quota exceeded"]}),
        "Vault's own message and shape: {text}"
    );

    // The client holds background calls back: at least 1 s from the 429, what the
    // caller was told (rounded up), and never past the cap.
    let until = vault.paced_until().expect("paced after a 429");
    assert!(until >= sent + Duration::from_secs(1), "{:?}", until - sent);
    let wait = until - answered;
    assert!(
        (1..=3).contains(&retry_after) && wait <= Duration::from_secs(retry_after),
        "Retry-After {retry_after} s, paced for {wait:?}"
    );
    let started = Instant::now();
    vault.pace().await;
    let waited = started.elapsed();
    assert!(Instant::now() >= until && waited >= until - started);
    assert!(waited >= Duration::from_millis(500), "{waited:?}");
    assert_eq!(vault.paced_until(), None);
    // Background calls go on after the pause (the quota is on sign only).
    let key = vault
        .request(reqwest::Method::GET, "transit/keys/k", None)
        .await
        .unwrap();
    assert_eq!(key["name"], "k");
    side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_answered_429_waits_at_least_vaults_retry_after() {
    let bao = Bao::dev().await;
    bao.api_ok("POST", "sys/auth/approle", json!({"type": "approle"}))
        .await;
    bao.api_ok(
        "POST",
        "auth/approle/role/aegis",
        json!({"token_policies": ["default"], "token_ttl": "1h"}),
    )
    .await;
    let role_id = bao
        .api_ok("GET", "auth/approle/role/aegis/role-id", json!({}))
        .await["role_id"]
        .as_str()
        .unwrap()
        .to_string();
    let secret_id = bao
        .api_ok("POST", "auth/approle/role/aegis/secret-id", json!({}))
        .await["secret_id"]
        .as_str()
        .unwrap()
        .to_string();
    one_per(&bao, "auth/approle/login", "60s").await;
    let vault = Arc::new(
        VaultClient::new(&VaultConfig {
            auth: AuthConfig::AppRole {
                mount: "approle".into(),
                role_id: SecretSource::Value(Secret::new(&role_id)),
                secret_id: SecretSource::Value(Secret::new(&secret_id)),
                secret_id_wrapped: false,
            },
            ..vault_config(&bao.addr, "")
        })
        .unwrap(),
    );
    vault.login().await.unwrap();
    let sent = Instant::now();
    let refused = vault.login().await.unwrap_err();
    let VaultError::RateLimited {
        retry_after: Some(wait),
        ..
    } = &refused
    else {
        panic!("expected a 429: {refused:?}")
    };
    // Vault's Retry-After for a 60 s window just opened is over 50 s (whole seconds).
    assert!(*wait >= Duration::from_secs(50), "{wait:?}");
    let until = vault.paced_until().expect("paced");
    assert!(
        until >= sent + Duration::from_secs(50),
        "{:?}",
        until - sent
    );
    assert!(until <= Instant::now() + Duration::from_secs(60), "capped");
    // The credential from the first login is kept: a 429 is not a refusal.
    assert!(vault.auth_status().authenticated);
}
