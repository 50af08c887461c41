//! RSA signature verification for every combination Transit signs with.
//!
//! Two implementations, chosen per verification by `route`:
//!
//! - aws-lc-rs, where it decides exactly what Go's `crypto/rsa` (OpenBao) decides: PKCS#1
//!   v1.5 with SHA-1 or SHA-2 256/384/512, and PSS with those SHA-2 hashes when the salt
//!   length is fixed to the hash length or to the largest that fits. For `salt_length=auto`
//!   (any salt length) it is a fast accept only: Transit signs PSS with the largest salt by
//!   default (Go's `PSSSaltLengthAuto` on sign), so aws-lc-rs told to expect that salt
//!   accepts the common signature, and anything it refuses goes to the path below, which
//!   decides.
//! - Everything else (SHA-224, SHA-3, `none` = raw PKCS#1 v1.5, other salt lengths, PSS
//!   with SHA-1, and the `auto` fallback): the public operation s^e mod n here, with a
//!   Montgomery context precomputed once per key (`Monty`; public data only, so variable
//!   time is fine), and the EMSA encodings of RFC 8017 checked by hand, with PSS salt-length
//!   recovery as Go's `rsa.VerifyPSS` does for `PSSSaltLengthAuto`.
//!
//! aws-lc-rs's verifiers are made per key on first use of each combination and kept with
//! the key, which is cached per key version.

use std::sync::{Arc, OnceLock};

use aws_lc_rs::digest as lc_digest;
use aws_lc_rs::signature::{self as lc, ParsedPublicKey, RsaParameters, RsaPssSaltLength};
use num_bigint::BigUint;

use super::hash::HashAlgorithm;

/// A parsed RSA public key, ready for repeated verification. Clones share the
/// precomputed state.
#[derive(Clone)]
pub struct RsaPublicKey {
    inner: Arc<Inner>,
}

struct Inner {
    e: BigUint,
    /// Modulus size in bytes (k in RFC 8017).
    k: usize,
    /// Modulus size in bits.
    bits: u64,
    monty: Monty,
    /// The key as PKCS#1 RSAPublicKey DER, for aws-lc-rs's verifiers.
    der: Vec<u8>,
    /// aws-lc-rs's verifiers by index into [`AWS_ALGS`], made on first use; `None` when
    /// aws-lc-rs refuses the key for that algorithm.
    aws: [OnceLock<Option<ParsedPublicKey>>; AWS_ALGS.len()],
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

const PSS_SHA256_MAX: RsaParameters =
    lc::RSA_PSS_2048_8192_SHA256.with_pss_salt_length(RsaPssSaltLength::Max);
const PSS_SHA384_MAX: RsaParameters =
    lc::RSA_PSS_2048_8192_SHA384.with_pss_salt_length(RsaPssSaltLength::Max);
const PSS_SHA512_MAX: RsaParameters =
    lc::RSA_PSS_2048_8192_SHA512.with_pss_salt_length(RsaPssSaltLength::Max);

/// aws-lc-rs's verifiers used, indexed as [`route`] computes: PKCS#1 v1.5 by hash
/// (SHA-1, SHA-256, SHA-384, SHA-512), then PSS with salt = hash length, then PSS with
/// the largest salt (SHA-256, SHA-384, SHA-512 each).
static AWS_ALGS: [&RsaParameters; 10] = [
    &lc::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
    &lc::RSA_PKCS1_2048_8192_SHA256,
    &lc::RSA_PKCS1_2048_8192_SHA384,
    &lc::RSA_PKCS1_2048_8192_SHA512,
    &lc::RSA_PSS_2048_8192_SHA256,
    &lc::RSA_PSS_2048_8192_SHA384,
    &lc::RSA_PSS_2048_8192_SHA512,
    &PSS_SHA256_MAX,
    &PSS_SHA384_MAX,
    &PSS_SHA512_MAX,
];

/// Modulus sizes aws-lc-rs's `*_2048_8192_*` verifiers accept.
const AWS_BITS: std::ops::RangeInclusive<u64> = 2048..=8192;

/// Which implementation answers one verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// aws-lc-rs with `AWS_ALGS[i]`; its answer is final.
    Aws(usize),
    /// aws-lc-rs with `AWS_ALGS[i]` accepts; when it refuses, [`Route::Local`] decides.
    AwsThenLocal(usize),
    /// The Montgomery public operation and the hand-checked encodings.
    Local,
}

/// Where a verification goes (see the module doc).
fn route(scheme: RsaScheme, hash: HashAlgorithm, mod_bits: u64) -> Route {
    if !AWS_BITS.contains(&mod_bits) {
        return Route::Local;
    }
    let h = match hash {
        HashAlgorithm::Sha1 => 0,
        HashAlgorithm::Sha2_256 => 1,
        HashAlgorithm::Sha2_384 => 2,
        HashAlgorithm::Sha2_512 => 3,
        _ => return Route::Local,
    };
    let h_len = hash.output_len();
    // emLen - hLen - 2, with emLen = ceil((modBits - 1) / 8).
    let max_salt = ((mod_bits - 1).div_ceil(8) as usize).saturating_sub(h_len + 2);
    match scheme {
        RsaScheme::Pkcs1v15 => Route::Aws(h),
        // aws-lc-rs has no PSS with SHA-1.
        RsaScheme::Pss(_) if h == 0 => Route::Local,
        RsaScheme::Pss(SaltLength::Hash) => Route::Aws(3 + h),
        RsaScheme::Pss(SaltLength::Exact(n)) if n == h_len => Route::Aws(3 + h),
        RsaScheme::Pss(SaltLength::Exact(n)) if n == max_salt => Route::Aws(6 + h),
        RsaScheme::Pss(SaltLength::Exact(_)) => Route::Local,
        RsaScheme::Pss(SaltLength::Auto) => Route::AwsThenLocal(6 + h),
    }
}

/// aws-lc-rs's digest algorithm for a hash [`route`] sends to aws-lc-rs.
fn lc_digest_alg(hash: HashAlgorithm) -> Option<&'static lc_digest::Algorithm> {
    Some(match hash {
        HashAlgorithm::Sha1 => &lc_digest::SHA1_FOR_LEGACY_USE_ONLY,
        HashAlgorithm::Sha2_256 => &lc_digest::SHA256,
        HashAlgorithm::Sha2_384 => &lc_digest::SHA384,
        HashAlgorithm::Sha2_512 => &lc_digest::SHA512,
        _ => return None,
    })
}

impl RsaPublicKey {
    /// Parses a DER SubjectPublicKeyInfo (or PKCS#1 RSAPublicKey) with aws-lc-rs and sets
    /// up the Montgomery context.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let key = aws_lc_rs::rsa::PublicKey::from_der(der).ok()?;
        let n = BigUint::from_bytes_be(key.modulus().big_endian_without_leading_zero());
        let e = BigUint::from_bytes_be(key.exponent().big_endian_without_leading_zero());
        let bits = n.bits();
        let monty = Monty::new(&n)?;
        Some(RsaPublicKey {
            inner: Arc::new(Inner {
                e,
                k: bits.div_ceil(8) as usize,
                bits,
                monty,
                der: key.as_ref().to_vec(),
                aws: Default::default(),
            }),
        })
    }

    pub fn modulus_bits(&self) -> u64 {
        self.inner.bits
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
        match route(scheme, hash, self.inner.bits) {
            Route::Aws(i) => match self.aws_verify(i, hash, hashed, sig) {
                Some(ok) => ok,
                None => self.verify_local(scheme, hash, hashed, sig),
            },
            Route::AwsThenLocal(i) => {
                self.aws_verify(i, hash, hashed, sig) == Some(true)
                    || self.verify_local(scheme, hash, hashed, sig)
            }
            Route::Local => self.verify_local(scheme, hash, hashed, sig),
        }
    }

    /// aws-lc-rs's answer with `AWS_ALGS[i]`; `None` when it refused this key.
    fn aws_verify(&self, i: usize, hash: HashAlgorithm, hashed: &[u8], sig: &[u8]) -> Option<bool> {
        let key = self.inner.aws[i]
            .get_or_init(|| ParsedPublicKey::new(AWS_ALGS[i], &self.inner.der).ok())
            .as_ref()?;
        let alg = lc_digest_alg(hash).expect("routed hashes have an aws-lc digest");
        // A digest of the wrong length is refused by both paths alike.
        let Ok(digest) = lc_digest::Digest::import_less_safe(hashed, alg) else {
            return Some(false);
        };
        Some(key.verify_digest_sig(&digest, sig).is_ok())
    }

    /// RSAVP1: s^e mod n, left-padded to k bytes. `None` when the signature is not a
    /// representative of the key (wrong length or >= n).
    fn open(&self, sig: &[u8]) -> Option<Vec<u8>> {
        let Inner { k, monty, e, .. } = &*self.inner;
        if sig.len() != *k {
            return None;
        }
        let l = monty.n.len();
        let mut s = vec![0u64; l];
        for (limb, chunk) in s.iter_mut().zip(sig.rchunks(8)) {
            let mut b = [0u8; 8];
            b[8 - chunk.len()..].copy_from_slice(chunk);
            *limb = u64::from_be_bytes(b);
        }
        if !lt(&s, &monty.n) {
            return None;
        }
        let m = monty.pow(&s, e);
        let mut em = vec![0u8; 8 * l];
        for (chunk, limb) in em.rchunks_mut(8).zip(&m) {
            chunk.copy_from_slice(&limb.to_be_bytes());
        }
        em.drain(..8 * l - k);
        Some(em)
    }

    /// The Montgomery public operation and the encodings checked here.
    fn verify_local(
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
                pss_matches(&em, self.inner.bits, hash, hashed, salt)
            }
        }
    }
}

/// Montgomery arithmetic modulo an odd `n`, set up once per key, for the public operation.
///
/// Variable time on purpose: everything it touches (modulus, exponent, signature) is public.
/// Numbers are little-endian 64-bit limbs of the modulus' length.
#[derive(Clone)]
struct Monty {
    n: Vec<u64>,
    /// -n^-1 mod 2^64.
    n0: u64,
    /// R^2 mod n, R = 2^(64 * limbs): maps a number into Montgomery form.
    rr: Vec<u64>,
}

impl Monty {
    fn new(n: &BigUint) -> Option<Self> {
        let limbs = n.to_u64_digits();
        let low = *limbs.first()?;
        if low & 1 == 0 || n.bits() < 2 {
            return None;
        }
        // Newton's iteration for low^-1 mod 2^64: correct to 3 bits at the start (odd low),
        // the number of correct bits doubles with each step.
        let mut inv = low;
        for _ in 0..5 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(low.wrapping_mul(inv)));
        }
        let rr = (BigUint::from(1u8) << (128 * limbs.len())) % n;
        let mut rr = rr.to_u64_digits();
        rr.resize(limbs.len(), 0);
        Some(Monty {
            n0: inv.wrapping_neg(),
            rr,
            n: limbs,
        })
    }

    /// `out = a * b / R mod n` for `a, b < n` (CIOS: multiplication and reduction fused).
    /// `t` is scratch of `limbs + 1`.
    fn mul(&self, a: &[u64], b: &[u64], t: &mut [u64], out: &mut [u64]) {
        let l = self.n.len();
        let (n, a, b, t) = (&self.n[..l], &a[..l], &b[..l], &mut t[..l + 1]);
        t.fill(0);
        // t stays below 2n: l + 1 limbs, the top one 0 or 1.
        for &bi in b {
            let bi = u128::from(bi);
            let s = u128::from(t[0]) + u128::from(a[0]) * bi;
            let mut c1 = s >> 64;
            let m = u128::from((s as u64).wrapping_mul(self.n0));
            let mut c2 = (u128::from(s as u64) + m * u128::from(n[0])) >> 64;
            for j in 1..l {
                let s = u128::from(t[j]) + u128::from(a[j]) * bi + c1;
                c1 = s >> 64;
                let s2 = u128::from(s as u64) + m * u128::from(n[j]) + c2;
                c2 = s2 >> 64;
                t[j - 1] = s2 as u64;
            }
            let s = u128::from(t[l]) + c1 + c2;
            t[l - 1] = s as u64;
            t[l] = (s >> 64) as u64;
        }
        let carry = t[l] != 0;
        self.reduce_once(&mut t[..l], carry);
        out[..l].copy_from_slice(&t[..l]);
    }

    /// `out = a^2 / R mod n` for `a < n`: the square first (each cross product once,
    /// doubled), then the Montgomery reduction. `t` is scratch of `2 * limbs + 1`.
    fn sqr(&self, a: &[u64], t: &mut [u64], out: &mut [u64]) {
        let l = self.n.len();
        let (n, a, t) = (&self.n[..l], &a[..l], &mut t[..2 * l + 1]);
        t.fill(0);
        for i in 0..l {
            let ai = u128::from(a[i]);
            let mut c = 0u128;
            for j in i + 1..l {
                let s = u128::from(t[i + j]) + ai * u128::from(a[j]) + c;
                t[i + j] = s as u64;
                c = s >> 64;
            }
            t[i + l] = c as u64;
        }
        // Double the cross products (their sum is below a^2 / 2: no bit is lost), then add
        // the squares; a^2 < R^2 fits in 2 * limbs, so nothing carries out.
        for i in (1..2 * l).rev() {
            t[i] = (t[i] << 1) | (t[i - 1] >> 63);
        }
        let mut c = 0u128;
        for i in 0..l {
            let sq = u128::from(a[i]) * u128::from(a[i]);
            let s = u128::from(t[2 * i]) + (sq & u128::from(u64::MAX)) + c;
            t[2 * i] = s as u64;
            let s = u128::from(t[2 * i + 1]) + (sq >> 64) + (s >> 64);
            t[2 * i + 1] = s as u64;
            c = s >> 64;
        }
        // Montgomery reduction, one limb at a time (t < n^2 + n * R < 2 * n * R, so the
        // carries end within t's 2 * limbs + 1).
        for i in 0..l {
            let m = u128::from(t[i].wrapping_mul(self.n0));
            let mut c = 0u128;
            for j in 0..l {
                let s = u128::from(t[i + j]) + m * u128::from(n[j]) + c;
                t[i + j] = s as u64;
                c = s >> 64;
            }
            let mut k = i + l;
            while c != 0 {
                let s = u128::from(t[k]) + c;
                t[k] = s as u64;
                c = s >> 64;
                k += 1;
            }
        }
        let carry = t[2 * l] != 0;
        self.reduce_once(&mut t[l..2 * l], carry);
        out[..l].copy_from_slice(&t[l..2 * l]);
    }

    /// `x -= n` when `x` (with an extra top bit `carry`) is at least n.
    fn reduce_once(&self, x: &mut [u64], carry: bool) {
        if carry || !lt(x, &self.n) {
            let mut borrow = false;
            for (xj, &nj) in x.iter_mut().zip(&self.n) {
                let (d, b1) = xj.overflowing_sub(nj);
                let (d, b2) = d.overflowing_sub(u64::from(borrow));
                *xj = d;
                borrow = b1 | b2;
            }
        }
    }

    /// `s^e mod n` for `s < n` and `e >= 1` (aws-lc-rs's key parsing has made sure of
    /// `e >= 3`), left to right: one squaring per bit of e, one multiplication per set bit.
    fn pow(&self, s: &[u64], e: &BigUint) -> Vec<u64> {
        let l = self.n.len();
        let mut t = vec![0u64; 2 * l + 1];
        let mut x = vec![0u64; l];
        self.mul(s, &self.rr, &mut t, &mut x);
        let mut acc = x.clone();
        let mut tmp = vec![0u64; l];
        for i in (0..e.bits().saturating_sub(1)).rev() {
            self.sqr(&acc, &mut t, &mut tmp);
            if e.bit(i) {
                self.mul(&tmp, &x, &mut t, &mut acc);
            } else {
                std::mem::swap(&mut acc, &mut tmp);
            }
        }
        // Out of Montgomery form: multiply by 1.
        x.fill(0);
        x[0] = 1;
        self.mul(&acc, &x, &mut t, &mut tmp);
        tmp
    }
}

/// `a < b` for equal-length little-endian limbs.
fn lt(a: &[u64], b: &[u64]) -> bool {
    for (x, y) in a.iter().rev().zip(b.iter().rev()) {
        if x != y {
            return x < y;
        }
    }
    false
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

    /// The contents of the DER TLV at the start of `der`, and what follows it.
    fn tlv(der: &[u8]) -> (&[u8], &[u8]) {
        let (len, hdr) = match der[1] {
            l if l < 0x80 => (usize::from(l), 2),
            0x81 => (usize::from(der[2]), 3),
            0x82 => (usize::from(u16::from_be_bytes([der[2], der[3]])), 4),
            _ => panic!("DER length form"),
        };
        (&der[hdr..hdr + len], &der[hdr + len..])
    }

    /// Signs any encoding with the private exponent (num-bigint, independent of [`Monty`]),
    /// for the hashes and salts aws-lc-rs cannot sign with.
    struct Signer {
        pk: RsaPublicKey,
        n: BigUint,
        d: BigUint,
    }

    impl Signer {
        fn new(kp: &RsaKeyPair) -> Self {
            use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
            let pkcs8: Pkcs8V1Der = kp.as_der().unwrap();
            // PrivateKeyInfo { version, algorithm, OCTET STRING { RSAPrivateKey } }
            let (info, _) = tlv(pkcs8.as_ref());
            let (_, rest) = tlv(info);
            let (_, rest) = tlv(rest);
            let (octets, _) = tlv(rest);
            // RSAPrivateKey { version, n, e, d, ... }
            let (rsa, _) = tlv(octets);
            let (_, rest) = tlv(rsa);
            let (n, rest) = tlv(rest);
            let (_, rest) = tlv(rest);
            let (d, _) = tlv(rest);
            Signer {
                pk: public(kp),
                n: BigUint::from_bytes_be(n),
                d: BigUint::from_bytes_be(d),
            }
        }

        fn sign_em(&self, em: &[u8]) -> Vec<u8> {
            let k = self.pk.inner.k;
            let s = BigUint::from_bytes_be(em)
                .modpow(&self.d, &self.n)
                .to_bytes_be();
            let mut sig = vec![0u8; k - s.len()];
            sig.extend_from_slice(&s);
            sig
        }

        fn pkcs1v15(&self, hash: HashAlgorithm, hashed: &[u8]) -> Vec<u8> {
            let prefix = hash.digest_info_prefix();
            let mut em = vec![0u8, 1];
            em.resize(self.pk.inner.k - prefix.len() - hashed.len() - 1, 0xff);
            em.push(0);
            em.extend_from_slice(&prefix);
            em.extend_from_slice(hashed);
            self.sign_em(&em)
        }

        /// EMSA-PSS-ENCODE (RFC 8017 9.1.1) with a salt of `s_len` bytes.
        fn pss(&self, hash: HashAlgorithm, m_hash: &[u8], s_len: usize) -> Vec<u8> {
            let em_bits = (self.pk.inner.bits - 1) as usize;
            let em_len = em_bits.div_ceil(8);
            let h_len = hash.output_len();
            let mut salt = vec![0u8; s_len];
            aws_lc_rs::rand::fill(&mut salt).unwrap();
            let h = hash.digest_parts(&[&[0u8; 8], m_hash, &salt]).unwrap();
            let mut db = vec![0u8; em_len - s_len - h_len - 2];
            db.push(1);
            db.extend_from_slice(&salt);
            mgf1_xor(&mut db, hash, h.as_bytes());
            db[0] &= 0xff >> (8 * em_len - em_bits);
            db.extend_from_slice(h.as_bytes());
            db.push(0xbc);
            self.sign_em(&db)
        }
    }

    fn max_salt(bits: u64, hash: HashAlgorithm) -> usize {
        (bits - 1).div_ceil(8) as usize - hash.output_len() - 2
    }

    #[test]
    fn routes_by_scheme_hash_and_salt() {
        use HashAlgorithm::*;
        use Route::*;
        let pss = |s| RsaScheme::Pss(s);
        let cases = [
            // PKCS#1 v1.5: aws-lc-rs for SHA-1 and SHA-2 256/384/512.
            (RsaScheme::Pkcs1v15, Sha1, Aws(0)),
            (RsaScheme::Pkcs1v15, Sha2_256, Aws(1)),
            (RsaScheme::Pkcs1v15, Sha2_384, Aws(2)),
            (RsaScheme::Pkcs1v15, Sha2_512, Aws(3)),
            (RsaScheme::Pkcs1v15, Sha2_224, Local),
            (RsaScheme::Pkcs1v15, Sha3_256, Local),
            (RsaScheme::Pkcs1v15, None, Local),
            // PSS, salt = hash length, given either way.
            (pss(SaltLength::Hash), Sha2_256, Aws(4)),
            (pss(SaltLength::Exact(48)), Sha2_384, Aws(5)),
            (pss(SaltLength::Hash), Sha2_512, Aws(6)),
            // PSS, the largest salt: 256 - 32 - 2 for SHA-256 at 2048 bits.
            (pss(SaltLength::Exact(222)), Sha2_256, Aws(7)),
            (pss(SaltLength::Exact(256 - 48 - 2)), Sha2_384, Aws(8)),
            (pss(SaltLength::Exact(256 - 64 - 2)), Sha2_512, Aws(9)),
            // PSS auto: aws-lc-rs expecting the largest salt, then the local path.
            (pss(SaltLength::Auto), Sha2_256, AwsThenLocal(7)),
            (pss(SaltLength::Auto), Sha2_384, AwsThenLocal(8)),
            (pss(SaltLength::Auto), Sha2_512, AwsThenLocal(9)),
            // Everything else is local.
            (pss(SaltLength::Exact(5)), Sha2_256, Local),
            (pss(SaltLength::Exact(221)), Sha2_256, Local),
            (pss(SaltLength::Auto), Sha1, Local),
            (pss(SaltLength::Hash), Sha1, Local),
            (pss(SaltLength::Auto), Sha2_224, Local),
            (pss(SaltLength::Hash), Sha3_512, Local),
            (pss(SaltLength::Auto), None, Local),
        ];
        for (scheme, hash, want) in cases {
            assert_eq!(route(scheme, hash, 2048), want, "{scheme:?} {hash:?}");
        }
        // The largest salt depends on the modulus size.
        assert_eq!(
            route(pss(SaltLength::Exact(512 - 32 - 2)), Sha2_256, 4096),
            Aws(7)
        );
        assert_eq!(route(pss(SaltLength::Exact(222)), Sha2_256, 4096), Local);
        // Sizes aws-lc-rs's verifiers refuse stay local.
        for bits in [1024, 2047, 8193] {
            assert_eq!(route(RsaScheme::Pkcs1v15, Sha2_256, bits), Local);
            assert_eq!(route(pss(SaltLength::Auto), Sha2_256, bits), Local);
        }
        assert_eq!(route(RsaScheme::Pkcs1v15, Sha2_256, 8192), Aws(1));
    }

    /// One signature checked every way: `verify` (whatever the route) and the local path
    /// give the same answer, and a flipped bit or another digest is refused.
    fn check(
        signer: &Signer,
        scheme: RsaScheme,
        hash: HashAlgorithm,
        hashed: &[u8],
        sig: &[u8],
        want: bool,
    ) {
        let pk = &signer.pk;
        let what = format!("{scheme:?} {hash:?} want {want}");
        assert_eq!(pk.verify(scheme, hash, hashed, sig), want, "{what}");
        assert_eq!(
            pk.verify_local(scheme, hash, hashed, sig),
            want,
            "{what} local"
        );
        let mut bad = sig.to_vec();
        for i in [0, sig.len() / 2, sig.len() - 1] {
            bad[i] ^= 0x10;
            assert!(!pk.verify(scheme, hash, hashed, &bad), "{what} flipped {i}");
            assert!(
                !pk.verify_local(scheme, hash, hashed, &bad),
                "{what} local flipped {i}"
            );
            bad[i] ^= 0x10;
        }
        let mut other = hashed.to_vec();
        other[0] ^= 1;
        assert!(!pk.verify(scheme, hash, &other, sig), "{what} other digest");
        // Where aws-lc-rs answers, it refuses the flipped signature itself.
        if let Route::Aws(i) | Route::AwsThenLocal(i) = route(scheme, hash, pk.modulus_bits()) {
            bad[1] ^= 0x10;
            assert_eq!(
                pk.aws_verify(i, hash, hashed, &bad),
                Some(false),
                "{what} aws"
            );
        }
    }

    #[test]
    fn every_hash_scheme_and_salt_verifies_on_its_route() {
        let kp = keypair();
        let signer = Signer::new(&kp);
        let bits = signer.pk.modulus_bits();
        for hash in HashAlgorithm::ALL {
            let hashed = match hash.digest(b"model weights") {
                Some(d) => d.as_bytes().to_vec(),
                None => b"raw input signed as given".to_vec(),
            };
            let sig = signer.pkcs1v15(hash, &hashed);
            check(&signer, RsaScheme::Pkcs1v15, hash, &hashed, &sig, true);
            check(
                &signer,
                RsaScheme::Pss(SaltLength::Auto),
                hash,
                &hashed,
                &sig,
                false,
            );
            if hash == HashAlgorithm::None {
                continue;
            }
            let h_len = hash.output_len();
            let max = max_salt(bits, hash);
            for s_len in [h_len, max, 5] {
                let sig = signer.pss(hash, &hashed, s_len);
                let pss = RsaScheme::Pss;
                check(&signer, pss(SaltLength::Auto), hash, &hashed, &sig, true);
                check(
                    &signer,
                    pss(SaltLength::Exact(s_len)),
                    hash,
                    &hashed,
                    &sig,
                    true,
                );
                let is_hash = s_len == h_len;
                check(&signer, pss(SaltLength::Hash), hash, &hashed, &sig, is_hash);
                for other in [h_len, max, 5, s_len + 1] {
                    if other != s_len {
                        check(
                            &signer,
                            pss(SaltLength::Exact(other)),
                            hash,
                            &hashed,
                            &sig,
                            false,
                        );
                    }
                }
                check(&signer, RsaScheme::Pkcs1v15, hash, &hashed, &sig, false);
                // The Vault default (largest salt, verified with auto) is accepted by
                // aws-lc-rs alone.
                if let Route::AwsThenLocal(i) = route(pss(SaltLength::Auto), hash, bits) {
                    let want = s_len == max;
                    assert_eq!(
                        signer.pk.aws_verify(i, hash, &hashed, &sig),
                        Some(want),
                        "{hash:?} salt {s_len}"
                    );
                }
            }
        }
    }

    #[test]
    fn montgomery_power_matches_num_bigint() {
        let mut bytes = vec![0u8; 8 * 64];
        for limbs in [1usize, 2, 3, 5, 32, 33, 48, 64] {
            for round in 0..6 {
                aws_lc_rs::rand::fill(&mut bytes).unwrap();
                let b = &mut bytes[..8 * limbs];
                b[b.len() - 1] |= 1;
                // Alternate full-width moduli with ones whose top limb is short.
                if round % 2 == 1 {
                    b[0] = 0;
                    b[1] &= 0x0f;
                }
                let n = BigUint::from_bytes_be(b);
                let monty = Monty::new(&n).unwrap();
                for e in [3u64, 65537, u64::from(u32::MAX), 0xffff_ffff_ffff_ffff] {
                    let e = BigUint::from(e);
                    let mut sb = vec![0u8; 8 * limbs + 8];
                    aws_lc_rs::rand::fill(&mut sb).unwrap();
                    let s = BigUint::from_bytes_be(&sb) % &n;
                    let mut limbs_s = s.to_u64_digits();
                    limbs_s.resize(monty.n.len(), 0);
                    let got = monty.pow(&limbs_s, &e);
                    let want = s.modpow(&e, &n);
                    assert_eq!(
                        BigUint::from_slice(&u64s_to_u32s(&got)),
                        want,
                        "{limbs} limbs"
                    );
                }
                // n - 1 and 0 (the extremes of s) too.
                let mut top = (&n - 1u8).to_u64_digits();
                top.resize(monty.n.len(), 0);
                let e = BigUint::from(65537u32);
                let got = monty.pow(&top, &e);
                assert_eq!(
                    BigUint::from_slice(&u64s_to_u32s(&got)),
                    (&n - 1u8).modpow(&e, &n)
                );
                let zero = vec![0u64; monty.n.len()];
                assert!(monty.pow(&zero, &e).iter().all(|&x| x == 0));
            }
        }
        // Even moduli and 1 have no Montgomery form.
        assert!(Monty::new(&BigUint::from(10u8)).is_none());
        assert!(Monty::new(&BigUint::from(1u8)).is_none());
        assert!(Monty::new(&BigUint::from(0u8)).is_none());
    }

    fn u64s_to_u32s(x: &[u64]) -> Vec<u32> {
        x.iter()
            .flat_map(|&l| [l as u32, (l >> 32) as u32])
            .collect()
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
