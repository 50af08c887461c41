//! Caller security on the HTTP face: the request-forgery guard (412 without
//! `X-Vault-Request`, 403 with an `Origin`), the caller policy over TCP (bearer tokens
//! from re-read files, keys per caller, a token bucket per caller and key answering 429
//! with `Retry-After`), and the Unix socket, where the peer's uid decides: a uid the
//! policy does not list (`nobody`) gets 403 and OpenBao never sees its request. Refusals
//! are audited under the caller's identity. (That refusals count as `client_error` in
//! the metrics is checked by tests/interop/test_grpc.py against the real binary.)

mod common;

use std::path::Path;
use std::time::Duration;

use common::{b64, eventually, Bao, Sidecar};
use serde_json::{json, Value};

/// A client without the harness's default `X-Vault-Request` header.
fn bare_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn sign_with(
    side: &Sidecar,
    client: &reqwest::Client,
    key: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, Value) {
    let mut req = client
        .post(format!("{}/v1/transit/sign/{key}", side.addr))
        .json(&json!({"input": b64(b"guarded")}));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (
        status,
        retry_after,
        resp.json().await.unwrap_or(Value::Null),
    )
}

fn audit_events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_forgery_guard() {
    let bao = Bao::dev().await;
    bao.create_key("g", "ed25519").await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let side = Sidecar::start(&bao, &[("AEGIS_AUDIT_FILE", audit.to_str().unwrap())]).await;
    let bare = bare_client();

    let (s, _, body) = sign_with(&side, &bare, "g", &[]).await;
    assert_eq!(s, 412, "{body}");
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .contains("X-Vault-Request"),
        "{body}"
    );
    let (s, _, _) = sign_with(&side, &bare, "g", &[("X-Vault-Request", "false")]).await;
    assert_eq!(s, 412);
    let (s, _, body) = sign_with(
        &side,
        &bare,
        "g",
        &[
            ("X-Vault-Request", "true"),
            ("Origin", "https://attacker.example"),
        ],
    )
    .await;
    assert_eq!(s, 403, "{body}");
    assert!(
        body["errors"][0].as_str().unwrap().contains("Origin"),
        "{body}"
    );
    let (s, _, body) = sign_with(&side, &bare, "g", &[("X-Vault-Request", "true")]).await;
    assert_eq!(s, 200, "{body}");
    // Probes need no header.
    let r = bare
        .get(format!("{}/readyz", side.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    side.stop().await;
    let events = audit_events(&audit);
    let refused: Vec<&Value> = events.iter().filter(|e| e["event"] == "refused").collect();
    assert_eq!(refused.len(), 3, "{events:?}");
    assert!(refused
        .iter()
        .all(|e| e["actor"] == "tcp:127.0.0.1" && e["key"] == "g"));

    // The guard can be turned off; browsers stay refused.
    let side = Sidecar::start(&bao, &[("AEGIS_REQUIRE_REQUEST_HEADER", "false")]).await;
    let (s, _, body) = sign_with(&side, &bare, "g", &[]).await;
    assert_eq!(s, 200, "{body}");
    let (s, _, _) = sign_with(&side, &bare, "g", &[("Origin", "null")]).await;
    assert_eq!(s, 403);
    side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_policy_over_tcp() {
    let bao = Bao::dev().await;
    for k in ["p1", "p2"] {
        bao.create_key(k, "ed25519").await;
    }
    let dir = tempfile::tempdir().unwrap();
    let (signer_token, reader_token) = (dir.path().join("signer"), dir.path().join("reader"));
    std::fs::write(&signer_token, "signer-secret-1\n").unwrap();
    std::fs::write(&reader_token, "reader-secret").unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            r#"
[[caller]]
name = "signer"
token_file = "{}"
sign = ["p1"]
verify = ["*"]
rate = 0.5
burst = 2

[[caller]]
name = "reader"
token_file = "{}"
verify = ["p1", "p2"]
"#,
            signer_token.display(),
            reader_token.display()
        ),
    )
    .unwrap();
    let audit = dir.path().join("audit.jsonl");
    let side = Sidecar::start(
        &bao,
        &[
            ("AEGIS_POLICY_FILE", policy.to_str().unwrap()),
            ("AEGIS_KEYS", "p1,p2"),
            ("AEGIS_AUDIT_FILE", audit.to_str().unwrap()),
        ],
    )
    .await;
    let c = side.client.clone();

    // No token, an unknown token: 403 with the reason, the token never echoed.
    let (s, _, body) = sign_with(&side, &c, "p1", &[]).await;
    assert_eq!(s, 403, "{body}");
    assert!(body["errors"][0]
        .as_str()
        .unwrap()
        .contains("caller token is required"));
    let (s, _, body) = sign_with(&side, &c, "p1", &[("X-Vault-Token", "guess")]).await;
    assert_eq!(s, 403, "{body}");
    assert!(!body.to_string().contains("guess"));

    // The reader may verify and read, not sign.
    let reader = [("Authorization", "Bearer reader-secret")];
    let (s, _, body) = sign_with(&side, &c, "p1", &reader).await;
    assert_eq!(s, 403, "{body}");
    assert!(body["errors"][0]
        .as_str()
        .unwrap()
        .contains("may not sign with key \"p1\""));
    let r = c
        .get(format!("{}/v1/transit/keys/p2", side.addr))
        .header("Authorization", "Bearer reader-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // The signer signs p1 (token as hvac sends it), not p2; two at once, then 429.
    let signer = [("X-Vault-Token", "signer-secret-1")];
    let (s, _, body) = sign_with(&side, &c, "p2", &signer).await;
    assert_eq!(s, 403, "{body}");
    for _ in 0..2 {
        let (s, _, body) = sign_with(&side, &c, "p1", &signer).await;
        assert_eq!(s, 200, "{body}");
    }
    let (s, retry_after, body) = sign_with(&side, &c, "p1", &signer).await;
    assert_eq!(s, 429, "{body}");
    let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&secs), "Retry-After {secs}");
    assert!(
        body["errors"][0].as_str().unwrap().contains("rate limit"),
        "{body}"
    );

    // A rotated token file: the new token is accepted, the old one no longer.
    std::fs::write(&signer_token, "signer-secret-2").unwrap();
    // Signing p2 is refused either way; the reason shows whether the token is known.
    eventually(Duration::from_secs(5), "the rotated token", || async {
        let (_, _, body) =
            sign_with(&side, &c, "p2", &[("X-Vault-Token", "signer-secret-2")]).await;
        body["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("may not sign"))
            .then_some(())
    })
    .await;
    let (_, _, body) = sign_with(&side, &c, "p2", &[("X-Vault-Token", "signer-secret-1")]).await;
    assert!(
        body["errors"][0].as_str().unwrap().contains("no caller"),
        "{body}"
    );
    side.stop().await;

    let events = audit_events(&audit);
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(!text.contains("secret"), "no token in the audit trail");
    let actors: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "refused")
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert!(actors.contains(&"tcp:127.0.0.1"), "{actors:?}");
    assert!(
        actors.contains(&"caller:reader (tcp:127.0.0.1)"),
        "{actors:?}"
    );
    assert!(
        actors.contains(&"caller:signer (tcp:127.0.0.1)"),
        "{actors:?}"
    );
    let signed: Vec<&Value> = events.iter().filter(|e| e["event"] == "sign").collect();
    assert_eq!(signed.len(), 2);
    assert!(signed
        .iter()
        .all(|e| e["actor"] == "caller:signer (tcp:127.0.0.1)"));
}

/// `curl` over the Unix socket, as `user` (None: this process's user, root in CI).
async fn curl_unix(socket: &Path, user: Option<u32>, path: &str) -> (u16, String) {
    let mut cmd = match user {
        Some(uid) => {
            let mut c = tokio::process::Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg("curl");
            c
        }
        None => tokio::process::Command::new("curl"),
    };
    let out = cmd
        .args(["-s", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(socket)
        .args(["-H", "X-Vault-Request: true", "-X", "POST"])
        .args(["-d", &json!({"input": b64(b"over the socket")}).to_string()])
        .arg(format!("http://localhost/v1/{path}"))
        .output()
        .await
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim().parse().unwrap_or_else(|_| {
            panic!(
                "curl gave no status: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        }),
        body.to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_peer_credentials() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    // `nobody` must reach the socket to be refused by the policy (not by the file mode).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bao_audit = dir.path().join("bao-audit.log");
    let bao = Bao::dev_audited(&bao_audit).await;
    bao.create_key("u", "ed25519").await;
    let me = std::fs::metadata("/proc/self").unwrap();
    let my_uid = std::os::unix::fs::MetadataExt::uid(&me);
    let nobody = 65534;
    assert_ne!(my_uid, nobody);
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!("[[caller]]\nname = \"model-server\"\nuids = [{my_uid}]\nsign = [\"u\"]\n"),
    )
    .unwrap();
    let socket = dir.path().join("aegis.sock");
    let side = Sidecar::start(
        &bao,
        &[
            ("AEGIS_LISTEN_UNIX", socket.to_str().unwrap()),
            ("AEGIS_POLICY_FILE", policy.to_str().unwrap()),
        ],
    )
    .await;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket mode {mode:o}");
    // Let nobody's group connect, as a deployment would share the socket's group.
    std::os::unix::fs::chown(&socket, None, Some(nobody)).unwrap();

    let (status, body) = curl_unix(&socket, Some(nobody), "transit/sign/u").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("uid"), "{body}");
    let seen = std::fs::read_to_string(&bao_audit).unwrap_or_default();
    assert!(
        !seen.contains("transit/sign/u"),
        "OpenBao saw a sign request for the refused caller"
    );

    let (status, body) = curl_unix(&socket, None, "transit/sign/u").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["data"]["signature"]
        .as_str()
        .unwrap()
        .starts_with("vault:v1:"));
    let seen = std::fs::read_to_string(&bao_audit).unwrap();
    assert!(
        seen.contains("transit/sign/u"),
        "the allowed sign reached OpenBao"
    );
    side.stop().await;
    assert!(!socket.exists(), "the socket is removed at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refused_after_admission_are_audited() {
    let bao = Bao::dev().await;
    bao.create_key("lim", "ed25519").await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let side = Sidecar::start(
        &bao,
        &[
            ("AEGIS_AUDIT_FILE", audit.to_str().unwrap()),
            ("AEGIS_MAX_BODY_BYTES", "1024"),
            ("AEGIS_MAX_BATCH_ITEMS", "2"),
        ],
    )
    .await;
    let too_big = json!({"input": b64(&[7u8; 2048])});
    let (s, body) = side.api("POST", "transit/sign/lim", Some(too_big)).await;
    assert_eq!(s, 413, "{body}");
    let three = json!({"batch_input": [{"input": "aGk="}, {"input": "aGk="}, {"input": "aGk="}]});
    let (s, body) = side.api("POST", "transit/sign/lim", Some(three)).await;
    assert_eq!(s, 400, "{body}");
    let (s, body) = side
        .api("POST", "transit/sign/lim", Some(json!({"input": "aGk="})))
        .await;
    assert_eq!(s, 200, "{body}");
    side.stop().await;
    let events = audit_events(&audit);
    let refused: Vec<&Value> = events.iter().filter(|e| e["event"] == "refused").collect();
    assert_eq!(refused.len(), 2, "{events:?}");
    assert!(refused.iter().all(|e| e["key"] == "lim"), "{refused:?}");
    let text = serde_json::to_string(&refused).unwrap();
    assert!(text.contains("request body too large"), "{text}");
    assert!(text.contains("more than the limit"), "{text}");
    assert_eq!(events.iter().filter(|e| e["event"] == "sign").count(), 1);
}

/// The Unix socket is removed at exit only while it is still the sidecar's own: a newer
/// process that replaced the path (here: another listener bound there) keeps its socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_is_removed_at_exit_only_if_still_ours() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = tempfile::tempdir().unwrap();
    let bao = Bao::dev().await;
    let socket = dir.path().join("aegis.sock");
    let env = [("AEGIS_LISTEN_UNIX", socket.to_str().unwrap())];

    let side = Sidecar::start(&bao, &env).await;
    assert!(socket.exists());
    side.stop().await;
    assert!(!socket.exists(), "our own socket is removed at exit");

    let side = Sidecar::start(&bao, &env).await;
    std::fs::remove_file(&socket).unwrap();
    let theirs = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let their_inode = std::fs::symlink_metadata(&socket).unwrap().ino();
    side.stop().await;
    assert_eq!(
        std::fs::symlink_metadata(&socket).map(|m| m.ino()).ok(),
        Some(their_inode),
        "another process's socket was removed"
    );
    drop(theirs);
}
