//! What the in-tree Elasticsearch must do as the real one does (and, with
//! `LOGFERRY_TEST_ES_URL`, checked against a real cluster): the rules logferry's sink relies on.

mod support;

use serde_json::Value;
use support::*;

fn item_status(v: &Value, i: usize) -> u64 {
    v["items"][i].as_object().unwrap().values().next().unwrap()["status"]
        .as_u64()
        .unwrap()
}

fn item_error(v: &Value, i: usize) -> String {
    v["items"][i].as_object().unwrap().values().next().unwrap()["error"]["type"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn data_streams_take_only_create_with_a_timestamp_and_refuse_duplicates() {
    let es = Es::new();
    let ds = format!("logs-conformance-{}", unique("d"));
    let body = format!(
        "{{\"create\":{{\"_index\":\"{ds}\",\"_id\":\"a\"}}}}\n{{\"@timestamp\":\"2024-01-01T00:00:00Z\",\"message\":\"one\"}}\n\
         {{\"create\":{{\"_index\":\"{ds}\",\"_id\":\"a\"}}}}\n{{\"@timestamp\":\"2024-01-01T00:00:00Z\",\"message\":\"again\"}}\n\
         {{\"index\":{{\"_index\":\"{ds}\",\"_id\":\"b\"}}}}\n{{\"@timestamp\":\"2024-01-01T00:00:00Z\"}}\n\
         {{\"create\":{{\"_index\":\"{ds}\",\"_id\":\"c\"}}}}\n{{\"message\":\"no timestamp\"}}\n"
    );
    let (status, v) = es.bulk_raw(&body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["errors"], true);
    assert_eq!(item_status(&v, 0), 201);
    assert_eq!(item_status(&v, 1), 409);
    assert_eq!(item_error(&v, 1), "version_conflict_engine_exception");
    assert_eq!(item_status(&v, 2), 400, "{v}");
    assert_eq!(item_status(&v, 3), 400, "{v}");
    assert_eq!(es.count(&ds), 1);
}

#[test]
fn a_leaf_where_an_object_is_mapped_fails_only_that_item() {
    let es = Es::new();
    let ds = format!("logs-conformance-{}", unique("m"));
    let body = format!(
        "{{\"create\":{{\"_index\":\"{ds}\",\"_id\":\"1\"}}}}\n{{\"@timestamp\":\"2024-01-01T00:00:00Z\",\"labels\":{{\"app\":{{\"name\":\"x\"}}}}}}\n\
         {{\"create\":{{\"_index\":\"{ds}\",\"_id\":\"2\"}}}}\n{{\"@timestamp\":\"2024-01-01T00:00:00Z\",\"labels\":{{\"app\":\"flat\"}}}}\n\
         {{\"create\":{{\"_index\":\"{ds}\",\"_id\":\"3\"}}}}\n{{\"@timestamp\":\"2024-01-01T00:00:00Z\",\"labels\":{{\"app\":{{\"name\":\"y\"}}}}}}\n"
    );
    let (_, v) = es.bulk_raw(&body);
    assert_eq!(item_status(&v, 0), 201);
    assert_eq!(item_status(&v, 1), 400);
    assert!(item_error(&v, 1).ends_with("parsing_exception"), "{v}");
    assert_eq!(item_status(&v, 2), 201);
}

#[test]
fn malformed_bulk_bodies_are_refused_whole() {
    let es = Es::new();
    let ds = format!("logs-conformance-{}", unique("n"));
    let (status, _) = es.bulk_raw(&format!(
        "{{\"create\":{{\"_index\":\"{ds}\"}}}}\n{{\"@timestamp\":\"2024-01-01T00:00:00Z\"}}"
    ));
    assert_eq!(status, 400, "a body must end with a newline");
    let (status, _) = es.bulk_raw(&format!("{{\"upsert\":{{\"_index\":\"{ds}\"}}}}\n{{}}\n"));
    assert_eq!(status, 400, "unknown action");
    let (status, _) = es.bulk_raw("not json\n");
    assert_eq!(status, 400);
}

#[test]
fn a_dead_endpoint_is_skipped_for_a_live_one() {
    let es = Es::new();
    let tree = Tree::new();
    let ns = unique("failover");
    tree.container("ns", "p", "app").append(
        (0..50)
            .map(|i| cri("stdout", "F", &seq_msg(i)) + "\n")
            .collect::<String>()
            .as_bytes(),
    );
    let mut cfg = es_config(vec![tree.glob()], &es, &ns);
    // Nothing listens on port 1.
    cfg.output.elasticsearch.endpoints = vec!["http://127.0.0.1:1".into(), es.url()];
    let agent = Agent::start(cfg, Some(&tree.state_dir()));
    es.wait_count(&format!("logs-kubernetes-{ns}"), 50);
    assert_exactly_once(&seqs(&es.docs(&format!("logs-kubernetes-{ns}"))), 50);
    agent.stop();
}

#[test]
fn filter_path_keeps_only_what_the_sink_reads() {
    let es = Es::new();
    let ds = format!("logs-conformance-{}", unique("f"));
    let body = format!(
        "{{\"create\":{{\"_index\":\"{ds}\",\"_id\":\"a\"}}}}\n{{\"@timestamp\":\"2024-01-01T00:00:00Z\"}}\n\
         {{\"create\":{{\"_index\":\"{ds}\",\"_id\":\"a\"}}}}\n{{\"@timestamp\":\"2024-01-01T00:00:00Z\"}}\n"
    );
    let path = format!(
        "/_bulk?filter_path={}",
        logferry::sink::elasticsearch::response::FILTER_PATH.replace(',', "%2C")
    );
    let (status, v) = es.send_raw("POST", &path, "application/x-ndjson", body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v,
        serde_json::json!({
            "errors": true,
            "items": [
                { "create": { "status": 201 } },
                { "create": { "status": 409, "error": {
                    "type": "version_conflict_engine_exception",
                    "reason": v["items"][1]["create"]["error"]["reason"] } } }
            ]
        })
    );
    assert!(v["items"][1]["create"]["error"]["reason"].is_string());
}

#[test]
fn a_write_capacity_refuses_the_items_beyond_it_with_429_and_refills_over_time() {
    let es = Es::new();
    let Some(server) = es.in_tree() else {
        return eprintln!("skipped: the write capacity is the test server's");
    };
    server.faults(|f| f.write_capacity = 50);
    let ds = format!("logs-conformance-{}", unique("cap"));
    let body = |from: usize| -> String {
        (from..from + 80)
            .map(|i| {
                format!(
                    "{{\"create\":{{\"_index\":\"{ds}\",\"_id\":\"{i}\"}}}}\n{{\"@timestamp\":\"2024-01-01T00:00:00Z\"}}\n"
                )
            })
            .collect()
    };
    let (status, v) = es.bulk_raw(&body(0));
    assert_eq!(status, 200, "{v}");
    let statuses: Vec<u64> = (0..80).map(|i| item_status(&v, i)).collect();
    let took = statuses.iter().filter(|&&s| s == 201).count();
    // A bucket of one second's worth: 50 at once, the rest refused as ES's write pool does.
    assert!((50..=52).contains(&took), "{took} taken");
    assert_eq!(item_status(&v, 79), 429);
    assert_eq!(item_error(&v, 79), "es_rejected_execution_exception");
    std::thread::sleep(std::time::Duration::from_millis(400));
    let (_, v) = es.bulk_raw(&body(80));
    let again = (0..80).filter(|&i| item_status(&v, i) == 201).count();
    assert!(
        (15..=50).contains(&again),
        "{again} taken after 400 ms or more at 50/s"
    );
    server.faults(|f| f.write_capacity = 0);
    assert_eq!(es.count(&ds), (took + again) as u64);
}

/// Elasticsearch checks ids per backing index: after a rollover the same id is indexed
/// again, in the new write index. An `ids` query over the data stream sees every backing
/// index, and the bulk items name the backing index that took them.
#[test]
fn ids_are_unique_per_backing_index_and_an_ids_query_sees_every_backing_index() {
    let es = Es::new();
    let ds = format!("logs-conformance-{}", unique("r"));
    let create = |id: &str| {
        format!("{{\"create\":{{\"_index\":\"{ds}\",\"_id\":\"{id}\"}}}}\n{{\"@timestamp\":\"2024-01-01T00:00:00Z\",\"message\":\"{id}\"}}\n")
    };
    let written_index = |v: &Value| {
        v["items"][0]["create"]["_index"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (_, v) = es.bulk_raw(&create("a"));
    assert_eq!(item_status(&v, 0), 201, "{v}");
    let first = written_index(&v);
    assert!(first.starts_with(".ds-"), "{first}");
    let (status, r) = es.call("POST", &format!("/{ds}/_rollover"), None);
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["old_index"], first.as_str());
    let (_, v) = es.bulk_raw(&create("a"));
    assert_eq!(
        item_status(&v, 0),
        201,
        "a second time, in the new write index: {v}"
    );
    let second = written_index(&v);
    assert_ne!(first, second);
    assert_eq!(r["new_index"], second.as_str());
    let (_, v) = es.bulk_raw(&create("a"));
    assert_eq!(
        item_status(&v, 0),
        409,
        "a third time, in the same write index: {v}"
    );
    // What a replay asks before sending: which of these ids does the stream hold anywhere?
    let (status, _) = es.call("POST", &format!("/{ds}/_refresh"), None);
    assert_eq!(status, 200);
    let (status, r) = es.call(
        "POST",
        &format!("/{ds}/_search"),
        Some(serde_json::json!({ "size": 100, "_source": false, "query": { "ids": { "values": ["a", "b"] } } })),
    );
    assert_eq!(status, 200, "{r}");
    let hits = r["hits"]["hits"].as_array().unwrap();
    let mut found: Vec<(String, String)> = hits
        .iter()
        .map(|h| {
            (
                h["_index"].as_str().unwrap().into(),
                h["_id"].as_str().unwrap().into(),
            )
        })
        .collect();
    found.sort();
    let mut expected = vec![(first, "a".to_string()), (second, "a".to_string())];
    expected.sort();
    assert_eq!(found, expected);
    assert!(hits.iter().all(|h| h.get("_source").is_none()), "{r}");
    let (status, r) = es.call("GET", &format!("/_data_stream/{ds}"), None);
    assert_eq!(status, 200);
    assert_eq!(
        r["data_streams"][0]["indices"].as_array().unwrap().len(),
        2,
        "{r}"
    );
}

/// The in-tree server can index a request and cut the connection before answering: the
/// client cannot know the outcome, as after a timeout.
#[test]
fn a_request_cut_after_it_was_indexed_is_indexed_but_unanswered() {
    use std::io::{Read, Write};
    let es = logferry_testkit::es_server::EsServer::start();
    es.faults(|f| f.drop_after_apply = 1);
    let body = "{\"create\":{\"_index\":\"logs-cut-default\",\"_id\":\"x\"}}\n{\"@timestamp\":\"2024-01-01T00:00:00Z\"}\n";
    let addr = es.url.trim_start_matches("http://").to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "POST /_bulk HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    assert_eq!(es.with(|s| s.count("logs-cut-default")), 1);
    // The next one is answered.
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "POST /_bulk HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"status\":409"), "{answer}");
}
