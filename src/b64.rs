//! Base64 decoded exactly as Vault (Go's `encoding/base64`, non-strict) decodes it.
//!
//! Vault's answer to a malformed input or signature names the byte where Go's decoder
//! stopped (`illegal base64 data at input byte N`), Go skips CR and LF anywhere, and it
//! accepts non-zero trailing bits. Callers compare answers, so this follows Go's
//! `decodeQuantum` rule for rule rather than using a stricter decoder's errors.

/// Which of Go's encodings: `StdEncoding` (padded) or `RawURLEncoding` (JWS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Standard,
    RawUrl,
}

fn sextet(c: u8, enc: Encoding) -> Option<u8> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' if enc == Encoding::Standard => 62,
        b'/' if enc == Encoding::Standard => 63,
        b'-' if enc == Encoding::RawUrl => 62,
        b'_' if enc == Encoding::RawUrl => 63,
        _ => return None,
    })
}

fn is_newline(c: u8) -> bool {
    c == b'\n' || c == b'\r'
}

/// Decodes `s`; on failure returns Go's offset of the offending byte.
pub fn decode(s: &str, enc: Encoding) -> Result<Vec<u8>, usize> {
    let s = s.as_bytes();
    let padded = enc == Encoding::Standard;
    let mut out = Vec::with_capacity(s.len() / 4 * 3 + 3);
    let mut si = 0;
    loop {
        let mut q = [0u8; 4];
        let mut j = 0;
        let mut dlen = 4;
        while j < 4 {
            if si == s.len() {
                if j == 0 {
                    return Ok(out);
                }
                if j == 1 || padded {
                    return Err(si - j);
                }
                dlen = j;
                break;
            }
            let c = s[si];
            si += 1;
            if let Some(v) = sextet(c, enc) {
                q[j] = v;
                j += 1;
                continue;
            }
            if is_newline(c) {
                continue;
            }
            if c != b'=' || !padded || j < 2 {
                return Err(si - 1);
            }
            // Padding: "xx==" or "xxx=", then only newlines may follow.
            if j == 2 {
                while si < s.len() && is_newline(s[si]) {
                    si += 1;
                }
                if si == s.len() {
                    return Err(s.len());
                }
                if s[si] != b'=' {
                    return Err(si - 1);
                }
                si += 1;
            }
            while si < s.len() && is_newline(s[si]) {
                si += 1;
            }
            if si < s.len() {
                return Err(si);
            }
            dlen = j;
            break;
        }
        let v = (u32::from(q[0]) << 18)
            | (u32::from(q[1]) << 12)
            | (u32::from(q[2]) << 6)
            | u32::from(q[3]);
        let bytes = v.to_be_bytes();
        out.extend_from_slice(&bytes[1..dlen]);
        if dlen < 4 {
            return Ok(out);
        }
    }
}

/// Go's error text for a failed decode.
pub fn error_text(at: usize) -> String {
    format!("illegal base64 data at input byte {at}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use Encoding::*;

    #[test]
    fn decodes_like_go() {
        assert_eq!(decode("", Standard).unwrap(), b"");
        assert_eq!(decode("aGVsbG8=", Standard).unwrap(), b"hello");
        assert_eq!(decode("aGVsbG9=", Standard).unwrap(), b"hello"); // trailing bits
        assert_eq!(decode("aGVs\nbG8=\r\n", Standard).unwrap(), b"hello");
        assert_eq!(decode("aGk", RawUrl).unwrap(), b"hi");
        assert_eq!(decode("_-8", RawUrl).unwrap(), [0xff, 0xef]);
    }

    #[test]
    fn error_offsets_match_openbao() {
        // Offsets observed on OpenBao 2.7.2 for these inputs.
        for (input, at) in [
            (" aGVsbG8=", 0),
            ("1", 0),
            ("0.0", 1),
            ("aGVsbG8", 4),
            ("1e3", 0),
            ("aGVsbA", 4),
            ("a===", 1),
            ("aG=sbG8=", 2),
            ("aGVsbA=", 7),
            ("aGVsbA=x", 6),
            ("aGVsbG8==", 8),
            ("aGVsbG8=x", 8),
            ("aGVsbG8=aGVs", 8),
            ("!!!", 0),
        ] {
            assert_eq!(decode(input, Standard), Err(at), "{input:?}");
        }
        assert_eq!(decode("AAAAA", RawUrl), Err(4));
        assert_eq!(decode("AA==", RawUrl), Err(2));
    }
}
