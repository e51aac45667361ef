//! Turns a file's raw lines into events: parse the runtime format, merge partial chunks,
//! join multiline groups, and number the events with the offset that is safe to commit
//! once each is delivered. Pure logic: no I/O, no clock of its own.

use super::format::FormatState;
use super::line::Line;
use super::multiline::MultilineBuffer;
use super::partial::{bounded, PartialBuffer};
use super::reader::RawLine;
use crate::config::MultilineRules;
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
    pending: Vec<u64>,
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
            pending: Vec::new(),
        }
    }

    pub fn context(&self) -> &Arc<FileContext> {
        &self.ctx
    }

    /// How many events this assembler has emitted.
    pub fn emitted(&self) -> u64 {
        self.next_seq
    }

    /// The file's runtime format, once its first line was read.
    pub fn format(&self) -> Option<super::format::Detected> {
        self.format.detected()
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
    /// line is still held back or comes out later in this step: nothing before a line
    /// that is not yet emitted may be committed.
    fn emit(&mut self, out: &mut Vec<LogEvent>) {
        if self.finished.is_empty() {
            return;
        }
        // `pending[i]`: the lowest start among what is still held and lines i.. of this step.
        let mut pending = std::mem::take(&mut self.pending);
        pending.clear();
        pending.resize(self.finished.len() + 1, self.held_min());
        for i in (0..self.finished.len()).rev() {
            pending[i] = pending[i + 1].min(self.finished[i].start);
        }
        for (i, line) in self.finished.drain(..).enumerate() {
            let held = pending[i + 1];
            let seq = self.next_seq;
            self.next_seq += 1;
            let mut flags = line.flags;
            if line.timestamp.is_empty() {
                flags.insert(Flags::NO_TIMESTAMP);
            }
            out.push(LogEvent {
                pod: None,
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
        self.pending = pending;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MultilineConfig;
    use crate::event::FileIdentity;
    use proptest::prelude::*;

    fn rules(max: usize, overflow: LineOverflow) -> Arc<AssemblyRules> {
        let ml = MultilineConfig {
            presets: vec!["java".into()],
            ..Default::default()
        };
        Arc::new(AssemblyRules {
            format: LogFormat::Auto,
            max_line_bytes: max,
            overflow,
            multiline: MultilineRules::from_config(&ml).unwrap(),
        })
    }

    fn ctx() -> Arc<FileContext> {
        Arc::new(FileContext {
            key: 1,
            kube: Default::default(),
            identity: FileIdentity {
                dev: 0,
                inode: 0,
                fingerprint: 0,
            },
            path: "/x".into(),
            known_since: std::time::Instant::now(),
            replay_end: 0,
            ids: crate::event::IdScheme::Offset,
        })
    }

    /// Raw CRI lines with offsets, as a file would hold them.
    fn raw_lines(lines: &[String]) -> Vec<RawLine> {
        let mut off = 0;
        lines
            .iter()
            .map(|l| {
                let r = RawLine {
                    start: off,
                    end: off + l.len() as u64 + 1,
                    bytes: Bytes::copy_from_slice(l.as_bytes()),
                    flags: Flags::empty(),
                };
                off = r.end;
                r
            })
            .collect()
    }

    fn assemble(rules: &Arc<AssemblyRules>, raws: &[RawLine]) -> Vec<LogEvent> {
        let mut a = Assembler::new(ctx(), rules.clone());
        let mut out = Vec::new();
        let now = Instant::now();
        for r in raws {
            a.push(r.clone(), now, &mut out);
        }
        a.flush_all(now, &mut out);
        out
    }

    fn line_strategy() -> impl Strategy<Value = String> {
        let stream = prop_oneof![Just("stdout"), Just("stderr")];
        let tag = prop_oneof![3 => Just("F"), 1 => Just("P")];
        let content = prop_oneof![
            Just("plain text".to_string()),
            Just("java.lang.RuntimeException: boom".to_string()),
            Just("\tat a.B.c(B.java:1)".to_string()),
            Just("Caused by: x.Y: z".to_string()),
            "[a-z]{0,12}",
        ];
        (stream, tag, content)
            .prop_map(|(s, t, c)| format!("2024-01-01T00:00:00.000000001Z {s} {t} {c}"))
    }

    #[test]
    fn interleaved_streams_keep_their_own_partials() {
        let lines: Vec<String> = [
            "2024-01-01T00:00:00Z stdout P out-1a ",
            "2024-01-01T00:00:00Z stderr P err-1a ",
            "2024-01-01T00:00:00Z stdout F out-1b",
            "2024-01-01T00:00:00Z stderr F err-1b",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let raws = raw_lines(&lines);
        let out = assemble(&rules(1 << 20, LineOverflow::Split), &raws);
        let msgs: Vec<&[u8]> = out.iter().map(|e| &e.message[..]).collect();
        assert_eq!(msgs, vec![&b"out-1a out-1b"[..], b"err-1a err-1b"]);
        // The stdout line may not commit past the stderr chunk still held.
        assert_eq!(out[0].safe_point, raws[1].start);
        assert_eq!(out[1].safe_point, raws[3].end);
        assert_eq!(out.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![0, 1]);
    }

    proptest! {
        /// Restarting at any event's safe point, after delivering it and all before it,
        /// emits every later event again and nothing that was not emitted before.
        #[test]
        fn restart_at_any_safe_point_loses_nothing(lines in proptest::collection::vec(line_strategy(), 1..40),
                                                   max in prop_oneof![Just(1usize << 20), 60usize..120],
                                                   truncate: bool) {
            let overflow = if truncate { LineOverflow::Truncate } else { LineOverflow::Split };
            let r = rules(max, overflow);
            let raws = raw_lines(&lines);
            let all = assemble(&r, &raws);
            let key = |e: &LogEvent| (e.offset, e.message.clone());
            for (k, e) in all.iter().enumerate() {
                prop_assert!(k == 0 || all[k - 1].safe_point <= e.safe_point, "safe points never go back");
                let rest: Vec<RawLine> = raws.iter().filter(|l| l.start >= e.safe_point).cloned().collect();
                prop_assert!(rest.first().is_none_or(|l| l.start == e.safe_point), "safe point is a line start");
                let again: Vec<_> = assemble(&r, &rest).iter().map(key).collect();
                if max == 1 << 20 {
                    for later in &all[k + 1..] {
                        prop_assert!(again.contains(&key(later)), "event at {} lost after restart at {}", later.offset, e.safe_point);
                    }
                } else if !truncate {
                    // Near the size bound, pieces and groups may form differently when
                    // reading starts later; every chunk's text must still be shipped.
                    for raw in &rest {
                        let text = &raw.bytes[raw.bytes.len().min(40)..];
                        let shipped = text.is_empty() || again.iter().any(|(_, m)| m.windows(text.len()).any(|w| w == text));
                        prop_assert!(shipped, "line at {} lost after restart at {}", raw.start, e.safe_point);
                    }
                }
            }
        }
    }
}
