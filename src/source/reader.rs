//! Reads a file in large chunks and cuts it into raw lines with `memchr`. Lines are
//! `Bytes` slices of the chunk they were read in: no allocation per line. A line longer
//! than the bound keeps its head and the rest is skipped, so memory stays bounded.

use crate::event::Flags;
use bytes::{Bytes, BytesMut};
use memchr::{memchr_iter, memrchr};
use std::io::{self, Read};

/// One `\n`-terminated line of the file, without its `\n`.
#[derive(Debug, Clone)]
pub struct RawLine {
    pub start: u64,
    pub end: u64,
    pub bytes: Bytes,
    /// `TRUNCATED` when only the head was kept, `INCOMPLETE` for an unterminated last line.
    pub flags: Flags,
}

#[derive(Debug)]
pub struct LineReader {
    buf: BytesMut,
    /// File offset of `buf[0]`.
    offset: u64,
    read_size: usize,
    max_raw: usize,
    /// A line being skipped past its bound: its start and kept head.
    skipping: Option<(u64, Bytes)>,
    /// Bytes of over-long lines that were not kept.
    pub skipped_bytes: u64,
}

impl LineReader {
    pub fn new(offset: u64, read_size: usize, max_raw: usize) -> Self {
        LineReader {
            buf: BytesMut::new(),
            offset,
            read_size,
            max_raw,
            skipping: None,
            skipped_bytes: 0,
        }
    }

    /// Where the next read from the file starts.
    pub fn read_position(&self) -> u64 {
        self.offset + self.buf.len() as u64
    }

    /// Where the line not yet complete starts (the read position when there is none).
    pub fn line_start(&self) -> u64 {
        self.offset
    }

    /// Whether bytes were read that do not form a whole line yet.
    pub fn has_remainder(&self) -> bool {
        !self.buf.is_empty() || self.skipping.is_some()
    }

    /// Reads up to `budget` bytes of the `available` ones (from `fstat`), appending every
    /// completed line to `out`. Returns the number of bytes read (0 at end of file).
    pub fn read(
        &mut self,
        file: &mut impl Read,
        budget: usize,
        available: u64,
        out: &mut Vec<RawLine>,
    ) -> io::Result<usize> {
        let limit = budget.min(usize::try_from(available).unwrap_or(usize::MAX));
        let mut total = 0;
        while total < limit {
            let want = self.read_size.min(limit - total);
            let len = self.buf.len();
            self.buf.resize(len + want, 0);
            let n = loop {
                match file.read(&mut self.buf[len..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.buf.truncate(len);
                        return Err(e);
                    }
                }
            };
            self.buf.truncate(len + n);
            if n == 0 {
                break;
            }
            total += n;
            self.split_lines(len, out);
            if n < want {
                break;
            }
        }
        // The unread tail shares the chunk just handed out in lines; kept as it is, it
        // would pin a whole read buffer per followed file. An idle file holds none.
        self.buf = if self.buf.is_empty() {
            BytesMut::new()
        } else {
            BytesMut::from(&self.buf[..])
        };
        Ok(total)
    }

    fn split_lines(&mut self, scan_from: usize, out: &mut Vec<RawLine>) {
        if let Some(i) = memrchr(b'\n', &self.buf[scan_from..]) {
            let cut = scan_from + i + 1;
            let chunk = self.buf.split_to(cut).freeze();
            let base = self.offset;
            self.offset += cut as u64;
            let mut pos = 0;
            for nl in memchr_iter(b'\n', &chunk) {
                let end = base + nl as u64 + 1;
                let line = match self.skipping.take() {
                    Some((start, head)) => {
                        // The bytes before this newline complete the over-long line.
                        self.skipped_bytes += nl as u64;
                        RawLine {
                            start,
                            end,
                            bytes: head,
                            flags: Flags::TRUNCATED,
                        }
                    }
                    None => RawLine {
                        start: base + pos as u64,
                        end,
                        bytes: chunk.slice(pos..nl),
                        flags: Flags::empty(),
                    },
                };
                out.push(line);
                pos = nl + 1;
            }
        }
        if self.buf.len() > self.max_raw {
            if self.skipping.is_none() {
                let head = self.buf.split_to(self.max_raw).freeze();
                self.skipping = Some((self.offset, head));
                self.offset += self.max_raw as u64;
            }
            self.skipped_bytes += self.buf.len() as u64;
            self.offset += self.buf.len() as u64;
            self.buf.clear();
        }
    }

    /// Hands out the unterminated tail of a file that will not grow any more.
    pub fn take_remainder(&mut self) -> Option<RawLine> {
        let end = self.read_position();
        let rest = self.buf.split().freeze();
        self.offset = end;
        match self.skipping.take() {
            Some((start, head)) => {
                self.skipped_bytes += rest.len() as u64;
                Some(RawLine {
                    start,
                    end,
                    bytes: head,
                    flags: Flags::TRUNCATED | Flags::INCOMPLETE,
                })
            }
            None if !rest.is_empty() => Some(RawLine {
                start: end - rest.len() as u64,
                end,
                bytes: rest,
                flags: Flags::INCOMPLETE,
            }),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A reader that hands out at most `step` bytes a call, like a file still being written.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn read_all(
        data: &[u8],
        step: usize,
        read_size: usize,
        max_raw: usize,
    ) -> (Vec<RawLine>, LineReader) {
        let mut r = LineReader::new(0, read_size, max_raw);
        let mut src = Trickle { data, step };
        let mut out = Vec::new();
        while r.read(&mut src, 1 << 20, u64::MAX, &mut out).unwrap() > 0 {}
        (out, r)
    }

    #[test]
    fn splits_lines_with_offsets() {
        let (out, r) = read_all(b"one\ntwo\n\nthree", 3, 4096, 1 << 20);
        let lines: Vec<(&[u8], u64, u64)> =
            out.iter().map(|l| (&l.bytes[..], l.start, l.end)).collect();
        assert_eq!(
            lines,
            vec![(&b"one"[..], 0, 4), (b"two", 4, 8), (b"", 8, 9)]
        );
        assert_eq!(r.read_position(), 14);
        assert!(r.has_remainder());
    }

    #[test]
    fn bounds_long_lines_and_keeps_going() {
        let mut data = vec![b'x'; 10_000];
        data.extend_from_slice(b"\nshort\n");
        let (out, r) = read_all(&data, 777, 4096, 1000);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].bytes.len(), 1000);
        assert!(out[0].flags.contains(Flags::TRUNCATED));
        assert_eq!((out[0].start, out[0].end), (0, 10_001));
        assert_eq!(&out[1].bytes[..], b"short");
        assert_eq!((out[1].start, out[1].end), (10_001, 10_007));
        assert_eq!(r.skipped_bytes, 9000);
    }

    #[test]
    fn remainder_is_handed_out_once() {
        let (_, mut r) = read_all(b"a\nbc", 100, 4096, 100);
        let rest = r.take_remainder().unwrap();
        assert_eq!(&rest.bytes[..], b"bc");
        assert_eq!((rest.start, rest.end), (2, 4));
        assert!(rest.flags.contains(Flags::INCOMPLETE));
        assert!(r.take_remainder().is_none());
    }

    #[test]
    fn unread_tail_does_not_pin_the_read_buffer() {
        let mut data = b"first line\n".repeat(6000);
        data.extend_from_slice(b"half a li");
        let mut r = LineReader::new(0, 64 * 1024, 1 << 20);
        let mut out = Vec::new();
        r.read(&mut &data[..], 1 << 20, u64::MAX, &mut out).unwrap();
        assert_eq!(out.len(), 6000);
        // The lines still hold their chunk; the reader keeps only the 9-byte tail.
        assert_eq!(&r.buf[..], b"half a li");
        assert!(r.buf.capacity() < 1024, "capacity {}", r.buf.capacity());
    }

    proptest! {
        /// Whatever the read sizes, the lines cover the input exactly, in order.
        #[test]
        fn lines_tile_the_input(data in proptest::collection::vec(prop_oneof![Just(b'\n'), any::<u8>()], 0..3000),
                                step in 1usize..600, max_raw in 16usize..400) {
            let (out, mut r) = read_all(&data, step, 4096, max_raw);
            let mut pos = 0u64;
            for l in out.iter().chain(r.take_remainder().iter()) {
                prop_assert_eq!(l.start, pos);
                let seg = &data[l.start as usize..l.end as usize];
                let body = seg.strip_suffix(b"\n").unwrap_or(seg);
                if l.flags.contains(Flags::TRUNCATED) {
                    prop_assert_eq!(&l.bytes[..], &body[..max_raw]);
                } else {
                    prop_assert_eq!(&l.bytes[..], body);
                }
                pos = l.end;
            }
            prop_assert_eq!(pos, data.len() as u64);
        }
    }
}
