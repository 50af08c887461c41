//! Transit's sign/verify request JSON, decoded the way Vault decodes it.
//!
//! Vault reads request fields with weak typing (a number where a string is expected
//! becomes that number's text, `"true"` is a boolean, ...). Callers written against Vault
//! rely on it, so the same leniency applies here; anything Vault would refuse is a
//! [`Error::BadRequest`] with a message in Vault's words. The caller's JSON object is kept
//! as received ([`TransitRequest::body`]) so that what is forwarded to Vault is exactly
//! what the caller sent.

use serde_json::{Map, Value};

use crate::error::Error;

/// One item to sign or verify: the top-level fields, or one entry of `batch_input`.
/// `Some("")` means the field was present but empty or `null`, as Vault distinguishes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Item {
    /// Base64 input as sent (decoded by the verifier, which owns Vault's error messages).
    pub input: Option<String>,
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
    /// The caller's JSON object, unchanged.
    pub body: Map<String, Value>,
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

impl TransitRequest {
    /// Decodes a request body. An empty body is an empty object, as for Vault.
    pub fn parse(body: &[u8], max_batch_items: usize) -> Result<Self, Error> {
        let body: Map<String, Value> = if body.iter().all(u8::is_ascii_whitespace) {
            Map::new()
        } else {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(m)) => m,
                Ok(_) => {
                    return Err(Error::bad_request(
                        "failed to decode JSON input: the body must be a JSON object",
                    ))
                }
                Err(e) => {
                    return Err(Error::bad_request(format!(
                        "failed to decode JSON input: {e}"
                    )))
                }
            }
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
        let (items, batch) = match body.get("batch_input") {
            None | Some(Value::Null) => (vec![item(&body, None)?], false),
            Some(Value::Array(list)) => {
                if list.is_empty() {
                    return Err(Error::bad_request("missing batch input to process"));
                }
                if list.len() > max_batch_items {
                    return Err(Error::bad_request(format!(
                        "batch_input has {} items, more than the limit of {max_batch_items}",
                        list.len()
                    )));
                }
                let items = list
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match v {
                        Value::Object(m) => item(m, Some(i)),
                        Value::Null => Ok(Item::default()),
                        other => Err(Error::bad_request(format!(
                            "failed to parse batch input: item {i} must be an object, got {}",
                            json_type(other)
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
        Ok(TransitRequest {
            options,
            items,
            batch,
            body,
        })
    }

    /// Vault's warning for fields it ignores, e.g. `[unknownfield]`.
    pub fn unknown_fields_warning(&self) -> Option<String> {
        let unknown: Vec<&str> = self
            .body
            .keys()
            .map(String::as_str)
            .filter(|k| !KNOWN_FIELDS.contains(k))
            .collect();
        (!unknown.is_empty()).then(|| {
            format!(
                "Endpoint ignored these unrecognized parameters: [{}]",
                unknown.join(" ")
            )
        })
    }
}

fn item(m: &Map<String, Value>, index: Option<usize>) -> Result<Item, Error> {
    // Inside batch_input Vault decodes every field of an item strictly, the ones it does
    // not know too: strings, numbers (as their text) or null; anything else is its 500.
    if let Some(i) = index {
        if let Some((name, v)) = m
            .iter()
            .find(|(_, v)| matches!(v, Value::Bool(_) | Value::Array(_) | Value::Object(_)))
        {
            return Err(Error::bad_request(format!(
                "failed to parse batch input: '[{i}][{name}]' expected type 'string', got {}",
                json_type(v)
            )));
        }
    }
    let field = |name: &str| -> Result<Option<String>, Error> {
        match m.get(name) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(String::new())),
            Some(_) => weak_string(m, name),
        }
    };
    Ok(Item {
        input: field("input")?,
        signature: field("signature")?,
        hmac: field("hmac")?,
        context: field("context")?,
        reference: field("reference")?.unwrap_or_default(),
    })
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn type_error(field: &str, problem: String) -> Error {
    Error::bad_request(format!(
        "Field validation failed: error converting input for field \"{field}\": {problem}"
    ))
}

/// A string field: strings as they are, numbers as their text, booleans as "1"/"0"
/// (Vault's weak decode).
fn weak_string(m: &Map<String, Value>, field: &str) -> Result<Option<String>, Error> {
    match m.get(field) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(String::new())),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(if *b { "1" } else { "0" }.to_string())),
        Some(other) => Err(type_error(
            field,
            format!("expected a string, got {}", json_type(other)),
        )),
    }
}

/// A boolean field: booleans, 0/1, or strings Go's `strconv.ParseBool` accepts.
fn weak_bool(m: &Map<String, Value>, field: &str) -> Result<Option<bool>, Error> {
    let invalid = || {
        type_error(
            field,
            "cannot parse value as 'bool': strconv.ParseBool: invalid syntax".into(),
        )
    };
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
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
            format!("expected a boolean, got {}", json_type(other)),
        )),
    }
}

/// An integer field: integers, numeric strings, `true` (1); `null` and "" mean absent.
/// Negative values are kept so the caller can refuse them with Vault's words.
fn weak_int(m: &Map<String, Value>, field: &str) -> Result<Option<i64>, Error> {
    let invalid = || {
        type_error(
            field,
            "cannot parse value as 'int': strconv.ParseInt: invalid syntax".into(),
        )
    };
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(i64::from(*b))),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(invalid),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s.parse::<i64>().map(Some).map_err(|_| invalid()),
        Some(other) => Err(type_error(
            field,
            format!("expected an integer, got {}", json_type(other)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<TransitRequest, Error> {
        TransitRequest::parse(s.as_bytes(), 3)
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
