//! JSON string escaping straight into an output buffer, copying unescaped runs whole.

const NO: u8 = 0;
const U: u8 = b'u';

/// For each byte: 0 if it needs no escape, else the letter after the backslash.
static ESCAPE: [u8; 256] = {
    let mut t = [NO; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = U;
        i += 1;
    }
    t[b'\n' as usize] = b'n';
    t[b'\r' as usize] = b'r';
    t[b'\t' as usize] = b't';
    t[0x08] = b'b';
    t[0x0c] = b'f';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// Writes `s` as a quoted JSON string.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let e = ESCAPE[c as usize];
        if e == NO {
            continue;
        }
        out.extend_from_slice(&b[start..i]);
        if e == U {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(c >> 4) as usize],
                HEX[(c & 0xf) as usize],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', e]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

/// Writes bytes as a JSON string; invalid UTF-8 is replaced with U+FFFD. Returns false
/// when that happened.
pub fn write_bytes(out: &mut Vec<u8>, b: &[u8]) -> bool {
    match std::str::from_utf8(b) {
        Ok(s) => {
            write_str(out, s);
            true
        }
        Err(_) => {
            write_str(out, &String::from_utf8_lossy(b));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn escapes_specials() {
        let mut out = Vec::new();
        write_str(&mut out, "a\"b\\c\nd\te\u{1}f\u{7f}é");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"a\\\"b\\\\c\\nd\\te\\u0001f\u{7f}é\""
        );
    }

    #[test]
    fn replaces_invalid_utf8() {
        let mut out = Vec::new();
        assert!(!write_bytes(&mut out, b"ok \xff\xfe end"));
        let s: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(s, "ok \u{fffd}\u{fffd} end");
    }

    proptest! {
        #[test]
        fn serde_reads_back_what_we_write(s in any::<String>()) {
            let mut out = Vec::new();
            write_str(&mut out, &s);
            let back: String = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(back, s);
        }

        #[test]
        fn any_bytes_give_valid_json(b in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mut out = Vec::new();
            let valid = write_bytes(&mut out, &b);
            let back: String = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(valid, std::str::from_utf8(&b).is_ok());
            prop_assert_eq!(back, String::from_utf8_lossy(&b).into_owned());
        }
    }
}
