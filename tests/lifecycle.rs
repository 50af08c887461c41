//! Rotation and outages against a real OpenBao.

mod common;

use std::time::{Duration, Instant};

use common::{b64, eventually, Bao, Sidecar};
use serde_json::{json, Value};

async fn sign(side: &Sidecar, key: &str, input: &str) -> (u16, Value) {
    side.api(
        "POST",
        &format!("transit/sign/{key}"),
        Some(json!({ "input": input })),
    )
    .await
}

async fn verify(side: &Sidecar, key: &str, input: &str, sig: &str) -> (u16, Value) {
    side.api(
        "POST",
        &format!("transit/verify/{key}"),
        Some(json!({ "input": input, "signature": sig })),
    )
    .await
}

/// sign v1, rotate, sign v2, both verify; raise min_decryption_version to 2: v1 is refused
/// as Vault refuses it, v2 verifies, and v1's public key stays cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_and_min_decryption_version() {
    let bao = Bao::dev().await;
    for (key, kind) in [("rot-ed", "ed25519"), ("rot-p256", "ecdsa-p256")] {
        bao.create_key(key, kind).await;
    }
    let side = Sidecar::start(&bao, &[("AEGIS_REFRESH_INTERVAL", "200ms")]).await;
    let input = b64(b"artifact");
    for key in ["rot-ed", "rot-p256"] {
        let (_, s1) = sign(&side, key, &input).await;
        let sig1 = s1["data"]["signature"].as_str().unwrap().to_string();
        assert!(sig1.starts_with("vault:v1:"));
        bao.api_ok("POST", &format!("transit/keys/{key}/rotate"), json!({}))
            .await;
        // The sidecar learns of v2 from the sign answer itself (no refresh wait needed).
        let (_, s2) = sign(&side, key, &input).await;
        let sig2 = s2["data"]["signature"].as_str().unwrap().to_string();
        assert!(sig2.starts_with("vault:v2:"), "{sig2}");
        for sig in [&sig1, &sig2] {
            assert_eq!(
                verify(&side, key, &input, sig).await.1["data"]["valid"],
                true,
                "{key} {sig}"
            );
        }

        bao.api_ok(
            "POST",
            &format!("transit/keys/{key}/config"),
            json!({"min_decryption_version": 2}),
        )
        .await;
        let vault_says = bao
            .api(
                "POST",
                &format!("transit/verify/{key}"),
                Some(json!({"input": input, "signature": sig1})),
            )
            .await;
        assert_eq!(vault_says.0, 400);
        // Within the refresh interval the sidecar applies the same rule.
        let refused = eventually(Duration::from_secs(5), "sidecar to refuse v1", || async {
            let r = verify(&side, key, &input, &sig1).await;
            (r.0 == 400).then_some(r)
        })
        .await;
        assert_eq!(refused.1["errors"], vault_says.1["errors"]);
        assert_eq!(
            verify(&side, key, &input, &sig2).await.1["data"]["valid"],
            true
        );

        // Vault no longer returns v1's public key; the sidecar still holds it.
        let from_vault = bao.api("GET", &format!("transit/keys/{key}"), None).await.1;
        assert!(from_vault["data"]["keys"].get("1").is_none());
        let from_side = side
            .api("GET", &format!("transit/keys/{key}"), None)
            .await
            .1;
        assert!(
            from_side["data"]["keys"]["1"]["public_key"].is_string(),
            "{from_side}"
        );
        assert_eq!(
            from_side["data"]["keys"]["2"], from_vault["data"]["keys"]["2"],
            "a version Vault still returns is listed exactly as Vault lists it"
        );
        assert_eq!(from_side["data"]["min_decryption_version"], 2);
    }
    side.stop().await;
}

/// OpenBao paused, then killed: cached versions verify, sign fails with 503 within the
/// total timeout; after OpenBao is back, signing works without a sidecar restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_verify_keeps_working_and_sign_recovers() {
    let mut bao = Bao::persistent().await;
    bao.create_key("outage", "ecdsa-p256").await;
    // A paused Vault costs one attempt (2 s: sign is not retried once sent); a killed one
    // is retried (the connection never opened) until the total bound of 3 s.
    let timeout = Duration::from_secs(3);
    let side = Sidecar::start(
        &bao,
        &[
            ("AEGIS_VAULT_TIMEOUT", "2s"),
            ("AEGIS_VAULT_TOTAL_TIMEOUT", "3s"),
            ("AEGIS_KEYS", "outage"),
        ],
    )
    .await;
    let input = b64(b"before the outage");
    let (s, signed) = sign(&side, "outage", &input).await;
    assert_eq!(s, 200);
    let sig = signed["data"]["signature"].as_str().unwrap().to_string();

    for phase in ["paused", "killed"] {
        if phase == "paused" {
            bao.pause();
        } else {
            bao.resume();
            bao.kill();
        }
        let t = Instant::now();
        let (s, v) = verify(&side, "outage", &input, &sig).await;
        assert_eq!(
            (s, &v["data"]["valid"]),
            (200, &json!(true)),
            "{phase}: {v}"
        );
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{phase}: cached verify took {:?}",
            t.elapsed()
        );

        let t = Instant::now();
        let (s, body) = sign(&side, "outage", &input).await;
        let took = t.elapsed();
        assert_eq!(s, 503, "{phase}: {body}");
        assert!(
            body["errors"][0]
                .as_str()
                .unwrap()
                .contains("Vault is unavailable"),
            "{body}"
        );
        assert!(
            took < timeout + Duration::from_secs(2),
            "{phase}: sign failed after {took:?}, over the {timeout:?} bound"
        );
    }

    bao.restart().await;
    let signed_again = eventually(Duration::from_secs(30), "signing to recover", || async {
        let r = sign(&side, "outage", &input).await;
        (r.0 == 200).then_some(r.1)
    })
    .await;
    let sig2 = signed_again["data"]["signature"].as_str().unwrap();
    assert_eq!(
        verify(&side, "outage", &input, sig2).await.1["data"]["valid"],
        true
    );
    side.stop().await;
}

/// Readiness turns true only once Vault accepted the credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_vault_accepts_the_credential() {
    let mut bao = Bao::dev().await;
    bao.token = "not-a-valid-token".into();
    let side = Sidecar::start_unready(&bao, &[]).await;
    let (s, body) = side.readyz().await;
    assert_eq!(s, 503, "{body}");
    let reason = eventually(
        Duration::from_secs(5),
        "a reason naming the refused credential",
        || async {
            let (_, b) = side.readyz().await;
            let msg = b["errors"][0].as_str().unwrap_or_default().to_string();
            (msg.contains("not authenticated to Vault") && msg.contains("403")).then_some(msg)
        },
    )
    .await;
    assert!(
        !reason.contains("not-a-valid-token"),
        "the token leaked into readiness: {reason}"
    );
    side.stop().await;
}
