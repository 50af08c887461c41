//! Field ownership as the API server keeps it in `metadata.managedFields`, and the merges
//! that change objects: server-side apply (`apply`), the bookkeeping of an `Update`
//! (`record_update`: create, replace, merge and strategic-merge patches) and JSON merge
//! patch (RFC 7386).
//!
//! Granularity: every leaf of nested maps is a field (`.data.password`,
//! `.metadata.labels.team`); lists are atomic (one field), as `+listType=atomic` lists are
//! (real associative lists such as `containers` are merged by key: not modelled). The
//! string maps (`labels`, `annotations`, `data`, `binaryData`) also carry the `.` entry an
//! `Update` records for a map it created, as the real `FieldsV1` does.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

/// A field: the keys from the object's root to it; a map's own entry ends in `"."`.
pub type Path = Vec<String>;
pub type FieldSet = BTreeSet<Path>;

/// Metadata the server sets, and type information: owned by no manager.
const UNOWNED_META: [&str; 9] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
];

/// Maps whose keys are data (so an `Update` that creates one also owns the map: `.`).
const STRING_MAPS: [&str; 4] = ["labels", "annotations", "data", "binaryData"];

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    pub operation: &'static str,
    pub api_version: String,
    pub time: String,
    pub fields: FieldSet,
}

impl Entry {
    /// How conflict messages name the manager (apimachinery's `printManager`).
    fn printed(&self) -> String {
        if self.operation == "Update" {
            format!("{:?} using {}", self.manager, self.api_version)
        } else {
            format!("{:?}", self.manager)
        }
    }

    fn is(&self, manager: &str, operation: &str) -> bool {
        self.manager == manager && self.operation == operation
    }
}

/// `.data.password`, as field paths print.
pub fn path_string(p: &[String]) -> String {
    p.iter().map(|s| format!(".{s}")).collect()
}

/// The part of `obj` that managers own: without apiVersion, kind, status and the
/// server-set metadata.
fn owned_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        for k in ["apiVersion", "kind", "status"] {
            m.remove(k);
        }
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in UNOWNED_META {
                meta.remove(k);
            }
        }
        if m.get("metadata")
            .is_some_and(|meta| meta.as_object().is_some_and(Map::is_empty))
        {
            m.remove("metadata");
        }
    }
    v
}

/// Every leaf of `v` (a non-empty map is not a leaf; an empty one is) with its value.
fn leaves(v: &Value) -> BTreeMap<Path, Value> {
    fn walk(v: &Value, prefix: &mut Path, out: &mut BTreeMap<Path, Value>) {
        match v.as_object() {
            Some(m) if !m.is_empty() => {
                for (k, c) in m {
                    prefix.push(k.clone());
                    walk(c, prefix, out);
                    prefix.pop();
                }
            }
            _ if prefix.is_empty() => {}
            _ => {
                out.insert(prefix.clone(), v.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&owned_part(v), &mut Vec::new(), &mut out);
    out
}

/// The `.` entries of the string maps present in `v`.
fn map_nodes(v: &Value) -> FieldSet {
    fn walk(v: &Value, prefix: &mut Path, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        if prefix
            .last()
            .is_some_and(|k| STRING_MAPS.contains(&k.as_str()))
        {
            let mut p = prefix.clone();
            p.push(".".into());
            out.insert(p);
        }
        for (k, c) in m {
            prefix.push(k.clone());
            walk(c, prefix, out);
            prefix.pop();
        }
    }
    let mut out = FieldSet::new();
    walk(&owned_part(v), &mut Vec::new(), &mut out);
    out
}

/// Every field of `v`: its leaves and its string maps' `.` entries.
fn all_fields(v: &Value) -> FieldSet {
    leaves(v).into_keys().chain(map_nodes(v)).collect()
}

pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = json!({});
    for p in set {
        let mut node = &mut root;
        for seg in p {
            let key = if seg == "." {
                ".".to_string()
            } else {
                format!("f:{seg}")
            };
            node = node
                .as_object_mut()
                .unwrap()
                .entry(key)
                .or_insert_with(|| json!({}));
        }
    }
    root
}

pub fn from_fields_v1(v: &Value) -> FieldSet {
    fn walk(v: &Value, prefix: &mut Path, out: &mut FieldSet) {
        let m = v.as_object().filter(|m| !m.is_empty());
        let Some(m) = m else {
            out.insert(prefix.clone());
            return;
        };
        for (k, c) in m {
            prefix.push(k.strip_prefix("f:").unwrap_or(k).to_string());
            walk(c, prefix, out);
            prefix.pop();
        }
    }
    let mut out = FieldSet::new();
    if v.as_object().is_some_and(|m| !m.is_empty()) {
        walk(v, &mut Vec::new(), &mut out);
    }
    out
}

/// The `managedFields` of `obj`.
pub fn entries(obj: &Value) -> Vec<Entry> {
    let list = obj["metadata"]["managedFields"].as_array();
    list.into_iter()
        .flatten()
        .map(|e| Entry {
            manager: e["manager"].as_str().unwrap_or_default().to_string(),
            operation: if e["operation"] == "Apply" {
                "Apply"
            } else {
                "Update"
            },
            api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
            time: e["time"].as_str().unwrap_or_default().to_string(),
            fields: from_fields_v1(&e["fieldsV1"]),
        })
        .collect()
}

fn set_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.fields),
            })
        })
        .collect();
    obj["metadata"]["managedFields"] = Value::Array(list);
}

/// The entry of `manager` doing `operation` in `entries`, added if absent.
fn entry_of<'a>(
    entries: &'a mut Vec<Entry>,
    manager: &str,
    operation: &'static str,
    api_version: &str,
) -> &'a mut Entry {
    let at = entries.iter().position(|e| {
        e.is(manager, operation) && (operation == "Apply" || e.api_version == api_version)
    });
    let at = at.unwrap_or_else(|| {
        entries.push(Entry {
            manager: manager.to_string(),
            operation,
            api_version: api_version.to_string(),
            time: String::new(),
            fields: FieldSet::new(),
        });
        entries.len() - 1
    });
    &mut entries[at]
}

/// Records an `Update` by `manager` that turned `old` into `new`: it owns what it added or
/// changed (taken from whoever owned it), and what it removed is no one's.
pub fn record_update(old: Option<&Value>, new: &mut Value, manager: &str, now: &str) {
    let empty = json!({});
    let old = old.unwrap_or(&empty);
    let (before, after) = (leaves(old), leaves(new));
    let before_maps = map_nodes(old);
    let mut changed: FieldSet = after
        .iter()
        .filter(|(p, v)| before.get(*p) != Some(*v))
        .map(|(p, _)| p.clone())
        .collect();
    changed.extend(map_nodes(new).difference(&before_maps).cloned());
    let remaining = all_fields(new);
    let mut list = entries(old);
    for e in &mut list {
        e.fields
            .retain(|p| remaining.contains(p) && !changed.contains(p));
    }
    let api_version = new["apiVersion"].as_str().unwrap_or_default().to_string();
    let ours = entry_of(&mut list, manager, "Update", &api_version);
    if !changed.is_subset(&ours.fields) {
        ours.time = now.to_string();
    }
    ours.fields.extend(changed);
    list.retain(|e| !e.fields.is_empty());
    set_entries(new, &list);
}

/// Server-side apply of `config` by `manager` to `live` (absent: a create). Returns the new
/// object, or the conflicts `(manager as printed, field)` when another manager owns a
/// field the config sets to another value and `force` is not set (with `force`, the
/// conflicting fields change owner).
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<Value, Vec<(String, String)>> {
    let empty = json!({});
    let live = live.unwrap_or(&empty);
    let want = leaves(config);
    let have = leaves(live);
    let mut list = entries(live);
    let mut conflicts = Vec::new();
    for p in want.keys().filter(|p| have.get(*p) != want.get(*p)) {
        for e in list.iter_mut().filter(|e| !e.is(manager, "Apply")) {
            if e.fields.contains(p) {
                conflicts.push((e.printed(), path_string(p)));
                if force {
                    e.fields.remove(p);
                }
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    let mut obj = live.clone();
    let api_version = config["apiVersion"].as_str().unwrap_or_default();
    let prev = entry_of(&mut list, manager, "Apply", api_version)
        .fields
        .clone();
    let others: FieldSet = list
        .iter()
        .filter(|e| !e.is(manager, "Apply"))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    for p in prev
        .iter()
        .filter(|p| !want.contains_key(*p) && !others.contains(*p))
    {
        remove_path(&mut obj, p);
    }
    for (p, v) in &want {
        set_path(&mut obj, p, v.clone());
    }
    for k in ["apiVersion", "kind"] {
        obj[k] = config[k].clone();
    }
    let applied: FieldSet = want.into_keys().collect();
    let ours = entry_of(&mut list, manager, "Apply", api_version);
    if ours.fields != applied || ours.time.is_empty() {
        ours.time = now.to_string();
    }
    ours.fields = applied;
    ours.api_version = api_version.to_string();
    let remaining = all_fields(&obj);
    for e in list.iter_mut().filter(|e| !e.is(manager, "Apply")) {
        e.fields.retain(|p| remaining.contains(p));
    }
    list.retain(|e| !e.fields.is_empty() || e.is(manager, "Apply"));
    set_entries(&mut obj, &list);
    Ok(obj)
}

fn set_path(obj: &mut Value, path: &[String], v: Value) {
    let mut node = obj;
    for seg in path {
        if !node.is_object() {
            *node = json!({});
        }
        node = node
            .as_object_mut()
            .unwrap()
            .entry(seg.clone())
            .or_insert(Value::Null);
    }
    *node = v;
}

/// Removes the field at `path`, and the maps that its removal leaves empty.
fn remove_path(obj: &mut Value, path: &[String]) {
    fn go(node: &mut Map<String, Value>, path: &[String]) {
        match path {
            [] => {}
            [last] => {
                node.remove(last);
            }
            [first, rest @ ..] => {
                if let Some(child) = node.get_mut(first).and_then(Value::as_object_mut) {
                    go(child, rest);
                    if child.is_empty() {
                        node.remove(first);
                    }
                }
            }
        }
    }
    if let Some(m) = obj.as_object_mut() {
        go(m, path);
    }
}

/// JSON merge patch (RFC 7386): maps merge, `null` removes, everything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().unwrap();
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}
