//! The `aegis sync` mapping file: which KV v2 secrets become which Kubernetes Secrets, and
//! which Transit keys' public keys are published into which ConfigMaps.
//!
//! ```toml
//! namespace = "models"          # default namespace of every entry below
//! kv_mount = "secret"           # default KV v2 mount
//! on_delete = "keep"            # default deletion policy: keep | delete
//!
//! [[secret]]
//! path = "apps/model-a/db"      # KV v2 path under kv_mount
//! name = "model-a-db"           # the Secret
//! type = "Opaque"               # default Opaque; immutable once created
//! fields = ["username", "password"]   # default: every field of the KV secret
//! labels = { team = "ml" }
//! restart = ["deployment/model-a", "statefulset/model-b"]  # restarted when the Secret changed
//! on_delete = "delete"          # the KV path is gone: delete the Secret if Aegis owns it
//!
//! [[public_keys]]
//! key = "model-signer"          # a Transit key of AEGIS_TRANSIT_MOUNT
//! name = "model-signer-keys"    # the ConfigMap: keys.pem and jwks.json
//! ```
//!
//! Parsing checks everything (Kubernetes name and label syntax, restart targets, duplicate
//! targets) and reports every problem at once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

/// What `aegis sync` does with a target when its KV path is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnDelete {
    /// Leave the Secret as it is (the default: a mistaken delete in Vault breaks nothing).
    #[default]
    Keep,
    /// Delete it, but only if Aegis made it (its label and source annotation say so).
    Delete,
}

/// The kinds of workload `restart` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
}

impl WorkloadKind {
    /// The lower-case resource name used in URLs and in `restart` (`deployment/NAME`).
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "deployment",
            WorkloadKind::StatefulSet => "statefulset",
        }
    }
}

/// A workload restarted when a target it depends on changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
}

/// The parsed and checked mapping file.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncFile {
    pub secrets: Vec<SecretTarget>,
    pub public_keys: Vec<PublicKeysTarget>,
}

/// One KV v2 secret written as one Kubernetes Secret.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretTarget {
    pub kv_mount: String,
    pub path: String,
    pub namespace: String,
    pub name: String,
    pub secret_type: String,
    /// The fields copied; `None`: all of them.
    pub fields: Option<Vec<String>>,
    pub labels: BTreeMap<String, String>,
    pub restart: Vec<Workload>,
    pub on_delete: OnDelete,
}

/// One Transit key's published public keys written as one ConfigMap.
#[derive(Debug, Clone, PartialEq)]
pub struct PublicKeysTarget {
    pub key: String,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub restart: Vec<Workload>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    namespace: Option<String>,
    #[serde(default = "default_kv_mount")]
    kv_mount: String,
    #[serde(default)]
    on_delete: OnDelete,
    #[serde(default, rename = "secret")]
    secrets: Vec<RawSecret>,
    #[serde(default)]
    public_keys: Vec<RawPublicKeys>,
}

fn default_kv_mount() -> String {
    "secret".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    path: String,
    name: String,
    namespace: Option<String>,
    kv_mount: Option<String>,
    #[serde(rename = "type", default = "default_type")]
    secret_type: String,
    fields: Option<Vec<String>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    restart: Vec<String>,
    on_delete: Option<OnDelete>,
}

fn default_type() -> String {
    "Opaque".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPublicKeys {
    key: String,
    name: String,
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    restart: Vec<String>,
}

impl SyncFile {
    /// Reads and checks the file; every problem is returned, prefixed with the path.
    pub fn load(path: &Path) -> Result<SyncFile, Vec<String>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![format!("cannot read the sync file {}: {e}", path.display())])?;
        Self::parse(&text).map_err(|problems| {
            problems
                .into_iter()
                .map(|p| format!("{}: {p}", path.display()))
                .collect()
        })
    }

    /// Parses and checks the file's text.
    pub fn parse(text: &str) -> Result<SyncFile, Vec<String>> {
        let raw: RawFile = toml::from_str(text).map_err(|e| vec![e.message().to_string()])?;
        let mut problems = Vec::new();
        let file = raw.resolve(&mut problems);
        if file.secrets.is_empty() && file.public_keys.is_empty() {
            problems.push("no [[secret]] or [[public_keys]] entry: nothing to sync".into());
        }
        let mut seen = BTreeSet::new();
        for (kind, ns, name) in file.targets() {
            if !seen.insert((kind, ns, name)) {
                problems.push(format!("{kind} {ns}/{name} is the target of two entries"));
            }
        }
        if problems.is_empty() {
            Ok(file)
        } else {
            Err(problems)
        }
    }

    /// (kind, namespace, name) of every object the file writes.
    fn targets(&self) -> impl Iterator<Item = (&'static str, &str, &str)> {
        let secrets = self
            .secrets
            .iter()
            .map(|s| ("secret", s.namespace.as_str(), s.name.as_str()));
        let maps = self
            .public_keys
            .iter()
            .map(|p| ("configmap", p.namespace.as_str(), p.name.as_str()));
        secrets.chain(maps)
    }
}

impl RawFile {
    fn resolve(self, problems: &mut Vec<String>) -> SyncFile {
        let namespace = |ns: Option<String>, what: &str, problems: &mut Vec<String>| {
            let ns = ns.or_else(|| self.namespace.clone()).unwrap_or_else(|| {
                problems.push(format!(
                    "{what}: no namespace (set `namespace` in it or at the top)"
                ));
                String::new()
            });
            check_label_name(&ns, &format!("{what}: namespace"), problems);
            ns
        };
        let secrets = self
            .secrets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let what = format!("[[secret]] #{} ({})", i + 1, s.name);
                SecretTarget {
                    namespace: namespace(s.namespace.clone(), &what, problems),
                    kv_mount: s.kv_mount.clone().unwrap_or_else(|| self.kv_mount.clone()),
                    path: check_kv_path(&s.path, &what, problems),
                    name: check_object_name(&s.name, &what, problems),
                    secret_type: s.secret_type.clone(),
                    fields: check_fields(s.fields.as_deref(), &what, problems),
                    labels: check_labels(&s.labels, &what, problems),
                    restart: Vec::new(),
                    on_delete: s.on_delete.unwrap_or(self.on_delete),
                }
            })
            .collect::<Vec<_>>();
        let secrets = secrets
            .into_iter()
            .zip(&self.secrets)
            .map(|(mut t, s)| {
                t.restart = workloads(
                    &s.restart,
                    &t.namespace,
                    &format!("[[secret]] {}", t.name),
                    problems,
                );
                t
            })
            .collect();
        let public_keys = self
            .public_keys
            .iter()
            .map(|p| {
                let what = format!("[[public_keys]] {}", p.name);
                let ns = namespace(p.namespace.clone(), &what, problems);
                if p.key.is_empty() {
                    problems.push(format!("{what}: `key` is empty"));
                }
                PublicKeysTarget {
                    key: p.key.clone(),
                    name: check_object_name(&p.name, &what, problems),
                    labels: check_labels(&p.labels, &what, problems),
                    restart: workloads(&p.restart, &ns, &what, problems),
                    namespace: ns,
                }
            })
            .collect();
        SyncFile {
            secrets,
            public_keys,
        }
    }
}

/// `deployment/NAME` or `statefulset/NAME`, in the target's namespace.
fn workloads(
    list: &[String],
    namespace: &str,
    what: &str,
    problems: &mut Vec<String>,
) -> Vec<Workload> {
    let mut out = Vec::new();
    for entry in list {
        let (kind, name) = entry.split_once('/').unwrap_or(("", entry));
        let kind = match kind.to_ascii_lowercase().as_str() {
            "deployment" | "deployments" | "deploy" => WorkloadKind::Deployment,
            "statefulset" | "statefulsets" | "sts" => WorkloadKind::StatefulSet,
            _ => {
                problems.push(format!(
                    "{what}: restart {entry:?}: expected deployment/NAME or statefulset/NAME"
                ));
                continue;
            }
        };
        check_object_name(name, &format!("{what}: restart"), problems);
        out.push(Workload {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        });
    }
    out
}

fn check_kv_path(path: &str, what: &str, problems: &mut Vec<String>) -> String {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty()
        || trimmed
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        problems.push(format!(
            "{what}: path {path:?} is not a KV path (a/b/c, no empty, . or .. parts)"
        ));
    }
    trimmed.to_owned()
}

fn check_fields(
    fields: Option<&[String]>,
    what: &str,
    problems: &mut Vec<String>,
) -> Option<Vec<String>> {
    let fields = fields?;
    if fields.is_empty() {
        problems.push(format!(
            "{what}: `fields` is empty (leave it out to copy every field)"
        ));
    }
    for f in fields {
        if !is_data_key(f) {
            problems.push(format!(
                "{what}: field {f:?} cannot be a Secret key (letters, digits, '-', '_', '.'; at most 253)"
            ));
        }
    }
    Some(fields.to_vec())
}

/// A Secret or ConfigMap data key: `[-._a-zA-Z0-9]+`, at most 253 characters, not `.` or `..`.
pub fn is_data_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

/// An object name: a DNS-1123 subdomain (lower-case alphanumerics, '-', '.', at most 253).
fn check_object_name(name: &str, what: &str, problems: &mut Vec<String>) -> String {
    let ok = !name.is_empty() && name.len() <= 253 && name.split('.').all(is_dns_label);
    if !ok {
        problems.push(format!(
            "{what}: name {name:?} is not a Kubernetes object name (lower-case letters, digits, '-' and '.', at most 253)"
        ));
    }
    name.to_owned()
}

fn check_label_name(name: &str, what: &str, problems: &mut Vec<String>) {
    if !name.is_empty() && !is_dns_label(name) {
        problems.push(format!(
            "{what} {name:?} is not a DNS-1123 label (lower-case letters, digits, '-', at most 63)"
        ));
    }
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Label keys (`[prefix/]name`) and values as Kubernetes checks them; the label Aegis sets
/// itself (`app.kubernetes.io/managed-by`) may not be overridden.
fn check_labels(
    labels: &BTreeMap<String, String>,
    what: &str,
    problems: &mut Vec<String>,
) -> BTreeMap<String, String> {
    for (k, v) in labels {
        let (prefix, name) = k
            .rsplit_once('/')
            .map_or((None, k.as_str()), |(p, n)| (Some(p), n));
        let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && p.split('.').all(is_dns_label));
        if !(prefix_ok && is_label_value(name) && !name.is_empty()) {
            problems.push(format!(
                "{what}: label key {k:?} is not a Kubernetes label key"
            ));
        }
        if !is_label_value(v) {
            problems.push(format!(
                "{what}: label {k}={v:?}: a value is at most 63 letters, digits, '-', '_', '.', starting and ending alphanumeric"
            ));
        }
        if k == crate::config::sync_file::MANAGED_BY {
            problems.push(format!("{what}: label {k} is set by Aegis itself"));
        }
    }
    labels.clone()
}

/// The label on every object Aegis writes, with the value `aegis`.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

fn is_label_value(v: &str) -> bool {
    let b = v.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_resolves_defaults_per_entry() {
        let f = SyncFile::parse(
            r#"
namespace = "models"
on_delete = "delete"
[[secret]]
path = "/apps/a/db/"
name = "a-db"
fields = ["password"]
labels = { team = "ml" }
restart = ["deployment/a", "sts/b"]
[[secret]]
path = "apps/b"
name = "b"
namespace = "other"
kv_mount = "kv"
type = "kubernetes.io/basic-auth"
on_delete = "keep"
[[public_keys]]
key = "signer"
name = "signer-keys"
"#,
        )
        .unwrap();
        let a = &f.secrets[0];
        assert_eq!(
            (a.kv_mount.as_str(), a.path.as_str(), a.namespace.as_str()),
            ("secret", "apps/a/db", "models")
        );
        assert_eq!(a.on_delete, OnDelete::Delete);
        assert_eq!(a.secret_type, "Opaque");
        assert_eq!(a.fields.as_deref(), Some(&["password".to_string()][..]));
        assert_eq!(
            a.restart
                .iter()
                .map(|w| (w.kind, w.name.as_str()))
                .collect::<Vec<_>>(),
            [
                (WorkloadKind::Deployment, "a"),
                (WorkloadKind::StatefulSet, "b")
            ]
        );
        let b = &f.secrets[1];
        assert_eq!(
            (b.kv_mount.as_str(), b.namespace.as_str(), b.on_delete),
            ("kv", "other", OnDelete::Keep)
        );
        assert_eq!(b.fields, None);
        assert_eq!(f.public_keys[0].namespace, "models");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let problems = SyncFile::parse(
            r#"
[[secret]]
path = "a/../b"
name = "Bad_Name"
fields = ["ok", "no/slash"]
labels = { "app.kubernetes.io/managed-by" = "me", team = "-x" }
restart = ["daemonset/x"]
[[secret]]
path = "c"
name = "dup"
namespace = "n"
[[secret]]
path = "d"
name = "dup"
namespace = "n"
"#,
        )
        .unwrap_err();
        let all = problems.join("\n");
        for needle in [
            "no namespace",
            "is not a KV path",
            "\"Bad_Name\" is not a Kubernetes object name",
            "field \"no/slash\" cannot be a Secret key",
            "is set by Aegis itself",
            "label team=\"-x\"",
            "restart \"daemonset/x\"",
            "secret n/dup is the target of two entries",
        ] {
            assert!(all.contains(needle), "{needle:?} missing from:\n{all}");
        }
        assert_eq!(problems.len(), 8, "{all}");
    }

    #[test]
    fn an_empty_file_and_unknown_fields_are_refused() {
        assert!(SyncFile::parse("").unwrap_err()[0].contains("nothing to sync"));
        let e = SyncFile::parse("[[secret]]\npath=\"a\"\nname=\"a\"\nnamespace=\"n\"\nfeilds=[]\n")
            .unwrap_err();
        assert!(e[0].contains("unknown field `feilds`"), "{e:?}");
    }
}
