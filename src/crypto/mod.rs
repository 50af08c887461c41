//! Pure signature verification for every asymmetric Transit key type. No I/O, no awaits.
//!
//! Public keys are parsed once, when a key version enters the cache ([`PublicKey::parse`]),
//! so the request path does no PEM/DER parsing or key setup. Verification answers exactly
//! what OpenBao's `keysutil` answers: `Ok(true)`, `Ok(false)`, or a user error with
//! Vault's message for signatures that are not even well formed.

pub(crate) mod ecdsa;
pub mod hash;
pub mod rsa;

use aws_lc_rs::signature::{ParsedPublicKey, ED25519};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::SubjectPublicKeyInfoDer;

pub use ecdsa::{Curve, EcdsaPublicKey};
pub use hash::{Digest, HashAlgorithm};
pub use rsa::{RsaPublicKey, RsaScheme, SaltLength};

/// The Transit key types whose signatures Aegis verifies locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    Ed25519,
    Ecdsa(Curve),
    Rsa(u32),
}

impl KeyType {
    /// Maps Transit's `type` field; `None` for types verified only by Vault (hmac, aes, ...).
    pub fn from_transit(name: &str) -> Option<Self> {
        Some(match name {
            "ed25519" => KeyType::Ed25519,
            "ecdsa-p256" => KeyType::Ecdsa(Curve::P256),
            "ecdsa-p384" => KeyType::Ecdsa(Curve::P384),
            "ecdsa-p521" => KeyType::Ecdsa(Curve::P521),
            "rsa-2048" => KeyType::Rsa(2048),
            "rsa-3072" => KeyType::Rsa(3072),
            "rsa-4096" => KeyType::Rsa(4096),
            _ => return None,
        })
    }

    /// Transit's `type` name of this key type (the inverse of [`from_transit`](Self::from_transit)).
    pub fn transit_name(self) -> String {
        match self {
            KeyType::Ed25519 => "ed25519".into(),
            KeyType::Ecdsa(Curve::P256) => "ecdsa-p256".into(),
            KeyType::Ecdsa(Curve::P384) => "ecdsa-p384".into(),
            KeyType::Ecdsa(Curve::P521) => "ecdsa-p521".into(),
            KeyType::Rsa(bits) => format!("rsa-{bits}"),
        }
    }
}

/// ECDSA signature encoding (`marshaling_algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marshaling {
    Asn1,
    Jws,
}

/// Everything that decides how a signature is checked, already validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyParams {
    pub hash: HashAlgorithm,
    pub prehashed: bool,
    pub marshaling: Marshaling,
    pub rsa_scheme: RsaScheme,
}

/// Why a signature could not be judged valid or invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// A user error with Vault's exact message (HTTP 400).
    #[error("{0}")]
    Invalid(&'static str),
    /// A corner of the format Aegis does not reproduce bit for bit; Vault must answer.
    #[error("not verifiable locally")]
    NotLocal,
}

/// A parsed public key of one key version.
#[derive(Clone)]
pub enum PublicKey {
    Ed25519(ParsedPublicKey),
    Ecdsa(EcdsaPublicKey),
    Rsa(RsaPublicKey),
}

/// Why a public key from Transit could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("cannot parse {key_type:?} public key: {reason}")]
pub struct KeyParseError {
    pub key_type: KeyType,
    pub reason: &'static str,
}

impl PublicKey {
    /// Parses a public key as Transit returns it: raw base64 for ed25519, PEM
    /// SubjectPublicKeyInfo for ECDSA and RSA.
    pub fn parse(key_type: KeyType, text: &str) -> Result<Self, KeyParseError> {
        let err = |reason| KeyParseError { key_type, reason };
        match key_type {
            KeyType::Ed25519 => {
                use base64::Engine as _;
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .map_err(|_| err("not base64"))?;
                if raw.len() != 32 {
                    return Err(err("ed25519 public key must be 32 bytes"));
                }
                ParsedPublicKey::new(&ED25519, raw)
                    .map(PublicKey::Ed25519)
                    .map_err(|_| err("rejected by aws-lc"))
            }
            KeyType::Ecdsa(curve) => {
                let der = spki_der(text).ok_or_else(|| err("not a PEM public key"))?;
                EcdsaPublicKey::from_spki(curve, &der)
                    .map(PublicKey::Ecdsa)
                    .ok_or_else(|| err("not an EC public key on the expected curve"))
            }
            KeyType::Rsa(bits) => {
                let der = spki_der(text).ok_or_else(|| err("not a PEM public key"))?;
                let key =
                    RsaPublicKey::from_der(&der).ok_or_else(|| err("not an RSA public key"))?;
                if key.modulus_bits() != u64::from(bits) {
                    return Err(err("RSA modulus size does not match the key type"));
                }
                Ok(PublicKey::Rsa(key))
            }
        }
    }

    /// Verifies `signature` (raw bytes, the base64 part of `vault:vN:` decoded) over `input`.
    pub fn verify(
        &self,
        params: &VerifyParams,
        input: &[u8],
        signature: &[u8],
    ) -> Result<bool, CryptoError> {
        match self {
            // Ed25519 signs the input as given: no hash, no Ed25519ph in OpenBao.
            PublicKey::Ed25519(key) => Ok(key.verify_sig(input, signature).is_ok()),
            PublicKey::Ecdsa(key) => {
                let digest;
                let hashed = if params.prehashed {
                    input
                } else {
                    digest = params
                        .hash
                        .digest(input)
                        .ok_or(CryptoError::Invalid("unsupported hash algorithm none"))?;
                    digest.as_bytes()
                };
                key.verify(params.marshaling, hashed, signature)
            }
            PublicKey::Rsa(key) => {
                let digest;
                let hashed = if params.prehashed || params.hash == HashAlgorithm::None {
                    input
                } else {
                    digest = params.hash.digest(input).expect("hash is not none here");
                    digest.as_bytes()
                };
                Ok(key.verify(params.rsa_scheme, params.hash, hashed, signature))
            }
        }
    }
}

/// PEM (any label holding a SubjectPublicKeyInfo) to DER.
fn spki_der(pem: &str) -> Option<Vec<u8>> {
    SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|d| d.as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transit_type_names() {
        assert_eq!(KeyType::from_transit("ed25519"), Some(KeyType::Ed25519));
        assert_eq!(
            KeyType::from_transit("ecdsa-p521"),
            Some(KeyType::Ecdsa(Curve::P521))
        );
        assert_eq!(KeyType::from_transit("rsa-3072"), Some(KeyType::Rsa(3072)));
        assert_eq!(KeyType::from_transit("hmac"), None);
        assert_eq!(KeyType::from_transit("aes256-gcm96"), None);
    }

    #[test]
    fn bad_public_keys_are_errors_not_panics() {
        assert!(PublicKey::parse(KeyType::Ed25519, "!!").is_err());
        assert!(PublicKey::parse(KeyType::Ed25519, "AAAA").is_err());
        assert!(PublicKey::parse(
            KeyType::Ecdsa(Curve::P256),
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
        )
        .is_err());
        assert!(PublicKey::parse(KeyType::Rsa(2048), "").is_err());
    }

    #[test]
    fn ed25519_round_trip() {
        use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
        use base64::Engine as _;
        let kp = Ed25519KeyPair::generate().unwrap();
        let pk_b64 = base64::engine::general_purpose::STANDARD.encode(kp.public_key().as_ref());
        let pk = PublicKey::parse(KeyType::Ed25519, &pk_b64).unwrap();
        let sig = kp.sign(b"hello");
        let params = VerifyParams {
            hash: HashAlgorithm::Sha2_256,
            prehashed: false,
            marshaling: Marshaling::Asn1,
            rsa_scheme: RsaScheme::Pss(SaltLength::Auto),
        };
        assert_eq!(pk.verify(&params, b"hello", sig.as_ref()), Ok(true));
        assert_eq!(pk.verify(&params, b"hellO", sig.as_ref()), Ok(false));
        assert_eq!(pk.verify(&params, b"hello", &sig.as_ref()[..63]), Ok(false));
    }
}
