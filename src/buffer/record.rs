//! How a record sits in a segment file: `magic | length | crc32 | payload`, little-endian.
//! A torn write leaves a short or mismatching record at the end; damage in the middle is
//! stepped over by searching for the next header whose checksum holds.

/// "LFB1": marks the start of every record.
pub const MAGIC: [u8; 4] = *b"LFB1";
pub const HEADER: usize = 12;
/// Larger lengths are damage, not records (a document is bounded well below this).
pub const MAX_PAYLOAD: usize = 256 * 1024 * 1024;

/// Appends one framed record to `out`.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// What is at the start of a slice of a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, intact record and the bytes it takes.
    Record { payload: &'a [u8], len: usize },
    /// The slice ends inside a record (more may come, or the write was torn).
    Incomplete,
    /// Not a valid record here; `skip` bytes up to the next plausible header (or the end).
    Corrupt { skip: usize },
}

pub fn decode(b: &[u8]) -> Decoded<'_> {
    if b.len() < HEADER {
        return if MAGIC.starts_with(&b[..b.len().min(4)]) {
            Decoded::Incomplete
        } else {
            Decoded::Corrupt { skip: resync(b, 1) }
        };
    }
    if b[..4] != MAGIC {
        return Decoded::Corrupt { skip: resync(b, 1) };
    }
    let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
    let crc = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    if len > MAX_PAYLOAD {
        return Decoded::Corrupt { skip: resync(b, 1) };
    }
    let Some(payload) = b.get(HEADER..HEADER + len) else {
        return Decoded::Incomplete;
    };
    if crc32fast::hash(payload) != crc {
        return Decoded::Corrupt { skip: resync(b, 1) };
    }
    Decoded::Record {
        payload,
        len: HEADER + len,
    }
}

/// The offset of the next magic at or after `from`. Without one, the end of `b` less the
/// bytes that could begin a magic cut by the end of a read window.
fn resync(b: &[u8], from: usize) -> usize {
    let from = from.min(b.len());
    match memchr::memmem::find(&b[from..], &MAGIC) {
        Some(i) => from + i,
        None => b.len().saturating_sub(MAGIC.len() - 1).max(from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            encode(p, &mut out);
        }
        out
    }

    /// Every record that can be read from `b`, stepping over damage.
    fn read_all(b: &[u8]) -> (Vec<Vec<u8>>, usize) {
        let (mut out, mut pos, mut skipped) = (Vec::new(), 0, 0);
        while pos < b.len() {
            match decode(&b[pos..]) {
                Decoded::Record { payload, len } => {
                    out.push(payload.to_vec());
                    pos += len;
                }
                Decoded::Incomplete => break,
                Decoded::Corrupt { skip } => {
                    skipped += 1;
                    pos += skip;
                }
            }
        }
        (out, skipped)
    }

    #[test]
    fn round_trips() {
        let b = frame(&[b"one", b"", b"three\n"]);
        let (got, skipped) = read_all(&b);
        assert_eq!(got, vec![b"one".to_vec(), vec![], b"three\n".to_vec()]);
        assert_eq!(skipped, 0);
    }

    #[test]
    fn a_torn_tail_is_incomplete_and_cut() {
        let b = frame(&[b"first", b"second record"]);
        let whole = HEADER + 5;
        for cut in whole + 1..b.len() {
            assert_eq!(decode(&b[whole..cut]), Decoded::Incomplete, "cut at {cut}");
            // The whole first record is read; the cut one is waited for, not called damage.
            assert_eq!(
                read_all(&b[..cut]),
                (vec![b"first".to_vec()], 0),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn damage_in_the_middle_costs_only_the_damaged_record() {
        let mut b = frame(&[b"alpha", b"bravo", b"charlie"]);
        b[HEADER + 5 + HEADER + 1] ^= 0xff; // a byte of "bravo"
        let (got, skipped) = read_all(&b);
        assert_eq!(got, vec![b"alpha".to_vec(), b"charlie".to_vec()]);
        assert_eq!(skipped, 1);
    }

    #[test]
    fn after_damage_a_header_cut_by_the_window_is_not_skipped() {
        let mut b = vec![0xEEu8; 10];
        b.extend(frame(&[b"kept"]));
        // A window that ends two bytes into the record's magic.
        let window = &b[..12];
        let Decoded::Corrupt { skip } = decode(window) else {
            panic!("damage first")
        };
        assert!(skip <= 10, "skip {skip} would pass the magic");
        let mut pos = skip;
        while let Decoded::Corrupt { skip } = decode(&b[pos..]) {
            pos += skip;
        }
        assert_eq!(
            decode(&b[pos..]),
            Decoded::Record {
                payload: b"kept",
                len: HEADER + 4
            }
        );
    }

    proptest! {
        /// Whatever bytes are flipped, reading never panics and every record it returns
        /// is one that was written.
        #[test]
        fn damage_never_invents_records(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..8),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        ) {
            let refs: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
            let mut b = frame(&refs);
            for (i, v) in flips {
                let i = i.index(b.len());
                b[i] = v;
            }
            let (got, _) = read_all(&b);
            for g in got {
                prop_assert!(payloads.contains(&g));
            }
        }
    }
}
