//! Turns a file's raw lines into events: parse the runtime format, merge partial chunks,
//! join multiline groups, and number the events with the offset that is safe to commit
//! once each is delivered. Pure logic: no I/O, no clock of its own.

use super::format::FormatState;
use super::line::Line;
use super::multiline::{MultilineBuffer, MultilineRules};
use super::partial::{bounded, PartialBuffer};
use super::reader::RawLine;
use crate::config::{LineOverflow, LogFormat};
use crate::event::{FileContext, Flags, LogEvent, Stream};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;

const STREAMS: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

/// Settings shared by every file's assembler.
#[derive(Debug)]
pub struct AssemblyRules {
    pub format: LogFormat,
    pub max_line_bytes: usize,
    pub overflow: LineOverflow,
    pub multiline: MultilineRules,
}

#[derive(Debug)]
pub struct Assembler {
    ctx: Arc<FileContext>,
    rules: Arc<AssemblyRules>,
    format: FormatState,
    partial: [PartialBuffer; 2],
    multiline: [MultilineBuffer; 2],
    next_seq: u64,
    merged: Vec<Line>,
    finished: Vec<Line>,
}

impl Assembler {
    pub fn new(ctx: Arc<FileContext>, rules: Arc<AssemblyRules>) -> Self {
        Assembler {
            format: FormatState::new(rules.format),
            ctx,
            rules,
            partial: Default::default(),
            multiline: Default::default(),
            next_seq: 0,
            merged: Vec::new(),
            finished: Vec::new(),
        }
    }

    pub fn context(&self) -> &Arc<FileContext> {
        &self.ctx
    }

    /// How many events this assembler has emitted.
    pub fn emitted(&self) -> u64 {
        self.next_seq
    }

    /// Whether lines are held back waiting for more.
    pub fn is_holding(&self) -> bool {
        self.held_min() != u64::MAX
    }

    /// When the oldest multiline group must be flushed.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.multiline.iter().filter_map(|m| m.deadline()).min()
    }

    pub fn push(&mut self, raw: RawLine, now: Instant, out: &mut Vec<LogEvent>) {
        let max = self.rules.max_line_bytes;
        match self.format.parse(&raw.bytes) {
            Some(rl) => {
                let s = rl.stream.index();
                self.partial[s].push(
                    rl,
                    raw.start,
                    raw.end,
                    max,
                    self.rules.overflow,
                    &mut self.merged,
                );
            }
            None => {
                let (content, flags) = bounded(raw.bytes, max);
                self.merged.push(Line {
                    start: raw.start,
                    end: raw.end,
                    timestamp: Bytes::new(),
                    stream: Stream::Stdout,
                    content,
                    flags: flags | Flags::MALFORMED,
                });
            }
        }
        if !raw.flags.is_empty() {
            for l in self.merged.iter_mut().filter(|l| l.end == raw.end) {
                l.flags.insert(raw.flags);
            }
        }
        self.join_and_emit(now, out);
    }

    /// Emits the multiline groups whose flush timeout has passed.
    pub fn flush_expired(&mut self, now: Instant, out: &mut Vec<LogEvent>) {
        for s in STREAMS {
            if let Some(l) = self.multiline[s.index()].flush(now, false, s) {
                self.finished.push(l);
            }
        }
        self.emit(out);
    }

    /// Emits everything held back: the file will not grow any more.
    pub fn flush_all(&mut self, now: Instant, out: &mut Vec<LogEvent>) {
        for s in STREAMS {
            if let Some(l) = self.partial[s.index()].flush(s) {
                self.merged.push(l);
            }
        }
        self.merged.sort_by_key(|l| l.start);
        self.join_and_emit(now, out);
        for s in STREAMS {
            if let Some(l) = self.multiline[s.index()].flush(now, true, s) {
                self.finished.push(l);
            }
        }
        self.finished.sort_by_key(|l| l.start);
        self.emit(out);
    }

    fn join_and_emit(&mut self, now: Instant, out: &mut Vec<LogEvent>) {
        if self.rules.multiline.is_empty() {
            self.finished.append(&mut self.merged);
        } else {
            for line in self.merged.drain(..) {
                let s = line.stream.index();
                self.multiline[s].push(
                    &self.rules.multiline,
                    line,
                    self.rules.max_line_bytes,
                    now,
                    &mut self.finished,
                );
            }
        }
        self.emit(out);
    }

    fn held_min(&self) -> u64 {
        let partial = self.partial.iter().filter_map(|p| p.held_start());
        let multi = self.multiline.iter().filter_map(|m| m.held_start());
        partial.chain(multi).min().unwrap_or(u64::MAX)
    }

    /// Numbers the finished lines. An event's safe point is its end, unless an earlier
    /// line is still held back: nothing before a held line may be committed.
    fn emit(&mut self, out: &mut Vec<LogEvent>) {
        if self.finished.is_empty() {
            return;
        }
        let held = self.held_min();
        for line in self.finished.drain(..) {
            let seq = self.next_seq;
            self.next_seq += 1;
            let mut flags = line.flags;
            if line.timestamp.is_empty() {
                flags.insert(Flags::NO_TIMESTAMP);
            }
            out.push(LogEvent {
                file: self.ctx.clone(),
                seq,
                offset: line.start,
                safe_point: held.min(line.end),
                timestamp: line.timestamp,
                stream: line.stream,
                message: line.content,
                flags,
            });
        }
    }
}
