//! Bad input gets a 4xx in Vault's error shape: never a 5xx, a panic or a hang.

mod common;

use std::time::{Duration, Instant};

use common::{b64, Bao, Sidecar};
use futures::StreamExt as _;
use serde_json::{json, Value};

/// Sends a raw body and checks the answer is a 4xx `{"errors":[non-empty...]}` in time.
async fn expect_4xx(side: &Sidecar, path: &str, body: Vec<u8>, want: u16, needle: &str) {
    let t = Instant::now();
    let resp = side
        .client
        .post(format!("{}/v1/{path}", side.addr))
        .header("X-Vault-Token", "ignored")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(status, want, "{path} {needle}: {v}");
    let first = v["errors"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no Vault-style errors in {v}"));
    assert!(
        first.contains(needle),
        "{path}: expected {needle:?} in {first:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "{path}: took {:?}",
        t.elapsed()
    );
}

fn j(v: Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_vault_style_4xx() {
    let bao = Bao::dev().await;
    bao.create_key("ed", "ed25519").await;
    bao.create_key("rsa", "rsa-2048").await;
    // No allowlist here, so that an unknown key reaches the key lookup (an allowlisted key
    // that does not exist keeps the sidecar not ready, by design).
    let side = Sidecar::start(&bao, &[("AEGIS_MAX_BODY_BYTES", "65536")]).await;
    let input = b64(b"hello");
    let sig = bao
        .api_ok("POST", "transit/sign/ed", json!({"input": input}))
        .await["signature"]
        .as_str()
        .unwrap()
        .to_string();
    let v = "transit/verify/ed";
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            v,
            j(json!({"input": "not base64!", "signature": sig})),
            400,
            "unable to decode input as base64",
        ),
        (
            v,
            j(json!({"input": input, "signature": "vault:v1:***"})),
            400,
            "invalid base64 signature value",
        ),
        (
            v,
            j(json!({"input": input, "signature": "vault:v0:"})),
            400,
            "disallowed by policy (too old)",
        ),
        (
            v,
            j(json!({"input": input, "signature": "vault:vABC:AAAA"})),
            400,
            "version number could not be decoded",
        ),
        (
            v,
            j(json!({"input": input, "signature": "vault:v99999999999999999999:AAAA"})),
            400,
            "version number could not be decoded",
        ),
        (
            v,
            j(json!({"input": input, "signature": "vault:v7:AAAA"})),
            400,
            "version is too new",
        ),
        (v, Vec::new(), 400, "neither a 'signature' nor an 'hmac'"),
        (
            v,
            b"this is not json".to_vec(),
            400,
            "failed to decode JSON input",
        ),
        (v, b"[1,2,3]".to_vec(), 400, "failed to decode JSON input"),
        (
            v,
            j(json!({"input": ["a"], "signature": sig})),
            400,
            "field \"input\"",
        ),
        (
            v,
            j(json!({"input": input, "signature": sig, "prehashed": "perhaps"})),
            400,
            "field \"prehashed\"",
        ),
        (
            v,
            j(json!({"batch_input": "x"})),
            400,
            "failed to parse batch input",
        ),
        (
            v,
            j(json!({"batch_input": [true]})),
            400,
            "failed to parse batch input",
        ),
        (
            v,
            j(json!({"input": input, "signature": sig, "hash_algorithm": "md5"})),
            400,
            "invalid hash algorithm",
        ),
        (
            "transit/verify/ghost",
            j(json!({"input": input, "signature": sig})),
            400,
            "signature verification key not found",
        ),
        (
            "transit/sign/ghost",
            j(json!({"input": input})),
            400,
            "signing key not found",
        ),
        (
            "transit/sign/ed",
            j(json!({"input": input, "key_version": 9})),
            400,
            "higher than the latest key version",
        ),
        (
            "transit/sign/ed",
            j(json!({"input": input, "key_version": -1})),
            400,
            "negative",
        ),
        (
            "transit/sign/rsa",
            j(json!({"input": input, "signature_algorithm": "bogus"})),
            400,
            "unsupported rsa signature algorithm bogus",
        ),
        (
            "transit/sign/rsa",
            j(json!({"input": input, "salt_length": "999"})),
            400,
            "requested salt length 999 is invalid",
        ),
        (
            "transit/sign/ed",
            j(json!({"batch_input": []})),
            400,
            "missing batch input",
        ),
        (
            "transit/encrypt/ed",
            j(json!({"plaintext": input})),
            404,
            "unsupported path",
        ),
    ];
    for (path, body, status, needle) in cases {
        expect_4xx(&side, path, body, status, needle).await;
    }

    // Over the body limit (64 KiB here): 413, whether or not Content-Length announces it.
    // Bodies stay small enough to fit the socket buffers, so the client has finished
    // writing before the server answers and closes.
    expect_4xx(
        &side,
        v,
        vec![b' '; 80 * 1024],
        413,
        "request body too large",
    )
    .await;
    let chunks =
        futures::stream::iter((0..5).map(|_| Ok::<_, std::io::Error>(vec![b' '; 16 * 1024])));
    let resp = side
        .client
        .post(format!("{}/v1/{v}", side.addr))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);

    side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_batches_and_keys_outside_the_allowlist_never_reach_vault() {
    let bao = Bao::dev().await;
    bao.create_key("ed", "ed25519").await;
    bao.create_key("outside", "ed25519").await;
    let side = Sidecar::start(&bao, &[("AEGIS_KEYS", "ed")]).await;

    // A batch of 100 000 items (about 5 MB, under the 32 MiB default body limit).
    let items: Vec<Value> = (0..100_000)
        .map(|_| json!({"input": "aGk=", "signature": "vault:v1:AAAA"}))
        .collect();
    expect_4xx(
        &side,
        "transit/verify/ed",
        j(json!({ "batch_input": items })),
        400,
        "more than the limit",
    )
    .await;
    let items: Vec<Value> = (0..100_000).map(|_| json!({"input": "aGk="})).collect();
    expect_4xx(
        &side,
        "transit/sign/ed",
        j(json!({ "batch_input": items })),
        400,
        "more than the limit",
    )
    .await;

    // With OpenBao frozen, a key outside the allowlist is still refused at once: the
    // refusal does not depend on Vault.
    bao.pause();
    expect_4xx(
        &side,
        "transit/sign/outside",
        j(json!({"input": "aGk="})),
        403,
        "permission denied",
    )
    .await;
    expect_4xx(
        &side,
        "transit/verify/outside",
        j(json!({"input": "aGk=", "signature": "vault:v1:AAAA"})),
        403,
        "permission denied",
    )
    .await;
    let (s, _) = side.api("GET", "transit/keys/outside", None).await;
    bao.resume();
    assert_eq!(s, 403);
    side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_stalls_mid_body_gets_408() {
    let bao = Bao::dev().await;
    bao.create_key("slow", "ed25519").await;
    let side = Sidecar::start(
        &bao,
        &[("AEGIS_KEYS", "slow"), ("AEGIS_HTTP_READ_TIMEOUT", "500ms")],
    )
    .await;
    // Half a JSON body, then nothing: the stream never ends.
    let first: Result<Vec<u8>, std::io::Error> = Ok(br#"{"input": "aGk"#.to_vec());
    let stalled = futures::stream::iter([first]).chain(futures::stream::pending());
    let t = Instant::now();
    let resp = side
        .client
        .post(format!("{}/v1/transit/sign/slow", side.addr))
        .body(reqwest::Body::wrap_stream(stalled))
        .send()
        .await
        .unwrap();
    let elapsed = t.elapsed();
    assert_eq!(resp.status().as_u16(), 408);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("timed out reading the request body")),
        "{v}"
    );
    assert!(
        elapsed >= Duration::from_millis(500) && elapsed < Duration::from_secs(5),
        "answered after {elapsed:?}"
    );
    // The sidecar still serves the next caller.
    let (s, body) = side
        .api("POST", "transit/sign/slow", Some(json!({"input": "aGk="})))
        .await;
    assert_eq!(s, 200, "{body}");
    side.stop().await;
}

/// A Vault that is down: the caller gets a 503 in Vault's shape that names no address
/// (not Vault's URL, host or port), on the HTTP and the gRPC face; the sidecar's log keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_from_a_vault_that_is_down_name_no_address() {
    let mut bao = Bao::dev().await;
    bao.create_key("k", "ed25519").await;
    let side = Sidecar::start(
        &bao,
        &[
            ("AEGIS_VAULT_TIMEOUT", "1s"),
            ("AEGIS_VAULT_TOTAL_TIMEOUT", "2s"),
        ],
    )
    .await;
    let port = bao.port.to_string();
    bao.kill();
    for path in ["transit/sign/k", "transit/keys/not-cached"] {
        let (method, body) = if path.contains("sign") {
            ("POST", Some(json!({"input": b64(b"x")})))
        } else {
            ("GET", None)
        };
        let (status, answer) = side.api(method, path, body).await;
        let text = answer.to_string();
        assert_eq!(status, 503, "{path}: {text}");
        // The URL was in the error, and was withheld.
        assert!(
            text.contains("error sending request for url (<address>)"),
            "{path}: {text}"
        );
        assert!(
            answer["errors"][0]
                .as_str()
                .is_some_and(|m| m.starts_with("Vault is unavailable: ")),
            "{path}: {text}"
        );
        for needle in ["127.0.0.1", "http://", "localhost", &port] {
            assert!(!text.contains(needle), "{path}: {needle:?} in {text}");
        }
    }
    side.stop().await;
}
