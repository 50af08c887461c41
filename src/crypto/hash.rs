//! Transit's hash algorithms: names as Vault spells them, and the digests themselves.

use aws_lc_rs::digest;

/// The hash algorithms Transit accepts in `hash_algorithm` (and the path segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlgorithm {
    Sha1,
    Sha2_224,
    Sha2_256,
    Sha2_384,
    Sha2_512,
    Sha3_224,
    Sha3_256,
    Sha3_384,
    Sha3_512,
    /// No hash: only with `prehashed` and RSA PKCS#1 v1.5, the input is signed as given.
    None,
}

/// A digest up to 64 bytes, kept on the stack.
#[derive(Clone, Copy)]
pub struct Digest {
    buf: [u8; 64],
    len: usize,
}

impl Digest {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn from_slice(bytes: &[u8]) -> Self {
        let mut buf = [0u8; 64];
        buf[..bytes.len()].copy_from_slice(bytes);
        Digest {
            buf,
            len: bytes.len(),
        }
    }
}

impl HashAlgorithm {
    /// Every algorithm with its Transit name, in the order Vault documents them.
    pub const ALL: [HashAlgorithm; 10] = [
        HashAlgorithm::Sha1,
        HashAlgorithm::Sha2_224,
        HashAlgorithm::Sha2_256,
        HashAlgorithm::Sha2_384,
        HashAlgorithm::Sha2_512,
        HashAlgorithm::Sha3_224,
        HashAlgorithm::Sha3_256,
        HashAlgorithm::Sha3_384,
        HashAlgorithm::Sha3_512,
        HashAlgorithm::None,
    ];

    /// Parses a Transit hash name (`sha2-256`, ...). Returns `None` for unknown names.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            HashAlgorithm::Sha1 => "sha1",
            HashAlgorithm::Sha2_224 => "sha2-224",
            HashAlgorithm::Sha2_256 => "sha2-256",
            HashAlgorithm::Sha2_384 => "sha2-384",
            HashAlgorithm::Sha2_512 => "sha2-512",
            HashAlgorithm::Sha3_224 => "sha3-224",
            HashAlgorithm::Sha3_256 => "sha3-256",
            HashAlgorithm::Sha3_384 => "sha3-384",
            HashAlgorithm::Sha3_512 => "sha3-512",
            HashAlgorithm::None => "none",
        }
    }

    /// Output length in bytes (0 for `none`).
    pub fn output_len(self) -> usize {
        match self {
            HashAlgorithm::Sha1 => 20,
            HashAlgorithm::Sha2_224 | HashAlgorithm::Sha3_224 => 28,
            HashAlgorithm::Sha2_256 | HashAlgorithm::Sha3_256 => 32,
            HashAlgorithm::Sha2_384 | HashAlgorithm::Sha3_384 => 48,
            HashAlgorithm::Sha2_512 | HashAlgorithm::Sha3_512 => 64,
            HashAlgorithm::None => 0,
        }
    }

    /// Hashes `parts` concatenated. `None` is not a hash and yields `None`.
    pub fn digest_parts(self, parts: &[&[u8]]) -> Option<Digest> {
        fn lc(alg: &'static digest::Algorithm, parts: &[&[u8]]) -> Digest {
            let mut ctx = digest::Context::new(alg);
            for p in parts {
                ctx.update(p);
            }
            Digest::from_slice(ctx.finish().as_ref())
        }
        fn s3<D: sha3::Digest>(parts: &[&[u8]]) -> Digest {
            let mut h = D::new();
            for p in parts {
                h.update(p);
            }
            Digest::from_slice(&h.finalize())
        }
        Some(match self {
            HashAlgorithm::Sha1 => lc(&digest::SHA1_FOR_LEGACY_USE_ONLY, parts),
            HashAlgorithm::Sha2_224 => lc(&digest::SHA224, parts),
            HashAlgorithm::Sha2_256 => lc(&digest::SHA256, parts),
            HashAlgorithm::Sha2_384 => lc(&digest::SHA384, parts),
            HashAlgorithm::Sha2_512 => lc(&digest::SHA512, parts),
            HashAlgorithm::Sha3_224 => s3::<sha3::Sha3_224>(parts),
            HashAlgorithm::Sha3_256 => s3::<sha3::Sha3_256>(parts),
            HashAlgorithm::Sha3_384 => s3::<sha3::Sha3_384>(parts),
            HashAlgorithm::Sha3_512 => s3::<sha3::Sha3_512>(parts),
            HashAlgorithm::None => return None,
        })
    }

    pub fn digest(self, data: &[u8]) -> Option<Digest> {
        self.digest_parts(&[data])
    }

    /// DER DigestInfo prefix for RSA PKCS#1 v1.5 (RFC 8017 9.2 note 1), empty for `none`.
    pub fn digest_info_prefix(self) -> Vec<u8> {
        // id-sha1 is the odd one out; the SHA-2 and SHA-3 family share the NIST arc
        // 2.16.840.1.101.3.4.2.X.
        let nist_arc = match self {
            HashAlgorithm::None => return Vec::new(),
            HashAlgorithm::Sha1 => {
                return vec![
                    0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00,
                    0x04, 0x14,
                ]
            }
            HashAlgorithm::Sha2_256 => 1,
            HashAlgorithm::Sha2_384 => 2,
            HashAlgorithm::Sha2_512 => 3,
            HashAlgorithm::Sha2_224 => 4,
            HashAlgorithm::Sha3_224 => 7,
            HashAlgorithm::Sha3_256 => 8,
            HashAlgorithm::Sha3_384 => 9,
            HashAlgorithm::Sha3_512 => 10,
        };
        let hlen = self.output_len() as u8;
        vec![
            0x30,
            0x11 + hlen,
            0x30,
            0x0d,
            0x06,
            0x09,
            0x60,
            0x86,
            0x48,
            0x01,
            0x65,
            0x03,
            0x04,
            0x02,
            nist_arc,
            0x05,
            0x00,
            0x04,
            hlen,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for h in HashAlgorithm::ALL {
            assert_eq!(HashAlgorithm::from_name(h.name()), Some(h));
        }
        assert_eq!(HashAlgorithm::from_name("md5"), None);
        assert_eq!(HashAlgorithm::from_name("SHA2-256"), None);
    }

    #[test]
    fn digests_have_their_lengths_and_known_values() {
        for h in HashAlgorithm::ALL {
            match h.digest(b"abc") {
                Some(d) => assert_eq!(d.as_bytes().len(), h.output_len(), "{}", h.name()),
                None => assert_eq!(h, HashAlgorithm::None),
            }
        }
        // FIPS 180-2 and FIPS 202 test vectors for "abc".
        let hex = |d: Digest| {
            d.as_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        assert_eq!(
            hex(HashAlgorithm::Sha2_256.digest(b"abc").unwrap()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(HashAlgorithm::Sha3_224.digest(b"abc").unwrap()),
            "e642824c3f8cf24ad09234ee7d3c766fc9a3a5168d0c94ad73b46fdf"
        );
        assert_eq!(
            hex(HashAlgorithm::Sha2_256
                .digest_parts(&[b"a", b"", b"bc"])
                .unwrap()),
            hex(HashAlgorithm::Sha2_256.digest(b"abc").unwrap())
        );
    }

    #[test]
    fn digest_info_prefixes_are_well_formed_der() {
        for h in HashAlgorithm::ALL {
            let p = h.digest_info_prefix();
            if h == HashAlgorithm::None {
                assert!(p.is_empty());
                continue;
            }
            // Outer SEQUENCE length covers the rest of the prefix plus the digest.
            assert_eq!(p[0], 0x30);
            assert_eq!(p[1] as usize, p.len() - 2 + h.output_len());
            assert_eq!(p[p.len() - 1] as usize, h.output_len());
        }
        // SHA-256's prefix as printed in RFC 8017.
        assert_eq!(
            HashAlgorithm::Sha2_256.digest_info_prefix(),
            [
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20
            ]
        );
    }
}
