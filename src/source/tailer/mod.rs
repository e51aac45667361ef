//! The read loop. One owner holds every followed file: it reads each in turn (a bounded
//! quantum per pass, so a noisy container cannot starve the others), follows rotation,
//! truncation and deletion, and sends event batches down a bounded channel (backpressure).

use super::assembler::{Assembler, AssemblyRules};
use super::compressed::{self, is_gzip, Decompressed};
use super::discover::{Discovery, Found};
use super::fingerprint::{fingerprint, fingerprint_unterminated};
use super::open::open_log;
use super::reader::{LineReader, RawLine};
use super::wake::Wake;
use super::watcher::Watcher;
use crate::checkpoint::{CheckpointLookup, CheckpointMsg, Entry};
use crate::config::{Config, StartAt};
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

mod admission;
mod followed;

/// Events per batch sent down the pipeline.
const BATCH_EVENTS: usize = 1024;
/// How often an idle file's path is checked for a rotation, at least.
const PATH_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// With directory watches working, how often a periodic rescan also lists every container
/// directory for generations rotated away unseen (events say where to look, and lost
/// events ask for such a look at once).
const FULL_LOOK_INTERVAL: Duration = Duration::from_secs(300);
/// How often a periodic rescan comes when directory events tell of every change: the
/// patterns are flat, every followed file's directory is watched, no link dangles and no
/// file waits for room. It is then a safety net, and its cost (a `realpath` and a `stat`
/// per file) is most of what an idle node costs.
const SAFETY_RESCAN: Duration = Duration::from_secs(60);
/// Rescans asked for by directory events come at most this often: a storm of rotations
/// on many containers costs one scan per interval, not one per event.
const MIN_RESCAN_GAP: Duration = Duration::from_millis(20);
/// How soon a file stopped short by its reservation is looked at again: the checkpointer
/// writes a reservation within 5 ms.
const RESERVATION_WAIT: Duration = Duration::from_millis(5);
/// A file with nothing new for this long (and looked at `max_idle_poll` apart) is
/// watched instead of polled: a watch costs two syscalls and an event, so a file quiet
/// only between two lines is not worth one.
const PARK_AFTER: Duration = Duration::from_secs(1);
/// How often a watched idle file is looked at all the same: a write whose event did not
/// come (a filesystem that raises none) is found then, and the file polled from then on.
/// On one grid for all files, so that their looks come together.
const PARKED_LOOK: Duration = Duration::from_secs(10);
/// A write older than this found by a look at a watched file: its event did not come.
const EVENT_MISSED_AFTER: Duration = Duration::from_secs(2);
/// How often files waiting for their pod's metadata are looked at again.
const WAITING_RETRY: Duration = Duration::from_millis(25);
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
    /// How long a file read to its end waits before it is read again (at most
    /// `max_idle_poll`): a read of a few lines costs more than the lines.
    pub read_interval: Duration,
    pub max_raw_line: usize,
    /// Files followed (or held waiting for their pod) at most; more wait for room.
    pub max_open_files: usize,
    /// Stop once every file is read to its end (`debug --once`).
    pub once: bool,
    /// With a state directory: how far ahead of its reading a file is reserved in the
    /// checkpoints (see `Reading::readable_end`).
    pub reserve_ahead: Option<u64>,
}

impl TailerSettings {
    pub fn new(cfg: &Config, once: bool) -> Self {
        let s = &cfg.source;
        let max_line = s.max_line_bytes as usize;
        TailerSettings {
            rescan_interval: s.rescan_interval,
            start_at: s.start_at,
            read_size: s.read_buffer_bytes as usize,
            quantum: s.max_read_bytes_per_file as usize,
            rotate_wait: s.rotate_wait,
            max_idle_poll: s.max_idle_poll,
            // `debug --once` reads each file to its end at once.
            read_interval: if once {
                Duration::ZERO
            } else {
                s.read_interval.min(s.max_idle_poll)
            },
            // A raw line carries the runtime's prefix or JSON escaping around the content.
            max_raw_line: max_line.saturating_mul(2).max(max_line + 4096),
            max_open_files: s.max_open_files as usize,
            once,
            reserve_ahead: None,
        }
    }
}

/// How far ahead a file's reading is reserved: what a crash can leave to be looked up in
/// Elasticsearch beyond what was in flight. More is asked for when half of it is read.
pub const RESERVE_AHEAD: u64 = 16 << 20;

/// The pipeline downstream is gone; nothing more can be delivered.
#[derive(Debug, thiserror::Error)]
#[error("the event channel is closed")]
pub struct ChannelClosed;

struct Reading {
    reader: LineReader,
    asm: Assembler,
    /// Events already added to their format's counter.
    counted: u64,
    /// How far the file may be read: the reservation written down in the checkpoints
    /// (`u64::MAX` without a state directory).
    limit: Arc<AtomicU64>,
    /// The highest reservation asked for.
    asked: u64,
}

impl Reading {
    /// Where reading must stop for now. Nothing is read, hence sent, beyond what the
    /// checkpoints reserve, so that after a crash only the events up to the reservation
    /// are replays to look up, not all the file holds. More is asked for ahead of time.
    fn readable_end(
        &mut self,
        ahead: Option<u64>,
        ckpt_tx: &mpsc::UnboundedSender<CheckpointMsg>,
    ) -> u64 {
        let limit = self.limit.load(Ordering::Acquire);
        if let Some(ahead) = ahead {
            let position = self.reader.read_position();
            if position + ahead / 2 > self.asked {
                self.asked = position + ahead;
                let _ = ckpt_tx.send(CheckpointMsg::Reserve {
                    key: self.asm.context().key,
                    up_to: self.asked,
                });
            }
        }
        limit
    }

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
    /// Read to its end at the last look (or stopped by an error).
    at_eof: bool,
    /// When it is next looked at.
    next_visit: Instant,
    /// The wait after a look that found nothing: doubled each time, up to `max_idle_poll`.
    backoff: Duration,
    /// Idle, and watched for its next write instead of polled (see `park`).
    watch: Option<inotify::WatchDescriptor>,
    /// Cannot be watched (refused, or a write came without its event): always polled.
    unwatchable: bool,
    last_path_check: Instant,
    found_at_start: bool,
    /// Truncated: read from 0 whatever was known of it.
    fresh: bool,
    /// When discovery first saw it (before any wait for its pod).
    known_since: Instant,
    /// A generation kubelet compressed before it was read to its end: read from here.
    compressed: Option<Box<Decompressed>>,
    /// Order among the generations of its directory, given when it was found rotated:
    /// older ones are read to their end first. `LIVE` while it is the current file.
    rank: u64,
}

impl Followed {
    /// Nothing to read: looked at again later, and later while nothing comes.
    fn idle_backoff(&mut self, now: Instant, settings: &TailerSettings) {
        self.backoff = (self.backoff * 2)
            .max(settings.read_interval)
            .max(RESERVATION_WAIT)
            .min(settings.max_idle_poll);
        self.next_visit = now + self.backoff;
    }
}

/// The rank of a file its path still names.
const LIVE: u64 = u64::MAX;

impl Followed {
    fn new(file: File, fd: Found, kube: PathMetadata, since: Instant, now: Instant) -> Followed {
        Followed {
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
            next_visit: now,
            backoff: Duration::ZERO,
            watch: None,
            unwatchable: false,
            last_path_check: now,
            found_at_start: false,
            fresh: false,
            known_since: since,
            compressed: None,
            rank: LIVE,
        }
    }
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
    watcher: Option<Watcher>,
    watched: HashSet<PathBuf>,
    /// The directories the followed files really are in (`/var/log/pods/…/<container>`),
    /// watched: kubelet's rotations happen there, unseen from `/var/log/containers`.
    container_dirs: HashMap<PathBuf, std::time::SystemTime>,
    /// The last checkpoint's time, at a restart: generations written since then in the
    /// directories of the files followed were not all read.
    resume_since: Option<std::time::SystemTime>,
    /// The next rank of a rotated generation.
    next_rank: u64,
    /// Files of those directories already looked at for a missed generation.
    generations_checked: HashSet<admission::Checked>,
    /// First lines of generations read and then truncated (their identity is forgotten so
    /// that the file is read again from 0): their copies are not missed generations.
    truncated: HashMap<u64, Instant>,
    exclusion: Exclusion,
    /// Files whose pod is excluded, by device and inode.
    excluded: HashSet<(u64, u64)>,
    /// Files found while `max_open_files` were followed: looked at again on each scan.
    deferred: HashSet<(u64, u64)>,
    /// Files waiting for their pod's metadata before being read or skipped, since when.
    waiting: Vec<(Found, Instant, Option<File>)>,
    /// The origin of the grid watched idle files are looked at on.
    started: Instant,
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
            container_dirs: HashMap::new(),
            resume_since: None,
            next_rank: 0,
            generations_checked: HashSet::new(),
            truncated: HashMap::new(),
            exclusion,
            excluded: HashSet::new(),
            deferred: HashSet::new(),
            waiting: Vec::new(),
            started: Instant::now(),
        }
    }

    /// At a restart: the time of the checkpoints it resumes from.
    pub fn resuming_since(mut self, saved: Option<std::time::SystemTime>) -> Self {
        self.resume_since = saved;
        self
    }

    /// File `i` is no longer what its path names (rotated away or deleted): it is read to
    /// its end after the generations found rotated before it, then let go.
    fn mark_rotated(&mut self, i: usize, now: Instant) {
        let f = &mut self.files[i];
        f.gone_since = Some(now);
        f.next_visit = now;
        f.rank = self.next_rank;
        self.next_rank += 1;
        Stats::add(&self.stats.rotations, 1);
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
        let mut next_full_look = Instant::now();
        let mut rescan_pending = false;
        loop {
            if self.wake.is_stopped() {
                break;
            }
            let now = Instant::now();
            rescan_pending |= self.wake.take_rescan();
            let lost_events = self.wake.take_full_rescan();
            let periodic = now >= next_rescan || lost_events;
            if periodic || (rescan_pending && now.duration_since(last_rescan) >= MIN_RESCAN_GAP) {
                let full =
                    lost_events || (periodic && (!self.watches_work() || now >= next_full_look));
                if full {
                    next_full_look = now + FULL_LOOK_INTERVAL;
                }
                self.rescan(now, full);
                next_rescan = now + self.rescan_every();
                last_rescan = now;
                rescan_pending = false;
            }
            if !self.waiting.is_empty() {
                self.retry_waiting(now);
            }
            self.wake_written(now, lost_events);
            self.read_pass(now)?;
            let now = Instant::now();
            self.flush_expired(now);
            self.release_drained(now);
            self.send()?;
            // A file waiting for its pod's metadata is read once it comes (or the wait ends).
            if self.settings.once
                && self.waiting.is_empty()
                && self.files.iter().all(|f| f.at_eof || f.reading.is_none())
            {
                self.finish_all(now);
                self.send()?;
                break;
            }
            // Until the next file is due (at once if one has more to read), or an event.
            let mut until = next_rescan;
            if rescan_pending {
                until = until.min(last_rescan + MIN_RESCAN_GAP);
            }
            if let Some(d) = self.next_deadline() {
                until = until.min(d);
            }
            if let Some(v) = self.files.iter().map(|f| f.next_visit).min() {
                until = until.min(v);
            }
            if !self.waiting.is_empty() {
                until = until.min(now + WAITING_RETRY);
            }
            if until > now {
                self.wake.wait(until - now);
            }
        }
        Ok(())
    }

    /// How long until the next periodic rescan (see `SAFETY_RESCAN`).
    fn rescan_every(&self) -> Duration {
        let told = self.watches_work()
            && self.discovery.flat()
            && !self.discovery.has_dangling()
            && self.deferred.is_empty()
            && self.files.iter().all(|f| self.dir_watched(f));
        if told {
            self.settings.rescan_interval.max(SAFETY_RESCAN)
        } else {
            self.settings.rescan_interval
        }
    }

    /// Whether `f`'s directory is watched (an include directory, or its container's).
    fn dir_watched(&self, f: &Followed) -> bool {
        f.real_path
            .parent()
            .is_some_and(|d| self.container_dirs.contains_key(d) || self.watched.contains(d))
    }

    /// Whether directory events come: rotations and new files are then seen at once.
    fn watches_work(&self) -> bool {
        self.watcher.as_ref().is_some_and(Watcher::is_working)
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
                    let periodic = now.duration_since(last_rescan) >= self.settings.rescan_interval
                        || self.wake.take_full_rescan();
                    if self.wake.take_rescan() || periodic {
                        self.rescan(now, periodic);
                        last_rescan = now;
                    }
                }
            }
        }
    }
}

impl std::fmt::Debug for Tailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tailer")
            .field("files", &self.files.len())
            .finish()
    }
}
