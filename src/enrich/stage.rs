//! The enrich stage, between the tailer and the sink: gives each event its pod's metadata
//! (a fragment encoded once per pod change), holding a new container's events up to
//! `metadata_wait` while the watch catches up, without holding any other file.

use super::kube::cache::SharedCache;
use crate::event::{FileContext, FileKey, Flags, LogEvent, PodMetadata};
use crate::stats::Stats;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Events held, over all files, while waiting for metadata; past it the stage stops taking
/// input (backpressure reaches the tailer) until the watch catches up or the wait ends.
/// Most files are not read before their pod is known (exclusion decides first); what waits
/// here is files resumed at start-up and namespace labels not yet delivered.
const MAX_PENDING: usize = 16_384;
/// Files not seen for this long are forgotten.
const IDLE_FORGET: Duration = Duration::from_secs(600);

struct FileState {
    /// The pod version and namespace-label generation `pod` is of.
    built_for: Option<(String, u64)>,
    /// What the file's events carry of their pod.
    pod: Option<Arc<PodMetadata>>,
    /// The cache generation last looked at: while it stands, nothing needs looking up.
    cache_gen: u64,
    ctx: Arc<FileContext>,
    pending: VecDeque<LogEvent>,
    deadline: Option<Instant>,
    gave_up: bool,
    last_seen: Instant,
}

pub struct Enricher {
    resolver: Resolver,
    wait: Duration,
    stats: Arc<Stats>,
    files: HashMap<FileKey, FileState>,
    /// Events in all files' `pending`.
    pending: usize,
    /// Per-container rate limits, applied to what leaves (no stage hop of their own).
    limits: Option<crate::enrich::rate_limit::RateLimits>,
}

/// What turns a file's path names into its pod's metadata.
struct Resolver {
    cache: SharedCache,
    /// Namespaces are watched: a pod's metadata waits for its namespace's.
    namespaces: bool,
    /// The cache generation last announced by the watch: while a file's context was built
    /// at it, events need no lookup (and no lock) at all.
    announced: u64,
}

impl Enricher {
    pub fn new(
        cache: SharedCache,
        cfg: &crate::config::KubernetesConfig,
        stats: Arc<Stats>,
    ) -> Self {
        Enricher {
            resolver: Resolver {
                cache,
                namespaces: cfg.namespace_labels,
                announced: 0,
            },
            wait: cfg.metadata_wait,
            stats,
            files: HashMap::new(),
            pending: 0,
            limits: None,
        }
    }

    /// Namespaces are watched (`Config::watches_namespaces`): metadata waits for them.
    pub fn watching_namespaces(mut self, on: bool) -> Self {
        self.resolver.namespaces = on;
        self
    }

    pub fn with_rate_limits(
        mut self,
        limits: Option<crate::enrich::rate_limit::RateLimits>,
    ) -> Self {
        self.limits = limits;
        self
    }

    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<Vec<LogEvent>>,
        tx: mpsc::Sender<Vec<LogEvent>>,
        mut changed: watch::Receiver<u64>,
    ) {
        let mut open = true;
        let mut forget = tokio::time::interval(Duration::from_secs(60));
        while open {
            let deadline = self.files.values().filter_map(|f| f.deadline).min();
            let summary_due = self.limits.as_ref().and_then(|l| l.next_due());
            let mut out = Vec::new();
            let mut summaries = Vec::new();
            tokio::select! {
                batch = rx.recv(), if self.pending < MAX_PENDING => match batch {
                    Some(batch) => {
                        let now = Instant::now();
                        for e in batch {
                            self.push(e, now, &mut out);
                        }
                        if self.pending >= MAX_PENDING {
                            Stats::add(&self.stats.enrich_full, 1);
                        }
                    }
                    None => open = false,
                },
                Ok(()) = changed.changed() => {
                    self.resolver.announced = *changed.borrow_and_update();
                    self.release_ready(Instant::now(), &mut out);
                }
                _ = crate::time::sleep_until(deadline) => self.release_ready(Instant::now(), &mut out),
                _ = crate::time::sleep_until(summary_due) => {
                    if let Some(l) = &mut self.limits {
                        l.summarize(Some(Instant::now()), &mut summaries);
                    }
                }
                _ = forget.tick() => {
                    let now = Instant::now();
                    self.files.retain(|_, f| !f.pending.is_empty() || now.duration_since(f.last_seen) < IDLE_FORGET);
                    if let Some(l) = &mut self.limits {
                        l.forget_idle(now);
                    }
                }
            }
            if !open {
                // The tailer stopped: what waits goes now, as it is.
                let now = Instant::now();
                for f in self.files.values_mut() {
                    f.deadline = Some(now);
                }
                self.release_ready(now, &mut out);
            }
            if let Some(l) = &mut self.limits {
                if !out.is_empty() {
                    let mut kept = Vec::with_capacity(out.len());
                    l.filter(out, Instant::now(), &mut kept);
                    out = kept;
                }
                if !open {
                    l.summarize(None, &mut summaries);
                }
            }
            // Summaries are over the limit already: they are not filtered again.
            out.append(&mut summaries);
            if !out.is_empty() && tx.send(out).await.is_err() {
                return;
            }
        }
    }

    fn push(&mut self, mut e: LogEvent, now: Instant, out: &mut Vec<LogEvent>) {
        let key = e.file.key;
        let state = self.files.entry(key).or_insert_with(|| FileState {
            built_for: None,
            pod: None,
            cache_gen: 0,
            ctx: e.file.clone(),
            pending: VecDeque::new(),
            deadline: None,
            gave_up: false,
            last_seen: now,
        });
        state.last_seen = now;
        if !state.pending.is_empty() {
            state.pending.push_back(e);
            self.pending += 1;
            return;
        }
        match self.resolver.resolve(state) {
            Resolved::Enriched | Resolved::NotKubernetes => {
                e.pod = state.pod.clone();
                out.push(e);
            }
            Resolved::Unknown if state.gave_up => {
                Self::give_up(&self.stats, &mut e);
                out.push(e);
            }
            Resolved::Unknown => {
                // The wait counts from when the file was found: the tailer may have spent it
                // already, holding the file unread until the pod was known or time was up.
                let deadline = Instant::from_std(e.file.known_since + self.wait);
                if deadline <= now {
                    state.gave_up = true;
                    Self::give_up(&self.stats, &mut e);
                    out.push(e);
                } else {
                    state.deadline = Some(deadline);
                    state.pending.push_back(e);
                    self.pending += 1;
                }
            }
        }
    }

    /// Ships what waits for files whose pod is now known or whose wait is over.
    fn release_ready(&mut self, now: Instant, out: &mut Vec<LogEvent>) {
        for state in self.files.values_mut().filter(|f| !f.pending.is_empty()) {
            let resolved = self.resolver.resolve(state);
            let expired = state.deadline.is_some_and(|d| d <= now);
            if matches!(resolved, Resolved::Unknown) && !expired {
                continue;
            }
            let missing = matches!(resolved, Resolved::Unknown);
            if missing {
                state.gave_up = true;
                tracing::debug!(path = %state.ctx.path.display(), "no pod metadata yet; shipping with the names from the path");
            }
            self.pending -= state.pending.len();
            for mut e in state.pending.drain(..) {
                e.pod = state.pod.clone();
                if missing {
                    Self::give_up(&self.stats, &mut e);
                }
                out.push(e);
            }
            state.deadline = None;
        }
    }

    fn give_up(stats: &Stats, e: &mut LogEvent) {
        e.flags.insert(Flags::NO_KUBE_METADATA);
        Stats::add(&stats.kube_metadata_missing, 1);
    }
}

impl Resolver {
    /// Makes `state.pod` the pod's current metadata.
    fn resolve(&self, state: &mut FileState) -> Resolved {
        let path = &state.ctx.kube;
        if path.pod_uid.is_none() && (path.namespace.is_none() || path.pod_name.is_none()) {
            return Resolved::NotKubernetes;
        }
        if state.built_for.is_some() && state.cache_gen == self.announced {
            return Resolved::Enriched;
        }
        let c = self.cache.read().unwrap_or_else(|e| e.into_inner());
        let Some(pod) = c.get(
            path.pod_uid.as_deref(),
            path.namespace.as_deref(),
            path.pod_name.as_deref(),
        ) else {
            return Resolved::Unknown;
        };
        let labels = self
            .namespaces
            .then(|| c.namespace_labels(&pod.namespace))
            .flatten();
        if self.namespaces && labels.is_none() && !state.gave_up {
            // The namespace watch has not delivered it yet: wait for it like for the pod.
            return Resolved::Unknown;
        }
        let labels_gen = labels.as_ref().map_or(0, |(g, _)| *g);
        let labels = labels.map(|(_, l)| l);
        let version = (pod.resource_version.clone(), labels_gen);
        if state.built_for.as_ref() != Some(&version) {
            let namespace_annotations = labels
                .is_some()
                .then(|| c.namespace_annotations(&pod.namespace))
                .flatten();
            state.pod = Some(Arc::new(PodMetadata {
                pod,
                namespace_labels: labels,
                namespace_annotations,
            }));
            state.built_for = Some(version);
        }
        state.cache_gen = self.announced;
        Resolved::Enriched
    }
}

enum Resolved {
    Enriched,
    NotKubernetes,
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KubernetesConfig;
    use crate::encode::document::tests::event;

    /// Events of a pod the cache does not know, from a file found at `known_since`.
    fn unknown_pod_events(n: usize, known_since: std::time::Instant) -> Vec<LogEvent> {
        let e = event(b"line", Flags::empty());
        let mut ctx = (*e.file).clone();
        ctx.kube.pod_uid = Some("uid-not-yet".into());
        ctx.known_since = known_since;
        let ctx = Arc::new(ctx);
        (0..n as u64)
            .map(|seq| LogEvent {
                file: ctx.clone(),
                seq,
                ..e.clone()
            })
            .collect()
    }

    type Started = (
        mpsc::Sender<Vec<LogEvent>>,
        mpsc::Receiver<Vec<LogEvent>>,
        Arc<Stats>,
    );

    fn start(wait: Duration) -> Started {
        let cfg = KubernetesConfig {
            metadata_wait: wait,
            ..Default::default()
        };
        let stats = Arc::new(Stats::default());
        let stage = Enricher::new(SharedCache::default(), &cfg, stats.clone());
        let (in_tx, in_rx) = mpsc::channel(4);
        let (out_tx, out_rx) = mpsc::channel(4);
        let (changed_tx, changed_rx) = watch::channel(0u64);
        tokio::spawn(async move {
            let _announcer = changed_tx;
            stage.run(in_rx, out_tx, changed_rx).await
        });
        (in_tx, out_rx, stats)
    }

    #[tokio::test]
    async fn what_waits_for_metadata_is_capped_and_then_input_stops() {
        let (tx, mut rx, stats) = start(Duration::from_secs(60));
        let now = std::time::Instant::now();
        let mut sent = 0;
        // Feed until the stage has stopped taking input for a while.
        loop {
            match tokio::time::timeout(
                Duration::from_millis(300),
                tx.send(unknown_pod_events(1024, now)),
            )
            .await
            {
                Ok(Ok(())) => sent += 1024,
                _ => break,
            }
            assert!(sent < 200_000, "the stage never stopped taking input");
        }
        // Held: the cap, plus the batch that crossed it and the channel's four.
        assert!(
            (MAX_PENDING..=MAX_PENDING + 5 * 1024).contains(&sent),
            "{sent}"
        );
        assert!(rx.try_recv().is_err(), "nothing shipped while waiting");
        assert_eq!(
            Stats::get(&stats.enrich_full),
            1,
            "the cap was hit once, counted"
        );
    }

    #[tokio::test]
    async fn a_file_that_already_waited_in_the_tailer_is_not_held_again() {
        let wait = Duration::from_millis(200);
        let (tx, mut rx, _) = start(wait);
        let found = std::time::Instant::now() - 2 * wait;
        tx.send(unknown_pod_events(3, found)).await.unwrap();
        let out = tokio::time::timeout(Duration::from_millis(100), rx.recv())
            .await
            .expect("shipped at once, not after another wait")
            .unwrap();
        assert_eq!(out.len(), 3);
        assert!(out
            .iter()
            .all(|e| e.flags.contains(Flags::NO_KUBE_METADATA)));
    }
}
