//! RSA signature verification for every combination Transit signs with.
//!
//! aws-lc-rs verifies RSA only for SHA-1/SHA-2 digests and only with a fixed PSS salt
//! length, but Transit also signs with SHA-224, SHA-3, `none` (raw PKCS#1 v1.5) and, by
//! default, PSS with the *largest* salt that fits (`salt_length=auto`). So the public-key
//! operation is done here with `num-bigint` (public data only: no secret, no timing
//! concern) and the EMSA encodings of RFC 8017 are checked by hand, with PSS salt-length
//! recovery as Go's `rsa.VerifyPSS` does for `PSSSaltLengthAuto`.

use num_bigint::BigUint;

use super::hash::HashAlgorithm;

/// A parsed RSA public key, ready for repeated verification.
#[derive(Clone)]
pub struct RsaPublicKey {
    n: BigUint,
    e: BigUint,
    /// Modulus size in bytes (k in RFC 8017).
    k: usize,
    /// Modulus size in bits.
    bits: u64,
}

/// PSS salt length on verify, as Transit's `salt_length` parameter says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaltLength {
    /// Accept whatever salt length the signature carries.
    Auto,
    /// Salt length equals the hash length.
    Hash,
    /// An exact salt length in bytes.
    Exact(usize),
}

/// RSA signature scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsaScheme {
    Pss(SaltLength),
    Pkcs1v15,
}

impl RsaPublicKey {
    /// Parses a DER SubjectPublicKeyInfo (or PKCS#1 RSAPublicKey) with aws-lc-rs.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let key = aws_lc_rs::rsa::PublicKey::from_der(der).ok()?;
        let n = BigUint::from_bytes_be(key.modulus().big_endian_without_leading_zero());
        let e = BigUint::from_bytes_be(key.exponent().big_endian_without_leading_zero());
        let bits = n.bits();
        Some(RsaPublicKey {
            k: bits.div_ceil(8) as usize,
            n,
            e,
            bits,
        })
    }

    pub fn modulus_bits(&self) -> u64 {
        self.bits
    }

    /// RSAVP1: s^e mod n, left-padded to k bytes. `None` when the signature is not a
    /// representative of the key (wrong length or >= n).
    fn open(&self, sig: &[u8]) -> Option<Vec<u8>> {
        if sig.len() != self.k {
            return None;
        }
        let s = BigUint::from_bytes_be(sig);
        if s >= self.n {
            return None;
        }
        let m = s.modpow(&self.e, &self.n).to_bytes_be();
        let mut em = vec![0u8; self.k - m.len()];
        em.extend_from_slice(&m);
        Some(em)
    }

    /// Verifies `sig` over `hashed`, which is the message digest under `hash`
    /// (or, for `HashAlgorithm::None`, the raw bytes to be signed with PKCS#1 v1.5).
    pub fn verify(
        &self,
        scheme: RsaScheme,
        hash: HashAlgorithm,
        hashed: &[u8],
        sig: &[u8],
    ) -> bool {
        let Some(em) = self.open(sig) else {
            return false;
        };
        match scheme {
            RsaScheme::Pkcs1v15 => pkcs1v15_matches(&em, hash, hashed),
            RsaScheme::Pss(salt) => {
                if hash == HashAlgorithm::None {
                    return false;
                }
                pss_matches(&em, self.bits, hash, hashed, salt)
            }
        }
    }
}

/// EMSA-PKCS1-v1_5: 00 01 FF..FF 00 DigestInfo H, compared whole.
fn pkcs1v15_matches(em: &[u8], hash: HashAlgorithm, hashed: &[u8]) -> bool {
    if hash != HashAlgorithm::None && hashed.len() != hash.output_len() {
        return false;
    }
    let prefix = hash.digest_info_prefix();
    let t_len = prefix.len() + hashed.len();
    let k = em.len();
    if k < t_len + 11 {
        return false;
    }
    let ps_end = k - t_len - 1;
    em[0] == 0
        && em[1] == 1
        && em[2..ps_end].iter().all(|&b| b == 0xff)
        && em[ps_end] == 0
        && em[ps_end + 1..ps_end + 1 + prefix.len()] == prefix[..]
        && em[ps_end + 1 + prefix.len()..] == *hashed
}

/// MGF1 (RFC 8017 B.2.1) xored into `out`.
fn mgf1_xor(out: &mut [u8], hash: HashAlgorithm, seed: &[u8]) {
    let mut counter = 0u32;
    let mut done = 0;
    while done < out.len() {
        let c = counter.to_be_bytes();
        let block = hash
            .digest_parts(&[seed, &c])
            .expect("PSS hash is never none");
        for (o, m) in out[done..].iter_mut().zip(block.as_bytes()) {
            *o ^= m;
        }
        done += hash.output_len();
        counter += 1;
    }
}

/// EMSA-PSS-VERIFY (RFC 8017 9.1.2) with optional salt-length recovery.
fn pss_matches(
    em_full: &[u8],
    mod_bits: u64,
    hash: HashAlgorithm,
    m_hash: &[u8],
    salt: SaltLength,
) -> bool {
    let h_len = hash.output_len();
    if m_hash.len() != h_len {
        return false;
    }
    let em_bits = (mod_bits - 1) as usize;
    let em_len = em_bits.div_ceil(8);
    // When emLen < k the leading byte of the k-byte representative must be zero.
    let (lead, em) = em_full.split_at(em_full.len() - em_len);
    if lead.iter().any(|&b| b != 0) {
        return false;
    }
    if em_len < h_len + 2 || em[em_len - 1] != 0xbc {
        return false;
    }
    let db_len = em_len - h_len - 1;
    let (masked_db, rest) = em.split_at(db_len);
    let h = &rest[..h_len];
    let unused_bits = 8 * em_len - em_bits;
    let top_mask = 0xffu8 >> unused_bits;
    if masked_db[0] & !top_mask != 0 {
        return false;
    }
    let mut db = masked_db.to_vec();
    mgf1_xor(&mut db, hash, h);
    db[0] &= top_mask;
    // DB = PS (zeros) || 0x01 || salt
    let s_len = match salt {
        SaltLength::Auto => match db.iter().position(|&b| b != 0) {
            Some(i) if db[i] == 0x01 => db_len - i - 1,
            _ => return false,
        },
        SaltLength::Hash | SaltLength::Exact(_) => {
            let s_len = if let SaltLength::Exact(n) = salt {
                n
            } else {
                h_len
            };
            if em_len < h_len + s_len + 2 {
                return false;
            }
            let sep = db_len - s_len - 1;
            if db[..sep].iter().any(|&b| b != 0) || db[sep] != 0x01 {
                return false;
            }
            s_len
        }
    };
    let salt_bytes = &db[db_len - s_len..];
    let h2 = hash
        .digest_parts(&[&[0u8; 8], m_hash, salt_bytes])
        .expect("PSS hash is never none");
    h2.as_bytes() == h
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{self, KeyPair, RsaKeyPair};

    fn keypair() -> RsaKeyPair {
        RsaKeyPair::generate(KeySize::Rsa2048).unwrap()
    }

    fn public(kp: &RsaKeyPair) -> RsaPublicKey {
        use aws_lc_rs::encoding::AsDer;
        let der = kp.public_key().as_der().unwrap();
        RsaPublicKey::from_der(der.as_ref()).unwrap()
    }

    #[test]
    fn pkcs1v15_and_pss_signatures_from_aws_lc_verify() {
        let kp = keypair();
        let pk = public(&kp);
        assert_eq!(pk.modulus_bits(), 2048);
        let rng = SystemRandom::new();
        let msg = b"model weights";
        let digest = HashAlgorithm::Sha2_256.digest(msg).unwrap();
        let mut sig = vec![0u8; kp.public_modulus_len()];

        kp.sign(&signature::RSA_PKCS1_SHA256, &rng, msg, &mut sig)
            .unwrap();
        assert!(pk.verify(
            RsaScheme::Pkcs1v15,
            HashAlgorithm::Sha2_256,
            digest.as_bytes(),
            &sig
        ));
        // PKCS#1 v1.5 does not verify as PSS, nor under another hash.
        assert!(!pk.verify(
            RsaScheme::Pss(SaltLength::Auto),
            HashAlgorithm::Sha2_256,
            digest.as_bytes(),
            &sig
        ));
        let other = HashAlgorithm::Sha2_384.digest(msg).unwrap();
        assert!(!pk.verify(
            RsaScheme::Pkcs1v15,
            HashAlgorithm::Sha2_384,
            other.as_bytes(),
            &sig
        ));

        kp.sign(&signature::RSA_PSS_SHA256, &rng, msg, &mut sig)
            .unwrap();
        // aws-lc signs PSS with salt = hash length: auto, hash and exact(32) accept it.
        for salt in [SaltLength::Auto, SaltLength::Hash, SaltLength::Exact(32)] {
            assert!(
                pk.verify(
                    RsaScheme::Pss(salt),
                    HashAlgorithm::Sha2_256,
                    digest.as_bytes(),
                    &sig
                ),
                "{salt:?}"
            );
        }
        assert!(!pk.verify(
            RsaScheme::Pss(SaltLength::Exact(20)),
            HashAlgorithm::Sha2_256,
            digest.as_bytes(),
            &sig
        ));
        assert!(!pk.verify(
            RsaScheme::Pkcs1v15,
            HashAlgorithm::Sha2_256,
            digest.as_bytes(),
            &sig
        ));

        // Any flipped bit breaks it.
        for i in [0, 100, sig.len() - 1] {
            let mut bad = sig.clone();
            bad[i] ^= 1;
            assert!(!pk.verify(
                RsaScheme::Pss(SaltLength::Auto),
                HashAlgorithm::Sha2_256,
                digest.as_bytes(),
                &bad
            ));
        }
        let other_msg = HashAlgorithm::Sha2_256.digest(b"other").unwrap();
        assert!(!pk.verify(
            RsaScheme::Pss(SaltLength::Auto),
            HashAlgorithm::Sha2_256,
            other_msg.as_bytes(),
            &sig
        ));
    }

    #[test]
    fn wrong_length_or_oversized_signatures_are_invalid_not_panics() {
        let kp = keypair();
        let pk = public(&kp);
        let d = HashAlgorithm::Sha2_256.digest(b"x").unwrap();
        for sig in [vec![], vec![0u8; 10], vec![0xffu8; 256], vec![0u8; 257]] {
            assert!(!pk.verify(
                RsaScheme::Pkcs1v15,
                HashAlgorithm::Sha2_256,
                d.as_bytes(),
                &sig
            ));
            assert!(!pk.verify(
                RsaScheme::Pss(SaltLength::Auto),
                HashAlgorithm::Sha2_256,
                d.as_bytes(),
                &sig
            ));
            assert!(!pk.verify(RsaScheme::Pkcs1v15, HashAlgorithm::None, b"", &sig));
        }
        // Digest of the wrong length for its hash.
        assert!(!pk.verify(
            RsaScheme::Pkcs1v15,
            HashAlgorithm::Sha2_256,
            b"short",
            &[0u8; 256]
        ));
        assert!(!pk.verify(
            RsaScheme::Pss(SaltLength::Hash),
            HashAlgorithm::None,
            b"short",
            &[0u8; 256]
        ));
    }
}
