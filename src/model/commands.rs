//! `aegis model sign`, `aegis model verify` and `aegis keys publish|export` as the CLI runs them:
//! connect to `VAULT_ADDR`, act, print, exit code.
//!
//! `VAULT_ADDR` may be the sidecar (no credential needed: it signs with its own) or Vault
//! itself with the configured auth method (a token is used as given; other methods log
//! in first). Exit codes follow the lifecycle commands: 0 done, 64 configuration,
//! 65 refused (bad bundle, signature, key or model), 69 Vault unreachable, 74 a file
//! could not be read or written, 77 Vault denied, 1 other Vault error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use super::hash::human_bytes;
use super::keys::SignerKey;
use super::{sign, transit, verify, ModelError, ModelOptions, VerifyKey};
use crate::config::{AuthConfig, Config};
use crate::keys::publish::{published_keys, PublishedKeys};
use crate::keys::KeyCache;
use crate::vault::{VaultClient, VaultError};

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

/// `aegis keys publish|export --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// SubjectPublicKeyInfo PEM blocks, newest version first, each after `#` comment
    /// lines naming key, version (kid) and window.
    Pem,
    /// A JWK Set (RFC 7517): kid `{key}:v{N}`, a retired version's window end in
    /// `aegis_retire_after`.
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
                "verified model {:?}: {} files ({}) match the signature by {} ({} hashed, {} from the digest cache)",
                v.model_name,
                v.files,
                human_bytes(v.bytes as f64),
                v.signer,
                v.files - v.from_cache,
                v.from_cache
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

/// What `aegis keys publish` and `aegis keys export` were asked.
#[derive(Debug, Clone)]
pub struct PublishArgs {
    pub key: String,
    /// Only this version (`keys export --version`); refused unless it verifies.
    pub version: Option<u32>,
    pub format: ExportFormat,
    /// Written atomically (temporary file, rename); stdout when `None`.
    pub output: Option<PathBuf>,
}

/// `aegis keys publish` and `aegis keys export`: every version of the key that verifies
/// by the sidecar's validity rule (retired-but-valid ones included), or one of them.
pub async fn run_publish(config: &Config, args: PublishArgs) -> ExitCode {
    let result = async {
        let published = load_published(config, &args.key).await?;
        if let Some(why) = published.no_public_keys() {
            return Err(ModelError::Key(why));
        }
        let published = match args.version {
            None => published,
            Some(v) if published.version(v).is_some() => published.only(v),
            Some(v) => {
                return Err(ModelError::Key(format!(
                    "key {:?} has no public key for version {v} that verifies (versions that verify: {:?})",
                    args.key,
                    published.versions.iter().map(|p| p.version).collect::<Vec<_>>()
                )))
            }
        };
        let text = match args.format {
            ExportFormat::Pem => published.pem_bundle(),
            ExportFormat::Jwks => {
                serde_json::to_string_pretty(&published.jwks()).expect("JSON") + "\n"
            }
        };
        match &args.output {
            Some(path) => super::write_atomic(path, &text),
            None => {
                print!("{text}");
                Ok(())
            }
        }
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail("key publication", &e),
    }
}

/// What verifies of `key`, by the sidecar's rule: from the sidecar's JWK Set when
/// `VAULT_ADDR` is an Aegis sidecar (it serves its OpenAPI document), else read from Vault
/// through a [`KeyCache`] built as the sidecar builds it (Transit, the retention record,
/// the endorsement key).
async fn load_published(config: &Config, key: &str) -> Result<PublishedKeys, ModelError> {
    if !crate::api::valid_key_name(key) {
        return Err(ModelError::Config(format!(
            "{key:?} is not a Transit key name"
        )));
    }
    let vault = connect(config).await?;
    let vault_error = |e| transit::vault_error(key, e);
    if serves_aegis(&vault).await.map_err(vault_error)? {
        let path = format!("aegis/keys/{key}/jwks.json");
        let doc = vault
            .get_document(&path, false)
            .await
            .map_err(|e| match e {
                // The sidecar refuses a key without public keys as the command does.
                VaultError::Status {
                    status: 400,
                    errors,
                } => ModelError::Key(errors.join("; ")),
                e => vault_error(e),
            })?;
        return PublishedKeys::from_jwks(key, &doc)
            .map_err(|e| ModelError::Key(format!("the sidecar's JWK Set: {e}")));
    }
    let cache = KeyCache::from_config(Arc::new(vault), config);
    published_keys(&cache, key).await.map_err(vault_error)
}

/// Whether `VAULT_ADDR` is an Aegis sidecar: it serves its OpenAPI document (no token
/// sent; Vault answers that path with an error).
async fn serves_aegis(vault: &VaultClient) -> Result<bool, VaultError> {
    let path = crate::api::http::OPENAPI_PATH.trim_start_matches("/v1/");
    match vault.get_document(path, true).await {
        Ok(doc) => Ok(doc["info"]["title"] == "Aegis"),
        Err(VaultError::Status { .. } | VaultError::Decode(_)) => Ok(false),
        Err(e) => Err(e),
    }
}
