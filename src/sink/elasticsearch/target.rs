//! Where a document goes: its data stream (or daily index) and the `data_stream.*`
//! members written into it. Computed once per file, pod version and day, not per line.

use super::retention::{Retention, Subject};
use crate::config::{
    sanitize_index, sanitize_part, Days, ElasticsearchConfig, IndexMode, RetentionConfig,
};
use crate::event::{same_pod, FileKey, LogEvent, PodMetadata};
use crate::stats::Stats;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;

/// One destination: the pre-encoded `_index` of action lines and the document members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub index: String,
    /// `"data_stream":{…}` (empty in index mode), added to every document.
    pub extra: Bytes,
}

impl Target {
    /// Whether an event the last run may have sent must be looked up before it goes
    /// again: a data stream checks ids per backing index, so a rollover since would index
    /// it twice. A daily index named from the line's date refuses it by itself.
    pub fn replays_need_lookup(&self) -> bool {
        !self.extra.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct Router {
    mode: IndexMode,
    dataset: String,
    namespace: String,
    by_namespace: bool,
    pattern: String,
    retention: Retention,
}

impl Router {
    pub fn new(cfg: &ElasticsearchConfig, retention: &RetentionConfig) -> Self {
        Router {
            mode: cfg.mode,
            dataset: sanitize_part(&cfg.dataset),
            namespace: sanitize_part(&cfg.namespace),
            by_namespace: cfg.route_by_namespace,
            pattern: cfg.index.clone(),
            retention: Retention::new(retention, cfg.retention_days),
        }
    }

    pub fn retention(&self) -> &Retention {
        &self.retention
    }

    /// The dataset of a retention class: the default class keeps the plain one, so that
    /// its streams are those of a config without `[retention]`.
    fn dataset_of(&self, class: Days) -> String {
        if class == self.retention.default_class() {
            self.dataset.clone()
        } else {
            format!("{}.r{}d", self.dataset, class.0)
        }
    }

    /// The name pattern of a class's data streams (its index template's).
    pub fn class_pattern(&self, class: Days) -> String {
        format!("logs-{}-*", self.dataset_of(class))
    }

    /// Where the ids of a replay into `stream` are looked up: the stream and its
    /// namespace's streams of every retention class, past and present
    /// (`logs-<dataset>-<ns>,logs-<dataset>.r*-<ns>`). Another name is looked up alone.
    pub fn lookup_targets(&self, stream: &str) -> String {
        let ns = stream
            .strip_prefix(&format!("logs-{}", self.dataset))
            .and_then(|rest| match rest.strip_prefix('-') {
                Some(ns) => Some(ns),
                None => {
                    let (class, ns) = rest.strip_prefix(".r")?.split_once('-')?;
                    let days = class.strip_suffix('d')?;
                    days.bytes().all(|b| b.is_ascii_digit()).then_some(ns)
                }
            });
        match ns {
            Some(ns) if self.mode == IndexMode::DataStream => {
                format!("logs-{d}-{ns},logs-{d}.r*-{ns}", d = self.dataset)
            }
            _ => stream.to_string(),
        }
    }

    /// What every document goes to: the index template's pattern in index mode, every
    /// class's streams (comma-separated, as a Kibana data view takes them) otherwise.
    pub fn index_pattern(&self) -> String {
        match self.mode {
            IndexMode::DataStream => self
                .retention
                .classes()
                .iter()
                .map(|c| self.class_pattern(*c))
                .collect::<Vec<_>>()
                .join(","),
            IndexMode::Index => {
                let fixed = self.pattern.split('%').next().unwrap_or_default();
                format!("{fixed}*")
            }
        }
    }

    /// The destination of events of `class` (data streams only) from `k8s_namespace`;
    /// `date` is the event's `YYYY-MM-DD` (index mode).
    pub fn target(&self, class: Days, k8s_namespace: Option<&str>, date: &str) -> Target {
        match self.mode {
            IndexMode::DataStream => {
                let ns = match (self.by_namespace, k8s_namespace) {
                    (true, Some(ns)) => sanitize_part(ns),
                    _ => self.namespace.clone(),
                };
                let dataset = self.dataset_of(class);
                let extra = serde_json::json!({
                    "data_stream": { "type": "logs", "dataset": dataset, "namespace": ns }
                })
                .to_string();
                Target {
                    index: format!("logs-{dataset}-{ns}"),
                    extra: Bytes::copy_from_slice(&extra.as_bytes()[1..extra.len() - 1]),
                }
            }
            IndexMode::Index => {
                let (y, rest) = date.split_at(4.min(date.len()));
                let m = rest.get(1..3).unwrap_or("01");
                let d = rest.get(4..6).unwrap_or("01");
                let name = self
                    .pattern
                    .replace("%Y", y)
                    .replace("%m", m)
                    .replace("%d", d);
                Target {
                    index: sanitize_index(&name),
                    extra: Bytes::new(),
                }
            }
        }
    }

    /// Whether the target depends on the event's date (so cannot be cached per file alone).
    pub fn dated(&self) -> bool {
        self.mode == IndexMode::Index
    }
}

/// Each file's destination, cached with the pod version it was found for, and the day in
/// index mode.
pub struct Targets {
    router: Router,
    cache: HashMap<FileKey, Cached>,
    stats: Option<Arc<Stats>>,
}

struct Cached {
    date: [u8; 10],
    pod: Option<Arc<PodMetadata>>,
    target: Arc<Target>,
}

impl Targets {
    pub fn new(router: Router) -> Self {
        Targets {
            router,
            cache: HashMap::new(),
            stats: None,
        }
    }

    /// Counts the retention annotations refused.
    pub fn counting(mut self, stats: Arc<Stats>) -> Self {
        self.stats = Some(stats);
        self
    }

    /// The event's destination.
    pub fn get(&mut self, e: &LogEvent) -> Arc<Target> {
        let mut date = [0u8; 10];
        if self.router.dated() {
            match e.timestamp.get(..10) {
                Some(d) if d[4] == b'-' => date.copy_from_slice(d),
                _ => {
                    let mut today = Vec::new();
                    crate::time::format_rfc3339_nanos(std::time::SystemTime::now(), &mut today);
                    date.copy_from_slice(&today[..10]);
                }
            }
        }
        if let Some(c) = self.cache.get(&e.file.key) {
            if c.date == date && same_pod(&c.pod, &e.pod) {
                return c.target.clone();
            }
        }
        if self.cache.len() > 10_000 {
            self.cache.clear();
        }
        let day = std::str::from_utf8(&date)
            .unwrap_or("")
            .trim_end_matches('\0');
        let class = self.class_of(e);
        let namespace = e.file.kube.namespace.as_deref();
        let target = Arc::new(self.router.target(class, namespace, day));
        let cached = Cached {
            date,
            pod: e.pod.clone(),
            target: target.clone(),
        };
        self.cache.insert(e.file.key, cached);
        target
    }

    /// The event's retention class; a refused annotation is said once per file and pod
    /// version, and counted.
    fn class_of(&self, e: &LogEvent) -> Days {
        let pod = e.pod.as_deref();
        let subject = Subject {
            namespace: e.file.kube.namespace.as_deref(),
            namespace_labels: pod.and_then(|p| p.namespace_labels.as_deref()),
            namespace_annotations: pod.and_then(|p| p.namespace_annotations.as_deref()),
            pod_annotations: pod.map(|p| &p.pod.annotations),
        };
        let (class, refused) = self.router.retention.class_of(subject);
        if let Some(r) = refused {
            if let Some(s) = &self.stats {
                Stats::add(&s.retention_refused, 1);
            }
            if let Some(held_back) = crate::log_limit::allow("sink.retention_refused") {
                tracing::warn!(
                    namespace = subject.namespace.unwrap_or(""),
                    pod = pod.map_or("", |p| p.pod.name.as_str()),
                    annotation = super::retention::ANNOTATION,
                    value = %r.value,
                    reason = %r.reason,
                    class = %class,
                    held_back,
                    "retention annotation refused; the rules and the default apply"
                );
            }
        }
        class
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D90: Days = Days(90);

    #[test]
    fn data_stream_names() {
        let mut cfg = ElasticsearchConfig::default();
        let r = Router::new(&cfg, &Default::default());
        let t = r.target(D90, Some("kube-system"), "");
        assert_eq!(t.index, "logs-kubernetes-default");
        assert_eq!(
            &t.extra[..],
            br#""data_stream":{"dataset":"kubernetes","namespace":"default","type":"logs"}"#
        );
        assert!(
            t.replays_need_lookup(),
            "ids are unique per backing index only"
        );
        cfg.route_by_namespace = true;
        let r = Router::new(&cfg, &Default::default());
        assert_eq!(
            r.target(D90, Some("Kube-System"), "").index,
            "logs-kubernetes-kube_system"
        );
        assert_eq!(r.target(D90, None, "").index, "logs-kubernetes-default");
        assert_eq!(r.index_pattern(), "logs-kubernetes-*");
    }

    #[test]
    fn each_retention_class_has_its_streams() {
        let cfg = ElasticsearchConfig {
            route_by_namespace: true,
            ..Default::default()
        };
        let retention: RetentionConfig =
            toml::from_str("[[rules]]\nnamespaces = [\"ci-*\"]\nretention = \"7d\"").unwrap();
        let r = Router::new(&cfg, &retention);
        let t = r.target(Days(7), Some("ci-1"), "");
        assert_eq!(t.index, "logs-kubernetes.r7d-ci_1");
        assert_eq!(
            &t.extra[..],
            br#""data_stream":{"dataset":"kubernetes.r7d","namespace":"ci_1","type":"logs"}"#
        );
        // The default class keeps the streams of a config without `[retention]`.
        assert_eq!(
            r.target(D90, Some("shop"), "").index,
            "logs-kubernetes-shop"
        );
        assert_eq!(r.class_pattern(Days(7)), "logs-kubernetes.r7d-*");
        for stream in ["logs-kubernetes.r7d-shop", "logs-kubernetes-shop"] {
            assert_eq!(
                r.lookup_targets(stream),
                "logs-kubernetes-shop,logs-kubernetes.r*-shop"
            );
        }
        assert_eq!(r.lookup_targets("other-index"), "other-index");
        assert_eq!(
            r.lookup_targets("logs-kubernetes.rx-shop"),
            "logs-kubernetes.rx-shop"
        );
        assert_eq!(r.index_pattern(), "logs-kubernetes.r7d-*,logs-kubernetes-*");
    }

    #[test]
    fn daily_index_names() {
        let cfg = ElasticsearchConfig {
            mode: IndexMode::Index,
            index: "k8s-%Y.%m.%d".into(),
            ..Default::default()
        };
        let r = Router::new(&cfg, &Default::default());
        let t = r.target(D90, None, "2026-11-30");
        assert_eq!(t.index, "k8s-2026.11.30");
        assert!(t.extra.is_empty());
        assert!(
            !t.replays_need_lookup(),
            "a daily index refuses a replay by itself"
        );
        assert_eq!(r.index_pattern(), "k8s-*");
    }
}
