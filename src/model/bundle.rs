//! The Sigstore bundle (v0.3 JSON) holding a DSSE envelope, as `model_signing` 1.1.1
//! writes for key-based signatures, and the DSSE pre-authentication encoding it signs.
//!
//! Layout: `mediaType`; `verificationMaterial.publicKey.hint` (hex SHA-256 of the signer's
//! PEM public key) and empty `tlogEntries`; `dsseEnvelope` with the base64 `payload` (the
//! in-toto statement), `payloadType` `application/vnd.in-toto+json`, and one signature:
//! base64 of an ASN.1 DER ECDSA signature over `PAE(payloadType, payload)`.

use std::borrow::Cow;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// The bundle as JSON (field names and order as the upstream tool writes them). The
/// base64 texts are read borrowed from the file's bytes: a large payload is not copied
/// before it is decoded.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BundleJson<'a> {
    media_type: String,
    verification_material: VerificationMaterial,
    #[serde(borrow)]
    dsse_envelope: Option<Envelope<'a>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VerificationMaterial {
    #[serde(default)]
    public_key: Option<PublicKeyIdentifier>,
    #[serde(default)]
    tlog_entries: Vec<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PublicKeyIdentifier {
    #[serde(default)]
    hint: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    #[serde(borrow)]
    payload: Cow<'a, str>,
    payload_type: String,
    #[serde(borrow)]
    signatures: Vec<EnvelopeSignature<'a>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct EnvelopeSignature<'a> {
    #[serde(borrow)]
    sig: Cow<'a, str>,
    #[serde(default)]
    keyid: String,
}

/// A bundle's content, decoded and checked for shape (not yet for authenticity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// Lowercase hex SHA-256 of the signer's PEM public key, when the bundle names it.
    pub hint: Option<String>,
    /// The in-toto statement, as signed.
    pub payload: Vec<u8>,
    /// The signature bytes (expected: ASN.1 DER ECDSA).
    pub signature: Vec<u8>,
}

/// Why a signature file is not a usable bundle.
#[derive(Debug, thiserror::Error)]
#[error("the signature file is not a usable OMS bundle: {0}")]
pub struct BundleError(pub String);

/// The DSSE v1 pre-authentication encoding of an in-toto payload: what is signed. Kept
/// as its header and the payload, hashed in parts: never built as one copy.
pub struct Pae<'a> {
    header: String,
    payload: &'a [u8],
}

impl<'a> Pae<'a> {
    pub fn new(payload: &'a [u8]) -> Self {
        let header = format!(
            "DSSEv1 {} {PAYLOAD_TYPE} {} ",
            PAYLOAD_TYPE.len(),
            payload.len()
        );
        Pae { header, payload }
    }

    /// The encoding's digest with `hash` (a real hash: `None` hashes nothing).
    pub fn digest(&self, hash: crate::crypto::HashAlgorithm) -> Option<Vec<u8>> {
        let parts: [&[u8]; 2] = [self.header.as_bytes(), self.payload];
        Some(hash.digest_parts(&parts)?.as_bytes().to_vec())
    }

    /// The encoding as one byte string (for a signer that hashes it itself).
    pub fn to_vec(&self) -> Vec<u8> {
        [self.header.as_bytes(), self.payload].concat()
    }
}

impl Bundle {
    /// The bundle file's JSON.
    pub fn to_json(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        let json = BundleJson {
            media_type: MEDIA_TYPE.into(),
            verification_material: VerificationMaterial {
                public_key: Some(PublicKeyIdentifier {
                    hint: self.hint.clone(),
                }),
                tlog_entries: Vec::new(),
            },
            dsse_envelope: Some(Envelope {
                payload: b64.encode(&self.payload).into(),
                payload_type: PAYLOAD_TYPE.into(),
                signatures: vec![EnvelopeSignature {
                    sig: b64.encode(&self.signature).into(),
                    keyid: String::new(),
                }],
            }),
        };
        serde_json::to_string(&json).expect("a bundle serializes")
    }

    /// Parses a bundle file, refusing anything but one DSSE in-toto signature.
    pub fn parse(text: &[u8]) -> Result<Bundle, BundleError> {
        let err = |m: String| BundleError(m);
        let json: BundleJson =
            serde_json::from_slice(text).map_err(|e| err(format!("invalid JSON: {e}")))?;
        if json.media_type != MEDIA_TYPE {
            return Err(err(format!(
                "mediaType is {:?}, expected {MEDIA_TYPE:?}",
                json.media_type
            )));
        }
        if !json.verification_material.tlog_entries.is_empty() {
            return Err(err(
                "it carries transparency-log entries (a Sigstore keyless signature); Aegis verifies key-based signatures".into(),
            ));
        }
        let env = json
            .dsse_envelope
            .ok_or_else(|| err("it has no dsseEnvelope".into()))?;
        if env.payload_type != PAYLOAD_TYPE {
            return Err(err(format!(
                "payloadType is {:?}, expected {PAYLOAD_TYPE:?}",
                env.payload_type
            )));
        }
        let [sig] = env.signatures.as_slice() else {
            return Err(err(format!(
                "the envelope has {} signatures, expected exactly one",
                env.signatures.len()
            )));
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        let payload = b64
            .decode(env.payload.as_bytes())
            .map_err(|e| err(format!("the payload is not base64: {e}")))?;
        let signature = b64
            .decode(sig.sig.as_bytes())
            .map_err(|e| err(format!("the signature is not base64: {e}")))?;
        let hint = match json.verification_material.public_key.and_then(|k| k.hint) {
            None => None,
            Some(h) if h.is_empty() => None,
            Some(h) if super::hex::decode32(&h).is_some() => Some(h.to_ascii_lowercase()),
            Some(h) => {
                return Err(err(format!(
                    "the public key hint {h:?} is not a hex SHA-256"
                )))
            }
        };
        Ok(Bundle {
            hint,
            payload,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Bundle {
        Bundle {
            hint: Some("ab".repeat(32)),
            payload: b"{\"_type\":\"x\"}".to_vec(),
            signature: vec![0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01],
        }
    }

    #[test]
    fn pae_is_dsse_v1() {
        let pae = Pae::new(b"{}");
        assert_eq!(
            pae.to_vec(),
            b"DSSEv1 28 application/vnd.in-toto+json 2 {}".to_vec()
        );
        let sha256 = crate::crypto::HashAlgorithm::Sha2_256;
        assert_eq!(
            pae.digest(sha256),
            Some(sha256.digest(&pae.to_vec()).unwrap().as_bytes().to_vec())
        );
    }

    #[test]
    fn round_trip_and_upstream_layout() {
        let b = sample();
        let text = b.to_json();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["mediaType"], MEDIA_TYPE);
        assert_eq!(
            v["verificationMaterial"]["tlogEntries"],
            serde_json::json!([])
        );
        assert_eq!(v["dsseEnvelope"]["signatures"][0]["keyid"], "");
        assert_eq!(Bundle::parse(text.as_bytes()).unwrap(), b);
    }

    #[test]
    fn malformed_bundles_are_refused_with_a_reason() {
        let good = sample().to_json();
        let cases: Vec<(String, &str)> = vec![
            (good[..good.len() / 2].to_string(), "invalid JSON"),
            (
                good.replace(PAYLOAD_TYPE, "application/json"),
                "payloadType",
            ),
            (good.replace(MEDIA_TYPE, "x"), "mediaType"),
            (good.replace(&"ab".repeat(32), "not-hex"), "hint"),
            (good.replace("\"sig\":\"", "\"sig\":\"!!"), "not base64"),
            (
                good.replace("\"tlogEntries\":[]", "\"tlogEntries\":[{}]"),
                "transparency-log",
            ),
            ("[]".into(), "invalid JSON"),
        ];
        for (text, want) in cases {
            let e = Bundle::parse(text.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}
