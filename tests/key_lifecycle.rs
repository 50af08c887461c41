//! Key lifecycle for rotation jobs, with the real `aegis` binary and a real OpenBao:
//! rotate records outgoing versions and raises min_decryption_version; the sidecar keeps
//! verifying retired-but-valid versions that Vault now refuses, and refuses them once
//! their window passes or they are revoked; concurrent jobs lose nothing.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{b64, eventually, Bao, Sidecar};
use serde_json::{json, Value};

/// Runs `aegis <args>` against `bao` with its root token; returns (exit code, stdout, stderr).
fn aegis(bao: &Bao, args: &[&str]) -> (i32, String, String) {
    aegis_with(bao, &[], args)
}

/// [`aegis`] with extra environment variables.
fn aegis_with(bao: &Bao, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let mut all = vec![("VAULT_TOKEN", bao.token.as_str())];
    all.extend_from_slice(env);
    common::aegis_cli(&bao.addr, &all, args)
}

fn aegis_ok(bao: &Bao, args: &[&str]) -> Value {
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let (code, out, err) = aegis(bao, &with_json);
    assert_eq!(code, 0, "aegis {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

async fn record(bao: &Bao, key: &str) -> Value {
    bao.api(
        "GET",
        &format!("secret/data/aegis/keys/transit/{key}"),
        None,
    )
    .await
    .1["data"]["data"]
        .clone()
}

const FAST_REFRESH: (&str, &str) = ("AEGIS_REFRESH_INTERVAL", "500ms");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_but_valid_until_retire_after_then_refused() {
    let bao = Bao::dev().await;
    bao.create_key("life", "ed25519").await;
    let old = bao.sign("life", b"signed with v1").await;
    let side = Sidecar::start(&bao, &[FAST_REFRESH]).await;
    assert_eq!(
        side.verify("life", b"signed with v1", &old).await.1["data"]["valid"],
        true
    );

    // A key younger than --min-interval (1 h) is not rotated: a new key says so, and how
    // to rotate anyway (it was never rotated, so not "again").
    let skipped = aegis_ok(&bao, &["rotate", "--key", "life"]);
    let why = skipped["rotation_skipped"].as_str().unwrap();
    assert!(
        why.starts_with("the key's only version (1) was created ")
            && why.ends_with(
                "ago, less than --min-interval 1h: not rotating a key this new (add --force to rotate now)"
            ),
        "{skipped}"
    );
    // Dry run: a plan, no change.
    let plan = aegis_ok(
        &bao,
        &[
            "rotate",
            "--key",
            "life",
            "--force",
            "--grace",
            "6s",
            "--dry-run",
        ],
    );
    assert_eq!(
        (plan["rotated_to"].clone(), plan["recorded"].clone()),
        (json!(2), json!([1]))
    );
    assert_eq!(
        bao.api_ok("GET", "transit/keys/life", json!({})).await["latest_version"],
        1
    );

    let grace_start = Instant::now();
    let plan = aegis_ok(
        &bao,
        &["rotate", "--key", "life", "--force", "--grace", "6s"],
    );
    assert_eq!(plan["rotated_to"], 2, "{plan}");
    assert_eq!(plan["recorded"], json!([1]), "{plan}");
    assert_eq!(plan["min_decryption_version"], json!([1, 2]), "{plan}");
    let rec = record(&bao, "life").await;
    assert_eq!(rec["previous_keys"][0]["version"], 1, "{rec}");
    assert_eq!(rec["previous_keys"][0]["reason"], "rotation");

    // Vault itself refuses v1 now ...
    let (s, body) = bao
        .api(
            "POST",
            "transit/verify/life",
            Some(json!({"input": b64(b"signed with v1"), "signature": old})),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    // ... the sidecar, having refreshed, verifies it: retired but valid.
    eventually(
        Duration::from_secs(5),
        "the sidecar to see min_decryption_version 2",
        || async {
            let (_, k) = side.api("GET", "transit/keys/life", None).await;
            (k["data"]["min_decryption_version"] == 2).then_some(())
        },
    )
    .await;
    let (s, body) = side.verify("life", b"signed with v1", &old).await;
    assert_eq!((s, &body["data"]["valid"]), (200, &json!(true)), "{body}");

    // Once retire_after passes: refused, naming the key, the version and the times.
    let (s, body) = eventually(Duration::from_secs(15), "v1's window to end", || async {
        let r = side.verify("life", b"signed with v1", &old).await;
        (r.0 == 400).then_some(r)
    })
    .await;
    assert!(
        grace_start.elapsed() >= Duration::from_secs(5),
        "refused too early"
    );
    let msg = body["errors"][0].as_str().unwrap();
    assert!(
        msg.contains("version 1 of key \"life\" was retired at"),
        "{s} {msg}"
    );
    assert!(msg.contains("retention ended at"), "{msg}");

    // The next rotation drops the expired entry; v1 stays refused.
    let plan = aegis_ok(
        &bao,
        &["rotate", "--key", "life", "--force", "--grace", "1h"],
    );
    assert_eq!(plan["dropped"], json!([1]), "{plan}");
    assert_eq!(plan["recorded"], json!([2]), "{plan}");
    // Idempotent: run again within --min-interval, nothing more happens.
    let again = aegis_ok(&bao, &["rotate", "--key", "life"]);
    assert!(again["rotated_to"].is_null(), "{again}");
    assert_eq!(again["recorded"], json!([]), "{again}");
    assert_eq!(
        bao.api_ok("GET", "transit/keys/life", json!({})).await["latest_version"],
        3
    );
    side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_now_reaches_a_running_sidecar_within_its_refresh_interval() {
    let bao = Bao::dev().await;
    bao.create_key("rev", "ecdsa-p256").await;
    let v1 = bao.sign("rev", b"m").await;
    aegis_ok(
        &bao,
        &["rotate", "--key", "rev", "--force", "--grace", "30d"],
    );
    let v2 = bao.sign("rev", b"m").await;
    aegis_ok(
        &bao,
        &["rotate", "--key", "rev", "--force", "--grace", "30d"],
    );
    let side = Sidecar::start(&bao, &[("AEGIS_REFRESH_INTERVAL", "1s")]).await;
    for sig in [&v1, &v2] {
        assert_eq!(side.verify("rev", b"m", sig).await.1["data"]["valid"], true);
    }

    // A refusal of the command itself: exit 65, nothing changed. (Revoking the signing
    // version rotates first: tests/revocation.rs.)
    let (code, _, err) = aegis(
        &bao,
        &[
            "retire",
            "--key",
            "rev",
            "--version",
            "9",
            "--now",
            "--reason",
            "x",
        ],
    );
    assert_eq!(code, 65, "{err}");

    let t = Instant::now();
    let plan = aegis_ok(
        &bao,
        &[
            "retire",
            "--key",
            "rev",
            "--version",
            "1",
            "--now",
            "--reason",
            "key compromised",
        ],
    );
    assert_eq!(plan["recorded"], json!([1]), "{plan}");
    let (_, body) = eventually(
        Duration::from_secs(5),
        "the revocation to reach the sidecar",
        || async {
            let r = side.verify("rev", b"m", &v1).await;
            (r.0 == 400).then_some(r)
        },
    )
    .await;
    eprintln!("revocation reached the sidecar after {:?}", t.elapsed());
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .contains("was revoked at"),
        "{body}"
    );
    // v2 is untouched.
    assert_eq!(side.verify("rev", b"m", &v2).await.1["data"]["valid"], true);

    let status = aegis_ok(&bao, &["keys", "status", "--key", "rev"]);
    let states: Vec<_> = status[0]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            (3, "signing".into()),
            (2, "retired_valid".into()),
            (1, "revoked".into())
        ]
    );
    // Rotated seconds ago with the default 90-day period: 89 whole days left.
    assert_eq!(status[0]["rotation_due_in_days"], 89, "{status}");
    side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rotations_lose_no_entry() {
    let bao = Bao::dev().await;
    bao.create_key("race", "ed25519").await;
    let jobs: Vec<_> = (0..4)
        .map(|_| {
            let (addr, token) = (bao.addr.clone(), bao.token.clone());
            std::thread::spawn(move || {
                Command::new(env!("CARGO_BIN_EXE_aegis"))
                    .args([
                        "rotate", "--key", "race", "--force", "--grace", "1h", "--json",
                    ])
                    .env_clear()
                    .env("VAULT_ADDR", addr)
                    .env("VAULT_TOKEN", token)
                    .output()
                    .unwrap()
            })
        })
        .collect();
    for j in jobs {
        let out = j.join().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Before any converging run: every version below min_decryption_version is recorded
    // (a lost entry would show here, not be papered over by a later run).
    let info = bao.api_ok("GET", "transit/keys/race", json!({})).await;
    let min = info["min_decryption_version"].as_u64().unwrap();
    let rec = record(&bao, "race").await;
    for v in 1..min {
        assert!(
            rec["previous_keys"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["version"] == v),
            "version {v} below min_decryption_version {min} is not recorded: {rec}"
        );
    }
    // Each job rotates at most once (a job that lost a write race counts the rotation
    // another job made); whatever happened, the state is consistent.
    let info = bao.api_ok("GET", "transit/keys/race", json!({})).await;
    let latest = info["latest_version"].as_u64().unwrap();
    assert!((2..=5).contains(&latest), "latest {latest}");
    // Jobs raise min_decryption_version only past recorded versions; a last converging
    // run brings it to the signing version.
    aegis_ok(&bao, &["rotate", "--key", "race"]);
    let info = bao.api_ok("GET", "transit/keys/race", json!({})).await;
    assert_eq!(info["min_decryption_version"].as_u64().unwrap(), latest);
    let rec = record(&bao, "race").await;
    let recorded: Vec<u64> = rec["previous_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(recorded, (1..latest).collect::<Vec<_>>(), "{rec}");
}

/// Verify at full speed for 20 s while rotations and a retirement run: zero failures
/// for signatures valid by the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_never_fails_while_rotation_jobs_run() {
    let bao = Bao::dev().await;
    bao.create_key("busy", "ed25519").await;
    let first = bao.sign("busy", b"old").await;
    let side = Sidecar::start(&bao, &[FAST_REFRESH]).await;
    let stop = Instant::now() + Duration::from_secs(20);
    let verifier = {
        let addr = side.addr.clone();
        let first = first.clone();
        tokio::spawn(async move {
            let client = common::http();
            let (mut ok, mut failures) = (0u64, Vec::new());
            while Instant::now() < stop {
                let (s, body) = common::call(
                    &client,
                    "POST",
                    &format!("{addr}/v1/transit/verify/busy"),
                    None,
                    Some(&json!({"input": b64(b"old"), "signature": first})),
                )
                .await;
                if s == 200 && body["data"]["valid"] == true {
                    ok += 1;
                } else {
                    failures.push(format!("{s} {body}"));
                }
            }
            (ok, failures)
        })
    };
    let bao_ref = &bao;
    let mut jobs = 0;
    // A round every 1.5 s: about a dozen rotations, like a year of monthly ones.
    while Instant::now() + Duration::from_secs(3) < stop {
        let round = Instant::now();
        aegis_ok(
            bao_ref,
            &["rotate", "--key", "busy", "--force", "--grace", "1h"],
        );
        let latest = bao.api_ok("GET", "transit/keys/busy", json!({})).await["latest_version"]
            .as_u64()
            .unwrap();
        // Retire (not revoke) the newest outgoing version with a window still open.
        aegis_ok(
            bao_ref,
            &[
                "retire",
                "--key",
                "busy",
                "--version",
                &(latest - 1).to_string(),
                "--at",
                "2099-01-01T00:00:00Z",
                "--reason",
                "re-dated",
            ],
        );
        jobs += 1;
        tokio::time::sleep(Duration::from_millis(1500).saturating_sub(round.elapsed())).await;
    }
    let (ok, failures) = verifier.await.unwrap();
    eprintln!(
        "{ok} verifies in 20 s during {jobs} rotate+retire rounds, {} failures",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures, first: {}",
        failures.len(),
        failures[0]
    );
    assert!(jobs >= 2 && ok > 1000, "jobs {jobs}, verifies {ok}");
    side.stop().await;
}

/// Every rotate and retire leaves one parseable audit event in the file (failures too,
/// dry runs not); with the HTTP sink down the events stay spooled and arrive once it is
/// back. The sidecar audits each signed item and each refused verify, by digest only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_trail_in_a_file_and_over_http() {
    let bao = Bao::dev().await;
    bao.create_key("aud", "ed25519").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let spool = dir.path().join("spool");
    let port = common::free_port();
    let url = format!("http://127.0.0.1:{port}/audit");
    let env = [
        ("AEGIS_AUDIT_FILE", file.to_str().unwrap()),
        ("AEGIS_AUDIT_URL", url.as_str()),
        ("AEGIS_AUDIT_SPOOL_DIR", spool.to_str().unwrap()),
        ("AEGIS_AUDIT_FLUSH_TIMEOUT", "500ms"),
    ];

    // The HTTP receiver is down: commands succeed, events wait in the spool.
    let run = |args: &[&str]| aegis_with(&bao, &env, args);
    let (code, _, err) = run(&[
        "rotate",
        "--key",
        "aud",
        "--force",
        "--grace",
        "30d",
        "--reason",
        "quarterly",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("not yet delivered"), "{err}");
    let (code, _, _) = run(&["rotate", "--key", "aud", "--force", "--dry-run"]);
    assert_eq!(code, 0);
    let (code, _, _) = run(&[
        "retire",
        "--key",
        "aud",
        "--version",
        "9",
        "--now",
        "--reason",
        "oops",
    ]);
    assert_eq!(
        code, 65,
        "retiring a version that does not exist is refused (and audited)"
    );
    let (code, _, err) = run(&[
        "retire",
        "--key",
        "aud",
        "--version",
        "1",
        "--at",
        "2099-01-01T00:00:00Z",
        "--reason",
        "extended",
    ]);
    assert_eq!(code, 0, "{err}");

    let lines: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(String, String, Value)> = lines
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_string(),
                e["result"]
                    .as_str()
                    .unwrap()
                    .split(':')
                    .next()
                    .unwrap()
                    .to_string(),
                e["versions"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("rotate".into(), "ok".into(), json!([1, 2])),
            ("retire".into(), "error".into(), json!([])),
            ("retire".into(), "ok".into(), json!([1])),
        ],
        "{lines:?}"
    );
    assert_eq!(lines[0]["reason"], "quarterly");
    assert_eq!(lines[0]["key"], "aud");
    assert!(
        lines[0]["actor"]
            .as_str()
            .unwrap()
            .contains("display_name=token accessor="),
        "{}",
        lines[0]
    );
    assert!(lines[0]["retire_after"].is_string());
    assert!(!std::fs::read_to_string(&file).unwrap().contains(&bao.token));

    // The receiver comes back; the next process using the spool delivers everything.
    let received = common::audit_receiver(port).await;
    let (code, _, err) = run(&["rotate", "--key", "aud", "--force"]);
    assert_eq!(code, 0, "{err}");
    let got = eventually(
        Duration::from_secs(20),
        "4 events at the receiver",
        || async {
            let got = received.lock().unwrap().clone();
            (got.len() >= 4).then_some(got)
        },
    )
    .await;
    let ids: Vec<&str> = got.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 4, "{ids:?}");
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        0,
        "spool drained"
    );

    // The sidecar: one event per signed item and per refused verify, digests only.
    let side_log = dir.path().join("sidecar.jsonl");
    let side = Sidecar::start(&bao, &[("AEGIS_AUDIT_FILE", side_log.to_str().unwrap())]).await;
    let secret_input = b"model response that must never be logged";
    let (s, body) = side
        .api(
            "POST",
            "transit/sign/aud",
            Some(json!({"batch_input": [{"input": b64(secret_input)}, {"input": b64(b"two")}]})),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, _) = side
        .verify(
            "aud",
            b"tampered",
            body["data"]["batch_results"][0]["signature"]
                .as_str()
                .unwrap(),
        )
        .await;
    assert_eq!(s, 200);
    side.stop().await; // flushes the audit queue
    let text = std::fs::read_to_string(&side_log).unwrap();
    assert!(!text.contains(&b64(secret_input)) && !text.contains("must never be logged"));
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["sign", "sign", "verify_refused"], "{text}");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret_input);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(events[0]["input_sha256"], hex);
    assert_eq!(events[0]["versions"], json!([3]));
    assert!(events[0]["actor"]
        .as_str()
        .unwrap()
        .starts_with("tcp:127.0.0.1"));
}

/// A batch mixing an item only Vault can answer (P-521 with a prehashed input over 64
/// bytes) with a signature by a version whose retention ended: only the first goes to
/// Vault; the other stays refused, although Vault itself would still accept it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_batch_item_does_not_launder_an_expired_version() {
    let bao = Bao::dev().await;
    bao.create_key("mix", "ecdsa-p521").await;
    bao.api_ok("POST", "transit/keys/mix/rotate", json!({}))
        .await;
    let opts = json!({"prehashed": true, "hash_algorithm": "sha2-512"});
    let sign_prehashed = |input: Vec<u8>| {
        let mut body = opts.clone();
        body["input"] = b64(&input).into();
        let bao = &bao;
        async move {
            bao.api_ok("POST", "transit/sign/mix", body).await["signature"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let (small, large) = (vec![7u8; 32], vec![9u8; 128]);
    let revoked_sig = sign_prehashed(small.clone()).await; // v2
    bao.api_ok("POST", "transit/keys/mix/rotate", json!({}))
        .await;
    let forwarded_sig = sign_prehashed(large.clone()).await; // v3, over 64 bytes: Vault only

    // Retire v2 with a window already over; v1 is unrecorded, so Vault's
    // min_decryption_version stays 1 and Vault itself still accepts v2. (A revocation,
    // `--now`, would raise it past v2: tests/revocation.rs.)
    aegis_ok(
        &bao,
        &[
            "retire",
            "--key",
            "mix",
            "--version",
            "2",
            "--at",
            "2026-01-01T00:00:00Z",
            "--reason",
            "re-signed",
        ],
    );
    assert_eq!(
        bao.api_ok("GET", "transit/keys/mix", json!({})).await["min_decryption_version"],
        1
    );

    let side = Sidecar::start(&bao, &[]).await;
    let mut body = opts.clone();
    body["batch_input"] = json!([
        {"input": b64(&small), "signature": revoked_sig},
        {"input": b64(&large), "signature": forwarded_sig},
    ]);
    let (s, answer) = side.api("POST", "transit/verify/mix", Some(body)).await;
    assert_eq!(s, 200, "{answer}");
    let results = &answer["data"]["batch_results"];
    assert_eq!(results[0]["valid"], false, "{answer}");
    assert!(
        results[0]["error"]
            .as_str()
            .unwrap()
            .contains("retention ended at 2026-01-01T00:00:00Z"),
        "{answer}"
    );
    assert_eq!(results[1]["valid"], true, "{answer}");
    side.stop().await;
}

/// The commands as a person types them, output piped (not a terminal) and no logging
/// settings: nothing on stderr but what went wrong, the outcome in plain words on stdout,
/// saying what to type next; `--log-format json` with `RUST_LOG=info` brings the log back.
#[tokio::test]
async fn commands_are_quiet_and_say_what_happened_and_what_to_type_next() {
    let bao = Bao::dev().await;
    bao.create_key("new", "ed25519").await;
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_aegis"))
            .args(args)
            .env_clear()
            .env("VAULT_ADDR", &bao.addr)
            .env("VAULT_TOKEN", &bao.token)
            .envs(env.iter().copied())
            .output()
            .expect("run aegis");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, out, err) = run(&["rotate", "--key", "new"], &[]);
    assert_eq!((code, err.as_str()), (Some(0), ""), "{out}");
    assert!(
        out.starts_with("new: the key's only version (1) was created ")
            && out.contains("not rotating a key this new (add --force to rotate now)"),
        "{out}"
    );
    let (code, out, err) = run(&["rotate", "--key", "new", "--force", "--dry-run"], &[]);
    assert_eq!((code, err.as_str()), (Some(0), ""), "{out}");
    assert!(out.starts_with("new: would rotate to version 2\n"), "{out}");
    assert!(
        out.ends_with(
            "new: dry run, nothing changed: run the same command without --dry-run to apply it\n"
        ),
        "{out}"
    );
    let (code, out, err) = run(&["keys", "status", "--key", "new", "--json"], &[]);
    assert_eq!((code, err.as_str()), (Some(0), ""), "{out}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status[0]["signing_version"], 1, "{status}");
    // A failure still says why, on stderr.
    let (code, _, err) = run(
        &[
            "retire",
            "--key",
            "new",
            "--version",
            "9",
            "--now",
            "--reason",
            "r",
        ],
        &[],
    );
    assert_eq!(code, Some(65), "{err}");
    assert!(
        err.contains("key \"new\" has no version 9 (latest is 1)"),
        "{err}"
    );
    // The log, when asked for.
    let (code, _, err) = run(
        &["keys", "status", "--key", "new", "--log-format", "json"],
        &[("RUST_LOG", "info")],
    );
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        !lines.is_empty() && lines.iter().all(|l| l["level"].is_string()),
        "{err}"
    );
}
