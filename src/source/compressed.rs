//! A rotated generation that was gzipped (kubelet compresses every rotated file but the
//! newest) before it was read to its end: known by the first line of its decompressed
//! content, read from an offset of that content.

use super::fingerprint::{hash_head, FINGERPRINT_BYTES};
use flate2::read::MultiGzDecoder;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;

/// Whether the file starts with gzip's magic bytes.
pub fn is_gzip(file: &File) -> bool {
    let mut magic = [0u8; 2];
    matches!(file.read_exact_at(&mut magic, 0), Ok(()) if magic == [0x1f, 0x8b])
}

/// The fingerprint the file had before it was compressed: that of its first line, or of
/// all it held when it never got a whole one (it will not grow any more). `None` when empty.
pub fn fingerprint(file: &File) -> io::Result<Option<u64>> {
    let mut dec = MultiGzDecoder::new(BufReader::new(Positional::new(file)?));
    let mut buf = [0u8; FINGERPRINT_BYTES];
    let mut n = 0;
    while n < buf.len() {
        match dec.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(hash_head(&buf[..n]).or_else(|| (n > 0).then(|| xxhash_rust::xxh3::xxh3_64(&buf[..n]))))
}

/// Reads a file from its start with `pread`: the offset its clones share stays untouched.
struct Positional {
    file: File,
    at: u64,
}

impl Positional {
    fn new(file: &File) -> io::Result<Positional> {
        Ok(Positional {
            file: file.try_clone()?,
            at: 0,
        })
    }
}

impl Read for Positional {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// Whether the file is gzipped, and the fingerprint of its content: a generation is known
/// by its first line whether kubelet compressed it or not.
pub fn content_fingerprint(file: &File) -> (bool, io::Result<Option<u64>>) {
    let gz = is_gzip(file);
    let fp = if gz {
        fingerprint(file)
    } else {
        super::fingerprint::fingerprint(file)
    };
    (gz, fp)
}

/// The decompressed size gzip's trailer records (modulo 4 GiB, of the last member).
pub fn recorded_size(file: &File) -> Option<u64> {
    let len = file.metadata().ok()?.len();
    let mut trailer = [0u8; 4];
    file.read_exact_at(&mut trailer, len.checked_sub(4)?).ok()?;
    Some(u64::from(u32::from_le_bytes(trailer)))
}

/// The decompressed content, positioned at an offset. A corrupt stream reads as ended
/// after its first error, which is returned once.
pub struct Decompressed {
    decoder: MultiGzDecoder<BufReader<Positional>>,
    /// The byte read to learn that something was left, handed out first.
    pending: Option<u8>,
    /// An error met after some bytes were handed out: returned by the next read.
    error: Option<io::Error>,
    failed: bool,
}

impl Decompressed {
    /// Opens the content at `offset`. `Ok(None)`: the content ends at or before `offset`,
    /// so nothing is left to read.
    pub fn open_at(file: &File, offset: u64) -> io::Result<Option<Decompressed>> {
        // The trailer saves decompressing a file that was read to its end already (every
        // generation kubelet compresses after logferry read it).
        if offset > 0 && recorded_size(file) == Some(offset & u64::from(u32::MAX)) {
            return Ok(None);
        }
        let mut decoder = MultiGzDecoder::new(BufReader::new(Positional::new(file)?));
        let skipped = io::copy(&mut (&mut decoder).take(offset), &mut io::sink())?;
        if skipped < offset {
            return Ok(None);
        }
        let mut probe = [0u8; 1];
        let n = loop {
            match decoder.read(&mut probe) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        Ok((n == 1).then_some(Decompressed {
            decoder,
            pending: Some(probe[0]),
            error: None,
            failed: false,
        }))
    }
}

impl Read for Decompressed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if buf.is_empty() || self.failed {
            return Ok(0);
        }
        let mut n = 0;
        if let Some(b) = self.pending.take() {
            buf[0] = b;
            n = 1;
        }
        // Filled whole: a short read would tell the line reader the file ended.
        while n < buf.len() {
            match self.decoder.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.failed = true;
                    // What came before the error is handed out first.
                    if n == 0 {
                        return Err(e);
                    }
                    self.error = Some(e);
                    break;
                }
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(path: &std::path::Path, data: &[u8]) -> File {
        let mut enc =
            flate2::write::GzEncoder::new(File::create(path).unwrap(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap();
        File::open(path).unwrap()
    }

    fn rest(d: Option<Decompressed>) -> String {
        let mut s = String::new();
        if let Some(mut d) = d {
            d.read_to_string(&mut s).unwrap();
        }
        s
    }

    #[test]
    fn a_compressed_generation_has_the_fingerprint_it_had_before() {
        let dir = tempfile::tempdir().unwrap();
        let lines: String = (0..2000).map(|i| format!("line {i}\n")).collect();
        let plain = dir.path().join("0.log.1");
        std::fs::write(&plain, &lines).unwrap();
        let gz = gzip(&dir.path().join("0.log.1.gz"), lines.as_bytes());
        assert!(is_gzip(&gz));
        assert!(!is_gzip(&File::open(&plain).unwrap()));
        let before = super::super::fingerprint::fingerprint(&File::open(&plain).unwrap()).unwrap();
        assert!(before.is_some());
        assert_eq!(fingerprint(&gz).unwrap(), before);
        // No whole first line: what it holds, as a released file's identity is made.
        let short = gzip(&dir.path().join("short.gz"), b"no newline");
        let expected = xxhash_rust::xxh3::xxh3_64(b"no newline");
        assert_eq!(fingerprint(&short).unwrap(), Some(expected));
        let empty = gzip(&dir.path().join("empty.gz"), b"");
        assert_eq!(fingerprint(&empty).unwrap(), None);
    }

    #[test]
    fn reading_goes_on_at_an_offset_of_the_decompressed_content() {
        let dir = tempfile::tempdir().unwrap();
        let lines: String = (0..2000).map(|i| format!("line {i}\n")).collect();
        let gz = gzip(&dir.path().join("g.gz"), lines.as_bytes());
        assert_eq!(recorded_size(&gz), Some(lines.len() as u64));
        assert_eq!(rest(Decompressed::open_at(&gz, 0).unwrap()), lines);
        let at = lines.find("line 1500\n").unwrap();
        assert_eq!(
            rest(Decompressed::open_at(&gz, at as u64).unwrap()),
            lines[at..]
        );
        // Read to its end already, or past it: nothing left.
        assert!(Decompressed::open_at(&gz, lines.len() as u64)
            .unwrap()
            .is_none());
        assert!(Decompressed::open_at(&gz, lines.len() as u64 + 9)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_corrupt_stream_is_an_error_once_then_ends() {
        let dir = tempfile::tempdir().unwrap();
        let lines: String = (0..20_000)
            .map(|i| format!("line {i} {}\n", i * 7919))
            .collect();
        let path = dir.path().join("g.gz");
        gzip(&path, lines.as_bytes());
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid..mid + 64].fill(0xa5);
        std::fs::write(&path, &bytes).unwrap();
        let mut d = Decompressed::open_at(&File::open(&path).unwrap(), 0)
            .unwrap()
            .unwrap();
        let mut buf = vec![0u8; 1 << 16];
        // What decodes before the error is handed out (lines are shipped, not dropped).
        let mut read = 0;
        let err = loop {
            match d.read(&mut buf) {
                Ok(0) => panic!("the corruption went unnoticed"),
                Ok(n) => read += n,
                Err(e) => break e,
            }
        };
        assert!(read > 0, "{err}");
        assert_eq!(d.read(&mut buf).unwrap(), 0, "ended after the error");
    }
}
