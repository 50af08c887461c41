//! `aegis model sign`, `aegis model verify` and `aegis keys export` as the CLI runs them:
//! connect to `VAULT_ADDR`, act, print, exit code.
//!
//! `VAULT_ADDR` may be the sidecar (no credential needed: it signs with its own) or Vault
//! itself with the configured auth method (a token is used as given; other methods log
//! in first). Exit codes follow the lifecycle commands: 0 done, 64 configuration,
//! 65 refused (bad bundle, signature, key or model), 69 Vault unreachable, 74 a file
//! could not be read or written, 77 Vault denied, 1 other Vault error.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;

use super::hash::human_bytes;
use super::keys::{jwk, spki_pem, SignerKey};
use super::{sign, transit, verify, ModelError, ModelOptions, VerifyKey};
use crate::config::{AuthConfig, Config};
use crate::vault::VaultClient;

/// What `aegis model sign` was asked.
#[derive(Debug, Clone)]
pub struct SignArgs {
    pub key: String,
    pub signature: PathBuf,
    pub model: PathBuf,
    pub options: ModelOptions,
}

/// What `aegis model verify` was asked.
#[derive(Debug, Clone)]
pub struct VerifyArgs {
    /// The Transit key; unused with `public_key`.
    pub key: Option<String>,
    pub signature: PathBuf,
    pub model: PathBuf,
    /// A PEM public key: verify offline.
    pub public_key: Option<PathBuf>,
    pub options: ModelOptions,
}

/// `aegis keys export --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// One version's SubjectPublicKeyInfo PEM (the latest unless --version).
    Pem,
    /// A JWK Set: the given version, or every version Transit accepts.
    Jwks,
}

/// A client for `VAULT_ADDR` with the configured credential.
async fn connect(config: &Config) -> Result<VaultClient, ModelError> {
    let vault = VaultClient::new(&config.vault)
        .map_err(|e| ModelError::Config(e.to_string().trim().to_string()))?;
    // A token (or none, for the sidecar) is sent as given; other methods log in.
    if !matches!(config.vault.auth, AuthConfig::Token { .. }) {
        vault
            .login()
            .await
            .map_err(|e| ModelError::Vault(e.into()))?;
    }
    Ok(vault)
}

fn fail(what: &str, e: &ModelError) -> ExitCode {
    eprintln!("aegis: {what} failed: {e}");
    ExitCode::from(e.exit_code())
}

/// `aegis model sign`.
pub async fn run_sign(config: &Config, args: SignArgs) -> ExitCode {
    let result = async {
        let vault = connect(config).await?;
        sign(
            &vault,
            &config.transit_mount,
            &args.key,
            &args.model,
            &args.signature,
            &args.options,
        )
        .await
    }
    .await;
    match result {
        Ok(s) => {
            println!(
                "signed model {:?}: {} files, {} hashed in {:.2} s; key {:?} version {} (hint {}); signature written to {}",
                s.model_name,
                s.files,
                human_bytes(s.bytes as f64),
                s.hashing.as_secs_f64(),
                args.key,
                s.key_version,
                s.hint,
                args.signature.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail("model signing", &e),
    }
}

/// `aegis model verify`: offline with `--public-key` (`config` is then `None`).
pub async fn run_verify(config: Option<&Config>, args: VerifyArgs) -> ExitCode {
    let result = async {
        match (&args.public_key, config, &args.key) {
            (Some(path), _, _) => {
                let pem = std::fs::read(path)
                    .map_err(|e| ModelError::Io(format!("cannot read {}: {e}", path.display())))?;
                let key = SignerKey::from_pem(&pem)
                    .map_err(|e| ModelError::Key(format!("{}: {e}", path.display())))?;
                verify(
                    VerifyKey::PublicKey(&key),
                    &args.model,
                    &args.signature,
                    &args.options,
                )
                .await
            }
            (None, Some(config), Some(key)) => {
                let vault = connect(config).await?;
                let k = VerifyKey::Transit {
                    vault: &vault,
                    mount: &config.transit_mount,
                    key,
                };
                verify(k, &args.model, &args.signature, &args.options).await
            }
            _ => Err(ModelError::Config(
                "give --key (verify through VAULT_ADDR) or --public-key (offline)".into(),
            )),
        }
    }
    .await;
    match result {
        Ok(v) => {
            println!(
                "verified model {:?}: {} files ({}) match the signature by {}",
                v.model_name,
                v.files,
                human_bytes(v.bytes as f64),
                v.signer
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            // Pushed over OTLP at exit when an endpoint is configured (an init container
            // cannot be scraped): alerts see models that fail to verify.
            crate::telemetry::metrics::get()
                .model_verify_failure(args.key.as_deref().unwrap_or("_offline"), e.reason());
            fail("model verification", &e)
        }
    }
}

/// `aegis keys export`.
pub async fn run_export(
    config: &Config,
    key: &str,
    version: Option<u32>,
    format: ExportFormat,
) -> ExitCode {
    let result = async {
        let vault = connect(config).await?;
        let tk = transit::read_key(&vault, &config.transit_mount, key).await?;
        let key_type = tk.key_type.ok_or_else(|| {
            ModelError::Key(format!(
                "key {key:?} is a {} key: it has no public key",
                tk.type_name
            ))
        })?;
        let versions: Vec<u32> = match (version, format) {
            (Some(v), _) => vec![v],
            (None, ExportFormat::Pem) => vec![tk.latest_version],
            (None, ExportFormat::Jwks) => tk
                .versions
                .keys()
                .copied()
                .filter(|v| *v >= tk.min_decryption_version.max(1))
                .collect(),
        };
        let mut ders = Vec::new();
        for v in versions {
            let der = tk.versions.get(&v).ok_or_else(|| {
                ModelError::Key(format!(
                    "key {key:?} lists no public key for version {v} (versions: {:?})",
                    tk.versions.keys().collect::<Vec<_>>()
                ))
            })?;
            ders.push((v, der));
        }
        Ok(match format {
            ExportFormat::Pem => ders.iter().map(|(_, d)| spki_pem(d)).collect::<String>(),
            ExportFormat::Jwks => {
                let keys = ders
                    .iter()
                    .map(|(v, d)| jwk(key_type, d, &format!("{key}:v{v}")))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| ModelError::Key(e.to_string()))?;
                serde_json::to_string_pretty(&json!({ "keys": keys })).expect("JSON") + "\n"
            }
        })
    }
    .await;
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => fail("key export", &e),
    }
}
