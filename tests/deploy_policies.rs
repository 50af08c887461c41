//! deploy/: the Vault policies are SUFFICIENT (the real `aegis` binary and the sidecar do
//! their whole job with nothing else) and LEAST-PRIVILEGE (everything else is refused by
//! a REAL OpenBao with 403); `deploy/vault/setup.sh` creates Kubernetes and GitHub
//! Actions JWT roles that work with exactly the settings of the CronJob manifest and the
//! CI workflow, and refuse other service accounts, namespaces, repositories, refs and
//! audiences.
//!
//! The policy files, the setup script and the manifests are read from `deploy/` as they
//! are shipped. YAML syntax is not checked here (no YAML parser among the dependencies,
//! and none in `.venv`); the manifests are only read line by line where the tests take
//! their settings from them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::standins::{
    api_as, kubernetes_login, login, JwtSigner, KubernetesApiStandIn, ServiceAccount,
};
use common::{b64, bao_bin, bao_cli, sign_and_verify, Bao, Sidecar};
use serde_json::{json, Value};

const KEY: &str = "model-sign";
const RECORD: &str = "secret/data/aegis/keys/transit/model-sign";

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read_deploy(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

/// Runs the real `aegis` binary with ONLY `VAULT_ADDR` and `env` (no root token
/// anywhere); returns (exit code, stdout, stderr).
fn aegis(bao: &Bao, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    common::aegis_cli(&bao.addr, env, args)
}

/// [`aegis`] that must exit 0 and print JSON.
fn aegis_json(bao: &Bao, env: &[(&str, &str)], args: &[&str]) -> Value {
    let (code, out, err) = aegis(bao, env, args);
    assert_eq!(code, 0, "aegis {args:?} exited {code}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("aegis {args:?}: {e}: {out}"))
}

/// A token for `policy` as `bao token create` makes it (with `default` attached).
fn token_for(bao: &Bao, policy: &str) -> String {
    bao_cli(
        bao,
        &[
            "token",
            "create",
            &format!("-policy={policy}"),
            "-ttl=1h",
            "-field=token",
        ],
    )
}

/// Asserts OpenBao answers 403 to `token` for `method path`.
async fn denied(bao: &Bao, token: &str, who: &str, method: &str, path: &str, body: Value) {
    let body = (method != "GET" && method != "LIST" && method != "DELETE").then_some(body);
    let (s, b) = api_as(bao, token, method, path, body).await;
    assert_eq!(
        s, 403,
        "{who}: {method} {path} should be denied, got {s} {b}"
    );
}

/// Asserts OpenBao answers 2xx to `token` for `method path`; returns the body.
async fn allowed(
    bao: &Bao,
    token: &str,
    who: &str,
    method: &str,
    path: &str,
    body: Value,
) -> Value {
    let body = (method != "GET" && method != "LIST").then_some(body);
    let (s, b) = api_as(bao, token, method, path, body).await;
    assert!(
        (200..300).contains(&s),
        "{who}: {method} {path} should be allowed, got {s} {b}"
    );
    b
}

fn rfc3339_in(d: Duration) -> String {
    humantime::format_rfc3339_seconds(SystemTime::now() + d).to_string()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The flow-style `args: [...]` lines of a manifest (JSON-compatible), in file order.
fn manifest_args(yaml: &str) -> Vec<Vec<String>> {
    yaml.lines()
        .filter_map(|l| l.trim().strip_prefix("args: "))
        .map(|a| serde_json::from_str(a).unwrap_or_else(|e| panic!("args {a}: {e}")))
        .collect()
}

/// The `value:` following the first `- name: NAME` of a manifest's `env:` lists.
fn manifest_env(yaml: &str, name: &str) -> String {
    let lines: Vec<&str> = yaml.lines().map(str::trim).collect();
    let at = lines
        .iter()
        .position(|l| *l == format!("- name: {name}"))
        .unwrap_or_else(|| panic!("no env {name} in the manifest"));
    lines[at + 1]
        .strip_prefix("value: ")
        .unwrap_or_else(|| panic!("env {name}: no value line"))
        .split(" #")
        .next()
        .unwrap()
        .trim()
        .to_string()
}

/// The value of `NAME=value` in a kustomize env file (the sidecar's ConfigMap).
fn env_file_value(env_file: &str, name: &str) -> String {
    env_file
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in the env file"))
        .trim()
        .to_string()
}

/// The `audience:` of the first projected service-account token of a manifest.
fn manifest_projected_audience(yaml: &str) -> String {
    yaml.lines()
        .find_map(|l| l.trim().strip_prefix("audience: "))
        .expect("a projected serviceAccountToken with an audience")
        .trim()
        .to_string()
}

/// The value of the first `NAME: value` line of the workflow.
fn workflow_setting(yaml: &str, name: &str) -> String {
    yaml.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} in the workflow"))
        .trim()
        .to_string()
}

/// Both policies from deploy/vault/, written with the `bao` CLI; a token for each, made
/// as Vault makes them (the `default` policy attached). Then: the rotation job does its
/// whole job with the rotator token, the sidecar with the sidecar token, and each is
/// refused everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_are_sufficient_and_least_privilege() {
    let bao = Bao::dev().await;
    for name in ["aegis-sidecar", "aegis-rotator"] {
        let file = deploy(&format!("vault/{name}.hcl"));
        bao_cli(&bao, &["policy", "write", name, file.to_str().unwrap()]);
    }
    bao.create_key(KEY, "ecdsa-p256").await;
    let rotator = token_for(&bao, "aegis-rotator");
    let sidecar = token_for(&bao, "aegis-sidecar");
    for (token, policy) in [(&rotator, "aegis-rotator"), (&sidecar, "aegis-sidecar")] {
        let me = allowed(
            &bao,
            token,
            policy,
            "GET",
            "auth/token/lookup-self",
            json!({}),
        )
        .await;
        assert_eq!(me["data"]["policies"], json!([policy, "default"]));
    }
    let as_rotator = [("VAULT_TOKEN", rotator.as_str())];
    let as_sidecar = [("VAULT_TOKEN", sidecar.as_str())];

    // Signed by v1, before any rotation.
    let old_msg = b"signed by version 1";
    let old_sig = bao
        .api_ok(
            "POST",
            &format!("transit/sign/{KEY}"),
            json!({"input": b64(old_msg)}),
        )
        .await["signature"]
        .as_str()
        .unwrap()
        .to_string();

    // --- The rotation job: everything it does works with the rotator policy alone.
    let plan = aegis_json(
        &bao,
        &as_rotator,
        &["rotate", "--key", KEY, "--force", "--grace", "1h", "--json"],
    );
    assert_eq!(plan["rotated_to"], 2, "{plan}");
    assert_eq!(plan["recorded"], json!([1]), "{plan}");
    assert_eq!(plan["min_decryption_version"], json!([1, 2]), "{plan}");
    // Retried within --min-interval: nothing rotates again, still exit 0.
    let again = aegis_json(&bao, &as_rotator, &["rotate", "--key", KEY, "--json"]);
    assert_eq!(again["rotated_to"], Value::Null, "{again}");
    let until = rfc3339_in(Duration::from_secs(1800));
    let retired = aegis_json(
        &bao,
        &as_rotator,
        &[
            "retire",
            "--key",
            KEY,
            "--version",
            "1",
            "--at",
            &until,
            "--reason",
            "re-signed early",
            "--json",
        ],
    );
    assert_eq!(retired["retire_after"], until.as_str(), "{retired}");
    let one = aegis_json(
        &bao,
        &as_rotator,
        &["keys", "status", "--key", KEY, "--json"],
    );
    let all = aegis_json(&bao, &as_rotator, &["keys", "status", "--json"]);
    for status in [&one[0], &all[0]] {
        assert_eq!(status["key"], KEY, "{status}");
        assert_eq!(status["signing_version"], 2, "{status}");
        assert_eq!(status["versions"][1]["state"], "retired_valid", "{status}");
        assert_eq!(status["versions"][1]["retire_after"], until.as_str());
    }
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");

    // --- The sidecar's token cannot run the job: 77 (permission denied), key unchanged.
    for args in [
        &["rotate", "--key", KEY, "--force"][..],
        &[
            "retire",
            "--key",
            KEY,
            "--version",
            "1",
            "--now",
            "--reason",
            "x",
        ][..],
    ] {
        let (code, _, err) = aegis(&bao, &as_sidecar, args);
        assert_eq!(code, 77, "sidecar token: aegis {args:?}: {err}");
        assert!(err.contains("permission denied"), "{err}");
    }
    let key = bao
        .api_ok("GET", &format!("transit/keys/{KEY}"), json!({}))
        .await;
    assert_eq!(
        (
            key["latest_version"].clone(),
            key["min_decryption_version"].clone()
        ),
        (json!(2), json!(2))
    );

    // Other keys exist from here on: one whose name starts with "model-sign" too.
    bao.create_key("other-key", "ecdsa-p256").await;
    bao.create_key("model-sign-p256", "ecdsa-p256").await;

    // --- The sidecar, with the sidecar token only.
    let side = Sidecar::start(
        &bao,
        &[("VAULT_TOKEN", sidecar.as_str()), ("AEGIS_KEYS", KEY)],
    )
    .await;
    sign_and_verify(&side, KEY, b"signed by the sidecar")
        .await
        .unwrap();
    // The hash-suffixed routes (policy paths "transit/sign/model-sign/+").
    let msg = b64(b"sha2-512 in the path");
    let (s, b) = side
        .api(
            "POST",
            &format!("transit/sign/{KEY}/sha2-512"),
            Some(json!({"input": msg})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let sig = b["data"]["signature"].as_str().unwrap().to_string();
    let (s, b) = side
        .api(
            "POST",
            &format!("transit/verify/{KEY}/sha2-512"),
            Some(json!({"input": msg, "signature": sig})),
        )
        .await;
    assert_eq!((s, b["data"]["valid"].clone()), (200, json!(true)), "{b}");
    let checked = allowed(
        &bao,
        &sidecar,
        "sidecar",
        "POST",
        &format!("transit/verify/{KEY}/sha2-512"),
        json!({"input": msg, "signature": sig}),
    )
    .await;
    assert_eq!(checked["data"]["valid"], true);

    // v1 is retired but valid: Vault itself refuses it (below min_decryption_version)
    // and no longer returns its public key; this sidecar started after the rotation, so
    // it knows v1 ONLY from the retention record, read with the sidecar policy.
    let (s, b) = bao
        .api(
            "POST",
            &format!("transit/verify/{KEY}"),
            Some(json!({"input": b64(old_msg), "signature": old_sig})),
        )
        .await;
    assert_eq!(s, 400, "Vault should refuse v1 itself: {b}");
    let (s, b) = side
        .api(
            "POST",
            &format!("transit/verify/{KEY}"),
            Some(json!({"input": b64(old_msg), "signature": old_sig})),
        )
        .await;
    assert_eq!(
        (s, b["data"]["valid"].clone()),
        (200, json!(true)),
        "v1 through the sidecar: {b}"
    );
    let (s, b) = side.api("GET", &format!("transit/keys/{KEY}"), None).await;
    assert_eq!(s, 200, "{b}");
    assert!(b["data"]["keys"]["1"].is_object(), "v1 not listed: {b}");
    side.stop().await;

    // Without an allowlist the sidecar asks Vault for any key: Vault's 403 comes back.
    let open = Sidecar::start(&bao, &[("VAULT_TOKEN", sidecar.as_str())]).await;
    for other in ["other-key", "model-sign-p256"] {
        let (s, b) = open
            .api(
                "POST",
                &format!("transit/sign/{other}"),
                Some(json!({"input": msg})),
            )
            .await;
        assert_eq!(s, 403, "sign {other} through the sidecar: {b}");
        assert!(b.to_string().contains("permission denied"), "{b}");
    }
    sign_and_verify(&open, KEY, b"still fine").await.unwrap();
    open.stop().await;

    // --- Sidecar token, directly against OpenBao: exactly its six paths.
    let who = "sidecar";
    allowed(
        &bao,
        &sidecar,
        who,
        "GET",
        &format!("transit/keys/{KEY}"),
        json!({}),
    )
    .await;
    allowed(&bao, &sidecar, who, "GET", RECORD, json!({})).await;
    let sign = json!({"input": msg});
    allowed(
        &bao,
        &sidecar,
        who,
        "POST",
        &format!("transit/sign/{KEY}"),
        sign.clone(),
    )
    .await;
    let rotate = json!({});
    let config = json!({"min_decryption_version": 1});
    let record = json!({"data": {"previous_keys": []}});
    for (method, path, body) in [
        ("POST", "transit/sign/other-key", &sign),
        ("POST", "transit/sign/other-key/sha2-256", &sign),
        ("POST", "transit/sign/model-sign-p256", &sign),
        ("POST", "transit/sign/model-sign/sha2-256/extra", &sign),
        ("GET", "transit/keys/other-key", &rotate),
        ("LIST", "transit/keys", &rotate),
        ("POST", "transit/keys/model-sign", &rotate),
        ("DELETE", "transit/keys/model-sign", &rotate),
        ("POST", "transit/keys/model-sign/rotate", &rotate),
        ("POST", "transit/keys/model-sign/config", &config),
        ("GET", "transit/export/signing-key/model-sign", &rotate),
        ("GET", "transit/backup/model-sign", &rotate),
        ("POST", RECORD, &record),
        // The record's endorsement key: read only (a sidecar token cannot endorse).
        ("POST", "transit/sign/aegis-retention.model-sign", &sign),
        ("POST", "transit/keys/aegis-retention.model-sign", &rotate),
        (
            "POST",
            "transit/keys/aegis-retention.model-sign/rotate",
            &rotate,
        ),
        (
            "POST",
            "transit/keys/aegis-retention.model-sign/config",
            &config,
        ),
        (
            "POST",
            "transit/keys/aegis-retention.model-sign/trim",
            &json!({"min_available_version": 1}),
        ),
        ("GET", "secret/data/aegis/keys/transit/other-key", &rotate),
        (
            "GET",
            "secret/metadata/aegis/keys/transit/model-sign",
            &rotate,
        ),
        ("GET", "secret/data/unrelated", &rotate),
        ("LIST", "secret/metadata/aegis/keys/transit", &rotate),
        // The watch lists one folder's metadata; nothing above it, no data.
        ("LIST", "secret/detailed-metadata/aegis/keys/", &rotate),
        ("LIST", "secret/detailed-metadata/", &rotate),
        (
            "GET",
            "secret/detailed-metadata/aegis/keys/transit/model-sign",
            &rotate,
        ),
    ] {
        denied(&bao, &sidecar, who, method, path, body.clone()).await;
    }
    // The watch's one listing: the record's metadata, never its data.
    let listed = allowed(
        &bao,
        &sidecar,
        who,
        "LIST",
        "secret/detailed-metadata/aegis/keys/transit/",
        json!({}),
    )
    .await;
    assert_eq!(listed["data"]["keys"], json!([KEY]), "{listed}");
    let meta = bao
        .api_ok(
            "GET",
            "secret/metadata/aegis/keys/transit/model-sign",
            json!({}),
        )
        .await;
    assert_eq!(
        listed["data"]["key_info"][KEY]["current_version"], meta["current_version"],
        "{listed}"
    );
    assert!(
        listed["data"]["key_info"][KEY].get("data").is_none(),
        "{listed}"
    );

    // --- Rotator token, directly against OpenBao: no sign, no delete, no other key, and
    // of the config endpoint only min_decryption_version.
    let who = "rotator";
    allowed(
        &bao,
        &rotator,
        who,
        "POST",
        &format!("transit/keys/{KEY}/config"),
        json!({"min_decryption_version": 2}),
    )
    .await;
    let listed = allowed(&bao, &rotator, who, "LIST", "transit/keys", json!({})).await;
    // The three keys of the test and model-sign's record endorsement key.
    assert_eq!(
        listed["data"]["keys"].as_array().unwrap().len(),
        4,
        "{listed}"
    );
    for (method, path, body) in [
        ("POST", "transit/sign/model-sign", &sign),
        ("POST", "transit/sign/model-sign/sha2-256", &sign),
        ("POST", "transit/verify/model-sign", &sign),
        ("POST", "transit/keys/model-sign", &rotate),
        ("DELETE", "transit/keys/model-sign", &rotate),
        (
            "POST",
            "transit/keys/model-sign/config",
            &json!({"deletion_allowed": true}),
        ),
        (
            "POST",
            "transit/keys/model-sign/config",
            &json!({"exportable": true}),
        ),
        (
            "POST",
            "transit/keys/model-sign/config",
            &json!({"min_decryption_version": 2, "allow_plaintext_backup": true}),
        ),
        (
            "POST",
            "transit/keys/model-sign/trim",
            &json!({"min_available_version": 2}),
        ),
        ("GET", "transit/export/signing-key/model-sign", &rotate),
        ("GET", "transit/backup/model-sign", &rotate),
        ("GET", "transit/keys/other-key", &rotate),
        ("POST", "transit/keys/other-key/rotate", &rotate),
        ("POST", "transit/keys/model-sign-p256/rotate", &rotate),
        // The endorsement key: no other type, no deletion, no export.
        (
            "POST",
            "transit/keys/aegis-retention.model-sign",
            &json!({"type": "rsa-2048"}),
        ),
        ("DELETE", "transit/keys/aegis-retention.model-sign", &rotate),
        (
            "POST",
            "transit/keys/aegis-retention.model-sign/config",
            &json!({"deletion_allowed": true}),
        ),
        ("DELETE", RECORD, &rotate),
        (
            "POST",
            "secret/delete/aegis/keys/transit/model-sign",
            &json!({"versions": [1]}),
        ),
        (
            "POST",
            "secret/destroy/aegis/keys/transit/model-sign",
            &json!({"versions": [1]}),
        ),
        (
            "GET",
            "secret/metadata/aegis/keys/transit/model-sign",
            &rotate,
        ),
        (
            "DELETE",
            "secret/metadata/aegis/keys/transit/model-sign",
            &rotate,
        ),
        ("GET", "secret/data/aegis/keys/transit/other-key", &rotate),
        ("POST", "secret/data/aegis/keys/transit/other-key", &record),
        ("GET", "secret/data/unrelated", &rotate),
        (
            "POST",
            "sys/policies/acl/aegis-rotator",
            &json!({"policy": ""}),
        ),
    ] {
        denied(&bao, &rotator, who, method, path, body.clone()).await;
    }
    // After all that, the record still holds v1 as the job left it.
    let rec = allowed(&bao, &rotator, who, "GET", RECORD, json!({})).await;
    assert_eq!(rec["data"]["data"]["previous_keys"][0]["version"], 1);

    // --- The sync job (attacker: its token): it reads the KV folder of its sync file and
    // what decides which versions of the key verify; nothing else, and it writes nothing.
    let file = deploy("vault/aegis-sync.hcl");
    bao_cli(
        &bao,
        &["policy", "write", "aegis-sync", file.to_str().unwrap()],
    );
    let sync = token_for(&bao, "aegis-sync");
    let who = "aegis-sync";
    bao.api_ok(
        "POST",
        "secret/data/models/model-server/hf",
        json!({"data": {"token": "t"}}),
    )
    .await;
    bao.api_ok(
        "POST",
        "secret/data/models/other/db",
        json!({"data": {"password": "p"}}),
    )
    .await;
    for path in [
        "secret/data/models/model-server/hf",
        &format!("transit/keys/{KEY}"),
        RECORD,
        &format!("transit/keys/aegis-retention.{KEY}"),
    ] {
        allowed(&bao, &sync, who, "GET", path, json!({})).await;
    }
    for (method, path, body) in [
        ("GET", "secret/data/models/other/db", json!({})),
        ("LIST", "secret/metadata/models/model-server/", json!({})),
        ("GET", "secret/metadata/models/model-server/hf", json!({})),
        (
            "POST",
            "secret/data/models/model-server/hf",
            json!({"data": {"token": "forged"}}),
        ),
        ("DELETE", "secret/data/models/model-server/hf", json!({})),
        (
            "POST",
            &format!("transit/sign/{KEY}"),
            json!({"input": b64(b"x")}),
        ),
        ("GET", "secret/data/aegis/keys/transit/other-key", json!({})),
    ] {
        denied(&bao, &sync, who, method, path, body).await;
    }
}

/// `deploy/vault/setup.sh` against a real OpenBao (Kubernetes API: the harness's
/// TokenReview stand-in; GitHub's OIDC issuer: a test key passed as
/// JWT_VALIDATION_PUBKEYS_FILE). The CronJob's own args and auth settings rotate through
/// the "aegis-rotator" Kubernetes role; the sidecar signs through "model-server"; a
/// GitHub-shaped OIDC token of the bound repository and ref rotates through the CI role
/// with the workflow's settings; everything else is refused at login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_script_roles_work_with_the_manifests_and_refuse_others() {
    let bao = Bao::dev().await;
    let k8s = KubernetesApiStandIn::start().await;
    let github = JwtSigner::generate();
    let issuer = "https://token.actions.githubusercontent.com";
    let audience = "https://vault.aegis.test";
    let (repo, git_ref) = ("example-org/models", "refs/heads/main");
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, content: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p.to_str().unwrap().to_string()
    };
    let ca = file("k8s-ca.pem", &k8s.ca_pem);
    let reviewer = file("reviewer.jwt", k8s.reviewer_jwt());
    let pubkeys = file("github.pem", github.public_key_pem());
    let setup = |extra: &[(&str, &str)]| {
        let out = Command::new("bash")
            .arg(deploy("vault/setup.sh"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .env("VAULT_ADDR", &bao.addr)
            .env("VAULT_TOKEN", &bao.token)
            .env("BAO", bao_bin())
            .env("NAMESPACE", "ml")
            .env("KEY_TYPE", "ecdsa-p256")
            .env("K8S_HOST", &k8s.url)
            .env("K8S_CA_CERT_FILE", &ca)
            .env("K8S_TOKEN_REVIEWER_JWT_FILE", &reviewer)
            .env("GITHUB_BOUND_REPOSITORY", repo)
            .env("GITHUB_BOUND_REF", git_ref)
            .env("GITHUB_OIDC_AUDIENCE", audience)
            .env("JWT_VALIDATION_PUBKEYS_FILE", &pubkeys)
            .envs(extra.iter().copied())
            .output()
            .expect("run setup.sh");
        assert!(
            out.status.success(),
            "setup.sh: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    setup(&[]);

    // The policies in OpenBao are the files, verbatim (defaults render to themselves),
    // and the key was created.
    for name in ["aegis-sidecar", "aegis-rotator", "aegis-sync"] {
        let p = bao
            .api_ok("GET", &format!("sys/policies/acl/{name}"), json!({}))
            .await;
        assert_eq!(
            p["policy"].as_str().unwrap().trim(),
            read_deploy(&format!("vault/{name}.hcl")).trim()
        );
    }
    let key = bao
        .api_ok("GET", &format!("transit/keys/{KEY}"), json!({}))
        .await;
    assert_eq!(key["type"], "ecdsa-p256");

    // --- Kubernetes roles: settings taken from the manifests.
    let cron = read_deploy("kubernetes/rotation/rotation-cronjob.yaml");
    let sidecar_yaml = read_deploy("kubernetes/base/deployment.yaml");
    let job_role = manifest_env(&cron, "AEGIS_AUTH_ROLE");
    let side_role = env_file_value(&read_deploy("kubernetes/base/aegis.env"), "AEGIS_AUTH_ROLE");
    assert_eq!(manifest_env(&cron, "AEGIS_AUTH_METHOD"), "kubernetes");
    let rotator_sa = ServiceAccount::new("ml", "aegis-rotator");
    let sidecar_sa = ServiceAccount::new("ml", "model-server");
    let rotator_jwt = k8s.issue_token(&rotator_sa);
    let sidecar_jwt = k8s.issue_token(&sidecar_sa);

    // The roles bind the audience "vault" of the manifests' projected tokens. The
    // stand-in's tokens carry no "aud" claim, like legacy token Secrets: refused.
    assert_eq!(
        manifest_projected_audience(&cron),
        "vault",
        "the CronJob's projected token"
    );
    assert_eq!(
        manifest_projected_audience(&sidecar_yaml),
        "vault",
        "the sidecar's projected token"
    );
    for (role, jwt) in [(&job_role, &rotator_jwt), (&side_role, &sidecar_jwt)] {
        let (s, b) = kubernetes_login(&bao, role, jwt).await;
        assert_eq!(s, 403, "{role}: a token without audience: {b}");
        assert!(b.to_string().contains("aud"), "{b}");
    }
    // Run again (idempotent) without the audience binding, which the stand-in cannot
    // satisfy; everything else about the roles stays as shipped.
    setup(&[("K8S_AUDIENCE", "")]);

    let (s, b) = kubernetes_login(&bao, &job_role, &rotator_jwt).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["auth"]["policies"], json!(["aegis-rotator", "default"]));
    assert_eq!(b["auth"]["lease_duration"], 600, "rotator token TTL 10m");
    let (s, b) = kubernetes_login(&bao, &side_role, &sidecar_jwt).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["auth"]["policies"], json!(["aegis-sidecar", "default"]));
    assert_eq!(b["auth"]["lease_duration"], 3600, "sidecar token TTL 1h");
    // The sync job's role, as its CronJob names it, takes its own account only.
    let sync_cron = read_deploy("kubernetes/sync/sync-cronjob.yaml");
    let sync_role = manifest_env(&sync_cron, "AEGIS_AUTH_ROLE");
    assert_eq!(manifest_projected_audience(&sync_cron), "vault");
    let sync_jwt = k8s.issue_token(&ServiceAccount::new("ml", "aegis-sync"));
    let (s, b) = kubernetes_login(&bao, &sync_role, &sync_jwt).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["auth"]["policies"], json!(["aegis-sync", "default"]));
    assert_eq!(b["auth"]["lease_duration"], 600, "sync token TTL 10m");
    let (s, b) = kubernetes_login(&bao, &sync_role, &rotator_jwt).await;
    assert!(
        (400..500).contains(&s),
        "the rotator's account as the sync job: {s} {b}"
    );
    // Each role takes its own service account in its own namespace only.
    for (role, jwt, what) in [
        (
            &job_role,
            sidecar_jwt.clone(),
            "the sidecar's account as the rotator",
        ),
        (
            &side_role,
            rotator_jwt.clone(),
            "the rotator's account as the sidecar",
        ),
        (
            &job_role,
            k8s.issue_token(&ServiceAccount::new("other", "aegis-rotator")),
            "aegis-rotator of another namespace",
        ),
        (
            &job_role,
            k8s.issue_token(&ServiceAccount::new("ml", "default")),
            "the namespace's default account",
        ),
    ] {
        let (s, b) = kubernetes_login(&bao, role, &jwt).await;
        assert!(
            (400..500).contains(&s),
            "{what}: login should be refused, got {s} {b}"
        );
    }

    // The CronJob's args, as in the manifest, with its auth settings. The key was just
    // created (younger than --min-interval), so the first run adds --force; the second
    // is the manifest's command verbatim, as a retry would run it: a no-op, exit 0.
    let jwt_file = file("rotator.jwt", &rotator_jwt);
    let job_env = [
        ("AEGIS_AUTH_METHOD", "kubernetes"),
        ("AEGIS_AUTH_ROLE", job_role.as_str()),
        ("AEGIS_JWT_FILE", jwt_file.as_str()),
    ];
    let all_args = manifest_args(&cron);
    assert_eq!(all_args.len(), 2, "rotate and keys status: {all_args:?}");
    let rotate: Vec<&str> = all_args[0].iter().map(String::as_str).collect();
    let status: Vec<&str> = all_args[1].iter().map(String::as_str).collect();
    assert_eq!(&rotate[..3], ["rotate", "--key", KEY]);
    let mut forced = rotate.clone();
    forced.push("--force");
    let plan = aegis_json(&bao, &job_env, &forced);
    assert_eq!(
        (plan["rotated_to"].clone(), plan["recorded"].clone()),
        (json!(2), json!([1])),
        "{plan}"
    );
    let retry = aegis_json(&bao, &job_env, &rotate);
    assert_eq!(retry["rotated_to"], Value::Null, "{retry}");
    assert!(
        retry["rotation_skipped"]
            .as_str()
            .unwrap_or_default()
            .contains("not rotating again"),
        "{retry}"
    );
    let inventory = aegis_json(&bao, &job_env, &status);
    assert_eq!(inventory[0]["signing_version"], 2, "{inventory}");

    // The sidecar logs in through its role and signs.
    let side_file = file("sidecar.jwt", &sidecar_jwt);
    let side = Sidecar::start(
        &bao,
        &[
            ("VAULT_TOKEN", ""),
            ("AEGIS_AUTH_METHOD", "kubernetes"),
            ("AEGIS_AUTH_ROLE", side_role.as_str()),
            ("AEGIS_JWT_FILE", side_file.as_str()),
            ("AEGIS_KEYS", KEY),
        ],
    )
    .await;
    sign_and_verify(&side, KEY, b"through the model-server role")
        .await
        .unwrap();
    side.stop().await;
    // The rotator's account through the sidecar's auth settings is refused: the job
    // cannot be turned into a signer.
    let stolen = file("stolen.jwt", &rotator_jwt);
    let (code, _, err) = aegis(
        &bao,
        &[
            ("AEGIS_AUTH_METHOD", "kubernetes"),
            ("AEGIS_AUTH_ROLE", side_role.as_str()),
            ("AEGIS_JWT_FILE", stolen.as_str()),
        ],
        &["keys", "status", "--key", KEY],
    );
    assert_ne!(code, 0, "{err}");

    // --- GitHub Actions: the workflow's settings and a GitHub-shaped OIDC token.
    let workflow = read_deploy("ci/github-actions-rotate.yml");
    let ci_env_of = |jwt_file: &str| -> Vec<(String, String)> {
        ["AEGIS_AUTH_METHOD", "AEGIS_AUTH_MOUNT", "AEGIS_AUTH_ROLE"]
            .iter()
            .map(|k| (k.to_string(), workflow_setting(&workflow, k)))
            .chain([("AEGIS_JWT_FILE".to_string(), jwt_file.to_string())])
            .collect()
    };
    let mint = |repository: &str, r#ref: &str, aud: &str| {
        let now = now_secs();
        github.sign(&json!({
            "iss": issuer,
            "aud": aud,
            "sub": format!("repo:{repository}:ref:{}", r#ref),
            "repository": repository,
            "repository_owner": repository.split('/').next().unwrap(),
            "ref": r#ref,
            "job_workflow_ref": format!("{repository}/.github/workflows/rotate.yml@{}", r#ref),
            "event_name": "schedule",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        }))
    };
    let mount = workflow_setting(&workflow, "AEGIS_AUTH_MOUNT");
    let ci_role = workflow_setting(&workflow, "AEGIS_AUTH_ROLE");
    let good = mint(repo, git_ref, audience);
    let (s, b) = login(
        &bao,
        &format!("auth/{mount}/login"),
        json!({"role": ci_role, "jwt": good}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["auth"]["policies"], json!(["aegis-rotator", "default"]));
    assert_eq!(b["auth"]["lease_duration"], 600, "CI token TTL 10m");

    let ci_file = file("ci.jwt", &good);
    let ci_env = ci_env_of(&ci_file);
    let ci_env: Vec<(&str, &str)> = ci_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let plan = aegis_json(
        &bao,
        &ci_env,
        &[
            "rotate", "--key", KEY, "--grace", "90d", "--force", "--json",
        ],
    );
    assert_eq!(plan["rotated_to"], 3, "{plan}");

    for (jwt, what) in [
        (mint(repo, "refs/heads/feature", audience), "another ref"),
        (mint(repo, "refs/pull/7/merge", audience), "a pull request"),
        (
            mint("example-org/fork", git_ref, audience),
            "another repository",
        ),
        (
            mint(repo, git_ref, "https://other-vault.test"),
            "another audience",
        ),
        (mint(repo, git_ref, "vault"), "the Kubernetes audience"),
    ] {
        let (s, b) = login(
            &bao,
            &format!("auth/{mount}/login"),
            json!({"role": ci_role, "jwt": jwt}),
        )
        .await;
        assert!(
            (400..500).contains(&s),
            "{what}: login should be refused, got {s} {b}"
        );
        let bad_file = file("bad.jwt", &jwt);
        let bad_env = ci_env_of(&bad_file);
        let bad_env: Vec<(&str, &str)> = bad_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (code, _, err) = aegis(&bao, &bad_env, &["rotate", "--key", KEY, "--force"]);
        assert_ne!(code, 0, "{what}: aegis rotate should fail: {err}");
    }
    let key = bao
        .api_ok("GET", &format!("transit/keys/{KEY}"), json!({}))
        .await;
    assert_eq!(key["latest_version"], 3, "refused logins rotated nothing");
}

/// What can be checked in the shipped files without a YAML parser or a cluster.
#[test]
fn manifests_are_safe_to_render_and_hold_no_long_lived_secret() {
    let mut dirs = vec![deploy("kubernetes"), deploy("ci")];
    let mut yaml_files = Vec::new();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                yaml_files.push(path);
            }
        }
    }
    assert!(yaml_files.len() >= 10, "{yaml_files:?}");
    for path in &yaml_files {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            !text.contains('\t'),
            "{}: YAML forbids tabs",
            path.display()
        );
    }

    // kustomize substitutes nothing: a `${VAR}` left in a manifest would be applied
    // literally (the schedule is set by an overlay's patch, not by envsubst).
    for path in yaml_files
        .iter()
        .filter(|p| p.starts_with(deploy("kubernetes")))
    {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            !text.contains("${"),
            "{}: kustomize does not expand variables",
            path.display()
        );
    }

    // The CI workflow: OIDC only, no repository secret, no Vault token.
    let ci = read_deploy("ci/github-actions-rotate.yml");
    assert!(ci.contains("id-token: write"));
    let expressions: Vec<&str> = ci
        .split("${{")
        .skip(1)
        .map(|e| e.split("}}").next().unwrap())
        .collect();
    assert!(!expressions.is_empty());
    for e in expressions {
        assert!(
            !e.contains("secrets"),
            "the CI example must use no secret: ${{{{{e}}}}}"
        );
    }
    assert!(!ci.contains("VAULT_TOKEN"));
    assert_eq!(workflow_setting(&ci, "AEGIS_AUTH_METHOD"), "jwt");
}
