//! Cross-verification against a real OpenBao: for every key type x hash x
//! marshaling/padding x prehashed, Vault's signature is verified by the sidecar (locally),
//! the sidecar's signature by Vault, and a flipped bit or another input is refused on
//! both sides; the sidecar's answer equals Vault's own answer in every case.
//!
//! Every one of those answers is the sidecar's own: OpenBao's file audit log, where the
//! sidecar's requests are told apart by its token's display name, shows no Vault request
//! at all while it verifies a case of the matrix, and exactly one `transit/verify` per
//! request that only Vault can answer (an HMAC).

mod common;

use aegis::crypto::HashAlgorithm;
use base64::Engine as _;
use common::audit_log::{sidecar_token, VaultCalls};
use common::{b64, Bao, Sidecar};
use serde_json::{json, Map, Value};

const HASHES: [&str; 9] = [
    "sha1", "sha2-224", "sha2-256", "sha2-384", "sha2-512", "sha3-224", "sha3-256", "sha3-384",
    "sha3-512",
];

/// The part of an answer that must match: status plus `data` (or `errors`).
fn essence(resp: &(u16, Value)) -> (u16, Value) {
    let (s, body) = resp;
    let v = if *s == 200 {
        body["data"].clone()
    } else {
        body["errors"].clone()
    };
    (*s, v)
}

fn flip_bit(sig: &str, jws: bool) -> String {
    let (prefix, enc) = sig.rsplit_once(':').unwrap();
    let engine = if jws {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
    } else {
        base64::engine::general_purpose::STANDARD
    };
    let mut raw = engine.decode(enc).unwrap();
    let mid = raw.len() / 2;
    raw[mid] ^= 0x10;
    format!("{prefix}:{}", engine.encode(raw))
}

/// Runs every case for one key and returns how many verify comparisons were made. Each
/// of the sidecar's answers must have been made without a single Vault request.
async fn matrix(
    bao: &Bao,
    side: &Sidecar,
    calls: &mut VaultCalls,
    key: &str,
    cases: &[Map<String, Value>],
) -> usize {
    let msg = b"model-weights-digest-0001";
    let mut compared = 0;
    for opts in cases {
        let prehashed = opts
            .get("prehashed")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let hash = opts
            .get("hash_algorithm")
            .and_then(Value::as_str)
            .unwrap_or("sha2-256");
        let jws = opts.get("marshaling_algorithm").and_then(Value::as_str) == Some("jws");
        let input_for = |m: &[u8]| -> String {
            if prehashed && hash != "none" {
                b64(HashAlgorithm::from_name(hash)
                    .unwrap()
                    .digest(m)
                    .unwrap()
                    .as_bytes())
            } else {
                b64(m)
            }
        };
        let input = input_for(msg);
        let mut sign_body = opts.clone();
        sign_body.insert("input".into(), input.clone().into());
        let sign_body = Value::Object(sign_body);

        let (s, vault_signed) = bao
            .api(
                "POST",
                &format!("transit/sign/{key}"),
                Some(sign_body.clone()),
            )
            .await;
        assert_eq!(s, 200, "Vault sign {key} {opts:?}: {vault_signed}");
        let (s, side_signed) = side
            .api("POST", &format!("transit/sign/{key}"), Some(sign_body))
            .await;
        assert_eq!(s, 200, "sidecar sign {key} {opts:?}: {side_signed}");
        for signed in [&vault_signed, &side_signed] {
            let sig = signed["data"]["signature"].as_str().unwrap().to_string();
            let variants = [
                (input.clone(), sig.clone(), Some(true)),
                (input.clone(), flip_bit(&sig, jws), None),
                (input_for(b"another input entirely"), sig.clone(), None),
            ];
            for (inp, sig, expect_valid) in variants {
                let mut body = opts.clone();
                body.insert("input".into(), inp.into());
                body.insert("signature".into(), sig.into());
                let body = Value::Object(body);
                let from_vault = bao
                    .api("POST", &format!("transit/verify/{key}"), Some(body.clone()))
                    .await;
                calls.since_last();
                let from_side = side
                    .api("POST", &format!("transit/verify/{key}"), Some(body.clone()))
                    .await;
                assert_eq!(
                    calls.since_last(),
                    Vec::<String>::new(),
                    "the sidecar called Vault for a case it verifies locally: {key} {body}"
                );
                assert_eq!(essence(&from_side), essence(&from_vault), "{key} {body}");
                match expect_valid {
                    Some(v) => assert_eq!(
                        essence(&from_side),
                        (200, json!({"valid": v})),
                        "{key} {body}"
                    ),
                    None => assert_ne!(
                        essence(&from_side),
                        (200, json!({"valid": true})),
                        "tampered signature accepted: {key} {body}"
                    ),
                }
                compared += 1;
            }
        }
    }
    compared
}

fn case(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

async fn run_for(key_type: &str, cases: Vec<Map<String, Value>>) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("bao-audit.log");
    let bao = Bao::dev_audited(&log).await;
    let key = format!("k-{key_type}");
    bao.create_key(&key, key_type).await;
    let token = sidecar_token(&bao).await;
    // No periodic keyset refresh nor watch listing while the matrix runs: every Vault request the sidecar
    // makes during a verify is then one that verify made.
    let side = Sidecar::start(
        &bao,
        &[
            ("AEGIS_KEYS", &key),
            ("VAULT_TOKEN", &token),
            ("AEGIS_REFRESH_INTERVAL", "1h"),
            ("AEGIS_KEYSET_WATCH_INTERVAL", "off"),
            ("AEGIS_MAX_KEYSET_AGE", "2h"),
        ],
    )
    .await;
    let mut calls = VaultCalls::new(&log);
    let n = matrix(&bao, &side, &mut calls, &key, &cases).await;
    assert_eq!(n, cases.len() * 6);
    forwarded_hmac_is_one_vault_call(&bao, &side, &mut calls, &key).await;
    // The sidecar's answers are its own: with OpenBao frozen, it still verifies.
    let input = b64(b"local");
    let sig = bao
        .api_ok(
            "POST",
            &format!("transit/sign/{key}"),
            json!({"input": input}),
        )
        .await["signature"]
        .clone();
    bao.pause();
    let verdict = side
        .api(
            "POST",
            &format!("transit/verify/{key}"),
            Some(json!({"input": input, "signature": sig})),
        )
        .await;
    bao.resume();
    assert_eq!(essence(&verdict), (200, json!({"valid": true})));
    side.stop().await;
}

/// What only Vault can answer, an HMAC of the same key, is forwarded: one `transit/verify`
/// per request, and nothing else (the count above is not blind).
async fn forwarded_hmac_is_one_vault_call(
    bao: &Bao,
    side: &Sidecar,
    calls: &mut VaultCalls,
    key: &str,
) {
    let input = b64(b"hmac input");
    let hmac = bao
        .api_ok(
            "POST",
            &format!("transit/hmac/{key}"),
            json!({"input": input}),
        )
        .await["hmac"]
        .clone();
    for (hmac, valid) in [
        (hmac.clone(), true),
        (json!(flip_bit(hmac.as_str().unwrap(), false)), false),
    ] {
        let body = json!({"input": input, "hmac": hmac});
        calls.since_last();
        let from_side = side
            .api("POST", &format!("transit/verify/{key}"), Some(body.clone()))
            .await;
        assert_eq!(
            calls.since_last(),
            vec![format!("transit/verify/{key}")],
            "{body}"
        );
        assert_eq!(
            essence(&from_side),
            (200, json!({"valid": valid})),
            "{body}"
        );
    }
}

fn ecdsa_cases() -> Vec<Map<String, Value>> {
    let mut out = Vec::new();
    for hash in HASHES {
        for marshaling in ["asn1", "jws"] {
            for prehashed in [false, true] {
                out.push(case(&[
                    ("hash_algorithm", hash.into()),
                    ("marshaling_algorithm", marshaling.into()),
                    ("prehashed", prehashed.into()),
                ]));
            }
        }
    }
    out
}

fn rsa_cases() -> Vec<Map<String, Value>> {
    let mut out = Vec::new();
    for hash in HASHES {
        for padding in ["pss", "pkcs1v15"] {
            for prehashed in [false, true] {
                out.push(case(&[
                    ("hash_algorithm", hash.into()),
                    ("signature_algorithm", padding.into()),
                    ("prehashed", prehashed.into()),
                ]));
            }
        }
    }
    // PSS salt lengths other than Vault's default (the largest): hash length and a number.
    for salt in ["hash", "20", "auto"] {
        out.push(case(&[
            ("hash_algorithm", "sha2-256".into()),
            ("signature_algorithm", "pss".into()),
            ("salt_length", salt.into()),
        ]));
    }
    // Raw PKCS#1 v1.5 over a caller's own bytes.
    out.push(case(&[
        ("hash_algorithm", "none".into()),
        ("signature_algorithm", "pkcs1v15".into()),
        ("prehashed", true.into()),
    ]));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_matches_vault() {
    // Ed25519 ignores hash and prehashed: check that it ignores them the same way.
    let cases = vec![
        case(&[]),
        case(&[("hash_algorithm", "sha2-512".into())]),
        case(&[("prehashed", true.into())]),
    ];
    run_for("ed25519", cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecdsa_p256_matches_vault() {
    run_for("ecdsa-p256", ecdsa_cases()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecdsa_p384_matches_vault() {
    run_for("ecdsa-p384", ecdsa_cases()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecdsa_p521_matches_vault() {
    run_for("ecdsa-p521", ecdsa_cases()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_2048_matches_vault() {
    run_for("rsa-2048", rsa_cases()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_3072_matches_vault() {
    run_for("rsa-3072", rsa_cases()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_4096_matches_vault() {
    run_for("rsa-4096", rsa_cases()).await;
}

/// A batch mixing good, tampered and malformed items gets the same per-item answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_verify_matches_vault_item_by_item() {
    let bao = Bao::dev().await;
    bao.create_key("batch", "ecdsa-p256").await;
    let side = Sidecar::start(&bao, &[]).await;
    let inputs: Vec<Value> = (0..5)
        .map(
            |i| json!({"input": b64(format!("item {i}").as_bytes()), "reference": format!("r{i}")}),
        )
        .collect();
    let signed = bao
        .api_ok("POST", "transit/sign/batch", json!({"batch_input": inputs}))
        .await;
    let sigs: Vec<String> = signed["batch_results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["signature"].as_str().unwrap().to_string())
        .collect();
    let items = json!([
        {"input": b64(b"item 0"), "signature": sigs[0], "reference": "good"},
        {"input": b64(b"item 1"), "signature": flip_bit(&sigs[1], false), "reference": "tampered"},
        {"input": b64(b"item 2"), "signature": sigs[3], "reference": "wrong input"},
        {"input": "!!", "signature": sigs[2]},
        {"input": b64(b"item 4"), "signature": "vault:v9:AAAA"},
        {"input": b64(b"item 4"), "signature": "nope"},
        {"input": b64(b"item 4"), "signature": "vault:v1:AAAA"},
        {"signature": sigs[4]},
    ]);
    let body = json!({ "batch_input": items });
    let from_vault = bao
        .api("POST", "transit/verify/batch", Some(body.clone()))
        .await;
    let from_side = side.api("POST", "transit/verify/batch", Some(body)).await;
    assert_eq!(essence(&from_side), essence(&from_vault));
    let results = from_side.1["data"]["batch_results"].as_array().unwrap();
    assert_eq!(results.len(), 8);
    assert_eq!(results[0]["valid"], true);
    assert!(results[1..].iter().all(|r| r["valid"] == false));
    side.stop().await;
}

/// HTTP/1.1 and h2c (HTTP/2 with prior knowledge) are served on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_h2c_on_one_port() {
    let bao = Bao::dev().await;
    bao.create_key("proto", "ed25519").await;
    let side = Sidecar::start(&bao, &[]).await;
    let input = b64(b"over h2c");
    let http1 = common::client_builder().http1_only().build().unwrap();
    let h2c = common::client_builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for (client, expected) in [
        (http1, reqwest::Version::HTTP_11),
        (h2c, reqwest::Version::HTTP_2),
    ] {
        let resp = client
            .post(format!("{}/v1/transit/sign/proto", side.addr))
            .json(&json!({ "input": input }))
            .send()
            .await
            .unwrap();
        let version = resp.version();
        assert_eq!(version, expected);
        let signed: Value = resp.json().await.unwrap();
        let sig = signed["data"]["signature"]
            .as_str()
            .unwrap_or_else(|| panic!("{version:?}: {signed}"));
        let resp = client
            .post(format!("{}/v1/transit/verify/proto", side.addr))
            .json(&json!({ "input": input, "signature": sig }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), version);
        let verdict: Value = resp.json().await.unwrap();
        assert_eq!(verdict["data"]["valid"], true, "{version:?}");
    }
    side.stop().await;
}
