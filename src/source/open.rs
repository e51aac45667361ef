//! Opening a log file to read it: without touching its access time. On a file written
//! between reads, each read would otherwise update the inode and journal it (4% of the
//! agent's CPU with 500 containers writing).

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub fn open_log(path: &Path) -> io::Result<File> {
    // Only a file's owner (or CAP_FOWNER) may ask for it: otherwise opened as usual.
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(path)
    {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => File::open(path),
        opened => opened,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn reading_leaves_the_access_time_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, b"a line\n").unwrap();
        // An access time older than the last write: `relatime` would update it on a read.
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_times(std::fs::FileTimes::new().set_accessed(old))
            .unwrap();
        let before = std::fs::metadata(&path).unwrap().atime();
        let mut s = String::new();
        open_log(&path).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "a line\n");
        assert_eq!(std::fs::metadata(&path).unwrap().atime(), before);
        // And a plain open does update it here, so the test can fail.
        let mut again = String::new();
        let mut w = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        w.write_all(b"x\n").unwrap();
        File::open(&path)
            .unwrap()
            .read_to_string(&mut again)
            .unwrap();
        let noatime = std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains(" noatime"));
        if !noatime {
            assert_ne!(std::fs::metadata(&path).unwrap().atime(), before);
        }
    }
}
