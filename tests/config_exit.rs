//! Invalid configuration: the real binary reports every problem at once, exits 64, and
//! echoes no secret. TLS files that cannot be used are configuration errors too.

use std::process::Command;

fn serve(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_aegis"))
        .arg("serve")
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run aegis");
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    (out.status.code(), text)
}

#[test]
fn every_problem_at_once_exit_64_no_secret() {
    let (code, text) = serve(&[
        ("VAULT_ADDR", "vault:8200"),
        ("AEGIS_AUTH_METHOD", "approle"),
        ("VAULT_SECRET_ID", "sid-do-not-print"),
        ("AEGIS_SECRET_ID_FILE", "/run/sid"),
        ("AEGIS_LISTEN_ADDR", "nowhere"),
        ("AEGIS_VAULT_TIMEOUT", "soon"),
        ("VAULT_CLIENT_CERT", "/c.pem"),
    ]);
    assert_eq!(code, Some(64), "{text}");
    for needle in [
        "VAULT_ADDR",
        "VAULT_ROLE_ID",
        "VAULT_SECRET_ID and AEGIS_SECRET_ID_FILE",
        "AEGIS_LISTEN_ADDR",
        "AEGIS_VAULT_TIMEOUT",
        "VAULT_CLIENT_KEY",
    ] {
        assert!(text.contains(needle), "{needle} missing in:\n{text}");
    }
    assert!(!text.contains("sid-do-not-print"), "secret echoed:\n{text}");
}

#[test]
fn unusable_tls_files_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "hvs.token-looking-content\n").unwrap();
    let (code, text) = serve(&[
        ("VAULT_ADDR", "https://127.0.0.1:1"),
        ("VAULT_TOKEN", "hvs.do-not-print"),
        ("VAULT_CACERT", not_pem.to_str().unwrap()),
        ("AEGIS_LISTEN_ADDR", "127.0.0.1:0"),
    ]);
    assert_eq!(code, Some(64), "{text}");
    assert!(text.contains("VAULT_CACERT"), "{text}");
    assert!(!text.contains("do-not-print"), "{text}");
    assert!(!text.contains("token-looking-content"), "{text}");
}

#[test]
fn serving_needs_the_keys_named() {
    // A fresh install serves no key by accident: AEGIS_KEYS (or `*`) must be set.
    let (code, text) = serve(&[
        ("VAULT_ADDR", "http://127.0.0.1:1"),
        ("VAULT_TOKEN", "hvs.do-not-print"),
        ("AEGIS_LISTEN_ADDR", "127.0.0.1:0"),
    ]);
    assert_eq!(code, Some(64), "{text}");
    assert!(text.contains("AEGIS_KEYS is not set"), "{text}");
    assert!(!text.contains("do-not-print"), "{text}");
}
