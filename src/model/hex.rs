//! Lowercase hex, as digests and public-key hints are written in OMS bundles.

/// Lowercase hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Bytes from an even number of hex digits (either case); `None` otherwise.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    s.chunks(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// A 32-byte digest from 64 hex digits (either case); `None` otherwise.
pub fn decode32(s: &str) -> Option<[u8; 32]> {
    decode(s)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let d: [u8; 32] = core::array::from_fn(|i| (i * 37) as u8);
        assert_eq!(super::decode32(&super::encode(&d)), Some(d));
        assert_eq!(super::decode32(&super::encode(&d).to_uppercase()), Some(d));
        assert_eq!(super::decode32("zz"), None);
        assert_eq!(super::decode32(&"g".repeat(64)), None);
        assert_eq!(super::decode32(&"a".repeat(62)), None);
        assert_eq!(super::decode("0aF"), None);
        assert_eq!(super::decode("0aFf"), Some(vec![0x0a, 0xff]));
    }
}
