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

/// One raw HTTP/1.1 request, the path sent exactly as given (no client normalizes it):
/// (status, Location header, the JSON object in the body or Null).
async fn raw_request(addr: &str, path: &str, token: &str, body: &str) -> (u16, String, Value) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let host = addr.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nX-Vault-Request: true\r\nX-Vault-Token: {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).to_string();
    let status = answer[9..12].parse().unwrap();
    let head = answer.split("\r\n\r\n").next().unwrap_or_default();
    let location = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("Location: ")
                .or_else(|| l.strip_prefix("location: "))
        })
        .unwrap_or_default()
        .to_string();
    let json = match (answer.find('{'), answer.rfind('}')) {
        (Some(a), Some(b)) if a < b => serde_json::from_str(&answer[a..=b]).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (status, location, json)
}

/// The key in the URL is read as OpenBao reads it, checked against the real server with
/// the same raw requests: percent-decoded (`k%2Dx` is `k-x`, an encoded slash separates
/// the hash), dot segments redirected (307) or refused ("relative paths not supported"),
/// bad escapes and names Vault has no route for refused. So `k-x`, `k%2Dx` and `%6B-x`
/// are one key: one rate bucket (the third request is over the caller's burst of 2), one
/// cache entry, one audit name. The attacker is a caller whose policy allows signing with
/// `k-x` only, at 2 requests per key, trying to get more signatures by spelling the key
/// differently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_in_the_url_is_decoded_or_refused_as_vault_does() {
    let dir = tempfile::tempdir().unwrap();
    let bao = Bao::dev().await;
    bao.create_key("k-x", "ed25519").await;
    let caller_token = "caller-token-for-k-x-only";
    let token_file = dir.path().join("caller.token");
    std::fs::write(&token_file, caller_token).unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[caller]]\nname = \"model-server\"\ntoken_file = \"{}\"\nsign = [\"k-x\"]\nverify = [\"k-x\"]\nrate = 0.001\nburst = 2\n",
            token_file.display()
        ),
    )
    .unwrap();
    let audit = dir.path().join("audit.jsonl");
    let side = Sidecar::start(
        &bao,
        &[
            ("AEGIS_POLICY_FILE", policy.to_str().unwrap()),
            ("AEGIS_AUDIT_FILE", audit.to_str().unwrap()),
        ],
    )
    .await;
    let sign = r#"{"input":"aGk="}"#;

    // Cases where the sidecar answers as OpenBao does, before any rate is spent.
    for (path, status, answer) in [
        ("/v1/transit/sign/a/../k-x", 307, "/v1/transit/sign/k-x"),
        (
            "/v1/transit/sign/k-x//sha2-256?x=1",
            307,
            "/v1/transit/sign/k-x/sha2-256?x=1",
        ),
        (
            "/v1/transit/sign/%2E%2E",
            400,
            "relative paths not supported",
        ),
        (
            "/v1/transit/sign/k-x%2F..%2Fk-x",
            400,
            "relative paths not supported",
        ),
        ("/v1/transit/sign/k-x%zz", 400, ""),
        ("/v1/transit/sign/-kx", 404, "unsupported path"),
        ("/v1/transit/sign/k@x", 404, "unsupported path"),
        ("/v1/transit/sign/k%20x", 404, "unsupported path"),
    ] {
        let (vault_status, vault_location, vault_body) =
            raw_request(&bao.addr, path, &bao.token, sign).await;
        let (side_status, side_location, side_body) =
            raw_request(&side.addr, path, caller_token, sign).await;
        assert_eq!(
            (side_status, vault_status),
            (status, status),
            "{path}: {side_body} / {vault_body}"
        );
        if status == 307 {
            assert_eq!(
                (side_location.as_str(), vault_location.as_str()),
                (answer, answer),
                "{path}"
            );
        } else if !answer.is_empty() {
            let first = |v: &Value| {
                aegis::vault::clean_message(v["errors"][0].as_str().unwrap_or_default())
            };
            assert_eq!(first(&side_body), answer, "{path}: {side_body}");
            assert_eq!(first(&vault_body), answer, "{path}: {vault_body}");
        }
    }

    // Three spellings of one key: Vault signs all three; the sidecar's one bucket of 2
    // refuses the third.
    for path in [
        "/v1/transit/sign/k%2Dx",
        "/v1/transit/sign/%6B-x",
        "/v1/transit/sign/k-x%2Fsha2-256",
    ] {
        let (status, _, body) = raw_request(&bao.addr, path, &bao.token, sign).await;
        assert_eq!(status, 200, "Vault: {path}: {body}");
    }
    let mut statuses = Vec::new();
    for path in [
        "/v1/transit/sign/k-x",
        "/v1/transit/sign/k%2Dx",
        "/v1/transit/sign/%6B-x",
    ] {
        statuses.push(raw_request(&side.addr, path, caller_token, sign).await.0);
    }
    assert_eq!(statuses, [200, 200, 429]);
    assert!(side.state.keys.contains("k-x"));
    assert!(!side.state.keys.contains("k%2Dx"));

    // The gRPC face's key goes through the same check: a spelling Vault has no route for
    // is NOT_FOUND there too, never a second bucket.
    let headers = http::HeaderMap::new();
    let peer = aegis::policy::Peer::Tcp("127.0.0.1:1".parse().unwrap());
    let refused = side
        .state
        .admit(
            &peer,
            &aegis::policy::Headers::from_map(&headers),
            aegis::policy::Action::Sign,
            "k%2Dx",
        )
        .await
        .err()
        .unwrap();
    assert_eq!(
        (refused.status().as_u16(), refused.to_string()),
        (404, "unsupported path".into())
    );
    assert_eq!(refused.grpc_code(), tonic::Code::NotFound);

    let text = common::eventually(Duration::from_secs(20), "three audit events", || {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        async move { (text.lines().count() >= 3).then_some(text) }
    })
    .await;
    let keys: Vec<(String, String)> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_string(),
                e["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [("sign", "k-x"), ("sign", "k-x"), ("refused", "k-x")];
    assert_eq!(
        keys,
        expected.map(|(a, b)| (a.to_string(), b.to_string())),
        "{text}"
    );
    side.stop().await;
}
