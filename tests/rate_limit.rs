//! Per-container rate limits: a noisy container is held to its limit, the lines over it
//! are counted and summarized in a document of their own, other containers are untouched,
//! and checkpoints still reach the end of every file.

mod support;

use logferry::stats::Stats;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::kube_server::{KubeServer, PodSpec};
use support::*;

fn is_summary(d: &Value) -> bool {
    d["log"]["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "rate_limit_summary"))
}

/// The N of "logferry dropped N lines from …".
fn dropped_in(d: &Value) -> u64 {
    let m = d["message"].as_str().unwrap();
    let rest = m.strip_prefix("logferry dropped ").expect(m);
    rest.split(' ').next().unwrap().parse().unwrap()
}

fn of_pod<'a>(docs: &'a [Value], pod: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|d| d["kubernetes"]["pod"]["name"] == pod)
        .collect()
}

/// Waits until every line of `pod` is either indexed or counted in a summary.
fn wait_all_accounted(agent: &Agent, pod: &'static str, lines: u64) -> Vec<Value> {
    agent.wait_until("every line shipped or summarized", |docs| {
        let d: Vec<Value> = docs.to_vec();
        let mine = of_pod(&d, pod);
        let passed = mine.iter().filter(|d| !is_summary(d)).count() as u64;
        let summarized: u64 = mine
            .iter()
            .filter(|d| is_summary(d))
            .map(|d| dropped_in(d))
            .sum();
        passed + summarized == lines
    })
}

#[test]
fn a_noisy_container_is_held_to_its_limit_and_the_loss_is_indexed() {
    let tree = Tree::new();
    let noisy = tree.container("shop", "noisy-1", "app");
    let quiet = tree.container("shop", "quiet-1", "app");
    let total = 5000;
    noisy.append(seq_lines(0, total).as_bytes());
    quiet.append(seq_lines(100_000, 30).as_bytes());
    let mut cfg = test_config(vec![tree.glob()]);
    cfg.rate_limit.lines_per_second = 100;
    cfg.rate_limit.burst = 200;
    cfg.rate_limit.summary_interval = Duration::from_millis(500);
    let started = Instant::now();
    let agent = Agent::start(cfg, Some(&tree.state_dir()));
    wait_all_accounted(&agent, "noisy-1", total);
    let elapsed = started.elapsed().as_secs_f64();
    let docs = agent.wait_until("the quiet container's lines", |d| {
        of_pod(d, "quiet-1").len() == 30
    });
    let stats = agent.stats.clone();
    let summary = agent.stop();

    let noisy_docs = of_pod(&docs, "noisy-1");
    let passed: Vec<u64> = seqs(
        &noisy_docs
            .iter()
            .filter(|d| !is_summary(d))
            .map(|d| (*d).clone())
            .collect::<Vec<_>>(),
    );
    // The burst, then 100 a second for as long as the run took.
    let most = 200 + (100.0 * elapsed).ceil() as usize + 1;
    assert!(
        (200..=most).contains(&passed.len()),
        "{} passed in {elapsed:.2}s",
        passed.len()
    );
    let summaries: Vec<&&Value> = noisy_docs.iter().filter(|d| is_summary(d)).collect();
    assert!(!summaries.is_empty());
    let summarized: u64 = summaries.iter().map(|d| dropped_in(d)).sum();
    assert_eq!(summarized, Stats::get(&stats.lines_rate_limited));
    assert_eq!(
        summaries.len() as u64,
        Stats::get(&stats.rate_limit_summaries)
    );
    let s = summaries[0];
    assert_eq!(
        s["message"],
        format!(
            "logferry dropped {} lines from noisy-1/app over its limit of 100/s",
            dropped_in(s)
        )
    );
    // Indexed like a log line of the container, with its metadata.
    assert_eq!(s["kubernetes"]["namespace"], "shop");
    assert_eq!(s["kubernetes"]["container"]["name"], "app");
    // The quiet container lost nothing.
    let quiet_seqs = seqs(
        &of_pod(&docs, "quiet-1")
            .into_iter()
            .cloned()
            .collect::<Vec<_>>(),
    );
    assert_eq!(quiet_seqs, (100_000..100_030).collect::<Vec<_>>());
    // Dropped lines were acknowledged: both files are committed to their end.
    for c in [&noisy, &quiet] {
        let size = std::fs::metadata(c.path()).unwrap().len();
        let e = summary
            .committed
            .iter()
            .find(|e| std::fs::canonicalize(&e.path).ok() == std::fs::canonicalize(c.path()).ok())
            .unwrap_or_else(|| panic!("no checkpoint for {}", c.path().display()));
        assert_eq!(e.offset, size, "{}", c.path().display());
    }
}

fn annotated<'a>(name: &'a str, uid: &'a str, limit: Option<&str>) -> PodSpec<'a> {
    PodSpec {
        namespace: "shop",
        name,
        uid,
        node: "node-a",
        containers: &["app"],
        labels: json!({ "app": name }),
        annotations: match limit {
            Some(l) => json!({ "logferry.io/rate-limit": l }),
            None => json!({}),
        },
        owner: None,
    }
}

#[test]
fn a_pod_annotation_sets_its_own_limit_when_the_default_is_off() {
    let api = KubeServer::start();
    api.add_pod(annotated("chatty-1", "uid-chatty-1", Some("50/s")));
    api.add_pod(annotated("plain-1", "uid-plain-1", None));
    api.add_pod(annotated("typo-1", "uid-typo-1", Some("lots")));
    let tree = Tree::new();
    let lines = 2000;
    for pod in ["chatty-1", "plain-1", "typo-1"] {
        let c = tree.container("shop", pod, "app");
        c.append(seq_lines(0, lines).as_bytes());
    }
    let mut cfg = test_config(vec![tree.glob()]);
    let k = &mut cfg.kubernetes;
    k.enabled = true;
    k.node_name = "node-a".into();
    k.kubeconfig = Some(api.kubeconfig(tree.root.path()));
    k.metadata_wait = Duration::from_secs(5);
    cfg.rate_limit.summary_interval = Duration::from_millis(300);
    let started = Instant::now();
    let agent = Agent::start(cfg, None);
    wait_all_accounted(&agent, "chatty-1", lines);
    let elapsed = started.elapsed().as_secs_f64();
    let docs = agent.wait_until("the other pods' lines", |d| {
        of_pod(d, "plain-1").len() == lines as usize && of_pod(d, "typo-1").len() == lines as usize
    });
    agent.stop();
    let chatty = of_pod(&docs, "chatty-1");
    let passed = chatty.iter().filter(|d| !is_summary(d)).count();
    assert!(
        (50..=50 + (50.0 * elapsed).ceil() as usize + 1).contains(&passed),
        "{passed} in {elapsed:.2}s"
    );
    assert!(chatty.iter().filter(|d| is_summary(d)).all(|d| d["message"]
        .as_str()
        .unwrap()
        .ends_with("over its limit of 50/s")));
    // No annotation, or one that does not parse: the default (off) applies.
    for pod in ["plain-1", "typo-1"] {
        assert!(of_pod(&docs, pod).iter().all(|d| !is_summary(d)), "{pod}");
    }
}
