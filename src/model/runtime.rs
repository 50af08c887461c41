//! Model verification inside the sidecar (`POST /v1/aegis/model/verify`, gRPC
//! `VerifyModel`): the paths are confined to `AEGIS_MODEL_ROOTS` before any file is
//! opened, and the check is [`super::verify`] with the sidecar's cached key versions
//! ([`VerifyKey::Cached`]: the validity rule of the key cache), one model at a time per
//! sidecar, within the sidecar's [`Limits`] (`AEGIS_MODEL_MAX_SIGNATURE_BYTES`,
//! `AEGIS_MODEL_MAX_RESOURCES`).
//!
//! Symbolic links are never followed here (`allow_symlinks: true` is refused): a followed
//! link could read outside the root. The hash walk refuses a link inside the model
//! without opening its target.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::{Limits, ModelError, ModelOptions, Verified, VerifyKey};
use crate::keys::KeySet;

/// At most this many model verifications run at once in one sidecar; another request is
/// answered 429 at once (never queued).
static VERIFYING: Semaphore = Semaphore::const_new(1);

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

/// Verifies the confined model against its bundle with the cached key `set`, within the
/// sidecar's `limits`, through the digest cache in `cache_dir` when set. `allow_symlinks`
/// and ignore paths that are absolute or climb out of the model are configuration errors.
pub async fn verify(
    set: &KeySet,
    paths: &Confined,
    req: &Request,
    cache_dir: Option<PathBuf>,
    limits: Limits,
) -> Result<Verified, ModelError> {
    if req.allow_symlinks {
        return Err(ModelError::Config(
            "allow_symlinks is not supported by the sidecar: a followed link could leave AEGIS_MODEL_ROOTS".into(),
        ));
    }
    let opts = ModelOptions {
        ignore_paths: ignore_paths(&paths.model, &req.ignore_paths)?,
        ignore_git_paths: req.ignore_git_paths,
        allow_symlinks: false,
        progress: false,
        cache_dir,
        // Only signing reads it: verification follows the bundle's serialization.
        layout: Default::default(),
        limits,
    };
    super::verify(
        VerifyKey::Cached(set),
        &paths.model,
        &paths.signature,
        &opts,
    )
    .await
}

/// The request's ignore paths (relative to the model, inside it) joined onto the model.
fn ignore_paths(model: &Path, paths: &[PathBuf]) -> Result<Vec<PathBuf>, ModelError> {
    paths
        .iter()
        .map(|p| {
            let inside = !p.as_os_str().is_empty()
                && p.components()
                    .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
            if inside {
                Ok(model.join(p))
            } else {
                Err(ModelError::Config(format!(
                    "ignore path {p:?} must be relative to the model and inside it"
                )))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignore_paths_stay_inside_the_model() {
        let m = Path::new("/r/m");
        let ok = ignore_paths(m, &[PathBuf::from("a/b"), PathBuf::from("./c")]).unwrap();
        assert_eq!(ok, [PathBuf::from("/r/m/a/b"), PathBuf::from("/r/m/./c")]);
        for bad in ["/etc", "../x", "a/../../x", ""] {
            let e = ignore_paths(m, &[PathBuf::from(bad)]).unwrap_err();
            assert!(e.to_string().contains("inside it"), "{bad}: {e}");
        }
    }

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
