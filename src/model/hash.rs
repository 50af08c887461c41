//! Hashing a model directory the way OMS serializations do: the digests of each regular
//! file's pieces ([`super::digest::Layout`]: the whole file for `files`, each shard for
//! `shards`), the file named by its path relative to the model root with `/` separators.
//!
//! The walk follows the upstream tool's rules: ignored paths (relative to the root) are
//! skipped with everything below them, a symbolic link is refused unless links are
//! allowed (then a link to a file is hashed as its target's content, and a link to a
//! directory is not descended into, as Python's `Path.glob("**/*")` does), and anything
//! that is neither a regular file nor a directory is refused. Pieces are hashed in parallel,
//! largest first (with `files` a file is one piece; with `shards` one large file keeps
//! every core busy), each streamed through one fixed buffer per worker. Memory is bounded
//! by the number of workers and by `max_resources` ([`MAX_RESOURCES`], or the sidecar's
//! lower bound), whatever the model's size: the walk keeps a name, a size and a stamp
//! per file.
//!
//! With a digest cache ([`hash_model_cached`], used by verification), a file whose stamp
//! the cache still trusts is not read; the others are hashed and recorded with the
//! metadata the walk read before hashing them.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::cache::{DigestCache, Stamp};
use super::digest::{Layout, Piece};

/// Bytes read at once per worker: big enough for few syscalls, small enough to stay in
/// the core's cache between the copy and the hash.
const READ_BUFFER: usize = 256 * 1024;

/// Alignment of the read buffer. The kernel copies from the page cache with `rep movsb`,
/// which runs 4-5 times slower into a destination that is not cache-line aligned (as
/// malloc's 16-byte-aligned blocks are): measured 0.09 s against 0.44 s for 805 MB.
const BUFFER_ALIGN: usize = 4096;

/// The most files, and the most pieces, a model may have: beyond it hashing is refused
/// before anything is read. It bounds the walk's memory (a few hundred bytes per file) and
/// the work a bundle can ask for (a 1-byte `shard_size` would otherwise make one digest
/// per byte). A signature file of at most `MAX_BUNDLE_BYTES` lists fewer: about 55 000
/// SHA-256 resources with short names.
pub const MAX_RESOURCES: usize = 65_536;

/// One hashed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// Path relative to the model root, `/`-separated (`.` when the model is one file).
    pub name: String,
    /// The size the walk read, which placed the shards.
    pub size: u64,
    /// One digest per piece, in file order (none for an empty file cut into shards).
    pub digests: Vec<Vec<u8>>,
}

/// What to hash and how.
#[derive(Debug, Clone)]
pub struct HashOptions {
    /// Paths relative to the model root, each as its normal components; a file under
    /// any of them is not hashed.
    pub ignore: Vec<Vec<String>>,
    /// Follow symbolic links instead of refusing them.
    pub allow_symlinks: bool,
    /// The hash and how files are cut into pieces.
    pub layout: Layout,
    /// Worker threads; 0: one per available core.
    pub threads: usize,
    /// Draw a progress bar on stderr (only when stderr is a terminal).
    pub progress: bool,
    /// The most files, and the most pieces, hashed for one model: [`MAX_RESOURCES`], or
    /// less where memory is tighter (the sidecar's `AEGIS_MODEL_MAX_RESOURCES`).
    pub max_resources: usize,
}

impl Default for HashOptions {
    fn default() -> Self {
        HashOptions {
            ignore: Vec::new(),
            allow_symlinks: false,
            layout: Layout::default(),
            threads: 0,
            progress: false,
            max_resources: MAX_RESOURCES,
        }
    }
}

/// Why a model could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The model holds something the format refuses (a symlink, a device, a broken link).
    #[error("{0}")]
    Refused(String),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> HashError + '_ {
    move |source| HashError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A file found by the walk, not yet hashed, with the stamp the walk read (what the digest
/// cache compares). Kept small: the walk holds one per file, up to [`MAX_RESOURCES`].
struct Job {
    name: String,
    size: u64,
    stamp: Stamp,
}

impl Job {
    fn new(name: String, meta: &Metadata) -> Job {
        Job {
            name,
            size: meta.len(),
            stamp: Stamp::of(meta),
        }
    }

    /// The file's path: the model root itself for a one-file model (named `.`).
    fn path(&self, root: &Path) -> PathBuf {
        match self.name.as_str() {
            "." => root.to_path_buf(),
            name => root.join(name),
        }
    }
}

/// A hashed model.
#[derive(Debug, Clone)]
pub struct Hashed {
    /// Sorted as the manifest orders them (see [`super::manifest::sort_resources`]).
    pub files: Vec<FileDigest>,
    /// The model's size: bytes read, plus the sizes of files taken from the digest cache.
    pub bytes: u64,
    /// How many of `files` came from the digest cache instead of being read.
    pub from_cache: usize,
}

/// Hashes every file of the model at `root`.
pub fn hash_model(root: &Path, opts: &HashOptions) -> Result<Hashed, HashError> {
    let jobs = walk(root, opts)?;
    hash_jobs(root, jobs, opts)
}

/// Hashes the model at `root` through the digest cache that `open_cache` opens (on a
/// second thread, while the model is walked): files whose stamp it still trusts are not
/// read, the others are hashed and recorded. Returns the cache for the caller to save.
pub fn hash_model_cached(
    root: &Path,
    opts: &HashOptions,
    open_cache: impl FnOnce() -> DigestCache + Send,
) -> Result<(Hashed, DigestCache), HashError> {
    let (jobs, cache) = std::thread::scope(|scope| {
        let opening = scope.spawn(open_cache);
        let jobs = walk(root, opts);
        (jobs, opening.join().expect("opening the digest cache"))
    });
    let (mut known, mut cached_bytes, mut to_hash) = (Vec::new(), 0, Vec::new());
    for job in jobs? {
        let cached = cache.lookup(&job.name, &job.stamp);
        match cached.filter(|d| opts.layout.fits(job.size, d)) {
            Some(digests) => {
                cached_bytes += job.size;
                known.push(FileDigest {
                    name: job.name,
                    size: job.size,
                    digests,
                });
            }
            None => to_hash.push(job),
        }
    }
    let stamps: HashMap<String, Stamp> = to_hash
        .iter()
        .map(|j| (j.name.clone(), j.stamp.clone()))
        .collect();
    let mut hashed = hash_jobs(root, to_hash, opts)?;
    for f in &hashed.files {
        cache.record(&f.name, &stamps[&f.name], &f.digests);
    }
    drop(stamps);
    hashed.from_cache = known.len();
    hashed.bytes += cached_bytes;
    hashed.files.append(&mut known);
    super::manifest::sort_resources(&mut hashed.files, |d| &d.name);
    Ok((hashed, cache))
}

/// Whether the relative path `rel` lies under one of the `ignore` paths.
pub fn ignored(rel: &[String], ignore: &[Vec<String>]) -> bool {
    ignore.iter().any(|i| rel.starts_with(i))
}

fn walk(root: &Path, opts: &HashOptions) -> Result<Vec<Job>, HashError> {
    let meta = std::fs::symlink_metadata(root).map_err(io_error(root))?;
    let mut jobs = Vec::new();
    if meta.file_type().is_symlink() && !opts.allow_symlinks {
        return Err(symlink_refused(root));
    }
    let meta = std::fs::metadata(root).map_err(io_error(root))?;
    if meta.is_file() {
        jobs.push(Job::new(".".into(), &meta));
        return Ok(jobs);
    }
    if !meta.is_dir() {
        return Err(not_file_or_dir(root));
    }
    walk_dir(root, &mut Vec::new(), opts, &mut jobs)?;
    Ok(jobs)
}

fn too_many(max: usize, what: &str) -> HashError {
    HashError::Refused(format!(
        "the model has more than {max} {what}, more than this verification hashes for one model"
    ))
}

fn symlink_refused(path: &Path) -> HashError {
    HashError::Refused(format!(
        "{} is a symbolic link; pass --allow-symlinks to follow links",
        path.display()
    ))
}

fn not_file_or_dir(path: &Path) -> HashError {
    HashError::Refused(format!(
        "{} is neither a regular file nor a directory",
        path.display()
    ))
}

fn walk_dir(
    dir: &Path,
    rel: &mut Vec<String>,
    opts: &HashOptions,
    jobs: &mut Vec<Job>,
) -> Result<(), HashError> {
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(String::from) else {
            return Err(HashError::Refused(format!(
                "{}: the file name is not UTF-8, which the manifest cannot name",
                path.display()
            )));
        };
        rel.push(name);
        if !ignored(rel, &opts.ignore) {
            visit(&path, rel, opts, jobs, &entry)?;
        }
        rel.pop();
    }
    Ok(())
}

fn visit(
    path: &Path,
    rel: &mut Vec<String>,
    opts: &HashOptions,
    jobs: &mut Vec<Job>,
    entry: &std::fs::DirEntry,
) -> Result<(), HashError> {
    let file_type = entry.file_type().map_err(io_error(path))?;
    if file_type.is_dir() {
        return walk_dir(path, rel, opts, jobs);
    }
    let meta = if file_type.is_symlink() {
        if !opts.allow_symlinks {
            return Err(symlink_refused(path));
        }
        // A broken link is an I/O error; a link to a directory is not descended into.
        let target = std::fs::metadata(path).map_err(io_error(path))?;
        if target.is_dir() {
            return Ok(());
        }
        target
    } else {
        // Relative to the open directory (`statx` on its descriptor): no path lookup.
        entry.metadata().map_err(io_error(path))?
    };
    if !meta.is_file() {
        return Err(not_file_or_dir(path));
    }
    if jobs.len() >= opts.max_resources {
        return Err(too_many(opts.max_resources, "files"));
    }
    jobs.push(Job::new(rel.join("/"), &meta));
    Ok(())
}

/// One piece of one file, for a worker.
struct Work {
    job: usize,
    index: usize,
    piece: Piece,
    len: u64,
}

/// Every piece of every job, largest first so that one big piece does not start last;
/// refused past `max` pieces before anything is read.
fn plan(jobs: &[Job], layout: &Layout, max: usize) -> Result<Vec<Work>, HashError> {
    let total: u64 = jobs.iter().map(|j| layout.piece_count(j.size)).sum();
    if total > max as u64 {
        return Err(too_many(max, "shards"));
    }
    let mut work = Vec::with_capacity(total as usize);
    for (job, j) in jobs.iter().enumerate() {
        for (index, piece) in layout.pieces(j.size).enumerate() {
            let len = piece.end.unwrap_or(j.size) - piece.start;
            work.push(Work {
                job,
                index,
                piece,
                len,
            });
        }
    }
    work.sort_by_key(|w| std::cmp::Reverse(w.len));
    Ok(work)
}

/// Hashes the pieces of the jobs (files under `root`) on a pool of scoped threads.
fn hash_jobs(root: &Path, jobs: Vec<Job>, opts: &HashOptions) -> Result<Hashed, HashError> {
    let work = plan(&jobs, &opts.layout, opts.max_resources)?;
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        opts.threads
    }
    .clamp(1, work.len().max(1));
    let total: u64 = work.iter().map(|w| w.len).sum();
    let done = AtomicU64::new(0);
    let show = opts.progress && std::io::stderr().is_terminal();
    let digests = std::thread::scope(|scope| {
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        if show {
            let done = &done;
            scope.spawn(move || progress_bar(total, done, &stop_rx));
        }
        let digests = run_pool(root, &jobs, &work, opts, threads, &done);
        drop(stop_tx);
        digests
    })?;
    // Not `collect`: it would reuse the jobs' (larger) allocation for the files for as
    // long as they live.
    let mut files = Vec::with_capacity(jobs.len());
    files.extend(jobs.into_iter().map(|j| FileDigest {
        digests: vec![Vec::new(); opts.layout.piece_count(j.size) as usize],
        name: j.name,
        size: j.size,
    }));
    for (w, digest) in work.iter().zip(digests) {
        files[w.job].digests[w.index] = digest;
    }
    super::manifest::sort_resources(&mut files, |d| &d.name);
    Ok(Hashed {
        files,
        bytes: done.into_inner(),
        from_cache: 0,
    })
}

/// Hashes `work` on `threads` workers, each with one aligned buffer; the digests come back
/// in `work`'s order. The first error stops every worker.
fn run_pool(
    root: &Path,
    jobs: &[Job],
    work: &[Work],
    opts: &HashOptions,
    threads: usize,
    done: &AtomicU64,
) -> Result<Vec<Vec<u8>>, HashError> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    let results = Mutex::new(vec![Vec::new(); work.len()]);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut raw = vec![0u8; READ_BUFFER + BUFFER_ALIGN];
                let start = raw.as_ptr().align_offset(BUFFER_ALIGN);
                let buf = &mut raw[start..start + READ_BUFFER];
                let mut mine = Vec::new();
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(w) = work.get(i) else { break };
                    let path = jobs[w.job].path(root);
                    match hash_piece(&path, w.piece, opts.layout, buf, done) {
                        Ok(d) => mine.push((i, d)),
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            first_error.lock().expect("error slot").get_or_insert(e);
                        }
                    }
                }
                let mut results = results.lock().expect("results");
                for (i, d) in mine {
                    results[i] = d;
                }
            });
        }
    });
    match first_error.into_inner().expect("error slot") {
        Some(e) => Err(e),
        None => Ok(results.into_inner().expect("results")),
    }
}

/// Streams one piece of a file through the layout's hash with the worker's buffer: from
/// `start` to `end`, or to the end of the file (a file that shrank since the walk hashes
/// short, and then does not match).
fn hash_piece(
    path: &Path,
    piece: Piece,
    layout: Layout,
    buf: &mut [u8],
    done: &AtomicU64,
) -> Result<Vec<u8>, HashError> {
    let mut file = File::open(path).map_err(io_error(path))?;
    if piece.start > 0 {
        file.seek(SeekFrom::Start(piece.start))
            .map_err(io_error(path))?;
    }
    let mut left = piece.end.map(|end| end - piece.start);
    let mut hasher = layout.algorithm.hasher();
    loop {
        let want = left.map_or(buf.len(), |l| l.min(buf.len() as u64) as usize);
        if want == 0 {
            break;
        }
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(path)(e)),
        };
        hasher.update(&buf[..n]);
        done.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(l) = left.as_mut() {
            *l -= n as u64;
        }
    }
    Ok(hasher.finish())
}

/// Redraws `hashing  x / y  (p%)  rate` on stderr ten times a second until `stop` closes.
fn progress_bar(total: u64, done: &AtomicU64, stop: &std::sync::mpsc::Receiver<()>) {
    let start = Instant::now();
    let mut err = std::io::stderr();
    loop {
        let finished = !matches!(
            stop.recv_timeout(Duration::from_millis(100)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        );
        let d = done.load(Ordering::Relaxed);
        let pct = (d * 100).checked_div(total).unwrap_or(100).min(100);
        let width = 30u64;
        let filled = (pct * width / 100) as usize;
        let rate = d as f64 / start.elapsed().as_secs_f64().max(1e-3);
        let _ = write!(
            err,
            "\r\x1b[Khashing [{}{}] {} / {} ({pct}%) {}/s",
            "#".repeat(filled),
            "-".repeat(width as usize - filled),
            human_bytes(d as f64),
            human_bytes(total as f64),
            human_bytes(rate),
        );
        if finished {
            let _ = writeln!(err);
            return;
        }
        let _ = err.flush();
    }
}

/// `1.5 GiB`-style sizes.
pub fn human_bytes(mut n: f64) -> String {
    for unit in ["B", "KiB", "MiB", "GiB"] {
        if n < 1024.0 {
            return format!("{n:.1} {unit}");
        }
        n /= 1024.0;
    }
    format!("{n:.1} TiB")
}

/// A relative path given by a user or a bundle as normal components, or `None` when it
/// leaves the model (`..` above the root, or absolute).
pub fn relative_components(p: &Path) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s.to_str()?.to_string()),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::digest::Algorithm;

    fn digest_of(algorithm: Algorithm, data: &[u8]) -> Vec<u8> {
        let mut h = algorithm.hasher();
        h.update(data);
        h.finish()
    }

    fn sha(data: &[u8]) -> Vec<u8> {
        digest_of(Algorithm::Sha256, data)
    }

    #[test]
    fn hashes_every_file_sorted_by_components_skipping_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/deep")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::write(root.join("a/deep/x"), b"x").unwrap();
        std::fs::write(root.join("a-c"), b"y").unwrap();
        std::fs::write(root.join(".git/HEAD"), b"ref").unwrap();
        let big = vec![7u8; 3 * READ_BUFFER + 5];
        std::fs::write(root.join("big"), &big).unwrap();
        let opts = HashOptions {
            ignore: vec![vec![".git".into()]],
            threads: 3,
            ..HashOptions::default()
        };
        let got = hash_model(root, &opts).unwrap().files;
        let names: Vec<_> = got.iter().map(|d| d.name.as_str()).collect();
        // "a/deep/x" sorts before "a-c": paths compare by component, as upstream's.
        assert_eq!(names, ["a/deep/x", "a-c", "big"]);
        assert_eq!(got[2].digests, [sha(&big)]);
        assert_eq!(got[0].digests, [sha(b"x")]);
    }

    #[test]
    fn symlinks_are_refused_unless_allowed_and_linked_directories_not_entered() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::write(root.join("d/f"), b"data").unwrap();
        std::os::unix::fs::symlink("d/f", root.join("link")).unwrap();
        let err = hash_model(root, &HashOptions::default()).unwrap_err();
        assert!(err.to_string().contains("--allow-symlinks"), "{err}");
        let opts = HashOptions {
            allow_symlinks: true,
            ..HashOptions::default()
        };
        // A link to a directory (here a loop) is not descended into, as upstream's glob.
        std::os::unix::fs::symlink("..", root.join("d/up")).unwrap();
        let got = hash_model(root, &opts).unwrap().files;
        let names: Vec<_> = got.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["d/f", "link"]);
        assert_eq!(got[0].digests, got[1].digests);
        std::os::unix::fs::symlink("missing", root.join("broken")).unwrap();
        assert!(matches!(
            hash_model(root, &opts).unwrap_err(),
            HashError::Io { .. }
        ));
    }

    #[test]
    fn a_single_file_model_is_named_dot_and_unreadable_paths_are_io_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.bin");
        std::fs::write(&f, b"weights").unwrap();
        let got = hash_model(&f, &HashOptions::default()).unwrap();
        assert_eq!((got.files[0].name.as_str(), got.bytes), (".", 7));
        let err = hash_model(&dir.path().join("missing"), &HashOptions::default()).unwrap_err();
        assert!(matches!(err, HashError::Io { .. }), "{err}");
    }

    #[test]
    fn shards_are_hashed_in_pieces_and_their_count_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Not a multiple of the shard size or of the read buffer: the last shard is short.
        let big: Vec<u8> = (0..(2 * READ_BUFFER + 7)).map(|i| i as u8).collect();
        std::fs::write(root.join("big"), &big).unwrap();
        std::fs::write(root.join("empty"), b"").unwrap();
        let shard = READ_BUFFER + 3;
        let layout = Layout {
            algorithm: Algorithm::Blake2b,
            shard_size: std::num::NonZeroU64::new(shard as u64),
        };
        let opts = HashOptions {
            layout,
            threads: 2,
            ..HashOptions::default()
        };
        let got = hash_model(root, &opts).unwrap();
        let want: Vec<Vec<u8>> = big
            .chunks(shard)
            .map(|c| digest_of(Algorithm::Blake2b, c))
            .collect();
        assert_eq!(want.len(), 3);
        assert_eq!(
            (got.files[0].name.as_str(), &got.files[0].digests),
            ("big", &want)
        );
        // An empty file has no shard (upstream lists no resource for it).
        assert_eq!(
            (got.files[1].name.as_str(), got.files[1].digests.len()),
            ("empty", 0)
        );
        assert_eq!(got.bytes, big.len() as u64);

        // One byte per shard: more pieces than Aegis hashes, refused before reading.
        std::fs::write(root.join("big"), vec![0u8; MAX_RESOURCES + 1]).unwrap();
        let tiny = HashOptions {
            layout: Layout {
                shard_size: std::num::NonZeroU64::new(1),
                ..layout
            },
            ..HashOptions::default()
        };
        let err = hash_model(root, &tiny).unwrap_err();
        assert!(err.to_string().contains("more than 65536 shards"), "{err}");
    }

    #[test]
    fn relative_components_stay_inside() {
        assert_eq!(
            relative_components(Path::new("./a/b/../c/")),
            Some(vec!["a".to_string(), "c".to_string()])
        );
        assert_eq!(relative_components(Path::new("../x")), None);
        assert_eq!(relative_components(Path::new("/etc")), None);
    }
}
