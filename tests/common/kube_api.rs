//! STAND-IN for the Kubernetes API server's resource API (no API server can run here), for
//! `aegis sync`: HTTPS on 127.0.0.1:0 (a fresh self-signed certificate, in the kubeconfig;
//! kubectl sends bearer tokens over TLS only), in-process. It serves what sync and kubectl
//! use, shaped as the real server answers (tests/kube_standin.rs proves it with kubectl
//! 1.37 and kubernetes-validate):
//!
//! - legacy discovery (`/version`, `/api`, `/api/v1`, `/apis`, `/apis/apps/v1`; no
//!   OpenAPI, so kubectl runs with `--validate=false`);
//! - `secrets`, `configmaps` (core/v1), `deployments`, `statefulsets` (apps/v1), all
//!   namespaced: GET, LIST (`labelSelector`, `fieldSelector`, equality-based), POST, PUT,
//!   PATCH (server-side apply, JSON merge, strategic merge), DELETE (with preconditions);
//! - a bearer token on every request (401 `Status` otherwise), optional RBAC-style rules
//!   (403 as RBAC words it), and injected faults with the real `Status` bodies.
//!
//! Every request is recorded ([`Seen`]). The store and its rules are in `store`, field
//! ownership and server-side apply in `fields`, the `Status` bodies in `status`.

mod discovery;
mod fields;
mod status;
mod store;

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{json, Value};

use status::Failure;
use store::{Answer, Kind, Store};

/// The user the stand-in's token authenticates, as RBAC messages name it.
pub const USER: &str = "system:serviceaccount:default:aegis-sync";

/// One request the stand-in answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub method: String,
    /// The URL path, without the query.
    pub path: String,
    /// The raw query string ("" when none).
    pub query: String,
    /// The `Content-Type` header ("" when none).
    pub content_type: String,
    pub status: u16,
    /// The request body as JSON (`Null` when empty or not JSON).
    pub body: Value,
}

/// One rule of a Role: `verbs` on `resources`, limited to `resource_names` when not empty
/// (`"*"` matches any verb or resource).
#[derive(Debug, Clone)]
pub struct Rule {
    pub verbs: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
}

impl Rule {
    pub fn new(verbs: &[&str], resources: &[&str], resource_names: &[&str]) -> Rule {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Rule {
            verbs: own(verbs),
            resources: own(resources),
            resource_names: own(resource_names),
        }
    }

    /// RBAC's match: a rule with resource names never matches a request without a name
    /// (a list, a POST create).
    fn allows(&self, verb: &str, resource: &str, name: &str) -> bool {
        let any = |list: &[String], x: &str| list.iter().any(|v| v == "*" || v == x);
        any(&self.verbs, verb)
            && any(&self.resources, resource)
            && (self.resource_names.is_empty() || self.resource_names.iter().any(|n| n == name))
    }
}

struct Fault {
    method: String,
    resource: String,
    status: u16,
    left: usize,
}

struct Inner {
    store: Store,
    /// Empty: every request is allowed.
    rules: Vec<Rule>,
    faults: Vec<Fault>,
    seen: Vec<Seen>,
}

/// 403 unless `rules` (empty: no restriction) allow `verb` on `kind`'s `name` in `ns`.
fn authorize(rules: &[Rule], verb: &str, kind: &Kind, ns: &str, name: &str) -> Result<(), Failure> {
    if rules.is_empty() || rules.iter().any(|r| r.allows(verb, kind.gr.resource, name)) {
        Ok(())
    } else {
        Err(status::forbidden(&kind.gr, name, USER, verb, ns))
    }
}

struct Shared {
    token: String,
    server: String,
    inner: Mutex<Inner>,
}

pub struct KubeApiStandIn {
    url: String,
    ca_pem: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl KubeApiStandIn {
    /// Serves on 127.0.0.1:0 with the namespace `default`.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap().to_string();
        let shared = Arc::new(Shared {
            token: format!("stand-in-{}", uuid::Uuid::new_v4().simple()),
            server: server.clone(),
            inner: Mutex::new(Inner {
                store: Store::new(),
                rules: Vec::new(),
                faults: Vec::new(),
                seen: Vec::new(),
            }),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let (acceptor, ca_pem) = tls_acceptor();
        let task = tokio::spawn(serve_tls(listener, acceptor, app));
        KubeApiStandIn {
            url: format!("https://{server}"),
            ca_pem,
            shared,
            task,
        }
    }

    /// The PEM of the certificate it serves (self-signed for 127.0.0.1), for clients.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// An HTTP client trusting the stand-in's certificate.
    pub fn client(&self) -> reqwest::Client {
        super::tls::https_client(&self.ca_pem, None)
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The bearer token every request must carry.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// A kubeconfig for this server: one cluster, user (the token) and context, whose
    /// namespace is `default`.
    pub fn write_kubeconfig(&self, path: &Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: aegis-stand-in\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\n\
             users:\n- name: aegis-stand-in\n  user:\n    token: {token}\n\
             contexts:\n- name: aegis-stand-in\n  context:\n    cluster: aegis-stand-in\n    user: aegis-stand-in\n    namespace: default\n\
             current-context: aegis-stand-in\n",
            url = self.url,
            ca = super::b64(self.ca_pem.as_bytes()),
            token = self.shared.token,
        );
        std::fs::write(path, text).unwrap();
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap()
    }

    pub fn add_namespace(&self, ns: &str) {
        self.inner().store.namespaces.insert(ns.to_string());
    }

    /// The stored object, `resource` being `secrets`, `configmaps`, `deployments` or
    /// `statefulsets`.
    pub fn get(&self, resource: &str, ns: &str, name: &str) -> Option<Value> {
        self.inner().store.object(kind(resource), ns, name).cloned()
    }

    /// Seeds `obj` as `kubectl create` would (manager `kubectl-create`, an `Update`),
    /// without recording a request; returns it as stored. Panics with the `Status` if the
    /// server would refuse it.
    pub fn put(&self, resource: &str, ns: &str, obj: Value) -> Value {
        let k = kind(resource);
        match self.inner().store.create(k, ns, obj, "kubectl-create") {
            Ok((_, stored)) => stored,
            Err(f) => panic!("put {resource} in {ns}: {}", f.body),
        }
    }

    /// Every stored object, as the server stores it.
    pub fn objects(&self) -> Vec<Value> {
        self.inner().store.all()
    }

    /// Every request, in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.inner().seen.clone()
    }

    /// The requests that wrote (POST, PUT, PATCH, DELETE) and succeeded (2xx).
    pub fn writes(&self) -> Vec<Seen> {
        let writes = ["POST", "PUT", "PATCH", "DELETE"];
        self.requests()
            .into_iter()
            .filter(|s| writes.contains(&s.method.as_str()) && (200..300).contains(&s.status))
            .collect()
    }

    /// The next `times` requests with `method` on `resource` (any namespace and name) fail
    /// with `status` (401, 403, 404, 409, 429 with `Retry-After: 1`, 500 or 503) and the
    /// `Status` body the server sends for it, before anything is read or written.
    pub fn fail_next(&self, method: &str, resource: &str, status: u16, times: usize) {
        kind(resource);
        self.inner().faults.push(Fault {
            method: method.to_ascii_uppercase(),
            resource: resource.to_string(),
            status,
            left: times,
        });
    }

    /// From now on only what `rules` allow is served (403 Forbidden otherwise), as for a
    /// token bound to a Role with these rules; an empty list lifts the restriction.
    /// Discovery is always allowed (`system:discovery`).
    pub fn restrict(&self, rules: Vec<Rule>) {
        self.inner().rules = rules;
    }
}

impl Drop for KubeApiStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn kind(resource: &str) -> &'static Kind {
    store::lookup(resource).unwrap_or_else(|| panic!("the stand-in does not serve {resource:?}"))
}

/// A request as the stand-in reads it.
struct Req {
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    content_type: String,
    manager: String,
    body: Bytes,
}

impl Req {
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Result<Value, Failure> {
        serde_json::from_slice(&self.body).map_err(|e| {
            status::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let raw_query = uri.query().unwrap_or_default().to_string();
    let query: Vec<(String, String)> = url::form_urlencoded::parse(raw_query.as_bytes())
        .into_owned()
        .collect();
    let user_agent = header("user-agent");
    let manager = query
        .iter()
        .find(|(k, _)| k == "fieldManager")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| user_agent.split('/').next().unwrap_or_default().to_string());
    let req = Req {
        method,
        path: uri.path().to_string(),
        query,
        content_type: header("content-type"),
        manager,
        body,
    };
    let authorized = header("authorization").strip_prefix("Bearer ") == Some(shared.token.as_str());
    let mut inner = shared.inner.lock().unwrap();
    let answer = if authorized {
        answer(&shared.server, &mut inner, &req)
    } else {
        Err(status::unauthorized())
    };
    let (code, resp) = match answer {
        Ok((code, v)) => (
            code,
            (StatusCode::from_u16(code).unwrap(), Json(v)).into_response(),
        ),
        Err(f) => (f.code, f.into_response()),
    };
    inner.seen.push(Seen {
        method: req.method.to_string(),
        path: req.path.clone(),
        query: raw_query,
        content_type: req.content_type.clone(),
        status: code,
        body: serde_json::from_slice(&req.body).unwrap_or(Value::Null),
    });
    resp
}

/// The resource a path names: `/api/v1/namespaces/{ns}/{resource}[/{name}]` or
/// `/apis/apps/v1/namespaces/...`.
fn route(path: &str) -> Option<(&'static Kind, String, Option<String>)> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (api_version, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("v1", rest),
        ["apis", "apps", "v1", rest @ ..] => ("apps/v1", rest),
        _ => return None,
    };
    let (ns, resource, name) = match rest {
        ["namespaces", ns, resource] => (*ns, *resource, None),
        ["namespaces", ns, resource, name] => (*ns, *resource, Some(name.to_string())),
        _ => return None,
    };
    let k = store::lookup(resource).filter(|k| k.api_version == api_version)?;
    Some((k, ns.to_string(), name))
}

fn answer(server: &str, inner: &mut Inner, req: &Req) -> Answer {
    if let Some(doc) = discovery::document(&req.path, server) {
        return match req.method {
            Method::GET => Ok((200, doc)),
            _ => Err(status::method_not_allowed()),
        };
    }
    let (k, ns, name) = route(&req.path).ok_or_else(status::no_such_resource)?;
    let n = name.as_deref().unwrap_or_default();
    let verb = match (&req.method, name.is_some()) {
        (&Method::GET, true) => "get",
        (&Method::GET, false) if req.param("watch").is_some_and(|w| w == "true" || w == "1") => {
            "watch"
        }
        (&Method::GET, false) => "list",
        (&Method::POST, false) => "create",
        (&Method::PUT, true) => "update",
        (&Method::PATCH, true) => "patch",
        (&Method::DELETE, true) => "delete",
        _ => return Err(status::method_not_allowed()),
    };
    if let Some(code) = take_fault(&mut inner.faults, req.method.as_str(), k.gr.resource) {
        return Err(status::injected(code, &k.gr, n, USER, verb, &ns));
    }
    authorize(&inner.rules, verb, k, &ns, n)?;
    let Inner { store, rules, .. } = inner;
    match verb {
        "get" => store.get(k, &ns, n),
        "list" => store.list(
            k,
            &ns,
            req.param("labelSelector").unwrap_or_default(),
            req.param("fieldSelector").unwrap_or_default(),
        ),
        "watch" => Err(status::bad_request(
            "stand-in: watches are not served".into(),
        )),
        "create" => store.create(k, &ns, req.json()?, &req.manager),
        "update" => store.replace(k, &ns, n, req.json()?, &req.manager),
        "delete" => {
            let options = if req.body.is_empty() {
                json!({})
            } else {
                req.json()?
            };
            store.delete(k, &ns, n, &options)
        }
        _ => patch(store, rules, k, &ns, n, req),
    }
}

/// PATCH by its content type: server-side apply, JSON merge, strategic merge; 415 for
/// anything else (JSON patch included: not implemented).
fn patch(
    store: &mut Store,
    rules: &[Rule],
    k: &'static Kind,
    ns: &str,
    name: &str,
    req: &Req,
) -> Answer {
    let media = req
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    let force = req.param("force");
    let invalid_options = |field: &str, reason: &str, msg: &str| {
        let why = (reason, field.to_string(), msg.to_string());
        Err(status::invalid("PatchOptions", "meta.k8s.io", "", &[why]))
    };
    match media {
        "application/apply-patch+yaml" => {
            if req.param("fieldManager").is_none_or(str::is_empty) {
                return invalid_options(
                    "fieldManager",
                    "FieldValueRequired",
                    "Required value: is required for apply patch",
                );
            }
            let config = req.json().map_err(|_| {
                status::bad_request("stand-in: apply bodies are read as JSON (what kubectl and kube-rs send), not YAML".into())
            })?;
            let may_create = || authorize(rules, "create", k, ns, name);
            store.apply(
                k,
                ns,
                name,
                config,
                &req.manager,
                force == Some("true"),
                may_create,
            )
        }
        "application/merge-patch+json" | "application/strategic-merge-patch+json"
            if force.is_some() =>
        {
            invalid_options(
                "force",
                "FieldValueForbidden",
                "Forbidden: may not be specified for non-apply patch",
            )
        }
        "application/merge-patch+json" => {
            store.merge(k, ns, name, &req.json()?, false, &req.manager)
        }
        "application/strategic-merge-patch+json" => {
            store.merge(k, ns, name, &req.json()?, true, &req.manager)
        }
        other => Err(status::unsupported_media_type(other)),
    }
}

/// The status of the first armed fault for `method` on `resource`, disarming it by one.
fn take_fault(faults: &mut [Fault], method: &str, resource: &str) -> Option<u16> {
    let f = faults
        .iter_mut()
        .find(|f| f.left > 0 && f.method == method && f.resource == resource)?;
    f.left -= 1;
    Some(f.status)
}

/// A TLS acceptor with a fresh self-signed certificate for 127.0.0.1, and its PEM.
/// kubectl (client-go) sends bearer tokens over TLS only, so the stand-in serves HTTPS.
fn tls_acceptor() -> (tokio_rustls::TlsAcceptor, String) {
    use rustls_pki_types::pem::PemObject as _;
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let ca_pem = cert.cert.pem();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(
        cert.signing_key.serialize_pem().as_bytes(),
    )
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), ca_pem)
}

/// TCP connections turned into TLS ones, for `axum::serve` (a handshake that fails is
/// dropped and the next connection awaited).
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Serves `app` over TLS.
async fn serve_tls(tcp: tokio::net::TcpListener, acceptor: tokio_rustls::TlsAcceptor, app: Router) {
    axum::serve(TlsListener { tcp, acceptor }, app)
        .await
        .unwrap();
}

/// A tool `scripts/install-kubectl.sh` installs into `.venv/bin` (kubectl,
/// kubernetes-validate); a missing one fails the test.
pub fn tool(name: &str) -> std::path::PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".venv/bin")
        .join(name);
    assert!(
        p.exists(),
        "{} missing: run bash scripts/install-kubectl.sh",
        p.display()
    );
    p
}

/// `kubernetes-validate --strict` (Kubernetes 1.34) on `obj`, written to `dir/name`.
pub fn kubernetes_validate(dir: &Path, name: &str, obj: &Value) -> std::process::Output {
    let file = dir.join(name);
    std::fs::write(&file, obj.to_string()).unwrap();
    std::process::Command::new(tool("kubernetes-validate"))
        .args(["--strict", "-k", "1.34.0"])
        .arg(&file)
        .output()
        .unwrap()
}
