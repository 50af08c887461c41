//! ECDSA over P-256, P-384 and P-521, with any digest, as Go's `crypto/ecdsa` verifies it.
//!
//! Transit hashes the input with `hash_algorithm` (or takes it as the digest when
//! `prehashed`) and verifies the digest with ECDSA's usual truncation to the order's bit
//! length. aws-lc-rs verifies a raw digest only under algorithms that pair a curve with a
//! hash, so each key is parsed once per digest width the curve offers, and a digest of
//! another width is left-padded with zeros to the next width, which leaves its integer
//! value, and so the ECDSA equation, unchanged.
//!
//! ASN.1 signatures are decoded the way Go's `encoding/asn1` decodes them (strict minimal
//! lengths and integers, extra elements inside the SEQUENCE tolerated), because Vault's
//! answer for a malformed signature depends on exactly that.

use aws_lc_rs::digest::{self, Digest};
use aws_lc_rs::signature::{self, EcdsaVerificationAlgorithm, ParsedPublicKey};

use super::{CryptoError, Marshaling};

/// A NIST curve Transit signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    /// Byte length of the group order.
    pub fn order_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }

    /// (digest width, algorithm pairing this curve with a hash of that width), by width.
    fn widths(
        self,
    ) -> &'static [(
        usize,
        &'static EcdsaVerificationAlgorithm,
        &'static digest::Algorithm,
    )] {
        match self {
            Curve::P256 => &[
                (
                    20,
                    &signature::ECDSA_P256_SHA1_ASN1,
                    &digest::SHA1_FOR_LEGACY_USE_ONLY,
                ),
                (32, &signature::ECDSA_P256_SHA256_ASN1, &digest::SHA256),
            ],
            Curve::P384 => &[
                (32, &signature::ECDSA_P384_SHA256_ASN1, &digest::SHA256),
                (48, &signature::ECDSA_P384_SHA384_ASN1, &digest::SHA384),
            ],
            Curve::P521 => &[
                (
                    20,
                    &signature::ECDSA_P521_SHA1_ASN1,
                    &digest::SHA1_FOR_LEGACY_USE_ONLY,
                ),
                (28, &signature::ECDSA_P521_SHA224_ASN1, &digest::SHA224),
                (32, &signature::ECDSA_P521_SHA256_ASN1, &digest::SHA256),
                (48, &signature::ECDSA_P521_SHA384_ASN1, &digest::SHA384),
                (64, &signature::ECDSA_P521_SHA512_ASN1, &digest::SHA512),
            ],
        }
    }
}

/// An ECDSA public key parsed once for each digest width of its curve.
#[derive(Clone)]
pub struct EcdsaPublicKey {
    curve: Curve,
    parsed: Vec<(usize, ParsedPublicKey, &'static digest::Algorithm)>,
}

impl EcdsaPublicKey {
    pub fn from_spki(curve: Curve, der: &[u8]) -> Option<Self> {
        let parsed = curve
            .widths()
            .iter()
            .map(|&(w, alg, dalg)| ParsedPublicKey::new(alg, der).ok().map(|p| (w, p, dalg)))
            .collect::<Option<Vec<_>>>()?;
        Some(EcdsaPublicKey { curve, parsed })
    }

    pub fn curve(&self) -> Curve {
        self.curve
    }

    /// Verifies `sig` (DER or JWS r||s per `marshaling`) over the digest `hashed`.
    pub fn verify(
        &self,
        marshaling: Marshaling,
        hashed: &[u8],
        sig: &[u8],
    ) -> Result<bool, CryptoError> {
        let (r, s) = match marshaling {
            Marshaling::Asn1 => parse_go_asn1_signature(sig)?,
            Marshaling::Jws => {
                let (r, s) = sig.split_at(sig.len() / 2);
                (GoInt::unsigned(r), GoInt::unsigned(s))
            }
        };
        // Go's ecdsa.Verify: r and s must be positive (range vs. the order is left to
        // aws-lc), and an empty digest never verifies.
        if !r.is_positive() || !s.is_positive() || hashed.is_empty() {
            return Ok(false);
        }
        let order_len = self.curve.order_len();
        let mut hashed = hashed;
        if hashed.len() > order_len && self.curve != Curve::P521 {
            // Orders of P-256 and P-384 are whole bytes: truncation is a byte cut.
            hashed = &hashed[..order_len];
        }
        let Some((width, key, dalg)) = self.parsed.iter().find(|(w, _, _)| *w >= hashed.len())
        else {
            // P-521 with a "digest" over 64 bytes: only Vault truncates that bit-exactly.
            return Err(CryptoError::NotLocal);
        };
        let mut padded = [0u8; 64];
        padded[width - hashed.len()..*width].copy_from_slice(hashed);
        let digest =
            Digest::import_less_safe(&padded[..*width], dalg).map_err(|_| CryptoError::NotLocal)?;
        let der = der_signature(r.magnitude, s.magnitude);
        Ok(key.verify_digest_sig(&digest, &der).is_ok())
    }
}

/// An ASN.1 INTEGER as Go decodes it into a `*big.Int`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoInt<'a> {
    pub negative: bool,
    /// Big-endian magnitude without leading zeros (empty for zero). Only meaningful when
    /// non-negative: negative values are refused before use.
    pub magnitude: &'a [u8],
}

impl<'a> GoInt<'a> {
    fn unsigned(bytes: &'a [u8]) -> Self {
        let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        GoInt {
            negative: false,
            magnitude: &bytes[start..],
        }
    }

    fn is_positive(&self) -> bool {
        !self.negative && !self.magnitude.is_empty()
    }
}

const INVALID: CryptoError = CryptoError::Invalid("supplied signature is invalid");

/// Reads one DER TLV as Go's `parseTagAndLength` does; returns (tag byte, value, rest).
fn read_tlv(b: &[u8]) -> Result<(u8, &[u8], &[u8]), CryptoError> {
    let (&tag, rest) = b.split_first().ok_or(INVALID)?;
    if tag & 0x1f == 0x1f {
        // High tag numbers are never what Vault expects here: a tag mismatch for Go.
        return Err(INVALID);
    }
    let (&l0, mut rest) = rest.split_first().ok_or(INVALID)?;
    let len = if l0 & 0x80 == 0 {
        usize::from(l0)
    } else {
        let n = usize::from(l0 & 0x7f);
        if n == 0 {
            return Err(INVALID); // indefinite length
        }
        let mut len = 0usize;
        for _ in 0..n {
            let (&b, r) = rest.split_first().ok_or(INVALID)?;
            rest = r;
            if len >= 1 << 23 {
                return Err(INVALID); // length too large
            }
            len = (len << 8) | usize::from(b);
            if len == 0 {
                return Err(INVALID); // superfluous leading zeros
            }
        }
        if len < 0x80 {
            return Err(INVALID); // non-minimal length
        }
        len
    };
    if rest.len() < len {
        return Err(INVALID);
    }
    let (value, rest) = rest.split_at(len);
    Ok((tag, value, rest))
}

fn read_go_int(b: &[u8]) -> Result<(GoInt<'_>, &[u8]), CryptoError> {
    let (tag, v, rest) = read_tlv(b)?;
    if tag != 0x02 {
        return Err(INVALID);
    }
    // Go's checkInteger: non-empty and minimally encoded.
    if v.is_empty()
        || (v.len() > 1 && ((v[0] == 0 && v[1] & 0x80 == 0) || (v[0] == 0xff && v[1] & 0x80 != 0)))
    {
        return Err(INVALID);
    }
    let negative = v[0] & 0x80 != 0;
    Ok((
        GoInt {
            negative,
            ..GoInt::unsigned(v)
        },
        rest,
    ))
}

/// `asn1.Unmarshal(sig, &struct{R, S *big.Int})` followed by Vault's check on trailing
/// data; `Err` carries Vault's 400 message.
pub fn parse_go_asn1_signature(sig: &[u8]) -> Result<(GoInt<'_>, GoInt<'_>), CryptoError> {
    let (tag, inner, rest) = read_tlv(sig)?;
    if tag != 0x30 {
        return Err(INVALID);
    }
    let (r, inner) = read_go_int(inner)?;
    let (s, _extra_elements_allowed_by_go) = read_go_int(inner)?;
    if !rest.is_empty() {
        return Err(CryptoError::Invalid(
            "supplied signature contains extra data",
        ));
    }
    Ok((r, s))
}

/// Canonical DER `SEQUENCE { INTEGER r, INTEGER s }` from positive magnitudes.
pub fn der_signature(r: &[u8], s: &[u8]) -> Vec<u8> {
    // Minimal DER length of any size: the parser accepts integers past 64 KiB.
    fn push_len(out: &mut Vec<u8>, len: usize) {
        if len < 0x80 {
            out.push(len as u8);
            return;
        }
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    fn push_int(out: &mut Vec<u8>, m: &[u8]) {
        let pad = m[0] & 0x80 != 0;
        out.push(0x02);
        push_len(out, m.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(m);
    }
    let mut body = Vec::with_capacity(r.len() + s.len() + 8);
    push_int(&mut body, r);
    push_int(&mut body, s);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.push(0x30);
    push_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::HashAlgorithm;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair};

    fn key(curve: Curve) -> (EcdsaKeyPair, EcdsaPublicKey) {
        let alg = match curve {
            Curve::P256 => &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            Curve::P384 => &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
            Curve::P521 => &signature::ECDSA_P521_SHA512_ASN1_SIGNING,
        };
        let kp = EcdsaKeyPair::generate(alg).unwrap();
        let der = kp.public_key().as_der().unwrap();
        let pk = EcdsaPublicKey::from_spki(curve, der.as_ref()).unwrap();
        (kp, pk)
    }

    #[test]
    fn verifies_aws_lc_signatures_on_each_curve() {
        let rng = SystemRandom::new();
        for (curve, hash) in [
            (Curve::P256, HashAlgorithm::Sha2_256),
            (Curve::P384, HashAlgorithm::Sha2_384),
            (Curve::P521, HashAlgorithm::Sha2_512),
        ] {
            let (kp, pk) = key(curve);
            let sig = kp.sign(&rng, b"payload").unwrap();
            let d = hash.digest(b"payload").unwrap();
            assert_eq!(
                pk.verify(Marshaling::Asn1, d.as_bytes(), sig.as_ref()),
                Ok(true),
                "{curve:?}"
            );
            let d2 = hash.digest(b"payloaD").unwrap();
            assert_eq!(
                pk.verify(Marshaling::Asn1, d2.as_bytes(), sig.as_ref()),
                Ok(false)
            );
            // Trailing data after the SEQUENCE: Vault's own error.
            let mut trailing = sig.as_ref().to_vec();
            trailing.push(0);
            assert_eq!(
                pk.verify(Marshaling::Asn1, d.as_bytes(), &trailing),
                Err(CryptoError::Invalid(
                    "supplied signature contains extra data"
                ))
            );
            assert_eq!(pk.verify(Marshaling::Asn1, &[], sig.as_ref()), Ok(false));
        }
    }

    #[test]
    fn zero_padding_a_short_digest_keeps_its_value() {
        // A P-256 signature over SHA-224 made by padding must equal one over the raw
        // 28 bytes: aws-lc signs the 32-byte padded digest; we verify the 28 bytes.
        let (kp, pk) = key(Curve::P256);
        let d = HashAlgorithm::Sha2_224.digest(b"x").unwrap();
        let mut padded = [0u8; 32];
        padded[4..].copy_from_slice(d.as_bytes());
        let digest = Digest::import_less_safe(&padded, &digest::SHA256).unwrap();
        let sig = kp.sign_digest(&digest).unwrap();
        assert_eq!(
            pk.verify(Marshaling::Asn1, d.as_bytes(), sig.as_ref()),
            Ok(true)
        );
    }

    #[test]
    fn malformed_der_is_vaults_user_error() {
        let (_, pk) = key(Curve::P256);
        let d = [0u8; 32];
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x00],
            &[0x31, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01],
            &[0x30, 0x80, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0, 0],
            &[0x30, 0x81, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01],
            &[0x30, 0x07, 0x02, 0x02, 0x00, 0x01, 0x02, 0x01, 0x01],
            &[0x30, 0x05, 0x02, 0x00, 0x02, 0x01, 0x01],
        ] {
            assert_eq!(
                pk.verify(Marshaling::Asn1, &d, bad),
                Err(INVALID),
                "{bad:02x?}"
            );
        }
        // Well-formed but negative or zero r: simply not valid.
        for ok_shape in [
            &[0x30, 0x06, 0x02, 0x01, 0xff, 0x02, 0x01, 0x01][..],
            &[0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x01],
            // An extra element inside the SEQUENCE is tolerated by Go.
            &[
                0x30, 0x09, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x05, 0x00, 0x00,
            ],
        ] {
            assert_eq!(
                pk.verify(Marshaling::Asn1, &d, ok_shape),
                Ok(false),
                "{ok_shape:02x?}"
            );
        }
    }

    #[test]
    fn canonical_der_reads_back_for_integers_of_any_length() {
        // Found while writing the signature_der fuzz target: a length of 64 KiB or more
        // was written in two bytes, truncated, so the DER given to aws-lc was malformed.
        for len in [1usize, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x1_0000, 0x1_0203] {
            let big = vec![0x01u8; len];
            let der = der_signature(&big, &[0x7f]);
            let (r, s) = parse_go_asn1_signature(&der).unwrap();
            assert_eq!(
                (r.magnitude.len(), s.magnitude),
                (len, &[0x7f][..]),
                "{len}"
            );
            assert!(!r.negative && !s.negative);
            // A high first byte gets its 0x00 pad and stays positive.
            let der = der_signature(&[0x80; 3], &big);
            let (r, s) = parse_go_asn1_signature(&der).unwrap();
            assert_eq!((r.magnitude, s.magnitude.len()), (&[0x80; 3][..], len));
            assert!(!r.negative);
        }
    }

    #[test]
    fn jws_is_r_then_s() {
        let (kp, pk) = key(Curve::P384);
        let rng = SystemRandom::new();
        let fixed = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            kp.to_pkcs8v1().unwrap().as_ref(),
        )
        .unwrap();
        let sig = fixed.sign(&rng, b"m").unwrap();
        let d = HashAlgorithm::Sha2_384.digest(b"m").unwrap();
        assert_eq!(
            pk.verify(Marshaling::Jws, d.as_bytes(), sig.as_ref()),
            Ok(true)
        );
        // One byte short: split in halves as Vault splits it, r and s are other numbers.
        // (Dropping the first byte instead is not a refusal when r's top byte is zero, one
        // signature in 256: r is then the same number, and Vault accepts it too.)
        let short = &sig.as_ref()[..sig.as_ref().len() - 1];
        assert_eq!(pk.verify(Marshaling::Jws, d.as_bytes(), short), Ok(false));
        assert_eq!(pk.verify(Marshaling::Jws, d.as_bytes(), &[]), Ok(false));
    }
}
