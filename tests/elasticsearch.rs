//! The agent against Elasticsearch: the in-tree server by default, a real cluster when
//! `LOGFERRY_TEST_ES_URL` is set. Lines carry sequence numbers, so loss and duplication are
//! counted exactly.

mod support;

use logferry::stats::Stats;
use serde_json::{json, Value};
use std::time::Duration;
use support::*;

fn stream(ns: &str) -> String {
    format!("logs-kubernetes-{ns}")
}

#[test]
fn lines_of_many_files_land_exactly_once_in_a_data_stream() {
    let es = Es::new();
    let tree = Tree::new();
    let ns = unique("many");
    let per = 1500u64;
    for f in 0..6u64 {
        let c = tree.container("shop", &format!("pod-{f}"), "app");
        c.append(seq_lines(f * per, per).as_bytes());
    }
    let agent = Agent::start(
        es_config(vec![tree.glob()], &es, &ns),
        Some(&tree.state_dir()),
    );
    es.wait_count(&stream(&ns), 6 * per);
    let docs = es.docs(&stream(&ns));
    assert_exactly_once(&seqs(&docs), 6 * per);
    let d = &docs[0];
    assert_eq!(d["data_stream"]["type"], "logs");
    assert_eq!(d["data_stream"]["namespace"], ns);
    assert_eq!(d["kubernetes"]["namespace"], "shop");
    agent.wait_stat(
        "all acknowledged",
        |s| Stats::get(&s.events_delivered),
        6 * per,
    );
    let summary = agent.stop();
    // Every file's checkpoint is at its end: all acknowledged.
    for e in &summary.committed {
        assert_eq!(
            e.offset,
            std::fs::metadata(&e.path).unwrap().len(),
            "{}",
            e.path.display()
        );
    }
    if let Some(s) = es.in_tree() {
        s.with(|st| {
            assert_eq!(st.is_data_stream(&stream(&ns)), Some(true));
            assert_eq!(
                st.gzip_requests, st.bulk_requests,
                "bodies are gzip-compressed"
            );
            assert_eq!(st.items_409, 0);
        });
        assert!(
            Stats::get(&summary.stats.es_bytes_sent) < Stats::get(&summary.stats.es_bytes_raw) / 3
        );
    }
}

#[test]
fn an_outage_mid_run_loses_and_duplicates_nothing() {
    let es = Es::new();
    let Some(server) = es.in_tree() else {
        return eprintln!("skipped: needs fault injection");
    };
    let tree = Tree::new();
    let ns = unique("outage");
    let c = tree.container("ns", "busy", "app");
    let agent = Agent::start(
        es_config(vec![tree.glob()], &es, &ns),
        Some(&tree.state_dir()),
    );
    let mut next = 0;
    for round in 0..30 {
        if round == 10 {
            server.set_down(true);
        }
        if round == 20 {
            server.set_down(false);
        }
        c.append(seq_lines(next, 200).as_bytes());
        next += 200;
        std::thread::sleep(Duration::from_millis(50));
    }
    es.wait_count(&stream(&ns), next);
    assert_exactly_once(&seqs(&es.docs(&stream(&ns))), next);
    let summary = agent.stop();
    assert!(
        Stats::get(&summary.stats.es_request_failures) > 0,
        "the outage was seen"
    );
}

#[test]
fn rejected_items_and_requests_are_retried_until_they_land() {
    let es = Es::new();
    let Some(server) = es.in_tree() else {
        return eprintln!("skipped: needs fault injection");
    };
    server.faults(|f| {
        f.item_429_ratio = 0.3;
        f.request_fail_ratio = 0.2;
    });
    let tree = Tree::new();
    let ns = unique("retry");
    for f in 0..3u64 {
        tree.container("ns", &format!("p{f}"), "app")
            .append(seq_lines(f * 1000, 1000).as_bytes());
    }
    let mut cfg = es_config(vec![tree.glob()], &es, &ns);
    cfg.output.elasticsearch.batch_max_events = 200;
    let agent = Agent::start(cfg, Some(&tree.state_dir()));
    es.wait_count(&stream(&ns), 3000);
    assert_exactly_once(&seqs(&es.docs(&stream(&ns))), 3000);
    let summary = agent.stop();
    server.with(|s| {
        assert!(s.items_429 > 100, "{} item 429s", s.items_429);
        assert!(s.requests_failed > 0);
    });
    assert!(Stats::get(&summary.stats.es_items_retried) > 0);
    assert_eq!(Stats::get(&summary.stats.es_dead_lettered), 0);
}

#[test]
fn a_mapping_conflict_is_rescued_not_lost() {
    let es = Es::new();
    let tree = Tree::new();
    let ns = unique("conflict");
    let c = tree.container("ns", "app", "app");
    c.append_lines(&[
        cri("stdout", "F", r#"{"msg":"first","status":{"code":200}}"#),
        cri(
            "stdout",
            "F",
            r#"{"msg":"second","status":"not an object"}"#,
        ),
    ]);
    let mut cfg = es_config(vec![tree.glob()], &es, &ns);
    // Without logferry's template `json` is mapped dynamically: `json.status` becomes an
    // object, and a later string there is a conflict (one `ignore_malformed` does not cover).
    cfg.output.elasticsearch.setup = false;
    let agent = Agent::start(cfg, Some(&tree.state_dir()));
    es.wait_count(&stream(&ns), 2);
    let docs = es.docs(&stream(&ns));
    let second = docs
        .iter()
        .find(|d| d["message"] == "second")
        .expect("the conflicting document is indexed");
    assert!(
        second["error"]["message"]
            .as_str()
            .unwrap()
            .contains("json.status"),
        "{second}"
    );
    let original: Value =
        serde_json::from_str(second["event"]["original"].as_str().unwrap()).unwrap();
    assert_eq!(original["json"]["status"], "not an object");
    assert!(second["log"]["flags"]
        .as_array()
        .unwrap()
        .contains(&Value::from("rescued")));
    let summary = agent.stop();
    assert_eq!(Stats::get(&summary.stats.es_rescued), 1);
}

#[test]
fn too_large_requests_are_split_and_a_too_large_document_is_dead_lettered() {
    let es = Es::new();
    let Some(server) = es.in_tree() else {
        return eprintln!("skipped: needs fault injection");
    };
    server.faults(|f| f.max_content_length = 32 * 1024);
    let tree = Tree::new();
    let ns = unique("split");
    let c = tree.container("ns", "big", "app");
    c.append(seq_lines(0, 500).as_bytes());
    c.append_lines(&[cri(
        "stdout",
        "F",
        &format!("seq=00000500 {}", "x".repeat(40 * 1024)),
    )]);
    let agent = Agent::start(
        es_config(vec![tree.glob()], &es, &ns),
        Some(&tree.state_dir()),
    );
    es.wait_count(&stream(&ns), 500);
    agent.wait_stat(
        "the big document dead-lettered",
        |s| Stats::get(&s.es_dead_lettered),
        1,
    );
    assert_exactly_once(&seqs(&es.docs(&stream(&ns))), 500);
    agent.wait_stat("all acknowledged", |s| Stats::get(&s.events_delivered), 501);
    let summary = agent.stop();
    assert!(server.with(|s| s.requests_413) > 0);
    // The checkpoint passes the dead-lettered line: it is kept on disk, not lost.
    assert_eq!(
        summary.committed[0].offset,
        std::fs::metadata(c.path()).unwrap().len()
    );
    let dl = tree.state_dir().join("dead-letter");
    let text: String = std::fs::read_dir(&dl)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    let rec: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(rec["status"], 413);
    assert!(rec["document"]["message"]
        .as_str()
        .unwrap()
        .starts_with("seq=00000500"));
}

#[test]
fn setup_installs_a_90_day_policy_and_a_template_that_makes_the_stream() {
    use logferry::setup::elasticsearch as setup;
    use logferry::sink::elasticsearch::client::BulkClient;
    let es = Es::new();
    let mut cfg = logferry::config::ElasticsearchConfig {
        endpoints: vec![es.url()],
        ..Default::default()
    };
    let name = unique("lftest");
    cfg.dataset = name.clone();
    cfg.template_name = name.clone();
    cfg.ilm_policy = name.clone();
    let client = BulkClient::new(&cfg).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let resources = setup::resources(&cfg, &Default::default(), &["json".to_string()]);
    let changes: Vec<setup::Change> = rt
        .block_on(setup::apply(client.transport(), &resources, false))
        .unwrap()
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    assert_eq!(changes, vec![setup::Change::Created; 4]);
    let again: Vec<setup::Change> = rt
        .block_on(setup::apply(client.transport(), &resources, false))
        .unwrap()
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    assert_eq!(again, vec![setup::Change::Unchanged; 4], "idempotent");

    let (status, policy) = es.call("GET", &format!("/_ilm/policy/{name}"), None);
    assert_eq!(status, 200);
    assert_eq!(
        policy[&name]["policy"]["phases"]["delete"]["min_age"],
        "90d"
    );
    let (_, t) = es.call("GET", &format!("/_index_template/{name}"), None);
    let t = &t["index_templates"][0]["index_template"];
    assert_eq!(t["index_patterns"][0], format!("logs-{name}-*"));
    assert!(t.get("data_stream").is_some());

    // A template changed by someone else is reported, and replaced only when asked.
    let mut changed = resources[3].body.clone();
    changed["priority"] = Value::from(300);
    changed["_meta"]["version"] = Value::from("someone-else");
    assert_eq!(
        es.call("PUT", &format!("/_index_template/{name}"), Some(changed))
            .0,
        200
    );
    let after: Vec<setup::Change> = rt
        .block_on(setup::apply(client.transport(), &resources, false))
        .unwrap()
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    assert_eq!(after[3], setup::Change::Differs);
    let forced: Vec<setup::Change> = rt
        .block_on(setup::apply(client.transport(), &resources, true))
        .unwrap()
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    assert_eq!(forced[3], setup::Change::Replaced);

    // The first write creates the data stream from that template.
    let tree = Tree::new();
    tree.container("ns", "p", "app")
        .append(seq_lines(0, 5).as_bytes());
    let mut agent_cfg = es_config(vec![tree.glob()], &es, "default");
    agent_cfg.output.elasticsearch.dataset = name.clone();
    agent_cfg.output.elasticsearch.template_name = name.clone();
    agent_cfg.output.elasticsearch.ilm_policy = name.clone();
    let agent = Agent::start(agent_cfg, Some(&tree.state_dir()));
    let ds = format!("logs-{name}-default");
    es.wait_count(&ds, 5);
    agent.stop();
    let (status, v) = es.call("GET", &format!("/_data_stream/{ds}"), None);
    assert_eq!(status, 200);
    assert_eq!(v["data_streams"][0]["template"], name);
}

#[test]
fn credentials_come_from_files_or_values_and_reach_the_cluster() {
    use logferry::config::{ElasticsearchConfig, Secret};
    use logferry::sink::elasticsearch::client::BulkClient;
    let es = Es::new();
    let Some(server) = es.in_tree() else {
        return eprintln!("skipped: inspects request headers");
    };
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen = |cfg: ElasticsearchConfig| {
        let client = BulkClient::new(&cfg).unwrap();
        rt.block_on(client.bulk(b"{\"create\":{\"_index\":\"logs-a-b\",\"_id\":\"x\"}}\n{\"@timestamp\":\"2024-01-01T00:00:00Z\"}\n"));
        server.with(|s| s.last_authorization.clone())
    };
    let base = ElasticsearchConfig {
        endpoints: vec![es.url()],
        ..Default::default()
    };
    let basic = seen(ElasticsearchConfig {
        username: "elastic".into(),
        password_file: Some(pw.clone()),
        ..base.clone()
    });
    assert_eq!(
        basic.as_deref(),
        Some("Basic ZWxhc3RpYzpzM2NyZXQ="),
        "elastic:s3cret, file trimmed"
    );
    let key = seen(ElasticsearchConfig {
        api_key: Secret::new("id1:key1"),
        ..base.clone()
    });
    assert_eq!(key.as_deref(), Some("ApiKey aWQxOmtleTE="));
    let bearer = seen(ElasticsearchConfig {
        bearer_token: Secret::new("tok"),
        ..base.clone()
    });
    assert_eq!(bearer.as_deref(), Some("Bearer tok"));
    let missing = BulkClient::new(&ElasticsearchConfig {
        username: "u".into(),
        password_file: Some(dir.path().join("nope")),
        ..base
    });
    let err = missing.err().unwrap().to_string();
    assert!(err.contains("output.elasticsearch.password_file"), "{err}");
}

#[test]
fn the_request_rate_cap_holds() {
    use logferry::config::ElasticsearchConfig;
    use logferry::sink::elasticsearch::client::BulkClient;
    let es = Es::new();
    let cfg = ElasticsearchConfig {
        endpoints: vec![es.url()],
        max_requests_per_second: 2,
        ..Default::default()
    };
    let client = BulkClient::new(&cfg).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let started = std::time::Instant::now();
    for i in 0..7 {
        let body = format!("{{\"create\":{{\"_index\":\"logs-rate-{}\",\"_id\":\"{i}\"}}}}\n{{\"@timestamp\":\"2024-01-01T00:00:00Z\"}}\n", unique("t"));
        rt.block_on(client.bulk(body.as_bytes()));
    }
    // 2 a second with a burst of 2: the 7th request cannot start before 2.5 s (a lower bound only).
    assert!(
        started.elapsed() >= Duration::from_millis(2400),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn tls_with_a_custom_ca_and_the_development_escape_hatch() {
    use logferry::config::ElasticsearchConfig;
    use logferry::sink::elasticsearch::client::{BulkClient, Reply};
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let server = support::es_server::EsServer::start_tls(&ca);
    assert!(server.url.starts_with("https://"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let body = b"{\"create\":{\"_index\":\"logs-tls-a\",\"_id\":\"1\"}}\n{\"@timestamp\":\"2024-01-01T00:00:00Z\"}\n";
    let send = |cfg: ElasticsearchConfig| rt.block_on(BulkClient::new(&cfg).unwrap().bulk(body)).0;
    let base = ElasticsearchConfig {
        endpoints: vec![server.url.clone()],
        ..Default::default()
    };
    // An unknown CA is refused, and the reason says why (not only "error sending request")…
    match send(base.clone()) {
        Reply::Unreachable(why) => assert!(
            why.contains("certificate") || why.contains("UnknownIssuer"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
    // …the configured one is trusted…
    match send(ElasticsearchConfig {
        ca_file: Some(ca.clone()),
        ..base.clone()
    }) {
        Reply::Items(items) => assert_eq!(items[0].status, 201),
        other => panic!("{other:?}"),
    }
    // …and verification can be switched off for development.
    match send(ElasticsearchConfig {
        insecure_skip_verify: true,
        ..base.clone()
    }) {
        Reply::Items(items) => assert_eq!(items[0].status, 409, "the same id again"),
        other => panic!("{other:?}"),
    }
    // A missing CA file is an error, whether verification is on or off.
    for insecure_skip_verify in [false, true] {
        let bad = BulkClient::new(&ElasticsearchConfig {
            ca_file: Some(dir.path().join("missing.pem")),
            insecure_skip_verify,
            ..base.clone()
        });
        let e = bad.err().unwrap().to_string();
        assert!(e.contains("output.elasticsearch.ca_file"), "{e}");
        assert!(e.contains("missing.pem"), "{e}");
    }
}

#[test]
fn client_certificates_and_the_reason_a_handshake_fails() {
    use logferry::config::{ElasticsearchConfig, Secret};
    use logferry::sink::elasticsearch::client::{BulkClient, Reply};
    use support::es_server::EsServer;
    use support::serve::TlsSetup;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let body = b"{\"create\":{\"_index\":\"logs-tls-a\",\"_id\":\"1\"}}\n{\"@timestamp\":\"2024-01-01T00:00:00Z\"}\n";
    let send = |cfg: &ElasticsearchConfig| rt.block_on(BulkClient::new(cfg).unwrap().bulk(body)).0;
    let start = |setup: TlsSetup| {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let server = EsServer::start_tls_with(&ca, &setup);
        let cfg = ElasticsearchConfig {
            endpoints: vec![server.url.clone()],
            ca_file: Some(ca),
            ..Default::default()
        };
        (dir, server, cfg)
    };

    // Client certificates required: without one the request fails…
    let (dir, server, base) = start(TlsSetup {
        client_auth: true,
        ..Default::default()
    });
    // With TLS 1.3 the server refuses after the client's side of the handshake is done:
    // the request may meet the closed connection before the alert that says why. The
    // agent tries again, as here, and one of its reasons names the certificate.
    let mut reasons = Vec::new();
    for _ in 0..5 {
        match send(&base) {
            Reply::Items(items) => panic!("accepted without a client certificate: {items:?}"),
            Reply::Unreachable(why) | Reply::Unanswered(why) => reasons.push(why),
            Reply::Status(s, why) => panic!("{s} {why}"),
        }
        if reasons
            .iter()
            .any(|r| r.to_lowercase().contains("certificate"))
        {
            break;
        }
    }
    assert!(
        reasons
            .iter()
            .any(|r| r.to_lowercase().contains("certificate")),
        "{reasons:?}"
    );
    // …with one it is taken…
    let with_cert = ElasticsearchConfig {
        cert_file: Some(dir.path().join("client.pem")),
        key_file: Some(dir.path().join("client.key")),
        ..base.clone()
    };
    match send(&with_cert) {
        Reply::Items(items) => assert_eq!(items[0].status, 201),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.state.lock().unwrap().last_authorization, None);
    // …and a password goes along with it.
    let both = ElasticsearchConfig {
        username: "elastic".into(),
        password: Secret::new("pw"),
        ..with_cert.clone()
    };
    match send(&both) {
        Reply::Items(items) => assert_eq!(items[0].status, 409, "the same id again"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        server.state.lock().unwrap().last_authorization.as_deref(),
        Some("Basic ZWxhc3RpYzpwdw==")
    );
    // A key file that holds no key is named.
    let wrong = BulkClient::new(&ElasticsearchConfig {
        key_file: Some(dir.path().join("client.pem")),
        ..with_cert.clone()
    });
    let e = wrong.err().unwrap().to_string();
    assert!(
        e.contains("cert_file/key_file") && e.contains("client.pem") && e.contains("private key"),
        "{e}"
    );

    // The reason of a failed handshake is in the message.
    let (_dir, _server, cfg) = start(TlsSetup {
        names: Some(vec!["elsewhere.example".into()]),
        ..Default::default()
    });
    match send(&cfg) {
        Reply::Unreachable(why) => {
            assert!(why.contains("not valid for name \"127.0.0.1\""), "{why}")
        }
        other => panic!("{other:?}"),
    }
    let (_dir, _server, cfg) = start(TlsSetup {
        expired: true,
        ..Default::default()
    });
    match send(&cfg) {
        Reply::Unreachable(why) => assert!(why.contains("expired"), "{why}"),
        other => panic!("{other:?}"),
    }
}

/// Issue 19: each retention class has its stream, its ILM policy and its template; lines
/// land in the stream of the class the rules give their namespace.
#[test]
fn retention_classes_route_lines_to_their_streams_and_policies() {
    let es = Es::new();
    let tree = Tree::new();
    let dataset = unique("ret");
    let (ci, shop, pay) = (unique("ci-"), unique("shop"), unique("pay"));
    tree.container(&ci, "build", "app")
        .append(seq_lines(0, 10).as_bytes());
    tree.container(&shop, "web", "app")
        .append(seq_lines(10, 5).as_bytes());
    tree.container(&pay, "api", "app")
        .append(seq_lines(15, 7).as_bytes());
    let mut cfg = es_config(vec![tree.glob()], &es, "default");
    let e = &mut cfg.output.elasticsearch;
    e.route_by_namespace = true;
    e.dataset = dataset.clone();
    e.template_name = dataset.clone();
    e.ilm_policy = dataset.clone();
    cfg.retention = toml::from_str(&format!(
        "[[rules]]\nnamespaces = [\"ci-*\"]\nretention = \"7d\"\n[[rules]]\nnamespaces = [{pay:?}]\nretention = \"365d\""
    ))
    .unwrap();
    let agent = Agent::start(cfg, Some(&tree.state_dir()));
    let name = |class: &str, ns: &str| format!("logs-{dataset}{class}-{}", ns.replace('-', "_"));
    let streams = [
        (name(".r7d", &ci), 10, format!("{dataset}-r7d"), "7d"),
        (name("", &shop), 5, dataset.clone(), "90d"),
        (name(".r365d", &pay), 7, format!("{dataset}-r365d"), "365d"),
    ];
    for (stream, n, _, _) in &streams {
        es.wait_count(stream, *n);
    }
    agent.wait_stat("all acknowledged", |s| Stats::get(&s.events_delivered), 22);
    agent.stop();
    for (stream, n, policy, days) in &streams {
        assert_eq!(es.count(stream), *n, "{stream}");
        let (status, ds) = es.call("GET", &format!("/_data_stream/{stream}"), None);
        assert_eq!(status, 200, "{ds}");
        assert_eq!(
            ds["data_streams"][0]["ilm_policy"],
            policy.as_str(),
            "{stream}"
        );
        let (_, p) = es.call("GET", &format!("/_ilm/policy/{policy}"), None);
        assert_eq!(p[policy]["policy"]["phases"]["delete"]["min_age"], *days);
    }
    let doc = &es.docs(&streams[0].0)[0];
    assert_eq!(doc["data_stream"]["dataset"], format!("{dataset}.r7d"));
}

/// Issue 19: with `lifecycle = "dsl"` each class's template carries its data stream
/// lifecycle instead of an ILM policy.
#[test]
fn retention_classes_under_the_data_stream_lifecycle() {
    let es = Es::new();
    let tree = Tree::new();
    let dataset = unique("dsl");
    let (ci, shop) = (unique("ci-"), unique("shop"));
    tree.container(&ci, "build", "app")
        .append(seq_lines(0, 3).as_bytes());
    tree.container(&shop, "web", "app")
        .append(seq_lines(3, 2).as_bytes());
    let mut cfg = es_config(vec![tree.glob()], &es, "default");
    let e = &mut cfg.output.elasticsearch;
    e.route_by_namespace = true;
    e.lifecycle = logferry::config::Lifecycle::Dsl;
    e.dataset = dataset.clone();
    e.template_name = dataset.clone();
    e.ilm_policy = dataset.clone();
    cfg.retention =
        toml::from_str("default = \"30d\"\n[[rules]]\nnamespaces = [\"ci-*\"]\nretention = \"7d\"")
            .unwrap();
    let agent = Agent::start(cfg, Some(&tree.state_dir()));
    let name = |class: &str, ns: &str| format!("logs-{dataset}{class}-{}", ns.replace('-', "_"));
    for (stream, n, days) in [(name(".r7d", &ci), 3, "7d"), (name("", &shop), 2, "30d")] {
        es.wait_count(&stream, n);
        let (status, ds) = es.call("GET", &format!("/_data_stream/{stream}"), None);
        assert_eq!(status, 200, "{ds}");
        let ds = &ds["data_streams"][0];
        assert_eq!(ds["lifecycle"]["data_retention"], days, "{stream}");
        assert!(ds.get("ilm_policy").is_none(), "{ds}");
    }
    agent.stop();
    let (status, _) = es.call("GET", &format!("/_ilm/policy/{dataset}"), None);
    assert_eq!(status, 404, "no ILM policy under the data stream lifecycle");
}

/// A config routing by namespace into a dataset of the test's own, with `retention`.
fn classes_config(
    tree: &Tree,
    es: &Es,
    dataset: &str,
    retention: &str,
) -> logferry::config::Config {
    let mut cfg = es_config(vec![tree.glob()], es, "default");
    let e = &mut cfg.output.elasticsearch;
    e.route_by_namespace = true;
    e.dataset = dataset.into();
    e.template_name = dataset.into();
    e.ilm_policy = dataset.into();
    cfg.retention = toml::from_str(retention).unwrap();
    cfg
}

/// Issue 19: the lines of a crashed run are replayed after a restart whose config moved
/// their namespace to another class. Their ids are looked up in the namespace's streams
/// of every class: nothing the old stream holds is indexed again in the new one.
#[test]
fn a_replay_into_another_class_is_looked_up_in_the_old_one() {
    let es = Es::new();
    let tree = Tree::new();
    let dataset = unique("moved");
    let shop = unique("shop");
    let c = tree.container(&shop, "web", "app");
    c.append(seq_lines(0, 500).as_bytes());
    let state = tree.state_dir();
    let agent = Agent::start(classes_config(&tree, &es, &dataset, ""), Some(&state));
    let old = format!("logs-{dataset}-{shop}");
    es.wait_count(&old, 500);
    agent.wait_stat("all acknowledged", |s| Stats::get(&s.events_delivered), 500);
    agent.stop();
    // As after a crash before the checkpoint was written: every line is replayed.
    let file = state.join("checkpoints.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    for f in v["files"].as_array_mut().unwrap() {
        f["offset"] = 0.into();
    }
    std::fs::write(&file, v.to_string()).unwrap();
    c.append(seq_lines(500, 100).as_bytes());
    let moved = format!("[[rules]]\nnamespaces = [{shop:?}]\nretention = \"7d\"");
    let agent = Agent::start(classes_config(&tree, &es, &dataset, &moved), Some(&state));
    let new = format!("logs-{dataset}.r7d-{shop}");
    es.wait_count(&new, 100);
    agent.wait_stat("all acknowledged", |s| Stats::get(&s.events_delivered), 600);
    std::thread::sleep(Duration::from_millis(300));
    let summary = agent.stop();
    let mut all = seqs(&es.docs(&old));
    all.extend(seqs(&es.docs(&new)));
    assert_exactly_once(&all, 600);
    assert_eq!(es.count(&new), 100, "only the new lines in the new class");
    assert_eq!(Stats::get(&summary.stats.es_replays_present), 500);
}

/// Issue 19: requests carrying lines of several classes, with items and requests refused
/// at random: each line lands once, in its class's stream.
#[test]
fn rejected_items_of_several_classes_land_once_in_their_streams() {
    let es = Es::new();
    let Some(server) = es.in_tree() else {
        return eprintln!("skipped: needs fault injection");
    };
    server.faults(|f| {
        f.item_429_ratio = 0.3;
        f.request_fail_ratio = 0.2;
    });
    let tree = Tree::new();
    let dataset = unique("retries");
    let namespaces = ["ci-a", "shop", "pay"];
    for (i, ns) in namespaces.iter().enumerate() {
        tree.container(ns, "p", "app")
            .append(seq_lines(i as u64 * 1000, 1000).as_bytes());
    }
    let retention = "[[rules]]\nnamespaces = [\"ci-*\"]\nretention = \"7d\"\n[[rules]]\nnamespaces = [\"pay\"]\nretention = \"365d\"";
    let mut cfg = classes_config(&tree, &es, &dataset, retention);
    cfg.output.elasticsearch.batch_max_events = 200;
    let agent = Agent::start(cfg, Some(&tree.state_dir()));
    let streams = [
        format!("logs-{dataset}.r7d-ci_a"),
        format!("logs-{dataset}-shop"),
        format!("logs-{dataset}.r365d-pay"),
    ];
    for (i, stream) in streams.iter().enumerate() {
        es.wait_count(stream, 1000);
        let got: Vec<u64> = seqs(&es.docs(stream))
            .into_iter()
            .map(|s| s - i as u64 * 1000)
            .collect();
        assert_exactly_once(&got, 1000);
    }
    let summary = agent.stop();
    assert!(Stats::get(&summary.stats.es_items_retried) > 0);
    assert_eq!(Stats::get(&summary.stats.es_dead_lettered), 0);
}

#[test]
fn routing_by_namespace_and_the_plain_index_mode() {
    let es = Es::new();
    let tree = Tree::new();
    let (a, b) = (unique("nsa"), unique("nsb"));
    tree.container(&a, "p1", "app")
        .append(seq_lines(0, 10).as_bytes());
    tree.container(&b, "p2", "app")
        .append(seq_lines(10, 5).as_bytes());
    let mut cfg = es_config(vec![tree.glob()], &es, "default");
    cfg.output.elasticsearch.route_by_namespace = true;
    let agent = Agent::start(cfg, Some(&tree.state_dir()));
    es.wait_count(&stream(&a), 10);
    es.wait_count(&stream(&b), 5);
    agent.stop();
    assert_eq!(
        es.docs(&stream(&b))[0]["data_stream"]["namespace"],
        b.as_str()
    );

    // Daily indices named from each line's date, for clusters without data streams.
    let tree = Tree::new();
    tree.container("ns", "p", "app")
        .append(seq_lines(0, 3).as_bytes());
    let prefix = unique("plain");
    let mut cfg = es_config(vec![tree.glob()], &es, "default");
    let e = &mut cfg.output.elasticsearch;
    e.mode = logferry::config::IndexMode::Index;
    e.index = format!("{prefix}-%Y.%m.%d");
    e.template_name = prefix.clone();
    e.ilm_policy = prefix.clone();
    let agent = Agent::start(cfg, Some(&tree.state_dir()));
    // `cri()` writes 2026-11-30 timestamps.
    es.wait_count(&format!("{prefix}-2026.11.30"), 3);
    agent.stop();
    let (_, t) = es.call("GET", &format!("/_index_template/{prefix}"), None);
    let t = &t["index_templates"][0]["index_template"];
    assert_eq!(t["index_patterns"][0], format!("{prefix}-*"));
    assert!(t.get("data_stream").is_none());
    let (_, p) = es.call("GET", &format!("/_ilm/policy/{prefix}"), None);
    assert!(
        p[&prefix]["policy"]["phases"].get("hot").is_none(),
        "no rollover for daily indices"
    );
    if let Some(s) = es.in_tree() {
        assert_eq!(
            s.with(|s| s.is_data_stream(&format!("{prefix}-2026.11.30"))),
            Some(false)
        );
    }
}

#[test]
fn refused_credentials_are_retried_and_max_retries_dead_letters() {
    let es = Es::new();
    let Some(server) = es.in_tree() else {
        return eprintln!("skipped: needs fault injection");
    };
    // 401s, then the cluster accepts: nothing lost.
    server.faults(|f| {
        f.fail_requests = 4;
        f.request_status = 401;
    });
    let tree = Tree::new();
    let ns = unique("auth");
    tree.container("ns", "p", "app")
        .append(seq_lines(0, 20).as_bytes());
    let mut cfg = es_config(vec![tree.glob()], &es, &ns);
    cfg.output.elasticsearch.setup = false;
    let agent = Agent::start(cfg, Some(&tree.state_dir()));
    es.wait_count(&stream(&ns), 20);
    agent.stop();
    assert_eq!(server.with(|s| s.requests_failed), 4);

    // With max_retries, a cluster that keeps failing sends documents to the dead-letter file.
    server.faults(|f| {
        f.fail_requests = 1000;
        f.request_status = 503;
    });
    let tree = Tree::new();
    let c = tree.container("ns", "p", "app");
    c.append(seq_lines(0, 7).as_bytes());
    let mut cfg = es_config(vec![tree.glob()], &es, &unique("giveup"));
    cfg.output.elasticsearch.setup = false;
    cfg.output.elasticsearch.max_retries = 3;
    let agent = Agent::start(cfg, Some(&tree.state_dir()));
    agent.wait_stat("dead-lettered", |s| Stats::get(&s.es_dead_lettered), 7);
    agent.wait_stat("acknowledged", |s| Stats::get(&s.events_delivered), 7);
    let summary = agent.stop();
    assert_eq!(
        summary.committed[0].offset,
        std::fs::metadata(c.path()).unwrap().len()
    );

    // Without a state directory they go to a new private directory for the run.
    let tree = Tree::new();
    let ns = unique("nostate");
    tree.container("ns", "p", "app")
        .append(seq_lines(0, 5).as_bytes());
    let mut cfg = es_config(vec![tree.glob()], &es, &ns);
    cfg.output.elasticsearch.setup = false;
    cfg.output.elasticsearch.max_retries = 2;
    let agent = Agent::start(cfg, None);
    agent.wait_stat("dead-lettered", |s| Stats::get(&s.es_dead_lettered), 5);
    agent.stop();
    server.faults(|f| f.fail_requests = 0);
    let prefix = format!("logferry-dead-letter-{}-", std::process::id());
    let held: Vec<(std::path::PathBuf, String)> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .map(|f| (f.path(), std::fs::read_to_string(f.path()).unwrap()))
        .filter(|(_, text)| text.contains(&ns))
        .collect();
    assert_eq!(held.len(), 1, "{held:?}");
    let (file, text) = &held[0];
    assert_eq!(text.matches("seq=").count(), 5, "{text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(file), 0o600);
    assert_eq!(mode(file.parent().unwrap()), 0o700);
    assert!(file.starts_with(std::env::temp_dir()));
    std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
}

#[test]
fn the_byte_rate_cap_holds() {
    use logferry::config::ElasticsearchConfig;
    use logferry::sink::elasticsearch::client::BulkClient;
    let es = Es::new();
    let cfg = ElasticsearchConfig {
        endpoints: vec![es.url()],
        max_bytes_per_second: 32 * 1024,
        // The cap counts bytes as sent: uncompressed here, so that they are the body's.
        compression_level: 0,
        ..Default::default()
    };
    let client = BulkClient::new(&cfg).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let index = format!("logs-rate-{}", unique("b"));
    let started = std::time::Instant::now();
    for i in 0..3 {
        let doc = format!(
            "{{\"@timestamp\":\"2024-01-01T00:00:00Z\",\"message\":\"{}\"}}",
            "x".repeat(32 * 1024 - 100)
        );
        let body = format!("{{\"create\":{{\"_index\":\"{index}\",\"_id\":\"{i}\"}}}}\n{doc}\n");
        rt.block_on(client.bulk(body.as_bytes()));
    }
    // 32 KiB a second: three 32 KiB bodies cannot all be sent before 2 s (a lower bound only).
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(es.count(&index), 3);
}

#[test]
fn a_slow_cluster_fills_the_request_slots_and_that_is_counted() {
    let es = Es::new();
    let Some(server) = es.in_tree() else {
        return eprintln!("skipped: needs fault injection");
    };
    server.faults(|f| f.latency = Duration::from_millis(100));
    let tree = Tree::new();
    tree.container("ns", "slow", "app")
        .append(seq_lines(0, 2_000).as_bytes());
    let ns = unique("slow");
    let mut cfg = es_config(vec![tree.glob()], &es, &ns);
    cfg.output.elasticsearch.batch_max_events = 100;
    cfg.output.elasticsearch.max_in_flight = 1;
    let agent = Agent::start(cfg, None);
    es.wait_count(&stream(&ns), 2_000);
    let summary = agent.stop();
    assert!(Stats::get(&summary.stats.es_in_flight_full) > 0);
    assert_eq!(es.count(&stream(&ns)), 2_000);
}

/// What a replay asks before sending (issue 14): which ids the data stream holds in any of
/// its backing indices, also across a rollover and in more ids than one search takes.
#[test]
fn the_ids_a_stream_holds_are_found_in_every_backing_index() {
    use logferry::sink::elasticsearch::lookup::{present_ids, IDS_PER_LOOKUP};
    let es = Es::new();
    let ds = format!("logs-lookup-{}", unique("l"));
    let create = |ids: &[&str]| {
        let body: String = ids
            .iter()
            .map(|id| format!("{{\"create\":{{\"_index\":\"{ds}\",\"_id\":\"{id}\"}}}}\n{{\"@timestamp\":\"2024-01-01T00:00:00Z\"}}\n"))
            .collect();
        let (status, v) = es.bulk_raw(&body);
        assert_eq!((status, v["errors"].as_bool()), (200, Some(false)), "{v}");
    };
    create(&["a", "b"]);
    let (status, _) = es.call("POST", &format!("/{ds}/_rollover"), None);
    assert_eq!(status, 200);
    create(&["c"]);
    let mut asked: Vec<String> = (0..2 * IDS_PER_LOOKUP + 500)
        .map(|i| format!("x{i}"))
        .collect();
    asked.extend(["a", "c"].map(String::from));
    let transport = elasticsearch::http::transport::Transport::single_node(&es.url()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let timeout = Duration::from_secs(10);
    let found = rt
        .block_on(present_ids(&transport, &ds, &asked, timeout))
        .unwrap();
    let mut found: Vec<String> = found.into_iter().collect();
    found.sort();
    assert_eq!(found, ["a", "c"]);
    // A stream not made yet holds nothing.
    let none = rt
        .block_on(present_ids(
            &transport,
            &format!("{ds}-none"),
            &asked,
            timeout,
        ))
        .unwrap();
    assert!(none.is_empty());
}

/// Issue 14: the checkpoint lags what was delivered (a crash before it was written), and
/// the stream rolled over meanwhile. The replay after the restart goes to a new backing
/// index, where its ids are unknown: it is looked up first, and only the lines the stream
/// does not hold are sent.
#[test]
fn a_replay_after_a_rollover_is_looked_up_and_not_indexed_twice() {
    let es = Es::new();
    let tree = Tree::new();
    let ns = unique("replay");
    let c = tree.container("shop", "replay", "app");
    c.append(seq_lines(0, 500).as_bytes());
    let state = tree.state_dir();
    let agent = Agent::start(es_config(vec![tree.glob()], &es, &ns), Some(&state));
    es.wait_count(&stream(&ns), 500);
    agent.wait_stat("all acknowledged", |s| Stats::get(&s.events_delivered), 500);
    agent.stop();
    // As after a crash before the checkpoint was written: every line is replayed.
    let file = state.join("checkpoints.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    for f in v["files"].as_array_mut().unwrap() {
        f["offset"] = 0.into();
    }
    std::fs::write(&file, v.to_string()).unwrap();
    let (status, r) = es.call("POST", &format!("/{}/_rollover", stream(&ns)), None);
    assert_eq!(status, 200, "{r}");
    c.append(seq_lines(500, 100).as_bytes());
    let agent = Agent::start(es_config(vec![tree.glob()], &es, &ns), Some(&state));
    es.wait_count(&stream(&ns), 600);
    agent.wait_stat("all acknowledged", |s| Stats::get(&s.events_delivered), 600);
    std::thread::sleep(Duration::from_millis(300));
    let summary = agent.stop();
    assert_exactly_once(&seqs(&es.docs(&stream(&ns))), 600);
    let st = &summary.stats;
    assert_eq!(
        Stats::get(&st.es_replays_checked),
        600,
        "all the file held at the restart"
    );
    assert_eq!(Stats::get(&st.es_replays_present), 500);
    assert_eq!(Stats::get(&st.es_replays_unchecked), 0);
}

/// Issue 18: an earlier build made every id a hash. Its checkpoint (no `ids`) says it
/// committed 100 lines and may have sent 300; it sent them. After the upgrade that file's
/// replay and its new lines keep the hashed ids (so the replay is found, not indexed again),
/// while a file the earlier build never saw gets ids from its offsets.
#[test]
fn a_file_of_an_earlier_build_keeps_its_hashed_ids_across_the_upgrade() {
    use logferry::encode::doc_id::FileIds;
    use logferry::event::{FileIdentity, IdScheme};
    use std::os::unix::fs::MetadataExt;
    let es = Es::new();
    let tree = Tree::new();
    let ns = unique("upgrade");
    let c = tree.container("shop", "old", "app");
    let lines: Vec<String> = (0..500).map(|i| seq_lines(i, 1)).collect();
    c.append(lines.concat().as_bytes());
    let start = |n: usize| -> u64 { lines[..n].iter().map(|l| l.len() as u64).sum() };
    let meta = std::fs::metadata(c.path()).unwrap();
    let fingerprint =
        logferry::source::fingerprint::fingerprint(&std::fs::File::open(c.path()).unwrap())
            .unwrap()
            .unwrap();
    let identity = FileIdentity {
        dev: meta.dev(),
        inode: meta.ino(),
        fingerprint,
    };
    let hashed = |n: usize| {
        String::from_utf8(
            FileIds::new(&identity, IdScheme::Hashed)
                .id(start(n))
                .to_vec(),
        )
        .unwrap()
    };
    // What the earlier build sent: lines 0..300, with their hashed ids.
    let body: String = (0..300)
        .map(|i| {
            format!(
                "{{\"create\":{{\"_index\":\"{}\",\"_id\":\"{}\"}}}}\n{}\n",
                stream(&ns),
                hashed(i),
                json!({"@timestamp": "2026-12-05T00:00:00Z", "message": seq_msg(i as u64)})
            )
        })
        .collect();
    let (status, v) = es.bulk_raw(&body);
    assert_eq!((status, v["errors"].as_bool()), (200, Some(false)), "{v}");
    let state = tree.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    let legacy = json!({"version": 1, "files": [{
        "dev": identity.dev, "inode": identity.inode,
        "fingerprint": format!("{fingerprint:016x}"),
        "path": c.link, "real_path": c.path(),
        "offset": start(100), "reserved": start(300),
    }]});
    std::fs::write(state.join("checkpoints.json"), legacy.to_string()).unwrap();
    let fresh = tree.container("shop", "new", "app");
    fresh.append(seq_lines(1000, 50).as_bytes());

    let agent = Agent::start(es_config(vec![tree.glob()], &es, &ns), Some(&state));
    es.wait_count(&stream(&ns), 550);
    agent.wait_stat("all acknowledged", |s| Stats::get(&s.events_delivered), 450);
    std::thread::sleep(Duration::from_millis(300));
    let summary = agent.stop();
    es.call("POST", &format!("/{}/_refresh", stream(&ns)), None);
    let (_, v) = es.call(
        "POST",
        &format!("/{}/_search", stream(&ns)),
        Some(json!({"size": 10000, "query": {"match_all": {}}})),
    );
    let hits = v["hits"]["hits"].as_array().unwrap();
    let got: Vec<(u64, String)> = hits
        .iter()
        .map(|h| {
            let seq = seqs(std::slice::from_ref(&h["_source"]))[0];
            (seq, h["_id"].as_str().unwrap().to_string())
        })
        .collect();
    let all: Vec<u64> = got.iter().map(|(s, _)| *s).filter(|s| *s < 1000).collect();
    assert_exactly_once(&all, 500);
    for (seq, id) in &got {
        if *seq < 1000 {
            assert_eq!(*id, hashed(*seq as usize), "line {seq} of the old file");
        } else {
            // The new file's ids are its seed, then its offset: one prefix for them all.
            assert_eq!(
                id[..15],
                got.iter().find(|(s, _)| *s >= 1000).unwrap().1[..15]
            );
        }
    }
    assert_eq!(got.iter().filter(|(s, _)| *s >= 1000).count(), 50);
    assert_eq!(Stats::get(&summary.stats.es_replays_present), 200);
    let written = std::fs::read_to_string(state.join("checkpoints.json")).unwrap();
    let v: Value = serde_json::from_str(&written).unwrap();
    let schemes: Vec<(u64, &str)> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["inode"].as_u64().unwrap(), f["ids"].as_str().unwrap()))
        .collect();
    assert!(schemes.contains(&(identity.inode, "hashed")), "{written}");
    assert!(
        schemes.contains(&(std::fs::metadata(fresh.path()).unwrap().ino(), "offset")),
        "{written}"
    );
}

/// Issue 14: Elasticsearch indexes a request, the connection is cut before the answer, and
/// the stream rolls over before the retry. The retry looks the request's ids up first:
/// what landed is not sent again.
#[test]
fn a_request_indexed_but_unanswered_is_looked_up_before_it_goes_again() {
    indexed_then_unsure_then_rolled_over(0);
}

/// A gateway that gives up waiting (504) after the cluster indexed the request: the outcome
/// is unknown, like a cut connection, so the request is looked up before it goes again.
#[test]
fn a_gateway_timeout_after_indexing_is_looked_up_before_the_request_goes_again() {
    indexed_then_unsure_then_rolled_over(504);
}

/// One request indexed, then its connection cut (`status` 0) or answered `status`, then the
/// stream rolled over: every line indexed once.
fn indexed_then_unsure_then_rolled_over(status: u16) {
    let es = Es::new();
    let Some(server) = es.in_tree() else {
        return; // The fault is the in-tree server's.
    };
    server.faults(|f| {
        f.drop_after_apply = 1;
        f.rollover_on_drop = true;
        f.status_after_apply = status;
    });
    let tree = Tree::new();
    let ns = unique("cut");
    let c = tree.container("shop", "cut", "app");
    c.append(seq_lines(0, 300).as_bytes());
    let agent = Agent::start(es_config(vec![tree.glob()], &es, &ns), None);
    agent.wait_stat("all acknowledged", |s| Stats::get(&s.events_delivered), 300);
    std::thread::sleep(Duration::from_millis(300));
    let summary = agent.stop();
    assert_exactly_once(&seqs(&es.docs(&stream(&ns))), 300);
    let (failed, streams) = server.with(|s| (s.requests_failed, s.data_streams().len()));
    assert_eq!(
        (failed, streams),
        (1, 1),
        "one request cut, its stream rolled over"
    );
    let st = &summary.stats;
    assert!(
        Stats::get(&st.es_replays_present) > 0,
        "the cut request had landed"
    );
    assert_eq!(
        Stats::get(&st.es_replays_present),
        Stats::get(&st.es_replays_checked)
    );
}

/// A cluster that takes bulk requests but refuses or never answers searches: the lookup of
/// an unanswered request is given up after eight tries, and the request is sent unchecked,
/// counted, rather than held forever.
#[test]
fn a_lookup_the_cluster_refuses_or_never_answers_sends_unchecked_and_counts() {
    let es = Es::new();
    let Some(server) = es.in_tree() else {
        return; // The faults are the in-tree server's.
    };
    for (status, latency) in [(403, 0), (429, 0), (0, 800)] {
        server.faults(|f| {
            f.drop_after_apply = 1;
            f.search_status = status;
            f.search_latency = Duration::from_millis(latency);
        });
        let tree = Tree::new();
        let ns = unique("nosearch");
        let c = tree.container("shop", "nosearch", "app");
        c.append(seq_lines(0, 200).as_bytes());
        let mut cfg = es_config(vec![tree.glob()], &es, &ns);
        cfg.output.elasticsearch.request_timeout = Duration::from_millis(300);
        let agent = Agent::start(cfg, None);
        agent.wait_stat("all acknowledged", |s| Stats::get(&s.events_delivered), 200);
        let summary = agent.stop();
        server.faults(|f| {
            f.search_status = 0;
            f.search_latency = Duration::ZERO;
        });
        // No rollover came between: the unchecked resend is answered 409.
        assert_exactly_once(&seqs(&es.docs(&stream(&ns))), 200);
        let st = &summary.stats;
        assert_eq!(
            (
                Stats::get(&st.es_replays_unchecked),
                Stats::get(&st.es_replays_checked)
            ),
            (200, 0),
            "search status {status}, latency {latency} ms"
        );
    }
}

/// A request that never left (the connection was refused) has a known outcome: it goes to
/// the next endpoint at once, with no lookup.
#[test]
fn a_refused_connection_is_tried_on_the_next_endpoint_without_a_lookup() {
    let es = Es::new();
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let tree = Tree::new();
    let ns = unique("refused");
    let c = tree.container("shop", "refused", "app");
    let mut cfg = es_config(vec![tree.glob()], &es, &ns);
    cfg.output.elasticsearch.endpoints.insert(0, refused);
    let agent = Agent::start(cfg, None);
    for i in 0..5 {
        c.append(seq_lines(i * 100, 100).as_bytes());
        std::thread::sleep(Duration::from_millis(150));
    }
    agent.wait_stat("all acknowledged", |s| Stats::get(&s.events_delivered), 500);
    let summary = agent.stop();
    assert_exactly_once(&seqs(&es.docs(&stream(&ns))), 500);
    let st = &summary.stats;
    assert!(
        Stats::get(&st.es_outcome_unreachable) > 0,
        "the refusing endpoint was tried"
    );
    assert_eq!(Stats::get(&st.es_replays_checked), 0, "nothing to look up");
}

/// Issue 15: the sample request flow (three services, JSON and logfmt, shared trace and
/// user ids) through the agent into the test server: every document carries the ECS fields
/// its line holds, typed as the template maps them.
#[test]
fn the_sample_flow_arrives_with_its_ecs_fields_lifted() {
    let es = Es::new();
    let ns = unique("flow");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/var/log/containers");
    let globs = ["frontend-*.log", "cart-*.log", "payments-*.log"]
        .map(|g| format!("{root}/{g}"))
        .to_vec();
    let agent = Agent::start(es_config(globs, &es, &ns), None);
    agent.wait_stat("all acknowledged", |s| Stats::get(&s.events_delivered), 10);
    agent.stop();
    let docs: Vec<Value> = es.docs(&stream(&ns));
    assert_eq!(docs.len(), 10);
    let t1 = "4bf92f3577b34da6a3ce929d0e0e4736";
    let t2 = "7c1e9b2d4a6f8e0c1b3d5f7a9c2e4b6d";
    // What each document must carry; a field not named must be absent.
    let want = [
        json!({"m": "request received", "trace": t1, "user": "u-1042", "req": "req-81f2", "method": "POST", "path": "/checkout"}),
        json!({"m": "request done", "trace": t1, "user": "u-1042", "req": "req-81f2", "method": "POST", "path": "/checkout", "status": 200, "ns": 1_420_000_000i64}),
        json!({"m": "reserving items", "trace": t1, "user": "u-1042", "req": "req-81f2"}),
        json!({"m": "items reserved", "trace": t1, "user": "u-1042", "req": "req-81f2", "method": "POST", "path": "/internal/reserve", "status": 200, "ns": 250_000_000}),
        json!({"m": "charging card", "trace": t1, "user": "u-1042", "req": "req-81f2"}),
        json!({"m": "card processor slow", "trace": t1, "user": "u-1042", "req": "req-81f2", "method": "POST", "path": "/v1/charges", "status": 200, "ns": 1_080_000_000}),
        json!({"m": "payment captured", "trace": t1, "user": "u-1042", "req": "req-81f2", "status": 201}),
        json!({"m": "request received", "trace": t2, "user": "u-2077", "req": "req-81f3", "method": "GET", "path": "/cart"}),
        json!({"m": "request done", "trace": t2, "user": "u-2077", "req": "req-81f3", "method": "GET", "path": "/cart", "status": 200, "ns": 90_000_000}),
        json!({"m": "cart read", "trace": t2, "user": "u-2077", "req": "req-81f3", "method": "GET", "path": "/internal/cart", "status": 200, "ns": 12_000_000}),
    ];
    for d in &docs {
        let w = want
            .iter()
            .find(|w| w["m"] == d["message"] && w["user"] == d["user"]["id"])
            .unwrap_or_else(|| panic!("unexpected document {d}"));
        let m = &w["m"];
        assert_eq!(d["trace"]["id"], w["trace"], "{m}");
        assert_eq!(d["transaction"]["id"], w["req"], "{m}");
        assert_eq!(d["http"]["request"]["method"], w["method"], "{m}");
        assert_eq!(d["url"]["path"], w["path"], "{m}");
        assert_eq!(d["http"]["response"]["status_code"], w["status"], "{m}");
        assert_eq!(d["event"]["duration"], w["ns"], "{m}");
        assert_eq!(d["kubernetes"]["namespace"], "shop");
        assert!(d["log"].get("flags").is_none(), "{d}");
    }
    let slow = docs
        .iter()
        .filter(|d| d["event"]["duration"].as_i64() > Some(1_000_000_000))
        .count();
    assert_eq!(slow, 2, "two requests over one second");
}
