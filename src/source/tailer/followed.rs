//! One followed file: where reading starts, each read, the checks for rotation and
//! truncation (the copy `copytruncate` leaves is read on), and letting it go.

use super::*;

impl Tailer {
    /// Whether a live file was truncated or its content replaced behind our back.
    pub(super) fn replaced(&self, i: usize) -> bool {
        let f = &self.files[i];
        let Some(r) = &f.reading else { return false };
        let Ok(meta) = f.file.metadata() else {
            return false;
        };
        is_new_generation(
            meta.len(),
            r.reader.read_position(),
            fingerprint(&f.file).ok().flatten(),
            r.asm.context().identity.fingerprint,
        )
    }

    /// Starts reading once the file has a first line to fingerprint.
    pub(super) fn identify(&mut self, i: usize) {
        self.identify_with(i, fingerprint);
    }

    pub(super) fn identify_with(
        &mut self,
        i: usize,
        fingerprint: fn(&File) -> std::io::Result<Option<u64>>,
    ) {
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
        let seen = self.seen.get(&identity).map(|(o, _)| *o);
        let checkpoint = self.checkpoints.get(&identity);
        let known = if f.fresh { None } else { seen.or(checkpoint) };
        // Resumed from the last run: what it held then may have been sent already.
        let replay_end = match (f.fresh, seen, checkpoint) {
            (false, None, Some(_)) => self.checkpoints.replay_end(&identity, size),
            _ => 0,
        };
        let from_end =
            f.found_at_start && self.first_start && self.settings.start_at == StartAt::End;
        let offset = match start_offset(known, size, from_end) {
            Start::At(o) => o,
            Start::EndOfLastLine => end_of_last_line(&f.file, size),
        };
        f.fresh = false;
        if let Err(e) = f.file.seek(SeekFrom::Start(offset)) {
            tracing::warn!(path = %f.path.display(), error = %e, "cannot seek log file");
            return;
        }
        self.start_reading(i, identity, offset, replay_end);
    }

    /// File `i` is read as `identity` from `offset` on (the file is positioned there).
    /// `replay_end`: see `FileContext::replay_end`.
    pub(super) fn start_reading(
        &mut self,
        i: usize,
        identity: FileIdentity,
        offset: u64,
        replay_end: u64,
    ) {
        let f = &mut self.files[i];
        let key = self.next_key;
        self.next_key += 1;
        let ids = self.checkpoints.ids(&identity);
        let ctx = Arc::new(FileContext {
            key,
            kube: f.kube.clone(),
            identity,
            path: f.path.clone(),
            known_since: f.known_since,
            replay_end,
            ids,
        });
        // Without a state directory nothing survives a crash: nothing to reserve.
        let (limit, asked) = match self.settings.reserve_ahead {
            Some(ahead) => (0, offset + ahead),
            None => (u64::MAX, u64::MAX),
        };
        let limit = Arc::new(AtomicU64::new(limit));
        let _ = self.ckpt_tx.send(CheckpointMsg::Opened {
            key,
            identity,
            path: f.path.clone(),
            real_path: f.real_path.clone(),
            offset,
            ids,
            reserve: self.settings.reserve_ahead.map(|_| (asked, limit.clone())),
        });
        f.reading = Some(Reading {
            reader: LineReader::new(offset, self.settings.read_size, self.settings.max_raw_line),
            asm: Assembler::new(ctx, self.rules.clone()),
            counted: 0,
            limit,
            asked,
        });
    }

    /// One turn over the files due: each is read up to its quantum, then looked at again
    /// at once if it has more, after `read_interval` if it was read to its end, or later
    /// and later while nothing comes. A pass thus gathers the lines of many files.
    pub(super) fn read_pass(&mut self, pass: Instant) -> Result<(), ChannelClosed> {
        let older = self.oldest_unfinished_generations();
        let mut now = pass;
        for i in 0..self.files.len() {
            if self.files[i].next_visit > pass {
                continue;
            }
            if self.files[i].reading.is_none() {
                self.identify(i);
            }
            let quantum = self.settings.quantum;
            let f = &mut self.files[i];
            // A container's generations are read in order: the newer wait for the older.
            if !older.is_empty()
                && older
                    .iter()
                    .any(|(dir, rank)| *rank < f.rank && f.real_path.parent() == Some(dir))
            {
                continue;
            }
            let Some(r) = f.reading.as_mut() else {
                f.at_eof = true;
                f.idle_backoff(pass, &self.settings);
                continue;
            };
            let end = r.readable_end(self.settings.reserve_ahead, &self.ckpt_tx);
            let position = r.reader.read_position();
            // A watched file with something to read at a look: when it was written.
            let mut written_unseen = None;
            // Stopped short of data by the reservation, not at the end of the file.
            let mut held = position >= end;
            let (n, more) = if let Some(content) = f.compressed.as_deref_mut() {
                match r.reader.read(
                    content,
                    quantum,
                    end.saturating_sub(position),
                    &mut self.raw,
                ) {
                    Ok(n) => (n, n > 0),
                    Err(e) => {
                        tracing::warn!(path = %f.real_path.display(), error = %e, "compressed generation is corrupt; what was read of it is shipped");
                        Stats::add(&self.stats.read_errors, 1);
                        (0, false)
                    }
                }
            } else {
                // The size says what there is to read: idle files cost one fstat, no buffer.
                let size = match f.file.metadata() {
                    Ok(m) => {
                        if f.watch.is_some() && m.len() > position {
                            written_unseen = m.modified().ok();
                        }
                        m.len()
                    }
                    Err(e) => {
                        // Repeats every turn while it lasts: logged once, then every 30 s with a count.
                        if let Some(held_back) = crate::log_limit::allow("tail.stat") {
                            tracing::warn!(path = %f.path.display(), error = %e, held_back, "cannot stat log file; will retry");
                        }
                        Stats::add(&self.stats.read_errors, 1);
                        f.at_eof = true;
                        f.idle_backoff(pass, &self.settings);
                        continue;
                    }
                };
                if size < position {
                    self.restart_generation(i, now, None);
                    continue;
                }
                held = held && size > position;
                let line_start = r.reader.line_start();
                let available = size.min(end).saturating_sub(position);
                let n = match r
                    .reader
                    .read(&mut f.file, quantum, available, &mut self.raw)
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
                // Truncated and rewritten past our offset since the last read: what was
                // just read is the middle of new content. Checked after the read, so data
                // read before a truncation is never thrown away.
                if n > 0
                    && !matches!(fingerprint(&f.file), Ok(Some(fp)) if fp == r.asm.context().identity.fingerprint)
                {
                    self.raw.clear();
                    // What was just read is the new content: the old one is resumed, on
                    // its copy, from the line this read began in.
                    self.restart_generation(i, now, Some(line_start));
                    continue;
                }
                (n, (n as u64) < available && n > 0)
            };
            if n > 0 {
                now = Instant::now();
            }
            Stats::add(&self.stats.bytes_read, n as u64);
            Stats::add(&self.stats.file_reads, u64::from(n > 0));
            Stats::add(&self.stats.lines_read, self.raw.len() as u64);
            for raw in self.raw.drain(..) {
                r.asm.push(raw, now, &mut self.out);
            }
            if held {
                Stats::add(&self.stats.reads_held_for_reservation, 1);
            }
            f.at_eof = !more && !held;
            // Timed from the pass's start, so that files read together stay together.
            if held {
                f.next_visit = pass + RESERVATION_WAIT;
            } else if more {
                f.next_visit = pass;
            } else if n > 0 {
                f.backoff = self.settings.read_interval;
                f.next_visit = pass + f.backoff;
            } else {
                f.idle_backoff(pass, &self.settings);
            }
            if n > 0 {
                f.last_data = now;
            }
            if let Some(written) = written_unseen {
                self.written_without_event(i, written);
            }
            let f = &self.files[i];
            if f.backoff >= self.settings.max_idle_poll
                && now.duration_since(f.last_data) >= PARK_AFTER
                && !held
            {
                self.park(i, pass);
            }
            // Also while a file is read at full speed: a rotation must not wait for its end.
            self.check_path(i, now);
            if self.out.len() >= BATCH_EVENTS {
                self.send()?;
            }
        }
        Ok(())
    }

    /// File `i` has been idle for a while: it is watched for its next write (one event,
    /// see `Watcher::watch_file`) and otherwise looked at only on the `PARKED_LOOK` grid.
    /// Not without directory watches (they tell of rotations), nor when it is rotated,
    /// compressed, not yet identified or cannot be watched: those are polled.
    fn park(&mut self, i: usize, pass: Instant) {
        if !self.watches_work() {
            return;
        }
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        let f = &mut self.files[i];
        let Some(r) = f.reading.as_ref() else { return };
        if f.gone_since.is_some() || f.compressed.is_some() || f.unwatchable {
            return;
        }
        let watched_before = f.watch.is_some();
        if !watched_before {
            match w.watch_file(&f.file, (f.dev, f.inode)) {
                Ok(wd) => {
                    f.watch = Some(wd);
                    Stats::add(&self.stats.files_idle_watched, 1);
                }
                Err(e) => {
                    if let Some(held_back) = crate::log_limit::allow("tail.watch_file") {
                        tracing::info!(path = %f.path.display(), error = %e, held_back, "cannot watch an idle file for writes; it is polled");
                    }
                    Stats::add(&self.stats.file_watches_failed, 1);
                    f.unwatchable = true;
                    return;
                }
            }
        }
        // Written between the last look and a new watch: no event will tell. A watch that
        // was there already would have raised one.
        let position = r.reader.read_position();
        let caught_up = watched_before || f.file.metadata().is_ok_and(|m| m.len() == position);
        f.next_visit = if caught_up {
            let since = pass.saturating_duration_since(self.started);
            let looks = since.as_millis() / PARKED_LOOK.as_millis() + 1;
            self.started + PARKED_LOOK * looks as u32
        } else {
            pass
        };
    }

    /// Watched idle files that were written: read them now.
    pub(super) fn wake_written(&mut self, now: Instant, lost_events: bool) {
        let written = self.wake.take_written();
        if written.is_empty() && !lost_events {
            return;
        }
        for i in 0..self.files.len() {
            let f = &mut self.files[i];
            if written.contains(&(f.dev, f.inode)) {
                // The kernel removed the one-shot watch with its event.
                if f.watch.take().is_some() {
                    Stats::sub(&self.stats.files_idle_watched, 1);
                }
                f.next_visit = now;
                f.backoff = Duration::ZERO;
            } else if lost_events && f.watch.is_some() {
                // Events were lost: every watched file is looked at (and watched anew).
                self.unwatch(i);
                self.files[i].next_visit = now;
            }
        }
    }

    /// Drops file `i`'s watch, if it has one.
    pub(super) fn unwatch(&mut self, i: usize) {
        let Some(wd) = self.files[i].watch.take() else {
            return;
        };
        Stats::sub(&self.stats.files_idle_watched, 1);
        if let Some(w) = self.watcher.as_mut() {
            w.unwatch_file(wd);
        }
    }

    /// A look at watched file `i` found it written at `written`, with no event: if that is
    /// not just now, its filesystem raises none (NFS, FUSE): it is polled from then on.
    fn written_without_event(&mut self, i: usize, written: std::time::SystemTime) {
        if self.files[i].watch.is_none() {
            return;
        }
        self.unwatch(i);
        let f = &mut self.files[i];
        let age = std::time::SystemTime::now()
            .duration_since(written)
            .unwrap_or_default();
        if age >= EVENT_MISSED_AFTER {
            if let Some(held_back) = crate::log_limit::allow("tail.event_missed") {
                tracing::warn!(path = %f.path.display(), held_back, "a write to an idle file raised no inotify event; the file is polled from now on");
            }
            Stats::add(&self.stats.file_watches_failed, 1);
            f.unwatchable = true;
        }
    }

    /// For each directory with a rotated generation not yet read to its end, the rank of
    /// the oldest such: the files after it there wait. Empty on a calm node.
    fn oldest_unfinished_generations(&self) -> Vec<(PathBuf, u64)> {
        let mut older: Vec<(PathBuf, u64)> = Vec::new();
        for f in self.files.iter().filter(|f| f.rank != LIVE && !f.at_eof) {
            let Some(dir) = f.real_path.parent() else {
                continue;
            };
            match older.iter_mut().find(|(d, _)| d == dir) {
                Some((_, rank)) => *rank = (*rank).min(f.rank),
                None => older.push((dir.to_path_buf(), f.rank)),
            }
        }
        older
    }

    /// Has the file's path moved on to a new file (rotation)? The fallback to the watch on
    /// its directory: not needed while that works.
    pub(super) fn check_path(&mut self, i: usize, now: Instant) {
        // The old file is read to its end through the open fd: at most once a second, so
        // idle files cost little.
        let every = self.settings.max_idle_poll.max(PATH_CHECK_INTERVAL);
        let f = &self.files[i];
        if f.gone_since.is_some() || now.duration_since(f.last_path_check) < every {
            return;
        }
        let told = self.dir_watched(f) && self.watches_work();
        let f = &mut self.files[i];
        f.last_path_check = now;
        if told {
            return;
        }
        let moved =
            std::fs::metadata(&f.path).map_or(true, |m| (m.dev(), m.ino()) != (f.dev, f.inode));
        if moved {
            self.wake.request_rescan();
        }
    }

    /// The file was truncated (copytruncate) or rewritten: what was held of the old content
    /// is shipped, and reading starts again at 0 as a new generation. `resume`: the old
    /// content's reading is to go on from there (the reader took in new content already).
    pub(super) fn restart_generation(&mut self, i: usize, now: Instant, resume: Option<u64>) {
        let f = &mut self.files[i];
        tracing::info!(path = %f.path.display(), "file truncated; reading it again from the start");
        Stats::add(&self.stats.truncations, 1);
        if let Some(mut r) = f.reading.take() {
            let position = resume.unwrap_or(r.reader.read_position());
            let identity = r.asm.context().identity;
            self.truncated.insert(identity.fingerprint, now);
            let copy = find_copy(&f.real_path, identity, position);
            if copy.is_none() {
                Stats::add(&self.stats.truncations_unrecovered, 1);
            }
            match copy.filter(Copy::has_more) {
                // copytruncate copied the file before truncating it: what was not read yet
                // is in the copy. The same reading goes on there, to its end.
                Some(copy) => {
                    if resume.is_some() {
                        let skipped = r.reader.skipped_bytes;
                        r.reader = LineReader::new(
                            position,
                            self.settings.read_size,
                            self.settings.max_raw_line,
                        );
                        r.reader.skipped_bytes = skipped;
                    }
                    Stats::add(&self.stats.truncation_recovered_bytes, copy.remaining);
                    tracing::info!(copy = %copy.path.display(), bytes = copy.remaining, "reading the rest of the truncated file from its copy");
                    let found = Found {
                        path: f.path.clone(),
                        real_path: copy.path,
                        dev: copy.dev,
                        inode: copy.inode,
                    };
                    let content = copy.compressed.map(Box::new);
                    let mut copy =
                        Followed::new(copy.file, found, f.kube.clone(), f.known_since, now);
                    copy.reading = Some(r);
                    copy.compressed = content;
                    let rank = f.rank;
                    self.files.push(copy);
                    let c = self.files.len() - 1;
                    self.mark_rotated(c, now);
                    // Found rotated before (renamed, then seen truncated): the copy holds
                    // its older content and takes its place in the order; the new content
                    // comes after.
                    if rank != LIVE {
                        self.files[i].rank = self.files[c].rank;
                        self.files[c].rank = rank;
                    }
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
        f.next_visit = now;
        if f.file.seek(SeekFrom::Start(0)).is_ok() {
            self.identify(i);
        }
    }

    /// Ships held-back groups whose wait is over. Only files read to their end count: a
    /// group whose next lines are already in the file waits for us, not for the writer
    /// (under backpressure or with many files, reading may come back late).
    pub(super) fn flush_expired(&mut self, now: Instant) {
        for f in self.files.iter_mut().filter(|f| f.at_eof) {
            if let Some(r) = &mut f.reading {
                if r.asm.next_deadline().is_some_and(|d| d <= now) {
                    r.asm.flush_expired(now, &mut self.out);
                }
            }
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.files
            .iter()
            .filter(|f| f.at_eof)
            .filter_map(|f| f.reading.as_ref().and_then(|r| r.asm.next_deadline()))
            .min()
    }

    /// Lets go of rotated or deleted files that stayed at their end for `rotate_wait`.
    pub(super) fn release_drained(&mut self, now: Instant) {
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
    pub(super) fn release(&mut self, i: usize, now: Instant) {
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
        self.unwatch(i);
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

    pub(super) fn finish_all(&mut self, now: Instant) {
        while !self.files.is_empty() {
            self.release(self.files.len() - 1, now);
        }
    }
}

/// Where reading a newly identified file starts.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Start {
    At(u64),
    /// Just past the last complete line: lines written before the agent's first start
    /// are not shipped (`start_at = "end"`).
    EndOfLastLine,
}

/// `known`: the offset a checkpoint or an earlier reading of the same identity holds;
/// `size`: the file's size now; `from_end`: found at the first start, with `start_at = "end"`.
pub(super) fn start_offset(known: Option<u64>, size: u64, from_end: bool) -> Start {
    match known {
        Some(o) if o <= size => Start::At(o),
        // Shorter than what was read: truncated while we were away.
        Some(_) => Start::At(0),
        None if from_end => Start::EndOfLastLine,
        None => Start::At(0),
    }
}

/// Whether a followed file now holds a new generation: shorter than what was read
/// (truncated), or another first line (rewritten in place). `first_line` is `None` while
/// the file has no complete first line.
pub(super) fn is_new_generation(size: u64, read: u64, first_line: Option<u64>, known: u64) -> bool {
    size < read || first_line.is_some_and(|fp| fp != known)
}

/// A copy of a truncated file, opened at the place reading stopped.
pub(super) struct Copy {
    file: File,
    path: PathBuf,
    dev: u64,
    inode: u64,
    /// Bytes beyond that place (of a compressed copy: as its trailer records them).
    remaining: u64,
    /// The content of a copy that was compressed (`compress` without `delaycompress`).
    compressed: Option<Decompressed>,
}

impl Copy {
    fn has_more(&self) -> bool {
        self.remaining > 0 || self.compressed.is_some()
    }
}

/// The copy logrotate's `copytruncate` left beside `real_path` before truncating it: a
/// file in the same directory (not half-written) that is not the file itself and begins
/// with the same first line, uncompressed or gzipped. Opened at `position` (its end if
/// shorter: everything in it was read).
pub(super) fn find_copy(real_path: &Path, identity: FileIdentity, position: u64) -> Option<Copy> {
    let dir = real_path.parent()?;
    let mut compressed = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".tmp") || path == real_path {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() || (meta.dev(), meta.ino()) == (identity.dev, identity.inode) {
            continue;
        }
        let Ok(mut file) = open_log(&path) else {
            continue;
        };
        let (gz, fp) = compressed::content_fingerprint(&file);
        if !matches!(fp, Ok(Some(fp)) if fp == identity.fingerprint) {
            continue;
        }
        let mut copy = Copy {
            remaining: meta.len().saturating_sub(position),
            path,
            dev: meta.dev(),
            inode: meta.ino(),
            compressed: None,
            file: file.try_clone().ok()?,
        };
        if gz {
            // An uncompressed copy, if there is one too, costs less to read.
            if compressed.is_none() {
                copy.compressed = Decompressed::open_at(&file, position).ok().flatten();
                copy.remaining =
                    compressed::recorded_size(&file).map_or(0, |n| n.saturating_sub(position));
                compressed = Some(copy);
            }
            continue;
        }
        if file
            .seek(SeekFrom::Start(position.min(meta.len())))
            .is_err()
        {
            continue;
        }
        copy.file = file;
        return Some(copy);
    }
    compressed
}

/// Where reading from the end starts: just past the last complete line.
pub(super) fn end_of_last_line(file: &File, size: u64) -> u64 {
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
    fn reading_starts_at_the_known_offset_unless_the_file_is_shorter() {
        assert_eq!(start_offset(Some(120), 500, false), Start::At(120));
        assert_eq!(start_offset(Some(500), 500, true), Start::At(500));
        // Truncated while the agent was away: the file is read from its start.
        assert_eq!(start_offset(Some(900), 500, false), Start::At(0));
        // Unknown: from the start, or past the last line at a first start with "end".
        assert_eq!(start_offset(None, 500, false), Start::At(0));
        assert_eq!(start_offset(None, 500, true), Start::EndOfLastLine);
    }

    #[test]
    fn a_new_generation_is_a_shorter_file_or_another_first_line() {
        assert!(!is_new_generation(1000, 800, Some(7), 7), "grown: the same");
        assert!(!is_new_generation(800, 800, Some(7), 7));
        assert!(is_new_generation(10, 800, Some(7), 7), "truncated");
        assert!(is_new_generation(0, 800, None, 7), "truncated to nothing");
        assert!(
            is_new_generation(2000, 800, Some(9), 7),
            "rewritten past our offset"
        );
        assert!(
            !is_new_generation(2000, 800, None, 7),
            "no whole first line yet says nothing"
        );
    }

    #[test]
    fn the_copy_of_a_truncated_file_is_found_by_its_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("0.log");
        let lines: String = (0..10).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&live, &lines).unwrap();
        let identity = identity_of(&live);
        // Decoys: half-written, another file.
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
        assert_eq!(copy.remaining, (lines.len() as u64) - read_up_to);
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
        assert!(!all.has_more());
        // The copy compressed at once (`compress` without `delaycompress`): read from its
        // content.
        let gz = dir.path().join("0.log.1.gz");
        let mut enc =
            flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
        enc.write_all(lines.as_bytes()).unwrap();
        enc.finish().unwrap();
        std::fs::remove_file(dir.path().join("0.log.1")).unwrap();
        let copy = find_copy(&live, identity, read_up_to).expect("the compressed copy");
        assert_eq!(copy.path, gz);
        rest.clear();
        copy.compressed.unwrap().read_to_string(&mut rest).unwrap();
        assert_eq!(rest, lines[read_up_to as usize..]);
        let all = find_copy(&live, identity, lines.len() as u64).expect("the compressed copy");
        assert!(!all.has_more(), "read to its end already");
        // No copy at all (the file was truncated by its writer).
        std::fs::remove_file(&gz).unwrap();
        assert!(find_copy(&live, identity, read_up_to).is_none());
        // A copy of a later generation (another first line) is not this file's.
        let mut f = File::options().append(true).open(&live).unwrap();
        f.write_all(b"new generation\n").unwrap();
        std::fs::copy(&live, dir.path().join("0.log.2")).unwrap();
        assert!(find_copy(&live, identity, read_up_to).is_none());
    }
}
