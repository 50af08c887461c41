//! `aegis keys publish|export` and the sidecar's `GET /v1/aegis/keys/{key}/jwks.json`
//! against a real OpenBao: after rotations, a revocation and a window that ended, exactly
//! the versions that verify are published (the retired-but-valid one with its window,
//! which Vault itself no longer returns), the same from Vault, through the sidecar and by
//! the sidecar's endpoint; bad input is a 4xx in Vault's shape; the caller policy applies.

mod common;

use common::{b64, Bao, Sidecar};
use serde_json::{json, Value};

/// `aegis <args>` against `addr`, with `VAULT_TOKEN` when given.
fn aegis_at(addr: &str, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let env: Vec<(&str, &str)> = token.map(|t| ("VAULT_TOKEN", t)).into_iter().collect();
    common::aegis_cli(addr, &env, args)
}

/// `aegis <args>` against `bao` with its root token; must succeed; its stdout.
fn aegis_ok(bao: &Bao, args: &[&str]) -> String {
    let (code, out, err) = aegis_at(&bao.addr, Some(&bao.token), args);
    assert_eq!(code, 0, "aegis {args:?}: {err}");
    out
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("not a JWK Set: {jwks}"))
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

/// Key `name`: v1 retired with its window ended, v2 retired but valid for an hour, v3
/// revoked, v4 signing. Returns a signature by v2 over `b"by v2"`.
async fn rotated(bao: &Bao, name: &str, key_type: &str) -> String {
    bao.create_key(name, key_type).await;
    let rotate = ["rotate", "--key", name, "--force", "--grace", "1h"];
    aegis_ok(bao, &rotate);
    let by_v2 = bao.sign(name, b"by v2").await;
    assert!(by_v2.starts_with("vault:v2:"), "{by_v2}");
    aegis_ok(bao, &rotate);
    let revoke = [
        "retire",
        "--key",
        name,
        "--version",
        "3",
        "--now",
        "--reason",
        "test",
    ];
    aegis_ok(bao, &revoke);
    let end = [
        "retire",
        "--key",
        name,
        "--version",
        "1",
        "--at",
        "2020-01-01T00:00:00Z",
        "--reason",
        "test",
    ];
    aegis_ok(bao, &end);
    by_v2
}

/// v2's `retire_after` as the retention record holds it.
async fn v2_window(bao: &Bao, name: &str) -> String {
    let (_, rec) = bao
        .api(
            "GET",
            &format!("secret/data/aegis/keys/transit/{name}"),
            None,
        )
        .await;
    let entries = rec["data"]["data"]["previous_keys"].as_array().unwrap();
    let v2 = entries.iter().find(|e| e["version"] == 2).unwrap();
    v2["retire_after"].as_str().unwrap().to_string()
}

/// `GET /v1/aegis/keys/{key}/jwks.json` with `headers`: status, headers, JSON body.
async fn get_jwks(
    side: &Sidecar,
    path_key: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = side
        .client
        .get(format!("{}/v1/aegis/keys/{path_key}/jwks.json", side.addr));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, headers, body)
}

async fn publishes_what_verifies(key_type: &str) {
    let bao = Bao::dev().await;
    let name = format!("pub-{key_type}");
    let by_v2 = rotated(&bao, &name, key_type).await;
    let window = v2_window(&bao, &name).await;
    // Vault itself returns v4 only: v1-v3 are below min_decryption_version.
    let path = format!("transit/keys/{name}");
    let vault = bao.api_ok("GET", &path, json!({})).await;
    let listed: Vec<&String> = vault["keys"].as_object().unwrap().keys().collect();
    assert_eq!(listed, ["4"]);

    // From Vault, read as the sidecar reads it: v4 current, v2 with its window.
    let jwks: Value =
        serde_json::from_str(&aegis_ok(&bao, &["keys", "publish", "--key", &name])).expect("JSON");
    assert_eq!(kids(&jwks), [format!("{name}:v4"), format!("{name}:v2")]);
    assert_eq!(jwks["keys"][1]["aegis_retire_after"], window.as_str());
    assert!(
        jwks["keys"][0].get("aegis_retire_after").is_none(),
        "{jwks}"
    );
    assert!(jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["use"] == "sig"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.pem");
    let out = aegis_ok(
        &bao,
        &[
            "keys",
            "publish",
            "--key",
            &name,
            "--format",
            "pem",
            "--output",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(out, "", "--output writes nothing to stdout");
    let pem = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        pem.matches("-----BEGIN PUBLIC KEY-----").count(),
        2,
        "{pem}"
    );
    let v2_comment = format!(
        "# key {name:?} version 2 (kid \"{name}:v2\"): retired, verifies until {window}\n-----BEGIN PUBLIC KEY-----\n"
    );
    assert!(pem.contains(&v2_comment), "{pem}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file left"
    );

    // `keys export` without --version is the same set; with a version that does not verify, refused.
    assert_eq!(aegis_ok(&bao, &["keys", "export", "--key", &name]), pem);
    let export_jwks = aegis_ok(
        &bao,
        &["keys", "export", "--key", &name, "--format", "jwks"],
    );
    assert_eq!(serde_json::from_str::<Value>(&export_jwks).unwrap(), jwks);
    for version in ["1", "3"] {
        let (code, _, err) = aegis_at(
            &bao.addr,
            Some(&bao.token),
            &["keys", "export", "--key", &name, "--version", version],
        );
        assert_eq!(code, 65, "{err}");
        assert!(
            err.contains(&format!(
                "has no public key for version {version} that verifies (versions that verify: [4, 2])"
            )),
            "{err}"
        );
    }
    let v2_only = aegis_ok(&bao, &["keys", "export", "--key", &name, "--version", "2"]);
    assert!(
        v2_only.ends_with(&pem[pem.find(&v2_comment).unwrap()..]),
        "{v2_only}"
    );

    // The sidecar serves the same set, and verifies the v2 signature Vault now refuses.
    let side = Sidecar::start(&bao, &[("AEGIS_KEYS", &name)]).await;
    let (status, headers, served) = get_jwks(&side, &name, &[]).await;
    assert_eq!(status, 200, "{served}");
    assert_eq!(served, jwks);
    assert_eq!(headers["content-type"], "application/jwk-set+json");
    assert_eq!(headers["cache-control"], "max-age=30");
    let (s, body) = side.verify(&name, b"by v2", &by_v2).await;
    assert_eq!((s, &body["data"]["valid"]), (200, &json!(true)), "{body}");
    let (s, _) = bao
        .api(
            "POST",
            &format!("transit/verify/{name}"),
            Some(json!({"input": b64(b"by v2"), "signature": by_v2})),
        )
        .await;
    assert_eq!(s, 400, "Vault itself refuses v2");

    // Through the sidecar (no token), the CLI publishes the sidecar's set.
    let (code, via_sidecar, err) = aegis_at(&side.addr, None, &["keys", "export", "--key", &name]);
    assert_eq!((code, via_sidecar), (0, pem), "{err}");
    let (code, via_sidecar, err) = aegis_at(&side.addr, None, &["keys", "publish", "--key", &name]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&via_sidecar).unwrap(), jwks);
    side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_ed25519_lists_exactly_the_versions_that_verify() {
    publishes_what_verifies("ed25519").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_ecdsa_p256_lists_exactly_the_versions_that_verify() {
    publishes_what_verifies("ecdsa-p256").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_answers_from_the_cache_and_bad_input_is_a_4xx() {
    common::metrics_on();
    let bao = Bao::dev().await;
    bao.create_key("j-ed", "ed25519").await;
    bao.create_key("j-aes", "aes256-gcm96").await;
    let side = Sidecar::start(
        &bao,
        &[
            ("AEGIS_KEYS", "*"),
            ("AEGIS_REFRESH_INTERVAL", "1h"),
            ("AEGIS_MAX_KEYSET_AGE", "2h"),
        ],
    )
    .await;
    let reads = || side.metric("aegis_vault_requests_total", "endpoint=\"read_key\"");
    assert_eq!(reads().await, 0.0, "AEGIS_KEYS=*: nothing preloaded");
    for _ in 0..6 {
        let (status, _, body) = get_jwks(&side, "j-ed", &[]).await;
        assert_eq!((status, kids(&body)), (200, vec!["j-ed:v1".to_string()]));
        // The first request loads the key and its endorsement key; the others are cached.
        assert_eq!(reads().await, 2.0);
    }
    let served = side
        .metric(
            "aegis_requests_total",
            "operation=\"read_key\",outcome=\"ok\"",
        )
        .await;
    assert_eq!(served, 6.0);

    for (path_key, status, message) in [
        ("j-missing", 404, "no key \"j-missing\" in Transit"),
        ("k@x", 404, "unsupported path"),
        ("j%zz", 400, "invalid URL escape \"%zz\""),
        (
            "j-aes",
            400,
            "key \"j-aes\" is a aes256-gcm96 key: it has no public key to publish",
        ),
    ] {
        let (s, _, body) = get_jwks(&side, path_key, &[]).await;
        assert_eq!(
            (s, body),
            (status, json!({"errors": [message]})),
            "{path_key}"
        );
    }
    let r = side
        .client
        .post(format!("{}/v1/aegis/keys/j-ed/jwks.json", side.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    // The request-forgery guard applies as to every key read.
    let bare = reqwest::Client::new();
    let url = format!("{}/v1/aegis/keys/j-ed/jwks.json", side.addr);
    let r = bare.get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 412);

    let (code, _, err) = aegis_at(
        &bao.addr,
        Some(&bao.token),
        &["keys", "publish", "--key", "j-missing"],
    );
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("Transit has no key \"j-missing\""), "{err}");
    let (code, _, err) = aegis_at(&side.addr, None, &["keys", "publish", "--key", "j-aes"]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("is a aes256-gcm96 key"), "{err}");
    side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caller_policy_decides_who_reads_the_jwks() {
    let bao = Bao::dev().await;
    for k in ["c1", "c2"] {
        bao.create_key(k, "ecdsa-p256").await;
    }
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("reader");
    std::fs::write(&token, "reader-secret\n").unwrap();
    let policy = dir.path().join("policy.toml");
    let rules = format!(
        "[[caller]]\nname = \"reader\"\ntoken_file = \"{}\"\nverify = [\"c1\"]\n",
        token.display()
    );
    std::fs::write(&policy, rules).unwrap();
    let side = Sidecar::start(
        &bao,
        &[
            ("AEGIS_POLICY_FILE", policy.to_str().unwrap()),
            ("AEGIS_KEYS", "c1,c2"),
        ],
    )
    .await;
    let reader = [("Authorization", "Bearer reader-secret")];
    let (s, _, body) = get_jwks(&side, "c1", &reader).await;
    assert_eq!((s, kids(&body)), (200, vec!["c1:v1".to_string()]));
    let (s, _, body) = get_jwks(&side, "c2", &reader).await;
    let denied =
        json!({"errors": ["permission denied: caller \"reader\" may not read key \"c2\""]});
    assert_eq!((s, body), (403, denied));
    // A key outside the allowlist is refused whoever asks.
    let (s, _, body) = get_jwks(&side, "c3", &reader).await;
    assert_eq!((s, body), (403, json!({"errors": ["permission denied"]})));
    let (s, _, body) = get_jwks(&side, "c1", &[]).await;
    assert_eq!(s, 403, "{body}");
    assert!(body["errors"][0]
        .as_str()
        .unwrap()
        .contains("caller token is required"));

    // The CLI through the sidecar sends its token as the caller's.
    let env = [("VAULT_TOKEN", "reader-secret")];
    let (code, out, err) = common::aegis_cli(&side.addr, &env, &["keys", "export", "--key", "c1"]);
    assert_eq!(
        (code, out.matches("BEGIN PUBLIC KEY").count()),
        (0, 1),
        "{err}"
    );
    let (code, _, err) = common::aegis_cli(&side.addr, &env, &["keys", "export", "--key", "c2"]);
    assert_eq!(code, 77, "{err}");
    assert!(err.contains("may not read key"), "{err}");
    side.stop().await;
}
