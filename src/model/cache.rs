//! The digest cache for incremental model verification (issue 19): per model root and
//! serialization, the digests of each file keyed by what user space cannot forge
//! cheaply (device, inode, size, mtime and ctime in nanoseconds).
//!
//! This is the interface the hashing code calls; the store behind it is being built.
//! Until then nothing is ever found and nothing is kept.

use std::fs::Metadata;
use std::path::Path;

/// Digests of a model's files from earlier runs, for one root and one serialization.
#[derive(Debug, Default)]
pub struct DigestCache {}

impl DigestCache {
    /// Opens the cache in `dir` for the model at `root` (canonical) hashed as `serialization`
    /// (for example `shards:sha256:1000000000`). Must be called before the model is walked.
    pub fn open(_dir: &Path, _root: &Path, _serialization: &str) -> DigestCache {
        DigestCache {}
    }

    /// The digests (one per piece, in order) recorded for the file `name` if its metadata,
    /// as the walk read it, still matches and the entry can be trusted.
    pub fn lookup(&self, _name: &str, _meta: &Metadata) -> Option<Vec<Vec<u8>>> {
        None
    }

    /// Records the digests of the file `name`, hashed after the walk read `meta`.
    pub fn record(&self, _name: &str, _meta: &Metadata, _digests: Vec<Vec<u8>>) {}

    /// Writes what was looked up or recorded this run; entries of files not seen are dropped.
    pub fn save(&self) -> std::io::Result<()> {
        Ok(())
    }
}
