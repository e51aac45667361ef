//! Docker's json-file format: `{"log":"…\n","stream":"stdout","time":"…"}`. A `log` without
//! its trailing `\n` is a chunk of a longer line (Docker splits at 16 KiB).
//!
//! The records Docker writes have one shape, so a hand-written scanner reads them and
//! slices `log` and `time` out of the line without copying. Anything it does not expect
//! (`attrs`, `\u` escapes, odd keys) goes to serde_json, which has the last word.

use super::line::RuntimeLine;
use crate::event::Stream;
use bytes::Bytes;
use serde::Deserialize;
use std::borrow::Cow;
use std::ops::Range;

/// Parses one json-file line; `None` when it is not one.
pub fn parse(line: &Bytes) -> Option<RuntimeLine> {
    if line.first() != Some(&b'{') {
        return None;
    }
    scan(line).or_else(|| parse_with_serde(line))
}

#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    log: Cow<'a, str>,
    #[serde(borrow)]
    stream: Cow<'a, str>,
    #[serde(borrow)]
    time: Cow<'a, str>,
}

fn parse_with_serde(line: &Bytes) -> Option<RuntimeLine> {
    let rec: Record = serde_json::from_slice(line).ok()?;
    let (content, partial) = match rec.log.strip_suffix('\n') {
        Some(c) => (c, false),
        None => (&rec.log[..], true),
    };
    runtime_line(
        Bytes::copy_from_slice(rec.time.as_bytes()),
        rec.stream.as_bytes(),
        partial,
        Bytes::copy_from_slice(content.as_bytes()),
    )
}

fn runtime_line(
    timestamp: Bytes,
    stream: &[u8],
    partial: bool,
    content: Bytes,
) -> Option<RuntimeLine> {
    let stream = Stream::parse(stream)?;
    if !crate::time::is_rfc3339(&timestamp) {
        return None;
    }
    Some(RuntimeLine {
        timestamp,
        stream,
        partial,
        content,
    })
}

/// A JSON string's body in the line, and whether it holds escapes.
struct Str {
    body: Range<usize>,
    escaped: bool,
}

/// The fast path: `None` for anything but the plain three-key record.
fn scan(line: &Bytes) -> Option<RuntimeLine> {
    let b = &line[..];
    if b.first() != Some(&b'{') {
        return None;
    }
    let mut i = skip_ws(b, 1);
    let (mut log, mut stream, mut time) = (None, None, None);
    loop {
        let key = string(b, i)?;
        if key.escaped {
            return None;
        }
        i = skip_ws(b, key.body.end + 1);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let value = string(b, i)?;
        i = skip_ws(b, value.body.end + 1);
        let slot = match &b[key.body] {
            b"log" => &mut log,
            b"stream" => &mut stream,
            b"time" => &mut time,
            _ => return None,
        };
        if slot.replace(value).is_some() {
            return None;
        }
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => break,
            _ => return None,
        }
    }
    if skip_ws(b, i + 1) != b.len() {
        return None;
    }
    let (log, stream, time) = (log?, stream?, time?);
    if stream.escaped || time.escaped {
        return None;
    }
    let body = &b[log.body.clone()];
    let (content, partial) = if !log.escaped {
        (line.slice(log.body), true)
    } else if body.ends_with(b"\\n") && memchr::memchr(b'\\', &body[..body.len() - 2]).is_none() {
        (line.slice(log.body.start..log.body.end - 2), false)
    } else {
        let mut text = unescape(body)?;
        let partial = text.pop_if(|c| *c == b'\n').is_none();
        (Bytes::from(text), partial)
    };
    std::str::from_utf8(&content).ok()?;
    runtime_line(line.slice(time.body), &b[stream.body], partial, content)
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// The string starting at `b[i]` (its opening quote), if well formed.
fn string(b: &[u8], i: usize) -> Option<Str> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let start = i + 1;
    let mut j = start;
    let mut escaped = false;
    loop {
        j += memchr::memchr2(b'"', b'\\', b.get(j..)?)?;
        if b[j] == b'"' {
            // Raw control characters are not allowed in JSON strings.
            // Folded without an early exit so that it vectorises.
            if b[start..j]
                .iter()
                .fold(false, |found, &c| found | (c < 0x20))
            {
                return None;
            }
            return Some(Str {
                body: start..j,
                escaped,
            });
        }
        escaped = true;
        j += 2;
    }
}

/// Undoes the short escapes; `\u` is left to serde_json (surrogate pairs).
fn unescape(body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    let mut rest = body;
    while let Some(k) = memchr::memchr(b'\\', rest) {
        out.extend_from_slice(&rest[..k]);
        out.push(match *rest.get(k + 1)? {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            _ => return None,
        });
        rest = &rest[k + 2..];
    }
    out.extend_from_slice(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Option<RuntimeLine> {
        parse(&Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn parses_a_line() {
        let l = p(r#"{"log":"hello \"world\"\n","stream":"stderr","time":"2019-01-01T11:11:11.111111111Z"}"#)
            .unwrap();
        assert_eq!(&l.content[..], b"hello \"world\"");
        assert_eq!(l.stream, Stream::Stderr);
        assert!(!l.partial);
        assert_eq!(&l.timestamp[..], b"2019-01-01T11:11:11.111111111Z");
    }

    #[test]
    fn no_trailing_newline_is_partial() {
        let l = p(
            r#"{"log":"chunk","stream":"stdout","time":"2019-01-01T11:11:11Z","attrs":{"a":"b"}}"#,
        )
        .unwrap();
        assert!(l.partial);
        assert_eq!(&l.content[..], b"chunk");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "{",
            "{}",
            r#"{"log":"x\n","stream":"stdin","time":"2019-01-01T11:11:11Z"}"#,
            r#"{"log":"x\n","stream":"stdout","time":"yesterday"}"#,
            r#"{"log":1,"stream":"stdout","time":"2019-01-01T11:11:11Z"}"#,
            "2016-10-06T00:17:09Z stdout F x",
        ] {
            assert!(p(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn plain_records_are_sliced_not_copied() {
        let line = Bytes::from_static(
            br#"{"log":"GET /healthz 200\n","stream":"stdout","time":"2019-01-01T11:11:11Z"}"#,
        );
        let l = parse(&line).unwrap();
        assert_eq!(&l.content[..], b"GET /healthz 200");
        let within = |p: *const u8| line.as_ptr_range().contains(&p);
        assert!(within(l.content.as_ptr()) && within(l.timestamp.as_ptr()));
    }

    #[test]
    fn fast_path_leaves_the_unusual_to_serde() {
        let cases = [
            // attrs, a \u escape, keys in another order, spaces: serde's answer stands.
            (
                r#"{"log":"a\n","stream":"stdout","attrs":{"k":"v"},"time":"2019-01-01T11:11:11Z"}"#,
                Some("a"),
            ),
            (
                r#"{"log":"caf\u00e9 \ud83d\ude00\n","stream":"stdout","time":"2019-01-01T11:11:11Z"}"#,
                Some("café 😀"),
            ),
            (
                r#"{ "time":"2019-01-01T11:11:11Z", "stream" : "stderr","log":"x\ty\\n"} "#,
                Some("x\ty\\n"),
            ),
            (
                r#"{"log":"a\n","stream":"stdout","time":"2019-01-01T11:11:11Z","log":"b\n"}"#,
                None,
            ),
            (
                r#"{"log":"a\q\n","stream":"stdout","time":"2019-01-01T11:11:11Z"}"#,
                None,
            ),
            (
                r#"{"log":"a\n","stream":"stdout","time":"2019-01-01T11:11:11Z"} x"#,
                None,
            ),
            (r#"{"log":"a\n","stream":"stdout"}"#, None),
        ];
        for (line, want) in cases {
            let got = p(line).map(|l| String::from_utf8(l.content.to_vec()).unwrap());
            assert_eq!(got.as_deref(), want, "{line}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut line = b"{".to_vec();
            line.extend(data);
            let _ = parse(&Bytes::from(line));
        }

        /// The scanner's answer, when it gives one, is serde_json's.
        #[test]
        fn scanner_agrees_with_serde(
            content in proptest::collection::vec(prop_oneof![
                Just("\\".to_string()), Just("\"".to_string()), Just("\n".to_string()),
                Just("\u{1}".to_string()), Just("é".to_string()), "[a-z ]{1,5}",
            ], 0..8),
            newline: bool, mangle in 0usize..60, with in proptest::sample::select(&b"\\\"nu{} :,"[..]),
        ) {
            let log = content.concat() + if newline { "\n" } else { "" };
            let mut line = serde_json::json!({"log": log, "stream": "stdout", "time": "2020-01-01T00:00:00Z"})
                .to_string().into_bytes();
            if mangle < line.len() {
                line[mangle] = with;
            }
            let line = Bytes::from(line);
            if let Some(fast) = scan(&line) {
                let slow = parse_with_serde(&line).expect("serde accepts what the scanner did");
                prop_assert_eq!(&fast.content[..], &slow.content[..]);
                prop_assert_eq!(fast.partial, slow.partial);
                prop_assert_eq!(&fast.timestamp[..], &slow.timestamp[..]);
            }
        }

        #[test]
        fn round_trips_content(content in "[^\n]{0,80}", partial: bool) {
            let log = if partial { content.clone() } else { format!("{content}\n") };
            let line = serde_json::json!({"log": log, "stream": "stdout", "time": "2020-01-01T00:00:00Z"}).to_string();
            let l = parse(&Bytes::from(line)).unwrap();
            prop_assert_eq!(&l.content[..], content.as_bytes());
            prop_assert_eq!(l.partial, partial);
        }
    }
}
