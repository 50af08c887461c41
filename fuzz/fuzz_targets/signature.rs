//! `vault:vN:<base64>` signature strings, as the verifier reads a caller's `signature`:
//! the prefix and version (`verify::parse_signature`), Go's base64 (`b64::decode`, both
//! encodings), then the decoded bytes checked by every fixture key (`crypto`).
#![no_main]

use aegis::b64::{self, Encoding};
use aegis::verify::parse_signature;
use aegis_fuzz::{assert_client_error, verify_with_every_key, MESSAGE};
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = match parse_signature(text) {
        Ok(p) => p,
        Err(e) => return assert_client_error(&e),
    };
    // The parts re-encode to a signature that parses to the same parts, and canonical
    // text (no sign, no leading zeros in the version) re-encodes byte for byte.
    let again = format!("vault:v{}:{}", parsed.version, parsed.encoded);
    assert_eq!(
        parse_signature(&again).expect("re-encoded signature parses"),
        parsed
    );
    let version_text = &text["vault:v".len()..text.len() - parsed.encoded.len() - 1];
    if version_text == parsed.version.to_string() {
        assert_eq!(again, text);
    }
    for (encoding, strict) in [
        (
            Encoding::Standard,
            base64::engine::general_purpose::STANDARD,
        ),
        (
            Encoding::RawUrl,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ),
    ] {
        let go = b64::decode(parsed.encoded, encoding);
        // Whatever a strict decoder accepts, Go's decoder reads the same way.
        if let Ok(bytes) = strict.decode(parsed.encoded) {
            assert_eq!(go.as_ref(), Ok(&bytes), "{encoding:?}");
        }
        match go {
            Ok(bytes) => {
                // Encoding the bytes back decodes to the same bytes.
                assert_eq!(
                    b64::decode(&strict.encode(&bytes), encoding),
                    Ok(bytes.clone())
                );
                verify_with_every_key(MESSAGE, &bytes);
            }
            Err(at) => assert!(at <= parsed.encoded.len(), "error offset {at} past the end"),
        }
    }
});
