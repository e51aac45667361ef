//! Committed offsets. Each file's offset moves only over a contiguous run of delivered
//! events (sinks may acknowledge out of order); the offsets are written atomically to
//! `checkpoints.json` in the state directory (temp file, fsync, rename, fsync dir).

use crate::event::{AckRange, FileIdentity, FileKey, IdScheme};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::sync::mpsc;

/// The committed offset of one file, advanced by acknowledgements in any order.
#[derive(Debug, Clone)]
pub struct AckTracker {
    next_seq: u64,
    committed: u64,
    /// Acknowledged runs that wait for an earlier one: first seq → (last seq, safe point).
    waiting: BTreeMap<u64, (u64, u64)>,
}

impl AckTracker {
    pub fn new(start: u64) -> Self {
        AckTracker {
            next_seq: 0,
            committed: start,
            waiting: BTreeMap::new(),
        }
    }

    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// How many events, from the first, are all delivered.
    pub fn delivered(&self) -> u64 {
        self.next_seq
    }

    /// Records a delivered run; returns whether the committed offset moved.
    pub fn ack(&mut self, r: &AckRange) -> bool {
        if r.last_seq < self.next_seq {
            return false; // already counted
        }
        if r.first_seq > self.next_seq {
            self.waiting.insert(r.first_seq, (r.last_seq, r.safe_point));
            return false;
        }
        let before = self.committed;
        self.next_seq = r.last_seq + 1;
        self.committed = r.safe_point;
        while let Some(entry) = self.waiting.first_entry() {
            let first = *entry.key();
            if first > self.next_seq {
                break;
            }
            let (last, safe) = entry.remove();
            if last >= self.next_seq {
                self.next_seq = last + 1;
                self.committed = safe;
            }
        }
        self.committed != before
    }
}

/// One file's line in `checkpoints.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    #[serde(flatten)]
    pub identity: FileIdentity,
    pub path: PathBuf,
    /// Where the path led (`/var/log/pods/…/0.log`): after a restart, a file rotated away
    /// meanwhile is looked for beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real_path: Option<PathBuf>,
    pub offset: u64,
    /// Nothing beyond this offset was read, hence sent, by the run that wrote it: after a
    /// crash, the events between `offset` and here are the ones that may be indexed already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved: Option<u64>,
    /// Unix seconds when the file was read to its end and let go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<u64>,
    /// How the file's document ids are made; absent (written by an earlier build): hashed.
    #[serde(default)]
    pub ids: IdScheme,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    files: Vec<Entry>,
}

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("cannot create state directory {dir}: {source}")]
    CreateDir { dir: PathBuf, source: io::Error },
    #[error("cannot read checkpoints {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write checkpoints {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// What was on disk at start-up.
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    /// No checkpoint file existed: files already present follow `start_at`.
    pub first_start: bool,
    pub entries: Vec<Entry>,
    /// When the checkpoints were last written (the file's time).
    pub saved_at: Option<SystemTime>,
}

impl Loaded {
    /// Offsets by identity, with a fallback that ignores the device number (it can change
    /// across reboots).
    pub fn lookup(&self) -> CheckpointLookup {
        let mut exact = HashMap::new();
        let mut loose = HashMap::new();
        let mut first_lines = HashMap::new();
        let mut reserved = HashMap::new();
        let mut hashed_ids = HashSet::new();
        for e in &self.entries {
            if e.ids == IdScheme::Hashed {
                hashed_ids.insert((e.identity.inode, e.identity.fingerprint));
            }
            exact.insert(e.identity, e.offset);
            if let Some(r) = e.reserved {
                reserved.insert(e.identity, r);
            }
            loose.insert((e.identity.inode, e.identity.fingerprint), e.offset);
            first_lines.insert(e.identity.fingerprint, (e.identity, e.offset));
        }
        CheckpointLookup {
            exact,
            loose,
            first_lines,
            reserved,
            hashed_ids,
        }
    }
}

#[derive(Debug, Default)]
pub struct CheckpointLookup {
    exact: HashMap<FileIdentity, u64>,
    loose: HashMap<(u64, u64), u64>,
    first_lines: HashMap<u64, (FileIdentity, u64)>,
    reserved: HashMap<FileIdentity, u64>,
    /// Files whose ids the last run made hashed (as `id_seed` does, by inode and first line).
    hashed_ids: HashSet<(u64, u64)>,
}

impl CheckpointLookup {
    pub fn get(&self, id: &FileIdentity) -> Option<u64> {
        self.exact
            .get(id)
            .or_else(|| self.loose.get(&(id.inode, id.fingerprint)))
            .copied()
    }

    /// The file of the last run with this first line, whatever its inode (a compressed
    /// copy of it has another), and its offset.
    pub fn by_fingerprint(&self, fingerprint: u64) -> Option<(FileIdentity, u64)> {
        self.first_lines.get(&fingerprint).copied()
    }

    /// How a file's ids are made: as the last run made them, or from the offset for a file
    /// it did not know.
    pub fn ids(&self, id: &FileIdentity) -> IdScheme {
        if self.hashed_ids.contains(&(id.inode, id.fingerprint)) {
            IdScheme::Hashed
        } else {
            IdScheme::Offset
        }
    }

    /// Where the last run's events of a file it read end that it may have sent: what it
    /// had reserved, or all the file held (`size`) when its checkpoints did not say.
    pub fn replay_end(&self, id: &FileIdentity, size: u64) -> u64 {
        self.reserved.get(id).map_or(size, |r| (*r).min(size))
    }
}

/// The checkpoint file in the state directory.
#[derive(Debug)]
pub struct CheckpointStore {
    path: PathBuf,
    tmp: PathBuf,
    dir: PathBuf,
}

const FILE_NAME: &str = "checkpoints.json";

impl CheckpointStore {
    /// Opens the state directory (created 0700) and reads what it holds. A corrupt file is
    /// moved aside and reported, and reading starts as on a first start.
    pub fn open(dir: &Path) -> Result<(CheckpointStore, Loaded), CheckpointError> {
        let tightened = crate::private_files::create_dir_tightened(dir).map_err(|source| {
            CheckpointError::CreateDir {
                dir: dir.to_path_buf(),
                source,
            }
        })?;
        if let Some(mode) = tightened {
            tracing::warn!(dir = %dir.display(), was = format!("{mode:o}"), "the state directory was open to other users; made 0700");
        }
        let store = CheckpointStore {
            path: dir.join(FILE_NAME),
            tmp: dir.join(format!("{FILE_NAME}.tmp")),
            dir: dir.to_path_buf(),
        };
        let saved_at = fs::metadata(&store.path).and_then(|m| m.modified()).ok();
        let loaded = match fs::read(&store.path) {
            Ok(data) => match serde_json::from_slice::<StateFile>(&data) {
                Ok(s) => Loaded {
                    first_start: false,
                    entries: s.files,
                    saved_at,
                },
                Err(e) => {
                    let aside = dir.join(format!("{FILE_NAME}.corrupt-{}", unix_now()));
                    tracing::error!(
                        path = %store.path.display(), error = %e, moved_to = %aside.display(),
                        "checkpoint file is corrupt; starting as on a first start"
                    );
                    let _ = fs::rename(&store.path, &aside);
                    Loaded {
                        first_start: true,
                        ..Loaded::default()
                    }
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Loaded {
                first_start: true,
                ..Loaded::default()
            },
            Err(source) => {
                return Err(CheckpointError::Read {
                    path: store.path.clone(),
                    source,
                })
            }
        };
        Ok((store, loaded))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file with `entries`, atomically.
    pub fn save(&self, entries: Vec<Entry>) -> Result<(), CheckpointError> {
        let err = |source| CheckpointError::Write {
            path: self.path.clone(),
            source,
        };
        let data = serde_json::to_vec(&StateFile {
            version: 1,
            files: entries,
        })
        .map_err(|e| err(io::Error::other(e)))?;
        let mut f = crate::private_files::create(&self.tmp).map_err(err)?;
        f.write_all(&data).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        fs::rename(&self.tmp, &self.path).map_err(err)?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// What the tailer and the sinks tell the checkpointer.
#[derive(Debug)]
pub enum CheckpointMsg {
    /// A file generation is read from `offset` on; its events are addressed by `key`.
    Opened {
        key: FileKey,
        identity: FileIdentity,
        path: PathBuf,
        real_path: PathBuf,
        offset: u64,
        ids: IdScheme,
        /// With a state directory: how far it is to be read before more is reserved, and
        /// where the reservation is published once written down.
        reserve: Option<(u64, Arc<AtomicU64>)>,
    },
    /// The file may be read up to `up_to` once that is written down.
    Reserve { key: FileKey, up_to: u64 },
    /// Events a sink delivered.
    Acked(Vec<AckRange>),
    /// The tailer let the file go after emitting `events` events.
    Released { key: FileKey, events: u64 },
}

struct Tracked {
    identity: FileIdentity,
    tracker: AckTracker,
    released_after: Option<u64>,
    /// What the tailer may read up to: set once the reservation is written down.
    limit: Option<Arc<AtomicU64>>,
    /// A reservation not yet written down.
    pending: Option<u64>,
}

/// How soon the files opened are written down: opens close together share one write.
const OPENED_PERSIST_DELAY: Duration = Duration::from_millis(5);

/// Released files whose path now names another file are forgotten; others after a day.
const RELEASED_TTL: Duration = Duration::from_secs(24 * 3600);

/// Owns the trackers and the store; runs until every sender is gone.
pub struct Checkpointer {
    store: Option<CheckpointStore>,
    files: HashMap<FileKey, Tracked>,
    entries: HashMap<FileIdentity, Entry>,
    dirty: bool,
    /// Where the committed offsets are shown (`/status`, `/metrics`).
    publish: Option<tokio::sync::watch::Sender<Vec<Entry>>>,
    /// Woken when reservations are written down (the tailer may be waiting for one).
    wake: Option<Arc<crate::source::wake::Wake>>,
}

impl Checkpointer {
    pub fn new(store: Option<CheckpointStore>, loaded: &Loaded) -> Self {
        Checkpointer {
            store,
            files: HashMap::new(),
            entries: loaded
                .entries
                .iter()
                .map(|e| (e.identity, e.clone()))
                .collect(),
            dirty: false,
            publish: None,
            wake: None,
        }
    }

    /// Wakes the tailer when a reservation it may be waiting for is written down.
    pub fn waking(mut self, wake: Arc<crate::source::wake::Wake>) -> Self {
        self.wake = Some(wake);
        self
    }

    /// Shows the committed offsets at every interval.
    pub fn publishing(mut self, to: tokio::sync::watch::Sender<Vec<Entry>>) -> Self {
        self.publish = Some(to);
        self
    }

    pub fn handle(&mut self, msg: CheckpointMsg) {
        match msg {
            CheckpointMsg::Opened {
                key,
                identity,
                path,
                real_path,
                offset,
                ids,
                reserve,
            } => {
                // A reservation of an earlier run is kept: a crash of this run before its
                // acknowledgements pass it must still look up what that run sent.
                let earlier = self.entries.get(&identity).and_then(|e| e.reserved);
                let (pending, limit) = match reserve {
                    Some((up_to, limit)) => (Some(up_to.max(earlier.unwrap_or(0))), Some(limit)),
                    None => (None, None),
                };
                self.files.insert(
                    key,
                    Tracked {
                        identity,
                        tracker: AckTracker::new(offset),
                        released_after: None,
                        limit,
                        pending,
                    },
                );
                self.entries.insert(
                    identity,
                    Entry {
                        identity,
                        path,
                        real_path: Some(real_path),
                        offset,
                        reserved: pending.or(earlier),
                        released_at: None,
                        ids,
                    },
                );
                self.dirty = true;
            }
            CheckpointMsg::Reserve { key, up_to } => {
                if let Some(t) = self.files.get_mut(&key) {
                    t.pending = Some(up_to);
                    if let Some(e) = self.entries.get_mut(&t.identity) {
                        e.reserved = Some(e.reserved.map_or(up_to, |r| r.max(up_to)));
                        self.dirty = true;
                    }
                }
            }
            CheckpointMsg::Acked(ranges) => {
                for r in ranges {
                    let Some(t) = self.files.get_mut(&r.key) else {
                        continue;
                    };
                    if t.tracker.ack(&r) {
                        if let Some(e) = self.entries.get_mut(&t.identity) {
                            e.offset = t.tracker.committed();
                            self.dirty = true;
                        }
                    }
                    if t.released_after.is_some_and(|n| t.tracker.delivered() >= n) {
                        self.forget(r.key);
                    }
                }
            }
            CheckpointMsg::Released { key, events } => {
                if let Some(t) = self.files.get_mut(&key) {
                    t.released_after = Some(events);
                    if t.tracker.delivered() >= events {
                        self.forget(key);
                    }
                }
            }
        }
    }

    fn forget(&mut self, key: FileKey) {
        if let Some(t) = self.files.remove(&key) {
            if let Some(e) = self.entries.get_mut(&t.identity) {
                e.released_at = Some(unix_now());
                self.dirty = true;
            }
        }
    }

    /// The committed offset of every known file.
    pub fn committed(&self) -> Vec<Entry> {
        let mut v: Vec<Entry> = self.entries.values().cloned().collect();
        v.sort_by(|a, b| {
            a.path
                .cmp(&b.path)
                .then(a.identity.inode.cmp(&b.identity.inode))
        });
        v
    }

    /// Writes the offsets if they changed. Failures are reported and retried next time.
    pub fn persist(&mut self) -> Result<(), CheckpointError> {
        if !self.dirty {
            return Ok(());
        }
        let now = unix_now();
        let kept = recent_generations(self.entries.values());
        self.entries.retain(|id, e| match e.released_at {
            None => true,
            Some(at) => {
                now.saturating_sub(at) < RELEASED_TTL.as_secs()
                    && (still_there(e) || kept.contains(id))
            }
        });
        if let Some(store) = &self.store {
            store.save(self.committed())?;
        }
        self.dirty = false;
        Ok(())
    }

    /// Lets the tailer read up to the reservations just written down. Also when writing
    /// failed: shipping goes on while the disk refuses (logged), at the cost of the bound
    /// on what a crash then replays unchecked.
    fn publish_reservations(&mut self) {
        let mut any = false;
        for t in self.files.values_mut() {
            if let (Some(up_to), Some(limit)) = (t.pending.take(), &t.limit) {
                limit.fetch_max(up_to, Ordering::AcqRel);
                any = true;
            }
        }
        if any {
            if let Some(w) = &self.wake {
                w.wake();
            }
        }
    }

    /// Persists, saying once when writing starts failing and once when it works again.
    fn persist_reporting(&mut self, failing: &mut bool) {
        if let Some(p) = &self.publish {
            p.send_replace(self.committed());
        }
        let result = self.persist();
        self.publish_reservations();
        match result {
            Ok(()) if *failing => {
                tracing::info!("checkpoints written again");
                *failing = false;
            }
            Ok(()) => {}
            Err(e) if !*failing => {
                tracing::error!(error = %e, "cannot write checkpoints; shipping goes on and the write is retried");
                *failing = true;
            }
            Err(_) => {}
        }
    }

    /// Receives messages until all senders are gone, persisting every `interval`.
    pub async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<CheckpointMsg>,
        interval: Duration,
    ) -> Vec<Entry> {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        // A file opened is written down at once, not at the next interval: its identity
        // (the inode) must outlive a crash even if kubelet compresses the file meanwhile,
        // or its replay from the `.gz` would get other ids. So is a reservation: the
        // tailer may be waiting for it.
        let mut urgent_since: Option<tokio::time::Instant> = None;
        loop {
            let soon = urgent_since.map(|t| t + OPENED_PERSIST_DELAY);
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(m) => {
                        if matches!(m, CheckpointMsg::Opened { .. } | CheckpointMsg::Reserve { .. }) {
                            urgent_since.get_or_insert_with(tokio::time::Instant::now);
                        }
                        self.handle(m);
                    }
                    None => break,
                },
                // Nothing changed, nothing to write: an idle agent is not woken each second.
                _ = tick.tick(), if self.dirty || failing => {
                    urgent_since = None;
                    self.persist_reporting(&mut failing);
                }
                _ = tokio::time::sleep_until(soon.unwrap_or_else(tokio::time::Instant::now)), if soon.is_some() => {
                    urgent_since = None;
                    self.persist_reporting(&mut failing);
                }
            }
        }
        self.dirty = true;
        if let Err(e) = self.persist() {
            tracing::error!(error = %e, "cannot write final checkpoints");
        }
        self.committed()
    }
}

/// Released generations remembered per directory, the newest, whether or not a path still
/// names them: kubelet may compress one after it was read, and its `.gz` must be known for
/// what it is after a restart. Kubelet keeps 4 rotated files by default.
const RELEASED_PER_DIRECTORY: usize = 5;

/// The newest released entries of each directory that still exists.
fn recent_generations<'a>(entries: impl Iterator<Item = &'a Entry>) -> HashSet<FileIdentity> {
    let mut by_dir: HashMap<&Path, Vec<(u64, FileIdentity)>> = HashMap::new();
    for e in entries {
        if let (Some(at), Some(dir)) =
            (e.released_at, e.real_path.as_deref().and_then(Path::parent))
        {
            by_dir.entry(dir).or_default().push((at, e.identity));
        }
    }
    let mut kept = HashSet::new();
    for (dir, mut released) in by_dir {
        if !dir.is_dir() {
            continue;
        }
        released.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.inode.cmp(&a.1.inode)));
        kept.extend(
            released
                .into_iter()
                .take(RELEASED_PER_DIRECTORY)
                .map(|(_, id)| id),
        );
    }
    kept
}

/// Whether the entry's path still names the same file.
fn still_there(e: &Entry) -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(&e.path).is_ok_and(|m| m.ino() == e.identity.inode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(first: u64, last: u64, safe: u64) -> AckRange {
        AckRange {
            key: 1,
            first_seq: first,
            last_seq: last,
            safe_point: safe,
        }
    }

    #[test]
    fn commits_only_contiguous_prefix() {
        let mut t = AckTracker::new(100);
        assert!(!t.ack(&r(2, 3, 400)));
        assert_eq!(t.committed(), 100);
        assert!(t.ack(&r(0, 0, 200)));
        assert_eq!(t.committed(), 200);
        assert!(t.ack(&r(1, 1, 300)));
        assert_eq!(t.committed(), 400);
        assert_eq!(t.delivered(), 4);
        assert!(!t.ack(&r(1, 1, 300)), "a repeated ack changes nothing");
        assert_eq!(t.committed(), 400);
    }

    proptest! {
        /// Acks in any order end where in-order acks end, and never pass an undelivered event.
        #[test]
        fn any_order_commits_the_same(order in Just((0..40u64).collect::<Vec<_>>()).prop_shuffle()) {
            let safe = |s: u64| 1000 + s * 10;
            let mut t = AckTracker::new(1000);
            let mut delivered = std::collections::HashSet::new();
            for s in order {
                t.ack(&r(s, s, safe(s) + 10));
                delivered.insert(s);
                let prefix = (0..).take_while(|i| delivered.contains(i)).count() as u64;
                let expect = if prefix == 0 { 1000 } else { safe(prefix - 1) + 10 };
                prop_assert_eq!(t.committed(), expect);
            }
            prop_assert_eq!(t.committed(), 1400);
        }
    }

    #[test]
    fn store_round_trips_and_survives_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (store, loaded) = CheckpointStore::open(&state).unwrap();
        assert!(loaded.first_start);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let e = Entry {
            identity: FileIdentity {
                dev: 1,
                inode: 2,
                fingerprint: 0xdead_beef,
            },
            path: "/x.log".into(),
            real_path: Some("/pods/x/0.log".into()),
            offset: 42,
            reserved: Some(4096),
            released_at: None,
            ids: IdScheme::Offset,
        };
        store.save(vec![e.clone()]).unwrap();
        assert_eq!(
            fs::metadata(state.join(FILE_NAME))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let (_, loaded) = CheckpointStore::open(&state).unwrap();
        assert!(!loaded.first_start);
        assert_eq!(loaded.entries, vec![e.clone()]);
        let moved = FileIdentity {
            dev: 9,
            ..e.identity
        };
        assert_eq!(loaded.lookup().get(&moved), Some(42));

        fs::write(state.join(FILE_NAME), b"{\"version\":1,\"fi").unwrap();
        let (_, loaded) = CheckpointStore::open(&state).unwrap();
        assert!(loaded.first_start && loaded.entries.is_empty());
        let aside = fs::read_dir(&state)
            .unwrap()
            .filter_map(|d| d.ok())
            .filter(|d| d.file_name().to_string_lossy().contains("corrupt"))
            .count();
        assert_eq!(aside, 1);
    }

    #[test]
    fn checkpointer_follows_acks_and_forgets_released_files() {
        let dir = tempfile::tempdir().unwrap();
        let (store, loaded) = CheckpointStore::open(dir.path()).unwrap();
        let mut c = Checkpointer::new(Some(store), &loaded);
        let identity = FileIdentity {
            dev: 1,
            inode: 2,
            fingerprint: 3,
        };
        let container = dir.path().join("pod/app");
        fs::create_dir_all(&container).unwrap();
        c.handle(CheckpointMsg::Opened {
            key: 7,
            identity,
            path: dir.path().join("gone.log"),
            real_path: container.join("0.log"),
            offset: 0,
            ids: IdScheme::Offset,
            reserve: None,
        });
        c.handle(CheckpointMsg::Acked(vec![AckRange {
            key: 7,
            first_seq: 1,
            last_seq: 1,
            safe_point: 20,
        }]));
        assert_eq!(c.committed()[0].offset, 0);
        c.handle(CheckpointMsg::Released { key: 7, events: 2 });
        c.handle(CheckpointMsg::Acked(vec![AckRange {
            key: 7,
            first_seq: 0,
            last_seq: 0,
            safe_point: 10,
        }]));
        assert_eq!(c.committed()[0].offset, 20);
        assert!(c.committed()[0].released_at.is_some());
        // Its path names no file, but its directory is there: kubelet may compress it, and
        // the `.gz` must be known for what it is after a restart.
        c.persist().unwrap();
        assert_eq!(c.committed().len(), 1);
        // Its directory is gone (the pod was deleted): dropped at the next write.
        fs::remove_dir_all(&container).unwrap();
        c.dirty = true;
        c.persist().unwrap();
        assert!(c.committed().is_empty());
    }

    #[test]
    fn the_newest_released_generations_of_a_directory_are_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let (store, loaded) = CheckpointStore::open(dir.path()).unwrap();
        let mut c = Checkpointer::new(Some(store), &loaded);
        let container = dir.path().join("pod/app");
        fs::create_dir_all(&container).unwrap();
        for key in 1..=8u64 {
            c.handle(CheckpointMsg::Opened {
                key,
                identity: FileIdentity {
                    dev: 1,
                    inode: key,
                    fingerprint: key,
                },
                path: dir.path().join("gone.log"),
                real_path: container.join(format!("0.log.{key}")),
                offset: 0,
                ids: IdScheme::Offset,
                reserve: None,
            });
            c.handle(CheckpointMsg::Released { key, events: 0 });
        }
        c.persist().unwrap();
        let mut kept: Vec<u64> = c.committed().iter().map(|e| e.identity.inode).collect();
        kept.sort();
        // Released in the same second: the ties go to the later inodes.
        assert_eq!(kept, vec![4, 5, 6, 7, 8]);
    }

    #[test]
    fn a_reservation_is_published_once_written_and_an_earlier_runs_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (store, loaded) = CheckpointStore::open(dir.path()).unwrap();
        let identity = FileIdentity {
            dev: 1,
            inode: 2,
            fingerprint: 3,
        };
        let opened = |key, reserve| CheckpointMsg::Opened {
            key,
            identity,
            path: dir.path().join("0.log"),
            real_path: dir.path().join("0.log"),
            offset: 100,
            ids: IdScheme::Offset,
            reserve,
        };
        let mut c = Checkpointer::new(Some(store), &loaded);
        let limit = Arc::new(AtomicU64::new(0));
        c.handle(opened(1, Some((1000, limit.clone()))));
        c.handle(CheckpointMsg::Reserve {
            key: 1,
            up_to: 5000,
        });
        assert_eq!(
            limit.load(Ordering::Acquire),
            0,
            "not read before it is written"
        );
        let mut failing = false;
        c.persist_reporting(&mut failing);
        assert_eq!(limit.load(Ordering::Acquire), 5000);
        let (store, loaded) = CheckpointStore::open(dir.path()).unwrap();
        assert_eq!(loaded.entries[0].reserved, Some(5000));
        assert_eq!(loaded.lookup().replay_end(&identity, 9000), 5000);
        assert_eq!(loaded.lookup().replay_end(&identity, 3000), 3000);

        // The next run reserves less at first: what the last one reserved still counts.
        let mut c = Checkpointer::new(Some(store), &loaded);
        let limit = Arc::new(AtomicU64::new(0));
        c.handle(opened(1, Some((1200, limit.clone()))));
        c.persist_reporting(&mut failing);
        assert_eq!(c.committed()[0].reserved, Some(5000));
        assert_eq!(limit.load(Ordering::Acquire), 5000);
    }

    /// An earlier build wrote no `ids`: its files keep hashed ids, through this run's
    /// checkpoints too, so that a line it sent and this run sends again gets its old id.
    #[test]
    fn files_of_an_earlier_build_keep_hashed_ids_and_new_ones_get_offset_ids() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(FILE_NAME),
            r#"{"version":1,"files":[{"dev":1,"inode":2,"fingerprint":"0000000000000003","path":"/a.log","offset":10,"reserved":500}]}"#,
        )
        .unwrap();
        let (store, loaded) = CheckpointStore::open(dir.path()).unwrap();
        let old = loaded.entries[0].identity;
        let lookup = loaded.lookup();
        assert_eq!(lookup.ids(&old), IdScheme::Hashed);
        // After a reboot the device may differ; the ids do not depend on it.
        assert_eq!(
            lookup.ids(&FileIdentity { dev: 7, ..old }),
            IdScheme::Hashed
        );
        let new = FileIdentity { inode: 3, ..old };
        assert_eq!(lookup.ids(&new), IdScheme::Offset);

        let mut c = Checkpointer::new(Some(store), &loaded);
        for (key, identity) in [(1, old), (2, new)] {
            c.handle(CheckpointMsg::Opened {
                key,
                identity,
                path: dir.path().join("a.log"),
                real_path: dir.path().join("a.log"),
                offset: 10,
                ids: lookup.ids(&identity),
                reserve: None,
            });
        }
        c.persist().unwrap();
        let written = fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(written.contains(r#""ids":"hashed""#), "{written}");
        let (_, loaded) = CheckpointStore::open(dir.path()).unwrap();
        let lookup = loaded.lookup();
        assert_eq!(lookup.ids(&old), IdScheme::Hashed);
        assert_eq!(lookup.ids(&new), IdScheme::Offset);
    }
}
