//! Transit's sign/verify request JSON, decoded the way Vault decodes it.
//!
//! Vault reads request fields with weak typing (a number where a string is expected
//! becomes that number's text, `"true"` is a boolean, ...). Callers written against Vault
//! rely on it, so the same leniency applies here; anything Vault would refuse is a
//! [`Error::BadRequest`] with a message in Vault's words.
//!
//! The caller's body is kept as received ([`TransitRequest::raw`]): it is decoded once,
//! in place (each top-level field and each `batch_input` item is a byte range of it), so
//! what is forwarded to Vault is exactly what the caller sent, without a re-encoding. An
//! `input` without JSON escapes (base64 has none) is a slice of the body, not a copy
//! ([`Text`]): a request costs about one copy of its body in memory.

use std::borrow::Cow;
use std::ops::Range;

use axum::body::Bytes;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::Error;

/// A string from the request: a slice of the caller's body when it had no escapes, so a
/// large `input` is not copied. Always valid UTF-8 (read as `str`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Text(Bytes);

impl Text {
    /// A slice of a body serde_json has read as a string without escapes (valid UTF-8).
    fn shared(bytes: Bytes) -> Text {
        debug_assert!(std::str::from_utf8(&bytes).is_ok());
        Text(bytes)
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        // Valid UTF-8 by construction (from a `String`, or from a JSON string serde_json
        // has checked); the check costs a pass over bytes already in cache.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text(Bytes::from(s.into_bytes()))
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text::from(s.to_string())
    }
}

/// One item to sign or verify: the top-level fields, or one entry of `batch_input`.
/// `Some("")` means the field was present but empty or `null`, as Vault distinguishes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Item {
    /// Base64 input as sent (decoded by the verifier, which owns Vault's error messages).
    pub input: Option<Text>,
    pub signature: Option<String>,
    pub hmac: Option<String>,
    pub context: Option<String>,
    pub reference: String,
}

/// Request-level options shared by all items.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options {
    pub hash_algorithm: Option<String>,
    pub prehashed: bool,
    pub key_version: Option<i64>,
    pub signature_algorithm: Option<String>,
    pub marshaling_algorithm: Option<String>,
    pub salt_length: Option<String>,
}

/// A decoded sign or verify request.
#[derive(Debug, Clone)]
pub struct TransitRequest {
    pub options: Options,
    /// One item, or the items of `batch_input` (which then wins over top-level fields).
    pub items: Vec<Item>,
    pub batch: bool,
    /// The caller's body, unchanged.
    raw: Bytes,
    /// The top-level fields in the order sent: name and the range of its JSON value.
    fields: Vec<(String, Range<usize>)>,
    /// The range of each `batch_input` entry's JSON (empty unless `batch`).
    batch_items: Vec<Range<usize>>,
}

/// Field names Transit's sign and verify endpoints know; others draw Vault's warning.
const KNOWN_FIELDS: &[&str] = &[
    "input",
    "signature",
    "hmac",
    "cmac",
    "context",
    "reference",
    "hash_algorithm",
    "algorithm",
    "prehashed",
    "key_version",
    "signature_algorithm",
    "marshaling_algorithm",
    "salt_length",
    "batch_input",
    "name",
    "urlalgorithm",
    "mac_length",
    "signature_context",
];

/// The fields of a single-mode sign body that make its `batch_input` entry when it is
/// coalesced with others (`reference` is not needed: answers are matched by position).
pub const SIGN_ITEM_FIELDS: [&str; 2] = ["input", "context"];

/// The fields of a body that belong to its item; everything else is an option.
const ITEM_FIELDS: [&str; 3] = ["input", "context", "reference"];

/// A JSON object's members as sent: names (borrowed when unescaped) and raw values.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(4));
                while let Some((name, value)) = map.next_entry::<Name<'de>, &'de RawValue>()? {
                    members.push((name.0, value));
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Object)
    }
}

struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Str;
        impl<'de> Visitor<'de> for Str {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(s.to_string())))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(s)))
            }
        }
        d.deserialize_str(Str)
    }
}

/// Where `part` (a slice of `base`) starts and ends in `base`.
fn range_in(base: &[u8], part: &str) -> Range<usize> {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    start..start + part.len()
}

/// One decoded JSON object of the body: each member's name and value range, and its
/// value as `RawValue` for decoding.
struct Object<'a> {
    base: &'a [u8],
    members: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> Object<'a> {
    fn parse(base: &'a [u8], text: &'a str) -> Result<Self, serde_json::Error> {
        let members = serde_json::from_str::<Members<'a>>(text)?.0;
        Ok(Object { base, members })
    }

    /// The member `name` (the last one, as Vault's decoder keeps the last of duplicates).
    fn raw(&self, name: &str) -> Option<&'a RawValue> {
        self.members
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    /// The member `name` decoded (for the small option fields).
    fn get(&self, name: &str) -> Option<Value> {
        self.raw(name)
            .map(|v| serde_json::from_str(v.get()).unwrap_or(Value::Null))
    }
}

impl TransitRequest {
    /// Decodes a request body. An empty body is an empty object, as for Vault.
    pub fn parse(raw: Bytes, max_batch_items: usize) -> Result<Self, Error> {
        let decode_error =
            |e: serde_json::Error| Error::bad_request(format!("failed to decode JSON input: {e}"));
        let text = std::str::from_utf8(&raw).map_err(|_| {
            Error::bad_request(
                "failed to decode JSON input: invalid unicode code point".to_string(),
            )
        })?;
        let trimmed = text.trim_start_matches(|c: char| c.is_ascii_whitespace());
        let body = if trimmed.is_empty() {
            Object {
                base: &raw,
                members: Vec::new(),
            }
        } else if !trimmed.starts_with('{') {
            return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Ok(_) => Error::bad_request(
                    "failed to decode JSON input: the body must be a JSON object",
                ),
                Err(e) => decode_error(e),
            });
        } else {
            Object::parse(&raw, text).map_err(decode_error)?
        };
        let options = Options {
            hash_algorithm: weak_string(&body, "hash_algorithm")?
                .filter(|h| !h.is_empty())
                .or(weak_string(&body, "algorithm")?.filter(|h| !h.is_empty())),
            prehashed: weak_bool(&body, "prehashed")?.unwrap_or(false),
            key_version: weak_int(&body, "key_version")?,
            signature_algorithm: weak_string(&body, "signature_algorithm")?,
            marshaling_algorithm: weak_string(&body, "marshaling_algorithm")?,
            salt_length: weak_string(&body, "salt_length")?,
        };
        let mut batch_items = Vec::new();
        let (items, batch) = match body.raw("batch_input") {
            None => (vec![item(&raw, &body, None)?], false),
            Some(v) if v.get() == "null" => (vec![item(&raw, &body, None)?], false),
            Some(v) if v.get().starts_with('[') => {
                let list: Vec<&RawValue> = serde_json::from_str(v.get()).map_err(decode_error)?;
                if list.is_empty() {
                    return Err(Error::bad_request("missing batch input to process"));
                }
                if list.len() > max_batch_items {
                    return Err(Error::bad_request(format!(
                        "batch_input has {} items, more than the limit of {max_batch_items}",
                        list.len()
                    )));
                }
                batch_items = list.iter().map(|v| range_in(&raw, v.get())).collect();
                let items = list
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match first_byte(v) {
                        b'{' => {
                            let m = Object::parse(&raw, v.get()).map_err(decode_error)?;
                            item(&raw, &m, Some(i))
                        }
                        b'n' => Ok(Item::default()),
                        _ => Err(Error::bad_request(format!(
                            "failed to parse batch input: item {i} must be an object, got {}",
                            json_type(v)
                        ))),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                (items, true)
            }
            Some(_) => {
                return Err(Error::bad_request(
                    "failed to parse batch input: batch_input must be a list of objects",
                ))
            }
        };
        let fields = body
            .members
            .iter()
            .map(|(n, v)| (n.to_string(), range_in(&raw, v.get())))
            .collect();
        Ok(TransitRequest {
            options,
            items,
            batch,
            raw,
            fields,
            batch_items,
        })
    }

    /// Vault's warning for fields it ignores, e.g. `[unknownfield]`.
    pub fn unknown_fields_warning(&self) -> Option<String> {
        let mut unknown: Vec<&str> = self
            .fields
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !KNOWN_FIELDS.contains(k))
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        (!unknown.is_empty()).then(|| {
            format!(
                "Endpoint ignored these unrecognized parameters: [{}]",
                unknown.join(" ")
            )
        })
    }

    /// The caller's body as received (what a single request forwards to Vault).
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The JSON text of the last top-level field `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.field_range(name).map(|r| self.text(r))
    }

    /// Where the JSON text of the last top-level field `name` is in [`raw`](Self::raw).
    pub fn field_range(&self, name: &str) -> Option<Range<usize>> {
        self.fields
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r.clone())
    }

    fn text(&self, range: Range<usize>) -> &str {
        std::str::from_utf8(&self.raw[range]).unwrap_or("null")
    }

    /// The JSON text of `batch_input` entry `i`.
    pub fn batch_item(&self, i: usize) -> &str {
        self.batch_items
            .get(i)
            .map_or("null", |r| self.text(r.clone()))
    }

    /// The body's size in bytes.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// This request's options (every top-level field except its item fields and
    /// `batch_input`) as JSON object members, `"name":value,` each, sorted by name and
    /// without duplicates: requests with equal text may share a Transit batch.
    pub fn option_members(&self) -> String {
        let mut names: Vec<&(String, Range<usize>)> = self
            .fields
            .iter()
            .filter(|(n, _)| !ITEM_FIELDS.contains(&n.as_str()) && n != "batch_input")
            .collect();
        if names.is_empty() {
            return String::new();
        }
        // The last of duplicates wins: keep the last occurrence of each name.
        names.reverse();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        names.dedup_by(|a, b| a.0 == b.0);
        let mut out = String::new();
        for (name, range) in names {
            push_member(&mut out, name, self.text(range.clone()));
        }
        out
    }

    /// A body made of this request's top-level fields except `batch_input`, as sent, and
    /// a `batch_input` of `items` (JSON texts).
    pub fn with_batch<'a>(&self, items: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
        let mut out = String::with_capacity(self.raw.len() + 32);
        out.push('{');
        for (name, range) in self.fields.iter().filter(|(n, _)| n != "batch_input") {
            push_member(&mut out, name, self.text(range.clone()));
        }
        out.push_str("\"batch_input\":[");
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(item);
        }
        out.push_str("]}");
        out.into_bytes()
    }
}

/// Appends `"name":value,` to `out`.
pub fn push_member(out: &mut String, name: &str, value: &str) {
    match serde_json::to_string(name) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("\"\""),
    }
    out.push(':');
    out.push_str(value);
    out.push(',');
}

fn first_byte(v: &RawValue) -> u8 {
    v.get().as_bytes().first().copied().unwrap_or(b'n')
}

fn item(raw: &Bytes, m: &Object<'_>, index: Option<usize>) -> Result<Item, Error> {
    // Inside batch_input Vault decodes every field of an item strictly, the ones it does
    // not know too: strings, numbers (as their text) or null; anything else is its 500.
    if let Some(i) = index {
        if let Some((name, v)) = m
            .members
            .iter()
            .find(|(_, v)| matches!(first_byte(v), b't' | b'f' | b'[' | b'{'))
        {
            return Err(Error::bad_request(format!(
                "failed to parse batch input: '[{i}][{name}]' expected type 'string', got {}",
                json_type(v)
            )));
        }
    }
    let field = |name: &str| -> Result<Option<String>, Error> {
        match m.raw(name) {
            None => Ok(None),
            Some(v) if v.get() == "null" => Ok(Some(String::new())),
            Some(_) => weak_string(m, name),
        }
    };
    let input = match m.raw("input") {
        // A string without escapes is its bytes between the quotes: no copy.
        Some(v) if v.get().starts_with('"') && !v.get().contains('\\') => {
            let r = range_in(m.base, v.get());
            Some(Text::shared(raw.slice(r.start + 1..r.end - 1)))
        }
        _ => field("input")?.map(Text::from),
    };
    Ok(Item {
        input,
        signature: field("signature")?,
        hmac: field("hmac")?,
        context: field("context")?,
        reference: field("reference")?.unwrap_or_default(),
    })
}

fn json_type(v: &RawValue) -> &'static str {
    match first_byte(v) {
        b'n' => "null",
        b't' | b'f' => "a boolean",
        b'"' => "a string",
        b'[' => "a list",
        b'{' => "an object",
        _ => "a number",
    }
}

fn type_error(field: &str, problem: String) -> Error {
    Error::bad_request(format!(
        "Field validation failed: error converting input for field \"{field}\": {problem}"
    ))
}

fn value_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A string field: strings as they are, numbers as their text, booleans as "1"/"0"
/// (Vault's weak decode).
fn weak_string(m: &Object<'_>, field: &str) -> Result<Option<String>, Error> {
    match m.get(field) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(String::new())),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(if b { "1" } else { "0" }.to_string())),
        Some(other) => Err(type_error(
            field,
            format!("expected a string, got {}", value_type(&other)),
        )),
    }
}

/// A boolean field: booleans, 0/1, or strings Go's `strconv.ParseBool` accepts.
fn weak_bool(m: &Object<'_>, field: &str) -> Result<Option<bool>, Error> {
    let invalid = || {
        type_error(
            field,
            "cannot parse value as 'bool': strconv.ParseBool: invalid syntax".into(),
        )
    };
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(Value::String(s)) => match s.as_str() {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(Some(true)),
            "0" | "f" | "F" | "FALSE" | "false" | "False" | "" => Ok(Some(false)),
            _ => Err(invalid()),
        },
        Some(Value::Number(n)) => match n.as_i64() {
            Some(0) if !n.is_f64() => Ok(Some(false)),
            Some(1) if !n.is_f64() => Ok(Some(true)),
            _ => Err(invalid()),
        },
        Some(other) => Err(type_error(
            field,
            format!("expected a boolean, got {}", value_type(&other)),
        )),
    }
}

/// An integer field: integers, numeric strings, `true` (1); `null` and "" mean absent.
/// Negative values are kept so the caller can refuse them with Vault's words.
fn weak_int(m: &Object<'_>, field: &str) -> Result<Option<i64>, Error> {
    let invalid = || {
        type_error(
            field,
            "cannot parse value as 'int': strconv.ParseInt: invalid syntax".into(),
        )
    };
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(i64::from(b))),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(invalid),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s.parse::<i64>().map(Some).map_err(|_| invalid()),
        Some(other) => Err(type_error(
            field,
            format!("expected an integer, got {}", value_type(&other)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<TransitRequest, Error> {
        TransitRequest::parse(Bytes::from(s.to_string()), 3)
    }

    #[test]
    fn single_and_batch() {
        let r = parse(r#"{"input":"aGk=","signature":"vault:v1:x","hash_algorithm":"sha2-512","prehashed":"true","key_version":"2"}"#).unwrap();
        assert!(!r.batch);
        assert_eq!(r.items.len(), 1);
        assert_eq!(r.items[0].signature.as_deref(), Some("vault:v1:x"));
        assert_eq!(r.options.hash_algorithm.as_deref(), Some("sha2-512"));
        assert!(r.options.prehashed);
        assert_eq!(r.options.key_version, Some(2));
        let b = parse(
            r#"{"input":"ignored","batch_input":[{"input":"a","reference":"r"},{"input":5}]}"#,
        )
        .unwrap();
        assert!(b.batch);
        assert_eq!(b.items[0].reference, "r");
        assert_eq!(b.items[1].input.as_deref(), Some("5"));
        assert_eq!(b.items[0].signature, None);
        // Numbers and null are what Vault takes in unknown batch fields too.
        assert!(parse(r#"{"batch_input":[{"input":"aGk=","x":5,"y":1.5,"z":null}]}"#).is_ok());
        let n = parse(r#"{"signature":null}"#).unwrap();
        assert_eq!(n.items[0].signature.as_deref(), Some(""));
        assert_eq!(n.items[0].input, None);
    }

    #[test]
    fn empty_body_is_an_empty_request() {
        let r = parse("").unwrap();
        assert_eq!(r.items, vec![Item::default()]);
        assert!(parse("  \n").is_ok());
    }

    #[test]
    fn malformed_bodies_are_400s() {
        for (body, needle) in [
            ("notjson", "failed to decode JSON"),
            ("[1]", "must be a JSON object"),
            (r#"{"batch_input":"x"}"#, "must be a list"),
            (r#"{"batch_input":[]}"#, "missing batch input"),
            (r#"{"batch_input":[1]}"#, "item 0 must be an object"),
            (
                r#"{"batch_input":[{},{},{},{}]}"#,
                "more than the limit of 3",
            ),
            (r#"{"input":{"a":1}}"#, "field \"input\""),
            (r#"{"prehashed":"maybe"}"#, "field \"prehashed\""),
            (r#"{"key_version":1.5}"#, "field \"key_version\""),
            (r#"{"prehashed":2}"#, "field \"prehashed\""),
            (r#"{"key_version":"abc"}"#, "field \"key_version\""),
            (r#"{"batch_input":[{"input":[1]}]}"#, "'[0][input]'"),
            (r#"{"batch_input":[{"input":true}]}"#, "'[0][input]'"),
            // Fields Vault does not know are decoded as strictly (found by schemathesis:
            // Vault answered these with a 500, passed on as a 502).
            (r#"{"batch_input":[{"input":"aGk=","x":{}}]}"#, "'[0][x]'"),
            (
                r#"{"batch_input":[{"input":"aGk="},{"x":[true]}]}"#,
                "'[1][x]' expected type 'string', got a list",
            ),
            (
                r#"{"batch_input":[{"input":"aGk=","x":false}]}"#,
                "'[0][x]'",
            ),
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.status(), 400, "{body}");
            assert!(e.to_string().contains(needle), "{body}: {e}");
        }
    }

    #[test]
    fn the_body_is_kept_as_sent_and_input_is_not_copied() {
        let body = r#"{"input":"aGk=", "prehashed":true,"batch_input":null,"x":[1, 2],"x":3}"#;
        let r = parse(body).unwrap();
        assert_eq!(&r.raw()[..], body.as_bytes());
        assert_eq!(r.items[0].input.as_deref(), Some("aGk="));
        assert_eq!(r.field("x"), Some("3"));
        assert_eq!(r.option_members(), r#""prehashed":true,"x":3,"#);
        // An input with an escape is decoded (a copy); without one it is a slice.
        let e = parse(r#"{"input":"a\/b"}"#).unwrap();
        assert_eq!(e.items[0].input.as_deref(), Some("a/b"));
        let b =
            parse(r#"{"prehashed":true,"batch_input":[{"input":"YQ=="}, null,{"input":"Yg=="}]}"#)
                .unwrap();
        assert_eq!(
            (b.batch_item(0), b.batch_item(1), b.batch_item(2)),
            (r#"{"input":"YQ=="}"#, "null", r#"{"input":"Yg=="}"#)
        );
        assert_eq!(
            String::from_utf8(b.with_batch([b.batch_item(2)])).unwrap(),
            r#"{"prehashed":true,"batch_input":[{"input":"Yg=="}]}"#
        );
    }

    #[test]
    fn unknown_fields_are_warned_about() {
        let r = parse(r#"{"input":"","unknownfield":1}"#).unwrap();
        assert_eq!(
            r.unknown_fields_warning().unwrap(),
            "Endpoint ignored these unrecognized parameters: [unknownfield]"
        );
        assert_eq!(
            parse(r#"{"input":""}"#).unwrap().unknown_fields_warning(),
            None
        );
    }
}
