//! Files that hold log content or positions (checkpoints, the disk buffer, dead letters):
//! readable by logferry's user only, whatever the umask or whoever made the directory.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

/// Creates `dir` (and its parents) 0700; an existing one is left as it is.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates `dir` 0700, and takes group and other access away from it if it had any
/// (kubelet creates a hostPath 0755). Returns the mode it had when it was tightened.
pub fn create_dir_tightened(dir: &Path) -> io::Result<Option<u32>> {
    create_dir(dir)?;
    let mode = fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(mode & 0o700))?;
    Ok(Some(mode))
}

/// Opens `path` for appending, created 0600. A file made before (by an older version) is
/// made 0600 too.
pub fn open_append(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)?;
    private(&f)?;
    Ok(f)
}

/// Creates or truncates `path`, 0600.
pub fn create(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    private(&f)?;
    Ok(f)
}

fn private(f: &File) -> io::Result<()> {
    let mode = f.metadata()?.permissions().mode() & 0o777;
    if mode != FILE_MODE {
        f.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
    }
    Ok(())
}

/// A new directory of its own under the system's temporary directory, 0700: for what a run
/// without a state directory must still keep (dead letters). Never a fixed path another
/// user could have made first.
pub fn create_run_dir(prefix: &str) -> io::Result<PathBuf> {
    let base = std::env::temp_dir();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    for attempt in 0..100u32 {
        let dir = base.join(format!(
            "{prefix}-{}-{:08x}",
            std::process::id(),
            nanos.wrapping_add(attempt.wrapping_mul(0x9e37_79b9))
        ));
        // Not recursive: a directory that exists already (made by anyone) is not taken.
        match fs::DirBuilder::new().mode(DIR_MODE).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free name for a private directory",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_and_directories_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        create_dir(&state).unwrap();
        assert_eq!(mode(&state), 0o700);
        let f = state.join("a");
        create(&f).unwrap();
        assert_eq!(mode(&f), 0o600);
        // A file an older version made world-readable is made private when opened.
        let old = state.join("b");
        fs::write(&old, b"x").unwrap();
        fs::set_permissions(&old, fs::Permissions::from_mode(0o644)).unwrap();
        open_append(&old).unwrap();
        assert_eq!(mode(&old), 0o600);
    }

    #[test]
    fn an_open_state_directory_is_tightened_once() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(create_dir_tightened(&state).unwrap(), Some(0o755));
        assert_eq!(mode(&state), 0o700);
        assert_eq!(create_dir_tightened(&state).unwrap(), None);
    }

    #[test]
    fn a_run_directory_is_new_and_private() {
        let a = create_run_dir("logferry-test").unwrap();
        let b = create_run_dir("logferry-test").unwrap();
        assert_ne!(a, b);
        assert_eq!(mode(&a), 0o700);
        assert!(a.starts_with(std::env::temp_dir()));
        fs::remove_dir(&a).unwrap();
        fs::remove_dir(&b).unwrap();
    }
}
