//! Model verification inside the sidecar (`POST /v1/aegis/model/verify`): the paths are
//! confined to `AEGIS_MODEL_ROOTS` before any file is opened, the key versions come from
//! the sidecar's own key cache ([`KeySet`], its one validity rule), and the hashing runs
//! off the async runtime, one model at a time per sidecar.
//!
//! Symbolic links inside the model are always refused here (`allow_symlinks: true` is a
//! 400): a followed link could read outside the root before it was checked.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::bundle::{self, Bundle};
use super::hash::{self, relative_components, HashOptions};
use super::keys::{transit_spki, SignerKey};
use super::manifest::Manifest;
use super::{ModelError, GIT_PATHS};
use crate::crypto::KeyType;
use crate::keys::{KeySet, VersionStatus};

/// At most this many model verifications run at once in one sidecar; another request is
/// answered 429 at once (never queued).
static VERIFYING: Semaphore = Semaphore::const_new(1);

/// A signature file larger than this is not a bundle (they are a few KiB).
const MAX_BUNDLE_BYTES: u64 = 16 * 1024 * 1024;

/// The request body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub model: PathBuf,
    pub signature: PathBuf,
    pub key: String,
    /// Paths not hashed, relative to the model.
    #[serde(default)]
    pub ignore_paths: Vec<PathBuf>,
    #[serde(default = "yes")]
    pub ignore_git_paths: bool,
    #[serde(default)]
    pub allow_symlinks: bool,
}

fn yes() -> bool {
    true
}

/// The model and signature paths, resolved and inside one root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confined {
    pub root: PathBuf,
    pub model: PathBuf,
    pub signature: PathBuf,
}

/// The roots rule: both paths absolute and, once `..` and symbolic links are resolved
/// (`canonicalize`, which stats but opens nothing), inside the same configured root.
/// The error is the 403 message.
pub fn confine(roots: &[PathBuf], model: &Path, signature: &Path) -> Result<Confined, String> {
    let rule = "the model and its signature must be absolute paths inside one directory of AEGIS_MODEL_ROOTS (after resolving .. and symbolic links)";
    let resolve = |what: &str, p: &Path| {
        if !p.is_absolute() {
            return Err(format!("{rule}: the {what} path {p:?} is relative"));
        }
        std::fs::canonicalize(p).map_err(|e| format!("{rule}: the {what} path {p:?}: {e}"))
    };
    let (model_real, signature_real) = (resolve("model", model)?, resolve("signature", signature)?);
    roots
        .iter()
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .find(|r| model_real.starts_with(r) && signature_real.starts_with(r))
        .map(|root| Confined {
            root,
            model: model_real,
            signature: signature_real,
        })
        .ok_or_else(|| format!("{rule}: {model:?} and {signature:?} are not inside one root"))
}

/// Takes the one verification slot, or `None` when a verification is running.
pub fn try_slot() -> Option<SemaphorePermit<'static>> {
    VERIFYING.try_acquire().ok()
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// The model is the one signed with `key_version`.
    Valid {
        key_version: u32,
        model_name: String,
        files: usize,
        bytes: u64,
    },
    /// The signature verifies but the model differs: names relative to the model.
    Mismatch {
        key_version: u32,
        changed: Vec<String>,
        added: Vec<String>,
        missing: Vec<String>,
    },
}

/// Verifies the confined model against its bundle with the cached key `set`; runs the
/// whole check (reads and hashing) on a blocking thread.
pub async fn verify(
    set: Arc<KeySet>,
    paths: Confined,
    req: Request,
) -> Result<Checked, ModelError> {
    tokio::task::spawn_blocking(move || verify_blocking(&set, &paths, &req))
        .await
        .map_err(|e| ModelError::Io(format!("the verification task failed: {e}")))?
}

fn verify_blocking(set: &KeySet, paths: &Confined, req: &Request) -> Result<Checked, ModelError> {
    if req.allow_symlinks {
        return Err(ModelError::Config(
            "allow_symlinks is not supported by the sidecar: a followed link could leave AEGIS_MODEL_ROOTS".into(),
        ));
    }
    let b = Bundle::parse(&read_bundle(&paths.signature)?)?;
    let key_version = authenticate(set, &b)?;
    let expected =
        Manifest::from_payload(&b.payload).map_err(|e| ModelError::Statement(e.to_string()))?;
    let ignore = ignore_set(paths, req, &expected.serialization.ignore_paths)?;
    let hashed = hash::hash_model(
        &paths.model,
        &HashOptions {
            ignore,
            ..HashOptions::default()
        },
    )?;
    let actual = Manifest::new(String::new(), expected.serialization.clone(), &hashed.files);
    let (changed, added, missing) = differences(&expected, &actual);
    if changed.is_empty() && added.is_empty() && missing.is_empty() {
        return Ok(Checked::Valid {
            key_version,
            model_name: expected.model_name,
            files: hashed.files.len(),
            bytes: hashed.bytes,
        });
    }
    Ok(Checked::Mismatch {
        key_version,
        changed,
        added,
        missing,
    })
}

fn read_bundle(path: &Path) -> Result<Vec<u8>, ModelError> {
    use std::io::Read as _;
    let cannot = |e: std::io::Error| ModelError::Io(format!("cannot read {}: {e}", path.display()));
    let mut text = Vec::new();
    std::fs::File::open(path)
        .map_err(cannot)?
        .take(MAX_BUNDLE_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(cannot)?;
    if text.len() as u64 > MAX_BUNDLE_BYTES {
        return Err(ModelError::Io(format!(
            "{} is larger than {MAX_BUNDLE_BYTES} bytes: not a signature bundle",
            path.display()
        )));
    }
    Ok(text)
}

/// The version of `set` whose public key the bundle names (by its hint) and whose
/// signature verifies, if the validity rule still accepts it.
fn authenticate(set: &KeySet, b: &Bundle) -> Result<u32, ModelError> {
    let Some(kt @ KeyType::Ecdsa(_)) = set.local_type else {
        return Err(ModelError::Key(format!(
            "key {:?} is of type {}: models are signed with ECDSA keys",
            set.name, set.key_type
        )));
    };
    let pae = bundle::pae(&b.payload);
    let candidates: Vec<(u32, SignerKey)> = set
        .versions
        .values()
        .rev()
        .filter_map(|v| {
            let der = transit_spki(kt, &v.public_key).ok()?;
            Some((v.version, SignerKey::from_spki(&der).ok()?))
        })
        .filter(|(_, k)| b.hint.as_ref().is_none_or(|h| *h == k.hint()))
        .collect();
    let signed = candidates
        .iter()
        .find(|(_, k)| k.verify(&pae, &b.signature) == Ok(true))
        .map(|(v, _)| *v);
    match (signed, candidates.is_empty()) {
        (Some(v), _) => valid_version(set, v),
        (None, true) => Err(ModelError::Key(format!(
            "no version of key {:?} has the public key the bundle names",
            set.name
        ))),
        (None, false) => Err(ModelError::Signature(format!(
            "the signature does not verify with key {:?}",
            set.name
        ))),
    }
}

/// `version` when the validity rule ([`KeySet::version_status`]) accepts it now.
fn valid_version(set: &KeySet, version: u32) -> Result<u32, ModelError> {
    let refused = match set.version_status(version) {
        VersionStatus::Valid(_) => return Ok(version),
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

/// Paths not hashed: the request's (relative to the model), the signature file, git
/// metadata unless disabled, and the signed manifest's own list.
fn ignore_set(
    paths: &Confined,
    req: &Request,
    signed: &[String],
) -> Result<Vec<Vec<String>>, ModelError> {
    let mut set = Vec::new();
    for p in &req.ignore_paths {
        set.push(relative_components(p).ok_or_else(|| {
            ModelError::Config(format!(
                "ignore path {p:?} must be relative to the model, inside it"
            ))
        })?);
    }
    set.extend(
        paths
            .signature
            .strip_prefix(&paths.model)
            .ok()
            .and_then(relative_components),
    );
    if req.ignore_git_paths {
        set.extend(GIT_PATHS.iter().map(|p| vec![p.to_string()]));
    }
    set.extend(
        signed
            .iter()
            .filter_map(|p| relative_components(Path::new(p))),
    );
    set.sort();
    set.dedup();
    Ok(set)
}

/// The changed, added and missing file names of `actual` against `expected`.
fn differences(expected: &Manifest, actual: &Manifest) -> (Vec<String>, Vec<String>, Vec<String>) {
    let absent = |m: &Manifest, from: &Manifest| {
        from.files
            .keys()
            .filter(|n| !m.files.contains_key(*n))
            .cloned()
            .collect::<Vec<_>>()
    };
    let changed = expected
        .files
        .iter()
        .filter(|(n, d)| actual.files.get(*n).is_some_and(|a| a != *d))
        .map(|(n, _)| n.clone())
        .collect();
    (changed, absent(expected, actual), absent(actual, expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confine_refuses_everything_outside_one_root() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(a.join("m")).unwrap();
        std::fs::create_dir_all(b.join("m")).unwrap();
        std::fs::write(a.join("m/model.sig"), b"{}").unwrap();
        std::fs::write(b.join("m/model.sig"), b"{}").unwrap();
        std::os::unix::fs::symlink(b.join("m"), a.join("link")).unwrap();
        let roots = [a.clone(), b.clone()];
        let ok = confine(&roots, &a.join("m"), &a.join("m/model.sig")).unwrap();
        assert_eq!(ok.root, std::fs::canonicalize(&a).unwrap());
        for (model, sig) in [
            (a.join("m"), b.join("m/model.sig")),
            (a.join("m/../../b/m"), a.join("m/model.sig")),
            (a.join("link"), a.join("m/model.sig")),
            (PathBuf::from("m"), a.join("m/model.sig")),
            (a.join("none"), a.join("m/model.sig")),
        ] {
            let e = confine(&roots[..1], &model, &sig).unwrap_err();
            assert!(e.contains("AEGIS_MODEL_ROOTS"), "{e}");
        }
    }
}
