//! The CRI log format kubelet's runtimes write: `<RFC3339Nano> <stdout|stderr> <P|F> <content>`.
//! Pure and allocation-free: every field is a slice of the line.

use super::line::RuntimeLine;
use crate::event::Stream;
use bytes::Bytes;
use memchr::memchr;

/// Parses one CRI line (without its `\n`); `None` when it is not one.
pub fn parse(line: &Bytes) -> Option<RuntimeLine> {
    let b = &line[..];
    let sp1 = memchr(b' ', b)?;
    if !crate::time::is_rfc3339(&b[..sp1]) {
        return None;
    }
    let at_stream = sp1 + 1;
    let sp2 = at_stream + memchr(b' ', &b[at_stream..])?;
    let stream = Stream::parse(&b[at_stream..sp2])?;
    let at_tag = sp2 + 1;
    let (tag_end, content_start) = match memchr(b' ', &b[at_tag..]) {
        Some(i) => (at_tag + i, at_tag + i + 1),
        None => (b.len(), b.len()),
    };
    // The tag may carry more `:`-separated tags after P/F.
    let tag = &b[at_tag..tag_end];
    let first = tag.split(|&c| c == b':').next().unwrap_or_default();
    let partial = match first {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    Some(RuntimeLine {
        timestamp: line.slice(..sp1),
        stream,
        partial,
        content: line.slice(content_start..),
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
    fn parses_full_and_partial_lines() {
        let l = p("2016-10-06T00:17:09.669794202Z stdout F log content 1").unwrap();
        assert_eq!(&l.timestamp[..], b"2016-10-06T00:17:09.669794202Z");
        assert_eq!(l.stream, Stream::Stdout);
        assert!(!l.partial);
        assert_eq!(&l.content[..], b"log content 1");

        let l = p("2016-10-06T00:17:09.669794203Z stderr P part").unwrap();
        assert_eq!(l.stream, Stream::Stderr);
        assert!(l.partial);
        assert_eq!(&l.content[..], b"part");
    }

    #[test]
    fn keeps_content_spaces_and_empty_content() {
        let l = p("2016-10-06T00:17:09Z stdout F   indented  ").unwrap();
        assert_eq!(&l.content[..], b"  indented  ");
        let l = p("2016-10-06T00:17:09Z stdout F").unwrap();
        assert_eq!(&l.content[..], b"");
        let l = p("2016-10-06T00:17:09Z stdout F ").unwrap();
        assert_eq!(&l.content[..], b"");
    }

    #[test]
    fn accepts_extra_tags() {
        let l = p("2016-10-06T00:17:09Z stdout P:x:y chunk").unwrap();
        assert!(l.partial);
        assert_eq!(&l.content[..], b"chunk");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "hello",
            "2016-10-06T00:17:09Z",
            "2016-10-06T00:17:09Z stdout",
            "2016-10-06T00:17:09Z stdin F x",
            "2016-10-06T00:17:09Z stdout X x",
            "not-a-time stdout F x",
            "{\"log\":\"x\\n\",\"stream\":\"stdout\",\"time\":\"2016-10-06T00:17:09Z\"}",
        ] {
            assert!(p(bad).is_none(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&Bytes::from(data));
        }

        #[test]
        fn round_trips_content(content in proptest::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..100), partial: bool, err: bool) {
            let mut line = b"2024-01-02T03:04:05.123456789Z ".to_vec();
            line.extend_from_slice(if err { b"stderr " } else { b"stdout " });
            line.extend_from_slice(if partial { b"P " } else { b"F " });
            line.extend_from_slice(&content);
            let l = parse(&Bytes::from(line)).unwrap();
            prop_assert_eq!(&l.content[..], &content[..]);
            prop_assert_eq!(l.partial, partial);
            prop_assert_eq!(l.stream, if err { Stream::Stderr } else { Stream::Stdout });
        }
    }
}
