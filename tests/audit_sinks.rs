//! The audit sinks against real files and a real HTTP receiver on 127.0.0.1.
//!
//! Duplicates: delivery is at least once, so a receiver may see an event twice when a 2xx
//! is lost. Nothing here loses a 2xx (the receiver answers at once, on loopback), so every
//! event must arrive exactly once.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis::audit::{Actor, AuditConfig, AuditEvent, Auditor, EventKind, Outcome};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

/// Upper bound for anything the tests wait for.
const WAIT: Duration = Duration::from_secs(20);

const SECRET_INPUT: &[u8] = b"INPUT-must-never-be-written-7f3a";
const SECRET_TOKEN: &str = "TOKEN-must-never-be-written-c91e";

// ---- a real HTTP receiver ----

/// What the receiver got. Answers with `status` (settable while running).
#[derive(Default)]
struct Receiver {
    status: AtomicU16,
    refused: AtomicUsize,
    accepted: Mutex<Vec<Value>>,
    /// Every body received, accepted or not, as text.
    raw: Mutex<String>,
    authorization: Mutex<Vec<String>>,
    content_types: Mutex<Vec<String>>,
}

impl Receiver {
    async fn start(listener: tokio::net::TcpListener, status: StatusCode) -> Arc<Self> {
        let receiver = Arc::new(Receiver::default());
        receiver.answer(status);
        let app = axum::Router::new()
            .route("/audit", axum::routing::post(receive))
            .with_state(Arc::clone(&receiver));
        tokio::spawn(async move { axum::serve(listener, app).await });
        receiver
    }

    async fn on_free_port(status: StatusCode) -> (Arc<Self>, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = audit_url(listener.local_addr().unwrap());
        (Receiver::start(listener, status).await, url)
    }

    fn answer(&self, status: StatusCode) {
        self.status.store(status.as_u16(), Ordering::SeqCst);
    }

    fn accepted_ids(&self) -> Vec<String> {
        let accepted = self.accepted.lock().unwrap();
        accepted
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_owned())
            .collect()
    }

    fn accepted_count(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    r.authorization
        .lock()
        .unwrap()
        .push(header("authorization"));
    r.content_types.lock().unwrap().push(header("content-type"));
    r.raw
        .lock()
        .unwrap()
        .push_str(&String::from_utf8_lossy(&body));
    let status = StatusCode::from_u16(r.status.load(Ordering::SeqCst)).unwrap();
    if status.is_success() {
        r.accepted
            .lock()
            .unwrap()
            .push(serde_json::from_slice(&body).unwrap());
    } else {
        r.refused.fetch_add(1, Ordering::SeqCst);
    }
    status
}

fn audit_url(addr: SocketAddr) -> String {
    format!("http://{addr}/audit")
}

/// An address nothing listens on: bound, then released.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    audit_url(listener.local_addr().unwrap())
}

// ---- helpers ----

/// Polls `done` until it holds, failing the test after `WAIT`.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn http_config(url: &str, spool: &Path, token_file: Option<PathBuf>) -> AuditConfig {
    AuditConfig {
        http_url: Some(url.into()),
        spool_dir: Some(spool.into()),
        http_bearer_token_file: token_file,
        http_timeout: Duration::from_secs(5),
        retry_initial: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
        ..AuditConfig::default()
    }
}

fn sign_event(n: u64) -> AuditEvent {
    AuditEvent::new(
        EventKind::Sign,
        Actor::caller("uid:1000"),
        "transit",
        "model-signing",
        Outcome::Ok,
    )
    .versions([n])
    .input(SECRET_INPUT)
    .request_id(format!("req-{n}"))
}

fn rotate_event(n: u64) -> AuditEvent {
    AuditEvent::new(
        EventKind::Rotate,
        Actor::token("approle", "ent-1", "acc-1"),
        "transit",
        "model-signing",
        Outcome::Ok,
    )
    .versions([n, n + 1])
    .reason("scheduled rotation")
}

/// Records `n` events, every third durably; the last is durable, so all are written
/// when this returns. Returns their ids in order.
async fn record_some(auditor: &Auditor, n: u64) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let durable = i % 3 == 0 || i == n - 1;
        let event = if durable {
            rotate_event(i)
        } else {
            sign_event(i)
        };
        ids.push(event.id().to_owned());
        if durable {
            auditor.record_durable(event).await.unwrap();
        } else {
            auditor.record(event).await;
        }
    }
    ids
}

fn spooled(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

fn read_all(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect()
}

fn input_sha256() -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, SECRET_INPUT)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn assert_no_secret(what: &str, text: &str) {
    assert!(
        !text.contains(std::str::from_utf8(SECRET_INPUT).unwrap()),
        "{what} holds the signed input"
    );
    assert!(!text.contains(SECRET_TOKEN), "{what} holds the token");
}

// ---- (a) file sink ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sink_holds_one_parseable_line_per_event_across_instances() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let config = AuditConfig {
        file: Some(path.clone()),
        ..AuditConfig::default()
    };

    // First instance: 8 concurrent request-path writers plus lifecycle events, so
    // batches (group commits) hold many events.
    let first = Auditor::start(&config).unwrap();
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let auditor = first.clone();
            tokio::spawn(async move { record_some(&auditor, 40).await })
        })
        .collect();
    let mut expected = HashSet::new();
    for writer in writers {
        expected.extend(writer.await.unwrap());
    }
    assert_eq!(first.flush(WAIT).await, 0);
    assert_eq!(first.stats().written, 320);
    drop(first);

    // A second instance appends after the first one's lines.
    let second = Auditor::start(&config).unwrap();
    let later = record_some(&second, 30).await;
    assert_eq!(second.flush(WAIT).await, 0);
    expected.extend(later.iter().cloned());

    let text = std::fs::read_to_string(&path).unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("every line is one JSON event"))
        .collect();
    assert_eq!(events.len(), 350);
    let ids: Vec<String> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.iter().cloned().collect::<HashSet<_>>(), expected);
    assert_eq!(
        ids[320..],
        later[..],
        "the second instance appended, in order"
    );
    for e in &events {
        assert!(matches!(e["event"].as_str(), Some("sign" | "rotate")));
        assert!(humantime::parse_rfc3339(e["time"].as_str().unwrap()).is_ok());
        assert_eq!(
            (e["mount"].as_str(), e["result"].as_str()),
            (Some("transit"), Some("ok"))
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

// ---- (b) HTTP sink down, then up ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sink_spools_while_the_endpoint_fails_and_delivers_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let token_file = dir.path().join("audit-token");
    std::fs::write(&token_file, "tok-1\n").unwrap();
    let (receiver, url) = Receiver::on_free_port(StatusCode::SERVICE_UNAVAILABLE).await;
    let auditor = Auditor::start(&http_config(&url, &spool, Some(token_file.clone()))).unwrap();

    let ids = record_some(&auditor, 20).await;
    eventually("the endpoint refused a few deliveries", || {
        receiver.refused.load(Ordering::SeqCst) >= 3
    })
    .await;
    assert_eq!(receiver.accepted_count(), 0);
    assert_eq!(spooled(&spool).len(), 20, "every event waits in the spool");
    assert_eq!(auditor.flush(Duration::from_millis(100)).await, 20);
    assert!(auditor.stats().delivery_failures >= 3);

    receiver.answer(StatusCode::OK);
    eventually("all spooled events delivered", || {
        receiver.accepted_count() == 20
    })
    .await;
    assert_eq!(auditor.flush(WAIT).await, 0);
    assert!(
        spooled(&spool).is_empty(),
        "the spool is empty once delivered"
    );
    assert_eq!(
        receiver.accepted_ids(),
        ids,
        "each event once, oldest first"
    );

    // The token file is read for each request: a rotated token is used at once.
    std::fs::write(&token_file, "tok-2").unwrap();
    auditor.record_durable(rotate_event(99)).await.unwrap();
    assert_eq!(auditor.flush(WAIT).await, 0);
    let authorization = receiver.authorization.lock().unwrap().clone();
    assert_eq!(authorization.last().unwrap(), "Bearer tok-2");
    let accepted_auth = &authorization[authorization.len() - 21..authorization.len() - 1];
    assert!(accepted_auth.iter().all(|a| a == "Bearer tok-1"));
    let content_types = receiver.content_types.lock().unwrap().clone();
    assert!(content_types.iter().all(|c| c == "application/json"));

    let stats = auditor.stats();
    assert_eq!((stats.written, stats.delivered, stats.pending), (21, 21, 0));
    assert_eq!(stats.dropped, 0);
}

// ---- (c) restart on a spool left behind ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_auditor_delivers_what_an_earlier_one_left_in_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");

    // The endpoint is not up: nothing listens.
    let earlier = Auditor::start(&http_config(&dead_url(), &spool, None)).unwrap();
    let ids = record_some(&earlier, 7).await;
    assert_eq!(earlier.flush(Duration::from_millis(300)).await, 7);
    assert_eq!(earlier.stats().delivered, 0);
    drop(earlier);
    assert_eq!(spooled(&spool).len(), 7);

    let (receiver, url) = Receiver::on_free_port(StatusCode::OK).await;
    let later = Auditor::start(&http_config(&url, &spool, None)).unwrap();
    eventually("the earlier process's events delivered", || {
        receiver.accepted_count() == 7
    })
    .await;
    assert_eq!(later.flush(WAIT).await, 0);
    assert_eq!(receiver.accepted_ids(), ids);
    assert!(spooled(&spool).is_empty());
    assert_eq!(later.stats().delivered, 7);
    assert_eq!(
        receiver.authorization.lock().unwrap()[0],
        "",
        "no token configured"
    );
}

// ---- (d) no input or token anywhere ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_input_or_token_text_reaches_any_output() {
    common::logs::capture(tracing::Level::DEBUG);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let file = dir.path().join("audit.jsonl");
    let token_file = dir.path().join("audit-token");
    std::fs::write(&token_file, SECRET_TOKEN).unwrap();
    let (receiver, url) = Receiver::on_free_port(StatusCode::INTERNAL_SERVER_ERROR).await;
    let config = AuditConfig {
        file: Some(file.clone()),
        ..http_config(&url, &spool, Some(token_file))
    };
    let auditor = Auditor::start(&config).unwrap();

    let failed: Result<(), String> = Err("Vault answered 403".into());
    auditor
        .record_durable(sign_event(1).versions([]).request_id("req-x"))
        .await
        .unwrap();
    auditor
        .record_durable(
            AuditEvent::new(
                EventKind::VerifyRefused,
                Actor::caller("uid:1000"),
                "transit",
                "model-signing",
                Outcome::of(&failed),
            )
            .versions([3])
            .reason("version 3 is retired"),
        )
        .await
        .unwrap();
    eventually("a refused delivery", || {
        receiver.refused.load(Ordering::SeqCst) >= 1
    })
    .await;
    let spool_text = read_all(&spooled(&spool));
    assert_no_secret("the spool", &spool_text);
    assert!(
        spool_text.contains(&input_sha256()),
        "the spool holds the input's digest"
    );

    receiver.answer(StatusCode::NO_CONTENT);
    eventually("delivery", || receiver.accepted_count() == 2).await;
    assert_eq!(auditor.flush(WAIT).await, 0);

    let file_text = std::fs::read_to_string(&file).unwrap();
    assert_no_secret("the audit file", &file_text);
    assert_eq!(file_text.matches(&input_sha256()).count(), 1);
    assert!(file_text.contains("\"result\":\"error: Vault answered 403\""));
    assert_no_secret("the request bodies", &receiver.raw.lock().unwrap());
    let logs = common::logs::captured();
    assert!(
        logs.contains("audit event not delivered yet"),
        "logs were captured: {logs}"
    );
    assert_no_secret("the logs", &logs);
    // The token travels only where it belongs.
    assert!(receiver
        .authorization
        .lock()
        .unwrap()
        .iter()
        .all(|a| *a == format!("Bearer {SECRET_TOKEN}")));
}
