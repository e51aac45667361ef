//! An in-tree Elasticsearch 8 for tests, built from its documentation: strict NDJSON bulk
//! with per-item results, gzip bodies, 409 on a duplicate `create`, data streams that take
//! only `create` and need `@timestamp`, dynamic mappings whose conflicts fail the item,
//! 413 above `http.max_content_length`, the ILM and template APIs with their GET shapes,
//! and `_count`/`_search`/`_refresh` for assertions. Faults are injected through `Faults`.

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
            .filter(|(n, _)| glob_match(pattern, n))
            .flat_map(|(n, i)| i.all_docs(n).map(|(ix, id, d)| (ix, id.clone(), d.clone())))
            .collect()
    }

    /// The documents with one of `ids`, in every backing index: (index, id, source).
    fn docs_with_ids(&self, pattern: &str, ids: &HashSet<&str>) -> Vec<(String, String, Value)> {
        let mut out = Vec::new();
        for (name, i) in self.indices.iter().filter(|(n, _)| glob_match(pattern, n)) {
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
            .filter(|(n, _)| glob_match(pattern, n))
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
            async move { handle(req, st, dn).await }
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

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    down: Arc<AtomicBool>,
) -> Result<Resp, std::io::Error> {
    if down.load(Ordering::SeqCst) {
        return Err(std::io::Error::other("outage"));
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let filter = FilterPath::from_query(req.uri().query());
    let gzip = req
        .headers()
        .get("content-encoding")
        .is_some_and(|v| v == "gzip");
    let content_type = req
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_string());
    let authorization = req
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap_or("").to_string());
    state.lock().unwrap().last_authorization = authorization;
    let raw = req
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let body = if gzip {
        let mut out = Vec::new();
        if flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .is_err()
        {
            return Ok(error(
                400,
                "parse_exception",
                "request body is not valid gzip",
            ));
        }
        out
    } else {
        raw.to_vec()
    };
    let segs: Vec<&str> = path
        .trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let is_bulk = segs.last() == Some(&"_bulk");
    if segs.last() == Some(&"_search") {
        let (status, latency) = {
            let s = state.lock().unwrap();
            (s.faults.search_status, s.faults.search_latency)
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if status != 0 {
            return Ok(error(
                status,
                "search_refused",
                "searches are refused on purpose",
            ));
        }
    }
    if is_bulk {
        let (latency, limit) = {
            let s = state.lock().unwrap();
            (s.faults.latency, s.faults.max_content_length)
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let limit = if limit == 0 { 100 * 1024 * 1024 } else { limit };
        let mut s = state.lock().unwrap();
        s.bulk_requests += 1;
        s.gzip_requests += u64::from(gzip);
        s.bulk_bytes += raw.len() as u64;
        s.bulk_bytes_decoded += body.len() as u64;
        if body.len() > limit {
            s.requests_413 += 1;
            return Ok(Response::builder()
                .status(413)
                .body(Full::new(Bytes::new()))
                .unwrap());
        }
        if s.faults.fail_requests > 0 {
            s.faults.fail_requests -= 1;
            s.requests_failed += 1;
            let status = s.faults.request_status;
            return Ok(error(
                status,
                "es_rejected_execution_exception",
                "injected whole-request failure",
            ));
        }
        if s.faults.request_fail_ratio > 0.0 && s.random() < s.faults.request_fail_ratio {
            s.requests_failed += 1;
            let status = if s.random() < 0.5 { 429 } else { 503 };
            return Ok(error(
                status,
                "es_rejected_execution_exception",
                "injected whole-request failure",
            ));
        }
        match content_type.as_deref() {
            Some(ct)
                if ct.starts_with("application/x-ndjson") || ct.starts_with("application/json") => {
            }
            other => {
                return Ok(error(
                    406,
                    "illegal_argument_exception",
                    &format!(
                        "Content-Type header [{}] is not supported",
                        other.unwrap_or("")
                    ),
                ))
            }
        }
        drop(s);
        // Parsing, the bulk of the work, runs outside the lock.
        let default_index = (segs.len() == 2).then_some(segs[0]);
        let items = match parse_bulk(&body, default_index) {
            Ok(items) => items,
            Err(reply) => return Ok(*reply),
        };
        let mut s = state.lock().unwrap();
        let results = apply_bulk(&mut s, items);
        if s.faults.drop_after_apply > 0 {
            s.faults.drop_after_apply -= 1;
            s.requests_failed += 1;
            if s.faults.rollover_on_drop {
                for stream in s.data_streams() {
                    s.rollover(&stream);
                }
            }
            if s.faults.status_after_apply != 0 {
                return Ok(error(
                    s.faults.status_after_apply,
                    "gateway_timeout",
                    "the upstream did not answer in time",
                ));
            }
            return Err(std::io::Error::other("connection cut after indexing"));
        }
        return Ok(bulk_reply(&results, &filter));
    }
    let body_json: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    let mut s = state.lock().unwrap();
    let m = method.as_str();
    Ok(match (m, segs.as_slice()) {
        ("GET", []) => reply(
            200,
            json!({ "name": "in-tree", "cluster_name": "test", "version": { "number": "8.15.0" }, "tagline": "You Know, for Search" }),
        ),
        ("PUT", ["_ilm", "policy", name]) => {
            let Some(policy) = body_json.get("policy") else {
                return Ok(error(
                    400,
                    "x_content_parse_exception",
                    "[put_lifecycle_request] policy is required",
                ));
            };
            s.ilm.insert(name.to_string(), policy.clone());
            reply(200, json!({ "acknowledged": true }))
        }
        ("GET", ["_ilm", "policy", name]) => match s.ilm.get(*name) {
            Some(p) => reply(
                200,
                json!({ *name: { "version": 1, "modified_date": "2026-01-01T00:00:00.000Z", "policy": p, "in_use_by": { "indices": [], "data_streams": [], "composable_templates": [] } } }),
            ),
            None => error(
                404,
                "resource_not_found_exception",
                &format!("Lifecycle policy not found: {name}"),
            ),
        },
        ("PUT", ["_component_template", name]) => {
            s.component.insert(name.to_string(), body_json);
            reply(200, json!({ "acknowledged": true }))
        }
        ("GET", ["_component_template", name]) => match s.component.get(*name) {
            Some(t) => reply(
                200,
                json!({ "component_templates": [ { "name": name, "component_template": t } ] }),
            ),
            None => error(
                404,
                "resource_not_found_exception",
                &format!("component template matching [{name}] not found"),
            ),
        },
        ("PUT", ["_index_template", name]) => {
            let composed: Vec<String> = body_json["composed_of"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(missing) = composed.iter().find(|c| !s.component.contains_key(*c)) {
                return Ok(error(400, "invalid_index_template_exception", &format!("index template [{name}] invalid, cause [index template [{name}] specifies component templates [{missing}] that do not exist]")));
            }
            s.templates.insert(name.to_string(), body_json);
            reply(200, json!({ "acknowledged": true }))
        }
        ("GET", ["_index_template", name]) => match s.templates.get(*name) {
            Some(t) => reply(
                200,
                json!({ "index_templates": [ { "name": name, "index_template": t } ] }),
            ),
            None => error(
                404,
                "resource_not_found_exception",
                &format!("index template matching [{name}] not found"),
            ),
        },
        // A concrete name that is no index is an error; a pattern may match nothing.
        ("POST" | "GET", [index, "_refresh" | "_search"])
            if !index.contains('*') && !s.indices.contains_key(*index) =>
        {
            error(
                404,
                "index_not_found_exception",
                &format!("no such index [{index}]"),
            )
        }
        ("POST" | "GET", [_, "_refresh"]) => reply(
            200,
            json!({ "_shards": { "total": 1, "successful": 1, "failed": 0 } }),
        ),
        ("GET" | "POST", [index, "_count"]) => reply(200, json!({ "count": s.count(index) })),
        ("GET" | "POST", [index, "_search"]) => {
            let size = body_json["size"].as_u64().unwrap_or(10) as usize;
            let ids: Option<HashSet<&str>> = body_json["query"]["ids"]["values"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect());
            let source = body_json["_source"] != false;
            let docs: Vec<(String, String, Value)> = match &ids {
                // By id: looked up, not scanned (replays ask for thousands at a time).
                Some(ids) => s.docs_with_ids(index, ids),
                None => s.docs_where(index),
            };
            let total = docs.len();
            let hits: Vec<Value> = docs
                .into_iter()
                .take(size)
                .map(|(ix, id, d)| match source {
                    true => json!({ "_index": ix, "_id": id, "_source": d }),
                    false => json!({ "_index": ix, "_id": id }),
                })
                .collect();
            reply(
                200,
                json!({ "hits": { "total": { "value": total, "relation": "eq" }, "hits": hits } }),
            )
        }
        ("POST", [name, "_rollover"]) => match s.rollover(name) {
            Some((old, new)) => reply(
                200,
                json!({ "acknowledged": true, "shards_acknowledged": true, "old_index": old, "new_index": new, "rolled_over": true, "dry_run": false, "conditions": {} }),
            ),
            None => error(
                400,
                "illegal_argument_exception",
                &format!("rollover target [{name}] does not exist or is not a data stream"),
            ),
        },
        ("GET", ["_data_stream", name]) => match s.indices.get(*name).filter(|i| i.data_stream) {
            Some(i) => {
                let indices: Vec<Value> = i
                    .earlier
                    .iter()
                    .map(|b| b.name.clone())
                    .chain([i.write_index(name)])
                    .map(|n| json!({ "index_name": n }))
                    .collect();
                reply(
                    200,
                    json!({ "data_streams": [ { "name": name, "generation": i.generation, "indices": indices, "template": template_for(&s, name).map(|(n, _)| n) } ] }),
                )
            }
            None => error(
                404,
                "index_not_found_exception",
                &format!("no such index [{name}]"),
            ),
        },
        _ => error(
            400,
            "illegal_argument_exception",
            &format!(
                "request [{m} /{}] is not supported by the test server",
                segs.join("/")
            ),
        ),
    })
}

/// Simple `*` globbing of index patterns.
fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name;
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(p) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(p);
        } else {
            let Some(at) = rest.find(p) else { return false };
            rest = &rest[at + p.len()..];
        }
    }
    true
}

/// The highest-priority template matching an index; ES 8's built-in `logs` template
/// (`logs-*-*`, priority 100, data stream) when no other does.
fn template_for(s: &State, index: &str) -> Option<(String, Value)> {
    let mut best: Option<(u64, String, Value)> = None;
    for (name, t) in &s.templates {
        let matches = t["index_patterns"].as_array().is_some_and(|ps| {
            ps.iter()
                .any(|p| p.as_str().is_some_and(|p| glob_match(p, index)))
        });
        let prio = t["priority"].as_u64().unwrap_or(0);
        if matches && best.as_ref().is_none_or(|(p, _, _)| prio > *p) {
            best = Some((prio, name.clone(), t.clone()));
        }
    }
    if best.is_none() && glob_match("logs-*-*", index) {
        return Some((
            "logs".into(),
            json!({ "index_patterns": ["logs-*-*"], "data_stream": {}, "priority": 100 }),
        ));
    }
    best.map(|(_, n, t)| (n, t))
}

fn create_index(s: &State, name: &str) -> Index {
    let mut idx = Index::default();
    if let Some((_, t)) = template_for(s, name) {
        idx.data_stream = t.get("data_stream").is_some();
        let mut sources = vec![];
        for c in t["composed_of"].as_array().into_iter().flatten() {
            if let Some(ct) = c.as_str().and_then(|c| s.component.get(c)) {
                sources.push(ct["template"]["mappings"].clone());
            }
        }
        sources.push(t["template"]["mappings"].clone());
        for m in sources {
            if let Some(props) = m["properties"].as_object() {
                load_properties(&mut idx.fields, "", props);
            }
            if m["dynamic_templates"]
                .as_array()
                .is_some_and(|d| !d.is_empty())
            {
                idx.dynamic_strings_keyword = true;
            }
        }
    }
    if idx.data_stream {
        idx.fields.insert("@timestamp".into(), Kind::Date);
        idx.generation = 1;
    }
    idx
}

fn load_properties(fields: &mut HashMap<String, Kind>, prefix: &str, props: &Map<String, Value>) {
    for (k, v) in props {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if let Some(sub) = v["properties"].as_object() {
            fields.insert(path.clone(), Kind::Object);
            load_properties(fields, &path, sub);
            continue;
        }
        let kind = match v["type"].as_str() {
            Some("flattened") => Kind::Flattened,
            Some("long" | "integer" | "short") => Kind::Long,
            Some("double" | "float" | "scaled_float") => Kind::Double,
            Some("keyword" | "text" | "match_only_text" | "constant_keyword" | "wildcard") => {
                Kind::Keyword
            }
            Some("boolean") => Kind::Boolean,
            Some("date" | "date_nanos") => Kind::Date,
            Some("object") | None => Kind::Object,
            Some(_) => Kind::Other,
        };
        fields.insert(path, kind);
    }
}

/// `strict_date_optional_time_nanos`, the format of ES's `date_nanos` and of dynamic dates.
fn is_date(s: &str) -> bool {
    static FORMAT: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    FORMAT
        .get_or_init(|| {
            regex::Regex::new(
                r"^\d{4}-\d{2}-\d{2}(?:[Tt]\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?(?:[Zz]|[+-]\d{2}:?\d{2})?)?$",
            )
            .expect("valid regex")
        })
        .is_match(s)
}

/// Checks a document against the index's mappings, adding dynamic fields; an error is
/// the item's `(type, reason)`.
fn map_document(
    idx: &mut Index,
    doc: &Map<String, Value>,
    id: &str,
) -> Result<(), (String, String)> {
    let mut added = vec![];
    let r = map_object(idx, &mut String::new(), doc, id, &mut added);
    if r.is_err() {
        for p in added {
            idx.fields.remove(&p);
        }
    }
    r
}

fn map_object(
    idx: &mut Index,
    path: &mut String,
    obj: &Map<String, Value>,
    id: &str,
    added: &mut Vec<String>,
) -> Result<(), (String, String)> {
    // One path buffer for the whole walk: no allocation per field already mapped.
    let base = path.len();
    for (k, v) in obj {
        path.truncate(base);
        if base > 0 {
            path.push('.');
        }
        path.push_str(k);
        let known = idx.fields.get(path.as_str()).copied();
        let parse_err = |path: &str, kind: &str| {
            (
                "document_parsing_exception".to_string(),
                format!("[1:1] failed to parse field [{path}] of type [{kind}] in document with id '{id}'. Preview of field's value: '{v}'"),
            )
        };
        match (known, v) {
            (Some(Kind::Flattened), _) => {}
            (Some(Kind::Object), Value::Object(o)) => map_object(idx, path, o, id, added)?,
            (Some(Kind::Object), Value::Null) => {}
            (Some(Kind::Object), _) => {
                let leaf = path.rsplit('.').next().unwrap_or(path).to_string();
                return Err((
                    "document_parsing_exception".into(),
                    format!("[1:1] object mapping for [{path}] tried to parse field [{leaf}] as object, but found a concrete value"),
                ));
            }
            (Some(_), Value::Null) => {}
            (Some(Kind::Long), Value::Number(n)) if n.is_i64() || n.is_u64() => {}
            (Some(Kind::Long), Value::String(s)) if s.parse::<i64>().is_ok() => {}
            (Some(Kind::Long), _) => return Err(parse_err(path, "long")),
            (Some(Kind::Double), Value::Number(_)) => {}
            (Some(Kind::Double), Value::String(s)) if s.parse::<f64>().is_ok() => {}
            (Some(Kind::Double), _) => return Err(parse_err(path, "float")),
            (Some(Kind::Boolean), Value::Bool(_)) => {}
            (Some(Kind::Boolean), _) => return Err(parse_err(path, "boolean")),
            (Some(Kind::Date), Value::String(s)) if is_date(s) => {}
            (Some(Kind::Date), _) => return Err(parse_err(path, "date_nanos")),
            (Some(Kind::Keyword | Kind::Other), Value::Object(_)) => {
                return Err(parse_err(path, "keyword"))
            }
            (Some(Kind::Keyword | Kind::Other), _) => {}
            (None, Value::Object(o)) => {
                idx.fields.insert(path.clone(), Kind::Object);
                added.push(path.clone());
                map_object(idx, path, o, id, added)?;
            }
            (None, Value::Array(items)) => {
                let first = items.iter().find(|x| !x.is_null());
                let kind = match first {
                    Some(Value::Number(n)) if n.is_f64() => Kind::Double,
                    Some(Value::Number(_)) => Kind::Long,
                    Some(Value::Bool(_)) => Kind::Boolean,
                    Some(Value::Object(_)) => Kind::Object,
                    Some(_) => Kind::Keyword,
                    None => continue,
                };
                idx.fields.insert(path.clone(), kind);
                added.push(path.clone());
            }
            (None, v) => {
                let kind = match v {
                    Value::Number(n) if n.is_f64() => Kind::Double,
                    Value::Number(_) => Kind::Long,
                    Value::Bool(_) => Kind::Boolean,
                    Value::String(s) if !idx.dynamic_strings_keyword && is_date(s) => Kind::Date,
                    Value::Null => continue,
                    _ => Kind::Keyword,
                };
                idx.fields.insert(path.clone(), kind);
                added.push(path.clone());
            }
        }
    }
    path.truncate(base);
    Ok(())
}

/// One item of a bulk request, parsed (outside the state's lock).
struct BulkItem {
    op: String,
    index: String,
    id: Option<String>,
    /// `None` for `delete`; `Some(None)` when the source is not a JSON object.
    source: Option<Option<Map<String, Value>>>,
}

/// Parses a bulk body strictly, as ES does; a malformed request is an error reply.
fn parse_bulk(body: &[u8], default_index: Option<&str>) -> Result<Vec<BulkItem>, Box<Resp>> {
    let bad = |reason: &str| Err(Box::new(error(400, "illegal_argument_exception", reason)));
    if body.last() != Some(&b'\n') {
        return bad("The bulk request must be terminated by a newline [\\n]");
    }
    let lines: Vec<&[u8]> = body[..body.len() - 1].split(|&b| b == b'\n').collect();
    let mut items = vec![];
    let mut i = 0;
    while i < lines.len() {
        let line_no = i + 1;
        let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(lines[i]) else {
            return bad(&format!(
                "Malformed action/metadata line [{line_no}], expected START_OBJECT"
            ));
        };
        if obj.len() != 1 {
            return bad(&format!(
                "Malformed action/metadata line [{line_no}], expected a single action"
            ));
        }
        let (op, meta) = obj.into_iter().next().expect("one action");
        if !matches!(op.as_str(), "index" | "create" | "update" | "delete") {
            return bad(&format!(
                "Action/metadata line [{line_no}] contains an unknown parameter [{op}]"
            ));
        }
        let has_source = op != "delete";
        if has_source && i + 1 >= lines.len() {
            return bad("The bulk request must be terminated by a newline [\\n]");
        }
        let source = has_source.then(|| match serde_json::from_slice(lines[i + 1]) {
            Ok(Value::Object(o)) => Some(o),
            _ => None,
        });
        i += if has_source { 2 } else { 1 };
        let Some(index) = meta["_index"].as_str().or(default_index).map(String::from) else {
            return Err(Box::new(error(
                400,
                "action_request_validation_exception",
                "Validation Failed: 1: index is missing;",
            )));
        };
        items.push(BulkItem {
            op,
            index,
            id: meta["_id"].as_str().map(String::from),
            source,
        });
    }
    Ok(items)
}

/// An item, its id, its status and its error's type and reason.
type Applied = (BulkItem, String, u16, Option<(String, String)>);

/// Applies parsed items to the state.
fn apply_bulk(s: &mut State, items: Vec<BulkItem>) -> Vec<Applied> {
    items
        .into_iter()
        .map(|mut it| {
            let id = it
                .id
                .clone()
                .unwrap_or_else(|| format!("auto-{}", s.bulk_items));
            s.bulk_items += 1;
            let (status, err) = index_one(s, &it.op, &it.index, &id, it.source.take());
            // Items name the index that took them: a data stream's backing index.
            if let Some(i) = s.indices.get(&it.index) {
                it.index = i.write_index(&it.index);
            }
            (it, id, status, err)
        })
        .collect()
}

/// The bulk answer, written out directly (thousands of items per request).
/// ES's `filter_path`: comma-separated dotted paths, `*` matching one name; a path keeps
/// the field it names and everything under it.
struct FilterPath(Vec<Vec<String>>);

impl FilterPath {
    fn from_query(query: Option<&str>) -> FilterPath {
        let value = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|kv| kv.strip_prefix("filter_path="))
            .map(|v| v.replace("%2C", ",").replace("%2c", ","));
        FilterPath(
            value
                .iter()
                .flat_map(|v| v.split(','))
                .filter(|p| !p.is_empty())
                .map(|p| p.split('.').map(String::from).collect())
                .collect(),
        )
    }

    /// Whether the field at `path` is in the reply (with no filter, everything is).
    fn keeps(&self, path: &[&str]) -> bool {
        self.0.is_empty()
            || self.0.iter().any(|p| {
                // A pattern keeps its field's subtree, and the objects on the way to it.
                p.iter()
                    .zip(path)
                    .all(|(want, seg)| want == "*" || want == seg)
            })
    }
}

/// The bulk answer, written out directly (thousands of items per request).
fn bulk_reply(results: &[Applied], filter: &FilterPath) -> Resp {
    let q = |s: &str| serde_json::to_string(s).expect("strings serialise");
    let errors = results.iter().any(|r| r.3.is_some());
    let mut top = vec![];
    if filter.keeps(&["took"]) {
        top.push("\"took\":1".to_string());
    }
    if filter.keeps(&["errors"]) {
        top.push(format!("\"errors\":{errors}"));
    }
    if filter.keeps(&["items"]) {
        let mut items = String::from("\"items\":[");
        for (n, (it, id, status, err)) in results.iter().enumerate() {
            let op = it.op.as_str();
            let mut fields = vec![];
            let mut field = |name: &str, value: String| {
                if filter.keeps(&["items", op, name]) {
                    fields.push(format!("\"{name}\":{value}"));
                }
            };
            field("_index", q(&it.index));
            field("_id", q(id));
            field("status", status.to_string());
            match err {
                Some((kind, reason)) => {
                    let mut e = vec![];
                    if filter.keeps(&["items", op, "error", "type"]) {
                        e.push(format!("\"type\":{}", q(kind)));
                    }
                    if filter.keeps(&["items", op, "error", "reason"]) {
                        e.push(format!("\"reason\":{}", q(reason)));
                    }
                    if !e.is_empty() {
                        field("error", format!("{{{}}}", e.join(",")));
                    }
                }
                None => {
                    field("result", "\"created\"".into());
                    field("_version", "1".into());
                }
            }
            if n > 0 {
                items.push(',');
            }
            items.push_str(&format!("{{{}:{{{}}}}}", q(op), fields.join(",")));
        }
        items.push(']');
        top.push(items);
    }
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("x-elastic-product", "Elasticsearch")
        .body(Full::new(Bytes::from(format!("{{{}}}", top.join(",")))))
        .expect("a valid response")
}

/// What `State::discard` keeps of an id.
fn id_hash(id: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(id)
}

fn index_one(
    s: &mut State,
    op: &str,
    index: &str,
    id: &str,
    source: Option<Option<Map<String, Value>>>,
) -> (u16, Option<(String, String)>) {
    if s.faults.item_429_ratio > 0.0 && s.random() < s.faults.item_429_ratio {
        s.items_429 += 1;
        return (
            429,
            Some((
                "es_rejected_execution_exception".into(),
                "rejected execution of coordinating operation [injected]".into(),
            )),
        );
    }
    if !s.take_capacity() {
        s.items_429 += 1;
        s.items_over_capacity += 1;
        return (
            429,
            Some((
                "es_rejected_execution_exception".into(),
                "rejected execution of primary operation [coordinating_and_primary_bytes=0, replica_bytes=0, all_bytes=0] on EsThreadPoolExecutor[name = in-tree/write, queue capacity = 10000]".into(),
            )),
        );
    }
    if !s.indices.contains_key(index) {
        let idx = create_index(s, index);
        s.indices.insert(index.to_string(), idx);
    }
    let bad = |s: &mut State, status: u16, kind: &str, reason: String| {
        if status == 400 {
            s.items_400 += 1;
        }
        (status, Some((kind.to_string(), reason)))
    };
    let ds = s.indices[index].data_stream;
    if ds && op != "create" {
        return bad(
            s,
            400,
            "illegal_argument_exception",
            format!(
                "only write ops with an op_type of create are allowed in data streams [{index}]"
            ),
        );
    }
    let Some(source) = source else {
        return bad(
            s,
            400,
            "illegal_argument_exception",
            "only create and index are supported by the test server".into(),
        );
    };
    let Some(doc) = source else {
        return bad(
            s,
            400,
            "document_parsing_exception",
            "[1:1] failed to parse: source is not a JSON object".into(),
        );
    };
    if ds && !doc.get("@timestamp").is_some_and(|t| t.is_string()) {
        return bad(
            s,
            400,
            "document_parsing_exception",
            "[1:1] failed to parse: data stream timestamp field [@timestamp] is missing".into(),
        );
    }
    let id_hash = id_hash(id);
    let exists = |i: &Index| i.docs.contains_key(id) || i.ids.contains(&id_hash);
    if op == "create" && exists(&s.indices[index]) {
        s.items_409 += 1;
        return (
            409,
            Some((
                "version_conflict_engine_exception".into(),
                format!("[{id}]: version conflict, document already exists (current version [1])"),
            )),
        );
    }
    let idx = s.indices.get_mut(index).unwrap();
    if let Err((kind, reason)) = map_document(idx, &doc, id) {
        return bad(s, 400, &kind, reason);
    }
    if let Some(o) = s.observer.as_mut() {
        o(index, &doc);
    }
    let discard = s.discard;
    let idx = s.indices.get_mut(index).unwrap();
    if discard {
        idx.ids.insert(id_hash);
    } else {
        idx.docs.insert(id.to_string(), Value::Object(doc));
    }
    (201, None)
}
