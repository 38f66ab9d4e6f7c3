//! Lossless text encoding of byte strings (paths, argv) for the event contract.
//!
//! Linux paths are bytes: they may hold newlines or bytes that are not UTF-8. The JSON
//! contract stores them as strings with one reversible rule:
//! - a backslash is written `\\`;
//! - a byte that is not part of valid UTF-8 is written `\xNN` (two lowercase hex digits);
//! - everything else, newlines and other control characters included, is kept as is
//!   (JSON then escapes control characters on the wire).
//!
//! [`decode`] inverts [`encode`] exactly. [`for_terminal`] additionally makes control
//! characters visible, for the human output only.
//!
//! The same text is the contract with the approval service: the byte-string fields of a
//! request (path, cwd, argv, comm) are accepted there exactly when [`is_encoded`] holds
//! (what `encode` produces for NUL-free bytes), within the length limits of
//! `approver::wire`; [`encode_bounded`] cuts an encoding to such a limit without splitting
//! an escape.
use std::fmt::Write as _;

/// Encode bytes as described in the module documentation.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        // Copied in runs between backslashes (paths rarely hold any), not char by char:
        // every event encodes several paths.
        let mut valid = chunk.valid();
        while let Some(i) = valid.find('\\') {
            out.push_str(&valid[..i]);
            out.push_str("\\\\");
            valid = &valid[i + 1..];
        }
        out.push_str(valid);
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// Inverse of [`encode`]. Returns `None` for text that `encode` cannot have produced.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    if !text.contains('\\') {
        // Nothing escaped (the common case): the text's own bytes.
        return Some(text.as_bytes().to_vec());
    }
    let mut out = Vec::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        match bytes.get(i + 1)? {
            b'\\' => {
                out.push(b'\\');
                i += 2;
            }
            b'x' => {
                let hex = text.get(i + 2..i + 4)?;
                if !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 4;
            }
            _ => return None,
        }
    }
    // Only what `encode` produces: `\x41` (a byte that is valid UTF-8, which `encode`
    // never escapes) is refused, so every text has one decoding and one encoding.
    if encode(&out) != text {
        return None;
    }
    Some(out)
}

/// Whether `text` is exactly what [`encode`] produces for some bytes without NUL (paths
/// and argv entries never hold one): every backslash starts `\\` or `\xNN`, and `\xNN`
/// stands for a byte that is not valid UTF-8 where it is.
pub fn is_encoded(text: &str) -> bool {
    if text.contains('\0') {
        return false;
    }
    if !text.contains('\\') {
        return true;
    }
    decode(text).is_some_and(|raw| encode(&raw) == text)
}

/// The longest prefix of the encoding of `bytes` that is at most `max` bytes long and ends
/// between two escapes (so that it is itself an encoding), and whether it was cut.
pub fn encode_bounded(bytes: &[u8], max: usize) -> (String, bool) {
    let full = encode(bytes);
    if full.len() <= max {
        return (full, false);
    }
    let mut end = 0;
    let mut rest = full.as_str();
    while let Some(c) = rest.chars().next() {
        let token = match (c, rest.as_bytes().get(1)) {
            ('\\', Some(b'x')) => 4,
            ('\\', _) => 2,
            (c, _) => c.len_utf8(),
        };
        if end + token > max {
            break;
        }
        end += token;
        rest = &rest[token..];
    }
    let mut full = full;
    full.truncate(end);
    (full, true)
}

/// Text safe to print on a terminal: [`encode`] plus `\n`, `\t`, `\r` and `\u{..}` for
/// other control characters, so a hostile file name cannot forge output lines.
pub fn for_terminal(bytes: &[u8]) -> String {
    let encoded = encode(bytes);
    let mut out = String::with_capacity(encoded.len());
    for c in encoded.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_refuses_text_encode_never_produces() {
        assert_eq!(decode("a\\x+f"), None);
        assert_eq!(decode("a\\x41"), None);
        assert_eq!(decode("a\\xFF"), None);
        assert_eq!(decode("a\\xff").as_deref(), Some(&b"a\xff"[..]));
    }

    #[test]
    fn plain_utf8_is_unchanged() {
        assert_eq!(
            encode("/etc/nginx/nginx.conf".as_bytes()),
            "/etc/nginx/nginx.conf"
        );
        assert_eq!(
            encode("/srv/app/ünïcode.env".as_bytes()),
            "/srv/app/ünïcode.env"
        );
    }

    #[test]
    fn invalid_bytes_and_backslashes_are_escaped() {
        let raw = b"/tmp/a\xff\\b\nc";
        let enc = encode(raw);
        assert_eq!(enc, "/tmp/a\\xff\\\\b\nc");
        assert_eq!(decode(&enc).as_deref(), Some(&raw[..]));
    }

    #[test]
    fn round_trip_all_bytes() {
        let raw: Vec<u8> = (0..=255u8).chain([0xe2, 0x82, 0xac, 0xe2, 0x82]).collect();
        assert_eq!(decode(&encode(&raw)), Some(raw));
    }

    #[test]
    fn literal_backslash_x_is_not_confused_with_an_escape() {
        let raw = b"C:\\x41";
        let enc = encode(raw);
        assert_eq!(enc, "C:\\\\x41");
        assert_eq!(decode(&enc).as_deref(), Some(&raw[..]));
    }

    #[test]
    fn backslash_runs_and_edges() {
        for (raw, enc) in [
            (&b"\\"[..], r"\\"),
            (b"\\\\", r"\\\\"),
            (b"\\a\\", r"\\a\\"),
            (b"a\\\\b\xc3\\", r"a\\\\b\xc3\\"),
            (b"\xff\\", r"\xff\\"),
            (b"", ""),
        ] {
            assert_eq!(encode(raw), enc, "{raw:?}");
            assert_eq!(decode(enc).as_deref(), Some(raw));
        }
    }

    #[test]
    fn decode_rejects_malformed() {
        assert_eq!(decode("\\q"), None);
        assert_eq!(decode("\\x4"), None);
        assert_eq!(decode("trailing\\"), None);
    }

    #[test]
    fn is_encoded_accepts_exactly_what_encode_produces() {
        for raw in [
            &b"/etc/a\nb\x1b[31m"[..],
            b"/tmp/\xff\xfe\\x41\\",
            b"\xe2\x82",
            b"plain",
            b"",
        ] {
            assert!(is_encoded(&encode(raw)), "{raw:?}");
        }
        // Escapes encode never writes: a lone backslash, \x of a valid byte, upper case,
        // and NUL (no path or argv entry holds one).
        for text in ["a\\b", "\\x41", "\\xFF", "tail\\", "\\x4", "a\0b"] {
            assert!(!is_encoded(text), "{text:?}");
        }
    }

    #[test]
    fn bounded_encoding_never_splits_an_escape() {
        let raw = b"ab\xff\\c\xe2\x82\xacd";
        let full = encode(raw);
        for max in 0..=full.len() + 1 {
            let (cut, was_cut) = encode_bounded(raw, max);
            assert!(cut.len() <= max, "{max}: {cut:?}");
            assert!(is_encoded(&cut), "{max}: {cut:?}");
            assert!(full.starts_with(&cut));
            assert_eq!(was_cut, full.len() > max);
        }
        assert_eq!(encode_bounded(raw, 5).0, "ab");
        assert_eq!(encode_bounded(raw, 6).0, "ab\\xff");
    }

    #[test]
    fn terminal_form_hides_control_characters() {
        assert_eq!(for_terminal(b"a\nb\x1b[31m"), "a\\nb\\u{1b}[31m");
    }
}
