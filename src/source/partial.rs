//! Joins the chunks a runtime split a long line into (CRI `P`…`F`, Docker lines without `\n`)
//! back into one line, per stream, bounded by `max_line_bytes`.

use super::line::RuntimeLine;
use super::line::{char_boundary, Line};
use crate::config::LineOverflow;
use crate::event::Flags;
use bytes::Bytes;

/// The pending chunks of one stream of one file.
#[derive(Debug, Default)]
pub struct PartialBuffer {
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    start: u64,
    end: u64,
    timestamp: Bytes,
    buf: Vec<u8>,
    flags: Flags,
}

impl PartialBuffer {
    /// Offset of the first chunk held back, if any.
    pub fn held_start(&self) -> Option<u64> {
        self.pending.as_ref().map(|p| p.start)
    }

    /// Feeds the runtime line found at `start..end`; whole lines go to `out`.
    pub fn push(
        &mut self,
        rl: RuntimeLine,
        start: u64,
        end: u64,
        max: usize,
        overflow: LineOverflow,
        out: &mut Vec<Line>,
    ) {
        let mut p = match self.pending.take() {
            None if !rl.partial => {
                let (content, flags) = bounded(rl.content, max);
                let line = Line {
                    start,
                    end,
                    timestamp: rl.timestamp,
                    stream: rl.stream,
                    content,
                    flags,
                };
                return out.push(line);
            }
            None => Pending {
                start,
                end,
                timestamp: rl.timestamp.clone(),
                buf: Vec::new(),
                flags: Flags::PARTIAL_MERGED,
            },
            Some(p) => p,
        };
        p.end = end;
        let room = max.saturating_sub(p.buf.len());
        if rl.content.len() <= room {
            p.buf.extend_from_slice(&rl.content);
        } else {
            match overflow {
                LineOverflow::Truncate => {
                    let n = char_boundary(&rl.content, room);
                    p.buf.extend_from_slice(&rl.content[..n]);
                    p.flags.insert(Flags::TRUNCATED);
                }
                LineOverflow::Split => {
                    // Ship what is held as one piece; this chunk starts the next piece.
                    if !p.buf.is_empty() {
                        let piece = Line {
                            start: p.start,
                            end: start,
                            timestamp: p.timestamp.clone(),
                            stream: rl.stream,
                            content: Bytes::from(std::mem::take(&mut p.buf)),
                            flags: p.flags | Flags::SPLIT,
                        };
                        out.push(piece);
                        p.start = start;
                        p.flags.insert(Flags::SPLIT);
                    }
                    let (content, flags) = bounded(rl.content.clone(), max);
                    p.buf.extend_from_slice(&content);
                    p.flags.insert(flags);
                }
            }
        }
        if rl.partial {
            self.pending = Some(p);
        } else {
            let line = into_line(p, rl.stream);
            out.push(line);
        }
    }

    /// Gives up waiting for the final chunk (the file ended or went away).
    pub fn flush(&mut self, stream: crate::event::Stream) -> Option<Line> {
        self.pending.take().map(|mut p| {
            p.flags.insert(Flags::INCOMPLETE);
            into_line(p, stream)
        })
    }
}

fn into_line(p: Pending, stream: crate::event::Stream) -> Line {
    Line {
        start: p.start,
        end: p.end,
        timestamp: p.timestamp,
        stream,
        content: Bytes::from(p.buf),
        flags: p.flags,
    }
}

/// Cuts content longer than `max` at a character boundary, flagged.
pub fn bounded(content: Bytes, max: usize) -> (Bytes, Flags) {
    if content.len() <= max {
        (content, Flags::empty())
    } else {
        let n = char_boundary(&content, max);
        (content.slice(..n), Flags::TRUNCATED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Stream;

    fn rl(content: &str, partial: bool) -> RuntimeLine {
        RuntimeLine {
            timestamp: Bytes::from_static(b"2020-01-01T00:00:00Z"),
            stream: Stream::Stdout,
            partial,
            content: Bytes::copy_from_slice(content.as_bytes()),
        }
    }

    fn run(
        chunks: &[(&str, bool)],
        max: usize,
        overflow: LineOverflow,
    ) -> (Vec<Line>, PartialBuffer) {
        let mut buf = PartialBuffer::default();
        let mut out = Vec::new();
        let mut off = 0;
        for (c, partial) in chunks {
            let len = c.len() as u64 + 40;
            buf.push(rl(c, *partial), off, off + len, max, overflow, &mut out);
            off += len;
        }
        (out, buf)
    }

    #[test]
    fn merges_chunks() {
        let (out, buf) = run(
            &[("ab", true), ("cd", true), ("ef", false), ("g", false)],
            100,
            LineOverflow::Split,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(&out[0].content[..], b"abcdef");
        assert_eq!((out[0].start, out[0].end), (0, 126));
        assert!(out[0].flags.contains(Flags::PARTIAL_MERGED));
        assert_eq!(&out[1].content[..], b"g");
        assert!(out[1].flags.is_empty());
        assert!(buf.held_start().is_none());
    }

    #[test]
    fn splits_at_chunk_boundaries_without_losing_bytes() {
        let (out, _) = run(
            &[
                ("aaaa", true),
                ("bbbb", true),
                ("cccc", true),
                ("dd", false),
            ],
            9,
            LineOverflow::Split,
        );
        let pieces: Vec<&[u8]> = out.iter().map(|l| &l.content[..]).collect();
        assert_eq!(pieces, vec![&b"aaaabbbb"[..], b"ccccdd"]);
        assert!(out.iter().all(|l| l.flags.contains(Flags::SPLIT)));
        assert_eq!(out[0].end, out[1].start);
        assert_ne!(out[0].start, out[1].start);
    }

    #[test]
    fn truncates_when_asked() {
        let (out, _) = run(
            &[("aaaa", true), ("bbbb", true), ("cccc", false)],
            6,
            LineOverflow::Truncate,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0].content[..], b"aaaabb");
        assert!(out[0].flags.contains(Flags::TRUNCATED));
        assert_eq!(out[0].end, 132);
    }

    #[test]
    fn holds_until_final_chunk_and_flushes_incomplete() {
        let (out, mut buf) = run(&[("ab", true)], 100, LineOverflow::Split);
        assert!(out.is_empty());
        assert_eq!(buf.held_start(), Some(0));
        let l = buf.flush(Stream::Stdout).unwrap();
        assert_eq!(&l.content[..], b"ab");
        assert!(l.flags.contains(Flags::INCOMPLETE));
    }
}
