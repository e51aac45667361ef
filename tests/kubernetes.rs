//! Pod metadata from the Kubernetes API (the in-tree API server), end to end through the
//! real kube client: labels and owners on every document, the races of new and deleted
//! pods, 410 Gone and outages, a flat request count, and exclusion.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::kube_server::{KubeServer, PodSpec};
use support::*;

const NODE: &str = "node-a";

fn pod<'a>(ns: &'a str, name: &'a str, uid: &'a str) -> PodSpec<'a> {
    PodSpec {
        namespace: ns,
        name,
        uid,
        node: NODE,
        containers: &["app"],
        labels: json!({ "app": "web", "app.kubernetes.io/name": "web-ui", "pod-template-hash": "7d4b9c5f8" }),
        annotations: json!({ "team": "payments" }),
        owner: Some(("ReplicaSet", "web-7d4b9c5f8")),
    }
}

fn kube_config(tree: &Tree, api: &KubeServer) -> logferry::config::Config {
    let mut cfg = test_config(vec![tree.glob()]);
    let k = &mut cfg.kubernetes;
    k.enabled = true;
    k.node_name = NODE.into();
    k.kubeconfig = Some(api.kubeconfig(tree.root.path()));
    k.metadata_wait = Duration::from_secs(5);
    k.annotations = vec!["team".into()];
    cfg
}

fn by_seq(docs: &[Value], seq: u64) -> &Value {
    docs.iter()
        .find(|d| seqs(std::slice::from_ref(d)) == [seq])
        .expect("document present")
}

#[test]
fn every_document_carries_its_pods_labels_owner_and_container() {
    let api = KubeServer::start();
    api.add_pod(pod(
        "shop",
        "web-7d4b9c5f8-aaaaa",
        "uid-web-7d4b9c5f8-aaaaa",
    ));
    let tree = Tree::new();
    let c = tree.container("shop", "web-7d4b9c5f8-aaaaa", "app");
    c.append(seq_lines(0, 20).as_bytes());
    let agent = Agent::start(kube_config(&tree, &api), None);
    let docs = agent.wait_until("20 documents", |d| d.len() >= 20);
    for d in &docs {
        let k = &d["kubernetes"];
        assert_eq!(k["labels"]["app"], "web");
        assert_eq!(k["labels"]["app.kubernetes.io/name"], "web-ui");
        assert_eq!(k["annotations"], json!({ "team": "payments" }));
        assert_eq!(k["deployment"]["name"], "web");
        assert_eq!(k["node"]["name"], NODE);
        assert_eq!(k["pod"]["ip"], "10.1.2.3");
        assert_eq!(d["container"]["id"], "uid-web-7d4b9c5f8-aaaaa-app-id");
        assert_eq!(d["container"]["runtime"], "containerd");
        assert_eq!(d["container"]["image"]["name"], "registry.example/app:1.0");
        assert!(d["log"].get("flags").is_none());
    }
    // A label changes: later lines carry the new value.
    api.modify_pod("uid-web-7d4b9c5f8-aaaaa", |p| {
        p["metadata"]["labels"]["app"] = json!("web-v2")
    });
    std::thread::sleep(Duration::from_millis(300));
    c.append(seq_lines(20, 1).as_bytes());
    let docs = agent.wait_until("the next line", |d| d.len() >= 21);
    assert_eq!(by_seq(&docs, 20)["kubernetes"]["labels"]["app"], "web-v2");
    agent.stop();
}

#[test]
fn a_pod_that_writes_before_the_watch_sees_it_still_gets_its_metadata() {
    let api = KubeServer::start();
    let tree = Tree::new();
    let mut cfg = kube_config(&tree, &api);
    // Found through inotify and read once their pod is known, without waiting for a rescan.
    cfg.source.rescan_interval = Duration::from_secs(3600);
    let agent = Agent::start(cfg, None);
    std::thread::sleep(Duration::from_millis(500));
    api.add_pod(pod(
        "shop",
        "known-7d4b9c5f8-zzzzz",
        "uid-known-7d4b9c5f8-zzzzz",
    ));
    let c = tree.container("shop", "fresh-7d4b9c5f8-bbbbb", "app");
    c.append(seq_lines(0, 5).as_bytes());
    tree.container("shop", "known-7d4b9c5f8-zzzzz", "app")
        .append(seq_lines(100, 3).as_bytes());
    // The known pod's lines are not held back by the unknown one's.
    let docs = agent.wait_until("the known pod's lines", |d| d.len() >= 3);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        seqs(&agent.docs()),
        vec![100, 101, 102],
        "held while the pod is unknown"
    );
    api.add_pod(pod(
        "shop",
        "fresh-7d4b9c5f8-bbbbb",
        "uid-fresh-7d4b9c5f8-bbbbb",
    ));
    let docs = agent.wait_until("5 more documents", |d| d.len() >= 8 && docs.len() == 3);
    assert!(docs
        .iter()
        .all(|d| d["kubernetes"]["labels"]["app"] == "web"));
    assert!(docs.iter().all(|d| d["log"].get("flags").is_none()));
    agent.stop();
}

#[test]
fn a_pod_never_seen_ships_after_the_wait_flagged() {
    let api = KubeServer::start();
    let tree = Tree::new();
    let mut cfg = kube_config(&tree, &api);
    cfg.kubernetes.metadata_wait = Duration::from_millis(500);
    // The only file waits: it is looked at again on its own, not at the next rescan.
    cfg.source.rescan_interval = Duration::from_secs(3600);
    tree.container("ghost", "nobody", "app")
        .append(seq_lines(0, 3).as_bytes());
    let agent = Agent::start(cfg, None);
    let docs = agent.wait_until("3 documents", |d| d.len() >= 3);
    for d in &docs {
        assert_eq!(
            d["kubernetes"]["pod"]["name"], "nobody",
            "names from the path"
        );
        assert!(d["log"]["flags"]
            .as_array()
            .unwrap()
            .contains(&json!("no_kube_metadata")));
    }
    agent.stop();
}

#[test]
fn a_pod_deleted_right_after_writing_is_still_enriched() {
    let api = KubeServer::start();
    api.add_pod(pod("batch", "job-28876540-ccccc", "uid-job-28876540-ccccc"));
    let tree = Tree::new();
    let agent = Agent::start(kube_config(&tree, &api), None);
    std::thread::sleep(Duration::from_millis(500));
    let c = tree.container("batch", "job-28876540-ccccc", "app");
    c.append(seq_lines(0, 10).as_bytes());
    api.delete_pod("uid-job-28876540-ccccc");
    let docs = agent.wait_until("10 documents", |d| d.len() >= 10);
    assert!(
        docs.iter()
            .all(|d| d["kubernetes"]["labels"]["app"] == "web"),
        "{}",
        docs[0]
    );
    agent.stop();
}

#[test]
fn a_410_and_an_outage_are_survived_with_the_cache_intact() {
    let api = KubeServer::start();
    api.add_pod(pod(
        "shop",
        "old-7d4b9c5f8-ddddd",
        "uid-old-7d4b9c5f8-ddddd",
    ));
    let tree = Tree::new();
    let old = tree.container("shop", "old-7d4b9c5f8-ddddd", "app");
    let agent = Agent::start(kube_config(&tree, &api), None);
    old.append(seq_lines(0, 1).as_bytes());
    agent.wait_until("first line", |d| d.len() == 1);
    let lists_before = api.with(|s| s.lists);

    // The history expires: the next watch gets 410 Gone and the client lists again.
    api.expire_history();
    api.add_pod(pod(
        "shop",
        "new-7d4b9c5f8-eeeee",
        "uid-new-7d4b9c5f8-eeeee",
    ));
    let new = tree.container("shop", "new-7d4b9c5f8-eeeee", "app");
    new.append(seq_lines(100, 1).as_bytes());
    let docs = agent.wait_until("the new pod's line", |d| d.len() == 2);
    assert_eq!(by_seq(&docs, 100)["kubernetes"]["labels"]["app"], "web");
    assert!(api.with(|s| s.lists) > lists_before, "relisted after 410");
    // The agent counts its relists as the server saw them.
    assert_eq!(
        logferry::stats::Stats::get(&agent.stats.kube_relists),
        api.with(|s| s.lists)
    );

    // The API server goes away: known pods are still enriched, and shipping goes on.
    api.set_down(true);
    old.append(seq_lines(1, 1).as_bytes());
    let docs = agent.wait_until("a line during the outage", |d| d.len() == 3);
    assert_eq!(by_seq(&docs, 1)["kubernetes"]["labels"]["app"], "web");
    api.set_down(false);
    agent.stop();
}

#[test]
fn requests_stay_flat_while_pods_churn_and_exclusion_skips_pods() {
    let api = KubeServer::start();
    let mut excluded = pod("shop", "noisy-7d4b9c5f8-fffff", "uid-noisy-7d4b9c5f8-fffff");
    excluded.annotations = json!({ "logferry.io/exclude": "true" });
    api.add_pod(excluded);
    let mut sidecar = pod("shop", "mixed-7d4b9c5f8-ggggg", "uid-mixed-7d4b9c5f8-ggggg");
    sidecar.containers = &["app", "envoy"];
    sidecar.annotations = json!({ "logferry.io/exclude-envoy": "true" });
    api.add_pod(sidecar);
    let tree = Tree::new();
    tree.container("shop", "noisy-7d4b9c5f8-fffff", "app")
        .append(seq_lines(0, 5).as_bytes());
    tree.container("shop", "mixed-7d4b9c5f8-ggggg", "envoy")
        .append(seq_lines(10, 5).as_bytes());
    tree.container("shop", "mixed-7d4b9c5f8-ggggg", "app")
        .append(seq_lines(20, 5).as_bytes());
    tree.container("kube-system", "proxy", "app")
        .append(seq_lines(30, 5).as_bytes());
    let mut cfg = kube_config(&tree, &api);
    cfg.kubernetes.exclude_namespaces = vec!["kube-system".into()];
    let agent = Agent::start(cfg, None);
    agent.wait_until("the included container", |d| d.len() >= 5);
    let requests = api.with(|s| s.requests());
    for i in 0..50 {
        let (name, uid) = (format!("churn-{i}"), format!("uid-churn-{i}"));
        api.add_pod(pod("shop", &name, &uid));
        api.delete_pod(&uid);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let docs = agent.docs();
    let mut got = seqs(&docs);
    got.sort();
    assert_eq!(
        got,
        (20..25).collect::<Vec<_>>(),
        "only the included container is read"
    );
    assert!(
        api.with(|s| s.requests()) <= requests + 2,
        "no request per pod: {} → {}",
        requests,
        api.with(|s| s.requests())
    );
    assert_eq!(api.with(|s| s.gets), 0);
    // What the agent reports as sent is what the server received (a watch may be on its way).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while logferry::stats::Stats::get(&agent.stats.kube_api_requests) != api.with(|s| s.requests())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "agent counted {}, server saw {}",
            logferry::stats::Stats::get(&agent.stats.kube_api_requests),
            api.with(|s| s.requests())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let summary = agent.stop();
    assert_eq!(
        logferry::stats::Stats::get(&summary.stats.files_excluded),
        3
    );
}

#[test]
fn namespace_labels_and_label_selectors() {
    let api = KubeServer::start();
    api.add_namespace(
        "shop",
        json!({ "env": "prod", "team.example.com/owner": "payments" }),
    );
    api.add_pod(pod(
        "shop",
        "web-7d4b9c5f8-hhhhh",
        "uid-web-7d4b9c5f8-hhhhh",
    ));
    let mut canary = pod(
        "shop",
        "canary-7d4b9c5f8-iiiii",
        "uid-canary-7d4b9c5f8-iiiii",
    );
    canary.labels = json!({ "app": "web", "track": "canary" });
    api.add_pod(canary);
    let tree = Tree::new();
    tree.container("shop", "web-7d4b9c5f8-hhhhh", "app")
        .append(seq_lines(0, 2).as_bytes());
    tree.container("shop", "canary-7d4b9c5f8-iiiii", "app")
        .append(seq_lines(10, 2).as_bytes());
    let mut cfg = kube_config(&tree, &api);
    cfg.kubernetes.namespace_labels = true;
    cfg.kubernetes.dedot_keys = true;
    cfg.kubernetes.exclude_labels = vec!["track=canary".into()];
    let agent = Agent::start(cfg, None);
    let docs = agent.wait_until("2 documents", |d| d.len() >= 2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        seqs(&agent.docs()),
        vec![0, 1],
        "the canary pod is excluded by its label"
    );
    let k = &docs[0]["kubernetes"];
    assert_eq!(k["namespace_labels"]["env"], "prod");
    assert_eq!(
        k["namespace_labels"]["team_example_com/owner"], "payments",
        "dedotted"
    );
    assert_eq!(k["labels"]["app_kubernetes_io/name"], "web-ui");
    agent.stop();
}

/// Issue 19: a pod's `logferry.io/retention` annotation, else its namespace's, picks the
/// class (rounded up to one); one outside the bounds is refused and counted, and the rules
/// decide, by namespace name or label. The namespaces are watched for it without their
/// labels going into documents.
#[test]
fn retention_annotations_of_pods_and_namespaces_pick_the_class() {
    let api = KubeServer::start();
    let annotated = |v: &str| json!({ "logferry.io/retention": v });
    api.add_namespace_annotated("audit", json!({ "env": "prod" }), annotated("365d"));
    api.add_namespace("shop", json!({}));
    api.add_namespace("ci-1", json!({}));
    api.add_namespace("ledger", json!({ "compliance": "audit" }));
    let tree = Tree::new();
    // (namespace, pod, its annotation, the dataset its lines must get)
    let cases = [
        ("shop", "short", Some("20d"), "kubernetes.r30d"),
        ("audit", "keeper", None, "kubernetes.r365d"),
        ("audit", "brief", Some("30d"), "kubernetes.r30d"),
        ("ci-1", "greedy", Some("3650d"), "kubernetes.r7d"),
        ("shop", "plain", None, "kubernetes"),
        ("ledger", "books", None, "kubernetes.r365d"),
    ];
    for (i, (ns, name, annotation, _)) in cases.iter().enumerate() {
        let uid = format!("uid-{name}");
        let mut p = pod(ns, name, &uid);
        p.annotations = annotation.map_or(json!({}), annotated);
        api.add_pod(p);
        tree.container(ns, name, "app")
            .append(seq_lines(i as u64, 1).as_bytes());
    }
    let mut cfg = kube_config(&tree, &api);
    cfg.output.stdout.format = logferry::config::StdoutFormat::Bulk;
    cfg.retention = toml::from_str(
        "classes = [\"30d\", \"365d\"]\n[[rules]]\nnamespaces = [\"ci-*\"]\nretention = \"7d\"\n[[rules]]\nnamespace_labels = [\"compliance=audit\"]\nretention = \"365d\"",
    )
    .unwrap();
    let agent = Agent::start(cfg, None);
    let docs = agent.wait_for(cases.len());
    for (i, (ns, name, _, dataset)) in cases.iter().enumerate() {
        let d = by_seq(&docs, i as u64);
        assert_eq!(d["data_stream"]["dataset"], *dataset, "{ns}/{name}");
        assert!(
            d["kubernetes"].get("namespace_labels").is_none(),
            "watched for the class only"
        );
    }
    let summary = agent.stop();
    assert_eq!(
        logferry::stats::Stats::get(&summary.stats.retention_refused),
        1,
        "the greedy pod's annotation"
    );
}

/// Issue 19: a retention annotation that does not parse is warned about with its pod and
/// value, and its lines ship in the class the rules give (here the default).
#[test]
fn a_refused_retention_annotation_is_warned_about_with_its_pod() {
    let api = KubeServer::start();
    api.add_namespace("shop", json!({}));
    let mut p = pod("shop", "greedy-1", "uid-greedy-1");
    p.annotations = json!({ "logferry.io/retention": "forever" });
    api.add_pod(p);
    let tree = Tree::new();
    tree.container("shop", "greedy-1", "app")
        .append(seq_lines(0, 3).as_bytes());
    let config = tree.root.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[kubernetes]\nenabled = true\nnode_name = \"{NODE}\"\nkubeconfig = \"{}\"\n[retention]\nclasses = [\"30d\"]\n",
            api.kubeconfig(tree.root.path()).display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_logferry"))
        .args([
            "debug",
            "--once",
            "--from-beginning",
            "--format",
            "bulk",
            "--config",
        ])
        .arg(&config)
        .arg(tree.glob())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("retention annotation refused")
            && stderr.contains("greedy-1")
            && stderr.contains("forever"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.matches("\"dataset\":\"kubernetes\"").count(),
        3,
        "{stdout}"
    );
}

#[test]
fn a_file_deleted_while_waiting_for_its_pod_is_still_read() {
    let api = KubeServer::start();
    let tree = Tree::new();
    let agent = Agent::start(kube_config(&tree, &api), None);
    std::thread::sleep(Duration::from_millis(300));
    let c = tree.container("batch", "blink-28876541-jjjjj", "app");
    c.append(seq_lines(0, 4).as_bytes());
    std::thread::sleep(Duration::from_millis(400));
    std::fs::remove_file(&c.link).unwrap();
    std::fs::remove_file(c.path()).unwrap();
    api.add_pod(pod(
        "batch",
        "blink-28876541-jjjjj",
        "uid-blink-28876541-jjjjj",
    ));
    let docs = agent.wait_until("the deleted file's lines", |d| d.len() >= 4);
    assert_eq!(seqs(&docs), vec![0, 1, 2, 3]);
    assert!(docs
        .iter()
        .all(|d| d["kubernetes"]["labels"]["app"] == "web"));
    agent.stop();
}

#[test]
fn a_backlog_is_not_read_before_its_pod_is_known_and_then_all_of_it_gets_metadata() {
    // A start with a large backlog: the file waits unread for its pod (nothing buffered),
    // and none of it is shipped without metadata while the pod is still coming.
    let api = KubeServer::start();
    let tree = Tree::new();
    let n = 60_000u64;
    tree.container("shop", "busy-7d4b9c5f8-ccccc", "app")
        .append(seq_lines(0, n).as_bytes());
    let agent = Agent::start(kube_config(&tree, &api), None);
    std::thread::sleep(Duration::from_millis(2000));
    let early = agent.docs().len();
    let taken = logferry::stats::Stats::get(&agent.stats.events);
    assert_eq!(taken, 0, "events read ahead of the pod's metadata");
    api.add_pod(pod(
        "shop",
        "busy-7d4b9c5f8-ccccc",
        "uid-busy-7d4b9c5f8-ccccc",
    ));
    let docs = agent.wait_for(n as usize);
    assert_eq!(early, 0, "nothing shipped before the pod was known");
    assert_exactly_once(&seqs(&docs), n);
    assert!(docs
        .iter()
        .all(|d| d["kubernetes"]["labels"]["app"] == "web"));
    assert!(docs.iter().all(|d| d["log"].get("flags").is_none()));
    assert_eq!(
        agent
            .stats
            .kube_metadata_missing
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    agent.stop();
}

#[test]
fn a_file_whose_pod_is_gone_at_restart_is_read_once() {
    let api = KubeServer::start();
    api.add_pod(pod(
        "batch",
        "job-7d4b9c5f8-jjjjj",
        "uid-job-7d4b9c5f8-jjjjj",
    ));
    let tree = Tree::new();
    let c = tree.container("batch", "job-7d4b9c5f8-jjjjj", "app");
    c.append(seq_lines(0, 100).as_bytes());
    let state = tree.state_dir();
    let mut cfg = kube_config(&tree, &api);
    cfg.kubernetes.metadata_wait = Duration::from_millis(500);
    let agent = Agent::start(cfg.clone(), Some(&state));
    agent.wait_for(100);
    agent.stop();
    // Down meanwhile: the pod is deleted, its file keeps 50 more lines.
    api.delete_pod("uid-job-7d4b9c5f8-jjjjj");
    c.append(seq_lines(100, 50).as_bytes());
    let agent = Agent::start(cfg, Some(&state));
    agent.wait_for(50);
    // Long enough for the wait for its pod to end and a second reading to show.
    std::thread::sleep(Duration::from_millis(1500));
    let docs = agent.docs();
    let summary = agent.stop();
    let mut got = seqs(&docs);
    got.sort();
    assert_eq!(got, (100..150).collect::<Vec<_>>(), "each line once");
    assert_eq!(logferry::stats::Stats::get(&summary.stats.files_opened), 1);
    assert!(docs
        .iter()
        .all(|d| d["log"]["flags"] == serde_json::json!(["no_kube_metadata"])));
}

#[test]
fn a_namespace_excluded_at_restart_is_not_read_on() {
    let api = KubeServer::start();
    api.add_pod(pod(
        "noisy",
        "web-7d4b9c5f8-kkkkk",
        "uid-web-7d4b9c5f8-kkkkk",
    ));
    let tree = Tree::new();
    let c = tree.container("noisy", "web-7d4b9c5f8-kkkkk", "app");
    c.append(seq_lines(0, 10).as_bytes());
    let state = tree.state_dir();
    let mut cfg = kube_config(&tree, &api);
    let agent = Agent::start(cfg.clone(), Some(&state));
    agent.wait_for(10);
    agent.stop();
    // Restarted (or reloaded) with the namespace excluded: its file had a checkpoint.
    cfg.kubernetes.exclude_namespaces = vec!["noisy".into()];
    c.append(seq_lines(10, 10).as_bytes());
    let agent = Agent::start(cfg, Some(&state));
    agent.wait_stat(
        "the exclusion",
        |s| logferry::stats::Stats::get(&s.files_excluded),
        1,
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(agent.docs().is_empty(), "an excluded file was read");
    agent.stop();
}
