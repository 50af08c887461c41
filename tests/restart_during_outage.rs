//! Restart during a Vault outage: the keyset snapshot in AEGIS_CACHE_DIR lets a fresh
//! sidecar verify before Vault answers, it reports not ready for sign, and reconciles
//! when Vault returns. A damaged snapshot is refused whole. Real OpenBao (persistent).

mod common;

use std::path::Path;
use std::time::Duration;

use aegis::keys::snapshot;
use common::{b64, eventually, Bao, Sidecar};
use serde_json::json;

/// Polls until the snapshot in `dir` lists `key` with `latest` as its latest version.
async fn snapshot_has(dir: &Path, key: &str, latest: u64) {
    eventually(
        Duration::from_secs(10),
        "the snapshot to hold the key",
        || async {
            let p = snapshot::read(dir).ok().flatten()?;
            (p.keys.get(key)?["latest_version"] == latest).then_some(())
        },
    )
    .await;
}

async fn verify(side: &Sidecar, key: &str, input: &str, sig: &str) -> (u16, serde_json::Value) {
    side.api(
        "POST",
        &format!("transit/verify/{key}"),
        Some(json!({"input": input, "signature": sig})),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_started_while_vault_is_down_verifies_from_its_snapshot() {
    let mut bao = Bao::persistent().await;
    bao.create_key("snap", "ecdsa-p256").await;
    let input = b64(b"signed before the outage");
    let sig_v1 = bao
        .api_ok("POST", "transit/sign/snap", json!({"input": input}))
        .await["signature"]
        .as_str()
        .unwrap()
        .to_string();
    bao.api_ok("POST", "transit/keys/snap/rotate", json!({}))
        .await;
    let sig_v2 = bao
        .api_ok("POST", "transit/sign/snap", json!({"input": input}))
        .await["signature"]
        .as_str()
        .unwrap()
        .to_string();

    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("aegis");
    let dir_s = dir.to_str().unwrap().to_string();
    let settings = [
        ("AEGIS_CACHE_DIR", dir_s.as_str()),
        ("AEGIS_KEYS", "snap"),
        ("AEGIS_VAULT_TIMEOUT", "1s"),
        ("AEGIS_VAULT_TOTAL_TIMEOUT", "2s"),
    ];
    let first = Sidecar::start(&bao, &settings).await;
    snapshot_has(&dir, "snap", 2).await;
    first.stop().await;
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(snapshot::path(&dir))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "snapshot mode");
        let text = std::fs::read_to_string(snapshot::path(&dir)).unwrap();
        assert!(!text.contains(&bao.token), "the snapshot holds the token");
    }

    // Rotated while no sidecar runs, then Vault goes away: the snapshot knows v1 and v2.
    bao.api_ok("POST", "transit/keys/snap/rotate", json!({}))
        .await;
    bao.kill();

    let second = Sidecar::start_unready(&bao, &settings).await;
    for sig in [&sig_v1, &sig_v2] {
        let (s, v) = verify(&second, "snap", &input, sig).await;
        assert_eq!((s, &v["data"]["valid"]), (200, &json!(true)), "{v}");
    }
    let other = b64(b"not what was signed");
    let (s, v) = verify(&second, "snap", &other, &sig_v2).await;
    assert_eq!((s, &v["data"]["valid"]), (200, &json!(false)), "{v}");
    let (s, body) = second.readyz().await;
    assert_eq!(s, 503, "not ready for sign while Vault is down: {body}");
    let (s, body) = second
        .api("POST", "transit/sign/snap", Some(json!({"input": input})))
        .await;
    assert_eq!(s, 503, "{body}");

    // Vault returns: the sidecar becomes ready and learns v3 without being asked for it.
    bao.restart().await;
    second.wait_ready().await;
    let (s, key) = second.api("GET", "transit/keys/snap", None).await;
    assert_eq!(
        (s, &key["data"]["latest_version"]),
        (200, &json!(3)),
        "{key}"
    );
    let (s, signed) = second
        .api("POST", "transit/sign/snap", Some(json!({"input": input})))
        .await;
    assert_eq!(s, 200, "{signed}");
    let sig_v3 = signed["data"]["signature"].as_str().unwrap();
    assert!(sig_v3.starts_with("vault:v3:"), "{sig_v3}");
    snapshot_has(&dir, "snap", 3).await;
    second.stop().await;

    // A damaged snapshot is refused whole: with Vault down, nothing verifies from it.
    let path = snapshot::path(&dir);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    bao.kill();
    let third = Sidecar::start_unready(&bao, &settings).await;
    let (s, v) = verify(&third, "snap", &input, &sig_v1).await;
    assert_eq!(s, 503, "a corrupt snapshot must not be used: {v}");
    third.stop().await;
}
