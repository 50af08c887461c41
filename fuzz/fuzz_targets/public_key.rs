//! Public key material as read from Transit's keys endpoint.
//!
//! First byte below 0x80: it selects a key type (`KEY_TYPES`), the rest is the
//! `public_key` text (raw base64 for ed25519, PEM for ECDSA and RSA), parsed by
//! `crypto::PublicKey::parse` (the cache) and `model::keys` (SPKI, PEM, hint, JWK).
//! First byte 0x80 or above: the rest is `GET keys`' `data`, built into a keyset by the
//! cache's own code and answered back as `GET keys` answers it.
#![no_main]

use aegis::crypto::{KeyType, PublicKey};
use aegis::fuzzing::keyset_from_vault;
use aegis::model::keys::{hint, jwk, pem_spki, spki_pem, transit_spki, SignerKey};
use aegis_fuzz::key_type;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if selector >= 0x80 {
        keyset(rest);
    } else if let Ok(text) = std::str::from_utf8(rest) {
        key_text(key_type(selector), text);
    }
});

fn key_text(kt: KeyType, text: &str) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let b64u = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parsed = PublicKey::parse(kt, text);
    let Ok(der) = transit_spki(kt, text) else {
        assert!(
            parsed.is_err(),
            "the cache parsed a key the model code cannot read"
        );
        return;
    };
    // PEM round trip, and the canonical PEM is read as the original text was.
    let pem = spki_pem(&der);
    assert_eq!(pem_spki(pem.as_bytes()).expect("canonical PEM parses"), der);
    let canonical = match kt {
        KeyType::Ed25519 => b64.encode(&der[der.len() - 32..]),
        _ => pem.clone(),
    };
    assert_eq!(PublicKey::parse(kt, &canonical).is_ok(), parsed.is_ok());
    assert_eq!(hint(&der).len(), 64);
    if let Ok(k) = SignerKey::from_spki(&der) {
        assert_eq!(k.hint(), hint(&der));
    }
    // The JWK carries the same key material.
    if let Ok(j) = jwk(kt, &der, "k:v1") {
        let field = |n: &str| {
            b64u.decode(j[n].as_str().expect("JWK field"))
                .expect("base64url")
        };
        match kt {
            KeyType::Ed25519 => assert_eq!(field("x"), der[der.len() - 32..]),
            KeyType::Ecdsa(_) => {
                let point = [&[0x04][..], &field("x")[..], &field("y")[..]].concat();
                assert!(der.ends_with(&point));
            }
            KeyType::Rsa(_) => {
                if let Ok(PublicKey::Rsa(k)) = &parsed {
                    let n = field("n");
                    assert_eq!(
                        n.first().map(|b| b.leading_zeros()),
                        Some((8 - k.modulus_bits() % 8) as u32 % 8)
                    );
                    assert_eq!(n.len() as u64, k.modulus_bits().div_ceil(8));
                }
            }
        }
    }
}

fn keyset(json: &[u8]) {
    let Ok(data) = serde_json::from_slice::<Value>(json) else {
        return;
    };
    let Ok(set) = keyset_from_vault(data) else {
        return;
    };
    let _ = set.verifies_locally();
    for n in [
        0,
        1,
        set.latest_version,
        set.latest_version.saturating_add(1),
    ] {
        let _ = set.version_status(n);
    }
    // The keyset's own `GET keys` answer reads back to the same keyset.
    let answer = set.to_vault_json();
    let again = keyset_from_vault(answer.clone()).expect("a keyset's own answer reads back");
    assert_eq!(again.to_vault_json(), answer);
    assert_eq!(
        again.versions.keys().collect::<Vec<_>>(),
        set.versions.keys().collect::<Vec<_>>()
    );
    for (v, w) in set.versions.values().zip(again.versions.values()) {
        assert_eq!(v.parsed.is_some(), w.parsed.is_some());
    }
}
