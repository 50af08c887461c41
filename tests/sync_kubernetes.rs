//! `aegis sync` with the real `aegis` binary, a REAL OpenBao, and the Kubernetes API
//! stand-in (tests/common/kube_api.rs: no API server can run here; tests/kube_standin.rs
//! proves its shape with kubectl and kubernetes-validate). Every count is exact: the
//! writes the stand-in accepted, the audit events, the exit codes.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::kube_api::{kubernetes_validate, tool, KubeApiStandIn, Rule};
use common::Bao;
use serde_json::{json, Value};

/// A Vault, a stand-in API server, and a working directory with a kubeconfig.
struct World {
    bao: Bao,
    kube: KubeApiStandIn,
    dir: tempfile::TempDir,
}

impl World {
    async fn new() -> World {
        Self::with(Bao::dev().await).await
    }

    async fn with(bao: Bao) -> World {
        let kube = KubeApiStandIn::start().await;
        kube.add_namespace("models");
        let dir = tempfile::tempdir().unwrap();
        kube.write_kubeconfig(&dir.path().join("kubeconfig"));
        World { bao, kube, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.path("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    async fn kv_put(&self, path: &str, data: Value) {
        self.bao
            .api_ok(
                "POST",
                &format!("secret/data/{path}"),
                json!({ "data": data }),
            )
            .await;
    }

    /// Runs `aegis sync --file sync.toml <extra>` (the file written from `mapping`):
    /// (exit code, stdout, stderr).
    async fn sync(
        &self,
        mapping: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> (i32, String, String) {
        std::fs::write(self.path("sync.toml"), mapping).unwrap();
        let file = self.path("sync.toml").display().to_string();
        let kubeconfig = self.path("kubeconfig").display().to_string();
        let audit = self.path("audit.log").display().to_string();
        let mut all: Vec<(String, String)> = vec![
            ("VAULT_TOKEN".into(), self.bao.token.clone()),
            ("KUBECONFIG".into(), kubeconfig),
            ("AEGIS_AUDIT_FILE".into(), audit),
        ];
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut args = vec!["sync".to_string(), "--file".into(), file];
        args.extend(extra.iter().map(|s| s.to_string()));
        let addr = self.bao.addr.clone();
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> =
                all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            common::aegis_cli(&addr, &env, &args)
        })
        .await
        .unwrap()
    }

    fn secret(&self, name: &str) -> Value {
        self.kube
            .get("secrets", "models", name)
            .unwrap_or_else(|| panic!("no Secret models/{name}"))
    }

    fn writes(&self) -> Vec<(String, String)> {
        self.kube
            .writes()
            .into_iter()
            .map(|s| (s.method, s.path))
            .collect()
    }
}

fn decoded(secret: &Value, field: &str) -> String {
    String::from_utf8(common::b64_decode(secret["data"][field].as_str().unwrap())).unwrap()
}

const MODEL_DB: &str = r#"
namespace = "models"
[[secret]]
path = "apps/model-a/db"
name = "model-a-db"
fields = ["username", "password"]
labels = { team = "ml" }
restart = ["deployment/model-a"]
"#;

fn deployment(name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "models"},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "model", "image": "ghcr.io/example/model:1"}]}
            }
        }
    })
}

/// The restartedAt annotation of a Deployment's pod template, if any.
fn restarted_at(kube: &KubeApiStandIn, name: &str) -> Option<String> {
    let d = kube.get("deployments", "models", name).unwrap();
    d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sync_writes_once_then_nothing_until_kv_changes_then_restarts_the_deployment() {
    let w = World::new().await;
    w.kv_put(
        "apps/model-a/db",
        json!({"username": "model-a", "password": "pw-one", "unused": "x"}),
    )
    .await;
    w.kube.put("deployments", "models", deployment("model-a"));
    let seeded = w.writes().len();

    // First sync: the Secret is created by one server-side apply; the Deployment is not
    // restarted (its pods could not have used a Secret that did not exist).
    let (code, out, err) = w.sync(MODEL_DB, &[], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        "secret models/model-a-db: created from kv:secret/apps/model-a/db version 1\n"
    );
    let writes = w.writes()[seeded..].to_vec();
    assert_eq!(
        writes,
        [(
            "PATCH".to_string(),
            "/api/v1/namespaces/models/secrets/model-a-db".to_string()
        )]
    );
    let apply = w.kube.writes()[seeded].clone();
    assert_eq!(apply.content_type.as_str(), "application/apply-patch+yaml");
    assert!(
        apply.query.contains("fieldManager=aegis"),
        "{}",
        apply.query
    );
    let s = w.secret("model-a-db");
    assert_eq!(
        (decoded(&s, "username"), decoded(&s, "password")),
        ("model-a".into(), "pw-one".into())
    );
    assert_eq!(
        s["data"].as_object().unwrap().len(),
        2,
        "only the listed fields: {s}"
    );
    assert_eq!(s["type"], "Opaque");
    assert_eq!(
        s["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "aegis"
    );
    assert_eq!(s["metadata"]["labels"]["team"], "ml");
    assert_eq!(s["metadata"]["annotations"]["aegis.dev/kv-version"], "1");
    assert_eq!(
        s["metadata"]["annotations"]["aegis.dev/source"],
        "kv:secret/apps/model-a/db"
    );
    let managers: Vec<&str> = s["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["manager"].as_str().unwrap())
        .collect();
    assert_eq!(managers, ["aegis"]);
    assert_eq!(restarted_at(&w.kube, "model-a"), None);
    let rv = s["metadata"]["resourceVersion"].clone();

    // Nothing changed: no write at all, only reads.
    let (code, out, _) = w.sync(MODEL_DB, &[], &[]).await;
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "secret models/model-a-db: unchanged (kv:secret/apps/model-a/db version 1)\n"
    );
    assert_eq!(w.writes().len(), seeded + 1);
    assert_eq!(w.secret("model-a-db")["metadata"]["resourceVersion"], rv);

    // A KV update propagates and restarts the named Deployment, once.
    w.kv_put(
        "apps/model-a/db",
        json!({"username": "model-a", "password": "pw-two"}),
    )
    .await;
    let (code, out, err) = w.sync(MODEL_DB, &["--json"], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["targets"][0]["action"], "updated");
    assert_eq!(report["targets"][0]["kv_version"], 2);
    assert_eq!(
        report["restarts"],
        json!([{"kind": "deployment", "namespace": "models", "name": "model-a", "because": ["secret/models/model-a-db"], "restarted": true}])
    );
    assert_eq!(decoded(&w.secret("model-a-db"), "password"), "pw-two");
    assert_eq!(
        w.secret("model-a-db")["metadata"]["annotations"]["aegis.dev/kv-version"],
        "2"
    );
    assert!(
        restarted_at(&w.kube, "model-a").is_some(),
        "the pod template was annotated"
    );
    let writes = w.writes()[seeded + 1..].to_vec();
    assert_eq!(
        writes,
        [
            (
                "PATCH".to_string(),
                "/api/v1/namespaces/models/secrets/model-a-db".to_string()
            ),
            (
                "PATCH".to_string(),
                "/apis/apps/v1/namespaces/models/deployments/model-a".to_string()
            ),
        ]
    );

    // One audit event per write: path, KV version, target; never a value.
    let audit = w.audit();
    let summary: Vec<(String, String, Value, String, String)> = audit
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_owned(),
                e["key"].as_str().unwrap().to_owned(),
                e["versions"].clone(),
                e["target"].as_str().unwrap().to_owned(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "sync".into(),
                "apps/model-a/db".into(),
                json!([1]),
                "secret/models/model-a-db".into(),
                "create".into()
            ),
            (
                "sync".into(),
                "apps/model-a/db".into(),
                json!([2]),
                "secret/models/model-a-db".into(),
                "update".into()
            ),
            (
                "sync".into(),
                "".into(),
                json!([]),
                "deployment/models/model-a".into(),
                "restart: secret/models/model-a-db changed".into()
            ),
        ]
    );
    let text = std::fs::read_to_string(w.path("audit.log")).unwrap();
    assert!(
        !text.contains("pw-one") && !text.contains("pw-two"),
        "{text}"
    );

    // A real client reads what Aegis wrote, and the schemas accept every stored object.
    let got = kubectl(
        &w,
        &["get", "secret", "model-a-db", "-n", "models", "-o", "json"],
    );
    let got: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got["metadata"]["annotations"]["aegis.dev/kv-version"], "2");
    validate_all(&w.kube, w.dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_kv_path_is_kept_or_deleted_by_policy_and_a_foreign_secret_is_left_alone() {
    let w = World::new().await;
    for p in ["apps/keep", "apps/drop", "apps/foreign"] {
        w.kv_put(p, json!({"token": format!("value-of-{p}")})).await;
    }
    // Someone else's Secret with the name the third entry targets.
    w.kube.put(
        "secrets",
        "models",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "foreign", "namespace": "models"}, "data": {"other": "b3RoZXI="}}),
    );
    let first = r#"
namespace = "models"
on_delete = "delete"
[[secret]]
path = "apps/keep"
name = "keep"
on_delete = "keep"
[[secret]]
path = "apps/drop"
name = "drop"
"#;
    let (code, out, err) = w.sync(first, &[], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    for p in ["apps/keep", "apps/drop", "apps/foreign"] {
        w.bao
            .api_ok("DELETE", &format!("secret/metadata/{p}"), json!({}))
            .await;
    }
    // The mapping now also names the foreign Secret, whose KV path is gone too.
    let mapping = format!("{first}[[secret]]\npath = \"apps/foreign\"\nname = \"foreign\"\n");
    let before = w.writes().len();
    let (code, out, err) = w.sync(&mapping, &[], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        "secret models/keep: kept: kv:secret/apps/keep is gone (on_delete = \"keep\")\n\
         secret models/drop: deleted: kv:secret/apps/drop is gone (on_delete = \"delete\")\n\
         secret models/foreign: left alone: kv:secret/apps/foreign is gone, but Aegis did not make this object\n"
    );
    assert!(w.kube.get("secrets", "models", "keep").is_some());
    assert!(w.kube.get("secrets", "models", "drop").is_none());
    assert!(w.kube.get("secrets", "models", "foreign").is_some());
    let writes = w.writes()[before..].to_vec();
    assert_eq!(
        writes,
        [(
            "DELETE".to_string(),
            "/api/v1/namespaces/models/secrets/drop".to_string()
        )]
    );
    let last = w.audit().pop().unwrap();
    assert_eq!(
        (
            last["target"].as_str(),
            last["reason"].as_str(),
            last["result"].as_str()
        ),
        (Some("secret/models/drop"), Some("delete"), Some("ok"))
    );

    // Gone stays gone: a second round writes nothing.
    let (code, out, _) = w.sync(&mapping, &[], &[]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("secret models/drop: absent, and kv:secret/apps/drop is gone"),
        "{out}"
    );
    assert_eq!(w.writes().len(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_unable_to_answer_means_nothing_is_written() {
    let w = World::new().await;
    let mapping = r#"
namespace = "models"
[[secret]]
path = "apps/first"
name = "first"
[[secret]]
path = "apps/second"
name = "second"
"#;
    w.kv_put("apps/first", json!({"v": "1"})).await;
    w.kv_put("apps/second", json!({"v": "1"})).await;
    let (code, _, err) = w.sync(mapping, &[], &[]).await;
    assert_eq!(code, 0, "{err}");
    w.kv_put("apps/first", json!({"v": "2"})).await;
    w.kv_put("apps/second", json!({"v": "2"})).await;
    let before = w.writes().len();

    // Vault refuses the second read (a real rate-limit quota: one read per minute, used up
    // here): the first target's new version was read but is not written either.
    common::one_per(&w.bao, "secret/data/apps/second", "1m").await;
    w.bao
        .api_ok("GET", "secret/data/apps/second", json!(null))
        .await;
    let (code, out, err) = w.sync(mapping, &[], &[]).await;
    assert_eq!(code, 69, "{out}{err}");
    assert!(
        out.starts_with("nothing written: Vault unavailable"),
        "{out}"
    );
    assert!(
        err.contains("aegis: sync failed: Vault unavailable, nothing written"),
        "{err}"
    );
    assert_eq!(w.writes().len(), before, "no partial writes");
    assert_eq!(decoded(&w.secret("first"), "v"), "1");

    // Vault sealed: the job cannot even start; still nothing written.
    w.bao.api_ok("PUT", "sys/seal", json!({})).await;
    let (code, _, err) = w.sync(mapping, &[], &[]).await;
    assert_eq!(code, 69, "{err}");
    assert_eq!(w.writes().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_403_and_409_are_clear_errors_and_transient_failures_are_retried() {
    let w = World::new().await;
    w.kv_put("apps/a", json!({"password": "pa"})).await;
    w.kv_put("apps/b", json!({"password": "pb"})).await;
    let mapping = r#"
namespace = "models"
[[secret]]
path = "apps/a"
name = "a"
[[secret]]
path = "apps/b"
name = "b"
"#;
    // The Role may read every Secret but write "a" only: the write of "b" fails with the
    // API server's Forbidden, "a" is still written, and the exit code says permission denied.
    w.kube.restrict(vec![
        Rule::new(&["get"], &["secrets"], &[]),
        Rule::new(&["patch", "create"], &["secrets"], &["a"]),
    ]);
    let (code, out, err) = w.sync(mapping, &[], &[]).await;
    assert_eq!(code, 77, "{out}{err}");
    assert!(out.contains("secret models/a: created"), "{out}");
    assert!(out.contains("secret models/b: failed: Kubernetes answered 403 Forbidden: secrets \"b\" is forbidden: User \"system:serviceaccount:default:aegis-sync\" cannot patch resource \"secrets\""), "{out}");
    assert!(err.contains("deploy/kubernetes/sync/role.yaml"), "{err}");
    w.kube.restrict(vec![]);

    // Someone else's Secret of that name (attacker or colleague: it holds a password of
    // theirs) is never merged into silently; --force-conflicts takes it over.
    w.kube.put(
        "secrets",
        "models",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "b", "namespace": "models"}, "data": {"password": "aGFuZA=="}}),
    );
    let (code, out, err) = w.sync(mapping, &[], &[]).await;
    assert_eq!(code, 75, "{out}{err}");
    assert!(
        out.contains("secret models/b: failed: it exists and Aegis did not make it"),
        "{out}"
    );
    assert!(err.contains("--force-conflicts"), "{err}");
    assert_eq!(decoded(&w.secret("b"), "password"), "hand");
    let (code, out, err) = w.sync(mapping, &["--force-conflicts"], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(decoded(&w.secret("b"), "password"), "pb");

    // A hand edit (another field manager, as `kubectl edit` makes it) now co-owns the
    // field: the next write is the API server's 409 naming that manager, not a silent undo.
    edit_as(
        &w.kube,
        "kubectl-edit",
        "b",
        json!({"data": {"password": "ZWRpdGVk"}}),
    )
    .await;
    let (code, out, err) = w.sync(mapping, &[], &[]).await;
    assert_eq!(code, 75, "{out}{err}");
    assert!(
        out.contains("secret models/b: failed: Kubernetes answered 409 Conflict: Apply failed with 1 conflict: conflict with \"kubectl-edit\""),
        "{out}"
    );
    assert!(err.contains("--force-conflicts"), "{err}");
    let (code, out, err) = w.sync(mapping, &["--force-conflicts"], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(decoded(&w.secret("b"), "password"), "pb");

    // The object changed between the read and the write (409 on its resourceVersion),
    // then the API server failed once (500): each is retried, and the write lands.
    w.kv_put("apps/a", json!({"password": "pa2"})).await;
    w.kube.fail_next("PATCH", "secrets", 409, 1);
    w.kube.fail_next("GET", "secrets", 500, 1);
    let before = w.kube.requests().len();
    let (code, out, err) = w.sync(mapping, &[], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(decoded(&w.secret("a"), "password"), "pa2");
    let calls: Vec<(String, u16)> = w.kube.requests()[before..]
        .iter()
        .filter(|s| s.path.ends_with("/secrets/a"))
        .map(|s| (s.method.clone(), s.status))
        .collect();
    assert_eq!(
        calls,
        [
            ("GET".into(), 500),
            ("GET".into(), 200),
            ("PATCH".into(), 409),
            ("GET".into(), 200),
            ("PATCH".into(), 200)
        ]
    );
    let failed: Vec<Value> = w
        .audit()
        .into_iter()
        .filter(|e| e["result"] != "ok")
        .collect();
    assert_eq!(
        failed.len(),
        3,
        "the 403, the field conflict and the stale write: {failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_value_reaches_a_log_even_at_trace_level() {
    let w = World::new().await;
    let value = "s3cr3t-Value-that-must-not-leak";
    w.kv_put("apps/leak", json!({"api_key": value})).await;
    let mapping = "namespace = \"models\"\n[[secret]]\npath = \"apps/leak\"\nname = \"leak\"\n";
    let (code, out, err) = w.sync(mapping, &[], &[("RUST_LOG", "trace")]).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.len() > 1000, "trace logging is on: {} bytes", err.len());
    let b64 = common::b64(value.as_bytes());
    for (what, text) in [
        ("stdout", &out),
        ("stderr", &err),
        (
            "audit",
            &std::fs::read_to_string(w.path("audit.log")).unwrap(),
        ),
    ] {
        assert!(
            !text.contains(value) && !text.contains(&b64),
            "the value reached {what}"
        );
    }
    assert_eq!(decoded(&w.secret("leak"), "api_key"), value);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_mapping_or_kv_shape_is_refused_with_what_to_fix() {
    let w = World::new().await;
    let (code, _, err) = w
        .sync("[[secret]]\npath = \"../x\"\nname = \"Bad\"\n", &[], &[])
        .await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("invalid sync file (3 problem(s))"), "{err}");
    w.kv_put("apps/shape", json!({"present": "x"})).await;
    let mapping = "namespace = \"models\"\n[[secret]]\npath = \"apps/shape\"\nname = \"shape\"\nfields = [\"absent\"]\n";
    let (code, out, _) = w.sync(mapping, &[], &[]).await;
    assert_eq!(code, 65);
    assert!(
        out.contains("failed: field \"absent\" is not in the KV secret (it has: present)"),
        "{out}"
    );
    assert!(w.writes().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_keys_follow_rotation_and_revocation_into_the_configmap() {
    let w = World::new().await;
    w.bao.create_key("pk", "ed25519").await;
    let job = |args: &'static [&'static str]| {
        let (addr, token) = (w.bao.addr.clone(), w.bao.token.clone());
        tokio::task::spawn_blocking(move || {
            common::aegis_cli(&addr, &[("VAULT_TOKEN", token.as_str())], args)
        })
    };
    let (code, _, err) = job(&["rotate", "--key", "pk", "--force", "--grace", "30d"])
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let mapping =
        "namespace = \"models\"\n[[public_keys]]\nkey = \"pk\"\nname = \"pk-public-keys\"\n";
    let kids = |cm: &Value| -> Vec<String> {
        let jwks: Value = serde_json::from_str(cm["data"]["jwks.json"].as_str().unwrap()).unwrap();
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    };

    // v1 is retired (Vault no longer serves it) but inside its window: it is published.
    let (code, out, err) = w.sync(mapping, &[], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        "configmap models/pk-public-keys: created from transit:transit/pk\n"
    );
    let cm = w
        .kube
        .get("configmaps", "models", "pk-public-keys")
        .unwrap();
    assert_eq!(kids(&cm), ["pk:v2", "pk:v1"], "newest first");
    assert_eq!(
        cm["data"]["keys.pem"]
            .as_str()
            .unwrap()
            .matches("-----BEGIN PUBLIC KEY-----")
            .count(),
        2
    );
    assert_eq!(
        cm["metadata"]["annotations"]["aegis.dev/source"],
        "transit:transit/pk"
    );
    let (code, out, _) = w.sync(mapping, &[], &[]).await;
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "configmap models/pk-public-keys: unchanged (transit:transit/pk)\n"
        )
    );

    // Revoking v1 takes it out of the published keys at the next round.
    let (code, _, err) = job(&[
        "retire",
        "--key",
        "pk",
        "--version",
        "1",
        "--now",
        "--reason",
        "test",
    ])
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = w.sync(mapping, &[], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        "configmap models/pk-public-keys: updated from transit:transit/pk\n"
    );
    let cm = w
        .kube
        .get("configmaps", "models", "pk-public-keys")
        .unwrap();
    assert_eq!(kids(&cm), ["pk:v2"]);
    let writes: Vec<String> = w
        .writes()
        .into_iter()
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    assert_eq!(
        writes,
        ["PATCH /api/v1/namespaces/models/configmaps/pk-public-keys"; 2]
    );
    validate_all(&w.kube, w.dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interval_loop_follows_kv_serves_its_metrics_and_stops_on_sigterm() {
    let w = World::new().await;
    w.kv_put("apps/loop", json!({"v": "one"})).await;
    std::fs::write(
        w.path("sync.toml"),
        "namespace = \"models\"\n[[secret]]\npath = \"apps/loop\"\nname = \"loop\"\n",
    )
    .unwrap();
    let port = common::free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_aegis"))
        .args(["sync", "--interval", "200ms", "--file"])
        .arg(w.path("sync.toml"))
        .env_clear()
        .env("VAULT_ADDR", &w.bao.addr)
        .env("VAULT_TOKEN", &w.bao.token)
        .env("KUBECONFIG", w.path("kubeconfig"))
        .env("AEGIS_METRICS_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let value_of = |want: &'static str| {
        let kube = &w.kube;
        move || {
            let got = kube
                .get("secrets", "models", "loop")
                .map(|s| decoded(&s, "v"));
            std::future::ready((got.as_deref() == Some(want)).then_some(()))
        }
    };
    common::eventually(Duration::from_secs(20), "the first round", value_of("one")).await;
    w.kv_put("apps/loop", json!({"v": "two"})).await;
    common::eventually(Duration::from_secs(20), "the KV update", value_of("two")).await;

    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let text = common::eventually(Duration::from_secs(20), "two ok rounds on /metrics", || {
        let url = metrics_url.clone();
        async move {
            let body = reqwest::get(&url).await.ok()?.text().await.ok()?;
            let ok_rounds = common::metric_in(&body, "aegis_sync_rounds_total", "outcome=\"ok\"");
            (ok_rounds >= 3.0).then_some(body)
        }
    })
    .await;
    let writes = |action: &str| {
        common::metric_in(
            &text,
            "aegis_sync_writes_total",
            &format!("action=\"{action}\",kind=\"secret\""),
        )
    };
    assert_eq!((writes("create"), writes("update")), (1.0, 1.0), "{text}");
    assert!(
        common::metric_in(&text, "aegis_sync_last_success_timestamp_seconds", "") > 1.7e9,
        "{text}"
    );
    // Exactly two writes for two KV versions, however many rounds ran.
    assert_eq!(w.writes().len(), 2);

    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_costs_vault_one_read_per_kv_path_and_three_per_published_key() {
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("vault-audit.log");
    let w = World::with(Bao::dev_audited(&log).await).await;
    let token = common::audit_log::sidecar_token(&w.bao).await;
    w.bao.create_key("pk", "ed25519").await;
    w.kv_put("apps/one", json!({"v": "1"})).await;
    w.kv_put("apps/two", json!({"v": "2"})).await;
    let mapping = "namespace = \"models\"\n\
        [[secret]]\npath = \"apps/one\"\nname = \"one\"\n\
        [[secret]]\npath = \"apps/two\"\nname = \"two\"\n\
        [[public_keys]]\nkey = \"pk\"\nname = \"pk\"\n";
    let mut calls = common::audit_log::VaultCalls::new(&log);
    calls.since_last();
    for round in 0..2 {
        let (code, out, err) = w
            .sync(mapping, &[], &[("VAULT_TOKEN", token.as_str())])
            .await;
        assert_eq!(code, 0, "{out}{err}");
        let mut paths = calls.since_last();
        paths.sort();
        assert_eq!(
            paths,
            [
                // Once per run, whatever the targets: the token's check (a login for other
                // methods) and the audit actor's lookup.
                "auth/token/lookup-self",
                "auth/token/lookup-self",
                "secret/data/aegis/keys/transit/pk",
                "secret/data/apps/one",
                "secret/data/apps/two",
                "transit/keys/aegis-retention.pk",
                "transit/keys/pk",
            ],
            "round {round}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_fails_is_reported_counted_and_audited_and_the_secret_is_still_written() {
    let w = World::new().await;
    let mapping = "namespace = \"models\"\n[[secret]]\npath = \"apps/r\"\nname = \"r\"\nrestart = [\"deployment/missing\"]\n";
    w.kv_put("apps/r", json!({"v": "1"})).await;
    let (code, _, err) = w.sync(mapping, &[], &[]).await;
    assert_eq!(code, 0, "{err}");
    w.kv_put("apps/r", json!({"v": "2"})).await;
    let (code, out, err) = w.sync(mapping, &[], &[]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("secret models/r: updated from kv:secret/apps/r version 2"),
        "{out}"
    );
    assert!(
        out.contains("deployment models/missing: restart failed: Kubernetes answered 404 NotFound"),
        "{out}"
    );
    assert_eq!(decoded(&w.secret("r"), "v"), "2");
    let last = w.audit().pop().unwrap();
    assert_eq!(last["target"], "deployment/models/missing");
    assert_ne!(last["result"], "ok");
}

/// A merge patch of Secret `models/name` by field manager `manager`, sent to the stand-in
/// as `kubectl edit` or `kubectl patch` send theirs.
async fn edit_as(kube: &KubeApiStandIn, manager: &str, name: &str, patch: Value) {
    let url = format!(
        "{}/api/v1/namespaces/models/secrets/{name}?fieldManager={manager}",
        kube.url()
    );
    let status = kube
        .client()
        .patch(url)
        .bearer_auth(kube.token())
        .header("content-type", "application/merge-patch+json")
        .body(patch.to_string())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

/// `kubectl <args>` against the stand-in; its stdout.
fn kubectl(w: &World, args: &[&str]) -> String {
    let out = std::process::Command::new(tool("kubectl"))
        .args(args)
        .env("KUBECONFIG", w.path("kubeconfig"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// kubernetes-validate (strict) accepts every object the stand-in stores.
fn validate_all(kube: &KubeApiStandIn, dir: &Path) {
    for (i, obj) in kube.objects().iter().enumerate() {
        let out = kubernetes_validate(dir, &format!("object-{i}.json"), obj);
        assert!(
            out.status.success(),
            "kubernetes-validate refused {obj}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
