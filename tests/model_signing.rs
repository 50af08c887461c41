//! `aegis model sign|verify` across key rotation, with the real binary, a real OpenBao and
//! the sidecar: a model signed with version 1 still verifies through the sidecar after
//! rotation and retirement with a grace period (Vault itself refuses it by then), and is
//! refused once version 1 is revoked, while models signed with version 2 keep verifying.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{eventually, Bao, Sidecar};

const KEY: &str = "oms-life";
const REFUSED: i32 = 65;

/// `aegis <args>` against `addr` (the sidecar: no token; Vault: `token`), off the runtime.
async fn aegis(addr: &str, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let env: Vec<(&str, &str)> = token.map(|t| vec![("VAULT_TOKEN", t)]).unwrap_or_default();
    aegis_env(addr, &env, args).await
}

/// [`aegis`] with any environment.
async fn aegis_env(addr: &str, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let addr = addr.to_string();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::aegis_cli(&addr, &env, &args)
    })
    .await
    .unwrap()
}

fn write_model(dir: &Path) {
    std::fs::create_dir_all(dir.join("weights")).unwrap();
    std::fs::write(dir.join("weights/shard-0.bin"), vec![42u8; 1 << 20]).unwrap();
    std::fs::write(dir.join("config.json"), br#"{"hidden": 8}"#).unwrap();
}

/// `aegis model <command> --key KEY --signature <sig> <model>` through `addr`: (exit
/// code, stdout + stderr).
async fn model_cmd(
    addr: &str,
    env: &[(&str, &str)],
    command: &str,
    model: &Path,
    sig: &Path,
) -> (i32, String) {
    let (sig, model) = (sig.to_str().unwrap(), model.to_str().unwrap());
    let args = ["model", command, "--key", KEY, "--signature", sig, model];
    let (code, out, err) = aegis_env(addr, env, &args).await;
    assert!(!err.contains("panicked"), "{err}");
    (code, out + &err)
}

async fn sign(side: &Sidecar, dir: &Path, sig: &Path) {
    let (code, out) = model_cmd(&side.addr, &[], "sign", dir, sig).await;
    assert_eq!(code, 0, "sign: {out}");
}

async fn verify(addr: &str, token: Option<&str>, dir: &Path, sig: &Path) -> (i32, String) {
    let env: Vec<(&str, &str)> = token.map(|t| vec![("VAULT_TOKEN", t)]).unwrap_or_default();
    model_cmd(addr, &env, "verify", dir, sig).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_bundles_verify_while_retired_but_valid_and_not_after_revocation() {
    let bao = Bao::dev().await;
    bao.create_key(KEY, "ecdsa-p256").await;
    let side = Sidecar::start(&bao, &[("AEGIS_REFRESH_INTERVAL", "300ms")]).await;
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    write_model(&model_dir);
    let old_sig = dir.path().join("v1.sig");
    sign(&side, &model_dir, &old_sig).await;
    let (code, out) = verify(&side.addr, None, &model_dir, &old_sig).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("version 1"), "{out}");

    // Rotate with a grace period: v1 is recorded, min_decryption_version goes to 2.
    let (code, out, err) = aegis(
        &bao.addr,
        Some(&bao.token),
        &["rotate", "--key", KEY, "--force", "--grace", "1h"],
    )
    .await;
    assert_eq!(code, 0, "rotate: {out}{err}");
    eventually(
        Duration::from_secs(10),
        "the sidecar to see min_decryption_version 2",
        || async {
            let (_, k) = side.api("GET", &format!("transit/keys/{KEY}"), None).await;
            (k["data"]["min_decryption_version"] == 2).then_some(())
        },
    )
    .await;

    // Vault itself no longer accepts v1; the sidecar does: retired but valid.
    let (code, out) = verify(&bao.addr, Some(&bao.token), &model_dir, &old_sig).await;
    assert_eq!(code, REFUSED, "{out}");
    let (code, out) = verify(&side.addr, None, &model_dir, &old_sig).await;
    assert_eq!(code, 0, "a retired-but-valid version must verify: {out}");

    // New signatures use v2.
    let new_sig = dir.path().join("v2.sig");
    sign(&side, &model_dir, &new_sig).await;
    let (code, out) = verify(&side.addr, None, &model_dir, &new_sig).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("version 2"), "{out}");

    // Revoke v1 (compromise): refused once the sidecar refreshes; v2 unaffected.
    let revoke = format!("retire --key {KEY} --version 1 --now --reason compromise");
    let revoke: Vec<&str> = revoke.split(' ').collect();
    let (code, out, err) = aegis(&bao.addr, Some(&bao.token), &revoke).await;
    assert_eq!(code, 0, "retire: {out}{err}");
    let refusal = eventually(
        Duration::from_secs(10),
        "the sidecar to refuse the revoked version",
        || async {
            let (code, out) = verify(&side.addr, None, &model_dir, &old_sig).await;
            (code != 0).then_some((code, out))
        },
    )
    .await;
    assert_eq!(refusal.0, REFUSED, "{}", refusal.1);
    assert!(refusal.1.contains("revoked"), "{}", refusal.1);
    let (code, out) = verify(&side.addr, None, &model_dir, &new_sig).await;
    assert_eq!(code, 0, "{out}");
    side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_vault_addr_is_exit_69() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    write_model(&model_dir);
    // Nobody listens there: connection refused at once, retried within the total timeout.
    let addr = format!("http://127.0.0.1:{}", common::free_port());
    let fast = [
        ("AEGIS_VAULT_TIMEOUT", "1s"),
        ("AEGIS_VAULT_TOTAL_TIMEOUT", "1s"),
    ];
    let unsigned = dir.path().join("unsigned.sig");
    let (code, out) = model_cmd(&addr, &fast, "sign", &model_dir, &unsigned).await;
    assert_eq!(code, 69, "sign: {out}");
    assert!(!unsigned.exists(), "nothing is written when signing fails");

    // A well-formed bundle: verification gets as far as asking Transit for the key.
    let bundle = aegis::model::bundle::Bundle {
        hint: Some("ab".repeat(32)),
        payload: b"{}".to_vec(),
        signature: vec![0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01],
    };
    let sig = dir.path().join("model.sig");
    std::fs::write(&sig, bundle.to_json()).unwrap();
    let (code, out) = model_cmd(&addr, &fast, "verify", &model_dir, &sig).await;
    assert_eq!(code, 69, "verify: {out}");
    assert!(out.contains("Vault unavailable"), "{out}");
}
