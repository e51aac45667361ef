//! Directory watches for new, renamed and deleted files, on inotify. Only those events are
//! asked for: a write to a file in a watched directory raises none. (A watch that also
//! reports writes, as `notify`'s do, costs one event per line a container writes: a third
//! of the agent's CPU at 50,000 lines a second.)

use super::wake::Wake;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

const MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::DELETE)
    .union(WatchMask::ONLYDIR);

type Dirs = Arc<Mutex<HashMap<WatchDescriptor, PathBuf>>>;

pub struct DirWatcher {
    watches: Watches,
    /// Each watched directory, its watch and how many asked for it.
    by_path: HashMap<PathBuf, (WatchDescriptor, usize)>,
    dirs: Dirs,
    stop: Arc<AtomicBool>,
    /// The event thread ended on an error: nothing is watched any more.
    failed: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DirWatcher {
    /// Starts the event thread: each event wakes the read loop for a rescan, and says in
    /// which directory a file appeared; lost events (the kernel's queue overflowed) ask
    /// for a look everywhere.
    pub fn start(wake: Arc<Wake>) -> io::Result<DirWatcher> {
        let mut inotify = Inotify::init()?;
        let watches = inotify.watches();
        let dirs: Dirs = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicBool::new(false));
        let (d, s, fail) = (dirs.clone(), stop.clone(), failed.clone());
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
                    let mut dirs = d.lock().unwrap_or_else(|e| e.into_inner());
                    for ev in events {
                        if ev.mask.contains(EventMask::Q_OVERFLOW) {
                            wake.request_full_rescan();
                            continue;
                        }
                        if ev.mask.contains(EventMask::IGNORED) {
                            dirs.remove(&ev.wd);
                            continue;
                        }
                        if !ev.mask.contains(EventMask::DELETE) {
                            if let Some(dir) = dirs.get(&ev.wd) {
                                wake.note_changed_dir(dir.clone());
                            }
                        }
                        wake.request_rescan();
                    }
                }
            })?;
        Ok(DirWatcher {
            watches,
            by_path: HashMap::new(),
            dirs,
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
        let wd = self.watches.add(dir, MASK)?;
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(wd.clone(), dir.to_path_buf());
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
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&wd);
        // Gone with its directory, most often: the kernel dropped it already.
        let _ = self.watches.remove(wd);
    }
}

impl Drop for DirWatcher {
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

    fn changed_within(wake: &Wake, dir: &Path) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if wake.take_changed_dirs().contains(dir) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn creations_and_renames_are_reported_writes_are_not() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let wake = Arc::new(Wake::default());
        let mut w = DirWatcher::start(wake.clone()).unwrap();
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

    #[test]
    fn dropping_the_watcher_ends_its_blocked_thread() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = DirWatcher::start(Arc::new(Wake::default())).unwrap();
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
