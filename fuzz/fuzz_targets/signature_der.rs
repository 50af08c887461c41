//! Raw signature bytes as `crypto` decodes them: Go's `encoding/asn1` reading of an
//! ECDSA `SEQUENCE { r, s }` (`parse_go_asn1_signature`), its canonical DER re-encoding
//! (`der_signature`, what aws-lc is given), and every fixture key's `verify`.
#![no_main]

use aegis::crypto::CryptoError;
use aegis::fuzzing::{der_signature, parse_go_asn1_signature};
use aegis_fuzz::{verify_with_every_key, MESSAGE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_go_asn1_signature(data) {
        Err(e) => assert!(matches!(e, CryptoError::Invalid(m) if !m.is_empty())),
        Ok((r, s)) => {
            for int in [r, s] {
                // Go's big.Int: no leading zero bytes in the magnitude.
                assert_ne!(int.magnitude.first(), Some(&0));
            }
            if !r.negative && !s.negative && !r.magnitude.is_empty() && !s.magnitude.is_empty() {
                // The canonical DER reads back to the same integers; it is never longer
                // than the input, and as long only when it is the input.
                let der = der_signature(r.magnitude, s.magnitude);
                let (r2, s2) = parse_go_asn1_signature(&der).expect("canonical DER parses");
                assert_eq!((r2, s2), (r, s));
                assert!(der.len() <= data.len());
                if der.len() == data.len() {
                    assert_eq!(der, data);
                }
            }
        }
    }
    verify_with_every_key(MESSAGE, data);
});
