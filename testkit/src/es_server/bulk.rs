//! Bulk bodies: parsed strictly as Elasticsearch does, applied item by item (409 on a
//! duplicate `create`, data streams taking only `create`), answered per item and trimmed by
//! `filter_path`.

use super::*;

/// One item of a bulk request, parsed (outside the state's lock).
pub(super) struct BulkItem {
    op: String,
    index: String,
    id: Option<String>,
    /// `None` for `delete`; `Some(None)` when the source is not a JSON object.
    source: Option<Option<Map<String, Value>>>,
}

/// Parses a bulk body strictly, as ES does; a malformed request is an error reply.
pub(super) fn parse_bulk(
    body: &[u8],
    default_index: Option<&str>,
) -> Result<Vec<BulkItem>, Box<Resp>> {
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
pub(super) type Applied = (BulkItem, String, u16, Option<(String, String)>);

/// Applies parsed items to the state.
pub(super) fn apply_bulk(s: &mut State, items: Vec<BulkItem>) -> Vec<Applied> {
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
pub(super) struct FilterPath(Vec<Vec<String>>);

impl FilterPath {
    pub(super) fn from_query(query: Option<&str>) -> FilterPath {
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
pub(super) fn bulk_reply(results: &[Applied], filter: &FilterPath) -> Resp {
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
pub(super) fn id_hash(id: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(id)
}

pub(super) fn index_one(
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
