//! The keyset watcher against a real OpenBao, counted in OpenBao's own file audit log
//! under the sidecar's token: in steady state the sidecar's only Vault request is one
//! `LIST detailed-metadata` of the records' folder per interval, whatever the number of
//! keys; a revocation (`aegis retire --now`), a rotation (`aegis rotate`) and a deletion of
//! a record each lead to a full read of that one key, and to the new state being served,
//! within a few intervals; a rotation made outside Aegis is not seen by the watch but at
//! once by a sign answer; a token without `list` is reported once and falls back to the
//! full refresh.

mod common;

use std::time::{Duration, Instant};

use common::audit_log::{sidecar_token, Call, VaultCalls};
use common::standins::{client_token, transit_policy, write_policy};
use common::{b64, eventually, Bao, Sidecar};
use serde_json::{json, Value};

const FOLDER: &str = "secret/detailed-metadata/aegis/keys/transit/";
const KEYS: [&str; 3] = ["w1", "w2", "w3"];

/// A sidecar that refreshes in full only hourly and watches every second.
async fn watching(bao: &Bao, token: &str) -> Sidecar {
    common::metrics_on();
    Sidecar::start(
        bao,
        &[
            ("VAULT_TOKEN", token),
            ("AEGIS_KEYS", "w1,w2,w3"),
            ("AEGIS_REFRESH_INTERVAL", "1h"),
            ("AEGIS_MAX_KEYSET_AGE", "2h"),
            ("AEGIS_KEYSET_WATCH_INTERVAL", "1s"),
        ],
    )
    .await
}

/// Waits until the watcher has listed `n` more times (successfully) than `from`.
async fn listings_after(side: &Sidecar, from: f64, n: f64) -> f64 {
    eventually(Duration::from_secs(15), "watch listings", || async {
        let now = side
            .metric("aegis_keyset_watch_total", "outcome=\"ok\"")
            .await;
        (now >= from + n).then_some(now)
    })
    .await
}

/// The Vault requests other than the watch's listing, as (operation, path).
fn reads(calls: &[Call]) -> Vec<(&str, &str)> {
    calls
        .iter()
        .filter(|c| !(c.operation == "list" && c.path == FOLDER))
        .map(|c| (c.operation.as_str(), c.path.as_str()))
        .collect()
}

/// The full read of one key: the key, its endorsement key, its record.
fn full_read(key: &str) -> Vec<String> {
    let mut paths = vec![
        format!("transit/keys/{key}"),
        format!("transit/keys/aegis-retention.{key}"),
        format!("secret/data/aegis/keys/transit/{key}"),
    ];
    paths.sort();
    paths
}

/// How many times `key` alone was read in full, asserting nothing else was read.
fn full_reads_of(key: &str, calls: &[Call]) -> usize {
    let paths = read_paths(calls);
    let n = paths.len() / 3;
    let mut want: Vec<String> = (0..n).flat_map(|_| full_read(key)).collect();
    want.sort();
    assert_eq!(paths, want, "only {key} is read, in full");
    n
}

fn read_paths(calls: &[Call]) -> Vec<String> {
    let mut paths: Vec<String> = reads(calls).iter().map(|(_, p)| p.to_string()).collect();
    paths.sort();
    paths
}

fn aegis_job(bao: &Bao, args: &[&str]) {
    let (code, out, err) = common::aegis_cli(&bao.addr, &[("VAULT_TOKEN", &bao.token)], args);
    assert_eq!(code, 0, "aegis {args:?}: {out} {err}");
}

async fn latest_version(side: &Sidecar, key: &str) -> u64 {
    let (s, b) = side.api("GET", &format!("transit/keys/{key}"), None).await;
    assert_eq!(s, 200, "{b}");
    b["data"]["latest_version"].as_u64().unwrap()
}

#[tokio::test]
async fn one_listing_per_interval_and_only_the_changed_key_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("bao-audit.log");
    let bao = Bao::dev_audited(&log).await;
    for key in KEYS {
        bao.create_key(key, "ed25519").await;
    }
    // w1 has a record (v1 retired but valid after a rotation); w2 and w3 have none.
    let v1 = bao.sign("w1", b"old").await;
    aegis_job(&bao, &["rotate", "--key", "w1", "--force"]);
    let v2 = bao.sign("w1", b"current").await;
    let token = sidecar_token(&bao).await;
    let side = watching(&bao, &token).await;
    let mut calls = VaultCalls::new(&log);

    // Steady state: listings only, one per listing counted (the one in flight, if any,
    // is audited before its answer is counted).
    let start = side
        .metric("aegis_keyset_watch_total", "outcome=\"ok\"")
        .await;
    calls.calls_since_last();
    let counted = listings_after(&side, start, 3.0).await - start;
    let steady = calls.calls_since_last();
    assert_eq!(
        reads(&steady),
        vec![],
        "steady state reads nothing but the listing"
    );
    let listed = steady.len() as f64;
    assert!(
        listed == counted || listed == counted + 1.0,
        "{listed} listings audited, {counted} counted"
    );
    for (sig, msg) in [(&v1, &b"old"[..]), (&v2, &b"current"[..])] {
        let (s, b) = side.verify("w1", msg, sig).await;
        assert_eq!((s, b["data"]["valid"].clone()), (200, json!(true)), "{b}");
    }

    // A revocation of the signing version: refused within a few listings, and only w1
    // was read in full, once (the job writes the record once; the minimums it raises
    // next are no record change).
    let revoked_at = Instant::now();
    aegis_job(
        &bao,
        &[
            "retire",
            "--key",
            "w1",
            "--version",
            "2",
            "--now",
            "--reason",
            "leaked",
        ],
    );
    eventually(Duration::from_secs(10), "revocation seen", || async {
        let (s, b) = side.verify("w1", b"current", &v2).await;
        (s == 400).then_some(b)
    })
    .await;
    let took = revoked_at.elapsed();
    assert!(took < Duration::from_secs(5), "revocation took {took:?}");
    let (s, b) = side.verify("w1", b"old", &v1).await;
    assert_eq!((s, b["data"]["valid"].clone()), (200, json!(true)), "{b}");
    assert_eq!(full_reads_of("w1", &calls.calls_since_last()), 1);

    // `aegis rotate` of a key without a record writes its first record: seen the same way.
    aegis_job(&bao, &["rotate", "--key", "w2", "--force"]);
    eventually(Duration::from_secs(10), "rotation seen", || async {
        (latest_version(&side, "w2").await == 2).then_some(())
    })
    .await;
    assert_eq!(full_reads_of("w2", &calls.calls_since_last()), 1);

    // A soft delete of w1's record changes its metadata, not its current version: read.
    let refused = side
        .metric("aegis_retention_record_refused_total", "key=\"w1\"")
        .await;
    bao.api_ok("DELETE", "secret/data/aegis/keys/transit/w1", json!({}))
        .await;
    eventually(Duration::from_secs(10), "deleted record judged", || async {
        let now = side
            .metric("aegis_retention_record_refused_total", "key=\"w1\"")
            .await;
        (now == refused + 1.0).then_some(())
    })
    .await;
    assert_eq!(full_reads_of("w1", &calls.calls_since_last()), 1);
    let (s, b) = side.verify("w1", b"current", &v2).await;
    assert_eq!(s, 400, "a revocation stays in force: {b}");

    // A rotation outside Aegis changes no record: the watch does not see it...
    bao.api_ok("POST", "transit/keys/w3/rotate", json!({}))
        .await;
    let now = side
        .metric("aegis_keyset_watch_total", "outcome=\"ok\"")
        .await;
    listings_after(&side, now, 2.0).await;
    assert_eq!(latest_version(&side, "w3").await, 1);
    assert_eq!(reads(&calls.calls_since_last()), vec![]);
    // ...but the first sign answer naming v2 does.
    let (s, b) = side
        .api("POST", "transit/sign/w3", Some(json!({"input": b64(b"x")})))
        .await;
    assert_eq!(
        (s, b["data"]["key_version"].clone()),
        (200, json!(2)),
        "{b}"
    );
    eventually(Duration::from_secs(5), "sign answer seen", || async {
        (latest_version(&side, "w3").await == 2).then_some(())
    })
    .await;
    side.stop().await;
}

/// An operator's mistake: a sidecar policy without `list` on the
/// folder. The watch is refused once, says so once (an error naming the path and the
/// consequence), and waits for the full refresh interval before trying again.
#[tokio::test]
async fn a_policy_without_list_is_reported_once_and_falls_back_to_the_full_refresh() {
    common::logs::capture(tracing::Level::INFO);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("bao-audit.log");
    let bao = Bao::dev_audited(&log).await;
    bao.create_key("w1", "ed25519").await;
    aegis_job(&bao, &["rotate", "--key", "w1", "--force"]);
    let policy = transit_policy("w1").replace(
        "path \"secret/detailed-metadata/aegis/keys/transit/\" { capabilities = [\"list\"] }\n",
        "",
    );
    assert!(!policy.contains("detailed-metadata"));
    write_policy(&bao, "no-list", &policy).await;
    let (s, b) = bao
        .api(
            "POST",
            "auth/token/create",
            Some(json!({"policies": ["no-list"], "display_name": "aegis-under-test"})),
        )
        .await;
    let token = client_token(s, &b);
    let side = Sidecar::start(
        &bao,
        &[
            ("VAULT_TOKEN", &token),
            ("AEGIS_KEYS", "w1"),
            ("AEGIS_REFRESH_INTERVAL", "1h"),
            ("AEGIS_MAX_KEYSET_AGE", "2h"),
            ("AEGIS_KEYSET_WATCH_INTERVAL", "200ms"),
        ],
    )
    .await;
    let said = || {
        common::logs::captured()
            .lines()
            .filter(|l| l.contains("cannot list the retention records' metadata"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let first = eventually(Duration::from_secs(5), "the refusal logged", || async {
        said().into_iter().next()
    })
    .await;
    assert!(first.contains("ERROR"), "{first}");
    assert!(
        first.contains(FOLDER) && first.contains("permission denied"),
        "{first}"
    );
    // Ten watch intervals later: that one attempt at Vault, logged once.
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let calls = VaultCalls::new(&log).calls_since_last();
    let listings = calls
        .iter()
        .filter(|c| c.operation == "list" && c.path == FOLDER)
        .count();
    assert_eq!((listings, said().len()), (1, 1), "{calls:?}");
    // Verification is unaffected.
    let sig = bao.sign("w1", b"m").await;
    let (s, b) = side.verify("w1", b"m", &sig).await;
    assert_eq!(
        (s, b["data"]["valid"].clone()),
        (200, Value::Bool(true)),
        "{b}"
    );
    side.stop().await;
}

/// A fleet meeting a rate-limit quota on the listing (a real OpenBao quota with its
/// `Retry-After`): the watch stops asking until Vault's wait is over, instead of retrying
/// every interval (here 100 ms: some 30 attempts in the 3 s watched).
#[tokio::test]
async fn a_quota_on_the_listing_pauses_the_watch_for_vaults_retry_after() {
    let bao = Bao::dev().await;
    bao.create_key("w1", "ed25519").await;
    aegis_job(&bao, &["rotate", "--key", "w1", "--force"]);
    common::one_per(&bao, FOLDER.trim_end_matches('/'), "30s").await;
    common::metrics_on();
    let side = Sidecar::start(
        &bao,
        &[
            ("AEGIS_KEYS", "w1"),
            ("AEGIS_REFRESH_INTERVAL", "1h"),
            ("AEGIS_MAX_KEYSET_AGE", "2h"),
            ("AEGIS_KEYSET_WATCH_INTERVAL", "100ms"),
        ],
    )
    .await;
    let listings = |status: &'static str| {
        let side = &side;
        async move {
            let labels = format!("endpoint=\"kv_list\",status=\"{status}\"");
            side.metric("aegis_vault_requests_total", &labels).await
        }
    };
    eventually(
        Duration::from_secs(5),
        "a listing refused with 429",
        || async { (listings("429").await >= 1.0).then_some(()) },
    )
    .await;
    let (ok, limited) = (listings("200").await, listings("429").await);
    assert_eq!(
        (ok, limited),
        (1.0, 1.0),
        "one listing allowed, the next refused"
    );
    let paced = side.state.keys.vault_arc().paced_until().expect("paced");
    assert!(
        paced > Instant::now() + Duration::from_secs(10),
        "Vault asked for up to 30 s: {paced:?}"
    );
    let watched = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watched {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!((listings("200").await, listings("429").await), (1.0, 1.0));
    side.stop().await;
}
