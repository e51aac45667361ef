//! The content half of a file's identity: a hash of its first line (at most 1 KiB). With
//! device and inode it tells a reused inode, or a truncated and rewritten file, from the old one.

use memchr::memchr;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

pub const FINGERPRINT_BYTES: usize = 1024;

/// `None` while the file has neither a complete first line nor 1 KiB.
pub fn fingerprint(file: &File) -> io::Result<Option<u64>> {
    let mut buf = [0u8; FINGERPRINT_BYTES];
    let n = read_head(file, &mut buf)?;
    Ok(hash_head(&buf[..n]))
}

/// The fingerprint of a file's first bytes: its first line, or the whole head when it is
/// `FINGERPRINT_BYTES` long without a line end. `None` while there is no such thing yet.
pub fn hash_head(head: &[u8]) -> Option<u64> {
    let end = match memchr(b'\n', head) {
        Some(i) => i + 1,
        None if head.len() == FINGERPRINT_BYTES => head.len(),
        None => return None,
    };
    Some(xxhash_rust::xxh3::xxh3_64(&head[..end]))
}

/// For a file that will not grow any more but never got a whole first line: the hash of
/// what it holds. `None` when it is empty.
pub fn fingerprint_unterminated(file: &File) -> io::Result<Option<u64>> {
    let mut buf = [0u8; FINGERPRINT_BYTES];
    let n = read_head(file, &mut buf)?;
    Ok((n > 0).then(|| xxhash_rust::xxh3::xxh3_64(&buf[..n])))
}

fn read_head(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn needs_a_first_line_and_ignores_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let mut f = File::create(&p).unwrap();
        let r = File::open(&p).unwrap();
        assert_eq!(fingerprint(&r).unwrap(), None);
        f.write_all(b"first line").unwrap();
        assert_eq!(fingerprint(&r).unwrap(), None);
        f.write_all(b"\n").unwrap();
        let a = fingerprint(&r).unwrap().unwrap();
        f.write_all(b"second\n").unwrap();
        assert_eq!(fingerprint(&r).unwrap(), Some(a));
        std::fs::write(&p, b"other first\n").unwrap();
        assert_ne!(fingerprint(&r).unwrap(), Some(a));
    }
}
