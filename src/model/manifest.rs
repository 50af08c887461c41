//! The OMS manifest and the in-toto statement that carries it, as `model_signing` 1.1.1
//! writes and reads them.
//!
//! The statement (`_type` `https://in-toto.io/Statement/v1`, `predicateType`
//! `https://model_signing/signature/v1.0`) holds one subject, named after the model
//! directory, whose `sha256` is SHA-256 over the concatenated raw digests of all
//! resources in manifest order, and a predicate with the `serialization` settings and
//! one `{name, algorithm, digest}` resource per file (`files`) or per file shard
//! (`shards`, named `path:start:end`, with the algorithm `{hash}-sharded-{shard_size}`).
//! Manifest order compares paths component by component (`a/b` before `a-c`), as Python's
//! `PurePosixPath` does, then shards by their offsets.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;

use aws_lc_rs::digest;
use serde::{Deserialize, Serialize};

use super::digest::{Algorithm, Layout};
use super::hash::FileDigest;
use super::hex;

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";
/// A digest per file.
pub const METHOD_FILES: &str = "files";
/// A digest per file shard.
pub const METHOD_SHARDS: &str = "shards";

/// Sorts items by their manifest name, component by component.
pub fn sort_resources<T>(items: &mut [T], name: impl Fn(&T) -> &str) {
    items.sort_by(|a, b| name(a).split('/').cmp(name(b).split('/')));
}

/// An in-toto Statement v1 as the predicate v1.0 lays it out (field order kept). Read
/// back, the resources' texts borrow from the payload: a manifest of many resources is
/// not copied before it is checked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Statement<'a> {
    #[serde(rename = "_type")]
    pub statement_type: String,
    pub subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    #[serde(borrow)]
    pub predicate: Predicate<'a>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Subject {
    pub name: String,
    pub digest: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Predicate<'a> {
    pub serialization: Serialization,
    #[serde(borrow)]
    pub resources: Vec<Resource<'a>>,
}

/// How the model was serialized into the manifest (upstream's field order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Serialization {
    pub method: String,
    pub hash_type: String,
    /// Bytes per shard (`shards` only). Written as an integer; read also as the float
    /// model_signing 1.1.1 writes (`1000000000.0`: its payload passes through a protobuf
    /// `Struct`, whose numbers are doubles), if it is a whole number.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole_bytes"
    )]
    pub shard_size: Option<u64>,
    pub allow_symlinks: bool,
    /// Paths relative to the model that were not hashed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_paths: Vec<String>,
}

impl Serialization {
    /// The serialization that `layout` writes.
    pub fn new(layout: Layout, allow_symlinks: bool, ignore_paths: Vec<String>) -> Self {
        Serialization {
            method: match layout.shard_size {
                None => METHOD_FILES,
                Some(_) => METHOD_SHARDS,
            }
            .into(),
            hash_type: layout.algorithm.name().into(),
            shard_size: layout.shard_size.map(NonZeroU64::get),
            allow_symlinks,
            ignore_paths,
        }
    }

    /// How to hash a model to reproduce this serialization, or why Aegis cannot.
    pub fn layout(&self) -> Result<Layout, StatementError> {
        let Some(algorithm) = Algorithm::from_name(&self.hash_type) else {
            return Err(StatementError(format!(
                "the model was hashed with {:?}; Aegis verifies \"sha256\" and \"blake2b\"",
                self.hash_type
            )));
        };
        let shard_size = match (self.method.as_str(), self.shard_size) {
            (METHOD_FILES, _) => None,
            (METHOD_SHARDS, Some(size)) => Some(NonZeroU64::new(size).ok_or_else(|| {
                StatementError("the shard size is 0; it must be positive".into())
            })?),
            (METHOD_SHARDS, None) => {
                return Err(StatementError(
                    "the serialization is \"shards\" without a shard_size".into(),
                ))
            }
            (other, _) => {
                return Err(StatementError(format!(
                    "the model was serialized with method {other:?}; Aegis verifies \"files\" and \"shards\""
                )))
            }
        };
        Ok(Layout {
            algorithm,
            shard_size,
        })
    }
}

/// A byte count written as a JSON integer or as a whole-valued float up to 2^53 (beyond,
/// a double no longer holds every integer).
fn whole_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    const EXACT: f64 = (1u64 << 53) as f64;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    match (n.as_u64(), n.as_f64()) {
        (Some(u), _) => Ok(Some(u)),
        (None, Some(f)) if f.fract() == 0.0 && (0.0..=EXACT).contains(&f) => Ok(Some(f as u64)),
        _ => Err(serde::de::Error::custom(format!(
            "shard_size {n} is not a whole number of bytes"
        ))),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(borrow)]
    pub algorithm: Cow<'a, str>,
    #[serde(borrow)]
    pub digest: Cow<'a, str>,
}

/// Why a statement cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StatementError(pub String);

/// What one digest covers: a file, or a shard `[start, end)` of one. Ordered as the
/// manifest lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceKey {
    pub path: String,
    pub shard: Option<(u64, u64)>,
}

impl Ord for ResourceKey {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.path.split('/').cmp(other.path.split('/'))).then(self.shard.cmp(&other.shard))
    }
}

impl PartialOrd for ResourceKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl ResourceKey {
    /// The resource's `name`: the path, or `path:start:end` for a shard.
    fn name(&self) -> String {
        match self.shard {
            None => self.path.clone(),
            Some((start, end)) => format!("{}:{start}:{end}", self.path),
        }
    }

    /// Reads a resource name back as `layout` writes it (`shards`: exactly three
    /// `:`-separated parts with decimal offsets, as upstream's parser requires).
    fn parse(name: &str, layout: &Layout) -> Result<ResourceKey, StatementError> {
        if layout.shard_size.is_none() {
            return Ok(ResourceKey {
                path: name.into(),
                shard: None,
            });
        }
        let offset = |s: &str| {
            s.parse::<u64>()
                .ok()
                .filter(|_| s.bytes().all(|b| b.is_ascii_digit()))
        };
        match name.split(':').collect::<Vec<_>>()[..] {
            [path, start, end] => match (offset(start), offset(end)) {
                (Some(start), Some(end)) if start < end => Ok(ResourceKey {
                    path: path.into(),
                    shard: Some((start, end)),
                }),
                _ => Err(StatementError(format!(
                    "resource {name:?} does not name a shard (path:start:end with start < end)"
                ))),
            },
            _ => Err(StatementError(format!(
                "resource {name:?} does not name a shard (expected path:start:end)"
            ))),
        }
    }
}

/// A model's manifest: each resource's digest, plus how it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub model_name: String,
    pub serialization: Serialization,
    pub resources: BTreeMap<ResourceKey, Vec<u8>>,
}

impl Manifest {
    /// The manifest of hashed files, each cut as `layout` cuts it (the digests are the
    /// pieces' in file order).
    pub fn new(
        model_name: String,
        serialization: Serialization,
        layout: &Layout,
        files: Vec<FileDigest>,
    ) -> Self {
        let resources = files
            .into_iter()
            .flat_map(|f| {
                let name = f.name;
                layout.pieces(f.size).zip(f.digests).map(move |(p, d)| {
                    let key = ResourceKey {
                        path: name.clone(),
                        shard: p.end.map(|end| (p.start, end)),
                    };
                    (key, d)
                })
            })
            .collect();
        Manifest {
            model_name,
            serialization,
            resources,
        }
    }

    /// The statement to sign, with resources in manifest order.
    pub fn to_statement(&self) -> Statement<'static> {
        let algorithm = self
            .serialization
            .layout()
            .map(|l| l.resource_algorithm())
            .unwrap_or_else(|_| self.serialization.hash_type.clone());
        let mut root = digest::Context::new(&digest::SHA256);
        let resources = self
            .resources
            .iter()
            .map(|(key, d)| {
                root.update(d);
                Resource {
                    name: key.name().into(),
                    algorithm: algorithm.clone().into(),
                    digest: hex::encode(d).into(),
                }
            })
            .collect();
        Statement {
            statement_type: STATEMENT_TYPE.into(),
            subject: vec![Subject {
                name: self.model_name.clone(),
                digest: BTreeMap::from([(
                    "sha256".to_string(),
                    hex::encode(root.finish().as_ref()),
                )]),
            }],
            predicate_type: PREDICATE_TYPE.into(),
            predicate: Predicate {
                serialization: self.serialization.clone(),
                resources,
            },
        }
    }

    /// The statement's JSON as the DSSE payload (pretty, like the upstream tool's).
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.to_statement()).expect("a statement serializes")
    }

    /// Reads a signed payload back, checking what the upstream verifier checks: the
    /// statement and predicate types, one subject whose digest matches the resources, a
    /// serialization Aegis can reproduce, and resources named and hashed as it says.
    pub fn from_payload(payload: &[u8]) -> Result<Manifest, StatementError> {
        let err = |m: String| Err(StatementError(m));
        let st: Statement = serde_json::from_slice(payload).map_err(|e| {
            StatementError(format!(
                "the signed payload is not an OMS in-toto statement: {e}"
            ))
        })?;
        if st.statement_type != STATEMENT_TYPE {
            return err(format!(
                "the signed payload's _type is {:?}, expected {STATEMENT_TYPE:?}",
                st.statement_type
            ));
        }
        if st.predicate_type != PREDICATE_TYPE {
            return err(format!(
                "the signed payload's predicateType is {:?}, expected {PREDICATE_TYPE:?}",
                st.predicate_type
            ));
        }
        let [subject] = st.subject.as_slice() else {
            return err(format!(
                "the statement has {} subjects, expected exactly one",
                st.subject.len()
            ));
        };
        let layout = st.predicate.serialization.layout()?;
        let algorithm = layout.resource_algorithm();
        let mut resources = BTreeMap::new();
        let mut root = digest::Context::new(&digest::SHA256);
        for r in &st.predicate.resources {
            let d = hex::decode(&r.digest)
                .filter(|d| r.algorithm == algorithm && d.len() == layout.algorithm.digest_len());
            let Some(d) = d else {
                return err(format!(
                    "resource {:?} has no {algorithm} digest ({:?}: {:?})",
                    r.name, r.algorithm, r.digest
                ));
            };
            root.update(&d);
            if resources
                .insert(ResourceKey::parse(&r.name, &layout)?, d)
                .is_some()
            {
                return err(format!("resource {:?} is listed twice", r.name));
            }
        }
        let computed = hex::encode(root.finish().as_ref());
        let claimed = subject.digest.get("sha256").map(String::as_str);
        if claimed != Some(computed.as_str()) {
            return err(format!(
                "the statement is inconsistent: the subject digest is {}, the resources hash to {computed}",
                claimed.unwrap_or("missing")
            ));
        }
        Ok(Manifest {
            model_name: subject.name.clone(),
            serialization: st.predicate.serialization,
            resources,
        })
    }

    /// The resources grouped by file, in manifest order.
    fn by_file(&self) -> Vec<FileResources<'_>> {
        let mut out: Vec<(&str, Vec<_>)> = Vec::new();
        for (key, d) in &self.resources {
            match out.last_mut() {
                Some((path, pieces)) if *path == key.path => pieces.push((key, d)),
                _ => out.push((&key.path, vec![(key, d)])),
            }
        }
        out
    }

    /// What differs between this (expected) manifest and the model's `actual` one, by
    /// file: `None` when they hold the same resources with the same digests.
    pub fn diff(&self, actual: &Manifest) -> Option<Differences> {
        let expected = self.by_file();
        let actual = actual.by_file();
        fn index<'a>(files: &[FileResources<'a>]) -> HashMap<&'a str, usize> {
            files
                .iter()
                .enumerate()
                .map(|(i, (p, _))| (*p, i))
                .collect()
        }
        let (in_expected, in_actual) = (index(&expected), index(&actual));
        let mut d = Differences::default();
        for (path, pieces) in &expected {
            match in_actual.get(*path) {
                None => d.missing.push(path.to_string()),
                Some(&i) if actual[i].1 != *pieces => d.changed.push(path.to_string()),
                Some(_) => {}
            }
        }
        d.added = actual
            .iter()
            .filter(|(p, _)| !in_expected.contains_key(*p))
            .map(|(p, _)| p.to_string())
            .collect();
        (!d.is_empty()).then_some(d)
    }
}

/// One file's name and its resources (one, or its shards in file order) with their digests.
type FileResources<'a> = (&'a str, Vec<(&'a ResourceKey, &'a Vec<u8>)>);

/// How a model differs from its signed manifest, by file name (relative to the model,
/// in manifest order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Differences {
    /// Signed files whose content changed.
    pub changed: Vec<String>,
    /// Files not in the signature.
    pub added: Vec<String>,
    /// Signed files no longer there.
    pub missing: Vec<String>,
}

impl Differences {
    /// No file differs.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.added.is_empty() && self.missing.is_empty()
    }
}

impl std::fmt::Display for Differences {
    /// At most ten names per list, then "and N more".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 10;
        let list = |names: &[String]| {
            let mut s = names
                .iter()
                .take(SHOWN)
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            let more = names.len().saturating_sub(SHOWN);
            if more > 0 {
                s.push_str(&format!(" and {more} more"));
            }
            s
        };
        let parts: Vec<String> = [
            ("content changed", &self.changed),
            ("files not in the signature", &self.added),
            ("signed files missing", &self.missing),
        ]
        .into_iter()
        .filter(|(_, names)| !names.is_empty())
        .map(|(what, names)| format!("{what}: {}", list(names)))
        .collect();
        f.write_str(&parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(items: &[(&str, u8)]) -> Vec<FileDigest> {
        items
            .iter()
            .map(|(n, b)| FileDigest {
                name: n.to_string(),
                size: 1,
                digests: vec![vec![*b; 32]],
            })
            .collect()
    }

    fn serialization() -> Serialization {
        Serialization::new(
            Layout::default(),
            false,
            vec![".git".into(), "model.sig".into()],
        )
    }

    fn manifest(items: &[(&str, u8)]) -> Manifest {
        Manifest::new(
            "m".into(),
            serialization(),
            &Layout::default(),
            files(items),
        )
    }

    #[test]
    fn statement_round_trips_with_upstream_order_and_root_digest() {
        let m = manifest(&[("a-c", 1), ("a/b", 2)]);
        let st = m.to_statement();
        let names: Vec<_> = st.predicate.resources.iter().map(|r| &r.name).collect();
        assert_eq!(names, ["a/b", "a-c"]);
        let mut concat = vec![2u8; 32];
        concat.extend([1u8; 32]);
        assert_eq!(
            st.subject[0].digest["sha256"],
            hex::encode(digest::digest(&digest::SHA256, &concat).as_ref())
        );
        let back = Manifest::from_payload(&m.to_payload()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.diff(&m), None);
    }

    #[test]
    fn inconsistent_or_foreign_statements_are_refused() {
        let m = manifest(&[("a", 1)]);
        let mut st = m.to_statement();
        st.predicate.resources[0].digest = hex::encode(&[9u8; 32]).into();
        let e = Manifest::from_payload(&serde_json::to_vec(&st).unwrap()).unwrap_err();
        assert!(e.0.contains("inconsistent"), "{e}");
        let mut st = m.to_statement();
        st.predicate.serialization.method = "pieces".into();
        let e = Manifest::from_payload(&serde_json::to_vec(&st).unwrap()).unwrap_err();
        assert!(e.0.contains("\"pieces\""), "{e}");
        let mut st = m.to_statement();
        st.predicate_type = "https://example/other".into();
        let e = Manifest::from_payload(&serde_json::to_vec(&st).unwrap()).unwrap_err();
        assert!(e.0.contains("predicateType"), "{e}");
        let e = Manifest::from_payload(b"{\"_type\": 1").unwrap_err();
        assert!(e.0.contains("not an OMS in-toto statement"), "{e}");
    }

    #[test]
    fn shards_are_named_ordered_and_checked_as_upstream_does() {
        let layout = Layout {
            algorithm: Algorithm::Blake2b,
            shard_size: NonZeroU64::new(5),
        };
        let serialization = Serialization::new(layout, false, vec![]);
        let file = |name: &str, size: u64, b: u8| FileDigest {
            name: name.into(),
            size,
            digests: vec![vec![b; 64]; layout.piece_count(size) as usize],
        };
        let m = Manifest::new(
            "m".into(),
            serialization.clone(),
            &layout,
            vec![file("w", 12, 1), file("a/b", 3, 2), file("empty", 0, 3)],
        );
        let st = m.to_statement();
        let names: Vec<_> = st.predicate.resources.iter().map(|r| &*r.name).collect();
        // Offsets compare as numbers (w:5:10 before w:10:12); the empty file has none.
        assert_eq!(names, ["a/b:0:3", "w:0:5", "w:5:10", "w:10:12"]);
        assert!(st
            .predicate
            .resources
            .iter()
            .all(|r| r.algorithm == "blake2b-sharded-5"));
        let json = serde_json::to_value(&st.predicate.serialization).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"method": "shards", "hash_type": "blake2b", "shard_size": 5, "allow_symlinks": false})
        );
        let back = Manifest::from_payload(&m.to_payload()).unwrap();
        assert_eq!(back, m);

        // The file changed: one shard differs, reported once by its file name.
        let mut now = m.clone();
        now.resources.values_mut().last().unwrap()[0] = 9;
        assert_eq!(m.diff(&now).unwrap().changed, ["w"]);

        let refused = |edit: &dyn Fn(&mut Statement)| {
            let mut st = m.to_statement();
            edit(&mut st);
            Manifest::from_payload(&serde_json::to_vec(&st).unwrap())
                .unwrap_err()
                .0
        };
        let e = refused(&|st| st.predicate.resources[0].algorithm = "blake2b".into());
        assert!(e.contains("no blake2b-sharded-5 digest"), "{e}");
        let e = refused(&|st| st.predicate.resources[0].name = "a/b:0".into());
        assert!(e.contains("expected path:start:end"), "{e}");
        let e = refused(&|st| st.predicate.resources[0].name = "a/b:3:+3".into());
        assert!(e.contains("start < end"), "{e}");
        let e = refused(&|st| st.predicate.serialization.shard_size = Some(0));
        assert!(e.contains("shard size is 0"), "{e}");
        let e = refused(&|st| st.predicate.serialization.shard_size = None);
        assert!(e.contains("without a shard_size"), "{e}");
        let e = refused(&|st| st.predicate.serialization.hash_type = "blake3".into());
        assert!(e.contains("\"blake3\""), "{e}");
    }

    #[test]
    fn shard_size_is_read_as_upstream_writes_it_and_only_if_whole() {
        let read = |size: &str| {
            let json = format!(
                r#"{{"method":"shards","hash_type":"sha256","shard_size":{size},"allow_symlinks":false}}"#
            );
            serde_json::from_str::<Serialization>(&json).map(|s| s.shard_size)
        };
        assert_eq!(read("1000000000.0").unwrap(), Some(1_000_000_000));
        assert_eq!(read("4097").unwrap(), Some(4097));
        assert_eq!(read("9007199254740992.0").unwrap(), Some(1 << 53));
        for bad in ["4096.5", "-1", "-1.0", "1e300", "\"4096\""] {
            let e = read(bad).unwrap_err().to_string();
            assert!(
                e.contains("not a whole number") || e.contains("invalid type"),
                "{bad}: {e}"
            );
        }
        // Aegis writes an integer.
        let s = Serialization::new(
            Layout {
                algorithm: Algorithm::Sha256,
                shard_size: NonZeroU64::new(7),
            },
            false,
            vec![],
        );
        assert!(serde_json::to_string(&s)
            .unwrap()
            .contains(r#""shard_size":7,"#));
    }

    #[test]
    fn diff_names_changed_extra_and_missing_files() {
        let signed = manifest(&[("a", 1), ("b", 2)]);
        let now = manifest(&[("a", 3), ("c", 2)]);
        let diff = signed.diff(&now).unwrap();
        assert_eq!(
            (
                diff.changed.clone(),
                diff.added.clone(),
                diff.missing.clone()
            ),
            (
                vec!["a".to_string()],
                vec!["c".to_string()],
                vec!["b".to_string()]
            )
        );
        let d = diff.to_string();
        assert!(d.contains("content changed: \"a\""), "{d}");
        assert!(d.contains("files not in the signature: \"c\""), "{d}");
        assert!(d.contains("signed files missing: \"b\""), "{d}");
    }
}
