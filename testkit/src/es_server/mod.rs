//! An in-tree Elasticsearch 8 for tests, built from its documentation: strict NDJSON bulk
//! with per-item results, gzip bodies, 409 on a duplicate `create`, data streams that take
//! only `create` and need `@timestamp`, dynamic mappings whose conflicts fail the item,
//! 413 above `http.max_content_length`, the ILM and template APIs with their GET shapes,
//! and `_count`/`_search`/`_refresh` for assertions. Faults are injected through `Faults`.
//!
//! `routing` decodes requests and answers the API, `bulk` parses and applies bulk bodies,
//! `mappings` holds the templates and dynamic mappings.

mod bulk;
mod mappings;
mod routing;

use bulk::*;
use mappings::*;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the server will do wrong, on purpose.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// The next N bulk requests are answered with `request_status`.
    pub fail_requests: u32,
    pub request_status: u16,
    /// Share of bulk items answered 429 `es_rejected_execution_exception` (0.0–1.0).
    pub item_429_ratio: f64,
    /// Share of bulk requests answered 429 or 503 as a whole (0.0–1.0).
    pub request_fail_ratio: f64,
    /// Added before each bulk answer.
    pub latency: Duration,
    /// Requests above this many (decompressed) bytes are answered 413. 0 = 100 MB.
    pub max_content_length: usize,
    /// Write capacity in documents a second (a token bucket holding one second's worth);
    /// items beyond it are answered 429 `es_rejected_execution_exception`, as a node with
    /// a full write queue answers. 0 = unlimited.
    pub write_capacity: u32,
    /// The next N bulk requests are applied, then their connection is cut before the
    /// answer: the client cannot know the outcome (a timeout after indexing).
    pub drop_after_apply: u32,
    /// With `drop_after_apply`: every data stream rolls over right after the cut (ILM at
    /// the worst moment for the client's retry).
    pub rollover_on_drop: bool,
    /// `_search` requests (the agent's lookups) are answered with this status. 0: served.
    pub search_status: u16,
    /// `_search` requests are answered this late (a search pool saturated while bulk
    /// requests still go through).
    pub search_latency: Duration,
    /// With `drop_after_apply`: answer this status instead of cutting the connection, as
    /// a gateway in front of the cluster does when it gives up waiting (504). 0: cut.
    pub status_after_apply: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Object,
    Flattened,
    Long,
    Double,
    Keyword,
    Boolean,
    Date,
    Other,
}

#[derive(Debug, Default)]
struct Index {
    data_stream: bool,
    /// The write index's documents (a data stream's current backing index). Ids are
    /// unique here only, as in Elasticsearch.
    docs: BTreeMap<String, Value>,
    /// Hashes of the ids of documents not kept (`State::discard`).
    ids: HashSet<u64>,
    /// A data stream's backing indices before the write index, oldest first.
    earlier: Vec<Backing>,
    /// A data stream's generation: its write index is the `generation`th backing index.
    generation: u32,
    fields: HashMap<String, Kind>,
    dynamic_strings_keyword: bool,
}

/// A backing index a rollover left behind: read-only, still searched.
#[derive(Debug, Default)]
struct Backing {
    name: String,
    docs: BTreeMap<String, Value>,
    ids: HashSet<u64>,
}

impl Index {
    /// The index writes go to: the data stream's current backing index, or itself.
    fn write_index(&self, name: &str) -> String {
        if self.data_stream {
            backing_name(name, self.generation)
        } else {
            name.to_string()
        }
    }

    /// Every document with the index that holds it, the oldest backing index first.
    fn all_docs<'a>(&'a self, name: &str) -> impl Iterator<Item = (String, &'a String, &'a Value)> {
        let current = self.write_index(name);
        self.earlier
            .iter()
            .flat_map(|b| b.docs.iter().map(|(id, d)| (b.name.clone(), id, d)))
            .chain(
                self.docs
                    .iter()
                    .map(move |(id, d)| (current.clone(), id, d)),
            )
    }
}

/// Elasticsearch's name of a data stream's backing index.
fn backing_name(stream: &str, generation: u32) -> String {
    format!(".ds-{stream}-2026.01.01-{generation:06}")
}

/// Sees each document the server accepts: its index and source.
pub type Observer = Box<dyn FnMut(&str, &Map<String, Value>) + Send>;

#[derive(Default)]
pub struct State {
    pub faults: Faults,
    /// Keep only ids (enough for 409s and counts), not documents: for load runs.
    pub discard: bool,
    pub observer: Option<Observer>,
    ilm: BTreeMap<String, Value>,
    component: BTreeMap<String, Value>,
    templates: BTreeMap<String, Value>,
    indices: BTreeMap<String, Index>,
    /// Counters for assertions.
    pub bulk_requests: u64,
    pub bulk_items: u64,
    pub gzip_requests: u64,
    /// Bulk bodies as received (compressed when gzip) and decoded.
    pub bulk_bytes: u64,
    pub bulk_bytes_decoded: u64,
    pub items_409: u64,
    pub items_429: u64,
    /// Of `items_429`, those refused over `write_capacity`.
    pub items_over_capacity: u64,
    pub items_400: u64,
    pub requests_failed: u64,
    pub requests_413: u64,
    /// The `Authorization` header of the last request.
    pub last_authorization: Option<String>,
    rng: u64,
    /// The write capacity's bucket: tokens, and when it was last filled.
    capacity_tokens: f64,
    capacity_at: Option<std::time::Instant>,
}

impl State {
    fn random(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % 1_000_000) as f64 / 1_000_000.0
    }

    /// Takes one document's worth of write capacity; false when none is left.
    fn take_capacity(&mut self) -> bool {
        let cap = f64::from(self.faults.write_capacity);
        if cap == 0.0 {
            return true;
        }
        let now = std::time::Instant::now();
        let since = self
            .capacity_at
            .map_or(1.0, |t| now.duration_since(t).as_secs_f64());
        self.capacity_tokens = (self.capacity_tokens + cap * since).min(cap);
        self.capacity_at = Some(now);
        if self.capacity_tokens >= 1.0 {
            self.capacity_tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Documents of an index or data stream (or a `*` pattern), of every backing index: an
    /// id indexed in two backing indices is there twice.
    pub fn docs(&self, pattern: &str) -> Vec<(String, Value)> {
        self.docs_where(pattern)
            .into_iter()
            .map(|(_, id, d)| (id, d))
            .collect()
    }

    /// Documents with the index that holds each: (index, id, source).
    fn docs_where(&self, pattern: &str) -> Vec<(String, String, Value)> {
        self.indices
            .iter()
            .filter(|(n, _)| targets_match(pattern, n))
            .flat_map(|(n, i)| i.all_docs(n).map(|(ix, id, d)| (ix, id.clone(), d.clone())))
            .collect()
    }

    /// The documents with one of `ids`, in every backing index: (index, id, source).
    fn docs_with_ids(&self, pattern: &str, ids: &HashSet<&str>) -> Vec<(String, String, Value)> {
        let mut out = Vec::new();
        for (name, i) in self
            .indices
            .iter()
            .filter(|(n, _)| targets_match(pattern, n))
        {
            let current = i.write_index(name);
            let all = i
                .earlier
                .iter()
                .map(|b| (&b.name, &b.docs, &b.ids))
                .chain([(&current, &i.docs, &i.ids)]);
            for (index, docs, kept_ids) in all {
                for id in ids {
                    // A discarded document is found, without its source.
                    let found = match docs.get(*id) {
                        Some(d) => Some(d.clone()),
                        None => kept_ids.contains(&id_hash(id)).then(|| json!({})),
                    };
                    if let Some(d) = found {
                        out.push((index.clone(), id.to_string(), d));
                    }
                }
            }
        }
        out
    }

    /// How many documents an index or data stream (or a `*` pattern) holds.
    pub fn count(&self, pattern: &str) -> usize {
        self.indices
            .iter()
            .filter(|(n, _)| targets_match(pattern, n))
            .map(|(_, i)| {
                i.docs.len()
                    + i.ids.len()
                    + i.earlier
                        .iter()
                        .map(|b| b.docs.len() + b.ids.len())
                        .sum::<usize>()
            })
            .sum()
    }

    /// Rolls a data stream over to a new write index, as ILM or `POST <stream>/_rollover`
    /// does; returns the old and the new write index.
    pub fn rollover(&mut self, stream: &str) -> Option<(String, String)> {
        let idx = self.indices.get_mut(stream).filter(|i| i.data_stream)?;
        let old = idx.write_index(stream);
        idx.earlier.push(Backing {
            name: old.clone(),
            docs: std::mem::take(&mut idx.docs),
            ids: std::mem::take(&mut idx.ids),
        });
        idx.generation += 1;
        Some((old, idx.write_index(stream)))
    }

    /// The names of the data streams that exist.
    pub fn data_streams(&self) -> Vec<String> {
        self.indices
            .iter()
            .filter(|(_, i)| i.data_stream)
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn is_data_stream(&self, name: &str) -> Option<bool> {
        self.indices.get(name).map(|i| i.data_stream)
    }
}

pub struct EsServer {
    pub url: String,
    pub state: Arc<Mutex<State>>,
    down: Arc<AtomicBool>,
    _rt: tokio::runtime::Runtime,
}

impl EsServer {
    pub fn start() -> EsServer {
        Self::start_with(None)
    }

    /// The server behind TLS with a certificate for `localhost`/`127.0.0.1` from a fresh
    /// CA, whose PEM is written to `ca_pem`.
    pub fn start_tls(ca_pem: &std::path::Path) -> EsServer {
        Self::start_with(Some(crate::serve::tls_acceptor(ca_pem)))
    }

    /// The server behind TLS as `setup` says: other names, an expired certificate, client
    /// certificates required.
    pub fn start_tls_with(ca_pem: &std::path::Path, setup: &crate::serve::TlsSetup) -> EsServer {
        Self::start_with(Some(crate::serve::tls_acceptor_with(ca_pem, setup)))
    }

    fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> EsServer {
        let state = Arc::new(Mutex::new(State {
            rng: 0x9e3779b97f4a7c15,
            ..Default::default()
        }));
        let down = Arc::new(AtomicBool::new(false));
        let (st, dn) = (state.clone(), down.clone());
        let (rt, url) = crate::serve::serve(tls, dn.clone(), move |req| {
            let (st, dn) = (st.clone(), dn.clone());
            async move { routing::handle(req, st, dn).await }
        });
        EsServer {
            url,
            state,
            down,
            _rt: rt,
        }
    }

    /// An outage: every connection is refused or cut until `set_down(false)`.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.state.lock().unwrap().faults);
    }

    pub fn with<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.lock().unwrap())
    }

    /// Rolls a data stream over (see `State::rollover`).
    pub fn rollover(&self, stream: &str) -> Option<(String, String)> {
        self.state.lock().unwrap().rollover(stream)
    }
}

use crate::serve::Resp;

fn reply(status: u16, body: Value) -> Resp {
    crate::serve::json_reply(status, body, &[("x-elastic-product", "Elasticsearch")])
}

fn error(status: u16, kind: &str, reason: &str) -> Resp {
    reply(
        status,
        json!({ "error": { "root_cause": [{ "type": kind, "reason": reason }], "type": kind, "reason": reason }, "status": status }),
    )
}
