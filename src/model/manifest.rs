//! The OMS manifest and the in-toto statement that carries it, as `model_signing` 1.1.1
//! writes and reads them.
//!
//! The statement (`_type` `https://in-toto.io/Statement/v1`, `predicateType`
//! `https://model_signing/signature/v1.0`) holds one subject, named after the model
//! directory, whose `sha256` is SHA-256 over the concatenated raw digests of all
//! resources in manifest order, and a predicate with the `serialization` settings and
//! one `{name, algorithm, digest}` resource per file. Manifest order compares paths
//! component by component (`a/b` before `a-c`), as Python's `PurePosixPath` does.

use std::collections::BTreeMap;

use aws_lc_rs::digest;
use serde::{Deserialize, Serialize};

use super::hash::FileDigest;
use super::hex;

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";
/// The one serialization Aegis writes and checks: a digest per file.
pub const METHOD_FILES: &str = "files";
pub const HASH_SHA256: &str = "sha256";

/// Sorts items by their manifest name, component by component.
pub fn sort_resources<T>(items: &mut [T], name: impl Fn(&T) -> &str) {
    items.sort_by(|a, b| name(a).split('/').cmp(name(b).split('/')));
}

/// An in-toto Statement v1 as the predicate v1.0 lays it out (field order kept).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Statement {
    #[serde(rename = "_type")]
    pub statement_type: String,
    pub subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    pub predicate: Predicate,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Subject {
    pub name: String,
    pub digest: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Predicate {
    pub serialization: Serialization,
    pub resources: Vec<Resource>,
}

/// How the model was serialized into the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Serialization {
    pub method: String,
    pub hash_type: String,
    pub allow_symlinks: bool,
    /// Paths relative to the model that were not hashed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_paths: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    pub name: String,
    pub algorithm: String,
    pub digest: String,
}

/// Why a statement cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StatementError(pub String);

/// A model's manifest: file name to SHA-256, plus how it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub model_name: String,
    pub serialization: Serialization,
    pub files: BTreeMap<String, [u8; 32]>,
}

impl Manifest {
    pub fn new(model_name: String, serialization: Serialization, files: &[FileDigest]) -> Self {
        Manifest {
            model_name,
            serialization,
            files: files.iter().map(|f| (f.name.clone(), f.sha256)).collect(),
        }
    }

    /// The statement to sign, with resources in manifest order.
    pub fn to_statement(&self) -> Statement {
        let mut names: Vec<&String> = self.files.keys().collect();
        sort_resources(&mut names, |n| n.as_str());
        let mut root = digest::Context::new(&digest::SHA256);
        let resources = names
            .into_iter()
            .map(|name| {
                let d = &self.files[name];
                root.update(d);
                Resource {
                    name: name.clone(),
                    algorithm: HASH_SHA256.into(),
                    digest: hex::encode(d),
                }
            })
            .collect();
        Statement {
            statement_type: STATEMENT_TYPE.into(),
            subject: vec![Subject {
                name: self.model_name.clone(),
                digest: BTreeMap::from([(
                    HASH_SHA256.to_string(),
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
    /// statement and predicate types, one subject whose digest matches the resources,
    /// and a serialization Aegis can reproduce (`files` with `sha256`).
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
        let s = &st.predicate.serialization;
        if s.method != METHOD_FILES {
            return err(format!(
                "the model was serialized with method {:?}; Aegis verifies {METHOD_FILES:?} only",
                s.method
            ));
        }
        if s.hash_type != HASH_SHA256 {
            return err(format!(
                "the model was hashed with {:?}; Aegis verifies {HASH_SHA256:?} only",
                s.hash_type
            ));
        }
        let mut files = BTreeMap::new();
        let mut root = digest::Context::new(&digest::SHA256);
        for r in &st.predicate.resources {
            let d = hex::decode32(&r.digest).filter(|_| r.algorithm == HASH_SHA256);
            let Some(d) = d else {
                return err(format!(
                    "resource {:?} has no {HASH_SHA256} digest ({:?}: {:?})",
                    r.name, r.algorithm, r.digest
                ));
            };
            root.update(&d);
            if files.insert(r.name.clone(), d).is_some() {
                return err(format!("resource {:?} is listed twice", r.name));
            }
        }
        let computed = hex::encode(root.finish().as_ref());
        let claimed = subject.digest.get(HASH_SHA256).map(String::as_str);
        if claimed != Some(computed.as_str()) {
            return err(format!(
                "the statement is inconsistent: the subject digest is {}, the resources hash to {computed}",
                claimed.unwrap_or("missing")
            ));
        }
        Ok(Manifest {
            model_name: subject.name.clone(),
            serialization: s.clone(),
            files,
        })
    }

    /// What differs between this (expected) manifest and the model's `actual` one:
    /// `None` when they hold the same files with the same digests.
    pub fn diff(&self, actual: &Manifest) -> Option<Differences> {
        let absent = |from: &Manifest, other: &Manifest| -> Vec<String> {
            from.files
                .keys()
                .filter(|n| !other.files.contains_key(*n))
                .cloned()
                .collect()
        };
        let changed: Vec<String> = self
            .files
            .iter()
            .filter(|(n, d)| actual.files.get(*n).is_some_and(|a| a != *d))
            .map(|(n, _)| n.clone())
            .collect();
        let d = Differences {
            changed,
            added: absent(actual, self),
            missing: absent(self, actual),
        };
        (!d.is_empty()).then_some(d)
    }
}

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
                sha256: [*b; 32],
            })
            .collect()
    }

    fn serialization() -> Serialization {
        Serialization {
            method: METHOD_FILES.into(),
            hash_type: HASH_SHA256.into(),
            allow_symlinks: false,
            ignore_paths: vec![".git".into(), "model.sig".into()],
        }
    }

    #[test]
    fn statement_round_trips_with_upstream_order_and_root_digest() {
        let m = Manifest::new(
            "m".into(),
            serialization(),
            &files(&[("a-c", 1), ("a/b", 2)]),
        );
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
        let m = Manifest::new("m".into(), serialization(), &files(&[("a", 1)]));
        let mut st = m.to_statement();
        st.predicate.resources[0].digest = hex::encode(&[9u8; 32]);
        let e = Manifest::from_payload(&serde_json::to_vec(&st).unwrap()).unwrap_err();
        assert!(e.0.contains("inconsistent"), "{e}");
        let mut st = m.to_statement();
        st.predicate.serialization.method = "shards".into();
        let e = Manifest::from_payload(&serde_json::to_vec(&st).unwrap()).unwrap_err();
        assert!(e.0.contains("shards"), "{e}");
        let mut st = m.to_statement();
        st.predicate_type = "https://example/other".into();
        let e = Manifest::from_payload(&serde_json::to_vec(&st).unwrap()).unwrap_err();
        assert!(e.0.contains("predicateType"), "{e}");
        let e = Manifest::from_payload(b"{\"_type\": 1").unwrap_err();
        assert!(e.0.contains("not an OMS in-toto statement"), "{e}");
    }

    #[test]
    fn diff_names_changed_extra_and_missing_files() {
        let signed = Manifest::new("m".into(), serialization(), &files(&[("a", 1), ("b", 2)]));
        let now = Manifest::new("m".into(), serialization(), &files(&[("a", 3), ("c", 2)]));
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
