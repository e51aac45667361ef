//! Admission: which files are followed. Discovery's findings and the directory watches,
//! the exclusion decision, the wait for a pod's metadata, the open, and the recovery of
//! files a previous run left unfinished.

use super::*;

impl Tailer {
    pub(super) fn start_watcher(&mut self) {
        use notify::event::{EventKind, ModifyKind};
        let wake = self.wake.clone();
        let handler = move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                if matches!(
                    ev.kind,
                    EventKind::Create(_)
                        | EventKind::Remove(_)
                        | EventKind::Modify(ModifyKind::Name(_))
                ) {
                    if !matches!(ev.kind, EventKind::Remove(_)) {
                        for dir in ev.paths.iter().filter_map(|p| p.parent()) {
                            wake.note_changed_dir(dir.to_path_buf());
                        }
                    }
                    wake.request_rescan();
                }
            }
        };
        match notify::recommended_watcher(handler) {
            Ok(w) => self.watcher = Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "inotify unavailable; new files are found by periodic rescans only")
            }
        }
    }

    /// Watches the include directories that exist (again after they appear).
    pub(super) fn watch_dirs(&mut self) {
        use notify::Watcher;
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        for dir in self.discovery.watch_dirs() {
            if self.watched.contains(&dir) || !dir.is_dir() {
                continue;
            }
            match w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(dir);
                }
                Err(e) => {
                    tracing::debug!(dir = %dir.display(), error = %e, "cannot watch directory")
                }
            }
        }
    }

    /// Watches the directory of each followed file (draining ones included), and no other:
    /// a rename or a new file there (a rotation) asks for a rescan at once.
    pub(super) fn watch_container_dirs(&mut self) {
        use notify::Watcher;
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        // A rotated file still being drained keeps its directory watched: the new file
        // may come after the rename that the last scan saw.
        let wanted: HashSet<PathBuf> = self
            .files
            .iter()
            .filter_map(|f| f.real_path.parent().map(Path::to_path_buf))
            .filter(|d| !self.watched.contains(d))
            .collect();
        for dir in self.container_dirs.keys().filter(|d| !wanted.contains(*d)) {
            // Gone with its pod, most often: inotify has dropped it already.
            let _ = w.unwatch(dir);
        }
        self.container_dirs.retain(|d, _| wanted.contains(d));
        for dir in wanted {
            if self.container_dirs.contains_key(&dir) {
                continue;
            }
            match w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.container_dirs
                        .insert(dir, std::time::SystemTime::now());
                }
                Err(e) => {
                    tracing::debug!(dir = %dir.display(), error = %e, "cannot watch a container's log directory")
                }
            }
        }
    }

    /// `full`: a periodic rescan, which also looks through every watched container
    /// directory (an event-driven one looks only where something appeared).
    pub(super) fn rescan(&mut self, now: Instant, full: bool) {
        self.watch_dirs();
        let found = self.discovery.scan(&self.stats.links_refused);
        let present: HashSet<(u64, u64)> = found.iter().map(|f| (f.dev, f.inode)).collect();
        for fd in found {
            match self
                .files
                .iter_mut()
                .find(|f| f.dev == fd.dev && f.inode == fd.inode)
            {
                Some(f) => {
                    f.gone_since = None;
                    f.path = fd.path;
                }
                None => self.consider(fd, now),
            }
        }
        self.excluded.retain(|k| present.contains(k));
        self.deferred.retain(|k| present.contains(k));
        // A waiting file that vanished is held open: it stays until decided.
        for i in 0..self.files.len() {
            let f = &mut self.files[i];
            if f.gone_since.is_none() && !present.contains(&(f.dev, f.inode)) {
                tracing::debug!(path = %f.path.display(), "file rotated away or deleted; reading it to its end");
                f.gone_since = Some(now);
                Stats::add(&self.stats.rotations, 1);
            }
            if f.gone_since.is_none() && self.replaced(i) {
                self.restart_generation(i, now, None);
            }
        }
        self.seen
            .retain(|_, (_, at)| now.duration_since(*at) < SEEN_TTL);
        self.truncated
            .retain(|_, at| now.duration_since(*at) < SEEN_TTL);
        if !self.first_scan_done {
            self.recover_unfinished(&present, now);
        }
        self.first_scan_done = true;
        self.watch_container_dirs();
        let changed = self.wake.take_changed_dirs();
        let dirs: Vec<PathBuf> = if full {
            self.container_dirs.keys().cloned().collect()
        } else {
            changed.into_iter().collect()
        };
        self.read_missed_generations(&dirs, full, &present, now);
    }

    /// Generations that came and were rotated away between two looks (created and
    /// renamed within milliseconds, or copied by `copytruncate` before the agent read the
    /// file's first line): a file in a watched container directory, not compressed, not
    /// followed, written since the directory was first watched, whose first line is no
    /// file's read in this run or the last, is read from its start and let go.
    pub(super) fn read_missed_generations(
        &mut self,
        dirs: &[PathBuf],
        full: bool,
        present: &HashSet<(u64, u64)>,
        now: Instant,
    ) {
        // Files still there: a full look forgets those checked that are gone.
        let mut listed: HashSet<(u64, u64)> = HashSet::new();
        for dir in dirs {
            // File times come from the kernel's coarse clock, a tick behind ours.
            let Some(since) = self
                .container_dirs
                .get(dir)
                .map(|&t| t - Duration::from_millis(100))
            else {
                continue;
            };
            let Some(path) = self
                .files
                .iter()
                .find(|f| f.real_path.parent() == Some(dir.as_path()))
                .map(|f| f.path.clone())
            else {
                continue;
            };
            let Ok(listing) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in listing.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.ends_with(".gz") || name.ends_with(".tmp") {
                    continue;
                }
                let Ok(meta) = entry.metadata() else { continue };
                let key = (meta.dev(), meta.ino());
                listed.insert(key);
                if !meta.is_file()
                    || meta.len() == 0
                    || present.contains(&key)
                    || self.generations_checked.contains(&key)
                    || self.files.iter().any(|f| (f.dev, f.inode) == key)
                    || meta.modified().map_or(true, |m| m < since)
                {
                    continue;
                }
                let real_path = entry.path();
                let Ok(file) = File::open(&real_path) else {
                    continue;
                };
                let Ok(Some(fp)) = fingerprint(&file) else {
                    continue;
                };
                self.generations_checked.insert(key);
                let known = self.seen.keys().any(|id| id.fingerprint == fp)
                    || self.truncated.contains_key(&fp)
                    || self.checkpoints.has_fingerprint(fp)
                    || self.files.iter().any(|f| {
                        f.reading
                            .as_ref()
                            .is_some_and(|r| r.asm.context().identity.fingerprint == fp)
                    });
                if known {
                    continue;
                }
                tracing::info!(path = %real_path.display(), "reading a generation rotated away before it was opened");
                Stats::add(&self.stats.generations_recovered, 1);
                let n = self.files.len();
                self.open_with(
                    Found {
                        path: path.clone(),
                        real_path,
                        dev: key.0,
                        inode: key.1,
                    },
                    Some(file),
                    now,
                    now,
                );
                if self.files.len() > n {
                    if let Some(f) = self.files.last_mut() {
                        f.gone_since = Some(now);
                        Stats::add(&self.stats.rotations, 1);
                    }
                }
            }
        }
        if full {
            self.generations_checked.retain(|k| listed.contains(k));
        }
    }

    /// Finds the files of the last run that no glob matches now, typically rotated to
    /// `0.log.<time>` while we were down, and drains them from their checkpoint. A file the
    /// globs still match (`present`) is left to discovery, even while it waits for its pod
    /// or is excluded: recovering it too would read it twice.
    pub(super) fn recover_unfinished(&mut self, present: &HashSet<(u64, u64)>, now: Instant) {
        for entry in std::mem::take(&mut self.recover) {
            let id = entry.identity;
            if present.contains(&(id.dev, id.inode))
                || self
                    .files
                    .iter()
                    .any(|f| (f.dev, f.inode) == (id.dev, id.inode))
            {
                continue;
            }
            let Some(dir) = entry.real_path.as_deref().and_then(|p| p.parent()) else {
                continue;
            };
            let Ok(listing) = std::fs::read_dir(dir) else {
                continue;
            };
            let found = listing.flatten().find_map(|d| {
                let m = d.metadata().ok()?;
                (m.is_file() && (m.dev(), m.ino()) == (id.dev, id.inode)).then(|| d.path())
            });
            let Some(real_path) = found else { continue };
            tracing::info!(path = %real_path.display(), "resuming a file rotated away while logferry was down");
            self.open(
                Found {
                    path: entry.path.clone(),
                    real_path,
                    dev: id.dev,
                    inode: id.inode,
                },
                now,
            );
            let Some(f) = self
                .files
                .last_mut()
                .filter(|f| (f.dev, f.inode) == (id.dev, id.inode))
            else {
                continue;
            };
            if f.reading
                .as_ref()
                .is_some_and(|r| r.asm.context().identity == id)
            {
                f.gone_since = Some(now);
                Stats::add(&self.stats.rotations, 1);
            } else {
                // The inode now holds another file: not what the checkpoint is about.
                self.files.pop();
            }
        }
    }

    /// A newly found file: read it, skip it (excluded), or wait for its pod's metadata.
    pub(super) fn consider(&mut self, fd: Found, now: Instant) {
        let key = (fd.dev, fd.inode);
        if self.excluded.contains(&key)
            || self.waiting.iter().any(|(w, _, _)| (w.dev, w.inode) == key)
        {
            return;
        }
        if self.files.len() + self.waiting.len() >= self.settings.max_open_files {
            if self.deferred.insert(key) {
                Stats::add(&self.stats.files_deferred, 1);
                tracing::warn!(path = %fd.path.display(), max_open_files = self.settings.max_open_files, "too many files followed; this one waits until another is let go");
            }
            return;
        }
        self.deferred.remove(&key);
        self.decide(fd, None, now, now);
    }

    pub(super) fn decide(&mut self, fd: Found, held: Option<File>, since: Instant, now: Instant) {
        let kube = PathMetadata::from_paths(&fd.path, &fd.real_path);
        match self.exclusion.decide(&kube, now.duration_since(since)) {
            Decision::Read => self.open_with(fd, held, since, now),
            Decision::Skip => {
                tracing::info!(path = %fd.path.display(), "excluded; not read");
                Stats::add(&self.stats.files_excluded, 1);
                self.excluded.insert((fd.dev, fd.inode));
            }
            Decision::Wait => {
                // Held open meanwhile: a file deleted during the wait can still be read.
                let held = held.or_else(|| File::open(&fd.real_path).ok());
                self.waiting.push((fd, since, held));
            }
        }
    }

    /// Looks again at files waiting for their pod.
    pub(super) fn retry_waiting(&mut self, now: Instant) {
        for (fd, since, held) in std::mem::take(&mut self.waiting) {
            self.decide(fd, held, since, now);
        }
    }

    pub(super) fn open(&mut self, fd: Found, now: Instant) {
        self.open_with(fd, None, now, now)
    }

    pub(super) fn open_with(
        &mut self,
        fd: Found,
        held: Option<File>,
        since: Instant,
        now: Instant,
    ) {
        let opened = match held {
            Some(f) => Ok(f),
            None => File::open(&fd.real_path),
        };
        let file = match opened {
            Ok(f) => f,
            Err(e) => {
                // Repeats every turn while it lasts: logged once, then every 30 s with a count.
                if let Some(held_back) = crate::log_limit::allow("tail.open") {
                    tracing::warn!(path = %fd.path.display(), error = %e, held_back, "cannot open log file");
                }
                Stats::add(&self.stats.read_errors, 1);
                return;
            }
        };
        // The path may have been replaced between the scan and the open.
        let Ok(meta) = file.metadata() else { return };
        if (meta.dev(), meta.ino()) != (fd.dev, fd.inode) {
            self.wake.request_rescan();
            return;
        }
        tracing::debug!(path = %fd.path.display(), real = %fd.real_path.display(), "following file");
        Stats::add(&self.stats.files_opened, 1);
        let kube = PathMetadata::from_paths(&fd.path, &fd.real_path);
        if let (Some(open), Some(key)) = (self.exclusion.open_pods(), pod_key(&kube)) {
            open.opened(&key);
        }
        self.files.push(Followed {
            file,
            path: fd.path,
            real_path: fd.real_path,
            dev: fd.dev,
            inode: fd.inode,
            kube,
            reading: None,
            gone_since: None,
            last_data: now,
            at_eof: false,
            last_path_check: now,
            found_at_start: !self.first_scan_done,
            fresh: false,
            known_since: since,
        });
        let i = self.files.len() - 1;
        self.identify(i);
    }
}
