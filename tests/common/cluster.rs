//! A REAL multi-node OpenBao HA cluster on loopback: `n` non-dev `bao server` processes
//! with integrated (raft) storage in one temp dir, node 0 initialised (one key share) and
//! every node unsealed, joined, promoted to raft voter, with Transit mounted.
//!
//! Raft is tuned for tests (`performance_multiplier = 1`, fast autopilot intervals, a 1 s
//! server stabilisation time) so the cluster starts in a few seconds and re-elects a
//! leader within ~3 s of the active node dying (OpenBao's defaults take ~19 s).
//!
//! Every node is a [`Bao`] whose client does NOT follow redirects, so what a standby
//! answers (a 307 to a dead leader, say) is what the test sees. All processes die with
//! the [`BaoCluster`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{bao_bin, call, Bao};

/// How long any one cluster operation (start, election, replication) may take.
const DEADLINE: Duration = Duration::from_secs(30);
/// Poll interval for readiness checks.
const POLL: Duration = Duration::from_millis(20);

/// Cluster-wide server settings.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClusterOptions {
    /// `disable_standby_reads = true`: standbys forward every request to the active node
    /// (and answer 307 to the last known leader when they cannot). OpenBao 2.7's default
    /// (`false`) lets standbys serve requests that do not write storage themselves,
    /// including `transit/sign` and `GET transit/keys/<key>`.
    pub disable_standby_reads: bool,
    /// A file audit device on every node (`audit.log` in the node's directory; the
    /// audit table is shared, so the path is relative to each node's working directory):
    /// what each node handled itself is counted with [`BaoCluster::audited`].
    pub audit: bool,
}

/// A response seen without following redirects.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    /// The `Location` header, if any (307s from standbys).
    pub location: Option<String>,
    /// JSON body; `Value::Null` when empty, `Value::String` when not JSON.
    pub body: Value,
}

impl Reply {
    /// The first entry of Vault's `{"errors": [...]}`, if any.
    pub fn error(&self) -> Option<&str> {
        self.body["errors"].get(0).and_then(Value::as_str)
    }
}

/// A client that never follows redirects, with a short timeout (a paused or dead node
/// must not stall a poll loop).
pub fn http_no_redirect() -> reqwest::Client {
    super::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// One request, redirects not followed; `Err` on a transport failure (refused, reset,
/// timeout) so callers can observe a dead node instead of panicking.
pub async fn raw_call(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<Reply, reqwest::Error> {
    let mut req = client.request(method.parse().unwrap(), url);
    if let Some(t) = token {
        req = req.header("X-Vault-Token", t);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = resp.text().await?;
    let body = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Ok(Reply {
        status,
        location,
        body,
    })
}

/// `count` distinct free loopback ports (all bound at once, then released).
pub fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

struct NodeFiles {
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

/// A running OpenBao raft cluster. See the module docs.
pub struct BaoCluster {
    // Field order matters: nodes (processes) are dropped before their storage dir.
    nodes: Vec<Bao>,
    files: Vec<NodeFiles>,
    token: String,
    unseal_key: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl BaoCluster {
    /// `n` nodes with OpenBao's default standby behaviour (standby reads enabled).
    pub async fn start(n: usize) -> BaoCluster {
        Self::start_with(n, ClusterOptions::default()).await
    }

    pub async fn start_with(n: usize, opts: ClusterOptions) -> BaoCluster {
        assert!(n >= 1, "a cluster needs at least one node");
        let dir = tempfile::tempdir().unwrap();
        let client = http_no_redirect();
        let mut nodes = Vec::with_capacity(n);
        let mut files = Vec::with_capacity(n);
        let ports = free_ports(2 * n);
        for (i, pair) in ports.chunks(2).enumerate() {
            let (port, cluster_port) = (pair[0], pair[1]);
            let node_files = write_node_config(dir.path(), i, port, cluster_port, opts);
            let child = spawn(&node_files);
            files.push(node_files);
            nodes.push(Bao {
                child: Some(child),
                port,
                addr: format!("http://127.0.0.1:{port}"),
                token: String::new(),
                storage: None,
                cluster_port,
                unseal_key: String::new(),
                client: client.clone(),
            });
        }
        let mut cluster = BaoCluster {
            nodes,
            files,
            token: String::new(),
            unseal_key: String::new(),
            client,
            _dir: dir,
        };
        cluster.bootstrap().await;
        cluster
    }

    async fn bootstrap(&mut self) {
        let first = &self.nodes[0];
        first.wait_listening().await;
        let (s, init) = call(
            &self.client,
            "PUT",
            &format!("{}/v1/sys/init", first.addr),
            None,
            Some(&json!({"secret_shares": 1, "secret_threshold": 1})),
        )
        .await;
        assert_eq!(s, 200, "init: {init}");
        self.unseal_key = init["keys"][0].as_str().unwrap().to_string();
        self.token = init["root_token"].as_str().unwrap().to_string();
        for node in &mut self.nodes {
            node.token = self.token.clone();
            node.unseal_key = self.unseal_key.clone();
        }
        self.unseal(0).await;
        self.wait_node_state(0, 200).await;
        let leader = &self.nodes[0];
        // Promote joiners to voters sooner (default 10 s). Whole seconds only: OpenBao
        // reads this as seconds, so "200ms" silently becomes the default.
        leader
            .api_ok(
                "POST",
                "sys/storage/raft/autopilot/configuration",
                json!({"server_stabilization_time": "1s"}),
            )
            .await;
        let leader_addr = leader.addr.clone();
        let joins = (1..self.nodes.len()).map(|i| self.join(i, &leader_addr));
        futures::future::join_all(joins).await;
        self.wait_voters(self.nodes.len()).await;
        self.nodes[0]
            .api_ok("POST", "sys/mounts/transit", json!({"type": "transit"}))
            .await;
    }

    async fn join(&self, i: usize, leader_addr: &str) {
        let node = &self.nodes[i];
        node.wait_listening().await;
        let (s, b) = call(
            &self.client,
            "POST",
            &format!("{}/v1/sys/storage/raft/join", node.addr),
            None,
            Some(&json!({"leader_api_addr": leader_addr})),
        )
        .await;
        assert!(s == 200 && b["joined"] == true, "node {i} join: {s} {b}");
        self.unseal(i).await;
        self.wait_node_state(i, 429).await;
    }

    async fn unseal(&self, i: usize) {
        let (s, b) = call(
            &self.client,
            "PUT",
            &format!("{}/v1/sys/unseal", self.nodes[i].addr),
            None,
            Some(&json!({"key": self.unseal_key})),
        )
        .await;
        assert_eq!(s, 200, "unseal node {i}: {b}");
    }

    /// Polls `sys/health` on node `i` until it answers `status` (200 active, 429 standby).
    async fn wait_node_state(&self, i: usize, status: u16) {
        let url = format!("{}/v1/sys/health", self.nodes[i].addr);
        self.poll(&format!("node {i} health {status}"), || async {
            let r = raw_call(&self.client, "GET", &url, None, None).await.ok()?;
            (r.status == status).then_some(())
        })
        .await
    }

    /// Polls until `want` raft servers are voters.
    async fn wait_voters(&self, want: usize) {
        self.poll(&format!("{want} raft voters"), || async {
            let active = self.active_index().await?;
            let r = raw_call(
                &self.client,
                "GET",
                &format!(
                    "{}/v1/sys/storage/raft/configuration",
                    self.nodes[active].addr
                ),
                Some(&self.token),
                None,
            )
            .await
            .ok()?;
            let servers = r.body["data"]["config"]["servers"].as_array()?;
            let voters = servers.iter().filter(|s| s["voter"] == true).count();
            (voters == want).then_some(())
        })
        .await
    }

    async fn poll<T, F, Fut>(&self, what: &str, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(v) = f().await {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "cluster: timed out after {DEADLINE:?} waiting for {what}\n{}",
                self.log_tails(15)
            );
            tokio::time::sleep(POLL).await;
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// API base addresses (`http://127.0.0.1:PORT`), by node index, dead ones included.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    pub fn addr(&self, i: usize) -> &str {
        &self.nodes[i].addr
    }

    /// The root token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Node `i` as a [`Bao`] (its client does not follow redirects; `pause`/`resume` work).
    pub fn node(&self, i: usize) -> &Bao {
        &self.nodes[i]
    }

    pub fn is_alive(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// Indices of the nodes not killed.
    pub fn survivors(&self) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.is_alive(i)).collect()
    }

    /// The node whose `sys/health` says active (200) right now, if any.
    pub async fn active_index(&self) -> Option<usize> {
        for i in self.survivors() {
            let url = format!("{}/v1/sys/health", self.nodes[i].addr);
            if let Ok(r) = raw_call(&self.client, "GET", &url, None, None).await {
                if r.status == 200 {
                    return Some(i);
                }
            }
        }
        None
    }

    /// The active node's index, and every node's address for `AEGIS_VAULT_ADDRS`, the
    /// active node's first.
    pub async fn addrs_active_first(&self) -> (usize, String) {
        let active = self.poll("an active node", || self.active_index()).await;
        let mut addrs = vec![self.addr(active).to_string()];
        addrs.extend(
            (0..self.len())
                .filter(|&i| i != active)
                .map(|i| self.addr(i).to_string()),
        );
        (active, addrs.join(","))
    }

    /// The active node, waiting for one if there is an election going on.
    pub async fn active(&self) -> &Bao {
        let i = self.poll("an active node", || self.active_index()).await;
        &self.nodes[i]
    }

    /// SIGKILLs node `i` (no graceful step-down).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts a killed node again on its ports and storage, unseals it, and waits until it
    /// is back as an unsealed standby (or active).
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        self.nodes[i].child = Some(spawn(&self.files[i]));
        self.nodes[i].wait_listening().await;
        self.unseal(i).await;
        let url = format!("{}/v1/sys/health", self.nodes[i].addr);
        self.poll(&format!("node {i} back unsealed"), || async {
            let r = raw_call(&self.client, "GET", &url, None, None).await.ok()?;
            matches!(r.status, 200 | 429).then_some(())
        })
        .await
    }

    /// Waits until exactly one surviving node is active AND every other survivor's
    /// `sys/leader` names it (standbys learn the new leader a little after it wins);
    /// returns its index.
    pub async fn wait_active_among_survivors(&self) -> usize {
        self.poll("a new active node known to all survivors", || async {
            let active = self.active_index().await?;
            let want = &self.nodes[active].addr;
            for i in self.survivors() {
                let url = format!("{}/v1/sys/leader", self.nodes[i].addr);
                let r = raw_call(&self.client, "GET", &url, None, None).await.ok()?;
                if r.body["leader_address"].as_str() != Some(want.as_str()) {
                    return None;
                }
            }
            Some(active)
        })
        .await
    }

    /// A root-token request to node `i` (`path` after `/v1/`), redirects not followed.
    /// Panics on a transport error; use [`raw`](Self::raw) to observe those.
    pub async fn api(&self, i: usize, method: &str, path: &str, body: Option<Value>) -> Reply {
        self.raw(i, method, path, body)
            .await
            .unwrap_or_else(|e| panic!("node {i} {method} {path}: {e}"))
    }

    /// Like [`api`](Self::api) but returns transport errors.
    pub async fn raw(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Reply, reqwest::Error> {
        let url = format!("{}/v1/{path}", self.nodes[i].addr);
        raw_call(&self.client, method, &url, Some(&self.token), body.as_ref()).await
    }

    /// A request to the active node that must succeed; returns `data`.
    pub async fn api_ok(&self, method: &str, path: &str, body: Value) -> Value {
        self.active().await.api_ok(method, path, body).await
    }

    /// Creates a Transit key on the active node and waits until every surviving node
    /// serves it (standby reads are eventually consistent: right after the write a standby
    /// can still answer 404 / "signing key not found").
    pub async fn create_key(&self, name: &str, key_type: &str) {
        self.active().await.create_key(name, key_type).await;
        self.wait_replicated(&format!("transit/keys/{name}")).await;
    }

    /// Waits until `GET path` answers 200 on every surviving node.
    pub async fn wait_replicated(&self, path: &str) {
        for i in self.survivors() {
            self.poll(&format!("{path} on node {i}"), || async {
                let r = self.raw(i, "GET", path, None).await.ok()?;
                (r.status == 200).then_some(())
            })
            .await;
        }
    }

    /// Requests node `i`'s audit log holds, per path (responses are not counted), for a
    /// cluster started with [`ClusterOptions::audit`]. A request a standby forwards is
    /// audited by the active node.
    pub fn audited(&self, i: usize) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        let log = std::fs::read_to_string(self.files[i].dir.join("audit.log")).unwrap_or_default();
        for line in log.lines() {
            let Ok(entry) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if entry["type"] == "request" {
                let path = entry["request"]["path"].as_str().unwrap_or_default();
                *counts.entry(path.to_string()).or_default() += 1;
            }
        }
        counts
    }

    /// The last `lines` lines of every node's log, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        self.files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let log = std::fs::read_to_string(&f.log).unwrap_or_default();
                let all: Vec<&str> = log.lines().collect();
                let tail = all[all.len().saturating_sub(lines)..].join("\n");
                format!("--- node {i} log tail ---\n{tail}\n")
            })
            .collect()
    }
}

/// The same device on every node (OpenBao checks that the shared table and each node's
/// configuration agree); each node writes `audit.log` in its own working directory.
const AUDIT_DEVICE: &str = r#"audit "file" "test" {
  options {
    file_path = "audit.log"
  }
}
"#;

fn write_node_config(
    root: &Path,
    i: usize,
    port: u16,
    cluster_port: u16,
    opts: ClusterOptions,
) -> NodeFiles {
    let dir = root.join(format!("node{i}"));
    let raft = dir.join("raft");
    std::fs::create_dir_all(&raft).unwrap();
    let config = dir.join("bao.hcl");
    std::fs::write(
        &config,
        format!(
            r#"storage "raft" {{
  path = "{raft}"
  node_id = "node{i}"
  performance_multiplier = 1
  autopilot_reconcile_interval = "200ms"
  autopilot_update_interval = "100ms"
}}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_disable = true
}}
api_addr = "http://127.0.0.1:{port}"
cluster_addr = "http://127.0.0.1:{cluster_port}"
disable_standby_reads = {disable_standby_reads}
{audit}"#,
            raft = raft.display(),
            disable_standby_reads = opts.disable_standby_reads,
            audit = if opts.audit { AUDIT_DEVICE } else { "" },
        ),
    )
    .unwrap();
    NodeFiles {
        dir: dir.clone(),
        config,
        log: dir.join("bao.log"),
    }
}

fn spawn(files: &NodeFiles) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&files.log)
        .unwrap();
    Command::new(bao_bin())
        .current_dir(&files.dir)
        .arg("server")
        .arg(format!("-config={}", files.config.display()))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start bao server")
}
