//! Sign requests naming a `key_version` that must not sign, refused before Vault is asked.
//!
//! OpenBao's `Policy.SignWithOptions` (sdk/helper/keysutil) refuses a `key_version` below
//! `min_encryption_version` ("requested version for signing is less than the minimum
//! encryption key version") and, below `min_decryption_version`, no longer holds the
//! version's key ("no such key version"); in single mode both are a 500 from Vault, in
//! batch mode a per-item error. Aegis answers the same messages with a 400 (single) or the
//! same per-item errors (batch), from the cached keyset. It also refuses a version the
//! retention record marks revoked or past its window (the rule of
//! [`KeySet::version_status`]), which Vault alone would still sign with when the record
//! was written by an older Aegis that did not raise Vault's minimums.

use serde_json::{json, Value};

use crate::b64::{self, Encoding};
use crate::keys::{KeySet, VersionStatus};
use crate::transit::{Item, TransitRequest};
use crate::verify::decode_input;

/// Vault's message for a `key_version` below `min_encryption_version`.
pub(crate) const BELOW_MIN_ENCRYPTION: &str =
    "requested version for signing is less than the minimum encryption key version";
/// Vault's message for a version whose key it no longer holds (below
/// `min_decryption_version`).
pub(crate) const NO_SUCH_VERSION: &str = "no such key version";

/// Why `key_version` may not sign, or `None` (absent, 0, negative or above the latest
/// version are left to the other checks, as Vault orders them).
pub(crate) fn refused_signing_version(set: &KeySet, key_version: Option<i64>) -> Option<String> {
    let v = u32::try_from(key_version?)
        .ok()
        .filter(|v| *v > 0 && *v <= set.latest_version)?;
    if v < set.min_encryption_version {
        return Some(BELOW_MIN_ENCRYPTION.into());
    }
    if v < set.min_decryption_version {
        return Some(NO_SUCH_VERSION.into());
    }
    match set.version_status(v) {
        VersionStatus::Retired { message, .. } => Some(format!(
            "requested version for signing is refused: {message}"
        )),
        _ => None,
    }
}

/// Vault's batch answer when the request's `key_version` is refused: each item gets the
/// error its own input would draw first (missing, not base64, bad context), else `refusal`.
pub(crate) fn batch_refusal(req: &TransitRequest, refusal: &str) -> Value {
    let results: Vec<Value> = req
        .items
        .iter()
        .map(|item| {
            json!({
                "key_version": 0,
                "error": item_error(item, refusal),
                "reference": item.reference,
            })
        })
        .collect();
    json!({ "batch_results": results })
}

/// Vault's single-mode answer: the same loop over one item made of the top-level fields,
/// where `input` is always present (empty when not sent), so never "missing input".
pub(crate) fn single_refusal(item: &Item, refusal: &str) -> String {
    match item.input {
        None => refusal.to_string(),
        Some(_) => item_error(item, refusal),
    }
}

/// The first error Vault's batch loop gives `item` (path_sign_verify.go's order).
fn item_error(item: &Item, refusal: &str) -> String {
    if item.input.is_none() {
        return "missing input".into();
    }
    if let Err(e) = decode_input(item) {
        return e.to_string();
    }
    let context = item.context.as_deref().unwrap_or_default();
    if !context.is_empty() && b64::decode(context, Encoding::Standard).is_err() {
        return "failed to base64-decode context".into();
    }
    refusal.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(input: Option<&str>, context: Option<&str>) -> Item {
        Item {
            input: input.map(Into::into),
            context: context.map(str::to_string),
            reference: "r".into(),
            ..Item::default()
        }
    }

    #[test]
    fn each_item_gets_its_own_first_error() {
        let refusal = BELOW_MIN_ENCRYPTION;
        assert_eq!(item_error(&item(None, None), refusal), "missing input");
        assert!(item_error(&item(Some("%%"), None), refusal)
            .starts_with("unable to decode input as base64"));
        assert_eq!(
            item_error(&item(Some("YQ=="), Some("%%")), refusal),
            "failed to base64-decode context"
        );
        assert_eq!(item_error(&item(Some("YQ=="), Some("")), refusal), refusal);
        assert_eq!(single_refusal(&item(None, None), refusal), refusal);
        assert_eq!(
            single_refusal(&item(Some("YQ=="), Some("%%")), refusal),
            "failed to base64-decode context"
        );
    }
}
