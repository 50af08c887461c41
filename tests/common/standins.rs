//! Auth-method fixtures for a REAL OpenBao: policies, AppRole (with response-wrapped
//! secret IDs), JWT auth with a test-made ES256 key, and Kubernetes auth.
//!
//! Kubernetes auth needs a Kubernetes API server to answer TokenReviews, and no cluster
//! runs here, so [`KubernetesApiStandIn`] is the ONE stand-in: a small axum server that
//! answers `POST /apis/authentication.k8s.io/v1/tokenreviews` like the Kubernetes API
//! does. OpenBao itself is never mocked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};

use super::{call, Bao};

// ---------------------------------------------------------------------------------------
// Generic helpers

/// Enables auth method `kind` at `auth/<path>`; already enabled is fine.
pub async fn enable_auth(bao: &Bao, path: &str, kind: &str) {
    let (s, b) = bao
        .api(
            "POST",
            &format!("sys/auth/{path}"),
            Some(json!({"type": kind})),
        )
        .await;
    let already = b["errors"].to_string().contains("path is already in use");
    assert!(
        (200..300).contains(&s) || already,
        "enable auth {kind} at {path}: {s} {b}"
    );
}

/// Writes ACL policy `name`.
pub async fn write_policy(bao: &Bao, name: &str, hcl: &str) {
    bao.api_ok(
        "PUT",
        &format!("sys/policies/acl/{name}"),
        json!({"policy": hcl}),
    )
    .await;
}

/// A policy allowing Transit sign/verify and key reads for `key`, and reading its
/// retention record and endorsement key (as the sidecar needs; see
/// deploy/vault/aegis-sidecar.hcl).
pub fn transit_policy(key: &str) -> String {
    format!(
        r#"path "transit/sign/{key}" {{ capabilities = ["update"] }}
path "transit/sign/{key}/*" {{ capabilities = ["update"] }}
path "transit/verify/{key}" {{ capabilities = ["update"] }}
path "transit/verify/{key}/*" {{ capabilities = ["update"] }}
path "transit/keys/{key}" {{ capabilities = ["read"] }}
path "secret/data/aegis/keys/transit/{key}" {{ capabilities = ["read"] }}
path "transit/keys/aegis-retention.{key}" {{ capabilities = ["read"] }}
path "secret/detailed-metadata/aegis/keys/transit/" {{ capabilities = ["list"] }}
"#
    )
}

/// A login without a Vault token (`path` after `/v1/`): (status, body).
pub async fn login(bao: &Bao, path: &str, body: Value) -> (u16, Value) {
    call(
        &bao.client,
        "POST",
        &format!("{}/v1/{path}", bao.addr),
        None,
        Some(&body),
    )
    .await
}

/// A request made with `token` instead of the root token (`path` after `/v1/`), through
/// the server's own client (so it also works for the TLS servers): (status, body).
pub async fn api_as(
    bao: &Bao,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    call(
        &bao.client,
        method,
        &format!("{}/v1/{path}", bao.addr),
        Some(token),
        body.as_ref(),
    )
    .await
}

/// `auth.client_token` of a successful login, with a readable failure otherwise.
pub fn client_token(status: u16, body: &Value) -> String {
    assert_eq!(status, 200, "login failed: {body}");
    body["auth"]["client_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no auth.client_token in {body}"))
        .to_string()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore as _;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------
// AppRole

/// Enables AppRole, writes policy `<role>` from `policy_hcl`, creates role `<role>` with
/// that policy and the token TTLs, and returns `(role_id, secret_id)`.
pub async fn approle(
    bao: &Bao,
    role: &str,
    policy_hcl: &str,
    token_ttl: Duration,
    token_max_ttl: Duration,
) -> (String, String) {
    enable_auth(bao, "approle", "approle").await;
    write_policy(bao, role, policy_hcl).await;
    bao.api_ok(
        "POST",
        &format!("auth/approle/role/{role}"),
        json!({
            "token_policies": [role],
            "token_ttl": token_ttl.as_secs(),
            "token_max_ttl": token_max_ttl.as_secs(),
        }),
    )
    .await;
    let role_id = bao
        .api_ok(
            "GET",
            &format!("auth/approle/role/{role}/role-id"),
            json!({}),
        )
        .await["role_id"]
        .as_str()
        .unwrap()
        .to_string();
    let secret_id = bao
        .api_ok(
            "POST",
            &format!("auth/approle/role/{role}/secret-id"),
            json!({}),
        )
        .await["secret_id"]
        .as_str()
        .unwrap()
        .to_string();
    (role_id, secret_id)
}

/// A new secret ID for `role`, response-wrapped (`X-Vault-Wrap-TTL`): returns the
/// single-use wrapping token; [`unwrap`] it to get `{"secret_id", "secret_id_accessor", ...}`.
pub async fn approle_wrapped_secret_id(bao: &Bao, role: &str, wrap_ttl: Duration) -> String {
    let resp = bao
        .client
        .post(format!(
            "{}/v1/auth/approle/role/{role}/secret-id",
            bao.addr
        ))
        .header("X-Vault-Token", &bao.token)
        .header("X-Vault-Wrap-TTL", format!("{}s", wrap_ttl.as_secs()))
        .json(&json!({}))
        .send()
        .await
        .expect("wrapped secret-id request");
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "wrapped secret-id: {body}");
    body["wrap_info"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no wrap_info.token in {body}"))
        .to_string()
}

/// `sys/wrapping/unwrap` with the wrapping token itself: (status, body).
pub async fn unwrap(bao: &Bao, wrapping_token: &str) -> (u16, Value) {
    call(
        &bao.client,
        "POST",
        &format!("{}/v1/sys/wrapping/unwrap", bao.addr),
        Some(wrapping_token),
        Some(&json!({})),
    )
    .await
}

/// `auth/approle/login`: (status, body).
pub async fn approle_login(bao: &Bao, role_id: &str, secret_id: &str) -> (u16, Value) {
    login(
        bao,
        "auth/approle/login",
        json!({"role_id": role_id, "secret_id": secret_id}),
    )
    .await
}

// ---------------------------------------------------------------------------------------
// JWT

/// An ES256 (P-256) key that signs compact JWS/JWTs.
pub struct JwtSigner {
    key: EcdsaKeyPair,
    public_key_pem: String,
}

impl JwtSigner {
    pub fn generate() -> JwtSigner {
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let spki = key.public_key().as_der().unwrap();
        let public_key_pem = pem("PUBLIC KEY", spki.as_ref());
        JwtSigner {
            key,
            public_key_pem,
        }
    }

    /// SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn public_key_pem(&self) -> &str {
        &self.public_key_pem
    }

    /// A compact JWS `header.claims.signature` with `{"alg":"ES256","typ":"JWT"}`.
    pub fn sign(&self, claims: &Value) -> String {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let header = json!({"alg": "ES256", "typ": "JWT"});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self
            .key
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", b64(sig.as_ref()))
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// OpenBao JWT auth at `auth/jwt`, trusting one test-made ES256 key (`jwt_validation_pubkeys`)
/// with `bound_issuer`, and a `role_type = "jwt"` role (`user_claim = "sub"`,
/// `bound_audiences`). Leeways are disabled (`-1`), so `exp`/`nbf` are enforced exactly.
pub struct Jwt {
    pub signer: JwtSigner,
    pub issuer: String,
    pub audience: String,
    pub role: String,
}

impl Jwt {
    /// Configures `auth/jwt` (replacing any earlier config on that mount) and role `role`.
    pub async fn setup(
        bao: &Bao,
        role: &str,
        policies: &[&str],
        token_ttl: Duration,
        token_max_ttl: Duration,
    ) -> Jwt {
        let jwt = Jwt {
            signer: JwtSigner::generate(),
            issuer: "https://issuer.aegis.test".to_string(),
            audience: "aegis".to_string(),
            role: role.to_string(),
        };
        enable_auth(bao, "jwt", "jwt").await;
        bao.api_ok(
            "POST",
            "auth/jwt/config",
            json!({
                "jwt_validation_pubkeys": [jwt.signer.public_key_pem()],
                "bound_issuer": jwt.issuer,
            }),
        )
        .await;
        bao.api_ok(
            "POST",
            &format!("auth/jwt/role/{role}"),
            json!({
                "role_type": "jwt",
                "user_claim": "sub",
                "bound_audiences": [jwt.audience],
                "token_policies": policies,
                "token_ttl": token_ttl.as_secs(),
                "token_max_ttl": token_max_ttl.as_secs(),
                "expiration_leeway": -1,
                "not_before_leeway": -1,
                "clock_skew_leeway": -1,
            }),
        )
        .await;
        jwt
    }

    /// Claims this role accepts: `iss`, `aud`, `sub`, `iat`, `nbf`, and `exp = now + ttl`.
    pub fn claims(&self, sub: &str, ttl: Duration) -> Value {
        let now = now_secs();
        json!({
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "iat": now,
            "nbf": now,
            "exp": now + ttl.as_secs(),
        })
    }

    /// A valid JWT for `sub`, expiring in `ttl`.
    pub fn mint(&self, sub: &str, ttl: Duration) -> String {
        self.signer.sign(&self.claims(sub, ttl))
    }

    /// `auth/jwt/login` with this role: (status, body).
    pub async fn login(&self, bao: &Bao, jwt: &str) -> (u16, Value) {
        login(
            bao,
            "auth/jwt/login",
            json!({"role": self.role, "jwt": jwt}),
        )
        .await
    }
}

// ---------------------------------------------------------------------------------------
// Kubernetes

/// A Kubernetes service account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl ServiceAccount {
    /// A service account with a fresh UID.
    pub fn new(namespace: &str, name: &str) -> ServiceAccount {
        let h = random_hex(16);
        ServiceAccount {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            ),
        }
    }

    /// `system:serviceaccount:<namespace>:<name>`.
    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

struct StandInState {
    /// Live tokens (issued, not revoked) and whom they authenticate.
    tokens: Mutex<HashMap<String, ServiceAccount>>,
    reviews: AtomicUsize,
    unauthorized: AtomicUsize,
}

/// STAND-IN for the Kubernetes API server (the one non-real component of the harness; no
/// Kubernetes cluster runs here). Plain HTTP on 127.0.0.1:0, one route:
/// `POST /apis/authentication.k8s.io/v1/tokenreviews`.
///
/// - The caller must present `Authorization: Bearer <token>` with a live token (the
///   reviewer JWT OpenBao is configured with, or — without one — the reviewed JWT
///   itself); otherwise 401 with a `Status` object, as the API server does.
/// - A TokenReview of a live token returns `status.authenticated = true` and
///   `user {username: system:serviceaccount:<ns>:<sa>, uid, groups}`, echoing
///   `spec.audiences` as `status.audiences`; any other token gets
///   `authenticated = false` with `error`.
///
/// Tokens are JWT-shaped (legacy secret-based service-account claims, ES256-signed by the
/// stand-in's own key, which OpenBao does not verify unless `pem_keys` is configured).
pub struct KubernetesApiStandIn {
    /// `http://127.0.0.1:PORT`, for `kubernetes_host`.
    pub url: String,
    /// A throwaway CA PEM for `kubernetes_ca_cert`, which OpenBao 2.7.2 requires outside a
    /// pod even for an `http://` host (it is not used for plain HTTP).
    pub ca_pem: String,
    reviewer_jwt: String,
    signer: JwtSigner,
    state: Arc<StandInState>,
    task: tokio::task::JoinHandle<()>,
}

impl KubernetesApiStandIn {
    pub async fn start() -> KubernetesApiStandIn {
        let state = Arc::new(StandInState {
            tokens: Mutex::new(HashMap::new()),
            reviews: AtomicUsize::new(0),
            unauthorized: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route(
                "/apis/authentication.k8s.io/v1/tokenreviews",
                post(token_review),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        let ca_pem = rcgen::generate_simple_self_signed(vec!["kubernetes.default.svc".into()])
            .unwrap()
            .cert
            .pem();
        let mut standin = KubernetesApiStandIn {
            url,
            ca_pem,
            reviewer_jwt: String::new(),
            signer: JwtSigner::generate(),
            state,
            task,
        };
        standin.reviewer_jwt = standin.issue_token(&ServiceAccount::new(
            "kube-system",
            "openbao-token-reviewer",
        ));
        standin
    }

    /// The token-reviewer service account's JWT, for `token_reviewer_jwt`.
    pub fn reviewer_jwt(&self) -> &str {
        &self.reviewer_jwt
    }

    /// The stand-in's service-account signing key (usable as `pem_keys`).
    pub fn signing_key_pem(&self) -> &str {
        self.signer.public_key_pem()
    }

    /// Mints a service-account JWT for `sa` and makes it live (reviews authenticate it).
    pub fn issue_token(&self, sa: &ServiceAccount) -> String {
        let token = self.signer.sign(&json!({
            "iss": "kubernetes/serviceaccount",
            "sub": sa.username(),
            "kubernetes.io/serviceaccount/namespace": sa.namespace,
            "kubernetes.io/serviceaccount/secret.name": format!("{}-token-{}", sa.name, random_hex(3)),
            "kubernetes.io/serviceaccount/service-account.name": sa.name,
            "kubernetes.io/serviceaccount/service-account.uid": sa.uid,
        }));
        self.state
            .tokens
            .lock()
            .unwrap()
            .insert(token.clone(), sa.clone());
        token
    }

    /// Invalidates a token, as deleting its service account or secret would.
    pub fn revoke_token(&self, token: &str) {
        self.state.tokens.lock().unwrap().remove(token);
    }

    /// TokenReviews answered (authenticated or not).
    pub fn reviews(&self) -> usize {
        self.state.reviews.load(Ordering::SeqCst)
    }

    /// Calls refused with 401 for lack of a live bearer token.
    pub fn unauthorized_calls(&self) -> usize {
        self.state.unauthorized.load(Ordering::SeqCst)
    }

    /// Enables `auth/kubernetes`, points it at this stand-in (`kubernetes_host`,
    /// `kubernetes_ca_cert`, `token_reviewer_jwt`, `disable_local_ca_jwt = true`), and
    /// creates `role` bound to `sa`'s name and namespace with `policies`.
    pub async fn configure_openbao(
        &self,
        bao: &Bao,
        role: &str,
        sa: &ServiceAccount,
        policies: &[&str],
        token_ttl: Duration,
    ) {
        enable_auth(bao, "kubernetes", "kubernetes").await;
        bao.api_ok(
            "POST",
            "auth/kubernetes/config",
            json!({
                "kubernetes_host": self.url,
                "kubernetes_ca_cert": self.ca_pem,
                "token_reviewer_jwt": self.reviewer_jwt,
                "disable_local_ca_jwt": true,
            }),
        )
        .await;
        bao.api_ok(
            "POST",
            &format!("auth/kubernetes/role/{role}"),
            json!({
                "bound_service_account_names": [sa.name],
                "bound_service_account_namespaces": [sa.namespace],
                "token_policies": policies,
                "token_ttl": token_ttl.as_secs(),
            }),
        )
        .await;
    }
}

impl Drop for KubernetesApiStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `auth/kubernetes/login`: (status, body).
pub async fn kubernetes_login(bao: &Bao, role: &str, jwt: &str) -> (u16, Value) {
    login(
        bao,
        "auth/kubernetes/login",
        json!({"role": role, "jwt": jwt}),
    )
    .await
}

async fn token_review(
    State(state): State<Arc<StandInState>>,
    headers: HeaderMap,
    Json(review): Json<Value>,
) -> Response {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let spec = review.get("spec").cloned().unwrap_or_else(|| json!({}));
    let token = spec["token"].as_str().unwrap_or_default();
    let (caller_ok, reviewed) = {
        let tokens = state.tokens.lock().unwrap();
        let caller_ok = bearer.is_some_and(|b| tokens.contains_key(b));
        (caller_ok, tokens.get(token).cloned())
    };
    if !caller_ok {
        state.unauthorized.fetch_add(1, Ordering::SeqCst);
        let status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "Unauthorized",
            "reason": "Unauthorized",
            "code": 401,
        });
        return (StatusCode::UNAUTHORIZED, Json(status)).into_response();
    }
    state.reviews.fetch_add(1, Ordering::SeqCst);
    let audiences = spec
        .get("audiences")
        .filter(|a| a.as_array().is_some_and(|a| !a.is_empty()))
        .cloned()
        .unwrap_or_else(|| json!(["https://kubernetes.default.svc.cluster.local"]));
    let status = match reviewed {
        Some(sa) => json!({
            "authenticated": true,
            "user": {
                "username": sa.username(),
                "uid": sa.uid,
                "groups": [
                    "system:serviceaccounts",
                    format!("system:serviceaccounts:{}", sa.namespace),
                    "system:authenticated",
                ],
            },
            "audiences": audiences,
        }),
        None => json!({"user": {}, "error": "[invalid bearer token, token lookup failed]"}),
    };
    let body = json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": status,
    });
    (StatusCode::CREATED, Json(body)).into_response()
}
