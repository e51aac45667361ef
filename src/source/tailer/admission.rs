//! Admission: which files are followed. Discovery's findings and the directory watches,
//! the exclusion decision, the wait for a pod's metadata, the open, and the recovery of
//! files a previous run left unfinished.

use super::*;

/// The file that is the generation `id` names, last seen at `last_path`: there or in its
/// directory, the same inode with the same first line, or (kubelet compressed it since) a
/// `.gz` whose content begins with that line.
fn find_generation(
    last_path: &Path,
    id: FileIdentity,
) -> Option<(PathBuf, File, std::fs::Metadata)> {
    // Most often still where it was (the current file): no directory to list.
    if let Some((path, file, meta, false)) = generation_at(last_path, id) {
        return Some((path, file, meta));
    }
    let mut compressed = None;
    for d in std::fs::read_dir(last_path.parent()?).ok()?.flatten() {
        match generation_at(&d.path(), id) {
            Some((path, file, meta, false)) => return Some((path, file, meta)),
            Some((path, file, meta, true)) => compressed = Some((path, file, meta)),
            None => {}
        }
    }
    compressed
}

/// The file at `path` if it is generation `id`: its inode with its first line, or a `.gz`
/// of it under another inode (the last item says so).
fn generation_at(
    path: &Path,
    id: FileIdentity,
) -> Option<(PathBuf, File, std::fs::Metadata, bool)> {
    let meta = std::fs::metadata(path).ok()?;
    let same_inode = (meta.dev(), meta.ino()) == (id.dev, id.inode);
    let gz = path.to_string_lossy().ends_with(".gz");
    if !meta.is_file() || (!same_inode && !gz) {
        return None;
    }
    let file = open_log(path).ok()?;
    let (_, fp) = compressed::content_fingerprint(&file);
    // Another first line: the inode now holds another file.
    matches!(fp, Ok(Some(fp)) if fp == id.fingerprint)
        .then(|| (path.to_path_buf(), file, meta, !same_inode))
}

/// The order generations of a directory are read in, oldest first: kubelet compresses all
/// rotated files but the newest, then by time (and name, for files of the same tick).
fn oldest_first(
    compressed: bool,
    modified: Option<std::time::SystemTime>,
    path: &Path,
) -> (bool, Option<std::time::SystemTime>, PathBuf) {
    (!compressed, modified, path.to_path_buf())
}

/// A file of a container directory looked at for a missed generation, as it was then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Checked {
    dev: u64,
    inode: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

/// A generation found in a container directory that no one was reading.
struct Missed {
    found: Found,
    file: File,
    compressed: bool,
    modified: std::time::SystemTime,
    known: Option<Known>,
    fingerprint: u64,
}

#[derive(Clone, Copy)]
enum Known {
    Reading,
    /// Read up to an offset under an identity, in the last run (its checkpoint) or this
    /// one; and where the events end that the last run may have sent (0: none).
    At(FileIdentity, u64, u64),
}

impl Tailer {
    pub(super) fn start_watcher(&mut self) {
        match Watcher::start(self.wake.clone()) {
            Ok(w) => self.watcher = Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "inotify unavailable; new files are found by periodic rescans only")
            }
        }
    }

    /// Watches the include directories that exist (again after they appear).
    pub(super) fn watch_dirs(&mut self) {
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        for dir in self.discovery.watch_dirs() {
            if self.watched.contains(&dir) || !dir.is_dir() {
                continue;
            }
            match w.watch(&dir) {
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
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        // A rotated file still being drained keeps its directory watched: the new file
        // may come after the rename that the last scan saw.
        let wanted: HashSet<&Path> = self
            .files
            .iter()
            .filter_map(|f| f.real_path.parent())
            .filter(|d| !self.watched.contains(*d))
            .collect();
        for dir in self
            .container_dirs
            .keys()
            .filter(|d| !wanted.contains(d.as_path()))
        {
            w.unwatch(dir);
        }
        self.container_dirs
            .retain(|d, _| wanted.contains(d.as_path()));
        for dir in wanted {
            if self.container_dirs.contains_key(dir) {
                continue;
            }
            match w.watch(dir) {
                Ok(()) => {
                    // At a restart, what was written while logferry was down counts too.
                    let now = std::time::SystemTime::now();
                    // File times come from the kernel's coarse clock, a tick behind ours.
                    let since = match self.resume_since {
                        Some(saved) => saved.min(now),
                        None => now - Duration::from_millis(100),
                    };
                    self.container_dirs.insert(dir.to_path_buf(), since);
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
        let found = self.discovery.scan(&self.stats);
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
        let changed = self.wake.take_changed_dirs();
        // A waiting file that vanished is held open: it stays until decided.
        for i in 0..self.files.len() {
            let f = &self.files[i];
            if f.gone_since.is_none() && !present.contains(&(f.dev, f.inode)) {
                tracing::debug!(path = %f.path.display(), "file rotated away or deleted; reading it to its end");
                self.mark_rotated(i, now);
            }
            // Truncated and written again? Looked at where a file appeared, since the new
            // content may be what was copied or compressed there (rotated files too), and
            // on idle files; a file read since the last look was checked at that read.
            let f = &self.files[i];
            let beside_new = f.real_path.parent().is_some_and(|d| changed.contains(d));
            // A watched file's truncation raises its event.
            let idle = f.at_eof
                && f.watch.is_none()
                && now.duration_since(f.last_data) >= self.settings.rescan_interval;
            let look = f.compressed.is_none() && (beside_new || (f.gone_since.is_none() && idle));
            if look && self.replaced(i) {
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
        self.resume_since = None;
        // A generation found compressed is known by the first line of the file it came
        // from: files not yet identified (no first line at their last look) are now.
        for i in 0..self.files.len() {
            if self.files[i].reading.is_none() {
                self.identify(i);
            }
        }
        let dirs: Vec<PathBuf> = if full {
            self.container_dirs.keys().cloned().collect()
        } else {
            changed.into_iter().collect()
        };
        self.read_missed_generations(&dirs, full, &present, now);
    }

    /// Generations that came and were rotated away between two looks (created and
    /// renamed within milliseconds, copied by `copytruncate` before the agent read the
    /// file's first line, or compressed by kubelet before it was opened): a file in a
    /// watched container directory, not followed, not half-compressed (`.tmp`), written
    /// since the directory was first watched, whose first line is no file's read in this
    /// run or the last. Read oldest first, and let go at their end.
    pub(super) fn read_missed_generations(
        &mut self,
        dirs: &[PathBuf],
        full: bool,
        present: &HashSet<(u64, u64)>,
        now: Instant,
    ) {
        // Files still there: a full look forgets those checked that are gone.
        let mut listed: HashSet<Checked> = HashSet::new();
        let mut missed: Vec<Missed> = Vec::new();
        // A full look goes through every container directory: one pass over the files,
        // not one per directory.
        let mut path_in: HashMap<&Path, &PathBuf> = HashMap::new();
        let mut followed: HashSet<(u64, u64)> = HashSet::new();
        for f in &self.files {
            if let Some(dir) = f.real_path.parent() {
                path_in.entry(dir).or_insert(&f.path);
            }
            followed.insert((f.dev, f.inode));
        }
        for dir in dirs {
            let Some(&since) = self.container_dirs.get(dir) else {
                continue;
            };
            let Some(path) = path_in.get(dir.as_path()).map(|p| (*p).clone()) else {
                continue;
            };
            let Ok(listing) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in listing.flatten() {
                if entry.file_name().to_string_lossy().ends_with(".tmp") {
                    continue;
                }
                let Ok(meta) = entry.metadata() else { continue };
                let key = (meta.dev(), meta.ino());
                // Inodes are reused at once in a storm: a file is known as checked by its
                // inode, size and time together.
                let checked = Checked {
                    dev: key.0,
                    inode: key.1,
                    len: meta.len(),
                    modified: meta.modified().ok(),
                };
                listed.insert(checked);
                if !meta.is_file()
                    || meta.len() == 0
                    || present.contains(&key)
                    || self.generations_checked.contains(&checked)
                    || followed.contains(&key)
                    || meta.modified().map_or(true, |m| m < since)
                {
                    continue;
                }
                let real_path = entry.path();
                let Ok(file) = open_log(&real_path) else {
                    continue;
                };
                let (compressed, fp) = compressed::content_fingerprint(&file);
                let Ok(Some(fp)) = fp else { continue };
                self.generations_checked.insert(checked);
                let known = self.known_generation(fp);
                if known.is_some() && !compressed {
                    continue;
                }
                let found = Found {
                    path: path.clone(),
                    real_path,
                    dev: key.0,
                    inode: key.1,
                };
                missed.push(Missed {
                    found,
                    file,
                    compressed,
                    modified: meta.modified().unwrap_or(std::time::UNIX_EPOCH),
                    known,
                    fingerprint: fp,
                });
            }
        }
        if full {
            self.generations_checked.retain(|k| listed.contains(k));
        }
        missed.sort_by_key(|m| oldest_first(m.compressed, Some(m.modified), &m.found.real_path));
        for m in missed {
            let (identity, offset, replay_end) = match m.known {
                // Read already (its original, or in part): only what is beyond is read,
                // as the same file, so that its documents keep their ids.
                Some(Known::At(identity, offset, replay_end)) => (identity, offset, replay_end),
                // Being read through the original: nothing to do here.
                Some(Known::Reading) => continue,
                None => (
                    FileIdentity {
                        dev: m.found.dev,
                        inode: m.found.inode,
                        fingerprint: m.fingerprint,
                    },
                    0,
                    0,
                ),
            };
            if m.compressed {
                let opened =
                    self.open_compressed(m.found, m.file, identity, offset, replay_end, now);
                if opened && m.known.is_none() {
                    Stats::add(&self.stats.generations_recovered, 1);
                }
                continue;
            }
            tracing::info!(path = %m.found.real_path.display(), "reading a generation rotated away before it was opened");
            Stats::add(&self.stats.generations_recovered, 1);
            let n = self.files.len();
            self.open_with(m.found, Some(m.file), now, now);
            if self.files.len() > n {
                self.mark_rotated(n, now);
            }
        }
    }

    /// What is known of a generation with this first line: being read, or read (in this
    /// run or the last) up to an offset, under an identity.
    fn known_generation(&self, fp: u64) -> Option<Known> {
        let reading = self.files.iter().any(|f| {
            f.reading
                .as_ref()
                .is_some_and(|r| r.asm.context().identity.fingerprint == fp)
        });
        if reading || self.truncated.contains_key(&fp) {
            return Some(Known::Reading);
        }
        self.seen
            .iter()
            .find(|(id, _)| id.fingerprint == fp)
            .map(|(id, (o, _))| Known::At(*id, *o, 0))
            .or_else(|| {
                self.checkpoints
                    .by_fingerprint(fp)
                    // A generation the last run was reading: what it reserved may have been sent.
                    .map(|(id, o)| Known::At(id, o, self.checkpoints.replay_end(&id, u64::MAX)))
            })
    }

    /// Reads a compressed generation from `offset` of its content, as `identity`: that of
    /// the file it was before when it is known, so that its documents keep their ids.
    /// Returns whether there was anything left to read.
    pub(super) fn open_compressed(
        &mut self,
        fd: Found,
        file: File,
        identity: FileIdentity,
        offset: u64,
        replay_end: u64,
        now: Instant,
    ) -> bool {
        let content = match Decompressed::open_at(&file, offset) {
            Ok(Some(c)) => c,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(path = %fd.real_path.display(), error = %e, "cannot read a compressed generation");
                Stats::add(&self.stats.read_errors, 1);
                return false;
            }
        };
        tracing::info!(path = %fd.real_path.display(), offset, "reading a generation compressed before it was read to its end");
        Stats::add(&self.stats.generations_decompressed, 1);
        let i = self.follow(file, fd, now, now);
        self.files[i].compressed = Some(Box::new(content));
        self.start_reading(i, identity, offset, replay_end);
        self.mark_rotated(i, now);
        true
    }

    /// Finds the files of the last run that no glob matches now, typically rotated to
    /// `0.log.<time>` while we were down (or compressed to `.gz` since), and drains them
    /// from their checkpoint, oldest first. A file the globs still match (`present`) is
    /// left to discovery, even while it waits for its pod or is excluded: recovering it
    /// too would read it twice.
    pub(super) fn recover_unfinished(&mut self, present: &HashSet<(u64, u64)>, now: Instant) {
        let mut found: Vec<(Entry, Found, File, bool, std::fs::Metadata)> = Vec::new();
        for entry in std::mem::take(&mut self.recover) {
            let id = entry.identity;
            let Some(last_path) = entry.real_path.as_deref() else {
                continue;
            };
            let Some((real_path, file, meta)) = find_generation(last_path, id) else {
                continue;
            };
            // The inode of a deleted file is soon another's: only the same inode with the
            // same first line is the file discovery found.
            let key = (meta.dev(), meta.ino());
            if present.contains(&key) || self.files.iter().any(|f| (f.dev, f.inode) == key) {
                continue;
            }
            let fd = Found {
                path: entry.path.clone(),
                real_path,
                dev: meta.dev(),
                inode: meta.ino(),
            };
            let compressed = is_gzip(&file);
            found.push((entry, fd, file, compressed, meta));
        }
        found.sort_by_key(|(_, fd, _, compressed, meta)| {
            oldest_first(*compressed, meta.modified().ok(), &fd.real_path)
        });
        for (entry, fd, file, compressed, _) in found {
            if compressed {
                self.open_compressed(fd, file, entry.identity, entry.offset, u64::MAX, now);
                continue;
            }
            tracing::info!(path = %fd.real_path.display(), "resuming a file rotated away while logferry was down");
            let n = self.files.len();
            self.open_with(fd, Some(file), now, now);
            if self.files.len() > n {
                self.mark_rotated(n, now);
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
                let held = held.or_else(|| open_log(&fd.real_path).ok());
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

    pub(super) fn open_with(
        &mut self,
        fd: Found,
        held: Option<File>,
        since: Instant,
        now: Instant,
    ) {
        let opened = match held {
            Some(f) => Ok(f),
            None => open_log(&fd.real_path),
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
        let i = self.follow(file, fd, since, now);
        self.identify(i);
    }

    /// Takes a file in; returns its index.
    fn follow(&mut self, file: File, fd: Found, since: Instant, now: Instant) -> usize {
        tracing::debug!(path = %fd.path.display(), real = %fd.real_path.display(), "following file");
        Stats::add(&self.stats.files_opened, 1);
        let kube = PathMetadata::from_paths(&fd.path, &fd.real_path);
        if let (Some(open), Some(key)) = (self.exclusion.open_pods(), pod_key(&kube)) {
            open.opened(&key);
        }
        let mut f = Followed::new(file, fd, kube, since, now);
        f.found_at_start = !self.first_scan_done;
        self.files.push(f);
        self.files.len() - 1
    }
}
