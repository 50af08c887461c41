//! Issue 17, fleet scale, against REAL OpenBao servers: a 3-node raft cluster with a file
//! audit device on every node (what each node handled itself is counted from its own log;
//! a request a standby forwards is also audited by the active node), and a dev server with
//! real rate-limit quotas.
//!
//! - A sidecar given every address makes one standby its home: its startup reads, its
//!   signs and a forced keyset refresh are all answered there, and no other node sees a
//!   request from it. Many clients spread over both standbys.
//! - When the home standby is killed, calls continue on the other standby within the
//!   total timeout. When the active node is killed, the home standby goes on signing
//!   through the election: no sign fails.
//! - A rate-limit quota on `transit/sign`: the caller gets Vault's 429 with `Retry-After`
//!   in Vault's error shape, and `VaultClient::pace` holds background calls back until
//!   the time the 429 asked for; a login answered 429 makes the client wait at least
//!   Vault's `Retry-After`.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis::config::{AuthConfig, Secret, SecretSource, TlsConfig, VaultConfig};
use aegis::vault::{VaultClient, VaultError};
use common::cluster::{BaoCluster, ClusterOptions};
use common::{b64, eventually, Bao, Sidecar};
use serde_json::{json, Value};

const KEY: &str = "fleet";
const TOTAL_TIMEOUT: Duration = Duration::from_secs(5);

async fn audited_cluster() -> BaoCluster {
    let cluster = BaoCluster::start_with(
        3,
        ClusterOptions {
            audit: true,
            ..ClusterOptions::default()
        },
    )
    .await;
    cluster.create_key(KEY, "ecdsa-p256").await;
    cluster
}

/// Every node's audited requests, per path.
fn audit_counts(cluster: &BaoCluster) -> Vec<BTreeMap<String, usize>> {
    (0..cluster.len()).map(|i| cluster.audited(i)).collect()
}

/// What each node audited since `before`, per path (paths with no new request left out).
fn since(cluster: &BaoCluster, before: &[BTreeMap<String, usize>]) -> Vec<BTreeMap<String, usize>> {
    audit_counts(cluster)
        .into_iter()
        .zip(before)
        .map(|(now, then)| {
            now.into_iter()
                .map(|(path, n)| (n - then.get(&path).copied().unwrap_or(0), path))
                .filter(|(n, _)| *n > 0)
                .map(|(n, path)| (path, n))
                .collect()
        })
        .collect()
}

fn index_of(cluster: &BaoCluster, addr: &str) -> usize {
    (0..cluster.len())
        .find(|&i| cluster.addr(i) == addr)
        .unwrap_or_else(|| panic!("{addr} is not a node"))
}

async fn sidecar(cluster: &BaoCluster, addrs: &str) -> Sidecar {
    let total = format!("{}s", TOTAL_TIMEOUT.as_secs());
    Sidecar::start(
        cluster.node(0),
        &[
            ("VAULT_ADDR", ""),
            ("AEGIS_VAULT_ADDRS", addrs),
            ("VAULT_TOKEN", cluster.token()),
            ("AEGIS_KEYS", KEY),
            // No background refresh or watch listing during the counts.
            ("AEGIS_REFRESH_INTERVAL", "10m"),
            ("AEGIS_KEYSET_WATCH_INTERVAL", "off"),
            ("AEGIS_VAULT_TIMEOUT", "1s"),
            ("AEGIS_VAULT_CONNECT_TIMEOUT", "500ms"),
            ("AEGIS_VAULT_TOTAL_TIMEOUT", &total),
        ],
    )
    .await
}

/// An audited cluster and a sidecar given every address (the active node first), with
/// the active node's index and the home's, checked to be a standby.
async fn homed_sidecar() -> (BaoCluster, usize, Sidecar, usize) {
    let cluster = audited_cluster().await;
    let (active, addrs) = cluster.addrs_active_first().await;
    let side = sidecar(&cluster, &addrs).await;
    let home = index_of(&cluster, &side.state.keys.vault().addr());
    assert_ne!(home, active, "the home is a standby");
    (cluster, active, side, home)
}

async fn sign(side: &Sidecar, msg: &str) -> (u16, Value) {
    side.api(
        "POST",
        &format!("transit/sign/{KEY}"),
        Some(json!({ "input": b64(msg.as_bytes()) })),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_reads_and_signs_on_one_standby_and_clients_spread_over_both() {
    const SIGNS: usize = 7;
    let cluster = audited_cluster().await;
    let (active, addrs) = cluster.addrs_active_first().await;
    let before = audit_counts(&cluster);

    let side = sidecar(&cluster, &addrs).await;
    let vault = side.state.keys.vault();
    let home = index_of(&cluster, &vault.addr());
    assert_ne!(home, active, "the home is a standby");
    for i in 0..SIGNS {
        let (s, b) = sign(&side, &format!("message {i}")).await;
        assert_eq!(s, 200, "{b}");
    }
    // One forced refresh of the keyset: retried until the one-read-per-second spacing of
    // the startup read has passed, so it reaches Vault exactly once.
    let reads = |c: &BaoCluster| {
        c.audited(home)
            .get("transit/keys/fleet")
            .copied()
            .unwrap_or(0)
    };
    let reads_before = reads(&cluster);
    eventually(Duration::from_secs(5), "one forced keyset read", || async {
        side.state.keys.refresh(KEY, Instant::now()).await.unwrap();
        (reads(&cluster) > reads_before).then_some(())
    })
    .await;
    // A LIST through the same client.
    let list = vault
        .request("LIST".parse().unwrap(), "transit/keys", None)
        .await
        .unwrap();
    assert_eq!(list["keys"], json!([KEY]));

    let seen = since(&cluster, &before);
    let other = 3 - home - active;
    assert!(
        seen[active].is_empty() && seen[other].is_empty(),
        "nothing reached the active node {active} or the other standby {other}: {seen:?}"
    );
    // Everything else, exactly: the token check at start, and per keyset read (the
    // startup preload and the forced refresh) the key, its retention record (KV; no such
    // mount here) and the record's endorsement key.
    let expected: BTreeMap<String, usize> = [
        ("auth/token/lookup-self", 1),
        ("transit/sign/fleet", SIGNS),
        ("transit/keys/fleet", 2),
        ("secret/data/aegis/keys/transit/fleet", 2),
        ("transit/keys/aegis-retention.fleet", 2),
        ("transit/keys/", 1),
    ]
    .into_iter()
    .map(|(p, n)| (p.to_string(), n))
    .collect();
    assert_eq!(
        seen[home], expected,
        "all answered by the home standby {home}"
    );
    side.stop().await;

    // Many clients given the same addresses spread over both standbys. Each draws at
    // random (the chooser itself is unit-tested in vault::nodes): all 32 on one standby
    // has probability 2^-31.
    const CLIENTS: usize = 32;
    let before = audit_counts(&cluster);
    let config = vault_config(&addrs, cluster.token());
    let mut homes = BTreeMap::new();
    for _ in 0..CLIENTS {
        let client = VaultClient::new(&config).unwrap();
        client.lookup_self().await.unwrap();
        *homes.entry(index_of(&cluster, &client.addr())).or_insert(0) += 1;
    }
    assert_eq!(homes.get(&active), None, "{homes:?}");
    assert_eq!(homes.len(), 2, "both standbys used: {homes:?}");
    let seen = since(&cluster, &before);
    for (node, n) in &homes {
        assert_eq!(
            seen[*node].get("auth/token/lookup-self"),
            Some(n),
            "{seen:?}"
        );
    }
    assert!(seen[active].is_empty(), "{seen:?}");
}

fn vault_config(addrs: &str, token: &str) -> VaultConfig {
    VaultConfig {
        addrs: addrs.split(',').map(str::to_string).collect(),
        auth: AuthConfig::Token {
            token: SecretSource::Value(Secret::new(token)),
        },
        tls: TlsConfig::default(),
        namespace: None,
        timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_millis(500),
        total_timeout: TOTAL_TIMEOUT,
        prefer_standby: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_move_to_the_other_standby_when_the_home_dies() {
    let (mut cluster, active, side, home) = homed_sidecar().await;
    let vault = side.state.keys.vault_arc();
    let (s, b) = sign(&side, "before").await;
    assert_eq!(s, 200, "{b}");

    cluster.kill(home);
    let before = audit_counts(&cluster);
    let started = Instant::now();
    let (s, b) = sign(&side, "after the home died").await;
    let took = started.elapsed();
    assert_eq!(s, 200, "{b}");
    assert!(took < TOTAL_TIMEOUT, "{took:?}");
    let other = 3 - home - active;
    assert_eq!(
        vault.addr(),
        cluster.addr(other),
        "the other standby is the new home"
    );
    let seen = since(&cluster, &before);
    assert_eq!(seen[other].get("transit/sign/fleet"), Some(&1), "{seen:?}");
    assert!(seen[active].is_empty(), "{seen:?}");
    eprintln!("first sign after the home standby died answered in {took:?}");

    // A signature made before the failure still verifies (locally), and more signs go on.
    for i in 0..5 {
        let (s, b) = sign(&side, &format!("after {i}")).await;
        assert_eq!(s, 200, "{b}");
    }
    assert_eq!(
        since(&cluster, &before)[other].get("transit/sign/fleet"),
        Some(&6)
    );
    side.stop().await;
}

/// The active node dies while the sidecar is homed on a standby: the standby goes on
/// answering signs itself through the election (one may become the new active node), so
/// no sign fails and the sidecar never moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_on_a_standby_go_on_while_the_active_node_dies() {
    let (mut cluster, active, side, home) = homed_sidecar().await;
    let vault = side.state.keys.vault_arc();
    cluster.kill(active);
    let killed = Instant::now();
    let mut signs = 0;
    let mut elected = None;
    // Until a new active node is known to both survivors, and a second more.
    while elected.is_none_or(|at: Instant| at.elapsed() < Duration::from_secs(1)) {
        let (s, b) = sign(&side, &format!("during the election {signs}")).await;
        assert_eq!(
            s,
            200,
            "sign {signs}, {:?} after the kill: {b}",
            killed.elapsed()
        );
        signs += 1;
        if elected.is_none() && cluster.active_index().await.is_some() {
            cluster.wait_active_among_survivors().await;
            elected = Some(Instant::now());
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "no election");
    }
    assert_eq!(
        vault.addr(),
        cluster.addr(home),
        "the sidecar stayed on its home"
    );
    eprintln!(
        "{signs} signs, none failed, over {:?} from the kill (new leader known at {:?})",
        killed.elapsed(),
        elected.map(|at| at - killed)
    );
    side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vaults_429_reaches_the_caller_and_paces_background_calls() {
    let bao = Bao::dev().await;
    bao.create_key("k", "ed25519").await;
    common::one_per(&bao, "transit/sign/k", "3s").await;
    let side = Sidecar::start(&bao, &[("AEGIS_KEYS", "k")]).await;
    let vault = side.state.keys.vault_arc();
    assert_eq!(vault.paced_until(), None);
    let url = format!("{}/v1/transit/sign/k", side.addr);
    let body = json!({"input": b64(b"hello")});
    let first = side.client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(first.status(), 200);

    let sent = Instant::now();
    let refused = side.client.post(&url).json(&body).send().await.unwrap();
    let answered = Instant::now();
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let text = refused.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v,
        json!({"errors": ["request path \"transit/sign/k\": rate limit quota exceeded"]}),
        "Vault's own message and shape: {text}"
    );

    // The client holds background calls back: at least 1 s from the 429, what the
    // caller was told (rounded up), and never past the cap.
    let until = vault.paced_until().expect("paced after a 429");
    assert!(until >= sent + Duration::from_secs(1), "{:?}", until - sent);
    let wait = until - answered;
    assert!(
        (1..=3).contains(&retry_after) && wait <= Duration::from_secs(retry_after),
        "Retry-After {retry_after} s, paced for {wait:?}"
    );
    let started = Instant::now();
    vault.pace().await;
    let waited = started.elapsed();
    assert!(Instant::now() >= until && waited >= until - started);
    assert!(waited >= Duration::from_millis(500), "{waited:?}");
    assert_eq!(vault.paced_until(), None);
    // Background calls go on after the pause (the quota is on sign only).
    let key = vault
        .request(reqwest::Method::GET, "transit/keys/k", None)
        .await
        .unwrap();
    assert_eq!(key["name"], "k");
    side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_answered_429_waits_at_least_vaults_retry_after() {
    let bao = Bao::dev().await;
    bao.api_ok("POST", "sys/auth/approle", json!({"type": "approle"}))
        .await;
    bao.api_ok(
        "POST",
        "auth/approle/role/aegis",
        json!({"token_policies": ["default"], "token_ttl": "1h"}),
    )
    .await;
    let role_id = bao
        .api_ok("GET", "auth/approle/role/aegis/role-id", json!({}))
        .await["role_id"]
        .as_str()
        .unwrap()
        .to_string();
    let secret_id = bao
        .api_ok("POST", "auth/approle/role/aegis/secret-id", json!({}))
        .await["secret_id"]
        .as_str()
        .unwrap()
        .to_string();
    common::one_per(&bao, "auth/approle/login", "60s").await;
    let vault = Arc::new(
        VaultClient::new(&VaultConfig {
            auth: AuthConfig::AppRole {
                mount: "approle".into(),
                role_id: SecretSource::Value(Secret::new(&role_id)),
                secret_id: SecretSource::Value(Secret::new(&secret_id)),
                secret_id_wrapped: false,
            },
            ..vault_config(&bao.addr, "")
        })
        .unwrap(),
    );
    vault.login().await.unwrap();
    let sent = Instant::now();
    let refused = vault.login().await.unwrap_err();
    let VaultError::RateLimited {
        retry_after: Some(wait),
        ..
    } = &refused
    else {
        panic!("expected a 429: {refused:?}")
    };
    // Vault's Retry-After for a 60 s window just opened is over 50 s (whole seconds).
    assert!(*wait >= Duration::from_secs(50), "{wait:?}");
    let until = vault.paced_until().expect("paced");
    assert!(
        until >= sent + Duration::from_secs(50),
        "{:?}",
        until - sent
    );
    assert!(until <= Instant::now() + Duration::from_secs(60), "capped");
    // The credential from the first login is kept: a 429 is not a refusal.
    assert!(vault.auth_status().authenticated);
}
