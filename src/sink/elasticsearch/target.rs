//! Where a document goes: its data stream (or daily index) and the `data_stream.*`
//! members written into it. Computed once per file and per day, not per line.

use crate::config::{sanitize_index, sanitize_part, ElasticsearchConfig, IndexMode};
use crate::event::{FileKey, LogEvent};
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
}

impl Router {
    pub fn new(cfg: &ElasticsearchConfig) -> Self {
        Router {
            mode: cfg.mode,
            dataset: sanitize_part(&cfg.dataset),
            namespace: sanitize_part(&cfg.namespace),
            by_namespace: cfg.route_by_namespace,
            pattern: cfg.index.clone(),
        }
    }

    /// The data stream name pattern the index template must match.
    pub fn index_pattern(&self) -> String {
        match self.mode {
            IndexMode::DataStream => format!("logs-{}-*", self.dataset),
            IndexMode::Index => {
                let fixed = self.pattern.split('%').next().unwrap_or_default();
                format!("{fixed}*")
            }
        }
    }

    /// The destination of a file's events; `date` is the event's `YYYY-MM-DD` (index mode).
    pub fn target(&self, k8s_namespace: Option<&str>, date: &str) -> Target {
        match self.mode {
            IndexMode::DataStream => {
                let ns = match (self.by_namespace, k8s_namespace) {
                    (true, Some(ns)) => sanitize_part(ns),
                    _ => self.namespace.clone(),
                };
                let extra = serde_json::json!({
                    "data_stream": { "type": "logs", "dataset": self.dataset, "namespace": ns }
                })
                .to_string();
                Target {
                    index: format!("logs-{}-{}", self.dataset, ns),
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

/// Each file's destination, cached with the day it is for in index mode.
pub struct Targets {
    router: Router,
    cache: HashMap<FileKey, ([u8; 10], Arc<Target>)>,
}

impl Targets {
    pub fn new(router: Router) -> Self {
        Targets {
            router,
            cache: HashMap::new(),
        }
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
        if let Some((d, t)) = self.cache.get(&e.file.key) {
            if *d == date {
                return t.clone();
            }
        }
        if self.cache.len() > 10_000 {
            self.cache.clear();
        }
        let day = std::str::from_utf8(&date)
            .unwrap_or("")
            .trim_end_matches('\0');
        let t = Arc::new(self.router.target(e.file.kube.namespace.as_deref(), day));
        self.cache.insert(e.file.key, (date, t.clone()));
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_stream_names() {
        let mut cfg = ElasticsearchConfig::default();
        let r = Router::new(&cfg);
        let t = r.target(Some("kube-system"), "");
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
        let r = Router::new(&cfg);
        assert_eq!(
            r.target(Some("Kube-System"), "").index,
            "logs-kubernetes-kube_system"
        );
        assert_eq!(r.target(None, "").index, "logs-kubernetes-default");
        assert_eq!(r.index_pattern(), "logs-kubernetes-*");
    }

    #[test]
    fn daily_index_names() {
        let cfg = ElasticsearchConfig {
            mode: IndexMode::Index,
            index: "k8s-%Y.%m.%d".into(),
            ..Default::default()
        };
        let r = Router::new(&cfg);
        let t = r.target(None, "2026-11-30");
        assert_eq!(t.index, "k8s-2026.11.30");
        assert!(t.extra.is_empty());
        assert!(
            !t.replays_need_lookup(),
            "a daily index refuses a replay by itself"
        );
        assert_eq!(r.index_pattern(), "k8s-*");
    }
}
