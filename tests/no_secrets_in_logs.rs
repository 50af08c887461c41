//! No secret at any log level: the real binary runs with `RUST_LOG=trace` through a full
//! life (AppRole login, sign, verify, a refused request, a rotation job), and none of its
//! output holds the secret_id, a Vault token, or any signed input.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::standins::{approle, transit_policy};
use common::{b64, eventually, free_port, http, Bao};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_hold_no_token_secret_id_or_input() {
    let bao = Bao::dev().await;
    bao.create_key("quiet", "ecdsa-p256").await;
    let policy = transit_policy("quiet");
    let (role_id, secret_id) = approle(
        &bao,
        "quiet",
        &policy,
        Duration::from_secs(3),
        Duration::from_secs(60),
    )
    .await;
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_aegis"))
        .arg("serve")
        .env_clear()
        .env("VAULT_ADDR", &bao.addr)
        .env("AEGIS_AUTH_METHOD", "approle")
        .env("VAULT_ROLE_ID", &role_id)
        .env("VAULT_SECRET_ID", &secret_id)
        .env("AEGIS_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("AEGIS_KEYS", "quiet")
        .env("AEGIS_LOG_FORMAT", "json")
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start aegis");
    let base = format!("http://127.0.0.1:{port}");
    let client = http();
    eventually(
        Duration::from_secs(20),
        "the sidecar to be ready",
        || async {
            let r = client.get(format!("{base}/readyz")).send().await.ok()?;
            (r.status() == 200).then_some(())
        },
    )
    .await;

    let secret_text = "a confidential model answer 7f3a9c";
    let input = b64(secret_text.as_bytes());
    let caller_token = "hvs.caller-token-never-logged";
    let call = |path: &str, body: serde_json::Value| {
        client
            .post(format!("{base}/v1/transit/{path}"))
            .header("X-Vault-Token", caller_token)
            .json(&body)
            .send()
    };
    let signed: serde_json::Value = call("sign/quiet", json!({ "input": input }))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sig = signed["data"]["signature"].as_str().unwrap().to_string();
    for body in [
        json!({ "input": input, "signature": sig }),
        json!({ "input": b64(b"tampered"), "signature": sig }),
        json!({ "input": input, "signature": "vault:v1:not base64!" }),
    ] {
        call("verify/quiet", body).await.unwrap();
    }
    // Across a renewal (TTL 3 s, renewed at 2 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    call("sign/quiet", json!({ "batch_input": [{ "input": input }] }))
        .await
        .unwrap();

    // A rotation job with its own token, at trace level too.
    let job = Command::new(env!("CARGO_BIN_EXE_aegis"))
        .args(["rotate", "--key", "quiet", "--force"])
        .env_clear()
        .env("VAULT_ADDR", &bao.addr)
        .env("VAULT_TOKEN", &bao.token)
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    assert!(
        job.status.success(),
        "{}",
        String::from_utf8_lossy(&job.stderr)
    );

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "aegis exited with {status}");
    let mut output = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    output.push_str(&String::from_utf8_lossy(&job.stdout));
    output.push_str(&String::from_utf8_lossy(&job.stderr));

    assert!(
        output.lines().count() > 20,
        "trace logging produced too little:\n{output}"
    );
    assert!(output.contains("logged in to Vault"), "{output}");
    for (what, secret) in [
        ("the secret_id", secret_id.as_str()),
        ("the root token", bao.token.as_str()),
        ("the caller's token", caller_token),
        ("the input (base64)", input.as_str()),
        ("the input (text)", secret_text),
    ] {
        assert!(!output.contains(secret), "{what} appears in the logs");
    }
    // Any Vault token the sidecar obtained by logging in (`s.` + 24 characters in
    // OpenBao, `hvs.` in Vault) would show up here.
    if let Some(token) = token_like(&output) {
        panic!("a token-like string is logged: {token}");
    }
}

/// The first `s.`/`hvs.` followed by 20 or more token characters, not inside a word.
fn token_like(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    for prefix in ["hvs.", "s."] {
        for (i, _) in text.match_indices(prefix) {
            if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'.') {
                continue;
            }
            let rest = &text[i + prefix.len()..];
            let n = rest
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric())
                .count();
            if n >= 20 {
                return Some(&text[i..i + prefix.len() + n]);
            }
        }
    }
    None
}

#[test]
fn the_token_scanner_finds_tokens_and_nothing_else() {
    assert_eq!(
        token_like("x token=s.dYQXabcdefghijklmnopqrstuv y"),
        Some("s.dYQXabcdefghijklmnopqrstuv")
    );
    assert_eq!(
        token_like("\"hvs.CAESIabcdefghijklmnopqrstu\""),
        Some("hvs.CAESIabcdefghijklmnopqrstu")
    );
    assert_eq!(
        token_like("metrics.s.short and address.s.abcdefghijklmnopqrstuvwxyz"),
        None
    );
}
