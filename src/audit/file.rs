//! The append-only audit file: one JSON event per line, `O_APPEND`, mode 0600 on creation.
//! A FIFO or character device at the path (a log collector's pipe, `/dev/stdout`) is
//! written the same way, without fsync (which they do not support).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub(super) struct AuditFile {
    path: PathBuf,
    file: File,
    /// The file may end in the middle of a line (a crash or a failed write): the next
    /// write starts with a newline so that line does not swallow the next event.
    torn: bool,
    /// A regular file is fsynced after each write; a FIFO or a character device (a
    /// container's `/dev/stdout`) cannot be, and is only written.
    regular: bool,
}

impl AuditFile {
    pub(super) fn open(path: &Path) -> io::Result<Self> {
        let mut file = super::private_file(OpenOptions::new().read(true).append(true), path)?;
        let regular = file.metadata()?.file_type().is_file();
        let torn = regular && !ends_with_newline(&mut file)?;
        Ok(AuditFile {
            path: path.to_owned(),
            file,
            torn,
            regular,
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `lines` (JSON objects, no newline) in one write and fsyncs: one group commit.
    pub(super) fn append<'a>(
        &mut self,
        lines: impl IntoIterator<Item = &'a [u8]>,
    ) -> io::Result<()> {
        let mut buf = Vec::new();
        if self.torn {
            buf.push(b'\n');
        }
        for line in lines {
            buf.extend_from_slice(line);
            buf.push(b'\n');
        }
        if let Err(e) = self.file.write_all(&buf) {
            self.torn = true;
            return Err(e);
        }
        self.torn = false;
        if self.regular {
            self.file.sync_data()
        } else {
            Ok(())
        }
    }
}

/// True for an empty file or one whose last byte is a newline.
fn ends_with_newline(file: &mut File) -> io::Result<bool> {
    if file.metadata()?.len() == 0 {
        return Ok(true);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8];
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_lines_and_repairs_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut f = AuditFile::open(&path).unwrap();
        f.append([&b"{\"n\":1}"[..], b"{\"n\":2}"]).unwrap();
        drop(f);
        // A crash mid-write left half a line.
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"n\":")
            .unwrap();
        let mut f = AuditFile::open(&path).unwrap();
        assert_eq!(f.path(), path);
        f.append([&b"{\"n\":3}"[..]]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"n\":1}\n{\"n\":2}\n{\"n\":\n{\"n\":3}\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
