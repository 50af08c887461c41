//! The audit event: one JSON object per action, with a fixed set of typed fields.
//!
//! There is no free-form map of fields, and the only way to mention a signed input is
//! [`AuditEvent::input`], which keeps its SHA-256 and nothing else. Tokens have no field
//! at all: an [`Actor`] is built from the token's lookup-self identity (display name,
//! entity, accessor), never from the token.

use std::fmt;
use std::time::SystemTime;

use serde::{Serialize, Serializer};

/// Longest kept text of a free-form field (reason, error message); longer text is cut.
const MAX_TEXT: usize = 1024;
/// Longest kept request id or actor.
const MAX_LABEL: usize = 256;
/// Room for a typical event's JSON (a sign event is about 300 bytes).
const JSON_CAPACITY: usize = 512;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A key rotation by a rotation job (`aegis` CLI).
    Rotate,
    /// Retirement of key versions by a rotation job (`aegis` CLI).
    Retire,
    /// A retention record endorsed by `aegis retention endorse` (`aegis` CLI).
    Endorse,
    /// A Kubernetes object written, deleted or restarted by `aegis sync`.
    Sync,
    /// A signature made through the sidecar.
    Sign,
    /// A verification the sidecar refused (bad signature, retired or unknown version).
    VerifyRefused,
    /// A model verification through the sidecar (`/v1/aegis/model/verify`), valid or not.
    VerifyModel,
    /// A request the guard or the caller policy refused before Vault was asked (no
    /// `X-Vault-Request`, a browser, an unknown caller, a key it may not use, its rate).
    Refused,
}

impl EventKind {
    /// The name written in the `event` field.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Rotate => "rotate",
            EventKind::Retire => "retire",
            EventKind::Endorse => "endorse",
            EventKind::Sync => "sync",
            EventKind::Sign => "sign",
            EventKind::VerifyRefused => "verify_refused",
            EventKind::VerifyModel => "verify_model",
            EventKind::Refused => "refused",
        }
    }

    /// Lifecycle events (rotate, retire, endorse, sync) are rare and must never be dropped;
    /// the request-path kinds (sign, verify_refused, refused) may be, under overload, and are counted.
    pub fn is_lifecycle(self) -> bool {
        matches!(
            self,
            EventKind::Rotate | EventKind::Retire | EventKind::Endorse | EventKind::Sync
        )
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who acted: written as a string in the `actor` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Actor(String);

impl Actor {
    /// A CLI command's actor, from the token's `lookup-self` data (never the token):
    /// `display_name=<name> entity_id=<id> accessor=<accessor>`, `entity_id` left out
    /// when empty (root and orphan tokens have none).
    pub fn token(display_name: &str, entity_id: &str, accessor: &str) -> Self {
        let entity = if entity_id.is_empty() {
            String::new()
        } else {
            format!(" entity_id={entity_id}")
        };
        Actor(capped(format!(
            "display_name={display_name}{entity} accessor={accessor}"
        )))
    }

    /// The sidecar's caller, as the caller policy identified it (e.g. `uid:1000`).
    pub fn caller(identity: impl Into<String>) -> Self {
        Actor(capped(identity.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The `result` field: `"ok"` or `"error: <message>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error(String),
}

impl Outcome {
    /// A failure, described by `err`'s `Display` (which must not carry secrets; errors in
    /// this crate never do).
    pub fn error(err: impl fmt::Display) -> Self {
        Outcome::Error(cut(err.to_string(), MAX_TEXT))
    }

    /// The outcome of `result`.
    pub fn of<T, E: fmt::Display>(result: &Result<T, E>) -> Self {
        match result {
            Ok(_) => Outcome::Ok,
            Err(e) => Outcome::error(e),
        }
    }
}

impl Serialize for Outcome {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Outcome::Ok => s.serialize_str("ok"),
            Outcome::Error(message) => s.collect_str(&format_args!("error: {message}")),
        }
    }
}

/// The SHA-256 of a signed input, in lowercase hex. Built only by hashing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct InputDigest(String);

impl InputDigest {
    /// Hashes `input` once and writes the digest's hex into one string of its final size.
    pub fn of(input: &[u8]) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, input);
        let mut hex = String::with_capacity(2 * digest.as_ref().len());
        for b in digest.as_ref() {
            hex.push(char::from(HEX[usize::from(b >> 4)]));
            hex.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        InputDigest(hex)
    }

    pub fn as_hex(&self) -> &str {
        &self.0
    }
}

/// One audited action, serialized as one JSON object (one line in the audit file, one
/// HTTP request body). Build it with [`AuditEvent::new`] and the builder methods.
///
/// ```json
/// {"id":"9b2f…","time":"2026-01-02T03:04:05.678Z","event":"retire","actor":"display_name=approle accessor=…",
///  "mount":"transit","key":"model-signing","versions":[3,4],"retire_after":"2026-04-01T00:00:00Z",
///  "reason":"quarterly rotation","result":"ok"}
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// A random UUID v4: receivers deduplicate redelivered events by it.
    id: String,
    /// When the event was built, RFC 3339 UTC with milliseconds.
    time: String,
    event: EventKind,
    actor: Actor,
    mount: String,
    key: String,
    versions: Vec<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retire_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    result: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    input_sha256: Option<InputDigest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
    /// The Kubernetes object acted on (sync): `secret/{namespace}/{name}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
}

impl AuditEvent {
    /// A new event with a fresh id and the current time; `versions` starts empty.
    pub fn new(kind: EventKind, actor: Actor, mount: &str, key: &str, result: Outcome) -> Self {
        AuditEvent {
            id: crate::ids::uuid_v4().to_string(),
            time: rfc3339(SystemTime::now()),
            event: kind,
            actor,
            mount: mount.to_owned(),
            key: key.to_owned(),
            versions: Vec::new(),
            retire_after: None,
            reason: None,
            result,
            input_sha256: None,
            request_id: None,
            target: None,
        }
    }

    /// The key versions acted on. Rotate: the latest version before, then the new one;
    /// retire: the retired versions; sign: the version that signed; verify_refused: the
    /// version the signature names.
    pub fn versions(mut self, versions: impl IntoIterator<Item = u64>) -> Self {
        self.versions = versions.into_iter().collect();
        self
    }

    /// Until when retired versions still verify (retire).
    pub fn retire_after(mut self, at: SystemTime) -> Self {
        self.retire_after = Some(rfc3339(at));
        self
    }

    /// Why (the operator's `--reason`, or why a verification was refused).
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(cut(reason.into(), MAX_TEXT));
        self
    }

    /// The signed input (sign): only its SHA-256 is kept.
    pub fn input(mut self, input: &[u8]) -> Self {
        self.input_sha256 = Some(InputDigest::of(input));
        self
    }

    /// The request id the sidecar gave the request.
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(capped(id.into()));
        self
    }

    /// The Kubernetes object acted on (sync).
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(capped(target.into()));
        self
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn kind(&self) -> EventKind {
        self.event
    }

    /// The JSON object, without a trailing newline, in one buffer sized for a typical event.
    pub(super) fn to_json(&self) -> Vec<u8> {
        let mut json = Vec::with_capacity(JSON_CAPACITY);
        serde_json::to_writer(&mut json, self)
            .expect("an audit event has only strings and numbers");
        json
    }

    /// The event's id, taken out of it (its JSON is already written).
    pub(super) fn into_id(self) -> String {
        self.id
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn capped(text: String) -> String {
    cut(text, MAX_LABEL)
}

/// `text` cut to at most `max` bytes, on a character boundary, marked with `…` when cut.
fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::time::Duration;

    fn value(e: &AuditEvent) -> Value {
        serde_json::from_slice(&e.to_json()).unwrap()
    }

    #[test]
    fn retire_event_has_the_documented_fields() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let e = AuditEvent::new(
            EventKind::Retire,
            Actor::token("approle", "ent-1", "acc-1"),
            "transit",
            "model",
            Outcome::Ok,
        )
        .versions([3, 4])
        .retire_after(at)
        .reason("quarterly");
        let v = value(&e);
        assert_eq!(v["event"], "retire");
        assert_eq!(
            v["actor"],
            "display_name=approle entity_id=ent-1 accessor=acc-1"
        );
        assert_eq!(v["versions"], json!([3, 4]));
        assert_eq!(v["retire_after"], "2027-01-15T08:00:00.000Z");
        assert_eq!(v["reason"], "quarterly");
        assert_eq!(v["result"], "ok");
        assert_eq!(v["id"], e.id());
        assert!(uuid::Uuid::parse_str(e.id()).is_ok());
        let time = v["time"].as_str().unwrap();
        assert!(time.ends_with('Z'));
        assert!(humantime::parse_rfc3339(time).is_ok());
        assert!(v.get("input_sha256").is_none() && v.get("request_id").is_none());
    }

    #[test]
    fn sign_event_keeps_only_the_digest_of_the_input() {
        let e = AuditEvent::new(
            EventKind::Sign,
            Actor::caller("uid:1000"),
            "transit",
            "k",
            Outcome::Ok,
        )
        .versions([2])
        .input(b"abc")
        .request_id("req-1");
        let text = String::from_utf8(e.to_json()).unwrap();
        assert!(text.contains(
            "\"input_sha256\":\"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\""
        ));
        assert!(!text.contains("abc\""));
        assert_eq!(value(&e)["request_id"], "req-1");
    }

    #[test]
    fn outcome_and_actor_render_as_strings() {
        let failed: Result<(), &str> = Err("permission denied");
        let e = AuditEvent::new(
            EventKind::Rotate,
            Actor::token("root", "", "a"),
            "transit",
            "k",
            Outcome::of(&failed),
        );
        let v = value(&e);
        assert_eq!(v["result"], "error: permission denied");
        assert_eq!(v["actor"], "display_name=root accessor=a");
        assert_eq!(v["event"], "rotate");
        assert_eq!(EventKind::VerifyRefused.to_string(), "verify_refused");
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_TEXT);
        let cut = cut(long, MAX_TEXT);
        assert!(cut.len() <= MAX_TEXT + '…'.len_utf8());
        assert!(cut.ends_with('…'));
        assert_eq!(Actor::caller("x".repeat(1000)).as_str().len(), 256 + 3);
    }
}
