//! Issue 3, HA: the sidecar is given the addresses of a REAL 3-node OpenBao raft cluster
//! on loopback, the active node first, and calls the node it believes active
//! (`AEGIS_VAULT_PREFER_STANDBY=false`; a sidecar homed on a standby is
//! tests/fleet_routing.rs). Under sign load (8 signers) and verify load (2
//! verifiers of signatures made before the failure), the active node is SIGKILLed.
//! Signing must resume within a bound, every failed sign must be a 503 in Vault's error
//! shape (never another 5xx, never a hang), verification must never fail, and a key
//! rotated on the new active node must reach the sidecar.
//!
//! Both cluster modes run the same scenario: OpenBao's default (standbys serve sign and
//! key reads themselves) and `disable_standby_reads` (standbys forward everything, and
//! answer 307 to the dead leader until a new one is elected). Run with `--nocapture` to
//! see the measured figures.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{BaoCluster, ClusterOptions};
use common::{b64, eventually, Sidecar};
use serde_json::{json, Value};

const KEY: &str = "ha-key";
const SIGNERS: usize = 8;
const VERIFIERS: usize = 2;
/// Pause between two requests of one load task.
const PACE: Duration = Duration::from_millis(10);
/// `AEGIS_VAULT_TOTAL_TIMEOUT`: the sidecar's bound on one Vault call, failover included.
const TOTAL_TIMEOUT: Duration = Duration::from_secs(5);
/// A request to the sidecar slower than this is a hang (the total timeout, plus slack for
/// a noisy 2-core machine).
const HANG: Duration = Duration::from_secs(8);
/// Load before the kill.
const LOAD_BEFORE_KILL: Duration = Duration::from_secs(1);
/// After the kill, signing must succeed continuously this long before the load stops.
const STABLE_FOR: Duration = Duration::from_secs(1);
/// Cap on the load after the kill.
const LOAD_CAP: Duration = Duration::from_secs(30);
/// Signing must resume within this after the kill.
const RESUME_BOUND: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Sign,
    Verify,
}

/// One request of the load.
#[derive(Clone, Debug)]
struct Record {
    op: Op,
    start: Instant,
    end: Instant,
    /// 0 for a transport error (including the test client's own timeout).
    status: u16,
    ok: bool,
    /// Sign successes: (input, signature), to verify afterwards.
    signed: Option<(String, String)>,
    /// Failures: the body (or the transport error).
    failure: Option<Value>,
}

/// The load tasks and what they recorded.
struct Load {
    records: Arc<Mutex<Vec<Record>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(sidecar: &str, presigned: Arc<Vec<(String, String)>>) -> Load {
        // Well above the sidecar's total timeout: a hang shows up as a slow record, or a
        // status-0 record at worst, never as a stuck test.
        let client = common::client_builder()
            .timeout(HANG + Duration::from_secs(4))
            .build()
            .unwrap();
        let records = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let sign_url = format!("{sidecar}/v1/transit/sign/{KEY}");
        let verify_url = format!("{sidecar}/v1/transit/verify/{KEY}");
        let mut tasks = Vec::new();
        for t in 0..SIGNERS {
            let (client, records, stop, url) = (
                client.clone(),
                records.clone(),
                stop.clone(),
                sign_url.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let input = b64(format!("signer {t} message {n}").as_bytes());
                    let r = send(&client, Op::Sign, &url, json!({"input": input})).await;
                    records.lock().unwrap().push(r);
                    n += 1;
                    tokio::time::sleep(PACE).await;
                }
            }));
        }
        for t in 0..VERIFIERS {
            let (client, records, stop, url, presigned) = (
                client.clone(),
                records.clone(),
                stop.clone(),
                verify_url.clone(),
                presigned.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut n = t;
                while !stop.load(Ordering::Relaxed) {
                    let (input, sig) = &presigned[n % presigned.len()];
                    let body = json!({"input": input, "signature": sig});
                    let r = send(&client, Op::Verify, &url, body).await;
                    records.lock().unwrap().push(r);
                    n += 1;
                    tokio::time::sleep(PACE).await;
                }
            }));
        }
        Load {
            records,
            stop,
            tasks,
        }
    }

    fn snapshot(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }

    async fn stop(self) -> Vec<Record> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("load task panicked");
        }
        let mut records = self.records.lock().unwrap().clone();
        records.sort_by_key(|r| r.end);
        records
    }
}

/// One load request.
async fn send(client: &reqwest::Client, op: Op, url: &str, request: Value) -> Record {
    let start = Instant::now();
    let result = async {
        let resp = client.post(url).json(&request).send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok::<_, reqwest::Error>((status, text))
    }
    .await;
    let end = Instant::now();
    let (status, body) = match result {
        Ok((status, text)) => (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ),
        Err(e) => (0, Value::String(format!("transport error: {e}"))),
    };
    let ok = status == 200
        && match op {
            Op::Sign => body["data"]["signature"]
                .as_str()
                .is_some_and(|s| s.starts_with("vault:v")),
            Op::Verify => body["data"]["valid"] == true,
        };
    let signed = (ok && op == Op::Sign).then(|| {
        let input = request["input"].as_str().unwrap_or_default().to_string();
        let sig = body["data"]["signature"].as_str().unwrap_or_default();
        (input, sig.to_string())
    });
    Record {
        op,
        start,
        end,
        status,
        ok,
        signed,
        failure: (!ok).then_some(body),
    }
}

/// Signs `msg` through the sidecar; returns (input, signature).
async fn sign(side: &Sidecar, msg: &str) -> (String, String) {
    let input = b64(msg.as_bytes());
    let (s, b) = side
        .api(
            "POST",
            &format!("transit/sign/{KEY}"),
            Some(json!({"input": input})),
        )
        .await;
    assert_eq!(s, 200, "sign {msg:?}: {b}");
    let sig = b["data"]["signature"].as_str().unwrap().to_string();
    (input, sig)
}

/// Asserts every (input, signature) verifies through the sidecar.
async fn assert_all_verify(side: &Sidecar, pairs: &[(String, String)], what: &str) {
    for (input, sig) in pairs {
        let (s, b) = side
            .api(
                "POST",
                &format!("transit/verify/{KEY}"),
                Some(json!({"input": input, "signature": sig})),
            )
            .await;
        assert!(
            s == 200 && b["data"]["valid"] == true,
            "{what}: {sig} does not verify: {s} {b}"
        );
    }
}

/// True when signing has succeeded continuously for [`STABLE_FOR`]: the first sign
/// sent after the last failure (or the kill) succeeded at least that long ago, and no
/// sign has failed since.
fn signing_stable(records: &[Record], killed: Instant, now: Instant) -> bool {
    let signs = records.iter().filter(|r| r.op == Op::Sign);
    let last_failure = signs
        .clone()
        .filter(|r| !r.ok && r.end >= killed)
        .map(|r| r.end)
        .max()
        .unwrap_or(killed);
    signs
        .filter(|r| r.ok && r.start >= last_failure)
        .map(|r| r.end)
        .min()
        .is_some_and(|resumed| now.duration_since(resumed) >= STABLE_FOR)
}

fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// Seconds from `base` to `t`, signed.
fn offset(base: Instant, t: Instant) -> String {
    if t >= base {
        format!("+{:.3}s", t.duration_since(base).as_secs_f64())
    } else {
        format!("-{:.3}s", base.duration_since(t).as_secs_f64())
    }
}

/// What the load saw, relative to the kill.
struct Figures {
    signs: usize,
    signs_ok: usize,
    verifies: usize,
    verifies_failed: usize,
    /// Kill to the end of the first successful sign sent after it.
    resumed: Option<Duration>,
    /// Longest time between two successful signs completing, and when (from the kill).
    gap: (Duration, String, String),
    /// Failed signs by status, and by first error message.
    statuses: BTreeMap<u16, usize>,
    messages: BTreeMap<String, usize>,
    /// When the first and last failed signs ended (from the kill).
    failures_at: Vec<String>,
    slowest: Duration,
}

impl Figures {
    fn of(records: &[Record], killed: Instant) -> Figures {
        let mut records: Vec<&Record> = records.iter().collect();
        records.sort_by_key(|r| r.end);
        let signs: Vec<&Record> = records
            .iter()
            .copied()
            .filter(|r| r.op == Op::Sign)
            .collect();
        let ok: Vec<&Record> = signs.iter().copied().filter(|r| r.ok).collect();
        let failed: Vec<&Record> = signs.iter().copied().filter(|r| !r.ok).collect();
        let gap = ok
            .windows(2)
            .map(|w| (w[1].end.duration_since(w[0].end), w[0].end, w[1].end))
            .max_by_key(|g| g.0)
            .map(|(d, from, to)| (d, offset(killed, from), offset(killed, to)))
            .unwrap_or_default();
        let mut statuses = BTreeMap::new();
        let mut messages = BTreeMap::new();
        for r in &failed {
            *statuses.entry(r.status).or_default() += 1;
            let body = r.failure.clone().unwrap_or_default();
            let msg = body["errors"][0]
                .as_str()
                .map_or_else(|| body.to_string(), str::to_string);
            *messages.entry(msg).or_default() += 1;
        }
        Figures {
            signs: signs.len(),
            signs_ok: ok.len(),
            verifies: records.iter().filter(|r| r.op == Op::Verify).count(),
            verifies_failed: records
                .iter()
                .filter(|r| r.op == Op::Verify && !r.ok)
                .count(),
            resumed: ok
                .iter()
                .find(|r| r.start >= killed)
                .map(|r| r.end.duration_since(killed)),
            gap,
            statuses,
            messages,
            failures_at: [failed.first(), failed.last()]
                .iter()
                .flatten()
                .map(|r| offset(killed, r.end))
                .collect(),
            slowest: records
                .iter()
                .map(|r| r.end.duration_since(r.start))
                .max()
                .unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} signs ({} ok, {} failed), {} verifies ({} failed); kill -> first successful sign sent after it: {}; longest gap between successful signs: {} ({} to {} from the kill); slowest request {}; failed signs by status {:?}, first/last ending at {:?} from the kill; messages: {:#?}",
            self.signs,
            self.signs_ok,
            self.signs - self.signs_ok,
            self.verifies,
            self.verifies_failed,
            self.resumed.map_or_else(|| "never".into(), secs),
            secs(self.gap.0),
            self.gap.1,
            self.gap.2,
            secs(self.slowest),
            self.statuses,
            self.failures_at,
            self.messages,
        )
    }
}

/// The scenario, for one cluster mode.
async fn failover_under_sign_load(opts: ClusterOptions) {
    let mode = if opts.disable_standby_reads {
        "standby reads disabled"
    } else {
        "standby reads (default)"
    };
    let mut cluster = BaoCluster::start_with(3, opts).await;
    cluster.create_key(KEY, "ecdsa-p256").await;
    let (old, addrs) = cluster.addrs_active_first().await;
    let total = format!("{}s", TOTAL_TIMEOUT.as_secs());
    let side = Sidecar::start(
        cluster.node(old),
        &[
            ("VAULT_ADDR", ""),
            ("AEGIS_VAULT_ADDRS", &addrs),
            ("VAULT_TOKEN", cluster.token()),
            ("AEGIS_KEYS", KEY),
            ("AEGIS_VAULT_TIMEOUT", "1s"),
            ("AEGIS_VAULT_CONNECT_TIMEOUT", "500ms"),
            ("AEGIS_VAULT_TOTAL_TIMEOUT", &total),
            // The node in use is the one killed: the active node (a sidecar homed on a
            // standby is tests/fleet_routing.rs).
            ("AEGIS_VAULT_PREFER_STANDBY", "false"),
        ],
    )
    .await;
    let vault = side.state.keys.vault();
    assert_eq!(vault.addr(), cluster.addr(old), "the active node is in use");

    // Signatures made before the failure, verified in a loop during it.
    let mut presigned = Vec::new();
    for i in 0..4 {
        let (input, sig) = sign(&side, &format!("before the failure {i}")).await;
        assert!(sig.starts_with("vault:v1:"), "{sig}");
        presigned.push((input, sig));
    }
    assert_all_verify(&side, &presigned, "before the failure").await;

    let load = Load::start(&side.addr, Arc::new(presigned));
    let load_started = Instant::now();
    eventually(Duration::from_secs(30), "sign load to get going", || {
        let records = load.snapshot();
        async move {
            let ok = records.iter().filter(|r| r.op == Op::Sign && r.ok).count();
            (load_started.elapsed() >= LOAD_BEFORE_KILL && ok >= SIGNERS).then_some(())
        }
    })
    .await;

    cluster.kill(old);
    let killed = Instant::now();
    let dead = cluster.addr(old).to_string();

    // Keep the load until signing has been fine for a while, within the cap; meanwhile
    // note when a survivor first reports itself active (the election, as the cluster
    // sees it, for comparison with when the sidecar resumed).
    let (stable, elected) = tokio::join!(
        async {
            loop {
                let records = load.snapshot();
                if signing_stable(&records, killed, Instant::now()) {
                    return killed.elapsed();
                }
                if killed.elapsed() > LOAD_CAP {
                    let f = Figures::of(&load.snapshot(), killed);
                    panic!("[{mode}] signing not stable {LOAD_CAP:?} after the kill: {f}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
        eventually(LOAD_CAP, "a new active node", || async {
            cluster.active_index().await.map(|_| killed.elapsed())
        }),
    );

    // A write after failover: rotate on the new active node; the sidecar must see v2.
    let new = cluster.wait_active_among_survivors().await;
    let known = killed.elapsed();
    assert_ne!(new, old);
    cluster
        .api_ok("POST", &format!("transit/keys/{KEY}/rotate"), json!({}))
        .await;
    let rotated = Instant::now();
    eventually(
        Duration::from_secs(15),
        "a sign under load to use v2",
        || {
            let records = load.snapshot();
            async move {
                records
                    .iter()
                    .any(|r| {
                        r.signed
                            .as_ref()
                            .is_some_and(|(_, s)| s.starts_with("vault:v2:"))
                    })
                    .then_some(())
            }
        },
    )
    .await;
    let v2_seen = rotated.elapsed();
    let key = eventually(
        Duration::from_secs(15),
        "GET keys on the sidecar to show version 2",
        || async {
            let (s, b) = side.api("GET", &format!("transit/keys/{KEY}"), None).await;
            (s == 200 && b["data"]["latest_version"] == 2).then_some(b)
        },
    )
    .await;
    assert!(key["data"]["keys"]["1"].is_object() && key["data"]["keys"]["2"].is_object());

    let records = load.stop().await;
    let now_on = vault.addr();
    let node_of = |addr: &str| {
        (0..cluster.len())
            .find(|&i| cluster.addr(i) == addr)
            .map_or_else(|| addr.to_string(), |i| format!("node {i}"))
    };

    let f = Figures::of(&records, killed);
    eprintln!(
        "[{mode}] load: {} before the kill, {} after\n[{mode}] {f}",
        secs(killed.duration_since(load_started)),
        secs(
            records
                .last()
                .map(|r| r.end.duration_since(killed))
                .unwrap_or_default()
        ),
    );
    eprintln!(
        "[{mode}] signing resumed {} from the new leader's election; node {new} active at {} after the kill (node {old} killed), all survivors agreed on it by {} (polled once signing was stable); signing stable (1 s of successes, no failure) at {}; rotation seen in a sign after {}; sidecar now on {}",
        f.resumed.map_or_else(|| "never".into(), |r| offset(killed + elected, killed + r)),
        secs(elected),
        secs(known),
        secs(stable),
        secs(v2_seen),
        node_of(&now_on),
    );

    // ---- assertions ----------------------------------------------------------------
    let verify_failed: Vec<&Record> = records
        .iter()
        .filter(|r| r.op == Op::Verify && !r.ok)
        .collect();
    assert!(
        verify_failed.is_empty(),
        "[{mode}] {} of {} verifies failed, e.g. {:?}",
        verify_failed.len(),
        f.verifies,
        verify_failed.first()
    );
    assert!(
        records
            .iter()
            .any(|r| r.op == Op::Verify && r.start >= killed),
        "[{mode}] verified during the failover"
    );
    for r in records.iter().filter(|r| r.op == Op::Sign && !r.ok) {
        let body = r.failure.clone().unwrap_or_default();
        let vault_shape = body["errors"]
            .as_array()
            .is_some_and(|e| !e.is_empty() && e.iter().all(Value::is_string));
        assert!(
            r.status == 503 && vault_shape,
            "[{mode}] a failed sign must be a 503 in Vault's error shape; got {} {body} at {} from the kill",
            r.status,
            offset(killed, r.end)
        );
    }
    assert!(
        f.slowest < HANG,
        "[{mode}] a request took {:?}, over the sidecar's total timeout of {TOTAL_TIMEOUT:?} plus slack",
        f.slowest
    );
    let resumed = f
        .resumed
        .unwrap_or_else(|| panic!("[{mode}] signing never resumed"));
    assert!(
        resumed < RESUME_BOUND,
        "[{mode}] signing resumed {resumed:?} after the kill (bound {RESUME_BOUND:?})"
    );
    assert_ne!(now_on, dead, "[{mode}] the sidecar moved off the dead node");

    // Every signature made after the kill (v1 and v2) verifies; a bounded sample.
    let after: Vec<(String, String)> = records
        .iter()
        .filter(|r| r.op == Op::Sign && r.ok && r.start >= killed)
        .filter_map(|r| r.signed.clone())
        .collect();
    let step = after.len().div_ceil(200).max(1);
    let mut sample: Vec<(String, String)> = after.iter().step_by(step).cloned().collect();
    sample.extend(
        after
            .iter()
            .rev()
            .find(|(_, s)| s.starts_with("vault:v2:"))
            .cloned(),
    );
    assert_all_verify(&side, &sample, "signed after the kill").await;

    side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_survives_active_node_kill_with_standby_reads() {
    failover_under_sign_load(ClusterOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_survives_active_node_kill_with_standby_reads_disabled() {
    failover_under_sign_load(ClusterOptions {
        disable_standby_reads: true,
        ..ClusterOptions::default()
    })
    .await;
}
