//! The keyset snapshot in `AEGIS_CACHE_DIR`: what lets a sidecar restarted during a Vault
//! outage keep verifying.
//!
//! The file holds public keys, versions and policy fields only (each key as `GET keys`
//! answers it), never a token. It is a [`crate::sealed`] file: written atomically with
//! mode 0600, starting with a header line carrying the payload's length and SHA-256:
//!
//! ```text
//! aegis-keyset-snapshot/1 len=1234 sha256=<hex>
//! {"mount":"transit","vault":[...],"written_at":"...","keys":{"name":{...}}}
//! ```
//!
//! A file whose header, length or checksum does not match is refused whole, with a log
//! line saying why: a snapshot is never trusted in part.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

const MAGIC: &str = "aegis-keyset-snapshot/1";
const FILE_NAME: &str = "keysets.snapshot";

/// What a snapshot holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// The Transit mount the keys belong to.
    pub mount: String,
    /// The Vault addresses the keys came from.
    pub vault: Vec<String>,
    /// RFC 3339 time of writing.
    pub written_at: String,
    /// Key name to Transit's `GET keys` data, retired versions included.
    pub keys: Map<String, Value>,
}

/// Why a snapshot was refused.
pub type SnapshotError = crate::sealed::SealedError;

/// The largest snapshot read: far above what the keyset bounds allow.
const MAX_LEN: u64 = 256 * 1024 * 1024;

/// The snapshot file in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Writes `payload` atomically to `dir` (created 0700 if missing), mode 0600.
pub fn write(dir: &Path, payload: &Payload) -> std::io::Result<()> {
    let body = serde_json::to_vec(payload).map_err(std::io::Error::other)?;
    crate::sealed::write(
        dir,
        FILE_NAME,
        MAGIC,
        &body,
        crate::sealed::Durability::Synced,
    )
}

/// Reads the snapshot in `dir`: `Ok(None)` when there is none.
pub fn read(dir: &Path) -> Result<Option<Payload>, SnapshotError> {
    let path = path(dir);
    let Some(body) = crate::sealed::read(&path, MAGIC, "keyset snapshot", MAX_LEN)? else {
        return Ok(None);
    };
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| SnapshotError::Corrupt {
            path,
            what: "keyset snapshot",
            reason: format!("payload: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> Payload {
        let mut keys = Map::new();
        keys.insert(
            "k".into(),
            serde_json::json!({"type": "ed25519", "latest_version": 1, "keys": {"1": {"public_key": "x"}}}),
        );
        Payload {
            mount: "transit".into(),
            vault: vec!["http://127.0.0.1:8200".into()],
            written_at: "2026-11-25T00:00:00Z".into(),
            keys,
        }
    }

    #[test]
    fn round_trip_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("cache");
        assert!(read(&sub).unwrap().is_none());
        write(&sub, &payload()).unwrap();
        assert_eq!(read(&sub).unwrap().unwrap(), payload());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path(&sub)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(&sub).unwrap().count(), 1);
    }

    #[test]
    fn truncated_flipped_or_foreign_files_are_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &payload()).unwrap();
        let good = std::fs::read(path(dir.path())).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 5].to_vec(), "truncated"),
            (
                {
                    let mut b = good.clone();
                    let i = b.len() - 10;
                    b[i] ^= 0x01;
                    b
                },
                "checksum mismatch",
            ),
            (b"{\"mount\":\"transit\"}".to_vec(), "no header line"),
            (
                b"something-else/1 len=0 sha256=x\n".to_vec(),
                "unknown format",
            ),
            (Vec::new(), "no header line"),
        ];
        for (bytes, why) in cases {
            std::fs::write(path(dir.path()), &bytes).unwrap();
            let err = read(dir.path()).unwrap_err().to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
    }
}
