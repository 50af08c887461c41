//! The digests an OMS serialization records, and how a file is cut into the pieces they
//! cover.
//!
//! Two hashes, as `model_signing` 1.1.1 offers them for both serializations: `sha256`
//! (aws-lc, SHA-NI where the CPU has it) and `blake2b` (BLAKE2b-512, the library's
//! `hashing_algorithm="blake2"`, from the `blake2` crate). Two layouts: `files` hashes
//! each file whole; `shards` cuts each file into `shard_size`-byte pieces (the last one
//! shorter, none at all for an empty file), each hashed on its own, so one large file is
//! hashed by several cores at once.

use std::num::NonZeroU64;

use aws_lc_rs::digest;
use blake2::Digest as _;

/// A hash the manifest may name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Algorithm {
    #[default]
    Sha256,
    /// BLAKE2b with a 64-byte digest (Python's `hashlib.blake2b()`).
    Blake2b,
}

impl Algorithm {
    /// The name the manifest's `hash_type` uses.
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Blake2b => "blake2b",
        }
    }

    /// The algorithm a manifest's `hash_type` names, if Aegis has it.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        [Algorithm::Sha256, Algorithm::Blake2b]
            .into_iter()
            .find(|a| a.name() == name)
    }

    /// Bytes in one digest.
    pub const fn digest_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Blake2b => 64,
        }
    }

    /// A fresh streaming hasher.
    pub fn hasher(self) -> Hasher {
        match self {
            Algorithm::Sha256 => Hasher::Sha256(digest::Context::new(&digest::SHA256)),
            Algorithm::Blake2b => Hasher::Blake2b(Box::default()),
        }
    }
}

/// One digest in progress.
pub enum Hasher {
    Sha256(digest::Context),
    Blake2b(Box<blake2::Blake2b512>),
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(c) => c.update(data),
            Hasher::Blake2b(c) => c.update(data),
        }
    }

    pub fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Sha256(c) => c.finish().as_ref().to_vec(),
            Hasher::Blake2b(c) => c.finalize().to_vec(),
        }
    }
}

/// A byte range of a file to hash: `[start, end)`, or to the end of the file when `end`
/// is `None` (the `files` layout reads until EOF, as upstream does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Piece {
    pub start: u64,
    pub end: Option<u64>,
}

/// How a model's files become digests: the hash, and the shard size (`None`: `files`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Layout {
    pub algorithm: Algorithm,
    pub shard_size: Option<NonZeroU64>,
}

impl Layout {
    /// How many pieces a file of `size` bytes has.
    pub fn piece_count(&self, size: u64) -> u64 {
        match self.shard_size {
            None => 1,
            Some(s) => size.div_ceil(s.get()),
        }
    }

    /// The pieces of a file of `size` bytes, in file order (upstream's `_endpoints`).
    pub fn pieces(&self, size: u64) -> impl Iterator<Item = Piece> {
        let (count, step) = match self.shard_size {
            None => (1, 0),
            Some(s) => (size.div_ceil(s.get()), s.get()),
        };
        let sharded = self.shard_size.is_some();
        (0..count).map(move |i| Piece {
            start: i * step,
            end: sharded.then(|| ((i + 1) * step).min(size)),
        })
    }

    /// Whether `digests` can be the digests of a file of `size` bytes (a digest cache
    /// entry is used only if so).
    pub fn fits(&self, size: u64, digests: &[Vec<u8>]) -> bool {
        digests.len() as u64 == self.piece_count(size)
            && digests
                .iter()
                .all(|d| d.len() == self.algorithm.digest_len())
    }

    /// The `algorithm` every resource names: the hash, or `{hash}-sharded-{shard_size}`
    /// (upstream's `ShardedFileHasher.digest_name`).
    pub fn resource_algorithm(&self) -> String {
        match self.shard_size {
            None => self.algorithm.name().to_string(),
            Some(s) => format!("{}-sharded-{s}", self.algorithm.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(size: u64) -> Layout {
        Layout {
            algorithm: Algorithm::Sha256,
            shard_size: NonZeroU64::new(size),
        }
    }

    #[test]
    fn shards_follow_upstream_endpoints() {
        let ends = |l: Layout, size| -> Vec<(u64, Option<u64>)> {
            l.pieces(size).map(|p| (p.start, p.end)).collect()
        };
        assert_eq!(
            ends(shards(2), 9),
            [
                (0, Some(2)),
                (2, Some(4)),
                (4, Some(6)),
                (6, Some(8)),
                (8, Some(9))
            ]
        );
        assert_eq!(ends(shards(2), 8).len(), 4);
        assert_eq!(ends(shards(3), 0), []);
        assert_eq!(ends(Layout::default(), 0), [(0, None)]);
        assert_eq!(shards(5).piece_count(11), 3);
        assert_eq!(shards(5).resource_algorithm(), "sha256-sharded-5");
        assert!(shards(5).fits(11, &[vec![0; 32], vec![0; 32], vec![0; 32]]));
        assert!(!shards(5).fits(11, &[vec![0; 32], vec![0; 32]]));
        assert!(!Layout::default().fits(1, &[vec![0; 64]]));
    }

    #[test]
    fn blake2b_is_pythons_hashlib_blake2b() {
        let mut h = Algorithm::Blake2b.hasher();
        h.update(b"abc");
        // hashlib.blake2b(b"abc").hexdigest(), RFC 7693 appendix A.
        assert_eq!(
            super::super::hex::encode(&h.finish()),
            "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d1\
             7d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923"
        );
        assert_eq!(Algorithm::from_name("blake2b"), Some(Algorithm::Blake2b));
        assert_eq!(Algorithm::from_name("blake3"), None);
    }
}
