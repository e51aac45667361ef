//! Per-container rate limits, applied as events leave the enrich stage (or, without one, in
//! a stage of their own before the sink): lines per second per container, from
//! `[rate_limit]` or the pod annotation `logferry.io/rate-limit: "500/s"`. Lines over the
//! limit are dropped, counted, and acknowledged so checkpoints move on. The first line
//! dropped in a window is held and, when the window ends, shipped in place as a summary
//! ("logferry dropped N lines from <pod>/<container> over its limit of 500/s"): the loss is
//! visible in Kibana next to the container's own lines, under a deterministic id.

use crate::checkpoint::CheckpointMsg;
use crate::config::RateLimitConfig;
use crate::enrich::kube::cache::SharedCache;
use crate::event::{AckBuilder, FileKey, Flags, LogEvent};
use crate::stats::Stats;
use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub const ANNOTATION: &str = "logferry.io/rate-limit";
/// A pod's annotation is looked at again this often (it may be edited on a running pod).
const RECHECK: Duration = Duration::from_secs(30);
/// Containers not seen for this long are forgotten.
const IDLE_FORGET: Duration = Duration::from_secs(600);

/// A limit and how it was written, for the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub quota: Quota,
    pub label: String,
}

impl Limit {
    /// The config's default, `None` when off.
    pub fn from_config(cfg: &RateLimitConfig) -> Option<Limit> {
        let rate = NonZeroU32::new(cfg.lines_per_second)?;
        let burst = NonZeroU32::new(cfg.burst).unwrap_or(rate);
        Some(Limit {
            quota: Quota::per_second(rate).allow_burst(burst),
            label: format!("{rate}/s"),
        })
    }

    /// An annotation's value: `500/s`, `6000/m`, or `none` (unlimited). The burst is one
    /// second's worth.
    pub fn parse(value: &str) -> Result<Option<Limit>, String> {
        let v = value.trim();
        if v.eq_ignore_ascii_case("none") || v == "0" {
            return Ok(None);
        }
        let (n, unit) = v
            .split_once('/')
            .ok_or_else(|| format!("{value:?} is not like \"500/s\", \"6000/m\" or \"none\""))?;
        let n: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("{value:?}: {n:?} is not a whole number"))?;
        let Some(n) = NonZeroU32::new(n) else {
            return Ok(None);
        };
        let quota = match unit.trim() {
            "s" => Quota::per_second(n),
            "m" => Quota::per_minute(n)
                .allow_burst(NonZeroU32::new(n.get().div_ceil(60)).expect("at least one")),
            u => return Err(format!("{value:?}: unit {u:?} is not s or m")),
        };
        Ok(Some(Limit {
            quota,
            label: format!("{n}/{}", unit.trim()),
        }))
    }
}

struct Container {
    /// `<namespace>/<pod>/<container>`, or the file's path outside Kubernetes.
    key: String,
    /// `<pod>/<container>`, for the summary.
    name: String,
    limit: Option<(Limit, DefaultDirectRateLimiter)>,
    checked_at: Instant,
    /// The first line dropped in this window: it becomes the summary.
    held: Option<LogEvent>,
    dropped: u64,
    due: Instant,
    last_seen: Instant,
}

/// Per-container limits over batches of events. Hosted by the enrich stage when there is
/// one (no extra hop), else by a stage of its own (`run`).
pub struct RateLimits {
    default: Option<Limit>,
    /// Pods' annotations, when Kubernetes metadata is on and annotations are honoured.
    pods: Option<SharedCache>,
    interval: Duration,
    acks: mpsc::UnboundedSender<CheckpointMsg>,
    stats: Arc<Stats>,
    /// Each file's container, an index into `containers`.
    files: HashMap<FileKey, usize>,
    by_key: HashMap<String, usize>,
    containers: Vec<Container>,
    next_due: Option<Instant>,
}

impl RateLimits {
    /// `None` when no container can be limited: no default and no annotations to read.
    pub fn new(
        cfg: &RateLimitConfig,
        pods: Option<SharedCache>,
        acks: mpsc::UnboundedSender<CheckpointMsg>,
        stats: Arc<Stats>,
    ) -> Option<Self> {
        let default = Limit::from_config(cfg);
        let pods = pods.filter(|_| cfg.pod_annotation);
        if default.is_none() && pods.is_none() {
            return None;
        }
        Some(RateLimits {
            default,
            pods,
            interval: cfg.summary_interval,
            acks,
            stats,
            files: HashMap::new(),
            by_key: HashMap::new(),
            containers: Vec::new(),
            next_due: None,
        })
    }

    /// When the next summary is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.next_due
    }

    /// Moves the events within their container's limit to `out`; holds or acknowledges
    /// the others.
    pub fn filter(&mut self, batch: Vec<LogEvent>, now: Instant, out: &mut Vec<LogEvent>) {
        let mut dropped = AckBuilder::default();
        let (mut n_dropped, due) = (0, now + self.interval);
        let mut held_any = false;
        // Batches come in runs of one file: look its container up once a run.
        let mut last: Option<(FileKey, usize)> = None;
        for e in batch {
            let i = match last {
                Some((key, i)) if key == e.file.key => i,
                _ => {
                    let i = self.container(&e, now);
                    last = Some((e.file.key, i));
                    i
                }
            };
            let c = &mut self.containers[i];
            c.last_seen = now;
            let Some((_, limiter)) = &c.limit else {
                out.push(e);
                continue;
            };
            if limiter.check().is_ok() {
                out.push(e);
                continue;
            }
            c.dropped += 1;
            n_dropped += 1;
            if c.held.is_none() {
                c.held = Some(e);
                c.due = due;
                held_any = true;
            } else {
                dropped.push(&e);
            }
        }
        if n_dropped > 0 {
            Stats::add(&self.stats.lines_rate_limited, n_dropped);
        }
        if held_any {
            self.next_due = Some(self.next_due.map_or(due, |d| d.min(due)));
        }
        if !dropped.is_empty() {
            let _ = self.acks.send(CheckpointMsg::Acked(dropped.finish()));
        }
    }

    /// The index of the event's container, its limit looked up again when due.
    fn container(&mut self, e: &LogEvent, now: Instant) -> usize {
        let i = match self.files.get(&e.file.key) {
            Some(&i) => i,
            None => {
                let k = &e.file.kube;
                let (key, name) = match (&k.namespace, &k.pod_name, &k.container_name) {
                    (Some(ns), Some(pod), Some(c)) => {
                        (format!("{ns}/{pod}/{c}"), format!("{pod}/{c}"))
                    }
                    _ => {
                        let p = e.file.path.display().to_string();
                        (p.clone(), p)
                    }
                };
                let containers = &mut self.containers;
                let i = *self.by_key.entry(key.clone()).or_insert_with(|| {
                    containers.push(Container {
                        key,
                        name,
                        limit: None,
                        checked_at: now - RECHECK * 2,
                        held: None,
                        dropped: 0,
                        due: now,
                        last_seen: now,
                    });
                    containers.len() - 1
                });
                self.files.insert(e.file.key, i);
                i
            }
        };
        let c = &mut self.containers[i];
        if now.duration_since(c.checked_at) >= RECHECK {
            c.checked_at = now;
            let limit = match self.pods.as_ref().and_then(|p| annotation(p, e)) {
                Some(Ok(l)) => l,
                Some(Err(why)) => {
                    if let Some(held_back) = crate::log_limit::allow("rate_limit.annotation") {
                        tracing::warn!(pod = %c.name, held_back, "{ANNOTATION}: {why}; the default limit applies");
                    }
                    self.default.clone()
                }
                None => self.default.clone(),
            };
            if c.limit.as_ref().map(|(l, _)| l) != limit.as_ref() {
                c.limit = limit.map(|l| {
                    let limiter = RateLimiter::direct(l.quota);
                    (l, limiter)
                });
            }
        }
        i
    }

    /// Ships the summaries that are due (all of them with `None`).
    pub fn summarize(&mut self, now: Option<Instant>, out: &mut Vec<LogEvent>) {
        self.next_due = None;
        for c in &mut self.containers {
            if c.held.is_none() {
                continue;
            }
            if now.is_some_and(|now| c.due > now) {
                self.next_due = Some(self.next_due.map_or(c.due, |d| d.min(c.due)));
                continue;
            }
            let mut e = c.held.take().expect("checked");
            let label = c
                .limit
                .as_ref()
                .map_or("its limit", |(l, _)| l.label.as_str());
            e.message = Bytes::from(format!(
                "logferry dropped {} lines from {} over its limit of {label}",
                c.dropped, c.name
            ));
            e.flags = Flags::RATE_LIMIT_SUMMARY;
            c.dropped = 0;
            Stats::add(&self.stats.rate_limit_summaries, 1);
            out.push(e);
        }
    }

    /// Forgets containers not seen for a while (and nothing held).
    pub fn forget_idle(&mut self, now: Instant) {
        let before = self.containers.len();
        self.containers
            .retain(|c| c.held.is_some() || now.duration_since(c.last_seen) < IDLE_FORGET);
        if self.containers.len() == before {
            return;
        }
        let old: HashMap<usize, String> = self.by_key.drain().map(|(k, i)| (i, k)).collect();
        self.by_key = self
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| (c.key.clone(), i))
            .collect();
        let by_key = &self.by_key;
        self.files = self
            .files
            .drain()
            .filter_map(|(f, i)| Some((f, *by_key.get(old.get(&i)?)?)))
            .collect();
    }
}

/// The stage of its own, when there is no enrich stage to host the limits.
pub async fn run(
    mut limits: RateLimits,
    mut rx: mpsc::Receiver<Vec<LogEvent>>,
    tx: mpsc::Sender<Vec<LogEvent>>,
) {
    let mut forget = tokio::time::interval(IDLE_FORGET / 10);
    loop {
        let mut out = Vec::new();
        tokio::select! {
            batch = rx.recv() => match batch {
                Some(batch) => {
                    out.reserve(batch.len());
                    limits.filter(batch, Instant::now(), &mut out);
                }
                None => {
                    // Input ended: every held summary goes now.
                    limits.summarize(None, &mut out);
                    if !out.is_empty() {
                        let _ = tx.send(out).await;
                    }
                    return;
                }
            },
            _ = crate::time::sleep_until(limits.next_due()) => limits.summarize(Some(Instant::now()), &mut out),
            _ = forget.tick() => limits.forget_idle(Instant::now()),
        }
        if !out.is_empty() && tx.send(out).await.is_err() {
            return;
        }
    }
}

/// The pod's annotation, when the pod is known and has one.
fn annotation(pods: &SharedCache, e: &LogEvent) -> Option<Result<Option<Limit>, String>> {
    let k = &e.file.kube;
    let cache = pods.read().unwrap_or_else(|p| p.into_inner());
    let pod = cache.get(
        k.pod_uid.as_deref(),
        k.namespace.as_deref(),
        k.pod_name.as_deref(),
    )?;
    pod.annotations.get(ANNOTATION).map(|v| Limit::parse(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::document::tests::event;

    #[test]
    fn annotations_parse_or_say_what_is_wrong() {
        let l = Limit::parse("500/s").unwrap().unwrap();
        assert_eq!(l.label, "500/s");
        assert_eq!(l.quota.burst_size().get(), 500);
        let m = Limit::parse(" 600/m ").unwrap().unwrap();
        assert_eq!(m.quota.burst_size().get(), 10);
        assert_eq!(Limit::parse("none").unwrap(), None);
        assert_eq!(Limit::parse("0/s").unwrap(), None);
        for bad in ["500", "fast/s", "500/h", "-1/s"] {
            let err = Limit::parse(bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    /// An event of a file whose path tells no pod: containers are known by their path.
    fn unnamed_event() -> LogEvent {
        let mut e = event(b"line", Flags::empty());
        let mut ctx = (*e.file).clone();
        ctx.kube = Default::default();
        e.file = Arc::new(ctx);
        e
    }

    /// Events of one container, seq 0..n.
    fn events(n: u64) -> Vec<LogEvent> {
        let e = unnamed_event();
        (0..n)
            .map(|seq| LogEvent {
                seq,
                offset: seq * 10,
                safe_point: seq * 10 + 10,
                ..e.clone()
            })
            .collect()
    }

    #[tokio::test]
    async fn over_the_burst_lines_are_dropped_acked_and_summarized_once_per_window() {
        let cfg = RateLimitConfig {
            lines_per_second: 1,
            burst: 5,
            summary_interval: Duration::from_millis(200),
            pod_annotation: false,
        };
        let stats = Arc::new(Stats::default());
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
        let limits = RateLimits::new(&cfg, None, ack_tx, stats.clone()).unwrap();
        let (in_tx, in_rx) = mpsc::channel(4);
        let (out_tx, mut out_rx) = mpsc::channel(4);
        tokio::spawn(run(limits, in_rx, out_tx));
        in_tx.send(events(100)).await.unwrap();
        let passed = out_rx.recv().await.unwrap();
        // The burst passes; within a second at most one more.
        assert!((5..=6).contains(&passed.len()), "{}", passed.len());
        assert_eq!(passed[0].seq, 0);
        let dropped = 100 - passed.len() as u64;
        assert_eq!(Stats::get(&stats.lines_rate_limited), dropped);
        // All dropped lines but the held one are acknowledged at once.
        let Some(CheckpointMsg::Acked(ranges)) = ack_rx.recv().await else {
            panic!("no acks");
        };
        let acked: u64 = ranges.iter().map(|r| r.last_seq - r.first_seq + 1).sum();
        assert_eq!(acked, dropped - 1);
        // The summary comes when the window ends, in the held line's place.
        let summary = tokio::time::timeout(Duration::from_secs(2), out_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(summary.len(), 1);
        let s = &summary[0];
        assert_eq!(
            s.seq,
            passed.len() as u64,
            "the first dropped line carries it"
        );
        assert_eq!(
            std::str::from_utf8(&s.message).unwrap(),
            format!(
                "logferry dropped {dropped} lines from /var/log/containers/x.log over its limit of 1/s"
            )
        );
        assert!(s.flags.contains(Flags::RATE_LIMIT_SUMMARY));
        assert_eq!(Stats::get(&stats.rate_limit_summaries), 1);
        // Every seq is either shipped (passed or summary) or acknowledged: none lost.
        let mut seen: Vec<u64> = passed.iter().map(|e| e.seq).collect();
        seen.push(s.seq);
        for r in &ranges {
            seen.extend(r.first_seq..=r.last_seq);
        }
        seen.sort();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
    }

    /// `n` events of a file of its own, `key`, at `path`.
    fn file_events(key: u64, path: &str, n: u64) -> Vec<LogEvent> {
        let e = unnamed_event();
        let mut ctx = (*e.file).clone();
        ctx.key = key;
        ctx.path = path.into();
        let ctx = Arc::new(ctx);
        (0..n)
            .map(|seq| LogEvent {
                file: ctx.clone(),
                seq,
                ..e.clone()
            })
            .collect()
    }

    #[tokio::test]
    async fn forgetting_idle_containers_keeps_the_others_limits() {
        let cfg = RateLimitConfig {
            lines_per_second: 1,
            burst: 2,
            ..Default::default()
        };
        let (ack_tx, _acks) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let mut limits = RateLimits::new(&cfg, None, ack_tx, stats).unwrap();
        let t0 = Instant::now();
        let passed = |limits: &mut RateLimits, batch, at| {
            let mut out = vec![];
            limits.filter(batch, at, &mut out);
            out.len()
        };
        assert_eq!(passed(&mut limits, file_events(1, "/a.log", 2), t0), 2);
        assert_eq!(passed(&mut limits, file_events(2, "/b.log", 5), t0), 2);
        let mut summaries = vec![];
        limits.summarize(None, &mut summaries);
        assert_eq!(summaries.len(), 1, "b's drops summarized");
        // Later, only b was seen lately: a is forgotten, b keeps its spent burst.
        let later = t0 + IDLE_FORGET - Duration::from_secs(1);
        assert_eq!(passed(&mut limits, file_events(2, "/b.log", 1), later), 0);
        limits.forget_idle(t0 + IDLE_FORGET + Duration::from_secs(1));
        assert_eq!(limits.containers.len(), 1);
        assert_eq!(limits.containers[0].key, "/b.log");
        assert_eq!(limits.files.len(), 1);
        assert_eq!(limits.files[&2], 0);
        assert_eq!(limits.by_key["/b.log"], 0);
        assert_eq!(passed(&mut limits, file_events(2, "/b.log", 1), later), 0);
        // a comes back as a new container with a full burst.
        assert_eq!(passed(&mut limits, file_events(1, "/a.log", 3), later), 2);
    }

    #[tokio::test]
    async fn off_by_default() {
        let (ack_tx, _) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        assert!(RateLimits::new(&RateLimitConfig::default(), None, ack_tx, stats).is_none());
    }
}
