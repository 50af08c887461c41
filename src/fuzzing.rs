//! Entry points for the cargo-fuzz targets in `fuzz/`, and for nothing else.
//!
//! The targets must exercise the code the sidecar runs, not copies of it, so this module
//! re-exports the few crate-private parsers they need and wraps crate-private steps in
//! thin functions. It is `#[doc(hidden)]` and is not a stable API.

use serde_json::Value;

use crate::error::Error;
use crate::keys::retention::RetentionRecord;
use crate::keys::KeySet;
use crate::transit::TransitRequest;
use crate::vault::{TransitKeyInfo, VaultError};
use crate::verify::Resolved;

/// Go's `asn1.Unmarshal` of an ECDSA signature, and the canonical DER the verifier
/// hands to aws-lc.
pub use crate::crypto::ecdsa::{der_signature, parse_go_asn1_signature, GoInt};

/// A keyset built from `GET /v1/<mount>/keys/<name>`'s `data` as the cache builds it
/// (public keys parsed once), with no retention record and no earlier keyset.
pub fn keyset_from_vault(data: Value) -> Result<KeySet, VaultError> {
    let info = TransitKeyInfo::from_data(data)?;
    Ok(KeySet::merge(info, RetentionRecord::default(), None))
}

/// The checks a single-mode sign request passes before it is forwarded to Vault.
pub fn sign_precheck(set: &KeySet, res: &Resolved, req: &TransitRequest) -> Result<(), Error> {
    crate::sign::refuse_what_vault_fails_on(set, res, req)
}
