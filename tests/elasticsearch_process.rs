//! The real binary shipping to Elasticsearch: `kill -9` mid-batch and restarts, and memory
//! that stays bounded while the cluster is down.

mod support;

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_logferry");

fn write_config(tree: &Tree, es: &Es, ns: &str) -> std::path::PathBuf {
    let p = tree.root.path().join("agent.toml");
    fs::write(
        &p,
        format!(
            r#"state_dir = "{state}"
[source]
include = ["{glob}"]
rescan_interval = "100ms"
max_idle_poll = "20ms"
[checkpoint]
interval = "50ms"
[output]
type = "elasticsearch"
[output.elasticsearch]
endpoints = ["{url}"]
namespace = "{ns}"
flush_interval = "100ms"
batch_max_events = 2000
retry_initial_backoff = "50ms"
retry_max_backoff = "500ms"
[shutdown]
timeout = "2s"
[http]
listen = "127.0.0.1:0"
"#,
            state = tree.state_dir().display(),
            glob = tree.glob(),
            url = es.url()
        ),
    )
    .unwrap();
    p
}

fn spawn(config: &Path) -> Child {
    let log = fs::File::create(config.with_extension("log")).unwrap();
    Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[test]
fn kill_9_mid_batch_then_restart_indexes_every_line_once() {
    let es = Es::new();
    let tree = Tree::new();
    let ns = unique("kill");
    // At most 10,000: what one search can return, here and on a real cluster.
    let total = 9_000u64;
    for f in 0..3u64 {
        tree.container("ns", &format!("p{f}"), "app")
            .append(seq_lines(f * 3_000, 3_000).as_bytes());
    }
    let config = write_config(&tree, &es, &ns);
    let ds = format!("logs-kubernetes-{ns}");
    for kill_at in [1_000u64, 4_000, 7_000] {
        let mut child = spawn(&config);
        es.wait_count(&ds, kill_at);
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let mut child = spawn(&config);
    es.wait_count(&ds, total);
    std::thread::sleep(Duration::from_millis(500));
    let docs = es.docs(&ds);
    assert_eq!(docs.len() as u64, total, "no line indexed twice");
    assert_exactly_once(&seqs(&docs), total);
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    if let Some(s) = es.in_tree() {
        println!(
            "replayed after kill -9 and answered 409: {}",
            s.with(|s| s.items_409)
        );
    }
}

const CI_7_DAYS: &str =
    "[retention]\n[[retention.rules]]\nnamespaces = [\"ci-*\"]\nretention = \"7d\"\n";

/// Issue 19: `kill -9` while lines of two retention classes are in flight, three times:
/// each line lands once, in its class's stream.
#[test]
fn kill_9_with_two_retention_classes_indexes_every_line_once_in_its_stream() {
    let es = Es::new();
    let tree = Tree::new();
    let ns = unique("killc");
    for (i, k8s_ns) in ["ci-1", "shop"].iter().enumerate() {
        tree.container(k8s_ns, "p", "app")
            .append(seq_lines(i as u64 * 4_000, 4_000).as_bytes());
    }
    let config = write_config(&tree, &es, &ns);
    let text = fs::read_to_string(&config).unwrap() + CI_7_DAYS;
    fs::write(&config, text).unwrap();
    let (short, default) = (
        format!("logs-kubernetes.r7d-{ns}"),
        format!("logs-kubernetes-{ns}"),
    );
    let both = format!("{short},{default}");
    for kill_at in [1_000u64, 3_500, 6_000] {
        let mut child = spawn(&config);
        es.wait_count(&both, kill_at);
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let mut child = spawn(&config);
    es.wait_count(&both, 8_000);
    std::thread::sleep(Duration::from_millis(500));
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    assert_exactly_once(&seqs(&es.docs(&short)), 4_000);
    let shop: Vec<u64> = seqs(&es.docs(&default))
        .into_iter()
        .map(|s| s - 4_000)
        .collect();
    assert_exactly_once(&shop, 4_000);
}

/// Issue 19: a reload that moves a namespace to another retention class: its new lines
/// go to the new class's stream (its template installed first), none is lost or repeated,
/// and the old stream keeps what it had. Removing the class again moves them back and
/// leaves its stream as it is.
#[test]
fn a_reload_moves_a_namespace_to_another_class() {
    let es = Es::new();
    let tree = Tree::new();
    let ns = unique("move");
    let c = tree.container("ci-9", "r", "app");
    c.append(seq_lines(0, 1_000).as_bytes());
    let config = write_config(&tree, &es, &ns);
    let text = fs::read_to_string(&config).unwrap();
    let mut child = spawn(&config);
    let (default, short) = (
        format!("logs-kubernetes-{ns}"),
        format!("logs-kubernetes.r7d-{ns}"),
    );
    es.wait_count(&default, 1_000);
    fs::write(&config, text.clone() + CI_7_DAYS).unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    for from in (1_000..2_000).step_by(50) {
        c.append(seq_lines(from, 50).as_bytes());
        std::thread::sleep(Duration::from_millis(5));
    }
    let both = format!("{default},{short}");
    es.wait_count(&both, 2_000);
    std::thread::sleep(Duration::from_millis(300));
    let moved = es.count(&short);
    // The class removed again: its stream and what it holds stay.
    fs::write(&config, text).unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let log = config.with_extension("log");
    let deadline = Instant::now() + WAIT;
    while fetch(&log, "/metrics")
        .and_then(|(_, m)| sample(&m, "logferry_config_reloads_total"))
        .unwrap_or(0)
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the second reload did not happen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    c.append(seq_lines(2_000, 100).as_bytes());
    es.wait_count(&both, 2_100);
    std::thread::sleep(Duration::from_millis(300));
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    let (old, new) = (seqs(&es.docs(&default)), seqs(&es.docs(&short)));
    let mut all = old.clone();
    all.extend(&new);
    assert_exactly_once(&all, 2_100);
    assert!(
        new.contains(&1_999),
        "the lines after the move went to the 7-day class"
    );
    assert_eq!(
        es.count(&short),
        moved,
        "the removed class's stream keeps its lines"
    );
    assert!(
        old.contains(&2_099),
        "and the namespace is back in the default class"
    );
    let (status, ds) = es.call("GET", &format!("/_data_stream/{short}"), None);
    assert_eq!(status, 200, "{ds}");
    assert_eq!(ds["data_streams"][0]["ilm_policy"], "logferry-r7d");
}

#[test]
fn memory_stays_bounded_while_elasticsearch_is_down() {
    let es = Es::new();
    let Some(server) = es.in_tree() else {
        return eprintln!("skipped: needs fault injection");
    };
    let tree = Tree::new();
    let ns = unique("down");
    // 40 MiB of logs waiting while the cluster is away.
    let lines_per_file = 50_000u64;
    for f in 0..4u64 {
        tree.container("ns", &format!("p{f}"), "app")
            .append(seq_lines(f * lines_per_file, lines_per_file).as_bytes());
    }
    server.set_down(true);
    let config = write_config(&tree, &es, &ns);
    let mut child = spawn(&config);
    // Let it read as far as backpressure allows.
    std::thread::sleep(Duration::from_secs(3));
    let peak = peak_rss_kib(child.id());
    assert!(peak > 0, "cannot read the agent's memory");
    assert!(
        peak < 64 * 1024,
        "peak RSS {peak} KiB while holding 40 MiB of logs back"
    );
    server.set_down(false);
    let ds = format!("logs-kubernetes-{ns}");
    let deadline = Instant::now() + Duration::from_secs(40);
    while es.count(&ds) < 4 * lines_per_file {
        if Instant::now() > deadline {
            let log = fs::read_to_string(config.with_extension("log")).unwrap_or_default();
            panic!(
                "{} of {} lines arrived after the outage; agent log:\n{}",
                es.count(&ds),
                4 * lines_per_file,
                &log[log.len().saturating_sub(3000)..]
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("peak RSS during the outage: {} MiB", peak / 1024);
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    assert_eq!(es.count(&ds), 4 * lines_per_file);
}

#[test]
fn sigterm_during_an_outage_exits_in_time_and_commits_nothing_undelivered() {
    let es = Es::new();
    let Some(server) = es.in_tree() else {
        return eprintln!("skipped: needs fault injection");
    };
    let tree = Tree::new();
    let ns = unique("stop");
    tree.container("ns", "p", "app")
        .append(seq_lines(0, 1000).as_bytes());
    server.set_down(true);
    let config = write_config(&tree, &es, &ns);
    let mut child = spawn(&config);
    std::thread::sleep(Duration::from_millis(800));
    let started = Instant::now();
    sigterm(&child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?} after {:?}", started.elapsed());
    let ck: serde_json::Value =
        serde_json::from_slice(&fs::read(tree.state_dir().join("checkpoints.json")).unwrap())
            .unwrap();
    assert_eq!(
        ck["files"][0]["offset"], 0,
        "nothing was delivered, nothing is committed"
    );
    server.set_down(false);
    // The next run delivers it all.
    let mut child = spawn(&config);
    es.wait_count(&format!("logs-kubernetes-{ns}"), 1000);
    sigterm(&child);
    assert!(child.wait().unwrap().success());
}

fn probe(log: &Path, path: &str) -> Option<u16> {
    fetch(log, path).map(|(status, _)| status)
}

#[test]
fn metrics_count_what_was_shipped_and_status_shows_each_files_lag_reach_zero() {
    let es = Es::new();
    let tree = Tree::new();
    let ns = unique("metrics");
    for f in 0..2u64 {
        tree.container("ns", &format!("m{f}"), "app")
            .append(seq_lines(f * 1_000, 1_000).as_bytes());
    }
    let config = write_config(&tree, &es, &ns);
    // With credentials, which neither endpoint may show.
    let text = fs::read_to_string(&config).unwrap().replace(
        "flush_interval = \"100ms\"",
        "flush_interval = \"100ms\"\nusername = \"logferry\"\npassword = \"${ES_PASSWORD}\"",
    );
    fs::write(&config, text).unwrap();
    let log = config.with_extension("log");
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env("ES_PASSWORD", "s3cret-passw0rd")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    es.wait_count(&format!("logs-kubernetes-{ns}"), 2_000);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (metrics, status) = loop {
        let metrics = fetch(&log, "/metrics").map(|r| r.1).unwrap_or_default();
        let status = fetch(&log, "/status").map(|r| r.1).unwrap_or_default();
        let caught_up = sample(&metrics, "logferry_checkpoint_lag_bytes") == Some(0)
            && sample(&metrics, "logferry_events_delivered_total") == Some(2_000);
        if caught_up || Instant::now() > deadline {
            break (metrics, status);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        sample(&metrics, "logferry_events_delivered_total"),
        Some(2_000),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "logferry_lines_read_total"), Some(2_000));
    assert_eq!(sample(&metrics, "logferry_checkpoint_lag_bytes"), Some(0));
    assert_eq!(sample(&metrics, "logferry_files_followed"), Some(2));
    let requests = sample(&metrics, "logferry_elasticsearch_requests_total").unwrap_or(0);
    assert!(requests >= 1);
    assert_eq!(
        sample(
            &metrics,
            "logferry_elasticsearch_bulk_duration_seconds_count"
        ),
        Some(requests),
        "one latency per request"
    );
    assert_eq!(
        sample(
            &metrics,
            "logferry_elasticsearch_bulk_requests_total{outcome=\"items\"}"
        ),
        Some(requests)
    );
    for body in [&metrics, &status, &fs::read_to_string(&log).unwrap()] {
        assert!(!body.contains("s3cret-passw0rd"), "a secret shown: {body}");
    }
    let v: serde_json::Value = serde_json::from_str(&status).expect("status is JSON");
    assert_eq!(v["sink"]["last_bulk_outcome"], "items", "{v}");
    assert_eq!(v["sink"]["delivered"], 2_000);
    assert_eq!(v["sink"]["in_flight_bytes"], 0);
    // A healthy cluster: the pace is off, every request slot open, nothing to resend.
    assert_eq!(v["sink"]["retry_queue_documents"], 0);
    assert_eq!(v["sink"]["rate_limit_documents_per_second"], 0);
    assert_eq!(v["sink"]["concurrency_limit"], 4);
    assert_eq!(v["sink"]["rejected_share"], 0.0);
    assert_eq!(
        sample(&metrics, "logferry_elasticsearch_items_sent_total"),
        Some(2_000),
        "each line sent once"
    );
    assert_eq!(
        sample(&metrics, "logferry_elasticsearch_concurrency_limit"),
        Some(4)
    );
    assert_eq!(v["kubernetes"]["metadata_missing"], 0);
    let files = v["files"].as_array().expect("files");
    assert_eq!(files.len(), 2);
    for f in files {
        assert_eq!(f["lag_bytes"], 0, "{f}");
        assert_eq!(f["committed_offset"], f["size"]);
        assert!(f["size"].as_u64().unwrap() > 0);
    }
    // More lines to a file: once they are delivered its lag is back at zero.
    fs::OpenOptions::new()
        .append(true)
        .open(tree.pods.join("ns_m0_uid-m0/app/0.log"))
        .unwrap()
        .write_all(seq_lines(2_000, 500).as_bytes())
        .unwrap();
    es.wait_count(&format!("logs-kubernetes-{ns}"), 2_500);
    let deadline = Instant::now() + Duration::from_secs(20);
    while fetch(&log, "/metrics").and_then(|(_, m)| sample(&m, "logferry_checkpoint_lag_bytes"))
        != Some(0)
    {
        assert!(Instant::now() < deadline, "the lag never went back to zero");
        std::thread::sleep(Duration::from_millis(100));
    }
    sigterm(&child);
    assert!(child.wait().unwrap().success());
}

#[test]
fn healthz_and_readyz_follow_the_agent_and_the_cluster() {
    let es = Es::new();
    let Some(server) = es.in_tree() else {
        return eprintln!("skipped: needs fault injection");
    };
    let tree = Tree::new();
    tree.container("ns", "p", "app")
        .append(seq_lines(0, 10).as_bytes());
    server.set_down(true);
    let config = write_config(&tree, &es, &unique("probe"));
    let mut child = spawn(&config);
    let log = config.with_extension("log");
    let deadline = Instant::now() + WAIT;
    while probe(&log, "/healthz").is_none() {
        assert!(
            Instant::now() < deadline,
            "no HTTP endpoint: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(probe(&log, "/healthz"), Some(200));
    assert_eq!(
        probe(&log, "/readyz"),
        Some(503),
        "not ready before the index setup"
    );
    server.set_down(false);
    while probe(&log, "/readyz") != Some(200) {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(probe(&log, "/nope"), Some(404));
    sigterm(&child);
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_repeating_failure_is_logged_once_not_per_request() {
    let es = Es::new();
    let Some(server) = es.in_tree() else {
        return eprintln!("skipped: needs fault injection");
    };
    // Forty bulk requests in a row refused: credentials being rotated, say.
    server.faults(|f| {
        f.fail_requests = 40;
        f.request_status = 401;
    });
    let tree = Tree::new();
    let ns = unique("quiet");
    tree.container("ns", "q", "app")
        .append(seq_lines(0, 500).as_bytes());
    let config = write_config(&tree, &es, &ns);
    let mut child = spawn(&config);
    es.wait_count(&format!("logs-kubernetes-{ns}"), 500);
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    let log = fs::read_to_string(config.with_extension("log")).unwrap();
    let said = log.matches("refuses logferry's credentials").count();
    assert!(server.with(|s| s.requests_failed) >= 40);
    assert!(
        (1..=2).contains(&said),
        "logged {said} times for 40 refusals:\n{log}"
    );
}

#[test]
fn setup_failures_are_logged_once_with_their_count_and_shipping_starts_when_setup_passes() {
    let es = Es::new();
    let Some(server) = es.in_tree() else {
        return eprintln!("skipped: needs fault injection");
    };
    server.set_down(true);
    let tree = Tree::new();
    let ns = unique("setup");
    tree.container("ns", "s", "app")
        .append(seq_lines(0, 100).as_bytes());
    let config = write_config(&tree, &es, &ns);
    let mut child = spawn(&config);
    let log_path = config.with_extension("log");
    let log = || fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !log().contains("index setup failed") {
        assert!(
            Instant::now() < deadline,
            "no setup failure logged:
{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Several more attempts (50 ms backoff, up to 500 ms) while the cluster stays away.
    std::thread::sleep(Duration::from_secs(2));
    server.set_down(false);
    es.wait_count(&format!("logs-kubernetes-{ns}"), 100);
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    let text = log();
    let failed = text.matches("index setup failed").count();
    assert_eq!(
        failed, 1,
        "logged once, then held back:
{text}"
    );
    let line = text
        .lines()
        .find(|l| l.contains("index setup failed"))
        .unwrap();
    assert!(line.contains("attempts=1"), "{line}");
    // The cause is spelled out past the client's generic "error sending request for url".
    assert!(line.contains("): client error ("), "{line}");
    let done = text
        .lines()
        .find(|l| l.contains("index setup done"))
        .unwrap_or_else(|| panic!("no line for the setup passing:\n{text}"));
    let attempts: u32 = done
        .split("attempts=")
        .nth(1)
        .and_then(|a| a.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    assert!(attempts >= 4, "{done}");
}

/// A reload that sends the lines to another data stream: each line lands once, in one of
/// them, with no gap and no repeat across the restart of the pipeline.
fn a_reload_moves_shipping_without_loss_or_repeat(buffer: &str) {
    let es = Es::new();
    let tree = Tree::new();
    let (before, after) = (unique("before"), unique("after"));
    let c = tree.container("ns", "r", "app");
    c.append(seq_lines(0, 2_000).as_bytes());
    let config = write_config(&tree, &es, &before);
    let text = fs::read_to_string(&config).unwrap() + &format!("[buffer]\ntype = \"{buffer}\"\n");
    fs::write(&config, &text).unwrap();
    let mut child = spawn(&config);
    let (s1, s2) = (
        format!("logs-kubernetes-{before}"),
        format!("logs-kubernetes-{after}"),
    );
    es.wait_count(&s1, 2_000);
    fs::write(&config, text.replace(&before, &after)).unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    for from in (2_000..4_000).step_by(50) {
        c.append(seq_lines(from, 50).as_bytes());
        std::thread::sleep(Duration::from_millis(5));
    }
    let deadline = Instant::now() + WAIT;
    while es.count(&s1) + es.count(&s2) < 4_000 {
        assert!(Instant::now() < deadline, "not all shipped");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let log = config.with_extension("log");
    let reloads = fetch(&log, "/metrics")
        .and_then(|(_, m)| sample(&m, "logferry_config_reloads_total"))
        .unwrap_or(0);
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    let (old, new) = (es.docs(&s1), es.docs(&s2));
    let mut all = seqs(&old);
    all.extend(seqs(&new));
    assert_exactly_once(&all, 4_000);
    assert!(
        seqs(&new).contains(&3_999),
        "the last lines went to the new stream"
    );
    assert!(reloads >= 1, "{}", fs::read_to_string(&log).unwrap());
}

#[test]
fn a_reload_moves_shipping_without_loss_or_repeat_memory_buffer() {
    a_reload_moves_shipping_without_loss_or_repeat("memory");
}

#[test]
fn a_reload_moves_shipping_without_loss_or_repeat_disk_buffer() {
    a_reload_moves_shipping_without_loss_or_repeat("disk");
}
