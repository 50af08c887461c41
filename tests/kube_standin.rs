//! The Kubernetes API stand-in (tests/common/kube_api.rs) is shaped like the real API: a
//! real client, kubectl 1.37, reads, applies (server-side, with field ownership and
//! conflicts; `--validate=false`, as the stand-in serves no OpenAPI document: schemas are
//! kubernetes-validate's job below), restarts and deletes against it, and kubernetes-validate accepts what it
//! stores (and refuses a broken object, so that check can fail).

mod common;

use std::path::Path;
use std::process::Output;

use common::kube_api::{kubernetes_validate, tool, KubeApiStandIn, Rule};
use serde_json::{json, Value};

/// `kubectl <args>` with the stand-in's kubeconfig, off the async runtime.
async fn kubectl(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(tool("kubectl"));
    cmd.args(args)
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .current_dir(dir);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

async fn kubectl_ok(dir: &Path, args: &[&str]) -> String {
    let out = kubectl(dir, args).await;
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `kubectl apply --server-side` of `file` as field manager `manager` (`--validate=false`:
/// the stand-in serves no OpenAPI document; schemas are kubernetes-validate's job).
async fn apply(dir: &Path, manager: &str, file: &str, force: bool) -> Output {
    let manager = format!("--field-manager={manager}");
    let mut args = vec!["apply", "--validate=false", "--server-side", &manager];
    if force {
        args.push("--force-conflicts");
    }
    args.extend(["-f", file]);
    kubectl(dir, &args).await
}

async fn apply_ok(dir: &Path, manager: &str, file: &str, force: bool) {
    let out = apply(dir, manager, file, force).await;
    assert!(
        out.status.success(),
        "kubectl apply {file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Secret manifest; `labels` null: no labels field.
fn secret(name: &str, password_b64: &str, labels: Value) -> Value {
    let mut s = json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": name, "namespace": "default"},
           "type": "Opaque", "data": {"password": password_b64}});
    if !labels.is_null() {
        s["metadata"]["labels"] = labels;
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reads_applies_restarts_and_deletes_against_the_stand_in() {
    let kube = KubeApiStandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    kube.write_kubeconfig(&d.join("kubeconfig"));
    let file = |name: &str, v: &Value| {
        std::fs::write(d.join(name), v.to_string()).unwrap();
        name.to_string()
    };

    // Server-side apply creates; the same apply again changes nothing (same resourceVersion).
    let f = file(
        "a.json",
        &secret(
            "a",
            "b25l",
            json!({"app.kubernetes.io/managed-by": "aegis"}),
        ),
    );
    apply_ok(d, "first", &f, false).await;
    let rv = kube.get("secrets", "default", "a").unwrap()["metadata"]["resourceVersion"].clone();
    apply_ok(d, "first", &f, false).await;
    assert_eq!(
        kube.get("secrets", "default", "a").unwrap()["metadata"]["resourceVersion"],
        rv
    );
    let got: Value =
        serde_json::from_str(&kubectl_ok(d, &["get", "secret", "a", "-o", "json"]).await).unwrap();
    assert_eq!(got["data"]["password"], "b25l");
    // kubectl hides managedFields unless asked (--show-managed-fields), as with a real server.
    assert!(got["metadata"].get("managedFields").is_none(), "{got}");
    let shown: Value = serde_json::from_str(
        &kubectl_ok(
            d,
            &["get", "secret", "a", "-o", "json", "--show-managed-fields"],
        )
        .await,
    )
    .unwrap();
    assert_eq!(shown["metadata"]["managedFields"][0]["manager"], "first");
    assert_eq!(shown["metadata"]["managedFields"][0]["operation"], "Apply");

    // A second manager applying another value conflicts, naming the owner; forcing moves it.
    let f2 = file("a2.json", &secret("a", "dHdv", Value::Null));
    let out = apply(d, "second", &f2, false).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("conflict") && err.contains("first"), "{err}");
    apply_ok(d, "second", &f2, true).await;
    let stored = kube.get("secrets", "default", "a").unwrap();
    assert_eq!(stored["data"]["password"], "dHdv");
    let managers: Vec<&str> = stored["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["fieldsV1"].to_string().contains("f:password"))
        .map(|m| m["manager"].as_str().unwrap())
        .collect();
    assert_eq!(managers, ["second"]);

    // A label selector lists only the labelled Secrets.
    let b = file("b.json", &secret("b", "Yg==", Value::Null));
    apply_ok(d, "kubectl", &b, false).await;
    let listed = kubectl_ok(
        d,
        &[
            "get",
            "secrets",
            "-l",
            "app.kubernetes.io/managed-by=aegis",
            "-o",
            "name",
        ],
    )
    .await;
    assert_eq!(
        listed,
        "secret/a\n",
        "{}",
        kube.get("secrets", "default", "a").unwrap()
    );

    // Rollout restart annotates the pod template, as on a real cluster.
    kube.put(
        "deployments",
        "default",
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
               "spec": {"selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}}),
    );
    kubectl_ok(d, &["rollout", "restart", "deployment/web"]).await;
    let dep = kube.get("deployments", "default", "web").unwrap();
    assert!(
        dep["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string(),
        "{dep}"
    );

    // Delete removes it; a second delete is the real NotFound.
    kubectl_ok(d, &["delete", "secret", "b"]).await;
    assert!(kube.get("secrets", "default", "b").is_none());
    let out = kubectl(d, &["delete", "secret", "b"]).await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NotFound"),
        "{out:?}"
    );

    // A Role without the verb: kubectl shows the API server's Forbidden.
    kube.restrict(vec![Rule::new(&["get"], &["secrets"], &["a"])]);
    let out = kubectl(d, &["delete", "secret", "a"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is forbidden") && err.contains("cannot delete resource \"secrets\""),
        "{err}"
    );
    kube.restrict(vec![]);

    // kubernetes-validate accepts every stored object, and refuses a broken one.
    for (i, obj) in kube.objects().iter().enumerate() {
        assert!(
            kubernetes_validate(d, &format!("stored-{i}.json"), obj)
                .status
                .success(),
            "{obj}"
        );
    }
    let mut broken = kube.get("secrets", "default", "a").unwrap();
    broken["data"] = json!("not a map");
    assert!(!kubernetes_validate(d, "broken.json", &broken)
        .status
        .success());
}
