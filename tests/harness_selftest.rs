//! Proves the test-harness pieces in `tests/common/` against REAL OpenBao: the HA cluster
//! (and what standbys answer during a failover), TLS with client-certificate auth, the
//! Kubernetes API stand-in, JWT auth and AppRole. Run with `--nocapture` to see the
//! observed standby answers and timings.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{BaoCluster, ClusterOptions, Reply};
use common::standins::{
    self, api_as, approle, approle_login, approle_wrapped_secret_id, client_token,
    kubernetes_login, transit_policy, unwrap, write_policy, Jwt, JwtSigner, KubernetesApiStandIn,
    ServiceAccount,
};
use common::tls::{cert_login, enable_cert_auth, DevTlsBao, TestPki, TlsBao, TlsOptions};
use common::Bao;
use serde_json::{json, Value};

fn sign_body() -> Value {
    json!({"input": common::b64(b"hello")})
}

/// Asserts `token` may sign with Transit key `k`.
async fn assert_can_sign(bao: &Bao, token: &str) {
    let (s, b) = api_as(bao, token, "POST", "transit/sign/k", Some(sign_body())).await;
    assert_eq!(s, 200, "sign with the login token: {b}");
}

/// Asserts a login was refused with `status` and an error containing `fragment`.
fn assert_refused((status, body): (u16, Value), want: u16, fragment: &str) {
    let error = body["errors"][0].as_str().unwrap_or_default();
    assert!(
        status == want && error.contains(fragment),
        "want {want} {fragment:?}, got {status} {body}"
    );
}

/// A dev server with Transit key `k` and policy `signer` allowing signing with it.
async fn dev_with_signer_policy() -> Bao {
    let bao = Bao::dev().await;
    bao.create_key("k", "ecdsa-p256").await;
    write_policy(&bao, "signer", &transit_policy("k")).await;
    bao
}

// ---------------------------------------------------------------------------------------
// HA cluster

/// "status [Location] [error]" of one reply, or the transport error.
fn describe(r: &Result<Reply, reqwest::Error>) -> String {
    match r {
        Ok(r) => {
            let mut s = r.status.to_string();
            if let Some(l) = &r.location {
                s.push_str(&format!(" Location: {l}"));
            }
            if let Some(e) = r.error() {
                s.push_str(&format!(" {e:?}"));
            }
            s
        }
        Err(e) => format!("transport error: {e}"),
    }
}

/// SIGKILLs the active node, then polls sign, key read and key rotation on every
/// survivor until a new active node is known to all; returns (old active, time to that
/// point, distinct answers).
async fn observe_failover(cluster: &mut BaoCluster) -> (usize, Duration, Vec<String>) {
    let old = cluster.active_index().await.expect("an active node");
    cluster.kill(old);
    let killed = Instant::now();
    let mut seen: Vec<String> = Vec::new();
    let mut note = |what: String| {
        if !seen.contains(&what) {
            eprintln!("  {:>6.2}s {what}", killed.elapsed().as_secs_f64());
            seen.push(what);
        }
    };
    loop {
        for i in cluster.survivors() {
            let sign = cluster
                .raw(i, "POST", "transit/sign/k", Some(sign_body()))
                .await;
            note(format!(
                "node {i} POST transit/sign/k -> {}",
                describe(&sign)
            ));
            let read = cluster.raw(i, "GET", "transit/keys/k", None).await;
            note(format!(
                "node {i} GET transit/keys/k -> {}",
                describe(&read)
            ));
            // A storage write, which a standby never serves itself.
            let write = cluster.raw(i, "POST", "transit/keys/k/rotate", None).await;
            note(format!(
                "node {i} POST transit/keys/k/rotate -> {}",
                describe(&write)
            ));
        }
        if let Some(new) = cluster.active_index().await {
            note(format!("node {new} is active"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let new = cluster.wait_active_among_survivors().await;
    assert_ne!(new, old);
    (old, killed.elapsed(), seen)
}

async fn cluster_failover(opts: ClusterOptions) {
    let t = Instant::now();
    let mut cluster = BaoCluster::start_with(3, opts).await;
    let started = t.elapsed();
    eprintln!("{opts:?}: 3-node cluster up in {started:?}");
    assert_eq!(cluster.addrs().len(), 3);
    cluster.create_key("k", "ecdsa-p256").await;
    let active = cluster.active_index().await.unwrap();

    // Healthy cluster: a standby answers sign and key reads (itself, or by forwarding).
    let standby = (active + 1) % 3;
    let sign = cluster
        .api(standby, "POST", "transit/sign/k", Some(sign_body()))
        .await;
    assert_eq!(sign.status, 200, "standby sign: {:?}", sign.body);
    assert!(sign.body["data"]["signature"].is_string());
    let read = cluster.api(standby, "GET", "transit/keys/k", None).await;
    assert_eq!(read.status, 200, "standby key read: {:?}", read.body);
    // Writes sent to a standby are forwarded to the active node over the cluster port.
    let rotate = cluster
        .api(standby, "POST", "transit/keys/k/rotate", None)
        .await;
    assert_eq!(rotate.status, 200, "standby rotate: {:?}", rotate.body);

    let (old, elected, seen) = observe_failover(&mut cluster).await;
    eprintln!("{opts:?}: new active known to all survivors {elected:?} after SIGKILL");
    assert!(
        elected < Duration::from_secs(15),
        "election took {elected:?}"
    );
    if opts.disable_standby_reads {
        assert!(
            seen.iter().any(|s| s.contains("307 Location:")),
            "standbys redirect to the dead leader: {seen:#?}"
        );
    }
    for i in cluster.survivors() {
        let r = cluster
            .api(i, "POST", "transit/sign/k", Some(sign_body()))
            .await;
        assert_eq!(r.status, 200, "node {i} after failover: {:?}", r.body);
    }

    // The killed node comes back as a standby of the new leader.
    let new = cluster.active_index().await.unwrap();
    cluster.restart(old).await;
    assert_eq!(cluster.survivors().len(), 3);
    assert_eq!(cluster.wait_active_among_survivors().await, new);
    cluster.create_key("after-restart", "ed25519").await;
    assert!(
        started < Duration::from_secs(20),
        "cluster start {started:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_fails_over_with_standby_reads() {
    cluster_failover(ClusterOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_fails_over_with_standby_reads_disabled() {
    cluster_failover(ClusterOptions {
        disable_standby_reads: true,
        ..ClusterOptions::default()
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// TLS and cert auth

#[tokio::test(flavor = "multi_thread")]
async fn tls_bao_cert_auth_needs_no_listener_client_settings() {
    // Neither tls_client_ca_file nor tls_require_and_verify_client_cert: the listener only
    // requests a client certificate, and cert auth verifies it against auth/cert/certs.
    let bao = TlsBao::start(TlsOptions::default()).await;
    assert!(bao.addr.starts_with("https://127.0.0.1:"));
    bao.create_key("k", "ecdsa-p256").await;
    write_policy(&bao, "signer", &transit_policy("k")).await;
    enable_cert_auth(&bao, "aegis", &bao.pki.ca_pem, &["signer"]).await;

    let (s, b) = cert_login(&bao.client(Some(&bao.pki.client)), &bao.addr, Some("aegis")).await;
    let token = client_token(s, &b);
    assert_eq!(b["auth"]["policies"], json!(["default", "signer"]));
    assert_eq!(b["auth"]["metadata"]["common_name"], "aegis-test-client");
    assert_can_sign(&bao, &token).await;

    // Another client certificate from the same CA works too.
    let other = bao.pki.issue_client("second-client");
    let (s, b) = cert_login(&bao.client(Some(&other)), &bao.addr, None).await;
    client_token(s, &b);

    assert_refused(
        cert_login(&bao.client(None), &bao.addr, Some("aegis")).await,
        400,
        "no client certificate found",
    );
    let stranger = TestPki::generate();
    assert_refused(
        cert_login(
            &bao.client(Some(&stranger.client)),
            &bao.addr,
            Some("aegis"),
        )
        .await,
        400,
        "invalid certificate or no client certificate supplied",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_bao_requiring_client_certs_refuses_the_handshake() {
    let bao = TlsBao::start(TlsOptions {
        client_ca_file: true,
        require_client_cert: true,
    })
    .await;
    enable_cert_auth(&bao, "aegis", &bao.pki.ca_pem, &["default"]).await;
    let (s, b) = cert_login(&bao.client(Some(&bao.pki.client)), &bao.addr, None).await;
    client_token(s, &b);

    let url = format!("{}/v1/sys/health", bao.addr);
    let stranger = TestPki::generate();
    for client in [bao.client(None), bao.client(Some(&stranger.client))] {
        let err = client
            .get(&url)
            .send()
            .await
            .expect_err("TLS handshake refused");
        assert!(err.is_connect() || err.is_request(), "{err:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_tls_bao_trusts_its_vault_ca_pem_and_allows_cert_auth() {
    let bao = DevTlsBao::start().await;
    assert!(bao.ca_path.ends_with("vault-ca.pem"));
    let pki = TestPki::generate();
    enable_cert_auth(&bao, "aegis", &pki.ca_pem, &["default"]).await;
    let (s, b) = cert_login(&bao.client(Some(&pki.client)), &bao.addr, None).await;
    client_token(s, &b);
    // Its certificate also names localhost.
    let localhost = bao.addr.replace("127.0.0.1", "localhost");
    let (s, _) = common::call(
        &bao.client(None),
        "GET",
        &format!("{localhost}/v1/sys/health"),
        None,
        None,
    )
    .await;
    assert_eq!(s, 200);
}

// ---------------------------------------------------------------------------------------
// Kubernetes auth through the Kubernetes API stand-in

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_login_through_the_api_standin() {
    let bao = dev_with_signer_policy().await;
    let k8s = KubernetesApiStandIn::start().await;
    let sa = ServiceAccount::new("payments", "aegis");
    k8s.configure_openbao(&bao, "aegis", &sa, &["signer"], Duration::from_secs(600))
        .await;

    let jwt = k8s.issue_token(&sa);
    let (s, b) = kubernetes_login(&bao, "aegis", &jwt).await;
    let token = client_token(s, &b);
    assert_eq!(b["auth"]["metadata"]["service_account_name"], "aegis");
    assert_eq!(
        b["auth"]["metadata"]["service_account_namespace"],
        "payments"
    );
    assert_eq!(b["auth"]["metadata"]["service_account_uid"], json!(sa.uid));
    assert_eq!(b["auth"]["lease_duration"], 600);
    assert_can_sign(&bao, &token).await;
    assert_eq!(k8s.reviews(), 1);
    assert_eq!(k8s.unauthorized_calls(), 0, "OpenBao sent the reviewer JWT");

    // A JWT the API server never issued: the TokenReview says not authenticated.
    let forged = JwtSigner::generate().sign(&json!({
        "iss": "kubernetes/serviceaccount",
        "kubernetes.io/serviceaccount/namespace": "payments",
        "kubernetes.io/serviceaccount/service-account.name": "aegis",
        "kubernetes.io/serviceaccount/service-account.uid": sa.uid,
        "sub": sa.username(),
    }));
    assert_refused(
        kubernetes_login(&bao, "aegis", &forged).await,
        403,
        "permission denied",
    );
    assert_eq!(k8s.reviews(), 2);
    // A revoked token (deleted service account) is refused the same way.
    k8s.revoke_token(&jwt);
    assert_refused(
        kubernetes_login(&bao, "aegis", &jwt).await,
        403,
        "permission denied",
    );
    // A live token of a service account the role is not bound to never reaches a review.
    let other = k8s.issue_token(&ServiceAccount::new("payments", "intruder"));
    assert_refused(
        kubernetes_login(&bao, "aegis", &other).await,
        403,
        "service account name not authorized",
    );
    assert_eq!(k8s.reviews(), 3);
}

// ---------------------------------------------------------------------------------------
// JWT auth

#[tokio::test(flavor = "multi_thread")]
async fn jwt_login_with_a_test_made_key() {
    let bao = dev_with_signer_policy().await;
    let jwt = Jwt::setup(
        &bao,
        "aegis",
        &["signer"],
        Duration::from_secs(300),
        Duration::from_secs(900),
    )
    .await;

    let (s, b) = jwt
        .login(&bao, &jwt.mint("svc-aegis", Duration::from_secs(60)))
        .await;
    let token = client_token(s, &b);
    assert_eq!(b["auth"]["lease_duration"], 300);
    assert_eq!(b["auth"]["policies"], json!(["default", "signer"]));
    assert_can_sign(&bao, &token).await;

    let claims = jwt.claims("svc-aegis", Duration::from_secs(60));
    let other_key = JwtSigner::generate().sign(&claims);
    assert_refused(
        jwt.login(&bao, &other_key).await,
        400,
        "no known key successfully validated the token signature",
    );

    let mut expired = claims.clone();
    expired["exp"] = json!(claims["iat"].as_u64().unwrap() - 5);
    assert_refused(
        jwt.login(&bao, &jwt.signer.sign(&expired)).await,
        400,
        "token is expired",
    );
    let mut wrong_aud = claims;
    wrong_aud["aud"] = json!("someone-else");
    assert_refused(
        jwt.login(&bao, &jwt.signer.sign(&wrong_aud)).await,
        400,
        "audience claim does not match any expected audience",
    );
}

// ---------------------------------------------------------------------------------------
// AppRole

#[tokio::test(flavor = "multi_thread")]
async fn approle_login_and_wrapped_secret_id() {
    let bao = Bao::dev().await;
    bao.create_key("k", "ecdsa-p256").await;
    let (role_id, secret_id) = approle(
        &bao,
        "aegis",
        &transit_policy("k"),
        Duration::from_secs(120),
        Duration::from_secs(600),
    )
    .await;
    let (s, b) = approle_login(&bao, &role_id, &secret_id).await;
    let token = client_token(s, &b);
    assert_eq!(b["auth"]["lease_duration"], 120);
    assert_eq!(b["auth"]["policies"], json!(["aegis", "default"]));
    assert_can_sign(&bao, &token).await;

    let wrapping = approle_wrapped_secret_id(&bao, "aegis", Duration::from_secs(60)).await;
    let (s, b) = unwrap(&bao, &wrapping).await;
    assert_eq!(s, 200, "{b}");
    let unwrapped = b["data"]["secret_id"].as_str().unwrap();
    let (s, b) = approle_login(&bao, &role_id, unwrapped).await;
    client_token(s, &b);
    // A wrapping token is single-use.
    let (s, _) = unwrap(&bao, &wrapping).await;
    assert_eq!(s, 400);

    assert_refused(
        approle_login(&bao, &role_id, "not-a-secret-id").await,
        400,
        "invalid role or secret ID",
    );
    standins::enable_auth(&bao, "approle", "approle").await; // already enabled: fine
}
