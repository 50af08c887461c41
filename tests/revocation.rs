//! Revocation enforced by Vault itself, with the real `aegis` binary, a real OpenBao and
//! the sidecar in-process: `aegis retire --now` of the signing version, of a middle
//! version and of a retired-but-valid one. Sign with that `key_version` and verify of its
//! signatures are refused through the sidecar and at Vault directly, with exact statuses
//! and messages; every other valid version still verifies; deleting the retention record
//! brings nothing back. A job stopped after each step (by a token whose policy lacks the
//! next step's capability) and run again converges to the state of an uninterrupted run.

mod common;

use std::time::Duration;

use common::standins::{client_token, write_policy};
use common::{b64, eventually, Bao, Sidecar};
use serde_json::{json, Value};

const FAST_REFRESH: (&str, &str) = ("AEGIS_REFRESH_INTERVAL", "500ms");
const MSG: &[u8] = b"model digest";
/// Vault's (and the sidecar's) answer to sign with a version below min_encryption_version.
const BELOW_MIN_ENC: &str =
    "requested version for signing is less than the minimum encryption key version";
/// Vault's (and the sidecar's) answer to verify with a version below min_decryption_version.
const TOO_OLD: &str = "ciphertext or signature version is disallowed by policy (too old)";

/// `aegis <args> --json` with `token`; asserts exit `code` and returns stdout as JSON (or
/// stderr as a JSON string when it failed).
fn aegis_as(bao: &Bao, token: &str, code: i32, args: &[&str]) -> Value {
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let (got, out, err) = common::aegis_cli(&bao.addr, &[("VAULT_TOKEN", token)], &with_json);
    assert_eq!(got, code, "aegis {args:?}: {out} {err}");
    if code == 0 {
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    } else {
        Value::String(err)
    }
}

/// `aegis retire --key KEY --version V --now` with the root token; returns the plan.
fn revoke(bao: &Bao, key: &str, version: u32) -> Value {
    let v = version.to_string();
    let args = [
        "retire",
        "--key",
        key,
        "--version",
        &v,
        "--now",
        "--reason",
        "leaked",
    ];
    aegis_as(bao, &bao.token, 0, &args)
}

async fn rotate_at_vault(bao: &Bao, key: &str) {
    bao.api_ok("POST", &format!("transit/keys/{key}/rotate"), json!({}))
        .await;
}

/// A signature by the latest version, made at Vault.
async fn sign_at_vault(bao: &Bao, key: &str) -> String {
    bao.sign(key, MSG).await
}

/// (latest, min_decryption_version, min_encryption_version) at Vault.
async fn minimums(bao: &Bao, key: &str) -> (u64, u64, u64) {
    let k = bao
        .api_ok("GET", &format!("transit/keys/{key}"), json!({}))
        .await;
    let n = |f: &str| k[f].as_u64().unwrap();
    (
        n("latest_version"),
        n("min_decryption_version"),
        n("min_encryption_version"),
    )
}

fn record_path(key: &str) -> String {
    format!("secret/data/aegis/keys/transit/{key}")
}

/// The record's entries as (version, revoked), and the whole record.
async fn record(bao: &Bao, key: &str) -> (Vec<(u64, bool)>, Value) {
    let (_, body) = bao.api("GET", &record_path(key), None).await;
    let data = body["data"]["data"].clone();
    let entries = data["previous_keys"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["version"].as_u64().unwrap(),
                        e["revoked"].as_bool().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (entries, data)
}

/// The sidecar's refusal of a signature by revoked version `v`, with the time recorded.
fn revoked_message(record: &Value, key: &str, v: u64) -> String {
    let entry = record["previous_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["version"] == v)
        .unwrap();
    format!(
        "signature version {v} of key {key:?} was revoked at {}",
        entry["retired_at"].as_str().unwrap()
    )
}

/// Verify at `base` ("sidecar" or Vault): (status, body).
async fn verify(side: Option<&Sidecar>, bao: &Bao, key: &str, sig: &str) -> (u16, Value) {
    let body = json!({ "input": b64(MSG), "signature": sig });
    let path = format!("transit/verify/{key}");
    match side {
        Some(s) => s.api("POST", &path, Some(body)).await,
        None => bao.api("POST", &path, Some(body)).await,
    }
}

async fn sign_version(side: Option<&Sidecar>, bao: &Bao, key: &str, v: u64) -> (u16, Value) {
    let body = json!({ "input": b64(MSG), "key_version": v });
    let path = format!("transit/sign/{key}");
    match side {
        Some(s) => s.api("POST", &path, Some(body)).await,
        None => bao.api("POST", &path, Some(body)).await,
    }
}

/// Asserts a 400 whose only error is `msg`.
fn assert_refused(got: (u16, Value), msg: &str, what: &str) {
    assert_eq!(got, (400, json!({ "errors": [msg] })), "{what}");
}

/// Vault's own answer to sign with a version below min_encryption_version: a 500 (the
/// error is not marked as the caller's), which the sidecar answers with a 400.
async fn assert_vault_refuses_signing(bao: &Bao, key: &str, v: u64) {
    let (s, body) = sign_version(None, bao, key, v).await;
    assert_eq!(s, 500, "{body}");
    let msg = body["errors"][0].as_str().unwrap();
    assert!(msg.contains(BELOW_MIN_ENC), "{msg}");
}

/// `sig` (by version `v`) is refused for verify at Vault, and sign with `key_version` v
/// is refused by the sidecar (400, Vault's message) and by Vault.
async fn refused_by_vault(side: &Sidecar, bao: &Bao, key: &str, v: u64, sig: &str) {
    assert_refused(
        verify(None, bao, key, sig).await,
        TOO_OLD,
        "verify at Vault",
    );
    assert_refused(
        sign_version(Some(side), bao, key, v).await,
        BELOW_MIN_ENC,
        "sign with key_version through the sidecar",
    );
    assert_vault_refuses_signing(bao, key, v).await;
}

async fn assert_valid(side: &Sidecar, bao: &Bao, key: &str, sig: &str) {
    let (s, body) = verify(Some(side), bao, key, sig).await;
    assert_eq!(
        (s, &body["data"]["valid"]),
        (200, &json!(true)),
        "{sig}: {body}"
    );
}

/// Waits until the running sidecar has seen min_decryption_version `min`.
async fn sidecar_sees(side: &Sidecar, key: &str, min: u64) {
    eventually(
        Duration::from_secs(10),
        "the sidecar to refresh",
        || async {
            let (_, k) = side.api("GET", &format!("transit/keys/{key}"), None).await;
            (k["data"]["min_decryption_version"] == min).then_some(())
        },
    )
    .await;
}

/// Deletes the record (every KV version and its metadata), as a KV writer could.
async fn delete_record(bao: &Bao, key: &str) {
    let (s, body) = bao
        .api(
            "DELETE",
            &format!("secret/metadata/aegis/keys/transit/{key}"),
            None,
        )
        .await;
    assert_eq!(s, 204, "{body}");
    assert_eq!(record(bao, key).await.0, []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_signing_version_rotates_first_and_vault_refuses_it() {
    let bao = Bao::dev().await;
    bao.create_key("sk", "ed25519").await;
    let v1 = sign_at_vault(&bao, "sk").await;
    aegis_as(&bao, &bao.token, 0, &["rotate", "--key", "sk", "--force"]);
    let v2 = sign_at_vault(&bao, "sk").await;
    let side = Sidecar::start(&bao, &[FAST_REFRESH]).await;
    assert_valid(&side, &bao, "sk", &v2).await;

    let args = [
        "retire",
        "--key",
        "sk",
        "--version",
        "2",
        "--now",
        "--reason",
        "leaked",
        "--dry-run",
    ];
    let dry = aegis_as(&bao, &bao.token, 0, &args);
    assert_eq!(
        (
            &dry["rotated_to"],
            &dry["min_encryption_version"],
            &dry["min_decryption_version"]
        ),
        (&json!(3), &json!([0, 3]), &json!([2, 3])),
        "{dry}"
    );
    assert_eq!(
        minimums(&bao, "sk").await,
        (2, 2, 0),
        "a dry run changes nothing"
    );

    let plan = revoke(&bao, "sk", 2);
    assert_eq!(plan["rotated_to"], 3, "{plan}");
    assert_eq!(plan["revoked"], 2, "{plan}");
    assert_eq!(
        plan["kept_valid"],
        json!([]),
        "v1 was recorded by rotate: {plan}"
    );
    assert_eq!(plan["min_encryption_version"], json!([0, 3]), "{plan}");
    assert_eq!(plan["min_decryption_version"], json!([2, 3]), "{plan}");
    assert_eq!(minimums(&bao, "sk").await, (3, 3, 3));
    let (entries, rec) = record(&bao, "sk").await;
    assert_eq!(entries, [(1, false), (2, true)]);

    sidecar_sees(&side, "sk", 3).await;
    assert_refused(
        verify(Some(&side), &bao, "sk", &v2).await,
        &revoked_message(&rec, "sk", 2),
        "verify of v2 through the sidecar",
    );
    refused_by_vault(&side, &bao, "sk", 2, &v2).await;
    assert_valid(&side, &bao, "sk", &v1).await;
    let v3 = sign_at_vault(&bao, "sk").await;
    assert!(v3.starts_with("vault:v3:"), "{v3}");
    assert_valid(&side, &bao, "sk", &v3).await;

    // The record deleted: a fresh sidecar has only Vault's rule, which refuses v2 (and
    // v1, valid only through its entry); the running one keeps the revocation it saw.
    delete_record(&bao, "sk").await;
    let fresh = Sidecar::start(&bao, &[]).await;
    for (sig, v) in [(&v2, 2), (&v1, 1)] {
        assert_refused(
            verify(Some(&fresh), &bao, "sk", sig).await,
            TOO_OLD,
            "fresh sidecar, no record",
        );
        refused_by_vault(&fresh, &bao, "sk", v, sig).await;
    }
    assert_valid(&fresh, &bao, "sk", &v3).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // two refresh intervals
    assert_refused(
        verify(Some(&side), &bao, "sk", &v2).await,
        &revoked_message(&rec, "sk", 2),
        "running sidecar after the record was deleted",
    );
    fresh.stop().await;
    side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_middle_version_keeps_the_others_and_batches_fail_like_vault() {
    let bao = Bao::dev().await;
    bao.create_key("mid", "ecdsa-p256").await;
    let mut sigs = vec![sign_at_vault(&bao, "mid").await];
    for _ in 0..2 {
        rotate_at_vault(&bao, "mid").await;
        sigs.push(sign_at_vault(&bao, "mid").await);
    }
    let side = Sidecar::start(&bao, &[FAST_REFRESH]).await;
    // A sidecar whose cached keyset will predate the revocation for an hour.
    let stale = Sidecar::start(&bao, &[("AEGIS_REFRESH_INTERVAL", "1h")]).await;
    assert_valid(&stale, &bao, "mid", &sigs[1]).await;

    let plan = revoke(&bao, "mid", 2);
    assert!(plan["rotated_to"].is_null(), "{plan}");
    assert_eq!(plan["kept_valid"], json!([1]), "{plan}");
    assert_eq!(plan["recorded"], json!([1, 2]), "{plan}");
    assert_eq!(plan["min_encryption_version"], json!([0, 3]), "{plan}");
    assert_eq!(plan["min_decryption_version"], json!([1, 3]), "{plan}");
    assert_eq!(minimums(&bao, "mid").await, (3, 3, 3));
    let (entries, rec) = record(&bao, "mid").await;
    assert_eq!(entries, [(1, false), (2, true)]);
    let v1_entry = &rec["previous_keys"][0];
    assert_eq!(v1_entry["reason"], "kept valid when version 2 was revoked");

    sidecar_sees(&side, "mid", 3).await;
    assert_refused(
        verify(Some(&side), &bao, "mid", &sigs[1]).await,
        &revoked_message(&rec, "mid", 2),
        "verify of v2 through the sidecar",
    );
    refused_by_vault(&side, &bao, "mid", 2, &sigs[1]).await;
    // v1 verifies through its record entry (Vault refuses it now), v3 as before.
    assert_valid(&side, &bao, "mid", &sigs[0]).await;
    assert_valid(&side, &bao, "mid", &sigs[2]).await;
    assert_refused(
        verify(None, &bao, "mid", &sigs[0]).await,
        TOO_OLD,
        "v1 at Vault",
    );
    // v1 is retired: it verifies but no longer signs.
    assert_refused(
        sign_version(Some(&side), &bao, "mid", 1).await,
        BELOW_MIN_ENC,
        "sign with v1",
    );
    let (s, body) = sign_version(Some(&side), &bao, "mid", 3).await;
    assert_eq!(
        (s, &body["data"]["key_version"]),
        (200, &json!(3)),
        "{body}"
    );
    // The stale sidecar forwards the sign, Vault refuses it (500); the sidecar re-reads
    // the key and answers the caller's 400; its verify of v2 is then refused too.
    assert_refused(
        sign_version(Some(&stale), &bao, "mid", 2).await,
        BELOW_MIN_ENC,
        "sign with v2 through a sidecar with a stale cache",
    );
    assert_refused(
        verify(Some(&stale), &bao, "mid", &sigs[1]).await,
        &revoked_message(&rec, "mid", 2),
        "verify of v2 through the once-stale sidecar",
    );
    stale.stop().await;

    // A batch with key_version 2: the same per-item errors as Vault's, none signed.
    let batch = json!({
        "key_version": 2,
        "batch_input": [
            {"input": b64(MSG), "reference": "a"},
            {"input": "not base64!", "reference": "b"},
            {"reference": "c"},
            {"input": b64(MSG), "context": "%%", "reference": "d"},
        ]
    });
    let at_vault = bao.api_ok("POST", "transit/sign/mid", batch.clone()).await;
    let (s, through) = side.api("POST", "transit/sign/mid", Some(batch)).await;
    assert_eq!(s, 200, "{through}");
    assert_eq!(through["data"], at_vault, "sidecar vs Vault");
    assert_eq!(at_vault["batch_results"][0]["error"], BELOW_MIN_ENC);
    // Single mode: input that is not base64 is Vault's first complaint, before the version.
    let single = json!({"key_version": 2, "input": "not base64!"});
    let at_vault = bao
        .api("POST", "transit/sign/mid", Some(single.clone()))
        .await;
    assert_eq!(at_vault.0, 400, "{}", at_vault.1);
    let through = side.api("POST", "transit/sign/mid", Some(single)).await;
    assert_eq!(through, at_vault, "sidecar vs Vault");

    delete_record(&bao, "mid").await;
    let fresh = Sidecar::start(&bao, &[]).await;
    for (i, v) in [(0, 1), (1, 2)] {
        assert_refused(
            verify(Some(&fresh), &bao, "mid", &sigs[i]).await,
            TOO_OLD,
            "fresh sidecar, no record",
        );
        refused_by_vault(&fresh, &bao, "mid", v, &sigs[i]).await;
    }
    assert_valid(&fresh, &bao, "mid", &sigs[2]).await;
    fresh.stop().await;
    side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_retired_but_valid_version_marks_it_and_follows_min_decryption() {
    let bao = Bao::dev().await;
    bao.create_key("old", "ed25519").await;
    let mut sigs = vec![sign_at_vault(&bao, "old").await];
    for _ in 0..2 {
        aegis_as(&bao, &bao.token, 0, &["rotate", "--key", "old", "--force"]);
        sigs.push(sign_at_vault(&bao, "old").await);
    }
    assert_eq!(minimums(&bao, "old").await, (3, 3, 0));
    let side = Sidecar::start(&bao, &[FAST_REFRESH]).await;
    assert_valid(&side, &bao, "old", &sigs[0]).await;

    let plan = revoke(&bao, "old", 1);
    assert!(plan["rotated_to"].is_null(), "{plan}");
    assert_eq!(plan["recorded"], json!([1]), "{plan}");
    assert_eq!(
        plan["min_decryption_version"],
        json!([3, 3]),
        "never lowered: {plan}"
    );
    assert_eq!(plan["min_encryption_version"], json!([0, 3]), "{plan}");
    assert_eq!(minimums(&bao, "old").await, (3, 3, 3));
    let (entries, rec) = record(&bao, "old").await;
    assert_eq!(entries, [(1, true), (2, false)]);

    let refused = revoked_message(&rec, "old", 1);
    eventually(
        Duration::from_secs(10),
        "the revocation to reach the sidecar",
        || async {
            let got = verify(Some(&side), &bao, "old", &sigs[0]).await;
            (got == (400, json!({ "errors": [refused] }))).then_some(())
        },
    )
    .await;
    refused_by_vault(&side, &bao, "old", 1, &sigs[0]).await;
    assert_valid(&side, &bao, "old", &sigs[1]).await;
    assert_valid(&side, &bao, "old", &sigs[2]).await;

    delete_record(&bao, "old").await;
    let fresh = Sidecar::start(&bao, &[]).await;
    assert_refused(
        verify(Some(&fresh), &bao, "old", &sigs[0]).await,
        TOO_OLD,
        "fresh sidecar, no record",
    );
    assert_valid(&fresh, &bao, "old", &sigs[2]).await;
    // The rotation job refuses to build on a record that disappeared (docs/trust-model.md);
    // the operator restores the last good (endorsed) version from a backup.
    let (s, body) = bao
        .api("POST", &record_path("old"), Some(json!({ "data": rec })))
        .await;
    assert_eq!(s, 200, "{body}");

    // min_encryption_version is set now: Vault refuses a min_decryption_version above
    // it, so a later rotation raises both, and a revocation raises it first.
    let plan = aegis_as(&bao, &bao.token, 0, &["rotate", "--key", "old", "--force"]);
    assert_eq!(plan["min_encryption_version"], json!([3, 4]), "{plan}");
    assert_eq!(plan["min_decryption_version"], json!([3, 4]), "{plan}");
    let plan = revoke(&bao, "old", 4);
    assert_eq!(plan["rotated_to"], 5, "{plan}");
    assert_eq!(minimums(&bao, "old").await, (5, 5, 5));
    // v2 from the restored record, v3 recorded by the revocation, v1 (revoked, below
    // min_decryption_version) dropped by the rotation.
    assert_eq!(
        record(&bao, "old").await.0,
        [(2, false), (3, false), (4, true)]
    );
    fresh.stop().await;
    side.stop().await;
}

/// A token for a policy on key `key`: always reading the key and the record, plus `extra`.
async fn token_with(bao: &Bao, key: &str, name: &str, extra: &str) -> String {
    let hcl = format!(
        r#"path "transit/keys/{key}" {{ capabilities = ["read"] }}
path "secret/data/aegis/keys/transit/{key}" {{ capabilities = ["read"] }}
{extra}"#
    );
    write_policy(bao, name, &hcl).await;
    let (s, body) = bao
        .api(
            "POST",
            "auth/token/create",
            Some(json!({ "policies": [name], "ttl": "10m" })),
        )
        .await;
    client_token(s, &body)
}

/// Key `key` at version 2 (v2 signing, nothing recorded), revoking v2.
async fn two_versions(bao: &Bao, key: &str) {
    bao.create_key(key, "ed25519").await;
    rotate_at_vault(bao, key).await;
}

/// (latest, min_decryption, min_encryption) and the record's (version, revoked) entries:
/// what must be equal between an interrupted-then-retried job and an uninterrupted one.
type State = ((u64, u64, u64), Vec<(u64, bool)>);

async fn final_state(bao: &Bao, key: &str) -> State {
    (minimums(bao, key).await, record(bao, key).await.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_stopped_after_each_step_converges_when_run_again() {
    let bao = Bao::dev().await;
    two_versions(&bao, "whole").await;
    revoke(&bao, "whole", 2);
    let expected = final_state(&bao, "whole").await;
    assert_eq!(expected, ((3, 3, 3), vec![(1, false), (2, true)]));

    let key = "cut";
    two_versions(&bao, key).await;
    let rotate = format!(r#"path "transit/keys/{key}/rotate" {{ capabilities = ["update"] }}"#);
    // Writing the record: the KV path and its endorsement key (docs/trust-model.md).
    let kv_write = format!(
        r#"path "secret/data/aegis/keys/transit/{key}" {{ capabilities = ["read", "create", "update"] }}
path "transit/keys/aegis-retention.{key}" {{ capabilities = ["create", "read", "update"] }}
path "transit/keys/aegis-retention.{key}/*" {{ capabilities = ["update"] }}
path "transit/sign/aegis-retention.{key}" {{ capabilities = ["update"] }}"#
    );
    let enc_only = format!(
        r#"path "transit/keys/{key}/config" {{
  capabilities = ["update"]
  allowed_parameters = {{ "min_encryption_version" = [] }}
}}"#
    );
    let args = [
        "retire",
        "--key",
        key,
        "--version",
        "2",
        "--now",
        "--reason",
        "leaked",
    ];
    // Each run is stopped by the first step its token may not do (exit 77, EX_NOPERM);
    // what it did before stays done. Runs 2 and 3 see v2 is no longer the signing
    // version and do not rotate again.
    let steps: [(&str, String, State); 3] = [
        ("rotated", rotate.clone(), ((3, 1, 0), vec![])),
        (
            "recorded",
            format!("{rotate}\n{kv_write}"),
            ((3, 1, 0), vec![(1, false), (2, true)]),
        ),
        (
            "min-enc-raised",
            format!("{rotate}\n{kv_write}\n{enc_only}"),
            ((3, 1, 3), vec![(1, false), (2, true)]),
        ),
    ];
    for (name, hcl, state) in steps {
        let token = token_with(&bao, key, name, &hcl).await;
        let err = aegis_as(&bao, &token, 77, &args);
        assert!(
            err.as_str().unwrap().contains("permission denied"),
            "{name}: {err}"
        );
        assert_eq!(final_state(&bao, key).await, state, "after step {name}");
    }
    let plan = aegis_as(&bao, &bao.token, 0, &args);
    assert!(plan["rotated_to"].is_null(), "rotated once only: {plan}");
    assert_eq!(plan["min_decryption_version"], json!([1, 3]), "{plan}");
    assert_eq!(plan["min_encryption_version"], json!([3, 3]), "{plan}");
    assert_eq!(final_state(&bao, key).await, expected);

    // Once more: nothing left to do, nothing changes.
    let (_, before) = record(&bao, key).await;
    let plan = aegis_as(&bao, &bao.token, 0, &args);
    assert!(plan["rotated_to"].is_null(), "{plan}");
    assert_eq!(plan["min_decryption_version"], json!([3, 3]), "{plan}");
    assert_eq!(final_state(&bao, key).await, expected);
    assert_eq!(
        record(&bao, key).await.1,
        before,
        "the record is not rewritten"
    );
}

/// `retire --at` of the signing version rotates it away first (once), records it until
/// then, and raises min_decryption_version past it like `rotate`; min_encryption_version
/// stays unset. With a time already past, the version is refused at once: by the sidecar
/// for verify (its window ended) and, Vault no longer holding it, for sign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retiring_the_signing_version_early_rotates_it_away() {
    let bao = Bao::dev().await;
    bao.create_key("early", "ed25519").await;
    let v1 = sign_at_vault(&bao, "early").await;
    let side = Sidecar::start(&bao, &[FAST_REFRESH]).await;
    let until = "2099-01-01T00:00:00Z";
    let args = [
        "retire",
        "--key",
        "early",
        "--version",
        "1",
        "--at",
        until,
        "--reason",
        "re-signed",
    ];
    let plan = aegis_as(&bao, &bao.token, 0, &args);
    assert_eq!(plan["rotated_to"], 2, "{plan}");
    assert_eq!(plan["recorded"], json!([1]), "{plan}");
    assert_eq!(plan["retire_after"], until, "{plan}");
    assert_eq!(plan["min_decryption_version"], json!([1, 2]), "{plan}");
    assert_eq!(plan["min_encryption_version"], json!([0, 0]), "{plan}");
    let again = aegis_as(&bao, &bao.token, 0, &args);
    assert!(again["rotated_to"].is_null(), "rotated once only: {again}");
    assert_eq!(minimums(&bao, "early").await, (2, 2, 0));
    sidecar_sees(&side, "early", 2).await;
    assert_valid(&side, &bao, "early", &v1).await;

    // The window closed now: verify refused with the recorded times; sign with v1 gets
    // Vault's own refusal (it no longer holds v1), as a 400.
    let past = "2026-01-01T00:00:00Z";
    let args = [
        "retire",
        "--key",
        "early",
        "--version",
        "1",
        "--at",
        past,
        "--reason",
        "x",
    ];
    aegis_as(&bao, &bao.token, 0, &args);
    let retired_at = record(&bao, "early").await.1["previous_keys"][0]["retired_at"]
        .as_str()
        .unwrap()
        .to_string();
    let refused = format!(
        "signature version 1 of key \"early\" was retired at {retired_at}; its retention ended at {past}"
    );
    eventually(
        Duration::from_secs(10),
        "the sidecar to see the end",
        || async {
            let got = verify(Some(&side), &bao, "early", &v1).await;
            (got == (400, json!({ "errors": [refused] }))).then_some(())
        },
    )
    .await;
    assert_refused(
        sign_version(Some(&side), &bao, "early", 1).await,
        "no such key version",
        "sign with v1 through the sidecar",
    );
    let (s, body) = sign_version(None, &bao, "early", 1).await;
    assert_eq!(s, 500, "{body}");
    let msg = body["errors"][0].as_str().unwrap();
    assert!(msg.contains("no such key version"), "{msg}");
    side.stop().await;
}

/// The shipped rotation-job policy (deploy/vault/aegis-rotator.hcl, for key "model-sign")
/// is enough to revoke the signing version: rotate, record, both minimums.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rotator_policy_can_revoke_the_signing_version() {
    let bao = Bao::dev().await;
    bao.create_key("model-sign", "ecdsa-p256").await;
    let hcl = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/vault/aegis-rotator.hcl"),
    )
    .unwrap();
    write_policy(&bao, "aegis-rotator", &hcl).await;
    let (s, body) = bao
        .api(
            "POST",
            "auth/token/create",
            Some(json!({ "policies": ["aegis-rotator"], "ttl": "10m" })),
        )
        .await;
    let rotator = client_token(s, &body);
    let args = [
        "retire",
        "--key",
        "model-sign",
        "--version",
        "1",
        "--now",
        "--reason",
        "leaked",
    ];
    let plan = aegis_as(&bao, &rotator, 0, &args);
    assert_eq!(plan["rotated_to"], 2, "{plan}");
    assert_eq!(minimums(&bao, "model-sign").await, (2, 2, 2));
    assert_eq!(record(&bao, "model-sign").await.0, [(1, true)]);
}
