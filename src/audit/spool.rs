//! The spool directory: one file per event waiting for the HTTP endpoint.
//!
//! A spooled event is written as `.<name>.tmp`, fsynced, renamed to `<name>` and the
//! directory fsynced (once per batch), so a file either holds a whole event or does not
//! exist under its final name. Names are `<stamp>-<id>.json`: a zero-padded nanosecond
//! stamp, strictly increasing within a process, then the event id; sorting the names
//! gives delivery order. Files that are not valid JSON are renamed `<name>.bad` and left
//! for an operator, so one damaged file cannot hold the queue up forever.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const SUFFIX: &str = ".json";
const STAMP_DIGITS: usize = 20;
/// Temporary files older than this are leftovers of a crash between write and rename.
const STALE_TMP: Duration = Duration::from_secs(600);

/// The writing side of the spool (the writer thread owns it).
#[derive(Debug)]
pub(super) struct Spool {
    dir: PathBuf,
    last_stamp: u128,
}

impl Spool {
    /// Creates `dir` (0700) if missing and clears temporary files left by a crash.
    pub(super) fn open(dir: &Path) -> io::Result<Self> {
        create_private_dir(dir)?;
        remove_stale_tmp(dir)?;
        Ok(Spool {
            dir: dir.to_owned(),
            last_stamp: 0,
        })
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes one event atomically; durable once [`Spool::sync`] has returned.
    pub(super) fn put(&mut self, id: &str, body: &[u8]) -> io::Result<()> {
        let name = format!(
            "{:0width$}-{id}{SUFFIX}",
            self.next_stamp(),
            width = STAMP_DIGITS
        );
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let result = write_synced(&tmp, body).and_then(|()| fs::rename(&tmp, self.dir.join(name)));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Makes the renames of earlier [`Spool::put`]s survive a crash.
    pub(super) fn sync(&self) -> io::Result<()> {
        fs::File::open(&self.dir)?.sync_all()
    }

    fn next_stamp(&mut self) -> u128 {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        self.last_stamp = now.max(self.last_stamp + 1);
        self.last_stamp
    }
}

/// The spooled events in `dir`, in delivery order.
pub(super) fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_str().is_some_and(is_event_name) {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// How many events wait in `dir` (0 if it cannot be read: the deliverer logs that).
pub(super) fn count(dir: &Path) -> usize {
    list(dir).map_or(0, |files| files.len())
}

/// Sets aside a file that is not a JSON event, so later events can still be delivered.
pub(super) fn quarantine(path: &Path) -> io::Result<PathBuf> {
    let mut bad = path.as_os_str().to_owned();
    bad.push(".bad");
    let bad = PathBuf::from(bad);
    fs::rename(path, &bad)?;
    Ok(bad)
}

fn is_event_name(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(SUFFIX) else {
        return false;
    };
    let Some((stamp, id)) = stem.split_once('-') else {
        return false;
    };
    stamp.len() == STAMP_DIGITS && stamp.bytes().all(|b| b.is_ascii_digit()) && !id.is_empty()
}

fn remove_stale_tmp(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let is_tmp = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"));
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        if is_tmp && age.is_some_and(|age| age > STALE_TMP) {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(())
}

fn write_synced(path: &Path, body: &[u8]) -> io::Result<()> {
    let mut file = super::private_file(fs::OpenOptions::new().write(true).create_new(true), path)?;
    file.write_all(body)?;
    file.sync_all()
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    fs::create_dir_all(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puts_are_listed_in_order_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(&dir.path().join("spool")).unwrap();
        for id in ["b", "a", "c"] {
            spool
                .put(id, format!("{{\"id\":\"{id}\"}}").as_bytes())
                .unwrap();
        }
        spool.sync().unwrap();
        let files = list(spool.dir()).unwrap();
        let bodies: Vec<String> = files
            .iter()
            .map(|f| fs::read_to_string(f).unwrap())
            .collect();
        assert_eq!(bodies, [r#"{"id":"b"}"#, r#"{"id":"a"}"#, r#"{"id":"c"}"#]);
        assert_eq!(count(spool.dir()), 3);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&files[0]), 0o600);
            assert_eq!(mode(spool.dir()), 0o700);
        }
        // Nothing but the three events: no temporary file is left behind.
        assert_eq!(fs::read_dir(spool.dir()).unwrap().count(), 3);
    }

    #[test]
    fn foreign_temporary_and_quarantined_files_are_not_events() {
        assert!(is_event_name("00000000000000000001-abc.json"));
        for name in [
            ".00000000000000000001-abc.json.tmp",
            "00000000000000000001-abc.json.bad",
            "0000000000000000001x-abc.json",
            "00000000000000000001-.json",
            "00000000000000000001.json",
            "x.json",
            ".json",
            "ééééééééééé-x.json",
        ] {
            assert!(!is_event_name(name), "{name}");
        }
        let dir = tempfile::tempdir().unwrap();
        let event = dir.path().join("00000000000000000001-abc.json");
        fs::write(&event, "not json").unwrap();
        let bad = quarantine(&event).unwrap();
        assert!(bad.exists() && !event.exists());
        assert_eq!(count(dir.path()), 0);
    }

    #[test]
    fn stamps_increase_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path()).unwrap();
        let stamps: Vec<u128> = (0..1000).map(|_| spool.next_stamp()).collect();
        assert!(stamps.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(format!("{:020}", u64::MAX).len(), STAMP_DIGITS);
    }
}
