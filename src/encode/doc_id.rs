//! Deterministic document ids: a 128-bit hash of the file's identity and the event's
//! offset, base64url. A replayed or retried event gets the same id, so Elasticsearch
//! answers `create` with 409 instead of indexing it twice.

use crate::event::FileIdentity;
use xxhash_rust::xxh3::xxh3_128;

/// The per-file part of every id. The device number is left out: it may change across
/// reboots while inode and content do not.
pub fn id_seed(identity: &FileIdentity) -> u128 {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&identity.inode.to_le_bytes());
    b[8..].copy_from_slice(&identity.fingerprint.to_le_bytes());
    xxh3_128(&b)
}

pub const ID_LEN: usize = 22;

pub fn document_id(seed: u128, offset: u64) -> [u8; ID_LEN] {
    let mut b = [0u8; 24];
    b[..16].copy_from_slice(&seed.to_le_bytes());
    b[16..].copy_from_slice(&offset.to_le_bytes());
    base64url(xxh3_128(&b).to_be_bytes())
}

fn base64url(v: [u8; 16]) -> [u8; ID_LEN] {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = [0u8; ID_LEN];
    let n = u128::from_be_bytes(v);
    // 22 digits of 6 bits hold 132 bits: the top four are zero.
    for (i, o) in out.iter_mut().enumerate() {
        let shift = 6 * (ID_LEN - 1 - i);
        *o = A[((n >> shift) & 63) as usize];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn stable_and_distinct() {
        let id = FileIdentity {
            dev: 1,
            inode: 2,
            fingerprint: 3,
        };
        let seed = id_seed(&id);
        assert_eq!(document_id(seed, 10), document_id(seed, 10));
        // A different device (after a reboot) keeps the ids.
        assert_eq!(seed, id_seed(&FileIdentity { dev: 9, ..id }));
        let other = id_seed(&FileIdentity {
            fingerprint: 4,
            ..id
        });
        let ids: HashSet<_> = (0..10_000u64)
            .flat_map(|o| [document_id(seed, o), document_id(other, o)])
            .collect();
        assert_eq!(ids.len(), 20_000);
        let s = std::str::from_utf8(&document_id(seed, 0))
            .unwrap()
            .to_string();
        assert_eq!(s.len(), 22);
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }
}
