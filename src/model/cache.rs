//! The digest cache for incremental model verification: per model root and serialization,
//! the digests of each file from an earlier run, keyed by what user space cannot forge
//! cheaply: device, inode, size, and mtime and ctime in nanoseconds.
//!
//! Re-verifying an unchanged model then costs the walk's metadata reads and one signature
//! check; a changed file (new ctime, inode or size) is re-hashed alone. The threat model
//! (who can defeat it: root on the node, or a writer holding a shared writable mapping) is
//! in docs/model-cache.md.
//!
//! Rules the code keeps:
//! - An entry is trusted only if its stamp equals the file's now and the file's ctime is
//!   more than [`RACY_MARGIN`] older than the start of the run that recorded it: a write in
//!   the same timestamp tick as the hashing cannot hide behind an equal ctime.
//! - The cache lives in `{AEGIS_CACHE_DIR}/model-digests/`, a directory that must be owned
//!   by this process's user and writable by no one else; otherwise it is not used at all.
//! - Each file is a [`crate::sealed`] file (length and SHA-256 in its header). A damaged
//!   file, or one recorded for another root or serialization, is ignored whole, never
//!   trusted in part, and rewritten by the run.
//! - At most [`MAX_MODELS`] files are kept (the least recently written are removed), each
//!   at most [`MAX_FILE_LEN`] bytes.

use std::collections::{BTreeMap, HashMap};
use std::fs::Metadata;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::hex;

const MAGIC: &str = "aegis-model-digests/1";
/// The cache's directory under `AEGIS_CACHE_DIR`.
pub const SUBDIR: &str = "model-digests";
const SUFFIX: &str = ".digests";
/// Cache files kept: one per model root and serialization.
pub const MAX_MODELS: usize = 64;
/// The largest cache file read or written: about 40 000 files (an entry is about 200
/// bytes). It is held in memory while a model is verified, so it stays well inside the
/// sidecar's 64 MiB limit; a model with more files is verified without the cache.
pub const MAX_FILE_LEN: u64 = 8 * 1024 * 1024;
/// How much older than the recording run's start a file's ctime must be for its entry to
/// be trusted: above the coarsest timestamp granularity of common filesystems (2 s, FAT).
pub const RACY_MARGIN: Duration = Duration::from_secs(2);

/// What user space cannot set at will: a rewrite or a rename changes ctime or the inode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl Stamp {
    /// The stamp of a file as `meta` (read by the walk) describes it.
    pub fn of(meta: &Metadata) -> Stamp {
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    stamp: Stamp,
    /// When the run that hashed the file started (ns since the epoch).
    recorded_at_ns: i64,
    /// Hex digests, one per piece.
    digests: Vec<String>,
}

impl Entry {
    fn trusted_for(&self, stamp: &Stamp) -> bool {
        let margin = RACY_MARGIN.as_nanos() as i64;
        self.stamp == *stamp && self.stamp.ctime_ns.saturating_add(margin) < self.recorded_at_ns
    }
}

/// A cache file's JSON (written from borrowed parts, read into owned ones).
#[derive(Debug, Serialize, Deserialize)]
struct Body<R, E> {
    root: R,
    serialization: R,
    entries: E,
}

/// What the cache held when it was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheState {
    /// No file for this model and serialization yet.
    Empty,
    /// A sound file with this many entries.
    Loaded(usize),
    /// A file was there but is not used (damaged, or for another model); the run rewrites it.
    Ignored(String),
    /// The directory is unusable (not private, not creatable): nothing is read or written.
    Unusable(String),
}

/// Digests of a model's files from earlier runs, for one root and one serialization.
#[derive(Debug)]
pub struct DigestCache {
    dir: PathBuf,
    file_name: String,
    root: String,
    serialization: String,
    started_ns: i64,
    state: CacheState,
    /// Entries read from the file and not yet looked up (a lookup moves its entry to
    /// `seen`: no entry is held twice).
    old: Mutex<HashMap<String, Entry>>,
    seen: Mutex<BTreeMap<String, Entry>>,
    dirty: AtomicBool,
}

impl DigestCache {
    /// Opens the cache in `cache_dir` for the model at `root` (canonical) hashed as
    /// `serialization` (the signed serialization's JSON: method, hash, shard size, ignored
    /// paths). Called before the model is walked: the run's start is what later entries
    /// are judged against.
    pub fn open(cache_dir: &Path, root: &Path, serialization: &str) -> DigestCache {
        Self::open_at(cache_dir, root, serialization, SystemTime::now())
    }

    fn open_at(
        cache_dir: &Path,
        root: &Path,
        serialization: &str,
        started: SystemTime,
    ) -> DigestCache {
        let root = root.to_string_lossy().into_owned();
        let id = format!("{root}\0{serialization}");
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, id.as_bytes());
        let mut cache = DigestCache {
            dir: cache_dir.join(SUBDIR),
            file_name: format!("{}{SUFFIX}", &hex::encode(digest.as_ref())[..32]),
            root,
            serialization: serialization.to_string(),
            started_ns: started
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64),
            state: CacheState::Empty,
            old: Mutex::new(HashMap::new()),
            seen: Mutex::new(BTreeMap::new()),
            dirty: AtomicBool::new(false),
        };
        cache.state = match private_dir(&cache.dir) {
            Err(why) => CacheState::Unusable(why),
            Ok(()) => cache.load(),
        };
        match &cache.state {
            CacheState::Ignored(why) => {
                tracing::warn!(dir = %cache.dir.display(), reason = %why, "model digest cache file ignored; every file is hashed")
            }
            CacheState::Unusable(why) => {
                tracing::warn!(dir = %cache.dir.display(), reason = %why, "model digest cache not used")
            }
            _ => {}
        }
        cache
    }

    fn load(&mut self) -> CacheState {
        let path = self.dir.join(&self.file_name);
        let body = match crate::sealed::read(&path, MAGIC, "model digest cache", MAX_FILE_LEN) {
            Ok(None) => return CacheState::Empty,
            Ok(Some(b)) => b,
            Err(e) => return CacheState::Ignored(e.to_string()),
        };
        let body: Body<String, HashMap<String, Entry>> = match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return CacheState::Ignored(format!("{}: {e}", path.display())),
        };
        if body.root != self.root || body.serialization != self.serialization {
            return CacheState::Ignored(format!(
                "{} was recorded for {:?} ({}), not {:?} ({})",
                path.display(),
                body.root,
                body.serialization,
                self.root,
                self.serialization
            ));
        }
        let loaded = body.entries.len();
        self.old = Mutex::new(body.entries);
        CacheState::Loaded(loaded)
    }

    /// What the cache held when opened.
    pub fn state(&self) -> &CacheState {
        &self.state
    }

    /// The digests (one per piece, in order) recorded for the file `name` if its stamp,
    /// as the walk read it, still matches and the entry can be trusted. Each entry is
    /// looked up once.
    pub fn lookup(&self, name: &str, stamp: &Stamp) -> Option<Vec<Vec<u8>>> {
        let (name, entry) = self.old.lock().expect("cache entries").remove_entry(name)?;
        if !entry.trusted_for(stamp) {
            return None;
        }
        let digests = entry
            .digests
            .iter()
            .map(|d| hex::decode(d))
            .collect::<Option<Vec<_>>>()?;
        self.seen.lock().expect("cache entries").insert(name, entry);
        Some(digests)
    }

    /// Records the digests of the file `name`, hashed after the walk read `stamp`.
    pub fn record(&self, name: &str, stamp: &Stamp, digests: &[Vec<u8>]) {
        let entry = Entry {
            stamp: stamp.clone(),
            recorded_at_ns: self.started_ns,
            digests: digests.iter().map(|d| hex::encode(d)).collect(),
        };
        self.seen
            .lock()
            .expect("cache entries")
            .insert(name.to_string(), entry);
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Writes what was looked up or recorded this run (entries of files not seen are
    /// dropped), unless nothing changed; then removes the oldest cache files beyond
    /// [`MAX_MODELS`].
    pub fn save(&self) -> std::io::Result<()> {
        if matches!(self.state, CacheState::Unusable(_)) {
            return Ok(());
        }
        let seen = self.seen.lock().expect("cache entries");
        let unchanged = !self.dirty.load(Ordering::Relaxed)
            && matches!(self.state, CacheState::Loaded(n) if n == seen.len());
        if unchanged {
            return Ok(());
        }
        let body = Body {
            root: self.root.as_str(),
            serialization: self.serialization.as_str(),
            entries: &*seen,
        };
        let mut out = Capped(Vec::new());
        serde_json::to_writer(&mut out, &body).map_err(|_| {
            std::io::Error::other(format!(
                "{} entries take more than the {MAX_FILE_LEN} bytes a cache file may hold",
                body.entries.len(),
            ))
        })?;
        let bytes = out.0;
        crate::sealed::write(
            &self.dir,
            &self.file_name,
            MAGIC,
            &bytes,
            crate::sealed::Durability::Atomic,
        )?;
        evict(&self.dir, MAX_MODELS)
    }
}

/// A buffer that refuses to grow past [`MAX_FILE_LEN`]: a cache too large to keep is
/// given up while it is written, not after it is held whole.
struct Capped(Vec<u8>);

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if (self.0.len() + buf.len()) as u64 > MAX_FILE_LEN {
            return Err(std::io::Error::other("over MAX_FILE_LEN"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Creates `dir` 0700 and checks that it is ours alone: owned by this process's user and
/// writable by no one else (whoever can write it could plant digests).
fn private_dir(dir: &Path) -> Result<(), String> {
    crate::sealed::create_private_dir(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
    let me = std::fs::metadata("/proc/self").map(|m| m.uid());
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if me.as_ref().ok() != Some(&meta.uid()) {
        return Err(format!(
            "{} is owned by uid {}, not by this process",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by its group or others (mode {:o})",
            dir.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    Ok(())
}

/// Removes the least recently written cache files beyond `keep`.
fn evict(dir: &Path, keep: usize) -> std::io::Result<()> {
    let mut files: Vec<(SystemTime, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(SUFFIX))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if files.len() <= keep {
        return Ok(());
    }
    files.sort();
    for (_, path) in &files[..files.len() - keep] {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run that starts later than the racy margin after the files were written.
    fn later() -> SystemTime {
        SystemTime::now() + RACY_MARGIN + Duration::from_secs(1)
    }

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(model.join("w"), b"weights").unwrap();
        let cache = dir.path().join("cache");
        (dir, model, cache)
    }

    fn meta(p: &Path) -> Metadata {
        std::fs::metadata(p).unwrap()
    }

    fn stamp(p: &Path) -> Stamp {
        Stamp::of(&meta(p))
    }

    #[test]
    fn an_unchanged_file_is_found_and_a_rewritten_one_is_not() {
        let (_d, model, dir) = setup();
        let w = model.join("w");
        let c = DigestCache::open_at(&dir, &model, "files:sha256", later());
        assert_eq!(c.state(), &CacheState::Empty);
        assert_eq!(c.lookup("w", &stamp(&w)), None);
        c.record("w", &stamp(&w), &[vec![1; 32]]);
        c.save().unwrap();
        let c = DigestCache::open_at(&dir, &model, "files:sha256", later());
        assert_eq!(c.state(), &CacheState::Loaded(1));
        assert_eq!(c.lookup("w", &stamp(&w)), Some(vec![vec![1; 32]]));
        assert_eq!(c.lookup("other", &stamp(&w)), None);
        // Nothing recorded and everything found: the file is not rewritten.
        let file = dir.join(SUBDIR).join(&c.file_name);
        let written = meta(&file).modified().unwrap();
        c.save().unwrap();
        assert_eq!(meta(&file).modified().unwrap(), written);
        // Same size, same mtime put back: the ctime still moved.
        let before = meta(&w);
        std::fs::write(&w, b"WEIGHTS").unwrap();
        let f = std::fs::File::options().write(true).open(&w).unwrap();
        f.set_modified(before.modified().unwrap()).unwrap();
        assert_eq!(meta(&w).modified().unwrap(), before.modified().unwrap());
        let c = DigestCache::open_at(&dir, &model, "files:sha256", later());
        assert_eq!(c.state(), &CacheState::Loaded(1));
        assert_eq!(c.lookup("w", &stamp(&w)), None);
    }

    #[test]
    fn a_cache_too_large_to_keep_is_given_up_while_it_is_written() {
        let (_d, model, dir) = setup();
        let w = stamp(&model.join("w"));
        let c = DigestCache::open_at(&dir, &model, "files:sha256", later());
        // About 250 bytes of JSON each: 40 000 entries are over the 8 MiB a file may hold.
        for i in 0..40_000 {
            c.record(&format!("layer-{i:06}.bin"), &w, &[vec![7; 32]]);
        }
        let e = c.save().unwrap_err().to_string();
        assert!(
            e.contains("40000 entries take more than the 8388608 bytes"),
            "{e}"
        );
        assert!(!dir.join(SUBDIR).join(&c.file_name).exists());
        let mut out = Capped(Vec::new());
        use std::io::Write as _;
        out.write_all(&vec![0; MAX_FILE_LEN as usize]).unwrap();
        assert!(out.write_all(b"x").is_err());
    }

    #[test]
    fn an_entry_recorded_in_the_files_own_timestamp_tick_is_not_trusted() {
        let (_d, model, dir) = setup();
        let w = model.join("w");
        let c = DigestCache::open(&dir, &model, "files:sha256");
        c.record("w", &stamp(&w), &[vec![1; 32]]);
        c.save().unwrap();
        let c = DigestCache::open(&dir, &model, "files:sha256");
        assert_eq!(c.state(), &CacheState::Loaded(1));
        assert_eq!(c.lookup("w", &stamp(&w)), None);
    }

    #[test]
    fn a_damaged_or_foreign_file_is_ignored_whole() {
        let (_d, model, dir) = setup();
        let w = model.join("w");
        let c = DigestCache::open_at(&dir, &model, "files:sha256", later());
        c.record("w", &stamp(&w), &[vec![1; 32]]);
        c.save().unwrap();
        let file = dir.join(SUBDIR).join(&c.file_name);
        let good = std::fs::read(&file).unwrap();
        let mut bad = good.clone();
        let i = bad.len() - 3;
        bad[i] ^= 1;
        std::fs::write(&file, &bad).unwrap();
        let c = DigestCache::open_at(&dir, &model, "files:sha256", later());
        assert!(
            matches!(c.state(), CacheState::Ignored(w) if w.contains("checksum mismatch")),
            "{:?}",
            c.state()
        );
        assert_eq!(c.lookup("w", &stamp(&w)), None);
        // Another serialization of the same root is another file; a file copied over
        // from another model is refused by what it says it is for.
        let other = DigestCache::open_at(&dir, &model, "shards:sha256:1000", later());
        assert_eq!(other.state(), &CacheState::Empty);
        std::fs::write(dir.join(SUBDIR).join(&other.file_name), &good).unwrap();
        let other = DigestCache::open_at(&dir, &model, "shards:sha256:1000", later());
        assert!(
            matches!(other.state(), CacheState::Ignored(w) if w.contains("recorded for")),
            "{:?}",
            other.state()
        );
    }

    #[test]
    fn a_directory_others_can_write_is_not_used() {
        let (_d, model, dir) = setup();
        std::fs::create_dir_all(dir.join(SUBDIR)).unwrap();
        std::fs::set_permissions(dir.join(SUBDIR), std::fs::Permissions::from_mode(0o777)).unwrap();
        let c = DigestCache::open_at(&dir, &model, "files:sha256", later());
        assert!(
            matches!(c.state(), CacheState::Unusable(w) if w.contains("mode 777")),
            "{:?}",
            c.state()
        );
        c.record("w", &stamp(&model.join("w")), &[vec![1; 32]]);
        c.save().unwrap();
        assert_eq!(std::fs::read_dir(dir.join(SUBDIR)).unwrap().count(), 0);
    }

    #[test]
    fn at_most_max_models_files_are_kept() {
        let (_d, model, dir) = setup();
        for i in 0..MAX_MODELS + 3 {
            let c = DigestCache::open_at(&dir, &model, &format!("s{i}"), later());
            c.record("w", &stamp(&model.join("w")), &[vec![1; 32]]);
            c.save().unwrap();
        }
        let n = std::fs::read_dir(dir.join(SUBDIR)).unwrap().count();
        assert_eq!(n, MAX_MODELS);
    }
}
