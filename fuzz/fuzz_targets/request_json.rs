//! Transit sign and verify request bodies, decoded by the function the HTTP handler (and
//! the gRPC face, through the same JSON) calls, `TransitRequest::parse`, then taken
//! through the verifier's and signer's pure steps against real keysets of every type:
//! classification, option resolution in Vault's order, `check_item` for every item of
//! `batch_input`, and the sign checks made before Vault is asked. Every refusal must be
//! a 4xx: a caller's body never causes a 5xx or a panic.
#![no_main]

use aegis::fuzzing::sign_precheck;
use aegis::transit::TransitRequest;
use aegis::verify::{check_item, classify, resolve_encoding, resolve_for_key, ItemCheck, ItemKind};
use aegis_fuzz::{assert_client_error, keysets};
use libfuzzer_sys::fuzz_target;

/// The sidecar's default `AEGIS_MAX_BATCH_ITEMS` is larger; a small limit keeps inputs
/// cheap and still reaches the limit's refusal.
const MAX_BATCH_ITEMS: usize = 64;

fuzz_target!(|data: &[u8]| {
    let req = match TransitRequest::parse(data.to_vec().into(), MAX_BATCH_ITEMS) {
        Ok(r) => r,
        Err(e) => return assert_client_error(&e),
    };
    assert!(!req.items.is_empty() && req.items.len() <= MAX_BATCH_ITEMS);
    assert!(req.batch || req.items.len() == 1);
    let _ = req.unknown_fields_warning();
    let kind = classify(&req).map_err(|e| assert_client_error(&e)).ok();
    let encoding = match resolve_encoding(&req.options) {
        Ok(e) => e,
        Err(e) => return assert_client_error(&e),
    };
    for set in keysets() {
        for verifying in [true, false] {
            let res = match resolve_for_key(set, &req.options, None, encoding, verifying) {
                Ok(r) => r,
                Err(e) => {
                    assert_client_error(&e);
                    continue;
                }
            };
            if verifying && kind == Some(ItemKind::Signature) {
                for item in &req.items {
                    if let ItemCheck::Refused(e, _) = check_item(set, &res, &req.options, item) {
                        assert_client_error(&e);
                    }
                }
            }
            if !verifying && !req.batch {
                if let Err(e) = sign_precheck(set, &res, &req) {
                    assert_client_error(&e);
                }
            }
        }
    }
});
