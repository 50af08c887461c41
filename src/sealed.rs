//! Private, checksummed files written atomically: the keyset snapshot and the model
//! digest cache in `AEGIS_CACHE_DIR` are both kept this way.
//!
//! A file starts with a header line naming its format and carrying the body's length and
//! SHA-256:
//!
//! ```text
//! aegis-keyset-snapshot/1 len=1234 sha256=<hex>
//! {...}
//! ```
//!
//! It is written to a temporary file (mode 0600, in a directory created 0700), synced,
//! renamed over the old one, and the directory synced. A file whose header, length or
//! checksum does not match is refused whole: it is never trusted in part.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a sealed file was refused.
#[derive(Debug, thiserror::Error)]
pub enum SealedError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid {what}: {reason}")]
    Corrupt {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
}

/// How hard a write insists on reaching the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync the file and the directory: the write survives a crash (the keyset snapshot).
    Synced,
    /// Rename only: after a crash the file may be the old one, or torn, which its checksum
    /// then refuses whole (the model digest cache, which can always be rebuilt).
    Atomic,
}

/// Writes `body` atomically as `dir/file_name` (`dir` created 0700 if missing), mode 0600.
pub fn write(
    dir: &Path,
    file_name: &str,
    magic: &str,
    body: &[u8],
    durability: Durability,
) -> std::io::Result<()> {
    let synced = durability == Durability::Synced;
    create_private_dir(dir)?;
    let header = format!("{magic} len={} sha256={}\n", body.len(), sha256_hex(body));
    let target = dir.join(file_name);
    let tmp = dir.join(format!(
        ".{file_name}.{}.{}.tmp",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut f = private_file(&tmp)?;
        f.write_all(header.as_bytes())?;
        f.write_all(body)?;
        if synced {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &target)?;
        // The rename itself must survive a crash: sync the directory entry.
        if synced {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads the body of the sealed file at `path`: `Ok(None)` when there is none. A file
/// longer than `max_len` bytes is refused unread. `what` names the file in errors.
pub fn read(
    path: &Path,
    magic: &str,
    what: &'static str,
    max_len: u64,
) -> Result<Option<Vec<u8>>, SealedError> {
    let corrupt = |reason: String| SealedError::Corrupt {
        path: path.to_path_buf(),
        what,
        reason,
    };
    let io = |source| SealedError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    if len > max_len {
        return Err(corrupt(format!(
            "{len} bytes, more than the {max_len} allowed"
        )));
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    unseal(bytes, magic).map(Some).map_err(corrupt)
}

fn unseal(mut bytes: Vec<u8>, magic: &str) -> Result<Vec<u8>, String> {
    let newline = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("no header line")?;
    let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| "header is not text")?;
    let mut fields = header.split(' ');
    if fields.next() != Some(magic) {
        return Err(format!("unknown format (expected {magic})"));
    }
    let (mut len, mut sum) = (None, None);
    for field in fields {
        match field.split_once('=') {
            Some(("len", v)) => len = v.parse::<usize>().ok(),
            Some(("sha256", v)) => sum = Some(v.to_string()),
            _ => return Err(format!("unexpected header field {field:?}")),
        }
    }
    let len = len.ok_or("header has no valid len")?;
    let sum = sum.ok_or("header has no sha256")?;
    let body = bytes.split_off(newline + 1);
    if body.len() != len {
        return Err(format!(
            "truncated or padded: header says {len} bytes, file holds {}",
            body.len()
        ));
    }
    if sha256_hex(&body) != sum {
        return Err("checksum mismatch".into());
    }
    Ok(body)
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

/// Creates `dir` and its parents, mode 0700.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
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
