//! The stand-in's objects and the API server's rules for writing them: one global
//! resourceVersion counter (bumped by every write that changes something, never by a
//! no-op), uid and creationTimestamp, `generation` for workloads, managedFields, the
//! Secret conversions (`stringData` folded into `data`, base64 checked, `type` defaulted
//! and immutable), validation as `422 Invalid`, and the namespace check of a create.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use serde_json::{json, Value};

use super::fields;
use super::status::{self, Failure, Gr};

/// A served resource.
#[derive(Debug)]
pub struct Kind {
    pub gr: Gr,
    pub api_version: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    /// Bumps `metadata.generation` when `spec` changes (workloads).
    pub generation: bool,
}

const fn kind(
    resource: &'static str,
    group: &'static str,
    kind: &'static str,
    api_version: &'static str,
    singular: &'static str,
    short_names: &'static [&'static str],
    generation: bool,
) -> Kind {
    Kind {
        gr: Gr {
            resource,
            group,
            kind,
        },
        api_version,
        singular,
        short_names,
        generation,
    }
}

pub const KINDS: [Kind; 4] = [
    kind(
        "configmaps",
        "",
        "ConfigMap",
        "v1",
        "configmap",
        &["cm"],
        false,
    ),
    kind("secrets", "", "Secret", "v1", "secret", &[], false),
    kind(
        "deployments",
        "apps",
        "Deployment",
        "apps/v1",
        "deployment",
        &["deploy"],
        true,
    ),
    kind(
        "statefulsets",
        "apps",
        "StatefulSet",
        "apps/v1",
        "statefulset",
        &["sts"],
        true,
    ),
];

pub fn lookup(resource: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.gr.resource == resource)
}

/// (HTTP status, body) of a request, or its `Status`.
pub type Answer = Result<(u16, Value), Failure>;

/// `(resource, namespace, name)`.
type Key = (String, String, String);

pub struct Store {
    rv: u64,
    pub namespaces: BTreeSet<String>,
    objects: BTreeMap<Key, Value>,
}

fn key(k: &Kind, ns: &str, name: &str) -> Key {
    (k.gr.resource.to_string(), ns.to_string(), name.to_string())
}

pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl Store {
    pub fn new() -> Store {
        Store {
            rv: 1000,
            namespaces: BTreeSet::from(["default".to_string()]),
            objects: BTreeMap::new(),
        }
    }

    pub fn object(&self, k: &Kind, ns: &str, name: &str) -> Option<&Value> {
        self.objects.get(&key(k, ns, name))
    }

    pub fn all(&self) -> Vec<Value> {
        self.objects.values().cloned().collect()
    }

    pub fn get(&self, k: &Kind, ns: &str, name: &str) -> Answer {
        match self.object(k, ns, name) {
            Some(o) => Ok((200, o.clone())),
            None => Err(status::not_found(&k.gr, name)),
        }
    }

    /// A namespaced list, filtered by `labelSelector` and `fieldSelector`. Its items carry
    /// no apiVersion/kind, as the server's typed lists.
    pub fn list(&self, k: &Kind, ns: &str, labels: &str, fields: &str) -> Answer {
        let labels = Selector::parse(labels, "labels")?;
        let fields = Selector::parse(fields, "fields")?;
        check_field_labels(k, &fields)?;
        let mut items = Vec::new();
        for ((res, ons, _), obj) in &self.objects {
            if res != k.gr.resource || ons != ns || !labels.matches(&obj["metadata"]["labels"]) {
                continue;
            }
            if !fields.matches(&field_values(k, obj)) {
                continue;
            }
            let mut item = obj.clone();
            let m = item.as_object_mut().unwrap();
            m.remove("apiVersion");
            m.remove("kind");
            items.push(item);
        }
        Ok((
            200,
            json!({
                "kind": format!("{}List", k.gr.kind),
                "apiVersion": k.api_version,
                "metadata": {"resourceVersion": self.rv.to_string()},
                "items": items,
            }),
        ))
    }

    /// POST: a create by `manager`.
    pub fn create(&mut self, k: &Kind, ns: &str, body: Value, manager: &str) -> Answer {
        let mut obj = decode(k, body)?;
        check_namespace(&obj, ns)?;
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            let why = (
                "FieldValueRequired",
                "metadata.name".to_string(),
                "Required value: name or generateName is required".to_string(),
            );
            return Err(status::invalid(k.gr.kind, k.gr.group, "", &[why]));
        }
        if !obj["metadata"]["resourceVersion"].is_null() {
            return Err(status::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        self.admit_create(k, ns, &name)?;
        default_type(k, &mut obj);
        fields::record_update(None, &mut obj, manager, &now());
        let stored = self.commit(k, ns, &name, None, obj)?;
        Ok((201, stored))
    }

    /// A create must find the namespace and no object of that name.
    fn admit_create(&self, k: &Kind, ns: &str, name: &str) -> Result<(), Failure> {
        if !self.namespaces.contains(ns) {
            return Err(status::namespace_not_found(ns));
        }
        if self.object(k, ns, name).is_some() {
            return Err(status::already_exists(&k.gr, name));
        }
        Ok(())
    }

    /// PUT: a replace by `manager`, conditional on `metadata.resourceVersion` when set.
    pub fn replace(
        &mut self,
        k: &Kind,
        ns: &str,
        name: &str,
        body: Value,
        manager: &str,
    ) -> Answer {
        let mut obj = decode(k, body)?;
        check_namespace(&obj, ns)?;
        check_name(&obj, name)?;
        let Some(old) = self.object(k, ns, name).cloned() else {
            return Err(status::not_found(&k.gr, name));
        };
        check_resource_version(k, &obj, &old, name)?;
        obj["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
        default_type(k, &mut obj);
        fields::record_update(Some(&old), &mut obj, manager, &now());
        Ok((200, self.commit(k, ns, name, Some(&old), obj)?))
    }

    /// PATCH with a JSON merge patch or a strategic merge patch (`strategic`: `$`
    /// directives other than `$setElementOrder` are refused).
    pub fn merge(
        &mut self,
        k: &Kind,
        ns: &str,
        name: &str,
        patch: &Value,
        strategic: bool,
        manager: &str,
    ) -> Answer {
        let Some(old) = self.object(k, ns, name).cloned() else {
            return Err(status::not_found(&k.gr, name));
        };
        let mut patch = patch.clone();
        if strategic {
            strip_directives(&mut patch)?;
        }
        let mut obj = old.clone();
        fields::merge_patch(&mut obj, &patch);
        let mut obj = decode(k, obj)?;
        check_name(&obj, name)?;
        check_resource_version(k, &obj, &old, name)?;
        obj["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
        default_type(k, &mut obj);
        fields::record_update(Some(&old), &mut obj, manager, &now());
        Ok((200, self.commit(k, ns, name, Some(&old), obj)?))
    }

    /// PATCH with `application/apply-patch+yaml`: server-side apply (200, or 201 when it
    /// created the object). `may_create` is the authorizer's answer to "create".
    // The parts of one apply request, as the API server takes them (path, body, query).
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        k: &Kind,
        ns: &str,
        name: &str,
        config: Value,
        manager: &str,
        force: bool,
        may_create: impl FnOnce() -> Result<(), Failure>,
    ) -> Answer {
        let config = decode(k, config)?;
        check_name(&config, name)?;
        check_namespace(&config, ns)?;
        let live = self.object(k, ns, name).cloned();
        match &live {
            Some(old) => check_resource_version(k, &config, old, name)?,
            None => {
                may_create()?;
                self.admit_create(k, ns, name)?;
            }
        }
        let obj = fields::apply(live.as_ref(), &config, manager, force, &now())
            .map_err(|c| status::apply_conflict(&c))?;
        let stored = self.commit(k, ns, name, live.as_ref(), obj)?;
        Ok((if live.is_some() { 200 } else { 201 }, stored))
    }

    /// DELETE, with the DeleteOptions body's preconditions.
    pub fn delete(&mut self, k: &Kind, ns: &str, name: &str, options: &Value) -> Answer {
        let Some(old) = self.object(k, ns, name) else {
            return Err(status::not_found(&k.gr, name));
        };
        let pre = &options["preconditions"];
        for (field, printed) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
            let (want, have) = (&pre[field], &old["metadata"][field]);
            if let Some(w) = want.as_str().filter(|w| Some(*w) != have.as_str()) {
                let why = format!(
                    "Precondition failed: {printed} in precondition: {w}, {printed} in object meta: {}",
                    have.as_str().unwrap_or_default()
                );
                return Err(status::conflict(&k.gr, name, &why));
            }
        }
        let uid = old["metadata"]["uid"].clone();
        self.objects.remove(&key(k, ns, name));
        self.rv += 1;
        let mut details = json!({"name": name, "kind": k.gr.resource, "uid": uid});
        if !k.gr.group.is_empty() {
            details["group"] = json!(k.gr.group);
        }
        Ok((
            200,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
        ))
    }

    /// Validates, sets the server's fields, and stores `new` unless it equals `old` (a
    /// no-op write returns the stored object with its resourceVersion unchanged).
    fn commit(
        &mut self,
        k: &Kind,
        ns: &str,
        name: &str,
        old: Option<&Value>,
        mut new: Value,
    ) -> Result<Value, Failure> {
        default_type(k, &mut new);
        validate(k, name, old, &new)?;
        let meta = &mut new["metadata"];
        meta["name"] = json!(name);
        meta["namespace"] = json!(ns);
        let was = |f: &str| old.map(|o| o["metadata"][f].clone());
        meta["uid"] = was("uid").unwrap_or_else(|| json!(uuid::Uuid::new_v4().to_string()));
        meta["creationTimestamp"] = was("creationTimestamp").unwrap_or_else(|| json!(now()));
        meta["resourceVersion"] = was("resourceVersion").unwrap_or(Value::Null);
        if k.generation {
            let gen = old.map_or(1, |o| {
                let g = o["metadata"]["generation"].as_u64().unwrap_or(1);
                g + u64::from(o["spec"] != new["spec"])
            });
            new["metadata"]["generation"] = json!(gen);
        }
        if let Some(o) = old.filter(|o| **o == new) {
            return Ok(o.clone());
        }
        self.rv += 1;
        new["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert(key(k, ns, name), new.clone());
        Ok(new)
    }
}

/// The body as the server decodes it: an object of this kind, with Secret `stringData`
/// folded into `data` and `data` checked as base64 (400, as the decoder answers).
fn decode(k: &Kind, body: Value) -> Result<Value, Failure> {
    let Value::Object(_) = body else {
        return Err(status::bad_request(
            "the request body is not a JSON object".into(),
        ));
    };
    let mut obj = body;
    for (field, want) in [("apiVersion", k.api_version), ("kind", k.gr.kind)] {
        match obj[field].as_str() {
            None => obj[field] = json!(want),
            Some(got) if got == want => {}
            Some(got) => {
                let what = if field == "kind" {
                    "kind"
                } else {
                    "API version"
                };
                return Err(status::bad_request(format!(
                    "the {what} in the data ({got}) does not match the expected {what} ({want})"
                )));
            }
        }
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let cannot = |why: String| {
        status::bad_request(format!(
            "{kind} in version \"v1\" cannot be handled as a {kind}: {why}",
            kind = k.gr.kind
        ))
    };
    let strings = |v: &Value, field: &str| -> Result<(), Failure> {
        let bad = v
            .as_object()
            .into_iter()
            .flatten()
            .find(|(_, v)| !v.is_string());
        match bad {
            Some(_) => Err(cannot(format!(
                "json: cannot unmarshal non-string into Go struct field {}.{field} of type string",
                k.gr.kind
            ))),
            None => Ok(()),
        }
    };
    for field in ["data", "binaryData", "stringData"] {
        strings(&obj[field], field)?;
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let base64_fields: &[&str] = match k.gr.kind {
        "Secret" => &["data"],
        "ConfigMap" => &["binaryData"],
        _ => &[],
    };
    for field in base64_fields {
        for v in obj[*field]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(_, v)| v.as_str().unwrap())
        {
            if let Err(e) = b64.decode(v) {
                let at = match e {
                    base64::DecodeError::InvalidByte(at, _)
                    | base64::DecodeError::InvalidLastSymbol(at, _) => at,
                    _ => v.len(),
                };
                return Err(cannot(format!("illegal base64 data at input byte {at}")));
            }
        }
    }
    if k.gr.kind == "Secret" {
        if let Some(Value::Object(sd)) = obj.as_object_mut().unwrap().remove("stringData") {
            for (name, v) in sd {
                obj["data"][name] = json!(b64.encode(v.as_str().unwrap()));
            }
        }
    }
    Ok(obj)
}

/// A Secret's `type` defaults to `Opaque`.
fn default_type(k: &Kind, obj: &mut Value) {
    if k.gr.kind == "Secret" && obj["type"].is_null() {
        obj["type"] = json!("Opaque");
    }
}

fn check_name(obj: &Value, name: &str) -> Result<(), Failure> {
    match obj["metadata"]["name"].as_str() {
        Some(n) if n != name => Err(status::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        ))),
        _ => Ok(()),
    }
}

fn check_namespace(obj: &Value, ns: &str) -> Result<(), Failure> {
    match obj["metadata"]["namespace"].as_str() {
        Some(n) if n != ns => Err(status::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        )),
        _ => Ok(()),
    }
}

/// A resourceVersion in the written object must be the stored one (409 otherwise).
fn check_resource_version(k: &Kind, obj: &Value, old: &Value, name: &str) -> Result<(), Failure> {
    match obj["metadata"]["resourceVersion"].as_str() {
        Some(rv) if Some(rv) != old["metadata"]["resourceVersion"].as_str() => {
            Err(status::conflict(&k.gr, name, status::MODIFIED))
        }
        _ => Ok(()),
    }
}

/// Drops `$setElementOrder/...` (list order only); refuses the directives the stand-in
/// does not implement.
fn strip_directives(patch: &mut Value) -> Result<(), Failure> {
    let Some(m) = patch.as_object_mut() else {
        return Ok(());
    };
    m.retain(|k, _| !k.starts_with("$setElementOrder/"));
    if let Some(k) = m.keys().find(|k| k.starts_with('$')) {
        return Err(status::bad_request(format!(
            "stand-in: the strategic-merge directive {k} is not implemented"
        )));
    }
    m.values_mut().try_for_each(strip_directives)
}

/// 422 for what the server's validation refuses: the name, data keys, a changed Secret
/// `type`.
fn validate(k: &Kind, name: &str, old: Option<&Value>, new: &Value) -> Result<(), Failure> {
    let mut problems = Vec::new();
    if !is_dns_subdomain(name) {
        problems.push(("FieldValueInvalid", "metadata.name".to_string(), format!("Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")));
    }
    for field in ["data", "binaryData"] {
        for key in new[field].as_object().into_iter().flatten().map(|(k, _)| k) {
            let ok = !key.is_empty()
                && key.len() <= 253
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
            if !ok {
                problems.push(("FieldValueInvalid", format!("{field}[{key}]"), format!("Invalid value: {key:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')")));
            }
        }
    }
    if old.is_some_and(|o| k.gr.kind == "Secret" && o["type"] != new["type"]) {
        problems.push((
            "FieldValueInvalid",
            "type".to_string(),
            format!("Invalid value: {}: field is immutable", new["type"]),
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(status::invalid(k.gr.kind, k.gr.group, name, &problems))
    }
}

fn is_dns_subdomain(name: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    name.len() <= 253 && name.split('.').all(label_ok)
}

/// The fields a `fieldSelector` may name for `k`, with their values in `obj`.
fn field_values(k: &Kind, obj: &Value) -> Value {
    let mut v = json!({
        "metadata.name": obj["metadata"]["name"],
        "metadata.namespace": obj["metadata"]["namespace"],
    });
    if k.gr.kind == "Secret" {
        v["type"] = obj["type"].clone();
    }
    v
}

/// 400 for a field selector naming a field the resource does not index.
fn check_field_labels(k: &Kind, sel: &Selector) -> Result<(), Failure> {
    let known = field_values(k, &json!({"metadata": {}}));
    match sel.0.iter().find(|(f, _)| known.get(f).is_none()) {
        Some((f, _)) => {
            let names: Vec<String> = known
                .as_object()
                .unwrap()
                .keys()
                .map(|n| format!("{n:?}"))
                .collect();
            Err(status::bad_request(format!(
                "{f:?} is not a known field selector: only {}",
                names.join(", ")
            )))
        }
        None => Ok(()),
    }
}

/// An equality-based selector: `k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated (set-based
/// requirements are refused with 400).
struct Selector(Vec<(String, Op)>);

enum Op {
    Eq(String),
    Ne(String),
    Exists,
    Absent,
}

impl Selector {
    fn parse(text: &str, what: &str) -> Result<Selector, Failure> {
        let mut reqs = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let req = if let Some((k, v)) = part.split_once("!=") {
                (k, Op::Ne(v.into()))
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (k, Op::Eq(v.into()))
            } else if let Some(k) = part.strip_prefix('!') {
                (k, Op::Absent)
            } else {
                (part, Op::Exists)
            };
            if req.0.contains(['(', ' '])
                || (what == "fields" && matches!(req.1, Op::Exists | Op::Absent))
            {
                return Err(status::bad_request(format!(
                    "unable to parse requirement: stand-in takes equality-based {what} selectors only: {part:?}"
                )));
            }
            reqs.push((req.0.trim().to_string(), req.1));
        }
        Ok(Selector(reqs))
    }

    /// For labels, `values` is the labels map; for fields, the field values.
    fn matches(&self, values: &Value) -> bool {
        self.0.iter().all(|(k, op)| {
            let v = values.get(k).and_then(Value::as_str);
            match op {
                Op::Eq(want) => v == Some(want.as_str()),
                Op::Ne(want) => v != Some(want.as_str()),
                Op::Exists => v.is_some(),
                Op::Absent => v.is_none(),
            }
        })
    }
}
