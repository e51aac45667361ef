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
