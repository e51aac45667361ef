//! A bounded queue of records on disk: numbered segment files appended by one writer, read
//! and acknowledged by one reader. A segment is deleted once every record in it is
//! acknowledged; the acknowledged position is kept in `ack.json`, so a restart resends at
//! most the batches that were in flight (answered 409 by their deterministic ids).

use super::record::{self, Decoded};
use crate::stats::Stats;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

const ACK_FILE: &str = "ack.json";
const SEGMENT_SUFFIX: &str = ".seg";

/// A place in the queue: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

#[derive(Debug)]
struct State {
    /// Segment id → bytes in it.
    segments: BTreeMap<u64, u64>,
    total: u64,
    /// The writer is done: nothing more will be appended.
    closed: bool,
    /// The reader is gone (shutdown): a writer waiting for room gives up.
    abandoned: bool,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    max_size: u64,
    segment_size: u64,
    state: Mutex<State>,
    room: Condvar,
    data: Notify,
    stats: Arc<Stats>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn segment_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:020}{SEGMENT_SUFFIX}"))
    }

    fn publish_size(&self, st: &State) {
        self.stats.buffer_bytes.store(st.total, Ordering::Relaxed);
    }
}

/// Opens (or creates, 0700) the queue in `dir`. `max_size` bounds the bytes on disk; a
/// segment is closed after `segment_size` bytes.
pub fn open(
    dir: &Path,
    max_size: u64,
    segment_size: u64,
    stats: Arc<Stats>,
) -> io::Result<(QueueWriter, QueueReader)> {
    crate::private_files::create_dir(dir)?;
    let mut segments = BTreeMap::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        segments.insert(id, entry.metadata()?.len());
    }
    let first = segments.keys().next().copied().unwrap_or(0);
    let saved: Option<Position> = fs::read(dir.join(ACK_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    // An acknowledged position in a segment that is gone means all of it was delivered.
    let acked = match saved {
        Some(p) if segments.contains_key(&p.segment) => p,
        _ => Position {
            segment: first,
            offset: 0,
        },
    };
    let shared = Arc::new(Shared {
        dir: dir.to_path_buf(),
        max_size,
        segment_size,
        state: Mutex::new(State {
            total: 0,
            segments,
            closed: false,
            abandoned: false,
        }),
        room: Condvar::new(),
        data: Notify::new(),
        stats,
    });
    {
        let mut st = shared.lock();
        let delivered: Vec<u64> = st
            .segments
            .range(..acked.segment)
            .map(|(id, _)| *id)
            .collect();
        for id in delivered {
            let _ = fs::remove_file(shared.segment_path(id));
            st.segments.remove(&id);
        }
        st.total = st.segments.values().sum();
        shared.publish_size(&st);
    }
    // The writer starts a new segment: whatever the last run left is sealed as it is (a
    // torn record at its end is found and counted by the reader).
    let next = shared
        .lock()
        .segments
        .keys()
        .next_back()
        .map_or(0, |id| id + 1);
    let writer = QueueWriter::new(shared.clone(), next)?;
    let reader = QueueReader {
        shared,
        pos: acked,
        acked,
        file: None,
        buf: Vec::new(),
        tickets: VecDeque::new(),
        next_ticket: 0,
    };
    Ok((writer, reader))
}

pub struct QueueWriter {
    shared: Arc<Shared>,
    id: u64,
    file: File,
    len: u64,
}

impl QueueWriter {
    fn new(shared: Arc<Shared>, id: u64) -> io::Result<QueueWriter> {
        let (file, len) = Self::open_segment(&shared, id)?;
        Ok(QueueWriter {
            shared,
            id,
            file,
            len,
        })
    }

    fn open_segment(shared: &Shared, id: u64) -> io::Result<(File, u64)> {
        let file = crate::private_files::open_append(&shared.segment_path(id))?;
        let len = file.metadata()?.len();
        let mut st = shared.lock();
        if st.segments.insert(id, len).is_none() {
            st.total += len;
        }
        Ok((file, len))
    }

    /// Appends framed records (whole ones: see `record::encode`). Waits while the queue is
    /// full; fails with `Interrupted` if the reader went away meanwhile.
    pub fn append(&mut self, framed: &[u8]) -> io::Result<()> {
        if framed.is_empty() {
            return Ok(());
        }
        let size = framed.len() as u64;
        if self.len >= self.shared.segment_size {
            self.rotate()?;
        }
        let mut waited = false;
        loop {
            let st = self.shared.lock();
            // An empty queue takes any record, however large.
            if st.total + size <= self.shared.max_size || st.total == 0 {
                break;
            }
            if st.abandoned {
                return Err(io::Error::new(
                    io::ErrorKind::Interrupted,
                    "the buffer's reader stopped",
                ));
            }
            if !waited {
                waited = true;
                Stats::add(&self.shared.stats.buffer_full, 1);
                tracing::warn!(
                    max_size = self.shared.max_size,
                    "disk buffer is full; reading pauses until Elasticsearch takes more"
                );
                if self.len > 0 {
                    // The segment being written can only be freed once it is sealed.
                    drop(st);
                    self.rotate()?;
                    continue;
                }
            }
            drop(
                self.shared
                    .room
                    .wait_timeout(st, Duration::from_millis(200))
                    .unwrap_or_else(|e| e.into_inner()),
            );
        }
        self.file.write_all(framed)?;
        self.len += size;
        let mut st = self.shared.lock();
        st.segments.insert(self.id, self.len);
        st.total += size;
        self.shared.publish_size(&st);
        drop(st);
        self.shared.data.notify_one();
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        let (file, len) = Self::open_segment(&self.shared, self.id + 1)?;
        (self.file, self.id, self.len) = (file, self.id + 1, len);
        Ok(())
    }

    /// Forces what was appended to disk.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Nothing more will be appended; the reader ends once it has delivered the rest.
    pub fn close(mut self) -> io::Result<()> {
        let r = self.sync();
        self.shared.lock().closed = true;
        self.shared.data.notify_one();
        r
    }
}

impl Drop for QueueWriter {
    fn drop(&mut self) {
        // A writer that ends without `close` (a failed task) must not leave the reader
        // waiting for records that will never come.
        self.shared.lock().closed = true;
        self.shared.data.notify_one();
    }
}

/// A read batch: acknowledge it when every record in it is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

impl Ticket {
    /// The ticket numbered `id` (see `QueueReader::next_ticket`).
    pub fn from_id(id: u64) -> Ticket {
        Ticket(id)
    }
}

pub struct QueueReader {
    shared: Arc<Shared>,
    /// The next record to read.
    pos: Position,
    /// Everything before it is delivered.
    acked: Position,
    file: Option<(u64, File)>,
    buf: Vec<u8>,
    /// Batches read, in order: ticket, end position, delivered.
    tickets: VecDeque<(u64, Position, bool)>,
    next_ticket: u64,
}

impl Drop for QueueReader {
    fn drop(&mut self) {
        self.shared.lock().abandoned = true;
        self.shared.room.notify_all();
    }
}

impl QueueReader {
    /// Bytes appended and not read yet, and whether the writer is done.
    pub fn available(&self) -> (u64, bool) {
        let st = self.shared.lock();
        let bytes = st
            .segments
            .range(self.pos.segment..)
            .map(|(&id, &len)| {
                if id == self.pos.segment {
                    len.saturating_sub(self.pos.offset)
                } else {
                    len
                }
            })
            .sum();
        (bytes, st.closed)
    }

    /// The number of the ticket the next successful `read` returns.
    pub fn next_ticket(&self) -> u64 {
        self.next_ticket
    }

    /// Resolves when something was appended (or the writer closed) since the last call.
    pub async fn appended(&self) {
        self.shared.data.notified().await
    }

    /// Reads records from the current position, up to about `max_bytes` of payload or
    /// `max_records`, handing each payload to `each`. `None` when nothing was there.
    /// Damaged records are skipped and counted.
    pub fn read(
        &mut self,
        max_bytes: usize,
        max_records: usize,
        mut each: impl FnMut(&[u8]),
    ) -> io::Result<Option<Ticket>> {
        let (mut bytes, mut records, start) = (0usize, 0usize, self.pos);
        while bytes < max_bytes && records < max_records {
            let (seg_len, later) = {
                let st = self.shared.lock();
                let Some(&len) = st.segments.get(&self.pos.segment) else {
                    // Deleted under us cannot happen (only acknowledged segments go);
                    // move to whatever comes next.
                    match st.segments.range(self.pos.segment..).next() {
                        Some((&id, _)) => {
                            self.pos = Position {
                                segment: id,
                                offset: 0,
                            };
                            continue;
                        }
                        None => break,
                    }
                };
                let later = st
                    .segments
                    .range(self.pos.segment + 1..)
                    .next()
                    .map(|(&id, _)| id);
                (len, later)
            };
            if self.pos.offset >= seg_len {
                match later {
                    Some(id) => {
                        self.pos = Position {
                            segment: id,
                            offset: 0,
                        };
                        continue;
                    }
                    None => break,
                }
            }
            let want = (seg_len - self.pos.offset).min((max_bytes - bytes).max(64 * 1024) as u64);
            self.fill(want as usize)?;
            let mut used = 0usize;
            while used < self.buf.len() && bytes < max_bytes && records < max_records {
                match record::decode(&self.buf[used..]) {
                    Decoded::Record { payload, len } => {
                        each(payload);
                        used += len;
                        bytes += payload.len();
                        records += 1;
                    }
                    Decoded::Incomplete => break,
                    Decoded::Corrupt { skip } => {
                        self.damaged(skip as u64);
                        used += skip;
                    }
                }
            }
            let window_end = self.pos.offset + self.buf.len() as u64;
            self.pos.offset += used as u64;
            if used == 0 {
                if window_end < seg_len {
                    // One record larger than the window: read it whole.
                    let need = self.record_len_at_pos()?;
                    self.fill(need.min((seg_len - self.pos.offset) as usize))?;
                    if let Decoded::Record { payload, len } = record::decode(&self.buf) {
                        each(payload);
                        self.pos.offset += len as u64;
                        bytes += payload.len();
                        records += 1;
                        continue;
                    }
                }
                // A record cut short at the end of a segment: a write torn by a crash.
                self.damaged(seg_len - self.pos.offset);
                self.pos.offset = seg_len;
            }
        }
        if self.pos == start {
            return Ok(None);
        }
        let t = self.next_ticket;
        self.next_ticket += 1;
        self.tickets.push_back((t, self.pos, false));
        Ok(Some(Ticket(t)))
    }

    fn damaged(&self, bytes: u64) {
        Stats::add(&self.shared.stats.buffer_corrupt_records, 1);
        Stats::add(&self.shared.stats.buffer_corrupt_bytes, bytes);
        tracing::error!(
            segment = self.pos.segment,
            offset = self.pos.offset,
            bytes,
            "damaged record in the disk buffer skipped"
        );
    }

    /// Reads `len` bytes at the current position into `buf`.
    fn fill(&mut self, len: usize) -> io::Result<()> {
        if self.file.as_ref().map(|(id, _)| *id) != Some(self.pos.segment) {
            let f = File::open(self.shared.segment_path(self.pos.segment))?;
            self.file = Some((self.pos.segment, f));
        }
        let Some((_, f)) = &self.file else {
            unreachable!("opened above")
        };
        self.buf.resize(len, 0);
        let mut done = 0;
        while done < len {
            let n = f.read_at(&mut self.buf[done..], self.pos.offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        self.buf.truncate(done);
        Ok(())
    }

    /// The framed length of the record at the position, from its header.
    fn record_len_at_pos(&mut self) -> io::Result<usize> {
        self.fill(record::HEADER)?;
        Ok(match self.buf.get(4..8) {
            Some(b) => record::HEADER + u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
            None => record::HEADER,
        })
    }

    /// Marks a batch delivered; the acknowledged position moves over every batch before
    /// it that is delivered too, and segments left behind are deleted.
    pub fn ack(&mut self, ticket: Ticket) -> io::Result<()> {
        if let Some(t) = self.tickets.iter_mut().find(|t| t.0 == ticket.0) {
            t.2 = true;
        }
        let before = self.acked;
        while let Some(&(_, end, true)) = self.tickets.front() {
            self.acked = end;
            self.tickets.pop_front();
        }
        if self.acked == before {
            return Ok(());
        }
        let mut st = self.shared.lock();
        // Past the end of a segment the writer has left: the next one starts.
        if let Some(&len) = st.segments.get(&self.acked.segment) {
            if self.acked.offset >= len {
                if let Some((&id, _)) = st.segments.range(self.acked.segment + 1..).next() {
                    self.acked = Position {
                        segment: id,
                        offset: 0,
                    };
                }
            }
        }
        let done: Vec<u64> = st
            .segments
            .range(..self.acked.segment)
            .map(|(id, _)| *id)
            .collect();
        for id in &done {
            if let Some(len) = st.segments.remove(id) {
                st.total -= len;
            }
        }
        self.shared.publish_size(&st);
        drop(st);
        self.save_ack()?;
        for id in done {
            if self.file.as_ref().is_some_and(|(f, _)| *f == id) {
                self.file = None;
            }
            fs::remove_file(self.shared.segment_path(id))?;
        }
        self.shared.room.notify_all();
        Ok(())
    }

    fn save_ack(&self) -> io::Result<()> {
        let path = self.shared.dir.join(ACK_FILE);
        let tmp = self.shared.dir.join(format!("{ACK_FILE}.tmp"));
        fs::write(
            &tmp,
            serde_json::to_vec(&self.acked).map_err(io::Error::other)?,
        )?;
        fs::rename(tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payloads: &[String]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            record::encode(p.as_bytes(), &mut out);
        }
        out
    }

    fn records(n: std::ops::Range<u32>) -> Vec<String> {
        n.map(|i| format!("record {i:05} {}", "x".repeat(i as usize % 50)))
            .collect()
    }

    fn read_all(r: &mut QueueReader, max_bytes: usize) -> (Vec<String>, Vec<Ticket>) {
        let (mut got, mut tickets) = (Vec::new(), Vec::new());
        while let Some(t) = r
            .read(max_bytes, 1000, |p| {
                got.push(String::from_utf8(p.to_vec()).unwrap())
            })
            .unwrap()
        {
            tickets.push(t);
        }
        (got, tickets)
    }

    fn segment_files(dir: &Path) -> usize {
        fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(SEGMENT_SUFFIX)
            })
            .count()
    }

    #[test]
    fn records_come_back_in_order_across_segments_and_delivered_segments_go() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let (mut w, mut r) = open(dir.path(), 1 << 30, 4096, stats.clone()).unwrap();
        let all = records(0..500);
        for chunk in all.chunks(7) {
            w.append(&framed(chunk)).unwrap();
        }
        assert!(segment_files(dir.path()) > 3);
        let (got, tickets) = read_all(&mut r, 2000);
        assert_eq!(got, all);
        // Out of order: nothing is freed until the first batch is delivered.
        for t in tickets.iter().skip(1) {
            r.ack(*t).unwrap();
        }
        let before = segment_files(dir.path());
        assert!(before > 3);
        r.ack(tickets[0]).unwrap();
        assert_eq!(
            segment_files(dir.path()),
            1,
            "only the one being written stays"
        );
        assert_eq!(r.available().0, 0);
        w.close().unwrap();
    }

    #[test]
    fn a_restart_resumes_after_the_last_acknowledged_batch() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let all = records(0..300);
        {
            let (mut w, mut r) = open(dir.path(), 1 << 30, 2048, stats.clone()).unwrap();
            w.append(&framed(&all)).unwrap();
            w.close().unwrap();
            let mut got = 0;
            let t1 = r.read(1 << 20, 100, |_| got += 1).unwrap().unwrap();
            let _t2 = r.read(1 << 20, 100, |_| got += 1).unwrap().unwrap();
            r.ack(t1).unwrap(); // the second batch was in flight when the agent died
            assert_eq!(got, 200);
        }
        let (w, mut r) = open(dir.path(), 1 << 30, 2048, stats).unwrap();
        drop(w);
        let (got, _) = read_all(&mut r, 1 << 20);
        assert_eq!(
            got,
            all[100..].to_vec(),
            "resent from the first unacknowledged"
        );
    }

    #[test]
    fn a_torn_write_and_damage_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let all = records(0..20);
        {
            let (mut w, _r) = open(dir.path(), 1 << 30, 1 << 20, stats.clone()).unwrap();
            w.append(&framed(&all)).unwrap();
            w.close().unwrap();
        }
        let seg = dir.path().join(format!("{:020}{SEGMENT_SUFFIX}", 0));
        let mut bytes = fs::read(&seg).unwrap();
        // Damage the 6th record's payload; tear the last one in half.
        let sixth = framed(&all[..5]).len() + record::HEADER + 2;
        bytes[sixth] ^= 0x55;
        let last = framed(&all[19..]).len();
        bytes.truncate(bytes.len() - last / 2);
        fs::write(&seg, bytes).unwrap();
        let (w, mut r) = open(dir.path(), 1 << 30, 1 << 20, stats.clone()).unwrap();
        drop(w);
        let (got, _) = read_all(&mut r, 1 << 20);
        let mut want = all[..19].to_vec();
        want.remove(5);
        assert_eq!(got, want);
        assert_eq!(Stats::get(&stats.buffer_corrupt_records), 2);
    }

    #[test]
    fn a_full_queue_holds_the_writer_until_the_reader_frees_room() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let (mut w, mut r) = open(dir.path(), 64 * 1024, 8 * 1024, stats.clone()).unwrap();
        let all = records(0..4000);
        let writer = std::thread::spawn(move || {
            for chunk in all.chunks(20) {
                w.append(&framed(chunk)).unwrap();
            }
            w.close().unwrap();
        });
        // Elasticsearch is away for a while: the writer fills the queue and waits.
        while Stats::get(&stats.buffer_full) == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut got = Vec::new();
        let mut peak = 0;
        loop {
            peak = peak.max(Stats::get(&stats.buffer_bytes));
            match r
                .read(16 * 1024, 1000, |p| {
                    got.push(String::from_utf8(p.to_vec()).unwrap())
                })
                .unwrap()
            {
                Some(t) => r.ack(t).unwrap(),
                None if r.available().1 && r.available().0 == 0 => break,
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        writer.join().unwrap();
        assert_eq!(got, records(0..4000));
        assert!(peak <= 64 * 1024 + 8 * 1024, "peak {peak}");
    }
}
