//! The sidecar's connection to a real OpenBao: namespaces, a renewed token from a file,
//! and a token revoked mid-run (`bao token revoke`) followed by one re-login.

mod common;

use std::time::{Duration, Instant};

use common::{bao_cli, eventually, sign_and_verify, Bao, Sidecar};
use serde_json::{json, Value};

/// A child token with a policy on one key: short TTL, renewable.
async fn child_token(bao: &Bao, ttl: &str, explicit_max_ttl: &str) -> String {
    let auth = bao
        .api(
            "POST",
            "auth/token/create",
            Some(json!({
                "policies": ["sidecar"],
                "ttl": ttl,
                "explicit_max_ttl": explicit_max_ttl,
                "renewable": true,
                "no_parent": true,
            })),
        )
        .await
        .1;
    auth["auth"]["client_token"].as_str().unwrap().to_string()
}

async fn sidecar_policy(bao: &Bao, key: &str) {
    let policy = format!(
        "path \"transit/sign/{key}\" {{ capabilities = [\"update\"] }}\n\
         path \"transit/verify/{key}\" {{ capabilities = [\"update\"] }}\n\
         path \"transit/keys/{key}\" {{ capabilities = [\"read\"] }}\n\
         path \"secret/data/aegis/keys/transit/{key}\" {{ capabilities = [\"read\"] }}\n\
         path \"transit/keys/aegis-retention.{key}\" {{ capabilities = [\"read\"] }}\n"
    );
    bao.api_ok(
        "PUT",
        "sys/policies/acl/sidecar",
        json!({ "policy": policy }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_is_sent_with_every_call() {
    let bao = Bao::dev().await;
    bao.api_ok("POST", "sys/namespaces/ml", json!({})).await;
    bao_cli(&bao, &["secrets", "enable", "-namespace=ml", "transit"]);
    bao_cli(
        &bao,
        &[
            "write",
            "-namespace=ml",
            "-f",
            "transit/keys/ns-key",
            "type=ecdsa-p256",
        ],
    );
    let side = Sidecar::start(&bao, &[("VAULT_NAMESPACE", "ml"), ("AEGIS_KEYS", "ns-key")]).await;
    sign_and_verify(&side, "ns-key", b"in a namespace")
        .await
        .unwrap();
    // Plain HTTP: no ALPN, so HTTP/1.1 (h2c is not attempted towards Vault).
    assert_eq!(side.state.keys.vault().http_version(), Some("HTTP/1.1"));
    side.stop().await;

    // Without the namespace the key is not there: readiness says so.
    let side = Sidecar::start_unready(&bao, &[("AEGIS_KEYS", "ns-key")]).await;
    let reason = eventually(
        Duration::from_secs(10),
        "readiness to name the key",
        || async {
            let (s, b) = side.readyz().await;
            let m = b["errors"][0].as_str().unwrap_or_default().to_string();
            (s == 503 && m.contains("ns-key")).then_some(m)
        },
    )
    .await;
    assert!(reason.contains("cannot load allowlisted key"), "{reason}");
    side.stop().await;
}

/// A token from a file with a 6 s TTL is renewed, then revoked with `bao token revoke`;
/// the file gets a new token and the next request succeeds after one re-login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_is_renewed_and_a_revoked_token_is_replaced() {
    let bao = Bao::dev().await;
    bao.create_key("tok", "ed25519").await;
    sidecar_policy(&bao, "tok").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let first = child_token(&bao, "6s", "1h").await;
    std::fs::write(&file, &first).unwrap();
    let side = Sidecar::start(
        &bao,
        &[
            ("VAULT_TOKEN", ""),
            ("AEGIS_VAULT_TOKEN_FILE", file.to_str().unwrap()),
            ("AEGIS_KEYS", "tok"),
        ],
    )
    .await;

    // Across 13 s (more than two TTLs) every request works: the token is being renewed
    // (at 4 s of 6 s, a margin that holds on a loaded machine).
    let until = Instant::now() + Duration::from_secs(13);
    let mut n = 0;
    while Instant::now() < until {
        sign_and_verify(&side, "tok", format!("m{n}").as_bytes())
            .await
            .unwrap();
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, looked) = bao
        .api("POST", "auth/token/lookup", Some(json!({ "token": first })))
        .await;
    assert!(looked["data"]["ttl"].as_u64().unwrap() > 0, "{looked}");

    // Revoked with the real CLI; the file now holds a new token.
    bao_cli(&bao, &["token", "revoke", &first]);
    let second = child_token(&bao, "1h", "2h").await;
    std::fs::write(&file, &second).unwrap();
    sign_and_verify(&side, "tok", b"after revoke")
        .await
        .unwrap();
    let status = side.state.keys.vault().auth_status();
    assert!(status.authenticated, "{status:?}");
    side.stop().await;
}

/// The response of `auth/token/lookup` for the token a sidecar holds is never needed by a
/// caller: GET on any non-Transit path is refused without reaching Vault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_cannot_reach_the_sidecars_token() {
    let bao = Bao::dev().await;
    let side = Sidecar::start(&bao, &[]).await;
    for path in [
        "auth/token/lookup-self",
        "sys/wrapping/wrap",
        "auth/token/create",
    ] {
        let (s, body): (u16, Value) = side.api("GET", path, None).await;
        assert!((400..500).contains(&s), "{path}: {s} {body}");
        assert!(!body.to_string().contains(&bao.token), "{path}: {body}");
    }
    side.stop().await;
}

/// A loopback stand-in for a rogue or misconfigured Vault node (or a proxy in front of
/// one): every request is answered `307` to `location`'s host. Not a Vault: it only
/// redirects.
async fn redirecting_node(location: String) -> String {
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let to = format!("{location}{}", uri.path());
        async move {
            (
                axum::http::StatusCode::TEMPORARY_REDIRECT,
                [("location", to)],
            )
        }
    });
    serve(app).await
}

/// The attacker's host: counts requests and those that carried `X-Vault-Token`.
async fn token_catcher() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        if headers.contains_key("x-vault-token") {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        async { axum::Json(json!({"data": {}})) }
    });
    (serve(app).await, seen)
}

async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Attacker: controls one of the configured Vault addresses (a compromised node, or a
/// proxy in front of it) and answers every call with a redirect to a host of theirs.
/// The sidecar never follows it there: the token is never sent to the attacker's host,
/// the configured real node serves instead, and with no other node the caller gets a
/// 503 that does not name either host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_to_hosts_not_configured_are_not_followed() {
    use std::sync::atomic::Ordering;
    let bao = Bao::dev().await;
    bao.create_key("redirected", "ed25519").await;
    let (catcher, tokens_caught) = token_catcher().await;
    let rogue = redirecting_node(catcher.clone()).await;

    let addrs = format!("{rogue},{}", bao.addr);
    let side = Sidecar::start(&bao, &[("VAULT_ADDR", ""), ("AEGIS_VAULT_ADDRS", &addrs)]).await;
    sign_and_verify(&side, "redirected", b"through the real node")
        .await
        .unwrap();
    side.stop().await;

    let side = Sidecar::start_unready(
        &bao,
        &[
            ("VAULT_ADDR", ""),
            ("AEGIS_VAULT_ADDRS", &rogue),
            ("AEGIS_VAULT_TIMEOUT", "1s"),
            ("AEGIS_VAULT_TOTAL_TIMEOUT", "1s"),
        ],
    )
    .await;
    let input = common::b64(b"only the rogue node");
    let (status, body) = side
        .api(
            "POST",
            "transit/sign/redirected",
            Some(json!({"input": input})),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    let text = body.to_string();
    assert!(!text.contains(&catcher) && !text.contains(&rogue), "{text}");
    side.stop().await;
    assert_eq!(
        tokens_caught.load(Ordering::SeqCst),
        0,
        "the token reached the attacker's host"
    );
}
