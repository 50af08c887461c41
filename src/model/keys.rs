//! Public keys as offline verifiers see them: the canonical PEM of a key version, the OMS
//! public-key hint (hex SHA-256 of that PEM, trailing newline included, as Python's
//! `cryptography` writes it), the ECDSA check of a DSSE signature, and JWK export.
//!
//! OMS key-based signatures use ECDSA only, with the hash fixed by the curve: P-256 with
//! SHA-256, P-384 with SHA-384, P-521 with SHA-512. Pure code: no I/O.

use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer as _;
use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::SubjectPublicKeyInfoDer;
use serde_json::{json, Value};

use super::bundle::Pae;
use super::hex;
use crate::crypto::{CryptoError, Curve, EcdsaPublicKey, HashAlgorithm, KeyType, Marshaling};

/// DER prefix of an Ed25519 SubjectPublicKeyInfo, before the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Why a public key cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

/// The hash OMS pairs with a curve.
pub fn curve_hash(curve: Curve) -> HashAlgorithm {
    match curve {
        Curve::P256 => HashAlgorithm::Sha2_256,
        Curve::P384 => HashAlgorithm::Sha2_384,
        Curve::P521 => HashAlgorithm::Sha2_512,
    }
}

fn curve_name(curve: Curve) -> &'static str {
    match curve {
        Curve::P256 => "P-256",
        Curve::P384 => "P-384",
        Curve::P521 => "P-521",
    }
}

/// PEM `PUBLIC KEY` text of a SubjectPublicKeyInfo, 64 columns, trailing newline.
pub fn spki_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END PUBLIC KEY-----\n");
    out
}

/// The OMS hint of a SubjectPublicKeyInfo: hex SHA-256 of its canonical PEM.
pub fn hint(der: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, spki_pem(der).as_bytes()).as_ref())
}

/// The SubjectPublicKeyInfo DER of a Transit public key (PEM, or raw base64 for ed25519).
pub fn transit_spki(key_type: KeyType, text: &str) -> Result<Vec<u8>, KeyError> {
    if key_type == KeyType::Ed25519 {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .ok()
            .filter(|r| r.len() == 32)
            .ok_or_else(|| KeyError("not a base64 ed25519 public key".into()))?;
        return Ok([&ED25519_SPKI_PREFIX[..], &raw].concat());
    }
    pem_spki(text.as_bytes())
}

/// The DER of the (first) PEM public key in `pem`.
pub fn pem_spki(pem: &[u8]) -> Result<Vec<u8>, KeyError> {
    SubjectPublicKeyInfoDer::from_pem_slice(pem)
        .map(|d| d.as_ref().to_vec())
        .map_err(|_| KeyError("not a PEM public key (-----BEGIN PUBLIC KEY-----)".into()))
}

/// An ECDSA public key of one of the curves OMS accepts.
#[derive(Clone)]
pub struct SignerKey {
    pub curve: Curve,
    pub der: Vec<u8>,
    key: EcdsaPublicKey,
}

impl SignerKey {
    /// Parses a SubjectPublicKeyInfo; only EC keys on P-256, P-384 or P-521 are accepted.
    pub fn from_spki(der: &[u8]) -> Result<Self, KeyError> {
        [Curve::P256, Curve::P384, Curve::P521]
            .into_iter()
            .find_map(|curve| {
                EcdsaPublicKey::from_spki(curve, der).map(|key| SignerKey {
                    curve,
                    der: der.to_vec(),
                    key,
                })
            })
            .ok_or_else(|| {
                KeyError(
                    "not an ECDSA P-256, P-384 or P-521 public key (OMS key signatures use ECDSA only)"
                        .into(),
                )
            })
    }

    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        Self::from_spki(&pem_spki(pem)?)
    }

    pub fn hint(&self) -> String {
        hint(&self.der)
    }

    pub fn hash(&self) -> HashAlgorithm {
        curve_hash(self.curve)
    }

    /// The digest Transit signs (`prehashed`) for a DSSE PAE.
    pub fn digest(&self, pae: &Pae<'_>) -> Vec<u8> {
        pae.digest(self.hash())
            .expect("curve hashes are real hashes")
    }

    /// Checks an ASN.1 DER signature over `pae`. `Err` when it is not DER at all.
    pub fn verify(&self, pae: &Pae<'_>, signature: &[u8]) -> Result<bool, CryptoError> {
        self.key
            .verify(Marshaling::Asn1, &self.digest(pae), signature)
    }
}

/// One key version as a JWK (`kid` given), for `aegis keys export --format jwks`.
pub fn jwk(key_type: KeyType, der: &[u8], kid: &str) -> Result<Value, KeyError> {
    let b64u = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    Ok(match key_type {
        KeyType::Ed25519 => json!({
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": kid,
            "x": b64u.encode(&der[ED25519_SPKI_PREFIX.len()..]),
        }),
        KeyType::Ecdsa(curve) => {
            let n = curve.order_len();
            let point = der
                .len()
                .checked_sub(2 * n + 1)
                .map(|start| &der[start..])
                .filter(|p| p[0] == 0x04)
                .ok_or_else(|| KeyError("not an uncompressed EC point".into()))?;
            let alg = match curve {
                Curve::P256 => "ES256",
                Curve::P384 => "ES384",
                Curve::P521 => "ES512",
            };
            json!({
                "kty": "EC", "crv": curve_name(curve), "use": "sig", "alg": alg, "kid": kid,
                "x": b64u.encode(&point[1..=n]), "y": b64u.encode(&point[n + 1..]),
            })
        }
        KeyType::Rsa(_) => {
            let key = aws_lc_rs::rsa::PublicKey::from_der(der)
                .map_err(|_| KeyError("not an RSA public key".into()))?;
            json!({
                "kty": "RSA", "use": "sig", "kid": kid,
                "n": b64u.encode(key.modulus().big_endian_without_leading_zero()),
                "e": b64u.encode(key.exponent().big_endian_without_leading_zero()),
            })
        }
    })
}

/// The key type and SubjectPublicKeyInfo DER of a JWK as [`jwk`] writes it (the inverse,
/// for a JWK Set read back from a sidecar): OKP Ed25519, EC on P-256/384/521, RSA.
pub fn jwk_spki(jwk: &Value) -> Result<(KeyType, Vec<u8>), KeyError> {
    let b64u = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let field = |name: &str| {
        jwk[name]
            .as_str()
            .and_then(|t| b64u.decode(t).ok())
            .ok_or_else(|| KeyError(format!("JWK member {name:?} is not base64url")))
    };
    let refused = |what: &str| KeyError(format!("not a usable {what} JWK"));
    match (jwk["kty"].as_str(), jwk["crv"].as_str()) {
        (Some("OKP"), Some("Ed25519")) => {
            let x = field("x")?;
            (x.len() == 32)
                .then(|| (KeyType::Ed25519, [&ED25519_SPKI_PREFIX[..], &x].concat()))
                .ok_or_else(|| refused("Ed25519"))
        }
        (Some("EC"), Some(crv)) => {
            let curve = [Curve::P256, Curve::P384, Curve::P521]
                .into_iter()
                .find(|c| curve_name(*c) == crv)
                .ok_or_else(|| refused("EC"))?;
            let (x, y) = (field("x")?, field("y")?);
            let n = curve.order_len();
            if x.len() != n || y.len() != n {
                return Err(refused("EC"));
            }
            let point = [&[0x04][..], &x, &y].concat();
            let alg = match curve {
                Curve::P256 => &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
                Curve::P384 => &aws_lc_rs::signature::ECDSA_P384_SHA384_ASN1,
                Curve::P521 => &aws_lc_rs::signature::ECDSA_P521_SHA512_ASN1,
            };
            let der = aws_lc_rs::signature::ParsedPublicKey::new(alg, point)
                .ok()
                .and_then(|k| k.as_der().ok())
                .ok_or_else(|| refused("EC"))?;
            Ok((KeyType::Ecdsa(curve), der.as_ref().to_vec()))
        }
        (Some("RSA"), _) => {
            let components = aws_lc_rs::rsa::PublicKeyComponents {
                n: field("n")?,
                e: field("e")?,
            };
            let der = components.as_der().map_err(|_| refused("RSA"))?;
            let bits = crate::crypto::RsaPublicKey::from_der(der.as_ref())
                .and_then(|k| u32::try_from(k.modulus_bits()).ok())
                .ok_or_else(|| refused("RSA"))?;
            Ok((KeyType::Rsa(bits), der.as_ref().to_vec()))
        }
        _ => Err(refused("signing")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair};

    fn pair(alg: &'static signature::EcdsaSigningAlgorithm) -> (EcdsaKeyPair, Vec<u8>) {
        let kp = EcdsaKeyPair::generate(alg).unwrap();
        let der = kp.public_key().as_der().unwrap().as_ref().to_vec();
        (kp, der)
    }

    #[test]
    fn each_curve_signs_the_pae_with_its_own_hash() {
        let rng = SystemRandom::new();
        for (alg, curve) in [
            (&signature::ECDSA_P256_SHA256_ASN1_SIGNING, Curve::P256),
            (&signature::ECDSA_P384_SHA384_ASN1_SIGNING, Curve::P384),
            (&signature::ECDSA_P521_SHA512_ASN1_SIGNING, Curve::P521),
        ] {
            let (kp, der) = pair(alg);
            let key = SignerKey::from_pem(spki_pem(&der).as_bytes()).unwrap();
            assert_eq!(key.curve, curve);
            let (pae, other) = (Pae::new(b"{}"), Pae::new(b"{ }"));
            let sig = kp.sign(&rng, &pae.to_vec()).unwrap();
            assert_eq!(key.verify(&pae, sig.as_ref()), Ok(true));
            assert_eq!(key.verify(&other, sig.as_ref()), Ok(false));
            assert!(key.verify(&pae, b"\x01\x02").is_err());
            let jwk = jwk(KeyType::Ecdsa(curve), &der, "k:v1").unwrap();
            assert_eq!(jwk["crv"], curve_name(curve));
        }
    }

    #[test]
    fn the_hint_is_the_sha256_of_the_canonical_pem() {
        let (_, der) = pair(&signature::ECDSA_P256_SHA256_ASN1_SIGNING);
        let pem = spki_pem(&der);
        assert!(pem.ends_with("-----END PUBLIC KEY-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
        assert_eq!(
            hint(&der),
            hex::encode(digest::digest(&digest::SHA256, pem.as_bytes()).as_ref())
        );
    }

    #[test]
    fn non_ec_keys_are_refused() {
        let ed = signature::Ed25519KeyPair::generate().unwrap();
        let raw = base64::engine::general_purpose::STANDARD.encode(ed.public_key().as_ref());
        let der = transit_spki(KeyType::Ed25519, &raw).unwrap();
        let e = SignerKey::from_spki(&der).err().unwrap();
        assert!(e.0.contains("ECDSA"), "{e}");
        assert!(SignerKey::from_pem(b"garbage").is_err());
        assert_eq!(jwk(KeyType::Ed25519, &der, "k:v1").unwrap()["kty"], "OKP");
    }

    /// [`jwk_spki`] reads back exactly what [`jwk`] wrote, for every key family.
    #[test]
    fn jwks_read_back_to_the_same_spki() {
        let ed = signature::Ed25519KeyPair::generate().unwrap();
        let raw = base64::engine::general_purpose::STANDARD.encode(ed.public_key().as_ref());
        let mut cases = vec![(
            KeyType::Ed25519,
            transit_spki(KeyType::Ed25519, &raw).unwrap(),
        )];
        for (alg, curve) in [
            (&signature::ECDSA_P256_SHA256_ASN1_SIGNING, Curve::P256),
            (&signature::ECDSA_P384_SHA384_ASN1_SIGNING, Curve::P384),
            (&signature::ECDSA_P521_SHA512_ASN1_SIGNING, Curve::P521),
        ] {
            cases.push((KeyType::Ecdsa(curve), pair(alg).1));
        }
        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let rsa_der = rsa.public_key().as_der().unwrap().as_ref().to_vec();
        cases.push((KeyType::Rsa(2048), rsa_der));
        for (key_type, der) in cases {
            let written = jwk(key_type, &der, "k:v1").unwrap();
            assert_eq!(jwk_spki(&written).unwrap(), (key_type, der), "{written}");
        }
        let mut short = jwk(
            KeyType::Ed25519,
            &transit_spki(KeyType::Ed25519, &raw).unwrap(),
            "k:v1",
        )
        .unwrap();
        short["x"] = "AAAA".into();
        assert!(jwk_spki(&short).is_err());
        assert!(jwk_spki(&json!({"kty": "oct", "k": "AAAA"})).is_err());
    }
}
