//! Memory bounded by configuration: the largest body is served, one byte more is a 413;
//! bodies over the budget of bytes in flight are refused with a 503 and `Retry-After`
//! (counted) while the sidecar keeps serving; Transit sign calls stay within the byte
//! bound of a batch (`AEGIS_SIGN_MAX_BATCH_BYTES`), coalesced or split.

mod common;

use std::time::Duration;

use common::{b64, eventually, Bao, Sidecar};
use futures::StreamExt as _;
use serde_json::{json, Value};

const MAX_BODY: usize = 1024 * 1024;
const BUDGET: usize = MAX_BODY + MAX_BODY / 2;
const BATCH_BYTES: usize = 256 * 1024;

async fn start(bao: &Bao, extra: &[(&str, &str)]) -> Sidecar {
    common::metrics_on();
    let max_body = MAX_BODY.to_string();
    let budget = BUDGET.to_string();
    let batch = BATCH_BYTES.to_string();
    let mut env = vec![
        ("AEGIS_KEYS", "k"),
        ("AEGIS_MAX_BODY_BYTES", max_body.as_str()),
        ("AEGIS_MAX_BODY_BYTES_IN_FLIGHT", budget.as_str()),
        ("AEGIS_SIGN_MAX_BATCH_BYTES", batch.as_str()),
    ];
    env.extend_from_slice(extra);
    Sidecar::start(bao, &env).await
}

/// A sign body of exactly `len` bytes, `{"input":"<base64>"}`, and the message signed.
fn sign_body(len: usize, fill: u8) -> (Vec<u8>, Vec<u8>) {
    let encoded = len - r#"{"input":""}"#.len();
    assert_eq!(encoded % 4, 0, "a length base64 fills without padding");
    let message = vec![fill; encoded / 4 * 3];
    let body = format!(r#"{{"input":"{}"}}"#, b64(&message)).into_bytes();
    assert_eq!(body.len(), len);
    (body, message)
}

async fn post(side: &Sidecar, body: Vec<u8>) -> reqwest::Response {
    side.client
        .post(format!("{}/v1/transit/sign/k", side.addr))
        .header("X-Vault-Request", "true")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// The sum of a metric's samples (all label sets) in `/metrics`.
async fn metric(side: &Sidecar, name: &str) -> f64 {
    side.metric(name, "").await
}

/// Transit sign calls so far and the items in them (`aegis_sign_batch_size`).
async fn sign_calls(side: &Sidecar) -> (f64, f64) {
    (
        metric(side, "aegis_sign_batch_size_count").await,
        metric(side, "aegis_sign_batch_size_sum").await,
    )
}

async fn vault_verifies(bao: &Bao, message: &[u8], signature: &str) -> bool {
    let data = bao
        .api_ok(
            "POST",
            "transit/verify/k",
            json!({"input": b64(message), "signature": signature}),
        )
        .await;
    data["valid"] == true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_body_is_signed_and_one_byte_more_is_413() {
    let bao = Bao::dev().await;
    bao.create_key("k", "ed25519").await;
    let side = start(&bao, &[]).await;
    let (body, message) = sign_body(MAX_BODY, b'm');
    let resp = post(&side, body).await;
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.unwrap();
    let signature = v["data"]["signature"].as_str().unwrap();
    assert!(vault_verifies(&bao, &message, signature).await);
    // One call, alone: it is larger than a batch may be.
    assert_eq!(sign_calls(&side).await, (1.0, 1.0));

    let (mut over, _) = sign_body(MAX_BODY, b'm');
    over.push(b' ');
    let resp = post(&side, over).await;
    assert_eq!(resp.status().as_u16(), 413);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["errors"][0],
        format!("request body too large: the limit is {MAX_BODY} bytes")
    );
    assert_eq!(side.state.body_budget.available(), BUDGET);
    side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_budget_get_503_with_retry_after_and_the_sidecar_keeps_serving() {
    let bao = Bao::dev().await;
    bao.create_key("k", "ed25519").await;
    let side = start(&bao, &[]).await;
    assert_eq!(metric(&side, "aegis_body_budget_refusals_total").await, 0.0);

    // A caller sends 768 KiB of a body without a length, then stalls: those bytes are held.
    let held = 768 * 1024;
    let first: Result<Vec<u8>, std::io::Error> = Ok(vec![b' '; held]);
    let stalled = futures::stream::iter([first]).chain(futures::stream::pending());
    let url = format!("{}/v1/transit/sign/k", side.addr);
    let client = side.client.clone();
    let staller = tokio::spawn(async move {
        client
            .post(url)
            .header("X-Vault-Request", "true")
            .body(reqwest::Body::wrap_stream(stalled))
            .send()
            .await
    });
    eventually(
        Duration::from_secs(10),
        "the stalled body's bytes held",
        || async { (side.state.body_budget.available() == BUDGET - held).then_some(()) },
    )
    .await;

    // The largest body does not fit beside it: refused before it is read.
    let (body, message) = sign_body(MAX_BODY, b'a');
    let resp = post(&side, body.clone()).await;
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["errors"][0],
        format!("too many request bytes in flight (the limit is {BUDGET} bytes): retry later")
    );
    assert_eq!(metric(&side, "aegis_body_budget_refusals_total").await, 1.0);

    // A small sign still fits and is served.
    let (s, v) = side
        .api(
            "POST",
            "transit/sign/k",
            Some(json!({"input": b64(b"small")})),
        )
        .await;
    assert_eq!(s, 200, "{v}");

    // The stalled caller goes away: its bytes are back, and the large body is served.
    staller.abort();
    let _ = staller.await;
    eventually(
        Duration::from_secs(10),
        "the budget back in full",
        || async { (side.state.body_budget.available() == BUDGET).then_some(()) },
    )
    .await;
    let resp = post(&side, body).await;
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.unwrap();
    assert!(vault_verifies(&bao, &message, v["data"]["signature"].as_str().unwrap()).await);
    assert_eq!(metric(&side, "aegis_body_budget_refusals_total").await, 1.0);
    side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_calls_stay_within_the_batch_byte_bound() {
    let bao = Bao::dev().await;
    bao.create_key("k", "ed25519").await;
    // One call in flight: everything else queues and would be coalesced if it fitted.
    let side = start(&bao, &[("AEGIS_SIGN_MAX_IN_FLIGHT", "1")]).await;

    // 6 concurrent signs of 200 KiB (within the budget): no two fit in 256 KiB, so
    // each call carries one.
    let n: u8 = 6;
    let bodies: Vec<(Vec<u8>, Vec<u8>)> = (0..n).map(|i| sign_body(200 * 1024, i)).collect();
    let answers =
        futures::future::join_all(bodies.iter().map(|(body, _)| post(&side, body.clone()))).await;
    for (resp, (_, message)) in answers.into_iter().zip(&bodies) {
        assert_eq!(resp.status().as_u16(), 200);
        let v: Value = resp.json().await.unwrap();
        assert!(vault_verifies(&bao, message, v["data"]["signature"].as_str().unwrap()).await);
    }
    assert_eq!(sign_calls(&side).await, (f64::from(n), f64::from(n)));

    // A caller's batch of 5 items of 100 KiB (500 KiB): split by bytes, 2 + 2 + 1 items.
    let messages: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 75 * 1024]).collect();
    let batch: Vec<Value> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| json!({"input": b64(m), "reference": i.to_string()}))
        .collect();
    let (s, v) = side
        .api(
            "POST",
            "transit/sign/k",
            Some(json!({ "batch_input": batch })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let results = v["data"]["batch_results"].as_array().unwrap();
    for (i, (r, m)) in results.iter().zip(&messages).enumerate() {
        assert_eq!(r["reference"], i.to_string());
        assert!(vault_verifies(&bao, m, r["signature"].as_str().unwrap()).await);
    }
    assert_eq!(
        sign_calls(&side).await,
        (f64::from(n) + 3.0, f64::from(n) + 5.0)
    );
    side.stop().await;
}
