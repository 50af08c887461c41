//! Issue 15, parts 3 and 4, against a real OpenBao whose own audit log counts what reached
//! it: a caller sending ever-new versions or key names cannot make the sidecar read a key
//! from Vault more than once per second (and every answer is the right 4xx); a sidecar whose
//! token loses `read` on `transit/keys/K` verifies K from its cache until
//! `AEGIS_MAX_KEYSET_AGE`, then answers 503 saying why (or keeps serving, when told to),
//! logging the failing refresh once, not at every tick.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::standins::{transit_policy, write_policy};
use common::{b64, eventually, Bao, Sidecar};
use serde_json::{json, Value};

/// Requests OpenBao's audit log holds, per path (responses are not counted).
fn vault_requests(log: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let Ok(entry) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if entry["type"] == "request" {
            let path = entry["request"]["path"].as_str().unwrap_or_default();
            *counts.entry(path.to_string()).or_default() += 1;
        }
    }
    counts
}

fn count(log: &Path, path: &str) -> usize {
    vault_requests(log).get(path).copied().unwrap_or(0)
}

/// The most reads of one key that `elapsed` allows: they start at least a second apart.
fn per_second_bound(elapsed: Duration) -> usize {
    elapsed.as_secs() as usize + 1
}

async fn sign(side: &Sidecar, key: &str, msg: &[u8]) -> String {
    let (s, body) = side
        .api(
            "POST",
            &format!("transit/sign/{key}"),
            Some(json!({ "input": b64(msg) })),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    body["data"]["signature"].as_str().unwrap().to_string()
}

/// `vault:vN:<body>` of `sig` with version `n`.
fn with_version(sig: &str, n: u32) -> String {
    let body = sig.splitn(3, ':').nth(2).unwrap();
    format!("vault:v{n}:{body}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ever_new_versions_cost_at_most_one_read_per_second() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("bao-audit.log");
    let bao = Bao::dev_audited(&log).await;
    bao.create_key("amp", "ed25519").await;
    let side = Sidecar::start(
        &bao,
        &[("AEGIS_KEYS", "amp"), ("AEGIS_REFRESH_INTERVAL", "10m")],
    )
    .await;
    let sig = sign(&side, "amp", b"hello").await;
    assert!(sig.starts_with("vault:v1:"), "{sig}");

    // 3 callers x 100 verifies, each naming a version never seen, over about 3 s.
    let started = Instant::now();
    let before = count(&log, "transit/keys/amp");
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..3u32 {
        let (client, addr, sig) = (side.client.clone(), side.addr.clone(), sig.clone());
        callers.spawn(async move {
            let mut answers = Vec::new();
            for i in 0..100u32 {
                let forged = with_version(&sig, 2 + caller * 100 + i);
                let (s, body) = common::call(
                    &client,
                    "POST",
                    &format!("{addr}/v1/transit/verify/amp"),
                    Some("caller"),
                    Some(&json!({ "input": b64(b"hello"), "signature": forged })),
                )
                .await;
                answers.push((s, body));
                tokio::time::sleep(Duration::from_millis(20)).await; // pacing, not waiting
            }
            answers
        });
    }
    let mut answers = Vec::new();
    while let Some(a) = callers.join_next().await {
        answers.extend(a.unwrap());
    }
    assert_eq!(answers.len(), 300);
    for (s, body) in &answers {
        assert_eq!(*s, 400, "{body}");
        assert_eq!(
            body["errors"],
            json!(["invalid signature: version is too new"]),
            "{body}"
        );
    }
    // A deferred refresh may still run up to a second after the last request.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let elapsed = started.elapsed();
    let reads = count(&log, "transit/keys/amp") - before;
    let record = "secret/data/aegis/keys/transit/amp";
    println!(
        "300 verifies with new versions in {elapsed:?}: {reads} key reads, {} record reads, {} Vault requests in all",
        count(&log, record),
        vault_requests(&log).values().sum::<usize>()
    );
    assert!(
        reads <= per_second_bound(elapsed),
        "{reads} reads of the key in {elapsed:?}"
    );
    assert!(
        reads >= 2,
        "the flood is still looked at once a second: {reads}"
    );
    assert!(
        count(&log, record) <= 1 + per_second_bound(elapsed),
        "record reads: {}",
        count(&log, record)
    );
    assert_eq!(
        count(&log, "transit/verify/amp"),
        0,
        "nothing was forwarded"
    );

    // A real new version is still found: signed by Vault directly, it verifies through the
    // sidecar within about a second (the deferred refresh), whatever the flood did.
    bao.api_ok("POST", "transit/keys/amp/rotate", json!({}))
        .await;
    let v2 = bao
        .api_ok("POST", "transit/sign/amp", json!({ "input": b64(b"new") }))
        .await["signature"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(v2.starts_with("vault:v2:"), "{v2}");
    eventually(Duration::from_secs(5), "v2 to verify", || async {
        let (s, body) = side.verify("amp", b"new", &v2).await;
        (s == 200 && body["data"]["valid"] == true).then_some(())
    })
    .await;
    // Signed through the sidecar, a new version verifies at once: the sign answer showed
    // it exists, so the verify waits for the next allowed read instead of refusing it.
    bao.api_ok("POST", "transit/keys/amp/rotate", json!({}))
        .await;
    let v3 = sign(&side, "amp", b"newer").await;
    assert!(v3.starts_with("vault:v3:"), "{v3}");
    let (s, body) = side.verify("amp", b"newer", &v3).await;
    assert_eq!((s, &body["data"]["valid"]), (200, &json!(true)), "{body}");

    // Sign answers showing a newer version trigger refreshes under the same rule: 60 signs
    // right after a rotation, most of them answered before the cache learns of v4.
    bao.api_ok("POST", "transit/keys/amp/rotate", json!({}))
        .await;
    let started = Instant::now();
    let before = count(&log, "transit/keys/amp");
    let signs = (0..60).map(|i| {
        let side = &side;
        async move { sign(side, "amp", format!("m{i}").as_bytes()).await }
    });
    let sigs = futures::future::join_all(signs).await;
    assert!(sigs.iter().all(|s| s.starts_with("vault:v4:")), "{sigs:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await; // the deferred refresh
    let elapsed = started.elapsed();
    let reads = count(&log, "transit/keys/amp") - before;
    println!("60 signs showing a new version in {elapsed:?}: {reads} key reads");
    assert!(
        (1..=per_second_bound(elapsed)).contains(&reads),
        "{reads} reads in {elapsed:?}"
    );
    side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_keys_are_remembered_and_their_lookups_limited() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("bao-audit.log");
    let bao = Bao::dev_audited(&log).await;
    // Every key (`*`): names the allowlist would refuse reach the cache.
    let side = Sidecar::start(&bao, &[("AEGIS_KEY_LOOKUP_RATE", "20")]).await;
    let body = json!({ "input": b64(b"x"), "signature": "vault:v1:AAAA" });
    let not_found = json!(["signature verification key not found"]);

    // Five missing names, asked 300 times over about 3 s.
    let started = Instant::now();
    for i in 0..300 {
        let (s, answer) = side
            .api(
                "POST",
                &format!("transit/verify/ghost-{}", i % 5),
                Some(body.clone()),
            )
            .await;
        assert_eq!((s, &answer["errors"]), (400, &not_found), "{answer}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    let ghosts: Vec<usize> = (0..5)
        .map(|i| count(&log, &format!("transit/keys/ghost-{i}")))
        .collect();
    println!("300 verifies of 5 missing keys in {elapsed:?}: Vault reads per key {ghosts:?}");
    for (i, reads) in ghosts.into_iter().enumerate() {
        assert!(
            (2..=per_second_bound(elapsed)).contains(&reads),
            "ghost-{i}: {reads} reads in {elapsed:?}"
        );
    }

    // Ever-new names as fast as possible: at most 20 lookups a second reach Vault; the
    // rest are told to come back (429), never a 5xx.
    let started = Instant::now();
    let (mut missing, mut limited) = (0, 0);
    for i in 0..400 {
        let (s, answer) = side
            .api(
                "POST",
                &format!("transit/verify/new-{i}"),
                Some(body.clone()),
            )
            .await;
        match s {
            400 => {
                assert_eq!(answer["errors"], not_found);
                missing += 1
            }
            429 => {
                let text = answer["errors"][0].as_str().unwrap_or_default();
                assert!(text.contains("AEGIS_KEY_LOOKUP_RATE (20/s)"), "{answer}");
                limited += 1
            }
            other => panic!("{other}: {answer}"),
        }
    }
    let elapsed = started.elapsed();
    let lookups: usize = vault_requests(&log)
        .iter()
        .filter(|(path, _)| path.starts_with("transit/keys/new-"))
        .map(|(_, n)| n)
        .sum();
    println!(
        "400 new names in {elapsed:?}: {lookups} reached Vault, {missing} x 400, {limited} x 429"
    );
    assert_eq!(
        lookups, missing,
        "every lookup that reached Vault answered 404"
    );
    assert!(
        lookups <= 20 + (20.0 * elapsed.as_secs_f64()).ceil() as usize,
        "{lookups} lookups in {elapsed:?}"
    );
    assert!(limited > 0, "the limit was reached");
    side.stop().await;
}

// ---- staleness ----

fn log_lines(containing: &str) -> usize {
    common::logs::captured()
        .lines()
        .filter(|l| l.contains(containing))
        .count()
}

/// A sidecar whose token (policy `side`) may sign, verify and read key `stale`, with a
/// 1 s refresh interval and a 4 s maximum keyset age; and a valid signature.
async fn stale_setup(bao: &Bao, extra: &[(&str, &str)]) -> (Sidecar, String) {
    bao.create_key("stale", "ecdsa-p256").await;
    write_policy(bao, "side", &transit_policy("stale")).await;
    let (s, created) = bao
        .api(
            "POST",
            "auth/token/create",
            Some(json!({ "policies": ["side"] })),
        )
        .await;
    assert_eq!(s, 200, "{created}");
    let token = created["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut env = vec![
        ("VAULT_TOKEN", token.as_str()),
        ("AEGIS_KEYS", "stale"),
        ("AEGIS_REFRESH_INTERVAL", "1s"),
        ("AEGIS_MAX_KEYSET_AGE", "4s"),
    ];
    env.extend_from_slice(extra);
    let side = Sidecar::start(bao, &env).await;
    let sig = sign(&side, "stale", b"model").await;
    (side, sig)
}

/// The attack: the sidecar's policy keeps sign and verify but loses `read` on the paths
/// starting with `denied` (the key, or its retention record).
async fn revoke_read(bao: &Bao, denied: &str) -> Instant {
    let without_read: String = transit_policy("stale")
        .lines()
        .filter(|l| !l.starts_with(&format!("path \"{denied}")))
        .map(|l| format!("{l}\n"))
        .collect();
    write_policy(bao, "side", &without_read).await;
    Instant::now()
}

fn keyset_age(side: &Sidecar) -> Duration {
    side.state
        .keys
        .gauges()
        .into_iter()
        .find(|g| g.key == "stale")
        .and_then(|g| g.keyset_age)
        .expect("a keyset age for the cached key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyset_past_its_max_age_is_refused_saying_why() {
    refused_past_max_age("transit/keys/", "permission denied").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyset_whose_record_cannot_be_read_is_refused_past_its_max_age() {
    refused_past_max_age(
        "secret/data/",
        "reading the retention record secret/data/aegis/keys/transit/stale: permission denied",
    )
    .await;
}

/// Read access to paths starting with `denied` is revoked from the sidecar's policy:
/// verification goes on from the cache until `AEGIS_MAX_KEYSET_AGE`, then answers 503
/// with `cause` in its reason; failures are logged once; access back, it recovers.
async fn refused_past_max_age(denied: &str, cause: &str) {
    common::logs::capture(tracing::Level::INFO);
    let bao = Bao::dev().await;
    let (side, sig) = stale_setup(&bao, &[]).await;
    assert!(keyset_age(&side) < Duration::from_secs(2));
    let revoked = revoke_read(&bao, denied).await;

    // Verifies from the cache until the keyset is 4 s old (its last read was at most
    // ~1.1 s, plus the read, before the policy changed), then 503 naming the key, the
    // age and the cause.
    let refused = eventually(Duration::from_secs(10), "a 503", || async {
        let (s, body) = side.verify("stale", b"model", &sig).await;
        match s {
            200 => {
                assert_eq!(body["data"]["valid"], true);
                None
            }
            503 => Some(body),
            other => panic!("{other}: {body}"),
        }
    })
    .await;
    let after = revoked.elapsed();
    assert!(
        after >= Duration::from_millis(2500),
        "refused {after:?} after the change"
    );
    let errors = refused["errors"].as_array().expect("Vault's error shape");
    assert_eq!(errors.len(), 1, "{refused}");
    let why = errors[0].as_str().unwrap();
    for part in [
        "the cached keyset of key \"stale\" is ",
        "past AEGIS_MAX_KEYSET_AGE (4 s): reading it from Vault fails since ",
        cause,
    ] {
        assert!(why.contains(part), "{part:?} not in {why:?}");
    }
    assert!(keyset_age(&side) > Duration::from_secs(4));

    // Ticks kept failing (about one a second), logged once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(log_lines("keyset refresh failing"), 1);
    assert_eq!(log_lines("keyset is stale"), 1);

    // Read access back: the next tick (or the refresh a refusal asks for) recovers.
    write_policy(&bao, "side", &transit_policy("stale")).await;
    eventually(
        Duration::from_secs(5),
        "verification to recover",
        || async {
            let (s, body) = side.verify("stale", b"model", &sig).await;
            (s == 200 && body["data"]["valid"] == true).then_some(())
        },
    )
    .await;
    assert!(keyset_age(&side) < Duration::from_secs(2));
    assert_eq!(log_lines("keyset refresh recovered"), 1);
    side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_keyset_keeps_verifying_when_told_to_serve() {
    common::logs::capture(tracing::Level::INFO);
    let bao = Bao::dev().await;
    let (side, sig) = stale_setup(&bao, &[("AEGIS_STALE_KEYSET", "serve")]).await;
    revoke_read(&bao, "transit/keys/").await;
    eventually(
        Duration::from_secs(10),
        "the keyset to be stale",
        || async { (keyset_age(&side) > Duration::from_secs(5)).then_some(()) },
    )
    .await;
    let (s, body) = side.verify("stale", b"model", &sig).await;
    assert_eq!((s, &body["data"]["valid"]), (200, &json!(true)), "{body}");
    let (s, body) = side.verify("stale", b"other", &sig).await;
    assert_eq!((s, &body["data"]["valid"]), (200, &json!(false)), "{body}");
    // The tick after the keyset went stale says so, once; later ticks do not repeat it.
    let served = "still served (AEGIS_STALE_KEYSET=serve)";
    eventually(Duration::from_secs(3), "the stale log line", || async {
        (log_lines(served) > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // two more ticks
    assert_eq!(log_lines("keyset refresh failing"), 1);
    assert_eq!(log_lines(served), 1);
    side.stop().await;
}

/// The stamp the snapshot holds for `key`: when it was last read from Vault.
fn snapshot_stamp(dir: &Path, key: &str) -> Option<String> {
    let p = aegis::keys::snapshot::read(dir).ok().flatten()?;
    p.keys.get(key)?["aegis_refreshed_at"]
        .as_str()
        .map(String::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_snapshot_keeps_its_age() {
    let bao = Bao::dev().await;
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("aegis");
    let dir_s = dir.to_str().unwrap().to_string();
    let (first, sig) = stale_setup(&bao, &[("AEGIS_CACHE_DIR", dir_s.as_str())]).await;
    eventually(Duration::from_secs(5), "the snapshot", || async {
        snapshot_stamp(&dir, "stale")
    })
    .await;
    first.stop().await;
    let stopped = Instant::now();
    // Let the snapshot age (time passing is what is tested), then start against a Vault
    // that is not there: the keyset is as old as its last read, not as the restart.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let second = Sidecar::start_unready(
        &bao,
        &[
            ("VAULT_ADDR", dead.as_str()),
            ("AEGIS_KEYS", "stale"),
            ("AEGIS_CACHE_DIR", dir_s.as_str()),
            ("AEGIS_REFRESH_INTERVAL", "1s"),
            ("AEGIS_MAX_KEYSET_AGE", "4s"),
        ],
    )
    .await;
    let age = eventually(Duration::from_secs(5), "the restored key", || async {
        second
            .state
            .keys
            .gauges()
            .into_iter()
            .find(|g| g.key == "stale")
            .and_then(|g| g.keyset_age)
    })
    .await;
    assert!(
        age >= stopped.elapsed() - Duration::from_millis(1100),
        "restored as {age:?} old"
    );
    assert!(age >= Duration::from_secs(2), "restored as {age:?} old");
    let refused = eventually(Duration::from_secs(6), "a 503", || async {
        let (s, body) = second.verify("stale", b"model", &sig).await;
        match s {
            200 => None,
            503 => Some(body),
            other => panic!("{other}: {body}"),
        }
    })
    .await;
    let why = refused["errors"][0].as_str().unwrap_or_default();
    assert!(
        why.contains("key \"stale\"") && why.contains("past AEGIS_MAX_KEYSET_AGE (4 s)"),
        "{why}"
    );
    // Refused about 4 s after the last read (a reset age would take 4 s after the restart,
    // itself over 2 s after the last read).
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "refused {:?} after the last read: the restart reset the age",
        stopped.elapsed()
    );
    second.stop().await;
}
