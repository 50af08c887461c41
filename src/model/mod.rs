//! OpenSSF Model Signing (OMS) with Transit keys: `aegis model sign` / `aegis model verify`.
//!
//! Signing hashes the model locally ([`hash`]: every file, or every shard of it, in
//! parallel, streamed, as the [`digest::Layout`] asked for says), builds the in-toto
//! statement ([`manifest`]) and its DSSE pre-authentication encoding
//! ([`bundle`]), has Transit sign the PAE's digest with an ECDSA key ([`transit`]), and
//! writes the Sigstore bundle `model_signing` 1.1.1 writes for key-based signatures, so
//! `model_signing verify key` accepts it with the key version's PEM.
//!
//! Verification reads the bundle, picks the key version by the bundle's public-key hint
//! ([`keys`]), checks the signature over the PAE, asks Transit whether that version may
//! still verify (through the sidecar: the retention rule), then hashes the model the way
//! the signed serialization says (files or shards, sha256 or blake2b) and compares it with
//! the signed manifest, file by file. With a PEM public key it runs offline. Inside the
//! sidecar ([`runtime`]) the versions come from its key cache and the validity rule is the
//! cache's own (`VerifyKey::Cached`).
//! Both return typed results: [`Verified`] on success, a [`ModelError`] whose
//! [`reason`](ModelError::reason) labels the failure (for a failure metric).
//!
//! This module talks to Vault only through the Transit API (`crate::vault`).

pub mod bundle;
pub mod cache;
pub mod commands;
pub mod digest;
pub mod hash;
pub(crate) mod hex;
pub mod keys;
pub mod manifest;
pub mod runtime;
pub mod transit;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::lifecycle::LifecycleError;
use crate::vault::VaultClient;
use bundle::{Bundle, BundleError, Pae};
use cache::DigestCache;
use digest::Layout;
use hash::{relative_components, HashError, HashOptions, Hashed};
use keys::SignerKey;
use manifest::{Manifest, Serialization};

/// Paths the upstream tool ignores by default: git metadata.
pub const GIT_PATHS: [&str; 4] = [".git", ".gitattributes", ".github", ".gitignore"];

/// Why signing or verifying a model failed. Each maps to an exit code and a reason label.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The configuration cannot be used (exit 64).
    #[error("{0}")]
    Config(String),
    /// The signature file is not a well-formed bundle.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The signed statement is not one Aegis can check.
    #[error("the signed statement cannot be used: {0}")]
    Statement(String),
    /// The key is unsuitable or does not match the bundle's public-key hint.
    #[error("{0}")]
    Key(String),
    /// The signature does not verify (or is not DER).
    #[error("{0}")]
    Signature(String),
    /// The signing version is retired past its window, revoked, or too old.
    #[error("{0}")]
    KeyVersionRefused(String),
    /// The model on disk is not what was signed.
    #[error("the model does not match its signature: {0}")]
    Mismatch(manifest::Differences),
    /// The model holds something the format refuses (a symlink without
    /// `--allow-symlinks`, a device file).
    #[error("{0}")]
    Refused(String),
    /// A file could not be read or written.
    #[error("{0}")]
    Io(String),
    /// Vault unreachable, denied, or another Vault error.
    #[error(transparent)]
    Vault(#[from] LifecycleError),
}

impl ModelError {
    /// The process exit code, consistent with the lifecycle commands (README).
    pub fn exit_code(&self) -> u8 {
        match self {
            ModelError::Config(_) => 64,
            ModelError::Bundle(_)
            | ModelError::Statement(_)
            | ModelError::Key(_)
            | ModelError::Signature(_)
            | ModelError::KeyVersionRefused(_)
            | ModelError::Mismatch(_)
            | ModelError::Refused(_) => 65,
            ModelError::Io(_) => 74,
            ModelError::Vault(e) => e.exit_code(),
        }
    }

    /// A short label for the failure, e.g. for `aegis_model_verify_failures_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            ModelError::Config(_) => "config",
            ModelError::Bundle(_) | ModelError::Statement(_) => "bad_bundle",
            ModelError::Key(_) => "unknown_key",
            ModelError::Signature(_) => "bad_signature",
            ModelError::KeyVersionRefused(_) => "key_version_refused",
            ModelError::Mismatch(_) => "model_mismatch",
            ModelError::Refused(_) => "model_refused",
            ModelError::Io(_) => "io",
            ModelError::Vault(_) => "vault",
        }
    }
}

impl From<HashError> for ModelError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Refused(m) => ModelError::Refused(m),
            e @ HashError::Io { .. } => ModelError::Io(e.to_string()),
        }
    }
}

/// The upstream tool's options that mean something here.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// Paths not hashed (relative to the current directory, as upstream resolves them;
    /// paths outside the model are dropped).
    pub ignore_paths: Vec<PathBuf>,
    /// Ignore `.git`, `.gitattributes`, `.github`, `.gitignore` (upstream's default).
    pub ignore_git_paths: bool,
    /// Follow symbolic links instead of refusing them.
    pub allow_symlinks: bool,
    /// Progress bar on stderr when it is a terminal.
    pub progress: bool,
    /// Where verification keeps its digest cache ([`cache`]); `None`: every file is hashed.
    /// Signing never uses it.
    pub cache_dir: Option<PathBuf>,
    /// How signing hashes (verification follows the bundle's serialization).
    pub layout: Layout,
    /// What one verification may read and hold.
    pub limits: Limits,
}

/// What one verification may read and hold: the signature file's size and the model's
/// files and pieces. The CLI's are [`MAX_BUNDLE_BYTES`] and [`hash::MAX_RESOURCES`]; the
/// sidecar's are lower (`AEGIS_MODEL_MAX_SIGNATURE_BYTES`, `AEGIS_MODEL_MAX_RESOURCES`),
/// sized for its memory limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_signature_bytes: u64,
    pub max_resources: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_signature_bytes: MAX_BUNDLE_BYTES,
            max_resources: hash::MAX_RESOURCES,
        }
    }
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            ignore_paths: Vec::new(),
            ignore_git_paths: true,
            allow_symlinks: false,
            progress: false,
            cache_dir: None,
            layout: Layout::default(),
            limits: Limits::default(),
        }
    }
}

/// Who signed, as far as verification established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signer {
    /// A Transit key version the endpoint still accepts.
    Transit { key: String, version: u32 },
    /// The `--public-key` given, by its hint.
    PublicKey { hint: String },
}

impl std::fmt::Display for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Signer::Transit { key, version } => write!(f, "key {key:?} version {version}"),
            Signer::PublicKey { hint } => write!(f, "the public key with hint {hint}"),
        }
    }
}

/// A signed model.
#[derive(Debug, Clone)]
pub struct Signed {
    pub model_name: String,
    pub files: usize,
    pub bytes: u64,
    pub key_version: u32,
    pub hint: String,
    pub hashing: Duration,
}

/// A verified model.
#[derive(Debug, Clone)]
pub struct Verified {
    pub model_name: String,
    pub files: usize,
    pub bytes: u64,
    /// How many of `files` the digest cache vouched for (the rest were read and hashed).
    pub from_cache: usize,
    pub signer: Signer,
}

/// Where verification gets the signer's key.
pub enum VerifyKey<'a> {
    /// A Transit key through `VAULT_ADDR`; the version is chosen by the bundle's hint.
    Transit {
        vault: &'a VaultClient,
        mount: &'a str,
        key: &'a str,
    },
    /// A PEM public key: offline, no Vault at all.
    PublicKey(&'a SignerKey),
    /// The sidecar's cached key versions: the version is chosen by the bundle's hint as
    /// for `Transit`, and the validity rule is the sidecar's own
    /// (`keys::KeySet::version_status`) instead of a question to Transit.
    Cached(&'a crate::keys::KeySet),
}

fn io(what: &str, path: &Path, e: std::io::Error) -> ModelError {
    ModelError::Io(format!("cannot {what} {}: {e}", path.display()))
}

/// `path` made absolute against `cwd`, `.` and `..` resolved, and symbolic links resolved
/// when it exists (like Python's `Path.resolve()`).
fn resolve(cwd: &Path, path: &Path) -> PathBuf {
    let abs = cwd.join(path);
    if let Ok(real) = std::fs::canonicalize(&abs) {
        return real;
    }
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The paths not hashed, relative to the model, as upstream's CLI builds them: the given
/// ignore paths and the signature file (each dropped when outside the model), plus git
/// metadata unless disabled, plus `extra` (a signed manifest's own list).
fn ignore_set(
    model: &Path,
    signature: &Path,
    opts: &ModelOptions,
    extra: &[String],
) -> Result<Vec<Vec<String>>, ModelError> {
    let root = std::fs::canonicalize(model).map_err(|e| io("read the model", model, e))?;
    let cwd = std::env::current_dir().map_err(|e| io("read", Path::new("."), e))?;
    let mut set: Vec<Vec<String>> = opts
        .ignore_paths
        .iter()
        .chain(std::iter::once(&signature.to_path_buf()))
        .filter_map(|p| {
            let rel = resolve(&cwd, p).strip_prefix(&root).ok()?.to_path_buf();
            relative_components(&rel)
        })
        .collect();
    if opts.ignore_git_paths {
        set.extend(GIT_PATHS.iter().map(|p| vec![p.to_string()]));
    }
    set.extend(
        extra
            .iter()
            .filter_map(|p| relative_components(Path::new(p))),
    );
    set.sort();
    set.dedup();
    Ok(set)
}

/// The model's name in the statement: its directory's final component.
fn model_name(model: &Path) -> String {
    let name = match model.file_name() {
        Some(n) => Some(n.to_os_string()),
        None => std::fs::canonicalize(model)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_os_string())),
    };
    name.map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Hashes the model off the async runtime; with `cache` (its directory and the signed
/// serialization), through the digest cache, which is saved afterwards.
async fn hash_blocking(
    model: &Path,
    opts: HashOptions,
    cache: Option<(PathBuf, &Serialization)>,
) -> Result<Hashed, ModelError> {
    let model = model.to_path_buf();
    let cache = cache.map(|(dir, s)| (dir, serde_json::to_string(s).expect("JSON")));
    tokio::task::spawn_blocking(move || {
        let Some((dir, serialization)) = cache else {
            return hash::hash_model(&model, &opts);
        };
        let root = std::fs::canonicalize(&model).map_err(|source| HashError::Io {
            path: model.clone(),
            source,
        })?;
        let open = || DigestCache::open(&dir, &root, &serialization);
        let (hashed, cache) = hash::hash_model_cached(&model, &opts, open)?;
        if let Err(e) = cache.save() {
            tracing::warn!(dir = %dir.display(), error = %e, "model digest cache not saved; the next run hashes every file");
        }
        Ok(hashed)
    })
    .await
    .map_err(|e| ModelError::Io(format!("the hashing task failed: {e}")))?
    .map_err(ModelError::from)
}

/// Writes `text` to `path` atomically (temporary file in the same directory, rename).
pub(crate) fn write_atomic(path: &Path, text: &str) -> Result<(), ModelError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(
        ".{file_name}.{}.tmp",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&tmp, text).map_err(|e| io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io("write", path, e)
    })
}

/// Signs the model at `model` with the latest version of Transit key `key` and writes the
/// bundle to `signature`.
pub async fn sign(
    vault: &VaultClient,
    mount: &str,
    key: &str,
    model: &Path,
    signature: &Path,
    opts: &ModelOptions,
) -> Result<Signed, ModelError> {
    let ignore = ignore_set(model, signature, opts, &[])?;
    // The key first: a wrong key fails before minutes of hashing.
    let transit_key = transit::read_key(vault, mount, key).await?;
    let version = transit_key.latest_version;
    let signer = transit_key.signer(version)?;
    let started = Instant::now();
    let hashed = hash_blocking(
        model,
        HashOptions {
            ignore: ignore.clone(),
            allow_symlinks: opts.allow_symlinks,
            layout: opts.layout,
            threads: 0,
            progress: opts.progress,
            max_resources: opts.limits.max_resources,
        },
        None,
    )
    .await?;
    let hashing = started.elapsed();
    let (files, bytes) = (hashed.files.len(), hashed.bytes);
    let manifest = signed_manifest(model_name(model), &ignore, opts, hashed.files)?;
    let payload = bundle_payload(&manifest)?;
    let pae = Pae::new(&payload);
    let sig = transit::KeyVersion {
        vault,
        mount,
        key,
        version,
        signer: &signer,
    }
    .sign(&pae)
    .await?;
    // Never write a bundle that would not verify.
    if signer.verify(&pae, &sig) != Ok(true) {
        return Err(ModelError::Signature(format!(
            "Transit's signature does not verify with version {version}'s public key"
        )));
    }
    let b = Bundle {
        hint: Some(signer.hint()),
        payload,
        signature: sig,
    };
    write_atomic(signature, &b.to_json())?;
    Ok(Signed {
        model_name: manifest.model_name,
        files,
        bytes,
        key_version: version,
        hint: signer.hint(),
        hashing,
    })
}

/// The manifest `sign` signs. With shards, a file name holding `:` is refused: upstream
/// parses a shard's name as exactly `path:start:end`, so it could not verify it.
fn signed_manifest(
    model_name: String,
    ignore: &[Vec<String>],
    opts: &ModelOptions,
    files: Vec<hash::FileDigest>,
) -> Result<Manifest, ModelError> {
    if opts.layout.shard_size.is_some() {
        if let Some(f) = files.iter().find(|f| f.name.contains(':')) {
            return Err(ModelError::Refused(format!(
                "{:?}: a file name with ':' cannot be named in a shard manifest (path:start:end); sign without --shard-size",
                f.name
            )));
        }
    }
    let ignore_paths = ignore.iter().map(|c| c.join("/")).collect();
    let serialization = Serialization::new(opts.layout, opts.allow_symlinks, ignore_paths);
    Ok(Manifest::new(
        model_name,
        serialization,
        &opts.layout,
        files,
    ))
}

/// Room in a bundle for all but its base64 payload: the media type, the public-key hint,
/// the payload type and one DER signature (at most 139 bytes for P-521), in base64 and
/// JSON: about 600 bytes, so 2 KiB is a safe upper bound.
const BUNDLE_ENVELOPE_BYTES: u64 = 2048;

/// The manifest's payload, refused (before Transit is asked) if its bundle could be larger
/// than [`MAX_BUNDLE_BYTES`], which verification would not read.
fn bundle_payload(manifest: &Manifest) -> Result<Vec<u8>, ModelError> {
    let payload = manifest.to_payload();
    let encoded = base64::encoded_len(payload.len(), true).map_or(u64::MAX, |n| n as u64);
    if encoded.saturating_add(BUNDLE_ENVELOPE_BYTES) > MAX_BUNDLE_BYTES {
        return Err(ModelError::Refused(format!(
            "the manifest of {} resources ({} bytes) would make a signature file larger than the {MAX_BUNDLE_BYTES} bytes verification reads; sign with a larger --shard-size, or without one",
            manifest.resources.len(),
            payload.len()
        )));
    }
    Ok(payload)
}

/// Checks the bundle's signature with `key`; returns who signed.
async fn authenticate(key: VerifyKey<'_>, b: &Bundle) -> Result<Signer, ModelError> {
    let pae = Pae::new(&b.payload);
    match key {
        VerifyKey::PublicKey(k) => {
            let hint = k.hint();
            if let Some(h) = b.hint.as_deref().filter(|h| *h != hint) {
                return Err(ModelError::Key(format!(
                    "the bundle names the public key with hint {h}, not the given public key (hint {hint})"
                )));
            }
            match k.verify(&pae, &b.signature) {
                Ok(true) => Ok(Signer::PublicKey { hint }),
                Ok(false) => Err(ModelError::Signature(
                    "the signature does not verify with the given public key".into(),
                )),
                Err(e) => Err(not_der(e)),
            }
        }
        VerifyKey::Transit { vault, mount, key } => {
            let tk = transit::read_key(vault, mount, key).await?;
            if !matches!(tk.key_type, Some(crate::crypto::KeyType::Ecdsa(_))) {
                // The same refusal signing gives for a key that is not ECDSA.
                tk.signer(tk.latest_version)?;
            }
            let versions = tk
                .versions
                .iter()
                .filter_map(|(v, der)| Some((*v, SignerKey::from_spki(der).ok()?)));
            let (version, signer) = signed_by(versions, b, &pae, key)?;
            transit::KeyVersion {
                vault,
                mount,
                key,
                version,
                signer: &signer,
            }
            .check(&pae, &b.signature)
            .await?;
            Ok(Signer::Transit {
                key: key.to_string(),
                version,
            })
        }
        VerifyKey::Cached(set) => {
            let Some(kt @ crate::crypto::KeyType::Ecdsa(_)) = set.local_type else {
                return Err(ModelError::Key(format!(
                    "key {:?} is of type {}: models are signed with ECDSA keys",
                    set.name, set.key_type
                )));
            };
            let versions = set.versions.values().filter_map(|v| {
                let der = keys::transit_spki(kt, &v.public_key).ok()?;
                Some((v.version, SignerKey::from_spki(&der).ok()?))
            });
            let (version, _) = signed_by(versions, b, &pae, &set.name)?;
            still_valid(set, version)?;
            Ok(Signer::Transit {
                key: set.name.clone(),
                version,
            })
        }
    }
}

fn not_der(e: impl std::fmt::Display) -> ModelError {
    ModelError::Signature(format!(
        "the bundle's signature is not an ASN.1 DER ECDSA signature ({e})"
    ))
}

/// The version of `key` (among `versions`, oldest first) whose public key the bundle's
/// hint names (or, an old bundle without a hint, any, newest first) and whose key
/// verifies the signature over `pae`.
fn signed_by(
    versions: impl DoubleEndedIterator<Item = (u32, SignerKey)>,
    b: &Bundle,
    pae: &Pae<'_>,
    key: &str,
) -> Result<(u32, SignerKey), ModelError> {
    let candidates: Vec<(u32, SignerKey)> = versions
        .rev()
        .filter(|(_, k)| b.hint.as_ref().is_none_or(|h| *h == k.hint()))
        .collect();
    if candidates.is_empty() {
        return Err(ModelError::Key(match &b.hint {
            Some(h) => {
                format!("no version of key {key:?} has the public key the bundle names (hint {h})")
            }
            None => format!("key {key:?} has no ECDSA version to verify with"),
        }));
    }
    let mut last = None;
    for (version, signer) in candidates {
        match signer.verify(pae, &b.signature) {
            Ok(true) => return Ok((version, signer)),
            Ok(false) => {
                last = Some(ModelError::Signature(format!(
                    "the signature does not verify with version {version} of key {key:?}"
                )))
            }
            Err(e) => return Err(not_der(e)),
        }
    }
    Err(last.expect("at least one candidate was tried"))
}

/// Refuses `version` unless the sidecar's validity rule
/// (`keys::KeySet::version_status`: the retention window, revocation) accepts it now.
fn still_valid(set: &crate::keys::KeySet, version: u32) -> Result<(), ModelError> {
    use crate::keys::VersionStatus;
    let refused = match set.version_status(version) {
        VersionStatus::Valid(_) => return Ok(()),
        VersionStatus::Retired { message, .. } => message,
        VersionStatus::TooOld => VersionStatus::TOO_OLD.into(),
        VersionStatus::TooNew => VersionStatus::TOO_NEW.into(),
        VersionStatus::Missing => format!("version {version} has no public key in the cache"),
    };
    Err(ModelError::KeyVersionRefused(format!(
        "version {version} of key {:?} may not verify: {refused}",
        set.name
    )))
}

/// A signature file larger than this is not a bundle (they are a few KiB, a few MiB for a
/// model of many files): refused before it is held in memory.
pub const MAX_BUNDLE_BYTES: u64 = 16 * 1024 * 1024;

/// The bundle's bytes, at most `max`.
fn read_bundle(path: &Path, max: u64) -> Result<Vec<u8>, ModelError> {
    use std::io::Read as _;
    let mut text = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(max.saturating_add(1)).read_to_end(&mut text))
        .map_err(|e| io("read", path, e))?;
    if text.len() as u64 > max {
        return Err(ModelError::Bundle(BundleError(format!(
            "{} is larger than {max} bytes, the most this verification reads",
            path.display()
        ))));
    }
    Ok(text)
}

/// Verifies the model at `model` against the bundle at `signature`.
pub async fn verify(
    key: VerifyKey<'_>,
    model: &Path,
    signature: &Path,
    opts: &ModelOptions,
) -> Result<Verified, ModelError> {
    // Each stage is dropped before the next is built, so that a large bundle is held
    // once at a time: the file's text, then the payload, then the manifest.
    let limits = opts.limits;
    let b = Bundle::parse(&read_bundle(signature, limits.max_signature_bytes)?)?;
    let signer = authenticate(key, &b).await?;
    let expected =
        Manifest::from_payload(&b.payload).map_err(|e| ModelError::Statement(e.to_string()))?;
    drop(b);
    if expected.resources.len() > limits.max_resources {
        return Err(ModelError::Refused(format!(
            "the signature lists {} resources, more than the {} this verification hashes for one model",
            expected.resources.len(),
            limits.max_resources
        )));
    }
    let layout = expected
        .serialization
        .layout()
        .map_err(|e| ModelError::Statement(e.to_string()))?;
    let ignore = ignore_set(model, signature, opts, &expected.serialization.ignore_paths)?;
    let hashed = hash_blocking(
        model,
        HashOptions {
            ignore,
            allow_symlinks: opts.allow_symlinks,
            layout,
            threads: 0,
            progress: opts.progress,
            max_resources: limits.max_resources,
        },
        opts.cache_dir.clone().map(|d| (d, &expected.serialization)),
    )
    .await?;
    let files = hashed.files.len();
    let actual = Manifest::new(
        model_name(model),
        expected.serialization.clone(),
        &layout,
        hashed.files,
    );
    if let Some(diff) = expected.diff(&actual) {
        return Err(ModelError::Mismatch(diff));
    }
    Ok(Verified {
        model_name: expected.model_name,
        files,
        bytes: hashed.bytes,
        from_cache: hashed.from_cache,
        signer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair};

    /// Signs `model` offline the way `sign` does, with a local key instead of Transit.
    fn sign_locally(
        model: &Path,
        sig_path: &Path,
        kp: &EcdsaKeyPair,
        opts: &ModelOptions,
    ) -> Result<(), ModelError> {
        let ignore = ignore_set(model, sig_path, opts, &[]).unwrap();
        let hashed = hash::hash_model(
            model,
            &HashOptions {
                ignore: ignore.clone(),
                layout: opts.layout,
                ..HashOptions::default()
            },
        )
        .unwrap();
        let payload = bundle_payload(&signed_manifest("m".into(), &ignore, opts, hashed.files)?)?;
        let sig = kp
            .sign(&SystemRandom::new(), &Pae::new(&payload).to_vec())
            .unwrap();
        let der = kp.public_key().as_der().unwrap();
        let b = Bundle {
            hint: Some(keys::hint(der.as_ref())),
            payload,
            signature: sig.as_ref().to_vec(),
        };
        std::fs::write(sig_path, b.to_json()).unwrap();
        Ok(())
    }

    #[tokio::test]
    async fn offline_round_trip_and_every_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m");
        std::fs::create_dir_all(model.join("sub")).unwrap();
        std::fs::write(model.join("w.bin"), vec![1u8; 5000]).unwrap();
        std::fs::write(model.join("sub/cfg.json"), b"{}").unwrap();
        let sig_path = model.join("model.sig");
        let kp = EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_ASN1_SIGNING).unwrap();
        let opts = ModelOptions::default();
        sign_locally(&model, &sig_path, &kp, &opts).unwrap();
        let key = SignerKey::from_spki(kp.public_key().as_der().unwrap().as_ref()).unwrap();
        let ok = verify(VerifyKey::PublicKey(&key), &model, &sig_path, &opts)
            .await
            .unwrap();
        assert_eq!((ok.files, ok.bytes), (2, 5002));

        // The git directory is ignored by default, not otherwise.
        std::fs::create_dir(model.join(".git")).unwrap();
        std::fs::write(model.join(".git/HEAD"), b"x").unwrap();
        verify(VerifyKey::PublicKey(&key), &model, &sig_path, &opts)
            .await
            .unwrap();
        let strict = ModelOptions {
            ignore_git_paths: false,
            ..ModelOptions::default()
        };
        // Still ignored: the signed manifest lists .git among its ignored paths.
        verify(VerifyKey::PublicKey(&key), &model, &sig_path, &strict)
            .await
            .unwrap();

        std::fs::write(model.join("new"), b"n").unwrap();
        let e = verify(VerifyKey::PublicKey(&key), &model, &sig_path, &opts)
            .await
            .unwrap_err();
        assert_eq!((e.reason(), e.exit_code()), ("model_mismatch", 65), "{e}");
        std::fs::remove_file(model.join("new")).unwrap();

        let other = EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_ASN1_SIGNING).unwrap();
        let other = SignerKey::from_spki(other.public_key().as_der().unwrap().as_ref()).unwrap();
        let e = verify(VerifyKey::PublicKey(&other), &model, &sig_path, &opts)
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "unknown_key", "{e}");

        let e = verify(
            VerifyKey::PublicKey(&key),
            &model,
            &dir.path().join("none"),
            &opts,
        )
        .await
        .unwrap_err();
        assert_eq!((e.reason(), e.exit_code()), ("io", 74), "{e}");

        // A signature file past the bound is refused before it is held.
        let huge = dir.path().join("huge.sig");
        std::fs::write(&huge, vec![b' '; MAX_BUNDLE_BYTES as usize + 1]).unwrap();
        let e = verify(VerifyKey::PublicKey(&key), &model, &huge, &opts)
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "bad_bundle", "{e}");
        assert!(e.to_string().contains("larger than 16777216 bytes"), "{e}");
    }

    #[test]
    fn a_manifest_too_large_for_a_bundle_is_refused_before_signing() {
        // A bundle with the longest hint and signature sign can write.
        let bundle_len = |payload: Vec<u8>| {
            let b = Bundle {
                hint: Some("f".repeat(64)),
                payload,
                signature: vec![0x30; 139],
            };
            b.to_json().len() as u64
        };
        // What surrounds the payload is well inside the room kept for it.
        assert!(bundle_len(Vec::new()) < BUNDLE_ENVELOPE_BYTES / 2);

        let files: Vec<hash::FileDigest> = (0..9000)
            .map(|i| hash::FileDigest {
                name: format!("{i}-{}", "n".repeat(1500)),
                size: 1,
                digests: vec![vec![0; 32]],
            })
            .collect();
        let layout = Layout::default();
        let serialization = Serialization::new(layout, false, vec![]);
        let big = Manifest::new("m".into(), serialization.clone(), &layout, files.clone());
        let e = bundle_payload(&big).unwrap_err();
        assert_eq!(e.reason(), "model_refused", "{e}");
        assert!(e.to_string().contains("manifest of 9000 resources"), "{e}");
        let fits = Manifest::new("m".into(), serialization, &layout, files[..6000].to_vec());
        assert!(bundle_len(bundle_payload(&fits).unwrap()) <= MAX_BUNDLE_BYTES);
    }

    #[tokio::test]
    async fn sharded_blake2_round_trip_names_the_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join("w.bin"), vec![1u8; 5000]).unwrap();
        std::fs::write(model.join("small"), b"s").unwrap();
        let sig_path = dir.path().join("model.sig");
        let kp = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        let key = SignerKey::from_spki(kp.public_key().as_der().unwrap().as_ref()).unwrap();
        let opts = ModelOptions {
            layout: Layout {
                algorithm: digest::Algorithm::Blake2b,
                shard_size: std::num::NonZeroU64::new(1024),
            },
            ..ModelOptions::default()
        };
        sign_locally(&model, &sig_path, &kp, &opts).unwrap();
        // Verification follows the bundle's serialization, whatever its own options say.
        let plain = ModelOptions::default();
        let ok = verify(VerifyKey::PublicKey(&key), &model, &sig_path, &plain)
            .await
            .unwrap();
        assert_eq!((ok.files, ok.bytes), (2, 5001));

        // One byte changed in the fourth shard: the file is named once, as changed.
        let mut w = vec![1u8; 5000];
        w[3500] = 2;
        std::fs::write(model.join("w.bin"), w).unwrap();
        let e = verify(VerifyKey::PublicKey(&key), &model, &sig_path, &plain)
            .await
            .unwrap_err();
        let ModelError::Mismatch(diff) = e else {
            panic!("{e}")
        };
        assert_eq!(diff.changed, ["w.bin"]);
        assert!(diff.added.is_empty() && diff.missing.is_empty(), "{diff}");

        // A shard name could not carry this file's name: refused when signing.
        std::fs::write(model.join("a:b"), b"x").unwrap();
        let e = sign_locally(&model, &sig_path, &kp, &opts).unwrap_err();
        assert_eq!(e.reason(), "model_refused", "{e}");
    }
}
