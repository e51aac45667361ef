//! inotify watches. On directories: new, renamed and deleted files. A write to a file in
//! a watched directory raises none (a watch that also reports writes, as `notify`'s do,
//! costs one event per line a container writes: a third of the agent's CPU at 50,000
//! lines a second). On idle files: one `IN_MODIFY`, once (`IN_ONESHOT`), so that a file
//! with nothing to read is not looked at until it is written, and a busy one raises none.

use super::wake::Wake;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

const DIR_MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::DELETE)
    .union(WatchMask::ONLYDIR);

/// A truncation raises `IN_MODIFY` too.
const FILE_MASK: WatchMask = WatchMask::MODIFY.union(WatchMask::ONESHOT);

/// Fault injection for tests: file watches that report no write, as on NFS or FUSE (a
/// watch is taken all the same: only its deletion is reported).
#[doc(hidden)]
pub static DEAF_FILE_WATCHES: AtomicBool = AtomicBool::new(false);

/// A watched file, by device and inode.
pub type FileId = (u64, u64);

enum Target {
    Dir(PathBuf),
    File(FileId),
}

type Targets = Arc<Mutex<HashMap<WatchDescriptor, Target>>>;

pub struct Watcher {
    watches: Watches,
    /// Each watched directory, its watch and how many asked for it.
    by_path: HashMap<PathBuf, (WatchDescriptor, usize)>,
    targets: Targets,
    stop: Arc<AtomicBool>,
    /// The event thread ended on an error: nothing is watched any more.
    failed: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts the event thread: each event wakes the read loop for a rescan, and says in
    /// which directory a file appeared; lost events (the kernel's queue overflowed) ask
    /// for a look everywhere.
    pub fn start(wake: Arc<Wake>) -> io::Result<Watcher> {
        let mut inotify = Inotify::init()?;
        let watches = inotify.watches();
        let targets: Targets = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicBool::new(false));
        let (d, s, fail) = (targets.clone(), stop.clone(), failed.clone());
        let thread = std::thread::Builder::new()
            .name("dir-watch".into())
            .spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while !s.load(Ordering::Acquire) {
                    // Blocks until an event; `Drop` raises one to end the thread.
                    let events = match inotify.read_events_blocking(&mut buf) {
                        Ok(events) => events,
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                            ) =>
                        {
                            continue
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "directory watches failed; new files are found by periodic rescans only");
                            fail.store(true, Ordering::Release);
                            wake.request_full_rescan();
                            return;
                        }
                    };
                    let mut targets = d.lock().unwrap_or_else(|e| e.into_inner());
                    for ev in events {
                        if ev.mask.contains(EventMask::Q_OVERFLOW) {
                            wake.request_full_rescan();
                            continue;
                        }
                        // Also after a one-shot watch's event: the kernel removed it.
                        if ev.mask.contains(EventMask::IGNORED) {
                            targets.remove(&ev.wd);
                            continue;
                        }
                        match targets.get(&ev.wd) {
                            Some(Target::File(id)) => wake.note_written(*id),
                            Some(Target::Dir(dir)) => {
                                if !ev.mask.contains(EventMask::DELETE) {
                                    wake.note_changed_dir(dir.clone());
                                }
                                wake.request_rescan();
                            }
                            None => wake.request_rescan(),
                        }
                    }
                }
            })?;
        Ok(Watcher {
            watches,
            by_path: HashMap::new(),
            targets,
            stop,
            failed,
            thread: Some(thread),
        })
    }

    /// Whether events still come: if not, periodic looks are all there is.
    pub fn is_working(&self) -> bool {
        !self.failed.load(Ordering::Acquire)
    }

    pub fn watch(&mut self, dir: &Path) -> io::Result<()> {
        if let Some((_, n)) = self.by_path.get_mut(dir) {
            *n += 1;
            return Ok(());
        }
        let wd = self.watches.add(dir, DIR_MASK)?;
        self.targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(wd.clone(), Target::Dir(dir.to_path_buf()));
        self.by_path.insert(dir.to_path_buf(), (wd, 1));
        Ok(())
    }

    /// Drops one ask for `dir`'s watch; the last one removes it.
    pub fn unwatch(&mut self, dir: &Path) {
        let Some((wd, n)) = self.by_path.get_mut(dir) else {
            return;
        };
        *n -= 1;
        if *n > 0 {
            return;
        }
        let wd = wd.clone();
        self.by_path.remove(dir);
        self.targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&wd);
        // Gone with its directory, most often: the kernel dropped it already.
        let _ = self.watches.remove(wd);
    }

    /// Asks for the next write to the open `file` (known as `id`), once: it is noted in
    /// `Wake::take_written`. Through `/proc/self/fd`, so that it is this very file that
    /// is watched even if its path names another one by now.
    pub fn watch_file(&mut self, file: &File, id: FileId) -> io::Result<WatchDescriptor> {
        let path = format!("/proc/self/fd/{}", file.as_raw_fd());
        let mask = if DEAF_FILE_WATCHES.load(Ordering::Relaxed) {
            WatchMask::DELETE_SELF.union(WatchMask::ONESHOT)
        } else {
            FILE_MASK
        };
        let wd = self.watches.add(&path, mask)?;
        self.targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(wd.clone(), Target::File(id));
        Ok(wd)
    }

    /// Drops a file's watch that has not fired (the file is let go, or read anyway).
    pub fn unwatch_file(&mut self, wd: WatchDescriptor) {
        self.targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&wd);
        // Fired meanwhile, or the file was deleted: the kernel removed it already.
        let _ = self.watches.remove(wd);
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Removing a watch queues an IN_IGNORED event, which ends the thread's blocking read.
        let woken = self
            .watches
            .add("/", WatchMask::ONLYDIR | WatchMask::DELETE_SELF)
            .and_then(|wd| self.watches.remove(wd));
        match (self.thread.take(), woken) {
            (Some(t), Ok(())) => {
                let _ = t.join();
            }
            // Not joined: it ends at its next event.
            (Some(_), Err(e)) => {
                tracing::debug!(error = %e, "cannot wake the directory-watch thread to stop it")
            }
            (None, _) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Whether `seen` comes true within 5 s.
    fn within(mut seen: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if seen() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    fn changed_within(wake: &Wake, dir: &Path) -> bool {
        within(|| wake.take_changed_dirs().contains(dir))
    }

    #[test]
    fn creations_and_renames_are_reported_writes_are_not() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let wake = Arc::new(Wake::default());
        let mut w = Watcher::start(wake.clone()).unwrap();
        w.watch(dir.path()).unwrap();
        let log = dir.path().join("0.log");
        let mut f = std::fs::File::create(&log).unwrap();
        assert!(changed_within(&wake, dir.path()), "a created file");
        assert!(wake.take_rescan());
        for _ in 0..100 {
            f.write_all(b"a line\n").unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
        assert!(!wake.take_rescan(), "writes raise no event");
        std::fs::rename(&log, dir.path().join("0.log.1")).unwrap();
        assert!(changed_within(&wake, dir.path()), "a rename");
        // Asked for twice, removed once: still watched.
        w.watch(dir.path()).unwrap();
        w.unwatch(dir.path());
        std::fs::File::create(dir.path().join("1.log")).unwrap();
        assert!(changed_within(&wake, dir.path()), "still watched");
        w.unwatch(dir.path());
        std::fs::File::create(dir.path().join("2.log")).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(wake.take_changed_dirs().is_empty(), "no longer watched");
    }

    fn written_within(wake: &Wake, id: FileId) -> bool {
        within(|| wake.take_written().contains(&id))
    }

    #[test]
    fn a_file_watch_reports_one_write_then_is_gone() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let wake = Arc::new(Wake::default());
        let mut w = Watcher::start(wake.clone()).unwrap();
        let log = dir.path().join("0.log");
        let mut writer = File::create(&log).unwrap();
        let reader = File::open(&log).unwrap();
        w.watch_file(&reader, (1, 2)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(wake.take_written().is_empty(), "nothing written yet");
        writer.write_all(b"a line\n").unwrap();
        assert!(written_within(&wake, (1, 2)), "the first write");
        for _ in 0..10 {
            writer.write_all(b"a line\n").unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            wake.take_written().is_empty(),
            "one event, not one per write"
        );
        // The path renamed away (rotated): the open file is still the one watched.
        std::fs::rename(&log, dir.path().join("0.log.1")).unwrap();
        File::create(&log)
            .unwrap()
            .write_all(b"new file\n")
            .unwrap();
        w.watch_file(&reader, (1, 2)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(wake.take_written().is_empty(), "a write to the new file");
        writer.set_len(0).unwrap();
        assert!(
            written_within(&wake, (1, 2)),
            "a truncation of the watched one"
        );
        // Dropped before it fired: nothing comes.
        let wd = w.watch_file(&reader, (1, 2)).unwrap();
        w.unwatch_file(wd);
        writer.write_all(b"after\n").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(wake.take_written().is_empty(), "unwatched");
    }

    #[test]
    fn dropping_the_watcher_ends_its_blocked_thread() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Watcher::start(Arc::new(Wake::default())).unwrap();
        w.watch(dir.path()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(w);
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(10)).is_ok(),
            "the drop joined the thread"
        );
    }
}
