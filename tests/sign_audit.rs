//! No signature without its audit event, against a real OpenBao.
//!
//! The audit sink is stalled the way a real one stalls: `AEGIS_AUDIT_FILE` is a FIFO
//! nobody reads, so once the pipe buffer is full the writer thread blocks in `write` and
//! the bounded queue fills. Failing closed, every further sign is refused with a 503
//! before Vault is asked (counted from OpenBao's own audit log); failing open, signs go
//! on and every event that could not be queued is counted. Either way, once the pipe is
//! read again, the events in it plus the events counted as dropped equal the signatures
//! handed out. Signs that Vault refuses, whole or per item, are audited with Vault's answer.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{b64, eventually, standins, Bao, Sidecar};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// A FIFO at `dir/name`.
fn fifo(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let made = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .expect("mkfifo runs");
    assert!(made.success(), "mkfifo {}", path.display());
    path
}

/// Starts reading the FIFO (until EOF, on a plain thread): the lines read so far.
fn drain(path: &Path) -> Arc<Mutex<Vec<Value>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (path, out) = (path.to_owned(), lines.clone());
    std::thread::spawn(move || {
        let reader = BufReader::new(std::fs::File::open(path).expect("open the FIFO to read"));
        for line in reader.lines() {
            let Ok(line) = line else { return };
            let event: Value = serde_json::from_str(&line).expect("each line is one JSON event");
            out.lock().unwrap().push(event);
        }
    });
    lines
}

fn sign_events(lines: &Mutex<Vec<Value>>) -> Vec<Value> {
    let lines = lines.lock().unwrap();
    lines
        .iter()
        .filter(|e| e["event"] == "sign")
        .cloned()
        .collect()
}

async fn sign(side: &Sidecar, key: &str, n: usize) -> (u16, Value) {
    side.api(
        "POST",
        &format!("transit/sign/{key}"),
        Some(json!({ "input": b64(format!("model-{n}").as_bytes()) })),
    )
    .await
}

/// Requests for `path` that reached Vault, from its audit log (one response entry each).
fn vault_requests(log: &Path, path: &str) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["type"] == "response" && e["request"]["path"] == path)
        .count()
}

fn stalled_sidecar_env<'a>(fifo: &'a str, timeout: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("AEGIS_AUDIT_FILE", fifo),
        ("AEGIS_AUDIT_QUEUE_SIZE", "16"),
        ("AEGIS_MAX_BATCH_ITEMS", "16"),
        ("AEGIS_AUDIT_QUEUE_TIMEOUT", timeout),
    ]
}

const REFUSED: &str = r#"{"errors":["audit trail unavailable, so nothing was signed: the audit queue had no room within 100 ms"]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_audit_sink_refuses_signs_before_vault_and_every_signature_has_its_event() {
    let dir = tempfile::tempdir().unwrap();
    let vault_log = dir.path().join("vault-audit.log");
    let bao = Bao::dev_audited(&vault_log).await;
    bao.create_key("k", "ed25519").await;
    let pipe = fifo(dir.path(), "audit.fifo");
    let pipe_text = pipe.display().to_string();
    let side = Sidecar::start(&bao, &stalled_sidecar_env(&pipe_text, "100ms")).await;

    // Sign until the pipe and then the queue are full.
    let mut handed_out = 0;
    let refusal = loop {
        let (status, body) = sign(&side, "k", handed_out).await;
        if status != 200 {
            break (status, body);
        }
        assert!(body["data"]["signature"]
            .as_str()
            .unwrap()
            .starts_with("vault:v1:"));
        handed_out += 1;
        assert!(handed_out < 5000, "the stalled sink never stopped signing");
    };
    assert_eq!(refusal.0, 503);
    assert_eq!(refusal.1.to_string(), REFUSED);
    // Well past the 64 KiB pipe buffer plus the 16 queued events.
    assert!(handed_out > 16, "{handed_out}");

    // While it stays stalled, every sign (single or batch) is refused the same way.
    for n in 0..5 {
        let (status, body) = sign(&side, "k", 10_000 + n).await;
        assert_eq!((status, body.to_string()), (503, REFUSED.to_string()));
    }
    let batch =
        json!({"batch_input": [{"input": b64(b"a")}, {"input": b64(b"b")}, {"input": b64(b"c")}]});
    let (status, body) = side.api("POST", "transit/sign/k", Some(batch)).await;
    assert_eq!((status, body.to_string()), (503, REFUSED.to_string()));
    let refused_signs = 1 + 5 + 3;
    let stats = side.state.auditor.stats();
    assert_eq!(stats.refused_signs, refused_signs);
    assert_eq!(stats.dropped, 0);

    // Vault was asked exactly once per signature handed out: never for a refused one.
    assert_eq!(vault_requests(&vault_log, "transit/sign/k"), handed_out);

    // The sink drains: every signature handed out has its event, and signing works again.
    let lines = drain(&pipe);
    eventually(WAIT, "every signature's event in the audit pipe", || {
        let n = sign_events(&lines).len();
        async move { (n == handed_out).then_some(()) }
    })
    .await;
    let (status, _) = eventually(WAIT, "signing to work again", || async {
        let answer = sign(&side, "k", 20_000).await;
        (answer.0 == 200).then_some(answer)
    })
    .await;
    assert_eq!(status, 200);
    eventually(WAIT, "the new signature's event", || {
        let n = sign_events(&lines).len();
        async move { (n == handed_out + 1).then_some(()) }
    })
    .await;
    let events = sign_events(&lines);
    assert!(events
        .iter()
        .all(|e| e["result"] == "ok" && e["versions"] == json!([1]) && e["key"] == "k"));
    assert_eq!(vault_requests(&vault_log, "transit/sign/k"), handed_out + 1);
    side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_open_signs_on_and_counts_every_event_it_could_not_queue() {
    let dir = tempfile::tempdir().unwrap();
    let bao = Bao::dev().await;
    bao.create_key("k", "ed25519").await;
    let pipe = fifo(dir.path(), "audit.fifo");
    let pipe_text = pipe.display().to_string();
    let mut env = stalled_sidecar_env(&pipe_text, "10ms");
    env.push(("AEGIS_AUDIT_FAIL_OPEN", "true"));
    let side = Sidecar::start(&bao, &env).await;

    // ~400 bytes an event: 400 events are far more than the pipe and the queue hold.
    let signs = 400;
    for n in 0..signs {
        let (status, body) = sign(&side, "k", n).await;
        assert_eq!(status, 200, "{body}");
    }
    let stats = side.state.auditor.stats();
    assert!(stats.dropped > 0, "{stats:?}");
    assert_eq!(stats.refused_signs, 0);

    let lines = drain(&pipe);
    eventually(
        WAIT,
        "the events in the pipe and the drops to add up",
        || {
            let recorded = sign_events(&lines).len() as u64;
            let dropped = side.state.auditor.stats().dropped;
            async move { (recorded + dropped == signs as u64).then_some(()) }
        },
    )
    .await;
    side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_vault_refuses_are_audited_with_vaults_answer() {
    let dir = tempfile::tempdir().unwrap();
    let bao = Bao::dev().await;
    bao.create_key("k", "ed25519").await;
    bao.create_key("read-only", "ed25519").await;
    // The sidecar's token may sign with k, and only read "read-only".
    let policy = format!(
        "{}{}",
        standins::transit_policy("k"),
        r#"path "transit/keys/read-only" { capabilities = ["read"] }
path "secret/data/aegis/keys/transit/read-only" { capabilities = ["read"] }
path "transit/keys/aegis-retention.read-only" { capabilities = ["read"] }
"#
    );
    standins::write_policy(&bao, "sidecar", &policy).await;
    let (_, created) = bao
        .api(
            "POST",
            "auth/token/create",
            Some(json!({"policies": ["sidecar"], "no_parent": true})),
        )
        .await;
    let token = created["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_string();
    let audit = dir.path().join("audit.jsonl");
    let audit_text = audit.display().to_string();
    let side = Sidecar::start(
        &bao,
        &[("VAULT_TOKEN", &token), ("AEGIS_AUDIT_FILE", &audit_text)],
    )
    .await;

    // Vault refuses the whole sign.
    let (status, body) = sign(&side, "read-only", 1).await;
    assert_eq!(
        (status, body.to_string()),
        (403, r#"{"errors":["permission denied"]}"#.to_string())
    );
    // Vault refuses one item of a batch.
    let batch = json!({"batch_input": [{"input": b64(b"fine")}, {"input": "not base64!"}]});
    let (status, body) = side.api("POST", "transit/sign/k", Some(batch)).await;
    assert_eq!(status, 200, "{body}");
    let item_error = body["data"]["batch_results"][1]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!item_error.is_empty(), "{body}");

    let read = || -> Vec<Value> {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["event"] == "sign")
            .collect()
    };
    let events = eventually(WAIT, "three sign events", || {
        let events = read();
        async move { (events.len() == 3).then_some(events) }
    })
    .await;
    assert_eq!(events[0]["key"], "read-only");
    assert_eq!(events[0]["result"], "error: permission denied");
    assert_eq!(events[0]["versions"], json!([]));
    assert_eq!(events[1]["result"], "ok");
    assert_eq!(events[1]["versions"], json!([1]));
    assert_eq!(events[2]["result"], format!("error: {item_error}"));
    assert_eq!(events[2]["versions"], json!([]));
    for e in &events {
        assert!(
            e["input_sha256"].as_str().is_some_and(|h| h.len() == 64),
            "{e}"
        );
    }
    side.stop().await;
}
