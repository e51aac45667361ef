//! The lines of assembly: one as the runtime wrote it (either format parses to it), and a
//! logical line, a runtime line or chunks already merged.

use crate::event::{Flags, Stream};
use bytes::Bytes;

/// One line as the container runtime wrote it.
#[derive(Debug, Clone)]
pub struct RuntimeLine {
    pub timestamp: Bytes,
    pub stream: Stream,
    /// A chunk of a longer line; the rest follows.
    pub partial: bool,
    pub content: Bytes,
}

#[derive(Debug, Clone)]
pub struct Line {
    /// File offset of its first raw line.
    pub start: u64,
    /// File offset just past its last raw line.
    pub end: u64,
    pub timestamp: Bytes,
    pub stream: Stream,
    pub content: Bytes,
    pub flags: Flags,
}

/// The largest `n <= max` that does not cut a UTF-8 sequence of `b` in two.
pub fn char_boundary(b: &[u8], max: usize) -> usize {
    if b.len() <= max {
        return b.len();
    }
    let mut n = max;
    // Step back over at most three continuation bytes.
    while n > 0 && max - n < 3 && (b[n] & 0xC0) == 0x80 {
        n -= 1;
    }
    if (b[n] & 0xC0) == 0x80 {
        max
    } else {
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_between_characters() {
        let s = "aé€😀".as_bytes(); // 1 + 2 + 3 + 4 bytes
        assert_eq!(char_boundary(s, 100), 10);
        assert_eq!(char_boundary(s, 2), 1);
        assert_eq!(char_boundary(s, 3), 3);
        assert_eq!(char_boundary(s, 5), 3);
        assert_eq!(char_boundary(s, 7), 6);
        assert_eq!(char_boundary(&[0x80, 0x80, 0x80, 0x80, 0x80], 4), 4);
    }
}
