//! Every auth method the sidecar supports, against a real OpenBao: AppRole (plain and
//! response-wrapped secret_id) through renewals, re-logins and a revoked token; JWT with a
//! replaced JWT file; Kubernetes through the TokenReview stand-in (the one stand-in: no
//! cluster runs here); TLS with `-dev-tls` (right CA, wrong CA, server name, skip
//! verify) and mTLS with the cert auth method.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::standins::{
    approle, approle_wrapped_secret_id, transit_policy, write_policy, Jwt, KubernetesApiStandIn,
    ServiceAccount,
};
use common::tls::{enable_cert_auth, DevTlsBao, TestPki};
use common::{bao_cli, eventually, sign_and_verify, Bao, Sidecar};
use serde_json::json;

/// Settings that replace the harness's root token with another auth method.
fn without_token<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = vec![("VAULT_TOKEN", "")];
    v.extend_from_slice(extra);
    v
}

/// Signs and verifies every `pace` until `until`, failing on the first error.
async fn keep_signing(side: &Sidecar, key: &str, until: Instant, pace: Duration) -> usize {
    let mut n = 0;
    while Instant::now() < until {
        let t = Instant::now();
        if let Err(e) = sign_and_verify(side, key, format!("request {n}").as_bytes()).await {
            let status = side.state.keys.vault().auth_status();
            panic!("request {n} failed: {e} (auth: {status:?})");
        }
        n += 1;
        tokio::time::sleep(pace.saturating_sub(t.elapsed())).await;
    }
    n
}

/// Revokes every token that AppRole or JWT logins produced, with the real CLI
/// (`bao token revoke -accessor`), as an operator responding to an incident would.
async fn revoke_login_tokens(bao: &Bao, display_prefix: &str) -> usize {
    let (_, list) = bao.api("LIST", "auth/token/accessors", None).await;
    let mut revoked = 0;
    for accessor in list["data"]["keys"].as_array().unwrap() {
        let accessor = accessor.as_str().unwrap();
        let (_, info) = bao
            .api(
                "POST",
                "auth/token/lookup-accessor",
                Some(json!({ "accessor": accessor })),
            )
            .await;
        let name = info["data"]["display_name"].as_str().unwrap_or_default();
        if name.starts_with(display_prefix) {
            bao_cli(bao, &["token", "revoke", "-accessor", accessor]);
            revoked += 1;
        }
    }
    revoked
}

/// AppRole with token TTL 5 s and max TTL 20 s: a 60 s sign+verify loop has zero
/// failures across renewals, re-logins at the max TTL, and a revocation mid-run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approle_survives_renewals_relogins_and_revocation_for_60s() {
    let bao = Bao::dev().await;
    bao.create_key("ar", "ecdsa-p256").await;
    let (role_id, secret_id) = approle(
        &bao,
        "sidecar",
        &transit_policy("ar"),
        Duration::from_secs(5),
        Duration::from_secs(20),
    )
    .await;
    let side = Sidecar::start(
        &bao,
        &without_token(&[
            ("AEGIS_AUTH_METHOD", "approle"),
            ("VAULT_ROLE_ID", &role_id),
            ("VAULT_SECRET_ID", &secret_id),
            ("AEGIS_KEYS", "ar"),
        ]),
    )
    .await;
    let start = Instant::now();
    let pace = Duration::from_millis(100);
    let mut n = keep_signing(&side, "ar", start + Duration::from_secs(30), pace).await;
    assert!(revoke_login_tokens(&bao, "approle").await >= 1);
    n += keep_signing(&side, "ar", start + Duration::from_secs(60), pace).await;
    assert!(n > 300, "only {n} requests in 60 s");
    let status = side.state.keys.vault().auth_status();
    assert!(status.authenticated, "{status:?}");
    side.stop().await;
}

/// A response-wrapped secret_id is unwrapped once; later logins (after a revocation) reuse
/// the unwrapped secret_id, since the wrapping token works only once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approle_wrapped_secret_id_is_unwrapped_once() {
    let bao = Bao::dev().await;
    bao.create_key("wr", "ed25519").await;
    let (role_id, _) = approle(
        &bao,
        "wrapped",
        &transit_policy("wr"),
        Duration::from_secs(3600),
        Duration::from_secs(7200),
    )
    .await;
    let wrapping = approle_wrapped_secret_id(&bao, "wrapped", Duration::from_secs(60)).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret-id");
    std::fs::write(&file, &wrapping).unwrap();
    let side = Sidecar::start(
        &bao,
        &without_token(&[
            ("AEGIS_AUTH_METHOD", "approle"),
            ("VAULT_ROLE_ID", &role_id),
            ("AEGIS_SECRET_ID_FILE", file.to_str().unwrap()),
            ("AEGIS_SECRET_ID_WRAPPED", "true"),
            ("AEGIS_KEYS", "wr"),
        ]),
    )
    .await;
    sign_and_verify(&side, "wr", b"first login").await.unwrap();
    assert!(revoke_login_tokens(&bao, "approle").await >= 1);
    sign_and_verify(&side, "wr", b"after a re-login")
        .await
        .unwrap();
    side.stop().await;
}

/// JWT auth with a key the test made: the sidecar logs in from a file, and a replaced
/// file is used at the next login (the first JWT expires after 3 s, tokens live 2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_login_picks_up_a_replaced_jwt_file() {
    let bao = Bao::dev().await;
    bao.create_key("jw", "ed25519").await;
    write_policy(&bao, "jw", &transit_policy("jw")).await;
    let jwt = Jwt::setup(
        &bao,
        "sidecar",
        &["jw"],
        Duration::from_secs(2),
        Duration::from_secs(2),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwt");
    write_atomically(&file, &jwt.mint("aegis", Duration::from_secs(3)));
    let side = Sidecar::start(
        &bao,
        &without_token(&[
            ("AEGIS_AUTH_METHOD", "jwt"),
            ("AEGIS_AUTH_ROLE", "sidecar"),
            ("AEGIS_JWT_FILE", file.to_str().unwrap()),
            ("AEGIS_KEYS", "jw"),
        ]),
    )
    .await;
    // The projected-token pattern: the file is replaced before the first JWT expires.
    write_atomically(&file, &jwt.mint("aegis", Duration::from_secs(3600)));
    let until = Instant::now() + Duration::from_secs(8);
    keep_signing(&side, "jw", until, Duration::from_millis(100)).await;
    side.stop().await;

    // A JWT signed by another key is refused: not ready, with Vault's reason.
    let other = Jwt::setup(
        &bao,
        "sidecar",
        &["jw"],
        Duration::from_secs(60),
        Duration::from_secs(60),
    )
    .await;
    // `other` replaced the trusted key; the old signer's JWT no longer verifies.
    write_atomically(&file, &jwt.mint("aegis", Duration::from_secs(3600)));
    drop(other);
    let side = Sidecar::start_unready(
        &bao,
        &without_token(&[
            ("AEGIS_AUTH_METHOD", "jwt"),
            ("AEGIS_AUTH_ROLE", "sidecar"),
            ("AEGIS_JWT_FILE", file.to_str().unwrap()),
        ]),
    )
    .await;
    not_ready_because(&side, "no known key successfully validated").await;
    side.stop().await;
}

/// Kubernetes auth: OpenBao's kubernetes method asks the TokenReview stand-in about the
/// projected service-account token the sidecar reads from its file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_login_through_the_token_review_stand_in() {
    let bao = Bao::dev().await;
    bao.create_key("k8s", "ecdsa-p256").await;
    write_policy(&bao, "k8s", &transit_policy("k8s")).await;
    let api = KubernetesApiStandIn::start().await;
    let sa = ServiceAccount::new("models", "aegis");
    api.configure_openbao(&bao, "model-server", &sa, &["k8s"], Duration::from_secs(60))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    write_atomically(&file, &api.issue_token(&sa));
    let settings = without_token(&[
        ("AEGIS_AUTH_METHOD", "kubernetes"),
        ("AEGIS_AUTH_ROLE", "model-server"),
        ("AEGIS_JWT_FILE", file.to_str().unwrap()),
        ("AEGIS_KEYS", "k8s"),
    ]);
    let side = Sidecar::start(&bao, &settings).await;
    sign_and_verify(&side, "k8s", b"from a pod").await.unwrap();
    assert!(
        api.reviews() >= 1,
        "OpenBao never asked the TokenReview API"
    );
    side.stop().await;

    // A service-account token the cluster no longer accepts: not ready, 403 named.
    let stale = api.issue_token(&sa);
    api.revoke_token(&stale);
    write_atomically(&file, &stale);
    let side = Sidecar::start_unready(&bao, &settings).await;
    not_ready_because(&side, "403").await;
    side.stop().await;
}

/// TLS to `bao server -dev-tls`: its CA works; a wrong CA gives a clear reason; the
/// certificate can be checked against VAULT_TLS_SERVER_NAME; VAULT_SKIP_VERIFY works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_ca_server_name_and_skip_verify() {
    let tls = DevTlsBao::start().await;
    tls.create_key("tls", "ed25519").await;
    let ca = tls.ca_path.to_str().unwrap();
    let side = Sidecar::start(&tls, &[("VAULT_CACERT", ca), ("AEGIS_KEYS", "tls")]).await;
    sign_and_verify(&side, "tls", b"over TLS").await.unwrap();
    // OpenBao offers h2 over TLS: the pooled client speaks it.
    assert_eq!(side.state.keys.vault().http_version(), Some("HTTP/2"));
    side.stop().await;

    // VAULT_CAPATH: a directory holding the CA.
    let capath = tempfile::tempdir().unwrap();
    std::fs::copy(&tls.ca_path, capath.path().join("vault-ca.pem")).unwrap();
    let side = Sidecar::start(&tls, &[("VAULT_CAPATH", capath.path().to_str().unwrap())]).await;
    sign_and_verify(&side, "tls", b"CA from a directory")
        .await
        .unwrap();
    side.stop().await;

    let quick = [
        ("AEGIS_VAULT_TIMEOUT", "1s"),
        ("AEGIS_VAULT_TOTAL_TIMEOUT", "1s"),
    ];
    let other = TestPki::generate();
    let wrong = [
        &quick[..],
        &[("VAULT_CACERT", other.ca_path.to_str().unwrap())],
    ]
    .concat();
    let side = Sidecar::start_unready(&tls, &wrong).await;
    not_ready_because(&side, "invalid peer certificate").await;
    side.stop().await;

    let named = [
        &quick[..],
        &[("VAULT_CACERT", ca), ("VAULT_TLS_SERVER_NAME", "localhost")],
    ]
    .concat();
    let side = Sidecar::start(&tls, &named).await;
    sign_and_verify(&side, "tls", b"name checked")
        .await
        .unwrap();
    side.stop().await;

    let misnamed = [
        &quick[..],
        &[
            ("VAULT_CACERT", ca),
            ("VAULT_TLS_SERVER_NAME", "vault.elsewhere"),
        ],
    ]
    .concat();
    let side = Sidecar::start_unready(&tls, &misnamed).await;
    not_ready_because(&side, "certificate").await;
    side.stop().await;

    let skip = [
        &quick[..],
        &[
            ("VAULT_CACERT", other.ca_path.to_str().unwrap()),
            ("VAULT_SKIP_VERIFY", "true"),
        ],
    ]
    .concat();
    let side = Sidecar::start(&tls, &skip).await;
    sign_and_verify(&side, "tls", b"unverified").await.unwrap();
    side.stop().await;
}

/// mTLS: the cert auth method logs the sidecar in with its client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_auth_with_a_client_certificate() {
    let tls = DevTlsBao::start().await;
    tls.create_key("mtls", "ecdsa-p256").await;
    write_policy(&tls, "mtls", &transit_policy("mtls")).await;
    let pki = TestPki::generate();
    enable_cert_auth(&tls, "sidecar", &pki.ca_pem, &["mtls"]).await;
    let side = Sidecar::start(
        &tls,
        &without_token(&[
            ("AEGIS_AUTH_METHOD", "cert"),
            ("AEGIS_AUTH_ROLE", "sidecar"),
            ("VAULT_CACERT", tls.ca_path.to_str().unwrap()),
            ("VAULT_CLIENT_CERT", pki.client.cert_path.to_str().unwrap()),
            ("VAULT_CLIENT_KEY", pki.client.key_path.to_str().unwrap()),
            ("AEGIS_KEYS", "mtls"),
        ]),
    )
    .await;
    sign_and_verify(&side, "mtls", b"client certificate")
        .await
        .unwrap();
    side.stop().await;

    // A client certificate from a CA Vault does not trust: refused, not ready.
    let stranger = TestPki::generate();
    let side = Sidecar::start_unready(
        &tls,
        &without_token(&[
            ("AEGIS_AUTH_METHOD", "cert"),
            ("VAULT_CACERT", tls.ca_path.to_str().unwrap()),
            (
                "VAULT_CLIENT_CERT",
                stranger.client.cert_path.to_str().unwrap(),
            ),
            (
                "VAULT_CLIENT_KEY",
                stranger.client.key_path.to_str().unwrap(),
            ),
        ]),
    )
    .await;
    not_ready_because(&side, "invalid certificate").await;
    side.stop().await;
}

/// Polls `/readyz` until it is 503 with a reason containing `needle`.
async fn not_ready_because(side: &Sidecar, needle: &str) {
    eventually(Duration::from_secs(15), needle, || async {
        let (s, b) = side.readyz().await;
        let reason = b["errors"][0].as_str().unwrap_or_default();
        (s == 503 && reason.contains(needle)).then_some(())
    })
    .await;
}

/// Replaces a credential file the way kubelet does (write elsewhere, rename).
fn write_atomically(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Refused logins back off (1 s, doubling, jittered): over 4 s a wrong secret_id is tried
/// a handful of times, not thousands, and readiness names the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_logins_back_off() {
    let bao = Bao::dev().await;
    let (role_id, _) = approle(
        &bao,
        "refused",
        &transit_policy("none"),
        Duration::from_secs(60),
        Duration::from_secs(60),
    )
    .await;
    let side = Sidecar::start_unready(
        &bao,
        &without_token(&[
            ("AEGIS_AUTH_METHOD", "approle"),
            ("VAULT_ROLE_ID", &role_id),
            ("VAULT_SECRET_ID", "not-the-secret-id"),
        ]),
    )
    .await;
    not_ready_because(&side, "approle login failed").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let failures = side.state.keys.vault().auth_status().login_failures;
    assert!(
        (2..=5).contains(&failures),
        "{failures} login attempts in about 4 s"
    );
    side.stop().await;
}
