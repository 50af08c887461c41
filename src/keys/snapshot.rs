//! The keyset snapshot in `AEGIS_CACHE_DIR`: what lets a sidecar restarted during a Vault
//! outage keep verifying.
//!
//! The file holds public keys, versions and policy fields only (each key as `GET keys`
//! answers it), never a token. It is written atomically (temporary file, fsync, rename,
//! fsync of the directory) with mode 0600, and starts with a header line carrying the
//! payload's length and SHA-256:
//!
//! ```text
//! aegis-keyset-snapshot/1 len=1234 sha256=<hex>
//! {"mount":"transit","vault":[...],"written_at":"...","keys":{"name":{...}}}
//! ```
//!
//! A file whose header, length or checksum does not match is refused whole, with a log
//! line saying why: a snapshot is never trusted in part.

use std::io::Write;
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
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid keyset snapshot: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// The snapshot file in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Writes `payload` atomically to `dir` (created 0700 if missing), mode 0600.
pub fn write(dir: &Path, payload: &Payload) -> std::io::Result<()> {
    create_private_dir(dir)?;
    let body = serde_json::to_vec(payload).map_err(std::io::Error::other)?;
    let header = format!("{MAGIC} len={} sha256={}\n", body.len(), sha256_hex(&body));
    let target = path(dir);
    let tmp = dir.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = private_file(&tmp)?;
        f.write_all(header.as_bytes())?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        // The rename itself must survive a crash: sync the directory entry.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads the snapshot in `dir`: `Ok(None)` when there is none.
pub fn read(dir: &Path) -> Result<Option<Payload>, SnapshotError> {
    let path = path(dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SnapshotError::Io { path, source }),
    };
    parse(&bytes)
        .map(Some)
        .map_err(|reason| SnapshotError::Corrupt { path, reason })
}

fn parse(bytes: &[u8]) -> Result<Payload, String> {
    let newline = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("no header line")?;
    let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| "header is not text")?;
    let body = &bytes[newline + 1..];
    let mut fields = header.split(' ');
    if fields.next() != Some(MAGIC) {
        return Err(format!("unknown format (expected {MAGIC})"));
    }
    let (mut len, mut sum) = (None, None);
    for field in fields {
        match field.split_once('=') {
            Some(("len", v)) => len = v.parse::<usize>().ok(),
            Some(("sha256", v)) => sum = Some(v),
            _ => return Err(format!("unexpected header field {field:?}")),
        }
    }
    let len = len.ok_or("header has no valid len")?;
    let sum = sum.ok_or("header has no sha256")?;
    if body.len() != len {
        return Err(format!(
            "truncated or padded: header says {len} bytes, file holds {}",
            body.len()
        ));
    }
    if sha256_hex(body) != sum {
        return Err("checksum mismatch".into());
    }
    serde_json::from_slice(body).map_err(|e| format!("payload: {e}"))
}

fn sha256_hex(data: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::create(path)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
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
