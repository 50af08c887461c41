//! The `Status` objects the Kubernetes API server answers errors with (apimachinery's
//! `k8s.io/apimachinery/pkg/api/errors` constructors), and the resources' names as those
//! messages print them.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// An error answer: its HTTP code, `Status` body and extra headers.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: u16,
    pub body: Value,
    pub retry_after: Option<u64>,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap();
        let mut resp = (code, axum::Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert("retry-after", secs.to_string().parse().unwrap());
        }
        resp
    }
}

/// What a resource is called in messages and `details`: `secrets` (core) or
/// `deployments.apps`, its group, and its `Kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gr {
    pub resource: &'static str,
    pub group: &'static str,
    pub kind: &'static str,
}

impl Gr {
    /// `schema.GroupResource.String()`: `secrets`, `deployments.apps`.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }

    /// `details` naming an object of this resource (`kind` is the resource, as the
    /// server fills it).
    fn details(&self, name: &str) -> Value {
        let mut d = json!({"name": name, "kind": self.resource});
        if !self.group.is_empty() {
            d["group"] = json!(self.group);
        }
        d
    }
}

fn failure(code: u16, reason: &str, message: String, details: Option<Value>) -> Failure {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(d) = details {
        body["details"] = d;
    }
    Failure {
        code,
        body,
        retry_after: None,
    }
}

/// 401, as the authentication filter answers.
pub fn unauthorized() -> Failure {
    failure(401, "Unauthorized", "Unauthorized".into(), None)
}

/// 403, as RBAC's refusal reads (`responsewriters.ForbiddenStatusError`).
pub fn forbidden(gr: &Gr, name: &str, user: &str, verb: &str, ns: &str) -> Failure {
    let why = format!(
        "User {user:?} cannot {verb} resource {:?} in API group {:?} in the namespace {ns:?}",
        gr.resource, gr.group
    );
    let message = if name.is_empty() {
        format!("{} is forbidden: {why}", gr.qualified())
    } else {
        format!("{} {name:?} is forbidden: {why}", gr.qualified())
    };
    failure(403, "Forbidden", message, Some(gr.details(name)))
}

pub fn not_found(gr: &Gr, name: &str) -> Failure {
    let message = format!("{} {name:?} not found", gr.qualified());
    failure(404, "NotFound", message, Some(gr.details(name)))
}

/// 404 for a path the server does not serve.
pub fn no_such_resource() -> Failure {
    let message = "the server could not find the requested resource".to_string();
    failure(404, "NotFound", message, Some(json!({})))
}

/// 404 for a namespace that does not exist (the NamespaceLifecycle admission plugin).
pub fn namespace_not_found(ns: &str) -> Failure {
    let gr = Gr {
        resource: "namespaces",
        group: "",
        kind: "Namespace",
    };
    not_found(&gr, ns)
}

pub fn already_exists(gr: &Gr, name: &str) -> Failure {
    let message = format!("{} {name:?} already exists", gr.qualified());
    failure(409, "AlreadyExists", message, Some(gr.details(name)))
}

/// 409 `Operation cannot be fulfilled on ...`: a stale resourceVersion, a failed
/// precondition.
pub fn conflict(gr: &Gr, name: &str, why: &str) -> Failure {
    let message = format!(
        "Operation cannot be fulfilled on {} {name:?}: {why}",
        gr.qualified()
    );
    failure(409, "Conflict", message, Some(gr.details(name)))
}

/// The optimistic-lock message of a stale resourceVersion.
pub const MODIFIED: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

/// 409 of a server-side apply whose fields others own (`NewApplyConflict`): one cause per
/// field, `(manager as printed, field path)`.
pub fn apply_conflict(conflicts: &[(String, String)]) -> Failure {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(manager, field)| {
            json!({"type": "FieldManagerConflict", "message": format!("conflict with {manager}"), "field": field})
        })
        .collect();
    let message = match conflicts {
        [(manager, field)] => {
            format!("Apply failed with 1 conflict: conflict with {manager}: {field}")
        }
        _ => {
            let mut managers: Vec<&String> = conflicts.iter().map(|(m, _)| m).collect();
            managers.sort();
            managers.dedup();
            let mut lines = Vec::new();
            for m in managers {
                lines.push(format!("conflicts with {m}:"));
                lines.extend(
                    conflicts
                        .iter()
                        .filter(|(cm, _)| cm == m)
                        .map(|(_, f)| format!("- {f}")),
                );
            }
            format!(
                "Apply failed with {} conflicts: {}",
                conflicts.len(),
                lines.join("\n")
            )
        }
    };
    failure(409, "Conflict", message, Some(json!({"causes": causes})))
}

/// 422 `Kind "name" is invalid: field: message` (`NewInvalid`), one cause per problem:
/// `(cause reason, field, message)`.
pub fn invalid(
    kind: &str,
    group: &str,
    name: &str,
    problems: &[(&str, String, String)],
) -> Failure {
    let texts: Vec<String> = problems
        .iter()
        .map(|(_, field, msg)| format!("{field}: {msg}"))
        .collect();
    let joined = match texts.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    };
    let qualified = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    let causes: Vec<Value> = problems
        .iter()
        .map(|(reason, field, msg)| json!({"reason": reason, "message": msg, "field": field}))
        .collect();
    let mut details = json!({"name": name, "kind": kind, "causes": causes});
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    failure(
        422,
        "Invalid",
        format!("{qualified} {name:?} is invalid: {joined}"),
        Some(details),
    )
}

/// 500 `Internal error occurred: <cause>`.
pub fn internal(cause: &str) -> Failure {
    failure(
        500,
        "InternalError",
        format!("Internal error occurred: {cause}"),
        Some(json!({"causes": [{"message": cause}]})),
    )
}

pub fn bad_request(message: String) -> Failure {
    failure(400, "BadRequest", message, None)
}

/// 415 for a patch type the server does not take.
pub fn unsupported_media_type(content_type: &str) -> Failure {
    let _ = content_type;
    let message = "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json".to_string();
    failure(415, "UnsupportedMediaType", message, None)
}

pub fn method_not_allowed() -> Failure {
    let message = "the server does not allow this method on the requested resource".to_string();
    failure(405, "MethodNotAllowed", message, Some(json!({})))
}

/// An injected fault with the body the server sends for `code`.
pub fn injected(code: u16, gr: &Gr, name: &str, user: &str, verb: &str, ns: &str) -> Failure {
    match code {
        401 => unauthorized(),
        403 => forbidden(gr, name, user, verb, ns),
        404 => not_found(gr, name),
        409 => conflict(gr, name, MODIFIED),
        429 => {
            let message = "Too many requests, please try again later.".to_string();
            let mut f = failure(
                429,
                "TooManyRequests",
                message,
                Some(json!({"retryAfterSeconds": 1})),
            );
            f.retry_after = Some(1);
            f
        }
        500 => internal("stand-in: injected fault"),
        503 => failure(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request".into(),
            None,
        ),
        other => panic!("fail_next: no Status body for {other}"),
    }
}
