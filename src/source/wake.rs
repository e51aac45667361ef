//! How the read loop sleeps: until a timeout, a filesystem event, or a stop request.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Wake {
    woken: Mutex<bool>,
    cv: Condvar,
    rescan: AtomicBool,
    /// Events were lost (the kernel's queue overflowed): every directory is to be looked at.
    full_rescan: AtomicBool,
    stop: AtomicBool,
    /// Directories something was created in or renamed into since the last look.
    changed: Mutex<HashSet<PathBuf>>,
    /// Watched idle files written since the last look, by device and inode.
    written: Mutex<HashSet<(u64, u64)>>,
}

impl Wake {
    pub fn wake(&self) {
        let mut w = self.woken.lock().unwrap_or_else(|e| e.into_inner());
        *w = true;
        self.cv.notify_one();
    }

    /// Something changed in a watched directory: look for files again.
    pub fn request_rescan(&self) {
        self.rescan.store(true, Ordering::Release);
        self.wake();
    }

    pub fn take_rescan(&self) -> bool {
        self.rescan.swap(false, Ordering::AcqRel)
    }

    /// Events were lost: look everywhere, not only where events said.
    pub fn request_full_rescan(&self) {
        self.full_rescan.store(true, Ordering::Release);
        self.request_rescan();
    }

    pub fn take_full_rescan(&self) -> bool {
        self.full_rescan.swap(false, Ordering::AcqRel)
    }

    /// A file appeared in `dir` (created, or renamed into it).
    pub fn note_changed_dir(&self, dir: PathBuf) {
        self.changed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(dir);
    }

    pub fn take_changed_dirs(&self) -> HashSet<PathBuf> {
        std::mem::take(&mut *self.changed.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A watched idle file was written: read it.
    pub fn note_written(&self, file: (u64, u64)) {
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(file);
        self.wake();
    }

    pub fn take_written(&self) -> HashSet<(u64, u64)> {
        std::mem::take(&mut *self.written.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Asks the read loop to stop at its next turn.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake();
    }

    pub fn is_stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Sleeps up to `timeout`, or less if woken (also by a wake that came before).
    pub fn wait(&self, timeout: Duration) {
        let guard = self.woken.lock().unwrap_or_else(|e| e.into_inner());
        let mut guard = if *guard {
            guard
        } else {
            self.cv
                .wait_timeout(guard, timeout)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0)
        };
        *guard = false;
    }
}
