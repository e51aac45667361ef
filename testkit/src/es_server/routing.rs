//! Requests in: the outage switch, gzip bodies, the bulk endpoint's faults and limits, and
//! the ILM, template, search and data stream APIs.

use super::*;

pub(super) async fn handle(
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
    let ignore_unavailable = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "ignore_unavailable=true"));
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
        return bulk_endpoint(
            &state,
            &raw,
            body,
            gzip,
            content_type.as_deref(),
            &segs,
            &filter,
        )
        .await;
    }
    let body_json: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    let mut s = state.lock().unwrap();
    Ok(api(
        &mut s,
        method.as_str(),
        &segs,
        body_json,
        ignore_unavailable,
    ))
}

/// The bulk endpoint: its latency, size limit and injected failures, then the items.
async fn bulk_endpoint(
    state: &Mutex<State>,
    raw: &[u8],
    body: Vec<u8>,
    gzip: bool,
    content_type: Option<&str>,
    segs: &[&str],
    filter: &FilterPath,
) -> Result<Resp, std::io::Error> {
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
    match content_type {
        Some(ct)
            if ct.starts_with("application/x-ndjson") || ct.starts_with("application/json") => {}
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
    Ok(bulk_reply(&results, filter))
}

/// Every other API the agent and the tests use.
/// `ignore_unavailable`: a concrete name in a search's or refresh's targets that is no
/// index is skipped instead of answered 404.
fn api(s: &mut State, m: &str, segs: &[&str], body_json: Value, ignore_unavailable: bool) -> Resp {
    match (m, segs) {
        ("GET", []) => reply(
            200,
            json!({ "name": "in-tree", "cluster_name": "test", "version": { "number": "8.15.0" }, "tagline": "You Know, for Search" }),
        ),
        ("PUT", ["_ilm", "policy", name]) => {
            let Some(policy) = body_json.get("policy") else {
                return error(
                    400,
                    "x_content_parse_exception",
                    "[put_lifecycle_request] policy is required",
                );
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
                return error(400, "invalid_index_template_exception", &format!("index template [{name}] invalid, cause [index template [{name}] specifies component templates [{missing}] that do not exist]"));
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
        // Targets are a comma-separated list. A concrete name that is no index is an error
        // (unless told to skip it); a pattern may match nothing.
        ("POST" | "GET", [targets, "_refresh" | "_search"])
            if !ignore_unavailable
                && targets
                    .split(',')
                    .any(|t| !t.contains('*') && !s.indices.contains_key(t)) =>
        {
            let missing = targets
                .split(',')
                .find(|t| !t.contains('*') && !s.indices.contains_key(*t))
                .unwrap_or_default();
            error(
                404,
                "index_not_found_exception",
                &format!("no such index [{missing}]"),
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
                reply(200, {
                    let template = template_for(s, name);
                    let mut ds = json!({
                        "name": name, "generation": i.generation, "indices": indices,
                        "template": template.as_ref().map(|(n, _)| n.clone()),
                    });
                    if let Some((_, t)) = &template {
                        if let Some(p) = ilm_policy_of(s, t) {
                            ds["ilm_policy"] = json!(p);
                        }
                        // The data stream lifecycle, as the template's own part sets it.
                        if let Some(l) = t["template"].get("lifecycle") {
                            let mut l = l.clone();
                            l["enabled"] =
                                json!(l.get("enabled").and_then(Value::as_bool).unwrap_or(true));
                            ds["lifecycle"] = l;
                        }
                    }
                    json!({ "data_streams": [ds] })
                })
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
    }
}
