//! logfmt messages (`time="…" level=warn msg="…" duration=932ms`, as many Go services
//! write): a line made only of `key=value` and `key="quoted value"` pairs. A line with
//! anything else in it (a word without `=`, an unterminated quote) stays text.

use super::ecs_fields::{EcsValues, FieldKeys, Raw, LEVEL_KEYS, MESSAGE_KEYS};
use std::borrow::Cow;

/// What a logfmt line gives.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub level: Option<Cow<'a, str>>,
    pub message: Option<Cow<'a, str>>,
    pub ecs: EcsValues<'a>,
    /// The pairs in line order, a repeated key kept once (its first value).
    pub pairs: Vec<(&'a str, Cow<'a, str>)>,
}

/// Returns the pairs and lifted fields when `text` is logfmt, `None` otherwise. At least
/// two pairs: `x=1` alone is more often prose than a record.
pub fn parse<'a>(text: &'a [u8], keys: &FieldKeys) -> Option<Parsed<'a>> {
    // Most lines with a `=` are prose, refused at their first word: before any UTF-8 check.
    if !starts_with_a_pair(text) {
        return None;
    }
    let text = std::str::from_utf8(text).ok()?;
    let pairs = pairs(text)?;
    if pairs.len() < 2 {
        return None;
    }
    let mut level = None;
    let mut message = None;
    let mut ecs = EcsValues::default();
    let mut kept: Vec<(&str, Cow<str>)> = Vec::with_capacity(pairs.len());
    for (key, value) in pairs {
        if kept.iter().any(|(k, _)| *k == key) {
            continue;
        }
        if level.is_none() && LEVEL_KEYS.contains(&key) {
            let l = value.trim();
            if !l.is_empty() {
                level = Some(Cow::Owned(l.to_ascii_lowercase()));
            }
        } else if message.is_none() && MESSAGE_KEYS.contains(&key) {
            message = Some(value.clone());
        } else if let Some(field) = keys.leaf(key) {
            ecs.take(field, Raw::Text(value.clone()));
        }
        kept.push((key, value));
    }
    Some(Parsed {
        level,
        message,
        ecs,
        pairs: kept,
    })
}

/// Whether the first word is `key=`.
fn starts_with_a_pair(b: &[u8]) -> bool {
    let start = b
        .iter()
        .position(|&c| c != b' ' && c != b'\t')
        .unwrap_or(b.len());
    let key = b[start..].iter().take_while(|&&c| is_key_byte(c)).count();
    key > 0 && b.get(start + key) == Some(&b'=')
}

/// A key: what identifiers, dotted paths and the usual separators are made of.
fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/' | b'@' | b':' | b'$')
}

fn pairs(text: &str) -> Option<Vec<(&str, Cow<'_, str>)>> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        if i == b.len() {
            return Some(out);
        }
        let start = i;
        while i < b.len() && is_key_byte(b[i]) {
            i += 1;
        }
        if i == start || i == b.len() || b[i] != b'=' {
            return None;
        }
        let key = &text[start..i];
        i += 1;
        if i < b.len() && b[i] == b'"' {
            let (value, end) = quoted(text, i + 1)?;
            out.push((key, value));
            i = end;
            if i < b.len() && b[i] != b' ' && b[i] != b'\t' {
                return None;
            }
        } else {
            let start = i;
            while i < b.len() && b[i] != b' ' && b[i] != b'\t' {
                if b[i] == b'"' {
                    return None;
                }
                i += 1;
            }
            out.push((key, Cow::Borrowed(&text[start..i])));
        }
    }
}

/// The value of a quoted string starting after its opening quote, and the offset after
/// its closing quote. Go's escapes (`strconv.Quote`) are read.
fn quoted(text: &str, from: usize) -> Option<(Cow<'_, str>, usize)> {
    let b = text.as_bytes();
    let mut i = from;
    while i < b.len() && b[i] != b'"' && b[i] != b'\\' {
        i += 1;
    }
    if i == b.len() {
        return None;
    }
    if b[i] == b'"' {
        return Some((Cow::Borrowed(&text[from..i]), i + 1));
    }
    let mut s = String::from(&text[from..i]);
    let mut chars = text[i..].char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Some((Cow::Owned(s), i + at + 1)),
            '\\' => {
                let (_, e) = chars.next()?;
                match e {
                    'n' => s.push('\n'),
                    't' => s.push('\t'),
                    'r' => s.push('\r'),
                    'u' => {
                        let hex: String = (0..4)
                            .filter_map(|_| chars.next().map(|(_, h)| h))
                            .collect();
                        let code = u32::from_str_radix(&hex, 16).ok()?;
                        s.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                    }
                    other => s.push(other),
                }
            }
            c => s.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FieldsConfig;
    use proptest::prelude::*;

    fn keys() -> FieldKeys {
        FieldKeys::new(&FieldsConfig::default())
    }

    #[test]
    fn reads_a_go_service_line() {
        let line = br#"time="2024-05-01T10:00:00Z" level=WARN msg="slow \"cart\" call" component=http method=GET path=/cart status_code=200 duration=932ms trace_id=abc123 user_id=u-7"#;
        let p = parse(line, &keys()).unwrap();
        assert_eq!(p.level.as_deref(), Some("warn"));
        assert_eq!(p.message.as_deref(), Some("slow \"cart\" call"));
        assert_eq!(p.ecs.duration_ns, Some(932_000_000));
        assert_eq!(p.ecs.status, Some(200));
        assert_eq!(p.ecs.method.as_deref(), Some("GET"));
        assert_eq!(p.ecs.path.as_deref(), Some("/cart"));
        assert_eq!(p.ecs.trace_id.as_deref(), Some("abc123"));
        assert_eq!(p.ecs.user_id.as_deref(), Some("u-7"));
        assert_eq!(p.pairs[0], ("time", Cow::Borrowed("2024-05-01T10:00:00Z")));
        assert_eq!(p.pairs.len(), 10);
    }

    #[test]
    fn a_line_only_partly_logfmt_stays_text() {
        for t in [
            &b"Starting server on port=8080 with workers=4"[..],
            b"count=5",
            b"a=1 b=\"unterminated",
            b"a=1 b=\"x\"y",
            b"a=1 =2",
            b"a=b\"c d=e",
            b"[INFO] a=1 b=2",
            b"",
            b"   ",
            b"a=1 b=2 \xff=3",
        ] {
            assert!(
                parse(t, &keys()).is_none(),
                "{}",
                String::from_utf8_lossy(t)
            );
        }
    }

    #[test]
    fn empty_values_escapes_and_repeats() {
        let p = parse(br#"a= b="x\ty\u00e9" a=2 msg="""#, &keys()).unwrap();
        assert_eq!(
            p.pairs,
            vec![
                ("a", Cow::Borrowed("")),
                ("b", Cow::Owned("x\tyé".into())),
                ("msg", Cow::Borrowed("")),
            ]
        );
        assert_eq!(p.message.as_deref(), Some(""));
    }

    #[test]
    fn a_wrong_type_is_flagged() {
        let p = parse(b"level=info status_code=ok duration=soon", &keys()).unwrap();
        assert!(p.ecs.mismatched);
        assert_eq!((p.ecs.status, p.ecs.duration_ns), (None, None));
    }

    proptest! {
        #[test]
        fn never_panics_and_keeps_unique_keys(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Some(p) = parse(&data, &keys()) {
                let mut seen = std::collections::HashSet::new();
                for (k, _) in &p.pairs {
                    prop_assert!(seen.insert(*k));
                    prop_assert!(!k.is_empty());
                }
            }
        }

        #[test]
        fn pairs_written_are_read_back(values in proptest::collection::vec("[ -~]{0,12}", 2..6)) {
            let line: Vec<String> = values
                .iter()
                .enumerate()
                .map(|(i, v)| format!("k{i}={}", serde_json::to_string(v).unwrap()))
                .collect();
            let line = line.join(" ");
            let p = parse(line.as_bytes(), &keys()).unwrap();
            let got: Vec<String> = p.pairs.iter().map(|(_, v)| v.to_string()).collect();
            prop_assert_eq!(got, values);
        }
    }
}
