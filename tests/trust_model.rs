//! The retention record cannot add, widen or revive trust (docs/trust-model.md), tried
//! against a real OpenBao by the adversary of the threat model: a token whose policy
//! allows only the retention record's KV path (read, write, delete, metadata delete) and
//! nothing in Transit. Each attack is checked on a sidecar that was running before it and
//! on one started after it, and the refusals are counted exactly from the in-process
//! metrics registry (keys are unique per test: the registry is shared by the process).

mod common;

use std::time::Duration;

use aegis::keys::trust::Refusal;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use common::standins::{client_token, write_policy};
use common::{b64, eventually, Bao, Sidecar};
use serde_json::{json, Value};

const FAST_REFRESH: (&str, &str) = ("AEGIS_REFRESH_INTERVAL", "200ms");
const SOON: Duration = Duration::from_secs(20);

/// `aegis_retention_record_refused_total{key, reason}` as the registry shows it now.
fn refused(key: &str, reason: Refusal) -> u64 {
    let key_label = format!("key=\"{key}\"");
    let reason_label = format!("reason=\"{}\"", reason.as_str());
    aegis::telemetry::render_metrics()
        .lines()
        .filter(|l| l.starts_with("aegis_retention_record_refused_total{"))
        .filter(|l| l.contains(&key_label) && l.contains(&reason_label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// `data` of a GET with the root token.
async fn read(bao: &Bao, path: &str) -> Value {
    let (s, b) = bao.api("GET", path, None).await;
    assert_eq!(s, 200, "GET {path}: {b}");
    b["data"].clone()
}

fn record_path(key: &str) -> String {
    format!("secret/data/aegis/keys/transit/{key}")
}

/// `aegis <args> --json` with the root token (the rotation job's role here).
fn job(bao: &Bao, args: &[&str]) -> Value {
    let (code, out, err) = job_raw(bao, args);
    assert_eq!(code, 0, "aegis {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn job_raw(bao: &Bao, args: &[&str]) -> (i32, String, String) {
    let mut all = args.to_vec();
    all.push("--json");
    common::aegis_cli(&bao.addr, &[("VAULT_TOKEN", bao.token.as_str())], &all)
}

/// What the sidecar says of a signature: "valid", "invalid" or the 400 message.
async fn verdict(side: &Sidecar, key: &str, msg: &[u8], sig: &str) -> String {
    let (status, body) = side
        .api(
            "POST",
            &format!("transit/verify/{key}"),
            Some(json!({ "input": b64(msg), "signature": sig })),
        )
        .await;
    match (status, body["data"]["valid"].as_bool()) {
        (200, Some(true)) => "valid".into(),
        (200, Some(false)) => "invalid".into(),
        _ => {
            assert_eq!(status, 400, "{body}");
            body["errors"][0].as_str().unwrap_or_default().to_string()
        }
    }
}

const TOO_OLD: &str = "ciphertext or signature version is disallowed by policy (too old)";

/// The adversary: a token allowed only the record's KV path.
async fn kv_writer(bao: &Bao, key: &str) -> String {
    let hcl = format!(
        "path \"secret/data/aegis/keys/transit/{key}\" {{ capabilities = [\"create\", \"read\", \"update\", \"delete\"] }}\n\
         path \"secret/metadata/aegis/keys/transit/{key}\" {{ capabilities = [\"delete\"] }}\n"
    );
    write_policy(bao, "kv-writer", &hcl).await;
    let (s, b) = bao
        .api(
            "POST",
            "auth/token/create",
            Some(json!({ "policies": ["kv-writer"], "no_default_policy": true })),
        )
        .await;
    client_token(s, &b)
}

/// The adversary's requests, with its token.
struct Adversary<'a> {
    bao: &'a Bao,
    token: String,
    key: String,
}

impl Adversary<'_> {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        common::standins::api_as(self.bao, &self.token, method, path, body).await
    }

    /// The record at KV version `version`.
    async fn read(&self, version: u64) -> Value {
        let path = format!("{}?version={version}", record_path(&self.key));
        let (s, b) = self.call("GET", &path, None).await;
        assert_eq!(s, 200, "{b}");
        b["data"]["data"].clone()
    }

    async fn write(&self, record: &Value) {
        let (s, b) = self
            .call(
                "POST",
                &record_path(&self.key),
                Some(json!({ "data": record })),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }

    /// Every call outside the record's path is refused (the attacker's reach).
    async fn cannot_touch_transit(&self) {
        let ek = format!("aegis-retention.{}", self.key);
        for (method, path) in [
            ("POST", format!("transit/sign/{ek}")),
            ("POST", format!("transit/keys/{ek}/rotate")),
            ("GET", format!("transit/keys/{ek}")),
        ] {
            let (s, _) = self
                .call(method, &path, Some(json!({ "input": b64(b"x") })))
                .await;
            assert_eq!(s, 403, "{method} {path}");
        }
    }
}

/// The refusal state a sidecar holds for `key` (loading it if it is not yet).
async fn refusal(side: &Sidecar, key: &str) -> Option<Refusal> {
    let set = side.state.keys.get(key).await.expect("the key loads");
    set.trust.refused.map(|r| r.0)
}

async fn wait_refusal(side: &Sidecar, key: &str, want: Option<Refusal>) {
    eventually(
        SOON,
        &format!("the running sidecar's state {want:?}"),
        || async { (refusal(side, key).await == want).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kv_writer_cannot_add_widen_revive_or_erase_trust() {
    common::metrics_on();
    let bao = Bao::dev().await;
    let key = "tm-attack";
    bao.create_key(key, "ed25519").await;
    let (m1, m2, m3) = (
        b"by v1".as_slice(),
        b"by v2".as_slice(),
        b"by v3".as_slice(),
    );
    let s1 = bao.sign(key, m1).await;
    let r1 = job(&bao, &["rotate", "--key", key, "--force", "--grace", "1h"]);
    assert_eq!(r1["rotated_to"], 2, "{r1}");
    let s2 = bao.sign(key, m2).await;
    job(&bao, &["rotate", "--key", key, "--force", "--grace", "1h"]);
    let s3 = bao.sign(key, m3).await;
    // v1 retired early (its window already over), v2 retired but valid, v3 signing.
    let past =
        aegis::keys::retention::format_time(std::time::SystemTime::now() - Duration::from_secs(5));
    job(
        &bao,
        &[
            "retire",
            "--key",
            key,
            "--version",
            "1",
            "--at",
            &past,
            "--reason",
            "early",
        ],
    );

    let adversary = Adversary {
        token: kv_writer(&bao, key).await,
        bao: &bao,
        key: key.into(),
    };
    adversary.cannot_touch_transit().await;
    // KV versions 1..3: the three endorsed generations; 3 is the current one.
    let current = adversary.read(3).await;
    let older = adversary.read(2).await;
    let generation = current["endorsement"]["generation"].as_u64().unwrap();
    assert_eq!(
        older["endorsement"]["generation"].as_u64().unwrap() + 1,
        generation
    );

    let running = Sidecar::start(&bao, &[FAST_REFRESH]).await;
    let retired_v1 = verdict(&running, key, m1, &s1).await;
    assert!(
        retired_v1.contains("version 1 of key \"tm-attack\" was retired"),
        "{retired_v1}"
    );
    assert_eq!(verdict(&running, key, m2, &s2).await, "valid");
    assert_eq!(verdict(&running, key, m3, &s3).await, "valid");
    assert_eq!(refusal(&running, key).await, None);

    // The attacker's own key for retired version 2, and a signature it made.
    let attacker = Ed25519KeyPair::generate().unwrap();
    let forged_msg = b"the attacker's model".as_slice();
    let forged_sig = format!("vault:v2:{}", b64(attacker.sign(forged_msg).as_ref()));
    let entry = |r: &Value, v: u64| {
        r["previous_keys"]
            .as_array()
            .unwrap()
            .iter()
            .position(|e| e["version"] == v)
            .unwrap()
    };

    let mut forged = current.clone();
    forged["previous_keys"][entry(&current, 2)]["public_key"] =
        b64(attacker.public_key().as_ref()).into();
    let mut widened = current.clone();
    widened["previous_keys"][entry(&current, 1)]["retire_after"] = "2099-01-01T00:00:00Z".into();
    let mut fewer = current.clone();
    fewer["previous_keys"]
        .as_array_mut()
        .unwrap()
        .remove(entry(&current, 2));

    struct Attack {
        name: &'static str,
        reason: Refusal,
        /// v2's legit signature on the running sidecar (its last accepted record is current).
        running_v2: &'static str,
    }
    let attacks = [
        (
            Attack {
                name: "forged entry",
                reason: Refusal::BadSignature,
                running_v2: "valid",
            },
            Some(forged),
        ),
        (
            Attack {
                name: "extended retire_after",
                reason: Refusal::BadSignature,
                running_v2: "valid",
            },
            Some(widened),
        ),
        (
            Attack {
                name: "older endorsed record",
                reason: Refusal::Superseded,
                running_v2: "valid",
            },
            Some(older),
        ),
        (
            Attack {
                name: "entry deleted",
                reason: Refusal::BadSignature,
                running_v2: "valid",
            },
            Some(fewer),
        ),
        (
            Attack {
                name: "soft delete",
                reason: Refusal::Disappeared,
                running_v2: "valid",
            },
            None,
        ),
        (
            Attack {
                name: "metadata delete",
                reason: Refusal::Disappeared,
                running_v2: "valid",
            },
            None,
        ),
    ];
    let mut expected = std::collections::BTreeMap::new();
    for (attack, record) in attacks {
        match (&record, attack.name) {
            (Some(r), _) => adversary.write(r).await,
            (None, "soft delete") => {
                let (s, b) = adversary.call("DELETE", &record_path(key), None).await;
                assert_eq!(s, 204, "{b}");
            }
            (None, _) => {
                let path = format!("secret/metadata/aegis/keys/transit/{key}");
                let (s, b) = adversary.call("DELETE", &path, None).await;
                assert_eq!(s, 204, "{b}");
            }
        }
        wait_refusal(&running, key, Some(attack.reason)).await;
        let what = attack.name;
        assert_eq!(
            verdict(&running, key, forged_msg, &forged_sig).await,
            "invalid",
            "{what}: running, forged"
        );
        assert_eq!(
            verdict(&running, key, m2, &s2).await,
            attack.running_v2,
            "{what}: running, v2"
        );
        assert!(
            verdict(&running, key, m1, &s1)
                .await
                .contains("was retired"),
            "{what}: running, v1 stays retired"
        );
        assert_eq!(
            verdict(&running, key, m3, &s3).await,
            "valid",
            "{what}: running, v3"
        );

        let fresh = Sidecar::start(&bao, &[FAST_REFRESH]).await;
        assert_eq!(
            refusal(&fresh, key).await,
            Some(attack.reason),
            "{what}: fresh"
        );
        assert_eq!(
            verdict(&fresh, key, forged_msg, &forged_sig).await,
            TOO_OLD,
            "{what}: fresh, forged"
        );
        assert_eq!(
            verdict(&fresh, key, m2, &s2).await,
            TOO_OLD,
            "{what}: fresh, v2 (Vault's rule only)"
        );
        assert_eq!(
            verdict(&fresh, key, m1, &s1).await,
            TOO_OLD,
            "{what}: fresh, v1"
        );
        assert_eq!(
            verdict(&fresh, key, m3, &s3).await,
            "valid",
            "{what}: fresh, v3"
        );
        fresh.stop().await;
        *expected.entry(attack.reason.as_str()).or_insert(0) += 2; // running + fresh

        // Writing back the current endorsed record restores trust: a KV writer can
        // deny, never grant.
        adversary.write(&current).await;
        wait_refusal(&running, key, None).await;
        assert_eq!(
            verdict(&running, key, m2, &s2).await,
            "valid",
            "{what}: restored"
        );
    }
    for reason in Refusal::ALL {
        let want = expected.get(reason.as_str()).copied().unwrap_or(0);
        assert_eq!(refused(key, reason), want, "{}", reason.as_str());
    }
    assert_eq!(expected.values().sum::<u64>(), 12);
    // The job still builds on the restored record.
    let again = job(&bao, &["rotate", "--key", key, "--force", "--grace", "1h"]);
    assert_eq!(again["rotated_to"], 4, "{again}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unendorsed_record_is_refused_until_aegis_retention_endorse() {
    common::metrics_on();
    let bao = Bao::dev().await;
    let key = "tm-migrate";
    bao.create_key(key, "ed25519").await;
    let m1 = b"signed before the upgrade".as_slice();
    let s1 = bao.sign(key, m1).await;
    let v1_pk = read(&bao, &format!("transit/keys/{key}")).await["keys"]["1"]["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    bao.api_ok("POST", &format!("transit/keys/{key}/rotate"), json!({}))
        .await;
    // The record as the previous release wrote it: no endorsement, no endorsement key.
    let old_way = |public_key: &str| {
        json!({ "data": { "key": key, "mount": "transit", "previous_keys": [{
            "version": 1, "public_key": public_key, "created": "",
            "retired_at": "2026-01-01T00:00:00Z", "retire_after": "2099-01-01T00:00:00Z",
            "reason": "rotation", "revoked": false }] } })
    };
    bao.api_ok(
        "POST",
        &record_path(key),
        old_way("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
    )
    .await;
    // An entry that disagrees with the key Vault still serves is never endorsed.
    let (code, _, err) = job_raw(&bao, &["retention", "endorse", "--key", key]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("key_mismatch"), "{err}");
    bao.api_ok("POST", &record_path(key), old_way(&v1_pk)).await;
    bao.api_ok(
        "POST",
        &format!("transit/keys/{key}/config"),
        json!({"min_decryption_version": 2}),
    )
    .await;

    let running = Sidecar::start(&bao, &[FAST_REFRESH]).await;
    assert_eq!(refusal(&running, key).await, Some(Refusal::Unendorsed));
    assert_eq!(verdict(&running, key, m1, &s1).await, TOO_OLD);

    let dry = job(&bao, &["retention", "endorse", "--key", key, "--dry-run"]);
    assert_eq!(dry["previously"], "unendorsed", "{dry}");
    assert_eq!(dry["endorsed"], json!([1]), "{dry}");
    assert_eq!(dry["unchecked"], json!([1]), "{dry}");
    let (s, _) = bao
        .api("GET", &format!("transit/keys/aegis-retention.{key}"), None)
        .await;
    assert_eq!(s, 404, "a dry run creates nothing");

    let done = job(&bao, &["retention", "endorse", "--key", key]);
    assert_eq!(done["endorsed_generation"], 2, "{done}");
    wait_refusal(&running, key, None).await;
    assert_eq!(verdict(&running, key, m1, &s1).await, "valid");
    let fresh = Sidecar::start(&bao, &[]).await;
    assert_eq!(verdict(&fresh, key, m1, &s1).await, "valid");
    assert_eq!(refused(key, Refusal::Unendorsed), 1);
    assert_eq!(
        Refusal::ALL.iter().map(|r| refused(key, *r)).sum::<u64>(),
        1
    );

    // Later jobs build on it, each write a new generation, the old ones forgotten.
    job(&bao, &["rotate", "--key", key, "--force", "--grace", "1h"]);
    let ek = read(&bao, &format!("transit/keys/aegis-retention.{key}")).await;
    assert_eq!(
        (
            ek["latest_version"].as_u64(),
            ek["min_decryption_version"].as_u64()
        ),
        (Some(3), Some(3))
    );
    assert_eq!(
        (
            ek["min_encryption_version"].as_u64(),
            ek["min_available_version"].as_u64()
        ),
        (Some(3), Some(3))
    );
    assert_eq!(ek["keys"].as_object().unwrap().len(), 1, "{ek}");
    fresh.stop().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_dying_between_the_write_and_the_raise_converges_on_the_next_run() {
    common::metrics_on();
    let bao = Bao::dev().await;
    let key = "tm-converge";
    bao.create_key(key, "ed25519").await;
    let m1 = b"by v1".as_slice();
    let s1 = bao.sign(key, m1).await;
    job(&bao, &["rotate", "--key", key, "--force", "--grace", "1h"]);
    let older = read(&bao, &record_path(key)).await["data"].clone();

    // A job whose credential cannot raise the endorsement key's minimum versions dies
    // right after writing the record (exit 77), as a job killed at that step would.
    let hcl = format!(
        "path \"transit/*\" {{ capabilities = [\"create\", \"read\", \"update\", \"list\"] }}\n\
         path \"transit/keys/aegis-retention.{key}/config\" {{ capabilities = [\"deny\"] }}\n\
         path \"secret/data/aegis/*\" {{ capabilities = [\"create\", \"read\", \"update\"] }}\n"
    );
    write_policy(&bao, "dies-after-write", &hcl).await;
    let (s, b) = bao
        .api(
            "POST",
            "auth/token/create",
            Some(json!({ "policies": ["dies-after-write"] })),
        )
        .await;
    let token = client_token(s, &b);
    let (code, _, err) = common::aegis_cli(
        &bao.addr,
        &[("VAULT_TOKEN", token.as_str())],
        &["rotate", "--key", key, "--force", "--grace", "1h"],
    );
    assert_eq!(code, 77, "{err}");
    let record = read(&bao, &record_path(key)).await["data"].clone();
    let generation = record["endorsement"]["generation"].as_u64().unwrap();
    let ek_path = format!("transit/keys/aegis-retention.{key}");
    let ek = read(&bao, &ek_path).await;
    assert_eq!(
        ek["min_decryption_version"].as_u64().unwrap() + 1,
        generation,
        "{ek}"
    );
    // The new record is trusted meanwhile (its generation is served).
    let side = Sidecar::start(&bao, &[FAST_REFRESH]).await;
    assert_eq!(refusal(&side, key).await, None);
    assert_eq!(verdict(&side, key, m1, &s1).await, "valid");

    // The next run (nothing to rotate within --min-interval) finishes the raise and trim.
    let next = job(&bao, &["rotate", "--key", key]);
    assert_eq!(next["rotated_to"], Value::Null, "{next}");
    let ek = read(&bao, &ek_path).await;
    for field in [
        "min_decryption_version",
        "min_encryption_version",
        "min_available_version",
    ] {
        assert_eq!(ek[field].as_u64(), Some(generation), "{field}: {ek}");
    }
    // Now the generation before it is gone from Vault: writing it back is a replay.
    bao.api_ok("POST", &record_path(key), json!({ "data": older }))
        .await;
    wait_refusal(&side, key, Some(Refusal::Superseded)).await;
    assert_eq!(
        verdict(&side, key, m1, &s1).await,
        "valid",
        "the last accepted record is current"
    );
    side.stop().await;
}
