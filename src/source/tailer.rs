//! The read loop. One owner holds every followed file: it reads each in turn (a bounded
//! quantum per pass, so a noisy container cannot starve the others), follows rotation,
//! truncation and deletion, and sends event batches down a bounded channel (backpressure).

use super::assembler::{Assembler, AssemblyRules};
use super::discover::{Discovery, Found};
use super::fingerprint::{fingerprint, fingerprint_unterminated};
use super::reader::{LineReader, RawLine};
use super::wake::Wake;
use crate::checkpoint::{CheckpointLookup, CheckpointMsg, Entry};
use crate::config::{Config, StartAt};
use crate::encode::doc_id::id_seed;
use crate::encode::FileMetadata;
use crate::enrich::exclude::{Decision, Exclusion};
use crate::enrich::kube::cache::pod_key;
use crate::enrich::path::PathMetadata;
use crate::event::{FileContext, FileIdentity, FileKey, LogEvent};
use crate::stats::Stats;
use memchr::memrchr;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Events per batch sent down the pipeline.
const BATCH_EVENTS: usize = 1024;
/// How often an idle file's path is checked for a rotation, at least.
const PATH_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Rescans asked for by directory events come at most this often: a storm of rotations
/// on many containers costs one scan per interval, not one per event.
const MIN_RESCAN_GAP: Duration = Duration::from_millis(20);
/// Shortest sleep of an idle loop; doubled up to `max_idle_poll`.
const MIN_IDLE: Duration = Duration::from_millis(5);
/// How long the identities of released files are remembered in this run.
const SEEN_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone)]
pub struct TailerSettings {
    pub rescan_interval: Duration,
    pub start_at: StartAt,
    pub read_size: usize,
    pub quantum: usize,
    pub rotate_wait: Duration,
    pub max_idle_poll: Duration,
    pub max_raw_line: usize,
    /// Files followed (or held waiting for their pod) at most; more wait for room.
    pub max_open_files: usize,
    pub host_name: String,
    /// Stop once every file is read to its end (`debug --once`).
    pub once: bool,
}

impl TailerSettings {
    pub fn new(cfg: &Config, host_name: String, once: bool) -> Self {
        let s = &cfg.source;
        let max_line = s.max_line_bytes as usize;
        TailerSettings {
            rescan_interval: s.rescan_interval,
            start_at: s.start_at,
            read_size: s.read_buffer_bytes as usize,
            quantum: s.max_read_bytes_per_file as usize,
            rotate_wait: s.rotate_wait,
            max_idle_poll: s.max_idle_poll,
            // A raw line carries the runtime's prefix or JSON escaping around the content.
            max_raw_line: max_line.saturating_mul(2).max(max_line + 4096),
            max_open_files: s.max_open_files as usize,
            host_name,
            once,
        }
    }
}

/// The pipeline downstream is gone; nothing more can be delivered.
#[derive(Debug, thiserror::Error)]
#[error("the event channel is closed")]
pub struct ChannelClosed;

struct Reading {
    reader: LineReader,
    asm: Assembler,
    /// Events already added to their format's counter.
    counted: u64,
}

impl Reading {
    /// Adds the events emitted since the last call to their file format's counter.
    fn count_format(&mut self, stats: &Stats) {
        let emitted = self.asm.emitted();
        let n = emitted - self.counted;
        self.counted = emitted;
        let counter = match self.asm.format() {
            Some(crate::source::format::Detected::Docker) => &stats.events_docker,
            _ => &stats.events_cri,
        };
        Stats::add(counter, n);
    }
}

struct Followed {
    file: File,
    path: PathBuf,
    real_path: PathBuf,
    dev: u64,
    inode: u64,
    kube: PathMetadata,
    reading: Option<Reading>,
    /// No longer found by discovery (rotated away or deleted): drain, then let go.
    gone_since: Option<Instant>,
    last_data: Instant,
    at_eof: bool,
    last_path_check: Instant,
    found_at_start: bool,
    /// Truncated: read from 0 whatever was known of it.
    fresh: bool,
    /// When discovery first saw it (before any wait for its pod).
    known_since: Instant,
}

pub struct Tailer {
    settings: TailerSettings,
    rules: Arc<AssemblyRules>,
    discovery: Discovery,
    files: Vec<Followed>,
    seen: HashMap<FileIdentity, (u64, Instant)>,
    checkpoints: CheckpointLookup,
    /// Files the last run was reading: looked for at the first scan even when no glob
    /// finds them any more (rotated or removed while we were down).
    recover: Vec<Entry>,
    first_start: bool,
    first_scan_done: bool,
    next_key: FileKey,
    events_tx: mpsc::Sender<Vec<LogEvent>>,
    ckpt_tx: mpsc::UnboundedSender<CheckpointMsg>,
    wake: Arc<Wake>,
    stats: Arc<Stats>,
    raw: Vec<RawLine>,
    out: Vec<LogEvent>,
    watcher: Option<notify::RecommendedWatcher>,
    watched: HashSet<PathBuf>,
    /// The directories the followed files really are in (`/var/log/pods/…/<container>`),
    /// watched: kubelet's rotations happen there, unseen from `/var/log/containers`.
    container_dirs: HashSet<PathBuf>,
    exclusion: Exclusion,
    /// Files whose pod is excluded, by device and inode.
    excluded: HashSet<(u64, u64)>,
    /// Files found while `max_open_files` were followed: looked at again on each scan.
    deferred: HashSet<(u64, u64)>,
    /// Files waiting for their pod's metadata before being read or skipped, since when.
    waiting: Vec<(Found, Instant, Option<File>)>,
}

impl Tailer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: TailerSettings,
        rules: Arc<AssemblyRules>,
        discovery: Discovery,
        checkpoints: CheckpointLookup,
        recover: Vec<Entry>,
        first_start: bool,
        events_tx: mpsc::Sender<Vec<LogEvent>>,
        ckpt_tx: mpsc::UnboundedSender<CheckpointMsg>,
        wake: Arc<Wake>,
        stats: Arc<Stats>,
        exclusion: Exclusion,
    ) -> Self {
        Tailer {
            settings,
            rules,
            discovery,
            files: Vec::new(),
            seen: HashMap::new(),
            checkpoints,
            recover,
            first_start,
            first_scan_done: false,
            next_key: 1,
            events_tx,
            ckpt_tx,
            wake,
            stats,
            raw: Vec::new(),
            out: Vec::new(),
            watcher: None,
            watched: HashSet::new(),
            container_dirs: HashSet::new(),
            exclusion,
            excluded: HashSet::new(),
            deferred: HashSet::new(),
            waiting: Vec::new(),
        }
    }

    /// Runs until stopped (or, with `once`, until every file is read to its end).
    /// Held-back lines are not flushed at a stop: their offsets stay uncommitted and they
    /// are read again on the next start.
    pub fn run(mut self) -> Result<(), ChannelClosed> {
        if !self.settings.once {
            self.start_watcher();
        }
        let mut next_rescan = Instant::now();
        let mut last_rescan = Instant::now();
        let mut rescan_pending = false;
        let mut idle = MIN_IDLE;
        loop {
            if self.wake.is_stopped() {
                break;
            }
            let now = Instant::now();
            rescan_pending |= self.wake.take_rescan();
            if now >= next_rescan
                || (rescan_pending && now.duration_since(last_rescan) >= MIN_RESCAN_GAP)
            {
                self.rescan(now);
                next_rescan = now + self.settings.rescan_interval;
                last_rescan = now;
                rescan_pending = false;
            }
            if !self.waiting.is_empty() {
                self.retry_waiting(now);
            }
            let read = self.read_pass()?;
            let now = Instant::now();
            self.flush_expired(now);
            self.release_drained(now);
            self.send()?;
            if read > 0 {
                idle = MIN_IDLE;
                continue;
            }
            if self.settings.once && self.files.iter().all(|f| f.at_eof || f.reading.is_none()) {
                self.finish_all(now);
                self.send()?;
                break;
            }
            let mut timeout = idle.min(next_rescan.saturating_duration_since(now));
            if rescan_pending {
                timeout =
                    timeout.min((last_rescan + MIN_RESCAN_GAP).saturating_duration_since(now));
            }
            if let Some(d) = self.next_deadline() {
                timeout = timeout.min(d.saturating_duration_since(now));
            }
            self.wake.wait(timeout);
            idle = (idle * 2).min(self.settings.max_idle_poll);
        }
        Ok(())
    }

    fn start_watcher(&mut self) {
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
    fn watch_dirs(&mut self) {
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
    fn watch_container_dirs(&mut self) {
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
        for dir in self.container_dirs.difference(&wanted) {
            // Gone with its pod, most often: inotify has dropped it already.
            let _ = w.unwatch(dir);
        }
        self.container_dirs.retain(|d| wanted.contains(d));
        for dir in wanted {
            if self.container_dirs.contains(&dir) {
                continue;
            }
            match w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.container_dirs.insert(dir);
                }
                Err(e) => {
                    tracing::debug!(dir = %dir.display(), error = %e, "cannot watch a container's log directory")
                }
            }
        }
    }

    fn rescan(&mut self, now: Instant) {
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
                self.restart_generation(i, now);
            }
        }
        self.seen
            .retain(|_, (_, at)| now.duration_since(*at) < SEEN_TTL);
        if !self.first_scan_done {
            self.recover_unfinished(&present, now);
        }
        self.first_scan_done = true;
        self.watch_container_dirs();
    }

    /// Finds the files of the last run that no glob matches now, typically rotated to
    /// `0.log.<time>` while we were down, and drains them from their checkpoint. A file the
    /// globs still match (`present`) is left to discovery, even while it waits for its pod
    /// or is excluded: recovering it too would read it twice.
    fn recover_unfinished(&mut self, present: &HashSet<(u64, u64)>, now: Instant) {
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

    /// Whether a live file was truncated or its content replaced behind our back.
    fn replaced(&self, i: usize) -> bool {
        let f = &self.files[i];
        let Some(r) = &f.reading else { return false };
        let shrunk = f
            .file
            .metadata()
            .is_ok_and(|m| m.len() < r.reader.read_position());
        let rewritten = matches!(fingerprint(&f.file), Ok(Some(fp)) if fp != r.asm.context().identity.fingerprint);
        shrunk || rewritten
    }

    /// A newly found file: read it, skip it (excluded), or wait for its pod's metadata.
    fn consider(&mut self, fd: Found, now: Instant) {
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

    fn decide(&mut self, fd: Found, held: Option<File>, since: Instant, now: Instant) {
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
    fn retry_waiting(&mut self, now: Instant) {
        for (fd, since, held) in std::mem::take(&mut self.waiting) {
            self.decide(fd, held, since, now);
        }
    }

    fn open(&mut self, fd: Found, now: Instant) {
        self.open_with(fd, None, now, now)
    }

    fn open_with(&mut self, fd: Found, held: Option<File>, since: Instant, now: Instant) {
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

    /// Starts reading once the file has a first line to fingerprint.
    fn identify(&mut self, i: usize) {
        self.identify_with(i, fingerprint);
    }

    fn identify_with(&mut self, i: usize, fingerprint: fn(&File) -> std::io::Result<Option<u64>>) {
        let f = &mut self.files[i];
        let fp = match fingerprint(&f.file) {
            Ok(Some(fp)) => fp,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(path = %f.path.display(), error = %e, "cannot read log file");
                return;
            }
        };
        let identity = FileIdentity {
            dev: f.dev,
            inode: f.inode,
            fingerprint: fp,
        };
        let size = f.file.metadata().map(|m| m.len()).unwrap_or(0);
        let known = if f.fresh {
            None
        } else {
            self.seen
                .get(&identity)
                .map(|(o, _)| *o)
                .or_else(|| self.checkpoints.get(&identity))
        };
        let offset = match known {
            Some(o) if o <= size => o,
            Some(_) => 0, // shorter than what was read: truncated while we were away
            None if f.found_at_start
                && self.first_start
                && self.settings.start_at == StartAt::End =>
            {
                end_of_last_line(&f.file, size)
            }
            None => 0,
        };
        f.fresh = false;
        if let Err(e) = f.file.seek(SeekFrom::Start(offset)) {
            tracing::warn!(path = %f.path.display(), error = %e, "cannot seek log file");
            return;
        }
        let key = self.next_key;
        self.next_key += 1;
        let ctx = Arc::new(FileContext {
            key,
            kube: f.kube.clone(),
            identity,
            path: f.path.clone(),
            id_seed: id_seed(&identity),
            path_fragment: FileMetadata::path_fragment(&f.path),
            metadata: FileMetadata::metadata_fragment(&f.kube, &self.settings.host_name),
            known_since: f.known_since,
        });
        let _ = self.ckpt_tx.send(CheckpointMsg::Opened {
            key,
            identity,
            path: f.path.clone(),
            real_path: f.real_path.clone(),
            offset,
        });
        f.reading = Some(Reading {
            reader: LineReader::new(offset, self.settings.read_size, self.settings.max_raw_line),
            asm: Assembler::new(ctx, self.rules.clone()),
            counted: 0,
        });
    }

    /// One turn over every file; returns the bytes read.
    fn read_pass(&mut self) -> Result<usize, ChannelClosed> {
        let mut total = 0;
        for i in 0..self.files.len() {
            if self.files[i].reading.is_none() {
                self.identify(i);
            }
            let now = Instant::now();
            let quantum = self.settings.quantum;
            let f = &mut self.files[i];
            let Some(r) = f.reading.as_mut() else {
                f.at_eof = true;
                continue;
            };
            // The size says what there is to read: idle files cost one fstat, no buffer.
            let size = match f.file.metadata() {
                Ok(m) => m.len(),
                Err(e) => {
                    // Repeats every turn while it lasts: logged once, then every 30 s with a count.
                    if let Some(held_back) = crate::log_limit::allow("tail.stat") {
                        tracing::warn!(path = %f.path.display(), error = %e, held_back, "cannot stat log file; will retry");
                    }
                    Stats::add(&self.stats.read_errors, 1);
                    f.at_eof = true;
                    continue;
                }
            };
            let position = r.reader.read_position();
            if size < position {
                self.restart_generation(i, now);
                continue;
            }
            let n = match r
                .reader
                .read(&mut f.file, quantum, size - position, &mut self.raw)
            {
                Ok(n) => n,
                Err(e) => {
                    // Repeats every turn while it lasts: logged once, then every 30 s with a count.
                    if let Some(held_back) = crate::log_limit::allow("tail.read_retry") {
                        tracing::warn!(path = %f.path.display(), error = %e, held_back, "read failed; will retry");
                    }
                    Stats::add(&self.stats.read_errors, 1);
                    0
                }
            };
            // Truncated and rewritten past our offset since the last read: what was just
            // read is the middle of new content. Checked after the read, so data read before
            // a truncation is never thrown away.
            if n > 0
                && !matches!(fingerprint(&f.file), Ok(Some(fp)) if fp == r.asm.context().identity.fingerprint)
            {
                self.raw.clear();
                self.restart_generation(i, now);
                total += n;
                continue;
            }
            total += n;
            Stats::add(&self.stats.bytes_read, n as u64);
            Stats::add(&self.stats.lines_read, self.raw.len() as u64);
            for raw in self.raw.drain(..) {
                r.asm.push(raw, now, &mut self.out);
            }
            f.at_eof = n == 0;
            if n > 0 {
                f.last_data = now;
            }
            // Also while a file is read at full speed: a rotation must not wait for its end.
            self.check_path(i, now);
            if self.out.len() >= BATCH_EVENTS {
                self.send()?;
            }
        }
        Ok(total)
    }

    /// Has the file's path moved on to a new file (rotation)? The fallback to the watch on
    /// its directory.
    fn check_path(&mut self, i: usize, now: Instant) {
        let f = &mut self.files[i];
        // The old file is read to its end through the open fd: at most once a second, so
        // idle files cost little.
        let every = self.settings.max_idle_poll.max(PATH_CHECK_INTERVAL);
        if f.gone_since.is_none() && now.duration_since(f.last_path_check) >= every {
            f.last_path_check = now;
            let moved =
                std::fs::metadata(&f.path).map_or(true, |m| (m.dev(), m.ino()) != (f.dev, f.inode));
            if moved {
                self.wake.request_rescan();
            }
        }
    }

    /// The file was truncated (copytruncate) or rewritten: what was held of the old content
    /// is shipped, and reading starts again at 0 as a new generation.
    fn restart_generation(&mut self, i: usize, now: Instant) {
        let f = &mut self.files[i];
        tracing::info!(path = %f.path.display(), "file truncated; reading it again from the start");
        Stats::add(&self.stats.truncations, 1);
        if let Some(mut r) = f.reading.take() {
            let position = r.reader.read_position();
            let identity = r.asm.context().identity;
            let copy = find_copy(&f.real_path, identity, position);
            if copy.is_none() {
                Stats::add(&self.stats.truncations_unrecovered, 1);
            }
            match copy.filter(|c| c.len > position) {
                // copytruncate copied the file before truncating it: what was not read yet
                // is in the copy. The same reading goes on there, to its end.
                Some(copy) => {
                    Stats::add(&self.stats.truncation_recovered_bytes, copy.len - position);
                    tracing::info!(copy = %copy.path.display(), bytes = copy.len - position, "reading the rest of the truncated file from its copy");
                    let followed = Followed {
                        file: copy.file,
                        path: f.path.clone(),
                        real_path: copy.path,
                        dev: copy.dev,
                        inode: copy.inode,
                        kube: f.kube.clone(),
                        reading: Some(r),
                        gone_since: Some(now),
                        last_data: now,
                        at_eof: false,
                        last_path_check: now,
                        found_at_start: false,
                        fresh: false,
                        known_since: f.known_since,
                    };
                    self.files.push(followed);
                }
                None => {
                    r.asm.flush_all(now, &mut self.out);
                    r.count_format(&self.stats);
                    self.seen.remove(&identity);
                    let _ = self.ckpt_tx.send(CheckpointMsg::Released {
                        key: r.asm.context().key,
                        events: r.asm.emitted(),
                    });
                }
            }
        }
        let f = &mut self.files[i];
        f.fresh = true;
        f.at_eof = false;
        if f.file.seek(SeekFrom::Start(0)).is_ok() {
            self.identify(i);
        }
    }

    /// Ships held-back groups whose wait is over. Only files read to their end count: a
    /// group whose next lines are already in the file waits for us, not for the writer
    /// (under backpressure or with many files, reading may come back late).
    fn flush_expired(&mut self, now: Instant) {
        for f in self.files.iter_mut().filter(|f| f.at_eof) {
            if let Some(r) = &mut f.reading {
                if r.asm.next_deadline().is_some_and(|d| d <= now) {
                    r.asm.flush_expired(now, &mut self.out);
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.files
            .iter()
            .filter(|f| f.at_eof)
            .filter_map(|f| f.reading.as_ref().and_then(|r| r.asm.next_deadline()))
            .min()
    }

    /// Lets go of rotated or deleted files that stayed at their end for `rotate_wait`.
    fn release_drained(&mut self, now: Instant) {
        let wait = self.settings.rotate_wait;
        let mut i = 0;
        while i < self.files.len() {
            let f = &self.files[i];
            let done = f.at_eof
                && f.gone_since.is_some_and(|g| now.duration_since(g) >= wait)
                && now.duration_since(f.last_data) >= wait;
            if done {
                self.release(i, now);
            } else {
                i += 1;
            }
        }
    }

    /// Ships everything left of file `i`, even an unterminated last line, and drops it.
    fn release(&mut self, i: usize, now: Instant) {
        if self.files[i].reading.is_none() {
            // It never got a whole first line: what it holds is all it will ever hold.
            self.identify_with(i, fingerprint_unterminated);
            let f = &mut self.files[i];
            if let Some(r) = f.reading.as_mut() {
                let size = f.file.metadata().map_or(0, |m| m.len());
                let available = size.saturating_sub(r.reader.read_position());
                if let Err(e) = r
                    .reader
                    .read(&mut f.file, usize::MAX, available, &mut self.raw)
                {
                    tracing::warn!(path = %f.path.display(), error = %e, "read failed");
                }
                for raw in self.raw.drain(..) {
                    r.asm.push(raw, now, &mut self.out);
                }
            }
        }
        let f = self.files.swap_remove(i);
        tracing::debug!(path = %f.path.display(), "file read to its end; letting it go");
        Stats::add(&self.stats.files_released, 1);
        if let (Some(open), Some(key)) = (self.exclusion.open_pods(), pod_key(&f.kube)) {
            open.released(&key, now);
        }
        if let Some(mut r) = f.reading {
            if let Some(rest) = r.reader.take_remainder() {
                r.asm.push(rest, now, &mut self.out);
            }
            r.asm.flush_all(now, &mut self.out);
            r.count_format(&self.stats);
            Stats::add(&self.stats.bytes_dropped, r.reader.skipped_bytes);
            let ctx = r.asm.context();
            self.seen
                .insert(ctx.identity, (r.reader.read_position(), now));
            let _ = self.ckpt_tx.send(CheckpointMsg::Released {
                key: ctx.key,
                events: r.asm.emitted(),
            });
        }
    }

    fn finish_all(&mut self, now: Instant) {
        while !self.files.is_empty() {
            self.release(self.files.len() - 1, now);
        }
    }

    fn send(&mut self) -> Result<(), ChannelClosed> {
        if self.out.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.out, Vec::with_capacity(BATCH_EVENTS));
        use crate::event::{Flags, Stream};
        const COUNTED: [Flags; 6] = [
            Flags::TRUNCATED,
            Flags::MALFORMED,
            Flags::PARTIAL_MERGED,
            Flags::MULTILINE,
            Flags::SPLIT,
            Flags::NO_TIMESTAMP,
        ];
        // One pass, added once per batch: the counters are shared with other threads.
        let (mut stderr, mut flagged) = (0u64, [0u64; COUNTED.len()]);
        for e in &batch {
            stderr += u64::from(e.stream == Stream::Stderr);
            if !e.flags.is_empty() {
                for (n, f) in flagged.iter_mut().zip(COUNTED) {
                    *n += u64::from(e.flags.contains(f));
                }
            }
        }
        let st = &self.stats;
        Stats::add(&st.events, batch.len() as u64);
        Stats::add(&st.events_stderr, stderr);
        let counters = [
            &st.events_truncated,
            &st.events_malformed,
            &st.events_partial_merged,
            &st.events_multiline,
            &st.events_split,
            &st.events_no_timestamp,
        ];
        for (c, n) in counters.into_iter().zip(flagged) {
            Stats::add(c, n);
        }
        for r in self.files.iter_mut().filter_map(|f| f.reading.as_mut()) {
            r.count_format(&self.stats);
        }
        let started = Instant::now();
        let waited = |stats: &Stats| {
            Stats::add(
                &stats.backpressure_micros,
                started.elapsed().as_micros() as u64,
            )
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            let sent = self.events_tx.blocking_send(batch);
            waited(&self.stats);
            return sent.map_err(|_| ChannelClosed);
        };
        let tx = self.events_tx.clone();
        let mut last_rescan = Instant::now();
        loop {
            let wait = tokio::time::timeout(MIN_RESCAN_GAP, tx.reserve());
            match rt.block_on(wait) {
                Ok(Ok(permit)) => {
                    permit.send(batch);
                    waited(&self.stats);
                    return Ok(());
                }
                Ok(Err(_)) => return Err(ChannelClosed),
                // The pipeline is full. New files are still found and opened meanwhile, as
                // soon as a directory event says so: an open file that kubelet rotates and
                // deletes stays readable.
                Err(_) => {
                    let now = Instant::now();
                    if self.wake.take_rescan()
                        || now.duration_since(last_rescan) >= self.settings.rescan_interval
                    {
                        self.rescan(now);
                        last_rescan = now;
                    }
                }
            }
        }
    }
}

/// A copy of a truncated file, opened at the place reading stopped.
struct Copy {
    file: File,
    path: PathBuf,
    dev: u64,
    inode: u64,
    len: u64,
}

/// The copy logrotate's `copytruncate` left beside `real_path` before truncating it: a
/// file in the same directory (not compressed, not half-written) that is not the file
/// itself and begins with the same first line. Opened at `position` (its end if shorter:
/// everything in it was read).
fn find_copy(real_path: &Path, identity: FileIdentity, position: u64) -> Option<Copy> {
    let dir = real_path.parent()?;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".gz") || name.ends_with(".tmp") || path == real_path {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() || (meta.dev(), meta.ino()) == (identity.dev, identity.inode) {
            continue;
        }
        let Ok(mut file) = File::open(&path) else {
            continue;
        };
        if !matches!(fingerprint(&file), Ok(Some(fp)) if fp == identity.fingerprint) {
            continue;
        }
        if file
            .seek(SeekFrom::Start(position.min(meta.len())))
            .is_err()
        {
            continue;
        }
        return Some(Copy {
            file,
            path,
            dev: meta.dev(),
            inode: meta.ino(),
            len: meta.len(),
        });
    }
    None
}

/// Where reading from the end starts: just past the last complete line.
fn end_of_last_line(file: &File, size: u64) -> u64 {
    const BLOCK: u64 = 64 * 1024;
    let mut end = size;
    let mut buf = vec![0u8; BLOCK as usize];
    // Look back at most 1 MiB; a longer last line is read from the end as it is.
    while end > 0 && size - end < 16 * BLOCK {
        let start = end.saturating_sub(BLOCK);
        let n = (end - start) as usize;
        if file.read_exact_at(&mut buf[..n], start).is_err() {
            return size;
        }
        if let Some(i) = memrchr(b'\n', &buf[..n]) {
            return start + i as u64 + 1;
        }
        end = start;
    }
    if end == 0 {
        0
    } else {
        size
    }
}

impl std::fmt::Debug for Tailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tailer")
            .field("files", &self.files.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn identity_of(path: &Path) -> FileIdentity {
        let f = File::open(path).unwrap();
        let m = f.metadata().unwrap();
        FileIdentity {
            dev: m.dev(),
            inode: m.ino(),
            fingerprint: fingerprint(&f).unwrap().unwrap(),
        }
    }

    #[test]
    fn the_copy_of_a_truncated_file_is_found_by_its_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("0.log");
        let lines: String = (0..10).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&live, &lines).unwrap();
        let identity = identity_of(&live);
        // Decoys: compressed, half-written, another file.
        std::fs::write(dir.path().join("0.log.1.gz"), &lines).unwrap();
        std::fs::write(dir.path().join("0.log.1.tmp"), &lines).unwrap();
        std::fs::write(dir.path().join("other.log"), "another first line\nmore\n").unwrap();
        // copytruncate: copy, then truncate in place.
        std::fs::copy(&live, dir.path().join("0.log.1")).unwrap();
        File::options()
            .write(true)
            .open(&live)
            .unwrap()
            .set_len(0)
            .unwrap();
        let read_up_to = "line 0\nline 1\n".len() as u64;
        let mut copy = find_copy(&live, identity, read_up_to).expect("the copy");
        assert_eq!(copy.path, dir.path().join("0.log.1"));
        assert_eq!(copy.len, lines.len() as u64);
        let mut rest = String::new();
        copy.file.read_to_string(&mut rest).unwrap();
        assert!(
            rest.starts_with("line 2\n") && rest.ends_with("line 9\n"),
            "{rest}"
        );
        // Everything read already (even past the copy): found, nothing more to read.
        let mut all = find_copy(&live, identity, lines.len() as u64 + 7).expect("the copy");
        rest.clear();
        all.file.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "");
        // No copy at all (the file was truncated by its writer).
        std::fs::remove_file(dir.path().join("0.log.1")).unwrap();
        assert!(find_copy(&live, identity, read_up_to).is_none());
        // A copy of a later generation (another first line) is not this file's.
        let mut f = File::options().append(true).open(&live).unwrap();
        f.write_all(b"new generation\n").unwrap();
        std::fs::copy(&live, dir.path().join("0.log.2")).unwrap();
        assert!(find_copy(&live, identity, read_up_to).is_none());
    }
}
