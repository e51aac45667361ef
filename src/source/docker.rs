//! Docker's json-file format: `{"log":"…\n","stream":"stdout","time":"…"}`. A `log` without
//! its trailing `\n` is a chunk of a longer line (Docker splits at 16 KiB).

use super::format::RuntimeLine;
use crate::event::Stream;
use bytes::Bytes;
use serde::Deserialize;
use std::borrow::Cow;

#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    log: Cow<'a, str>,
    #[serde(borrow)]
    stream: Cow<'a, str>,
    #[serde(borrow)]
    time: Cow<'a, str>,
}

/// Parses one json-file line; `None` when it is not one.
pub fn parse(line: &Bytes) -> Option<RuntimeLine> {
    if line.first() != Some(&b'{') {
        return None;
    }
    let rec: Record = serde_json::from_slice(line).ok()?;
    let stream = Stream::parse(rec.stream.as_bytes())?;
    if !crate::time::is_rfc3339(rec.time.as_bytes()) {
        return None;
    }
    let (content, partial) = match rec.log.strip_suffix('\n') {
        Some(c) => (c, false),
        None => (&rec.log[..], true),
    };
    Some(RuntimeLine {
        timestamp: Bytes::copy_from_slice(rec.time.as_bytes()),
        stream,
        partial,
        content: Bytes::copy_from_slice(content.as_bytes()),
    })
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

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut line = b"{".to_vec();
            line.extend(data);
            let _ = parse(&Bytes::from(line));
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
