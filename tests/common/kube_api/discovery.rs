//! Legacy (unaggregated) discovery: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/apps`
//! and `/apis/apps/v1`, listing only what the stand-in serves. Clients that ask for
//! aggregated discovery (`Accept: ...;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`)
//! get these `application/json` documents, which they take as a server without it.

use serde_json::{json, Value};

use super::store::KINDS;

/// The discovery document at `path`, if it is one.
pub fn document(path: &str, server: &str) -> Option<Value> {
    let apps = json!({"groupVersion": "apps/v1", "version": "v1"});
    Some(match path {
        "/version" => json!({
            "major": "1",
            "minor": "37",
            "gitVersion": "v1.37.0+aegis-stand-in",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2025-01-01T00:00:00Z",
            "goVersion": "go1.25.0",
            "compiler": "gc",
            "platform": "linux/amd64",
        }),
        "/api" => json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}],
        }),
        "/apis" => json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [{"name": "apps", "versions": [apps], "preferredVersion": apps}],
        }),
        "/apis/apps" => json!({
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": "apps",
            "versions": [apps],
            "preferredVersion": apps,
        }),
        "/api/v1" => resource_list("v1"),
        "/apis/apps/v1" => resource_list("apps/v1"),
        _ => return None,
    })
}

fn resource_list(group_version: &str) -> Value {
    let resources: Vec<Value> = KINDS
        .iter()
        .filter(|k| k.api_version == group_version)
        .map(|k| {
            let mut r = json!({
                "name": k.gr.resource,
                "singularName": k.singular,
                "namespaced": true,
                "kind": k.gr.kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update"],
            });
            if !k.short_names.is_empty() {
                r["shortNames"] = json!(k.short_names);
            }
            r
        })
        .collect();
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    })
}
