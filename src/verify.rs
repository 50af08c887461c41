//! Verification: `vault:vN:` parsing, the version's validity, and local crypto.
//!
//! The pure part ([`check_item`]) parses one item and judges it against a [`KeySet`]
//! with no I/O. The [`Verifier`] around it loads the keyset (refusing one older than
//! `AEGIS_MAX_KEYSET_AGE` with a 503, see `keys::bounds`), refreshes it once (shared by
//! all waiting requests, at most once a second per key) when a signature names a version
//! the cache does not know,
//! and forwards to Vault only what cannot be checked here: HMAC, derived keys, and the
//! rare corner [`CryptoError::NotLocal`] marks.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::b64::{self, Encoding};
use crate::crypto::{
    CryptoError, HashAlgorithm, KeyType, Marshaling, RsaScheme, SaltLength, VerifyParams,
};
use crate::error::Error;
use crate::keys::{KeyCache, KeySet, VersionStatus};
use crate::telemetry::metrics::{self, KeyLabels, VerifyResult};
use crate::transit::{Item, Options, TransitRequest};
use crate::vault::VaultClient;
use axum::body::Bytes;

/// Decodes a caller's base64 input with Vault's error message.
pub fn decode_input(item: &Item) -> Result<Vec<u8>, Error> {
    b64::decode(
        item.input.as_deref().unwrap_or_default(),
        Encoding::Standard,
    )
    .map_err(|at| {
        Error::bad_request(format!(
            "unable to decode input as base64: {}",
            b64::error_text(at)
        ))
    })
}

/// Signature parsed from `vault:vN:base64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedSignature<'a> {
    /// As Go's `strconv.Atoi` reads it: `+1` and `01` are 1, negatives are kept.
    pub version: i64,
    pub encoded: &'a str,
}

/// Parses the `vault:vN:` prefix with Vault's messages.
pub fn parse_signature(sig: &str) -> Result<ParsedSignature<'_>, Error> {
    let rest = sig
        .strip_prefix("vault:v")
        .ok_or_else(|| Error::bad_request("invalid signature: no prefix"))?;
    let (ver, encoded) = rest
        .split_once(':')
        .ok_or_else(|| Error::bad_request("invalid signature: wrong number of fields"))?;
    let version = ver.parse::<i64>().map_err(|_| {
        Error::bad_request("invalid signature: version number could not be decoded")
    })?;
    Ok(ParsedSignature { version, encoded })
}

/// What the items of a verify request carry (Vault's classification and messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    Signature,
    Hmac,
}

pub fn classify(req: &TransitRequest) -> Result<ItemKind, Error> {
    let kind = |i: &Item| {
        if i.signature.is_some() {
            Some(ItemKind::Signature)
        } else if i.hmac.is_some() {
            Some(ItemKind::Hmac)
        } else {
            None
        }
    };
    if !req.batch {
        return kind(&req.items[0]).ok_or_else(|| {
            Error::bad_request("neither a 'signature' nor an 'hmac' were given to verify")
        });
    }
    let kinds: Vec<Option<ItemKind>> = req.items.iter().map(kind).collect();
    let sigs = kinds.contains(&Some(ItemKind::Signature));
    let hmacs = kinds.contains(&Some(ItemKind::Hmac));
    let missing = kinds.contains(&None);
    match (sigs, hmacs, missing) {
        (true, true, _) => Err(Error::bad_request(
            "elements of batch_input must all provide 'signature' or all provide 'hmac'",
        )),
        (true, false, true) => Err(Error::bad_request(
            "some elements of batch_input are missing 'signature'",
        )),
        (false, true, true) => Err(Error::bad_request(
            "some elements of batch_input are missing 'hmac'",
        )),
        (false, false, _) => Err(Error::bad_request(
            "no batch_input elements have 'signature' or 'hmac'",
        )),
        (true, false, false) => Ok(ItemKind::Signature),
        (false, true, false) => Ok(ItemKind::Hmac),
    }
}

/// Verification options resolved from the request, validated in Vault's order.
#[derive(Debug, Clone, Copy)]
pub struct Resolved {
    pub hash: HashAlgorithm,
    pub prehashed: bool,
    pub marshaling: Marshaling,
    pub salt: SaltLength,
    /// `None` when the name is unknown: refused only for RSA keys, as Vault does.
    pub signature_algorithm: Option<RsaSig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsaSig {
    Pss,
    Pkcs1v15,
}

/// `marshaling_algorithm` and `salt_length`: checked before the key is looked up.
pub fn resolve_encoding(opts: &Options) -> Result<(Marshaling, SaltLength), Error> {
    let marshaling = match opts.marshaling_algorithm.as_deref().unwrap_or("") {
        "asn1" | "" => Marshaling::Asn1,
        "jws" => Marshaling::Jws,
        other => {
            return Err(Error::bad_request(format!(
                "invalid marshaling type {other:?}"
            )))
        }
    };
    let raw = opts.salt_length.as_deref().unwrap_or("");
    let salt = if raw.is_empty() || raw.eq_ignore_ascii_case("auto") {
        SaltLength::Auto
    } else if raw == "hash" {
        SaltLength::Hash
    } else {
        match raw.parse::<i64>() {
            Ok(0) => SaltLength::Auto,
            Ok(-1) => SaltLength::Hash,
            Ok(n) if n < -1 => {
                return Err(Error::bad_request(format!("salt length is invalid: {n}")))
            }
            Ok(n) => SaltLength::Exact(n as usize),
            Err(_) => {
                return Err(Error::bad_request(format!(
                    "salt length neither 'auto', 'hash', nor an int: {raw}"
                )))
            }
        }
    };
    Ok((marshaling, salt))
}

/// The hash (path segment first, then `hash_algorithm`, `algorithm`, sha2-256) and the
/// rules that depend on it: checked after the key lookup.
pub fn resolve_hash(
    opts: &Options,
    path_hash: Option<&str>,
    verifying: bool,
) -> Result<(HashAlgorithm, Option<RsaSig>), Error> {
    let name = path_hash
        .filter(|h| !h.is_empty())
        .or(opts.hash_algorithm.as_deref())
        .unwrap_or("sha2-256");
    if name == "mldsa-mu" {
        return Err(Error::bad_request(if verifying {
            "hash_algorithm=mldsa-mu does not support verification"
        } else {
            "hash_algorithm=mldsa-mu requires prehashed=true and a ML-DSA compatible key"
        }));
    }
    let hash = HashAlgorithm::from_name(name)
        .ok_or_else(|| Error::bad_request(format!("invalid hash algorithm {name:?}")))?;
    let signature_algorithm = match opts.signature_algorithm.as_deref().unwrap_or("") {
        "" | "pss" => Some(RsaSig::Pss),
        "pkcs1v15" => Some(RsaSig::Pkcs1v15),
        _ => None,
    };
    if hash == HashAlgorithm::None
        && !(opts.prehashed && signature_algorithm == Some(RsaSig::Pkcs1v15))
    {
        return Err(Error::bad_request(
            "hash_algorithm=none requires both prehashed=true and signature_algorithm=pkcs1v15",
        ));
    }
    Ok((hash, signature_algorithm))
}

/// All request-level checks for a key, in Vault's order after the lookup.
pub fn resolve_for_key(
    set: &KeySet,
    opts: &Options,
    path_hash: Option<&str>,
    encoding: (Marshaling, SaltLength),
    verifying: bool,
) -> Result<Resolved, Error> {
    if !set.supports_signing {
        let what = if verifying { "verification" } else { "signing" };
        return Err(Error::bad_request(format!(
            "key type {} does not support {what}",
            set.key_type
        )));
    }
    let (hash, signature_algorithm) = resolve_hash(opts, path_hash, verifying)?;
    Ok(Resolved {
        hash,
        prehashed: opts.prehashed,
        marshaling: encoding.0,
        salt: encoding.1,
        signature_algorithm,
    })
}

/// RSA-specific checks Vault makes per item (it answers them with a 500 in single mode).
pub fn rsa_scheme(set: &KeySet, res: &Resolved, opts: &Options) -> Result<RsaScheme, Error> {
    let Some(KeyType::Rsa(bits)) = set.local_type else {
        return Ok(RsaScheme::Pss(res.salt));
    };
    match res.signature_algorithm {
        None => Err(Error::bad_request(format!(
            "unsupported rsa signature algorithm {}",
            opts.signature_algorithm.as_deref().unwrap_or_default()
        ))),
        Some(RsaSig::Pkcs1v15) => Ok(RsaScheme::Pkcs1v15),
        Some(RsaSig::Pss) => {
            if let SaltLength::Exact(n) = res.salt {
                let max = (bits as usize - 1)
                    .div_ceil(8)
                    .saturating_sub(2 + res.hash.output_len());
                if n > max {
                    return Err(Error::bad_request(format!(
                        "requested salt length {n} is invalid"
                    )));
                }
            }
            Ok(RsaScheme::Pss(res.salt))
        }
    }
}

/// The result of checking one item locally.
#[derive(Debug)]
pub enum ItemCheck {
    Valid(bool),
    /// Refused with a 400, and what that means for the metrics.
    Refused(Error, VerifyResult),
    /// The cache lacks the version: refresh and look again.
    NeedsRefresh(u32),
    /// Only Vault can answer this one.
    Forward,
    /// Vault's answer for a forwarded batch item.
    Answered(Value),
}

/// Checks one signature item against a keyset, in Vault's order. Pure: no I/O.
pub fn check_item(set: &KeySet, res: &Resolved, opts: &Options, item: &Item) -> ItemCheck {
    match check_item_inner(set, res, opts, item) {
        Ok(c) => c,
        Err(Refusal(e, result)) => ItemCheck::Refused(e, result),
    }
}

/// A refused item: malformed input counts as an invalid signature.
struct Refusal(Error, VerifyResult);

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        Refusal(e, VerifyResult::Invalid)
    }
}

fn check_item_inner(
    set: &KeySet,
    res: &Resolved,
    opts: &Options,
    item: &Item,
) -> Result<ItemCheck, Refusal> {
    if item.input.is_none() {
        return Err(Error::bad_request("missing input").into());
    }
    let input = decode_input(item)?;
    if let Some(ctx) = item.context.as_deref().filter(|c| !c.is_empty()) {
        b64::decode(ctx, Encoding::Standard)
            .map_err(|_| Error::bad_request("failed to base64-decode context"))?;
    }
    let parsed = parse_signature(item.signature.as_deref().unwrap_or_default())?;
    // Negative versions are below any min_decryption_version; ones past u32 are past
    // any latest_version.
    let Ok(number) = u32::try_from(parsed.version.max(0)) else {
        return Err(too_new());
    };
    let version = match set.version_status(number) {
        VersionStatus::Valid(v) => v,
        VersionStatus::TooOld => {
            return Err(Refusal(
                Error::bad_request(VersionStatus::TOO_OLD),
                VerifyResult::Retired,
            ))
        }
        VersionStatus::Retired { message, revoked } => {
            let result = if revoked {
                VerifyResult::Revoked
            } else {
                VerifyResult::Retired
            };
            return Err(Refusal(Error::BadRequest(message), result));
        }
        VersionStatus::TooNew | VersionStatus::Missing => {
            return Ok(ItemCheck::NeedsRefresh(number))
        }
    };
    let encoding = if res.marshaling == Marshaling::Jws {
        Encoding::RawUrl
    } else {
        Encoding::Standard
    };
    let sig = b64::decode(parsed.encoded, encoding)
        .map_err(|_| Error::bad_request("invalid base64 signature value"))?;
    let Some(public_key) = &version.parsed else {
        return Ok(ItemCheck::Forward);
    };
    let params = VerifyParams {
        hash: res.hash,
        prehashed: res.prehashed,
        marshaling: res.marshaling,
        rsa_scheme: rsa_scheme(set, res, opts)?,
    };
    match public_key.verify(&params, &input, &sig) {
        Ok(valid) => Ok(ItemCheck::Valid(valid)),
        Err(CryptoError::Invalid(msg)) => Err(Error::bad_request(msg).into()),
        Err(CryptoError::NotLocal) => Ok(ItemCheck::Forward),
    }
}

fn too_new() -> Refusal {
    Refusal(
        Error::bad_request(VersionStatus::TOO_NEW),
        VerifyResult::TooNew,
    )
}

/// What Vault's refusal of a forwarded item means for the metrics.
fn classify_vault_refusal(message: &str) -> VerifyResult {
    if message.contains("too old") {
        VerifyResult::Retired
    } else if message.contains("too new") {
        VerifyResult::TooNew
    } else if message.contains("version") {
        VerifyResult::UnknownVersion
    } else {
        VerifyResult::Invalid
    }
}

/// The verdict in one item of Transit's answer (`valid`, and `error` in batches).
fn classify_answer(answer: &Value) -> VerifyResult {
    match answer["error"].as_str().filter(|e| !e.is_empty()) {
        Some(e) => classify_vault_refusal(e),
        None if answer["valid"] == true => VerifyResult::Valid,
        None => VerifyResult::Invalid,
    }
}

/// Answers verify requests: locally when it can, through Vault when it must.
pub struct Verifier {
    keys: Arc<KeyCache>,
    vault: Arc<VaultClient>,
    labels: Arc<KeyLabels>,
}

impl Verifier {
    pub fn new(keys: Arc<KeyCache>, vault: Arc<VaultClient>, labels: Arc<KeyLabels>) -> Self {
        Verifier {
            keys,
            vault,
            labels,
        }
    }

    /// Verifies a request for `key`; returns Transit's `data` object. Every judged
    /// signature is counted in `aegis_verify_results_total`.
    pub async fn verify(
        &self,
        key: &str,
        path_hash: Option<&str>,
        req: &TransitRequest,
    ) -> Result<Value, Error> {
        let mut results = Vec::with_capacity(req.items.len());
        let answer = self.verify_inner(key, path_hash, req, &mut results).await;
        match &answer {
            // Forwarded to Vault whole: its answer says what each item was.
            Ok(data) if results.is_empty() => match data["batch_results"].as_array() {
                Some(items) => results.extend(items.iter().map(classify_answer)),
                None => results.push(classify_answer(data)),
            },
            Err(Error::BadRequest(message)) if results.is_empty() && !req.batch => {
                results.push(classify_vault_refusal(message))
            }
            _ => {}
        }
        self.count(key, &results);
        answer
    }

    /// Adds `results` to the counters, one call per distinct result.
    fn count(&self, key: &str, results: &[VerifyResult]) {
        if results.is_empty() {
            return;
        }
        let label = self.labels.value(key, || self.keys.contains(key));
        let mut tally: Vec<(VerifyResult, u64)> = Vec::new();
        for r in results {
            match tally.iter_mut().find(|(seen, _)| seen == r) {
                Some((_, n)) => *n += 1,
                None => tally.push((*r, 1)),
            }
        }
        for (result, n) in tally {
            metrics::get().verify_results(label.clone(), result, n);
        }
    }

    /// [`verify`](Self::verify) without the counting; items judged here are pushed to
    /// `results` (left empty when the request went to Vault whole).
    async fn verify_inner(
        &self,
        key: &str,
        path_hash: Option<&str>,
        req: &TransitRequest,
        results: &mut Vec<VerifyResult>,
    ) -> Result<Value, Error> {
        let started = Instant::now();
        if classify(req)? == ItemKind::Hmac {
            return self.forward(key, path_hash, req).await;
        }
        let encoding = resolve_encoding(&req.options)?;
        let mut set = load_keyset(&self.keys, key, "signature verification key not found").await?;
        let res = resolve_for_key(&set, &req.options, path_hash, encoding, true)?;
        if !set.verifies_locally() {
            require_context_for_derived(&set, req)?;
            return self.forward(key, path_hash, req).await;
        }
        if let Err(stale) = self.keys.check_fresh(key) {
            // Look again as soon as the one-read-per-second rule allows, without waiting.
            self.keys.refresh_soon(key, started);
            return Err(Error::StaleKeyset(stale.to_string()));
        }
        let mut checks: Vec<ItemCheck> = req
            .items
            .iter()
            .map(|i| check_item(&set, &res, &req.options, i))
            .collect();
        if let Some(unknown) = checks.iter().find_map(|c| match c {
            ItemCheck::NeedsRefresh(v) => Some(*v),
            _ => None,
        }) {
            set = self.keys.refresh_for_version(key, unknown, started).await.map_err(|e| {
                tracing::warn!(key, version = unknown, error = %e, "cannot refresh keyset for an unknown version");
                if e.is_not_found() {
                    Error::bad_request("signature verification key not found")
                } else {
                    Error::Unavailable(format!("version {unknown} of key {key:?} is not cached and Vault cannot be asked: {e}"))
                }
            })?;
            for (check, item) in checks.iter_mut().zip(&req.items) {
                if let ItemCheck::NeedsRefresh(_) = check {
                    *check = match check_item(&set, &res, &req.options, item) {
                        // Still unknown after a fresh read: above latest is "too new";
                        // in range without a public key, only Vault can tell.
                        ItemCheck::NeedsRefresh(v) if v > set.latest_version => {
                            let Refusal(e, result) = too_new();
                            ItemCheck::Refused(e, result)
                        }
                        ItemCheck::NeedsRefresh(_) => ItemCheck::Forward,
                        other => other,
                    };
                }
            }
        }
        if !req.batch && matches!(checks[0], ItemCheck::Forward) {
            return self.forward(key, path_hash, req).await;
        }
        if checks.iter().any(|c| matches!(c, ItemCheck::Forward)) {
            // Only the items Vault must answer go to Vault; the others keep the local
            // answer (a retired or revoked version stays refused whatever Vault says).
            let forwarded = self.forward_items(key, path_hash, req, &checks).await?;
            for (check, answer) in checks
                .iter_mut()
                .filter(|c| matches!(c, ItemCheck::Forward))
                .zip(forwarded)
            {
                *check = ItemCheck::Answered(answer);
            }
        }
        results.extend(checks.iter().map(|c| match c {
            ItemCheck::Valid(true) => VerifyResult::Valid,
            ItemCheck::Valid(false) => VerifyResult::Invalid,
            ItemCheck::Refused(_, result) => *result,
            ItemCheck::Answered(answer) => classify_answer(answer),
            ItemCheck::NeedsRefresh(_) | ItemCheck::Forward => VerifyResult::UnknownVersion,
        }));
        if !req.batch {
            return match checks.pop().expect("one item") {
                ItemCheck::Valid(v) => Ok(json!({ "valid": v })),
                ItemCheck::Refused(e, _) => Err(e),
                ItemCheck::NeedsRefresh(_) | ItemCheck::Forward | ItemCheck::Answered(_) => {
                    unreachable!("a single item is forwarded whole above")
                }
            };
        }
        let results: Vec<Value> = checks
            .into_iter()
            .zip(&req.items)
            .map(|(c, item)| {
                let mut m = Map::new();
                match c {
                    ItemCheck::Valid(v) => {
                        m.insert("valid".into(), v.into());
                    }
                    ItemCheck::Refused(e, _) => {
                        m.insert("valid".into(), false.into());
                        m.insert("error".into(), e.to_string().into());
                    }
                    ItemCheck::Answered(Value::Object(vault)) => m = vault,
                    ItemCheck::Answered(other) => {
                        m.insert("valid".into(), false.into());
                        m.insert(
                            "error".into(),
                            format!("unexpected answer from Vault: {other}").into(),
                        );
                    }
                    ItemCheck::NeedsRefresh(_) | ItemCheck::Forward => {
                        unreachable!("resolved above")
                    }
                }
                m.insert("reference".into(), item.reference.clone().into());
                Value::Object(m)
            })
            .collect();
        Ok(json!({ "batch_results": results }))
    }

    /// Sends the batch items marked `Forward` to Vault as one batch (same options) and
    /// returns Vault's results for them, in order.
    async fn forward_items(
        &self,
        key: &str,
        path_hash: Option<&str>,
        req: &TransitRequest,
        checks: &[ItemCheck],
    ) -> Result<Vec<Value>, Error> {
        let items: Vec<&str> = checks
            .iter()
            .enumerate()
            .filter(|(_, c)| matches!(c, ItemCheck::Forward))
            .map(|(i, _)| req.batch_item(i))
            .collect();
        let expected = items.len();
        let body = Bytes::from(req.with_batch(items));
        let data = self
            .vault
            .transit_write_raw("verify", self.keys.mount(), key, path_hash, &body)
            .await?;
        match data["batch_results"].as_array() {
            Some(r) if r.len() == expected => Ok(r.clone()),
            _ => Err(Error::Internal(format!(
                "Vault answered a {expected}-item verify batch with something else"
            ))),
        }
    }

    async fn forward(
        &self,
        key: &str,
        path_hash: Option<&str>,
        req: &TransitRequest,
    ) -> Result<Value, Error> {
        Ok(self
            .vault
            .transit_write_raw("verify", self.keys.mount(), key, path_hash, req.raw())
            .await?)
    }
}

/// The keyset for `key`; Vault's "not found" becomes a 400 with Vault's `not_found` message.
pub async fn load_keyset(
    keys: &KeyCache,
    key: &str,
    not_found: &str,
) -> Result<Arc<KeySet>, Error> {
    keys.get(key).await.map_err(|e| {
        if e.is_not_found() {
            Error::bad_request(not_found)
        } else {
            e.into()
        }
    })
}

/// Vault answers 500 when a derived key is used without `context` in single mode; the
/// caller's mistake is a 400 here.
pub fn require_context_for_derived(set: &KeySet, req: &TransitRequest) -> Result<(), Error> {
    if set.derived
        && !req.batch
        && req.items[0]
            .context
            .as_deref()
            .unwrap_or_default()
            .is_empty()
    {
        return Err(Error::bad_request(DERIVED_NEEDS_CONTEXT));
    }
    Ok(())
}

pub const DERIVED_NEEDS_CONTEXT: &str = "error deriving key: missing 'context' for key derivation; the key was created using a derived key, which means additional, per-request information must be included in order to perform operations with the key";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_prefixes() {
        assert_eq!(
            parse_signature("vault:v3:abc").unwrap(),
            ParsedSignature {
                version: 3,
                encoded: "abc"
            }
        );
        assert_eq!(parse_signature("vault:v0:").unwrap().version, 0);
        assert_eq!(parse_signature("vault:v+1:x").unwrap().version, 1);
        assert_eq!(parse_signature("vault:v01:x").unwrap().version, 1);
        assert_eq!(parse_signature("vault:v-1:x").unwrap().version, -1);
        for (bad, msg) in [
            ("nope", "invalid signature: no prefix"),
            ("vault:", "invalid signature: no prefix"),
            ("VAULT:v1:x", "invalid signature: no prefix"),
            ("vault:v1", "invalid signature: wrong number of fields"),
            (
                "vault:vABC:AAAA",
                "invalid signature: version number could not be decoded",
            ),
            (
                "vault:v99999999999999999999:AAAA",
                "invalid signature: version number could not be decoded",
            ),
            (
                "vault:v 1:AAAA",
                "invalid signature: version number could not be decoded",
            ),
        ] {
            assert_eq!(parse_signature(bad).unwrap_err().to_string(), msg, "{bad}");
        }
    }

    fn req(body: &str) -> TransitRequest {
        TransitRequest::parse(Bytes::from(body.to_string()), 100).unwrap()
    }

    #[test]
    fn items_are_classified_with_vaults_messages() {
        assert_eq!(
            classify(&req(r#"{"signature":null}"#)).unwrap(),
            ItemKind::Signature
        );
        assert_eq!(classify(&req(r#"{"hmac":"x"}"#)).unwrap(), ItemKind::Hmac);
        for (body, msg) in [
            (
                "{}",
                "neither a 'signature' nor an 'hmac' were given to verify",
            ),
            (
                r#"{"batch_input":[{"signature":"a"},{"hmac":"b"}]}"#,
                "must all provide 'signature' or all provide 'hmac'",
            ),
            (
                r#"{"batch_input":[{"signature":"a"},{}]}"#,
                "missing 'signature'",
            ),
            (r#"{"batch_input":[{"hmac":"a"},{}]}"#, "missing 'hmac'"),
            (
                r#"{"batch_input":[null]}"#,
                "no batch_input elements have 'signature' or 'hmac'",
            ),
        ] {
            assert!(
                classify(&req(body)).unwrap_err().to_string().contains(msg),
                "{body}"
            );
        }
    }

    #[test]
    fn options_are_validated_with_vaults_messages() {
        let o = |f: fn(&mut Options)| {
            let mut o = Options::default();
            f(&mut o);
            o
        };
        assert_eq!(
            resolve_hash(&Options::default(), None, true).unwrap().0,
            HashAlgorithm::Sha2_256
        );
        // The path segment wins and the body is not even validated.
        assert_eq!(
            resolve_hash(
                &o(|o| o.hash_algorithm = Some("md5".into())),
                Some("sha1"),
                true
            )
            .unwrap()
            .0,
            HashAlgorithm::Sha1
        );
        assert_eq!(
            resolve_encoding(&o(|o| o.salt_length = Some("AUTO".into())))
                .unwrap()
                .1,
            SaltLength::Auto
        );
        assert_eq!(
            resolve_encoding(&o(|o| o.salt_length = Some("0".into())))
                .unwrap()
                .1,
            SaltLength::Auto
        );
        assert_eq!(
            resolve_encoding(&o(|o| o.salt_length = Some("-1".into())))
                .unwrap()
                .1,
            SaltLength::Hash
        );
        assert_eq!(
            resolve_encoding(&o(|o| o.salt_length = Some("+5".into())))
                .unwrap()
                .1,
            SaltLength::Exact(5)
        );
        for (opts, msg) in [
            (
                o(|o| o.marshaling_algorithm = Some("zz".into())),
                "invalid marshaling type \"zz\"",
            ),
            (
                o(|o| o.salt_length = Some("zz".into())),
                "salt length neither 'auto', 'hash', nor an int: zz",
            ),
            (
                o(|o| o.salt_length = Some("-2".into())),
                "salt length is invalid: -2",
            ),
        ] {
            assert_eq!(resolve_encoding(&opts).unwrap_err().to_string(), msg);
        }
        for (opts, msg) in [
            (
                o(|o| o.hash_algorithm = Some("md5".into())),
                "invalid hash algorithm \"md5\"",
            ),
            (
                o(|o| o.hash_algorithm = Some("mldsa-mu".into())),
                "hash_algorithm=mldsa-mu does not support verification",
            ),
            (
                o(|o| o.hash_algorithm = Some("none".into())),
                "hash_algorithm=none requires both prehashed=true and signature_algorithm=pkcs1v15",
            ),
        ] {
            assert_eq!(
                resolve_hash(&opts, None, true).unwrap_err().to_string(),
                msg
            );
        }
    }
}
