//! OMS signature files as `aegis model verify` reads them: the Sigstore bundle and its
//! DSSE envelope (`model::bundle::Bundle::parse`), the in-toto statement inside
//! (`model::manifest::Manifest::from_payload`), and the ECDSA check over the DSSE PAE
//! with the seed bundles' keys. Inputs that are not bundles are also read as statements,
//! so the statement parser is fuzzed directly.
#![no_main]

use aegis::crypto::CryptoError;
use aegis::model::bundle::{Bundle, Pae};
use aegis::model::manifest::Manifest;
use aegis_fuzz::oms_keys;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(bundle) = Bundle::parse(data) else {
        statement(data);
        return;
    };
    // The bundle as Aegis writes it reads back to the same bundle.
    assert_eq!(
        Bundle::parse(bundle.to_json().as_bytes()).expect("own bundle parses"),
        bundle
    );
    if let Some(h) = &bundle.hint {
        assert!(
            h.len() == 64
                && h.bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        );
    }
    let signed = Pae::new(&bundle.payload);
    let whole = signed.to_vec();
    assert!(whole.ends_with(&bundle.payload));
    for key in oms_keys() {
        // Hashed in parts, as verification does, the PAE has the digest of its bytes.
        let digest = key
            .hash()
            .digest(&whole)
            .expect("curve hashes are real hashes");
        assert_eq!(key.digest(&signed), digest.as_bytes());
        match key.verify(&signed, &bundle.signature) {
            Ok(_) | Err(CryptoError::Invalid(_)) => {}
            Err(CryptoError::NotLocal) => panic!("OMS digests are always checked locally"),
        }
    }
    statement(&bundle.payload);
});

fn statement(payload: &[u8]) {
    let Ok(manifest) = Manifest::from_payload(payload) else {
        return;
    };
    // The statement Aegis would sign for this manifest reads back to the same manifest.
    let again = Manifest::from_payload(&manifest.to_payload()).expect("own statement parses");
    assert_eq!(again, manifest);
    assert_eq!(manifest.diff(&again), None);
}
