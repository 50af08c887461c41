//! What `aegis sync` writes and whether it must: the desired Secret or ConfigMap built from
//! what Vault holds, and the decision against the object the API server has. Pure: no I/O.
//!
//! Every object Aegis writes carries the label `app.kubernetes.io/managed-by: aegis` and
//! the annotations [`SOURCE`] (where it comes from), [`KV_VERSION`] (Secrets: the KV
//! version written) and [`SPEC`] (a SHA-256 of the mapping entry and, for ConfigMaps, of
//! the content; never of a secret value). A target is written only when one of those
//! differs, or when its data, type or labels no longer match (someone edited it).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{ByteString, NamespaceResourceScope};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::config::sync_file::{is_data_key, PublicKeysTarget, SecretTarget, MANAGED_BY};
use crate::vault::KvEntry;

/// Where the object comes from: `kv:{mount}/{path}` or `transit:{mount}/{key}`.
pub const SOURCE: &str = "aegis.dev/source";
/// The KV version a Secret was written from.
pub const KV_VERSION: &str = "aegis.dev/kv-version";
/// SHA-256 (hex) of what decides the object's shape besides the KV version.
pub const SPEC: &str = "aegis.dev/spec-sha256";
/// The value of [`MANAGED_BY`].
pub const MANAGER: &str = "aegis";

/// Why a KV secret cannot become the Secret its entry describes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("field {0:?} is not in the KV secret (it has: {1})")]
    MissingField(String, String),
    #[error("field {0:?} of the KV secret cannot be a Secret key (letters, digits, '-', '_', '.'); list the fields to copy")]
    BadKey(String),
    /// The Transit key has nothing to publish (an HMAC or symmetric key, or no version verifies).
    #[error("{0}")]
    NoPublicKeys(String),
}

/// What to do with a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It does not exist: apply creates it.
    Create,
    /// It exists and differs: apply updates it.
    Update,
    /// It is as it should be: nothing is written.
    Unchanged,
}

/// The source annotation of a KV-backed Secret.
pub fn kv_source(t: &SecretTarget) -> String {
    format!("kv:{}/{}", t.kv_mount, t.path)
}

/// The source annotation of a published-keys ConfigMap.
pub fn transit_source(mount: &str, t: &PublicKeysTarget) -> String {
    format!("transit:{mount}/{}", t.key)
}

/// An object kind `aegis sync` writes: how it is judged against the API server's copy.
pub trait Synced:
    kube::Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + Serialize
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
{
    /// Whether `want` must be written over `have`.
    fn decide(want: &Self, have: Option<&Self>) -> Decision;
    /// Whether the two carry the same data (a change restarts the target's workloads).
    fn same_data(a: &Self, b: &Self) -> bool;
}

impl Synced for Secret {
    fn decide(want: &Self, have: Option<&Self>) -> Decision {
        decide_secret(want, have)
    }
    fn same_data(a: &Self, b: &Self) -> bool {
        a.data == b.data && a.type_ == b.type_
    }
}

impl Synced for ConfigMap {
    fn decide(want: &Self, have: Option<&Self>) -> Decision {
        decide_configmap(want, have)
    }
    fn same_data(a: &Self, b: &Self) -> bool {
        a.data == b.data
    }
}

fn sha256_hex(parts: &[&str]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p.as_bytes());
    }
    crate::model::hex::encode(ctx.finish().as_ref())
}

fn meta(
    namespace: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
) -> ObjectMeta {
    let mut labels = labels.clone();
    labels.insert(MANAGED_BY.into(), MANAGER.into());
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        labels: Some(labels),
        annotations: Some(annotations),
        ..Default::default()
    }
}

/// A KV value as Secret bytes: a string as it is, anything else as its JSON text.
fn value_bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::String(s) => s.clone().into_bytes(),
        other => other.to_string().into_bytes(),
    }
}

/// The Secret `t` describes, from KV `entry` (which exists).
pub fn desired_secret(t: &SecretTarget, entry: &KvEntry) -> Result<Secret, PlanError> {
    let empty = serde_json::Map::new();
    let fields = entry.data.as_object().unwrap_or(&empty);
    let chosen: Vec<&String> = match &t.fields {
        Some(list) => list.iter().collect(),
        None => fields.keys().collect(),
    };
    let mut data = BTreeMap::new();
    for name in chosen {
        let value = fields.get(name).ok_or_else(|| {
            PlanError::MissingField(
                name.clone(),
                fields.keys().cloned().collect::<Vec<_>>().join(", "),
            )
        })?;
        if !is_data_key(name) {
            return Err(PlanError::BadKey(name.clone()));
        }
        data.insert(name.clone(), ByteString(value_bytes(value)));
    }
    let fields_text = t.fields.as_ref().map_or("*".to_string(), |f| f.join(","));
    let labels_text = serde_json::to_string(&t.labels).expect("strings");
    let annotations = BTreeMap::from([
        (SOURCE.to_string(), kv_source(t)),
        (KV_VERSION.to_string(), entry.version.to_string()),
        (
            SPEC.to_string(),
            sha256_hex(&[&t.secret_type, &fields_text, &labels_text]),
        ),
    ]);
    Ok(Secret {
        metadata: meta(&t.namespace, &t.name, &t.labels, annotations),
        type_: Some(t.secret_type.clone()),
        data: Some(data),
        ..Default::default()
    })
}

/// The ConfigMap `t` describes: the published PEM bundle and JWKS.
pub fn desired_configmap(
    mount: &str,
    t: &PublicKeysTarget,
    pem: String,
    jwks: String,
) -> ConfigMap {
    let labels_text = serde_json::to_string(&t.labels).expect("strings");
    let annotations = BTreeMap::from([
        (SOURCE.to_string(), transit_source(mount, t)),
        (SPEC.to_string(), sha256_hex(&[&labels_text, &pem, &jwks])),
    ]);
    ConfigMap {
        metadata: meta(&t.namespace, &t.name, &t.labels, annotations),
        data: Some(BTreeMap::from([
            ("keys.pem".to_string(), pem),
            ("jwks.json".to_string(), jwks),
        ])),
        ..Default::default()
    }
}

/// Every entry of `want` is in `have` with the same value.
fn subset<V: PartialEq>(
    want: Option<&BTreeMap<String, V>>,
    have: Option<&BTreeMap<String, V>>,
) -> bool {
    let empty = BTreeMap::new();
    let have = have.unwrap_or(&empty);
    want.unwrap_or(&empty)
        .iter()
        .all(|(k, v)| have.get(k) == Some(v))
}

fn meta_matches(want: &ObjectMeta, have: &ObjectMeta) -> bool {
    subset(want.labels.as_ref(), have.labels.as_ref())
        && subset(want.annotations.as_ref(), have.annotations.as_ref())
}

/// Whether the Secret must be written.
pub fn decide_secret(want: &Secret, have: Option<&Secret>) -> Decision {
    match have {
        None => Decision::Create,
        Some(h)
            if meta_matches(&want.metadata, &h.metadata)
                && want.type_ == h.type_
                && subset(want.data.as_ref(), h.data.as_ref()) =>
        {
            Decision::Unchanged
        }
        Some(_) => Decision::Update,
    }
}

/// Whether the ConfigMap must be written.
pub fn decide_configmap(want: &ConfigMap, have: Option<&ConfigMap>) -> Decision {
    match have {
        None => Decision::Create,
        Some(h)
            if meta_matches(&want.metadata, &h.metadata)
                && subset(want.data.as_ref(), h.data.as_ref()) =>
        {
            Decision::Unchanged
        }
        Some(_) => Decision::Update,
    }
}

/// Whether Aegis made this object from `source` (and so may delete it).
pub fn owned_by_aegis(have: &ObjectMeta, source: &str) -> bool {
    let label = have
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY))
        .map(String::as_str);
    let from = have
        .annotations
        .as_ref()
        .and_then(|a| a.get(SOURCE))
        .map(String::as_str);
    label == Some(MANAGER) && from == Some(source)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::sync_file::OnDelete;
    use serde_json::json;

    fn target(fields: Option<Vec<&str>>) -> SecretTarget {
        SecretTarget {
            kv_mount: "secret".into(),
            path: "apps/a".into(),
            namespace: "ns".into(),
            name: "a".into(),
            secret_type: "Opaque".into(),
            fields: fields.map(|f| f.into_iter().map(String::from).collect()),
            labels: BTreeMap::from([("team".into(), "ml".into())]),
            restart: vec![],
            on_delete: OnDelete::Keep,
        }
    }

    fn entry(version: u64) -> KvEntry {
        KvEntry {
            data: json!({"user": "u", "password": "p", "port": 5432, "deep": {"a": [1]}}),
            version,
        }
    }

    #[test]
    fn the_secret_has_the_chosen_fields_labels_and_annotations() {
        let s = desired_secret(&target(Some(vec!["password", "port"])), &entry(3)).unwrap();
        let data = s.data.unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), ["password", "port"]);
        assert_eq!(data["password"].0, b"p");
        assert_eq!(data["port"].0, b"5432");
        let labels = s.metadata.labels.unwrap();
        assert_eq!(labels[MANAGED_BY], "aegis");
        assert_eq!(labels["team"], "ml");
        let ann = s.metadata.annotations.unwrap();
        assert_eq!(ann[SOURCE], "kv:secret/apps/a");
        assert_eq!(ann[KV_VERSION], "3");
        let all = desired_secret(&target(None), &entry(3)).unwrap();
        assert_eq!(all.data.as_ref().unwrap()["deep"].0, br#"{"a":[1]}"#);
        assert_ne!(
            all.metadata.annotations.unwrap()[SPEC],
            ann[SPEC],
            "the field list is part of the spec"
        );
    }

    #[test]
    fn a_missing_field_or_a_bad_key_is_refused_without_naming_a_value() {
        let e = desired_secret(&target(Some(vec!["nope"])), &entry(1)).unwrap_err();
        assert_eq!(
            e,
            PlanError::MissingField("nope".into(), "deep, password, port, user".into())
        );
        let bad = KvEntry {
            data: json!({"a/b": "secret-value"}),
            version: 1,
        };
        let e = desired_secret(&target(None), &bad).unwrap_err();
        assert!(!e.to_string().contains("secret-value"), "{e}");
    }

    #[test]
    fn decisions_follow_version_data_and_hand_edits() {
        let t = target(None);
        let v3 = desired_secret(&t, &entry(3)).unwrap();
        assert_eq!(decide_secret(&v3, None), Decision::Create);
        let mut have = v3.clone();
        have.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("extra".into(), "kept".into());
        assert_eq!(
            decide_secret(&v3, Some(&have)),
            Decision::Unchanged,
            "extra labels are not ours to judge"
        );
        let v4 = desired_secret(&t, &entry(4)).unwrap();
        assert_eq!(
            decide_secret(&v4, Some(&have)),
            Decision::Update,
            "a new KV version"
        );
        let mut edited = v3.clone();
        edited
            .data
            .as_mut()
            .unwrap()
            .insert("password".into(), ByteString(b"hand".to_vec()));
        assert_eq!(
            decide_secret(&v3, Some(&edited)),
            Decision::Update,
            "a hand edit is undone"
        );
    }

    #[test]
    fn only_what_aegis_made_from_this_source_is_owned() {
        let t = target(None);
        let s = desired_secret(&t, &entry(1)).unwrap();
        assert!(owned_by_aegis(&s.metadata, &kv_source(&t)));
        assert!(!owned_by_aegis(&s.metadata, "kv:secret/other"));
        let mut foreign = s.metadata.clone();
        foreign.labels.as_mut().unwrap().remove(MANAGED_BY);
        assert!(!owned_by_aegis(&foreign, &kv_source(&t)));
    }
}
