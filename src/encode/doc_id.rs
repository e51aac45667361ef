//! Deterministic document ids from the file's identity and the event's offset, 22
//! characters of base64url. A replayed or retried event gets the same id, so Elasticsearch
//! answers `create` with 409 instead of indexing it twice.

use crate::event::{FileIdentity, IdScheme};
use xxhash_rust::xxh3::xxh3_128;

/// The per-file part of every id. The device number is left out: it may change across
/// reboots while inode and content do not.
fn id_seed(identity: &FileIdentity) -> u128 {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&identity.inode.to_le_bytes());
    b[8..].copy_from_slice(&identity.fingerprint.to_le_bytes());
    xxh3_128(&b)
}

pub const ID_LEN: usize = 22;

/// Offsets below this fit the 7 digits that follow the seed's 15 in an `Offset` id.
pub const OFFSET_ID_LIMIT: u64 = 1 << OFFSET_BITS;
const OFFSET_BITS: u32 = 42;
const SEED_DIGITS: usize = 15;
const _: () = assert!(SEED_DIGITS * 6 + OFFSET_BITS as usize == 6 * ID_LEN);

/// How one file's document ids are made: worked out once per file, so that a line's id
/// costs its offset's digits only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIds {
    seed: u128,
    scheme: IdScheme,
    /// The seed's top 90 bits in base64url: the first characters of every `Offset` id.
    prefix: [u8; SEED_DIGITS],
}

impl FileIds {
    pub fn new(identity: &FileIdentity, scheme: IdScheme) -> FileIds {
        let seed = id_seed(identity);
        let mut prefix = [0u8; SEED_DIGITS];
        base64url(seed >> (128 - 6 * SEED_DIGITS as u32), &mut prefix);
        FileIds {
            seed,
            scheme,
            prefix,
        }
    }

    /// The id of the event at `offset`.
    pub fn id(&self, offset: u64) -> [u8; ID_LEN] {
        match self.scheme {
            IdScheme::Offset if offset < OFFSET_ID_LIMIT => {
                let mut out = [0u8; ID_LEN];
                let (head, tail) = out.split_at_mut(SEED_DIGITS);
                head.copy_from_slice(&self.prefix);
                base64url(u128::from(offset), tail);
                out
            }
            // No log file reaches 4 TiB, but an id must stay unique if one did.
            _ => hashed_id(self.seed, offset),
        }
    }
}

fn hashed_id(seed: u128, offset: u64) -> [u8; ID_LEN] {
    let mut b = [0u8; 24];
    b[..16].copy_from_slice(&seed.to_le_bytes());
    b[16..].copy_from_slice(&offset.to_le_bytes());
    let mut out = [0u8; ID_LEN];
    // 22 digits of 6 bits hold 132 bits: the top four are zero.
    base64url(xxh3_128(&b), &mut out);
    out
}

/// The low `6 * out.len()` bits of `n`, most significant digit first.
fn base64url(n: u128, out: &mut [u8]) {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let len = out.len();
    for (i, o) in out.iter_mut().enumerate() {
        let shift = 6 * (len - 1 - i);
        *o = A[((n >> shift) & 63) as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const IDENTITY: FileIdentity = FileIdentity {
        dev: 1,
        inode: 2,
        fingerprint: 3,
    };

    fn text(id: [u8; ID_LEN]) -> String {
        String::from_utf8(id.to_vec()).unwrap()
    }

    #[test]
    fn stable_and_distinct_in_both_forms() {
        let other = FileIdentity {
            fingerprint: 4,
            ..IDENTITY
        };
        let offsets = (0..10_000u64).chain(OFFSET_ID_LIMIT - 5000..OFFSET_ID_LIMIT + 5000);
        let mut ids = HashSet::new();
        for scheme in [IdScheme::Hashed, IdScheme::Offset] {
            let file = FileIds::new(&IDENTITY, scheme);
            // A different device (after a reboot) keeps the ids.
            assert_eq!(
                file,
                FileIds::new(&FileIdentity { dev: 9, ..IDENTITY }, scheme)
            );
            let other = FileIds::new(&other, scheme);
            for o in offsets.clone() {
                ids.insert(file.id(o));
                ids.insert(other.id(o));
            }
        }
        // Every id distinct but the hashed fallback of `Offset` ids past the limit.
        assert_eq!(ids.len(), 4 * 20_000 - 2 * 5000);
        for id in ids {
            assert!(text(id)
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        }
    }

    #[test]
    fn offset_ids_share_the_file_prefix_and_count_up() {
        let file = FileIds::new(&IDENTITY, IdScheme::Offset);
        let hashed = FileIds::new(&IDENTITY, IdScheme::Hashed);
        let a = text(file.id(0));
        let b = text(file.id(4097));
        assert_eq!(a[..SEED_DIGITS], b[..SEED_DIGITS]);
        assert_eq!(&a[SEED_DIGITS..], "AAAAAAA");
        // 4097 = 1 * 64^2 + 0 * 64 + 1.
        assert_eq!(&b[SEED_DIGITS..], "AAAABAB");
        let last = text(file.id(OFFSET_ID_LIMIT - 1));
        assert_eq!(&last[SEED_DIGITS..], "_______");
        assert_eq!(file.id(OFFSET_ID_LIMIT), hashed.id(OFFSET_ID_LIMIT));
        let other = text(
            FileIds::new(
                &FileIdentity {
                    inode: 5,
                    ..IDENTITY
                },
                IdScheme::Offset,
            )
            .id(0),
        );
        assert_ne!(a[..SEED_DIGITS], other[..SEED_DIGITS]);
    }
}
