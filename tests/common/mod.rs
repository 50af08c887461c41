//! Test harness: a REAL OpenBao server (dev mode, or a persistent file-backed one that
//! survives restarts) and an in-process Aegis sidecar on 127.0.0.1:0. Readiness is
//! polled, never slept for. OpenBao missing is a failure, never a skip.
#![allow(dead_code)]

pub mod audit_log;
pub mod cluster;
pub mod kube_api;
pub mod logs;
pub mod standins;
pub mod tls;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis::api::AppState;
use aegis::config::{Config, Env};
use serde_json::{json, Value};

/// The `bao` binary: $AEGIS_BAO, else the one scripts/install-tools.sh put in .venv.
pub fn bao_bin() -> PathBuf {
    let path = std::env::var_os("AEGIS_BAO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/bao"));
    assert!(
        path.exists(),
        "OpenBao not found at {} (run scripts/install-tools.sh, or set AEGIS_BAO): these tests need a real server",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A client builder that sends `X-Vault-Request: true` with every request, as Vault's own
/// clients do (the sidecar's request-forgery guard answers 412 without it).
pub fn client_builder() -> reqwest::ClientBuilder {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "X-Vault-Request",
        reqwest::header::HeaderValue::from_static("true"),
    );
    reqwest::Client::builder().default_headers(headers)
}

pub fn http() -> reqwest::Client {
    client_builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// (status, JSON body) of one request.
pub async fn call(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut req = client.request(method.parse().unwrap(), url);
    if let Some(t) = token {
        req = req.header("X-Vault-Token", t);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, value)
}

/// A running OpenBao server.
pub struct Bao {
    child: Option<Child>,
    pub port: u16,
    pub addr: String,
    pub token: String,
    storage: Option<tempfile::TempDir>,
    cluster_port: u16,
    unseal_key: String,
    client: reqwest::Client,
}

impl Bao {
    /// `bao server -dev` on a free port, with Transit enabled.
    pub async fn dev() -> Bao {
        Self::dev_with_args(&[]).await
    }

    /// A dev server whose file audit device writes every request to `log` (OpenBao only
    /// accepts audit devices from its configuration file).
    pub async fn dev_audited(log: &std::path::Path) -> Bao {
        let config = log.with_extension("hcl");
        std::fs::write(
            &config,
            format!(
                "audit \"file\" \"test\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
                log.display()
            ),
        )
        .unwrap();
        Self::dev_with_args(&[format!("-config={}", config.display())]).await
    }

    /// `bao server -dev` with extra arguments.
    pub async fn dev_with_args(extra: &[String]) -> Bao {
        let port = free_port();
        let token = format!("root-{}", uuid_like());
        let child = Command::new(bao_bin())
            .args(["server", "-dev", "-dev-no-store-token"])
            .args(extra)
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .arg(format!("-dev-root-token-id={token}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bao -dev");
        let bao = Bao {
            child: Some(child),
            port,
            addr: format!("http://127.0.0.1:{port}"),
            token,
            storage: None,
            cluster_port: 0,
            unseal_key: String::new(),
            client: http(),
        };
        bao.wait_healthy().await;
        bao.api_ok("POST", "sys/mounts/transit", json!({"type": "transit"}))
            .await;
        bao
    }

    /// A non-dev server with file storage: initialised, unsealed, Transit enabled.
    /// Its data survives [`kill`](Self::kill) + [`restart`](Self::restart).
    pub async fn persistent() -> Bao {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut bao = Bao {
            child: None,
            port,
            addr: format!("http://127.0.0.1:{port}"),
            token: String::new(),
            storage: Some(dir),
            cluster_port: free_port(),
            unseal_key: String::new(),
            client: http(),
        };
        bao.spawn_persistent();
        bao.init_unseal_and_mount_transit().await;
        bao
    }

    /// For a freshly started non-dev server: waits for its listener, initialises it (one
    /// key share), keeps the unseal key and root token, unseals, and mounts Transit.
    pub(crate) async fn init_unseal_and_mount_transit(&mut self) {
        self.wait_listening().await;
        let (s, init) = call(
            &self.client,
            "PUT",
            &format!("{}/v1/sys/init", self.addr),
            None,
            Some(&json!({"secret_shares": 1, "secret_threshold": 1})),
        )
        .await;
        assert_eq!(s, 200, "init: {init}");
        self.unseal_key = init["keys"][0].as_str().unwrap().to_string();
        self.token = init["root_token"].as_str().unwrap().to_string();
        self.unseal().await;
        self.api_ok("POST", "sys/mounts/transit", json!({"type": "transit"}))
            .await;
    }

    fn spawn_persistent(&mut self) {
        let dir = self.storage.as_ref().unwrap().path();
        let cfg = dir.join("bao.hcl");
        let data = dir.join("raft");
        std::fs::create_dir_all(&data).unwrap();
        // Single-node raft (OpenBao has no "file" storage); the cluster port is fixed per server.
        let cluster_port = self.cluster_port;
        std::fs::write(
            &cfg,
            format!(
                "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"n1\"\n}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \"127.0.0.1:{cluster_port}\"\n  tls_disable = true\n}}\napi_addr = \"http://127.0.0.1:{port}\"\ncluster_addr = \"http://127.0.0.1:{cluster_port}\"\n",
                data.display(),
                port = self.port,
            ),
        )
        .unwrap();
        let child = Command::new(bao_bin())
            .arg("server")
            .arg(format!("-config={}", cfg.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bao server");
        self.child = Some(child);
    }

    async fn unseal(&self) {
        let (s, b) = call(
            &self.client,
            "PUT",
            &format!("{}/v1/sys/unseal", self.addr),
            None,
            Some(&json!({"key": self.unseal_key})),
        )
        .await;
        assert_eq!(s, 200, "unseal: {b}");
        self.wait_healthy().await;
    }

    /// Polls until the HTTP listener answers at all.
    async fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self
                .client
                .get(format!("{}/v1/sys/seal-status", self.addr))
                .send()
                .await
                .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "OpenBao on {} did not start listening within 30 s",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `sys/health` until active and unsealed.
    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self
                .client
                .get(format!("{}/v1/sys/health", self.addr))
                .send()
                .await
            {
                if r.status().as_u16() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "OpenBao on {} not healthy within 30 s",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        call(
            &self.client,
            method,
            &format!("{}/v1/{path}", self.addr),
            Some(&self.token),
            body.as_ref(),
        )
        .await
    }

    /// A request that must succeed; returns `data`.
    pub async fn api_ok(&self, method: &str, path: &str, body: Value) -> Value {
        let (s, b) = self.api(method, path, Some(body)).await;
        assert!((200..300).contains(&s), "{method} {path}: {s} {b}");
        b.get("data").cloned().unwrap_or(Value::Null)
    }

    /// A signature of `msg` by `key`'s latest version, made at Vault itself.
    pub async fn sign(&self, key: &str, msg: &[u8]) -> String {
        self.api_ok(
            "POST",
            &format!("transit/sign/{key}"),
            json!({ "input": b64(msg) }),
        )
        .await["signature"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub async fn create_key(&self, name: &str, key_type: &str) {
        self.api_ok(
            "POST",
            &format!("transit/keys/{name}"),
            json!({"type": key_type}),
        )
        .await;
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("bao running").id();
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {pid}");
    }

    /// SIGSTOP: the process keeps its socket but answers nothing.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    pub fn resume(&self) {
        self.signal("CONT");
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a killed persistent server again on the same port and storage, and unseals it.
    pub async fn restart(&mut self) {
        assert!(
            self.storage.is_some(),
            "only a persistent server can restart with its data"
        );
        self.kill();
        self.spawn_persistent();
        self.wait_listening().await;
        self.unseal().await;
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A paused child would not die on SIGKILL delivery order issues; resume first.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(c.id().to_string())
                .status();
        }
        self.kill();
    }
}

fn uuid_like() -> String {
    format!("{:x}{:x}", rand_u64(), rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

/// Test environment for `Config::load`.
struct TestEnv(Vec<(String, String)>);

impl Env for TestEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty()) // as the process environment: empty is unset
    }
}

/// An in-process Aegis sidecar bound to 127.0.0.1:0.
pub struct Sidecar {
    pub addr: String,
    pub state: Arc<AppState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    pub client: reqwest::Client,
}

impl Sidecar {
    /// Starts against `bao` with extra settings (`AEGIS_KEYS`, timeouts, ...) and waits
    /// until `/readyz` says ready.
    pub async fn start(bao: &Bao, extra: &[(&str, &str)]) -> Sidecar {
        let s = Self::start_unready(bao, extra).await;
        s.wait_ready().await;
        s
    }

    pub async fn start_unready(bao: &Bao, extra: &[(&str, &str)]) -> Sidecar {
        let mut env = vec![
            ("VAULT_ADDR".to_string(), bao.addr.clone()),
            ("VAULT_TOKEN".to_string(), bao.token.clone()),
            // Every key, unless the test allowlists some (a real sidecar must say which).
            ("AEGIS_KEYS".to_string(), "*".to_string()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let config = Config::load(None, &TestEnv(env)).expect("test config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let state = aegis::server::build_state(config).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(aegis::server::run(listener, state.clone(), async {
            let _ = rx.await;
        }));
        Sidecar {
            addr,
            state,
            shutdown: Some(tx),
            task,
            client: http(),
        }
    }

    /// `GET /readyz`.
    pub async fn readyz(&self) -> (u16, Value) {
        call(
            &self.client,
            "GET",
            &format!("{}/readyz", self.addr),
            None,
            None,
        )
        .await
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (s, _) = self.readyz().await;
            if s == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "sidecar not ready within 30 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A request to the sidecar's Vault API (`path` after `/v1/`), with a bogus caller token.
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        call(
            &self.client,
            method,
            &format!("{}/v1/{path}", self.addr),
            Some("caller-token-is-ignored"),
            body.as_ref(),
        )
        .await
    }

    /// (status, body) of a verify of `sig` over `msg` through the sidecar.
    pub async fn verify(&self, key: &str, msg: &[u8], sig: &str) -> (u16, Value) {
        self.api(
            "POST",
            &format!("transit/verify/{key}"),
            Some(json!({ "input": b64(msg), "signature": sig })),
        )
        .await
    }

    /// The sum of a metric's samples in `/metrics` whose line contains `labels` (every
    /// label set when empty). Needs [`metrics_on`].
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let url = format!("{}/metrics", self.addr);
        let text = self
            .client
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metric_in(&text, name, labels)
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Polls `f` until it returns `Some`, failing after `within`.
/// The sum of the samples of metric `name` whose labels contain `labels` (e.g.
/// `outcome="ok"`), in a Prometheus text exposition.
pub fn metric_in(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with([' ', '{']))
        })
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Base64 (standard, padded), as Transit wants its input.
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn b64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// Runs the real `bao` CLI against `bao` with its root token.
pub fn bao_cli(bao: &Bao, args: &[&str]) -> String {
    let out = Command::new(bao_bin())
        .args(args)
        .env("VAULT_ADDR", &bao.addr)
        .env("VAULT_TOKEN", &bao.token)
        .output()
        .expect("run bao");
    assert!(
        out.status.success(),
        "bao {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Signs `msg` through the sidecar and checks the signature verifies there.
pub async fn sign_and_verify(side: &Sidecar, key: &str, msg: &[u8]) -> Result<(), String> {
    let input = b64(msg);
    let (s, body) = side
        .api(
            "POST",
            &format!("transit/sign/{key}"),
            Some(json!({"input": input})),
        )
        .await;
    if s != 200 {
        return Err(format!("sign: {s} {body}"));
    }
    let sig = body["data"]["signature"].as_str().unwrap_or_default();
    let (s, body) = side
        .api(
            "POST",
            &format!("transit/verify/{key}"),
            Some(json!({"input": input, "signature": sig})),
        )
        .await;
    if s != 200 || body["data"]["valid"] != true {
        return Err(format!("verify: {s} {body}"));
    }
    Ok(())
}

/// A real HTTP audit receiver on 127.0.0.1:`port`: every JSON body POSTed is kept.
pub async fn audit_receiver(port: u16) -> Arc<std::sync::Mutex<Vec<Value>>> {
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let store = got.clone();
    let app = axum::Router::new().route(
        "/audit",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let store = store.clone();
            async move {
                store.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    got
}

/// Runs the real `aegis` binary against `addr` with a clean environment: only
/// `VAULT_ADDR`, text logs at `warn`, and `env`. Returns (exit code, stdout, stderr).
pub fn aegis_cli(addr: &str, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_aegis"))
        .args(args)
        .env_clear()
        .env("VAULT_ADDR", addr)
        .env("AEGIS_LOG_FORMAT", "text")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .expect("run aegis");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Installs the process's meter provider once, before any instrument is created, so that
/// `/metrics` (and `aegis::telemetry::render_metrics`) show the sidecar's metrics.
pub fn metrics_on() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        aegis::telemetry::init(
            aegis::config::LogFormat::Text,
            Some("warn"),
            &aegis::config::TelemetryConfig::default(),
        )
    });
}

/// A real rate-limit quota on `bao`: one request to `path` per `interval`, with OpenBao's
/// rate-limit headers (`Retry-After`) on.
pub async fn one_per(bao: &Bao, path: &str, interval: &str) {
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
