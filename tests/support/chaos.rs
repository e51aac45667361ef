//! The faults of `tests/chaos.rs` as scenarios with a scale: 1 in the normal suite, more in
//! `tests/chaos_long.rs`. Every line carries a sequence number, and each scenario counts
//! exactly what is missing and what arrived twice.

use super::*;
use logferry_testkit::es_server::EsServer;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_logferry");

/// How the writer rotates a container's log.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rotation {
    /// kubelet's way: rename `0.log` to `0.log.<n>`, start a new one.
    Rename,
    /// logrotate's `copytruncate`: copy, then truncate in place.
    CopyTruncate,
    /// kubelet's exact steps: rename to `0.log.<n>`, a new `0.log`, then the previous
    /// rotated file gzipped to `.gz` through a `.tmp` and its original deleted.
    KubeletGzip,
    /// Docker json-file's: `.k` renamed to `.k+1` from the oldest down (the oldest beyond
    /// `keep` deleted), the live file renamed to `.1`, a new one started.
    DockerNumbered,
}

/// Writes sequence-numbered CRI lines to several containers at a steady rate, rotating
/// each log every `rotate_bytes` and deleting rotated files beyond `keep`, as kubelet does.
struct Writer {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    deleted: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

struct WriterSpec {
    pods: usize,
    lines: u64,
    per_second: u64,
    rotate_bytes: u64,
    keep: usize,
    rotation: Rotation,
}

impl Default for WriterSpec {
    fn default() -> Self {
        WriterSpec {
            pods: 2,
            lines: 10_000,
            per_second: 20_000,
            rotate_bytes: 1 << 30,
            keep: 5,
            rotation: Rotation::Rename,
        }
    }
}

impl Writer {
    fn start(tree: &Tree, spec: WriterSpec) -> Writer {
        let logs: Vec<ContainerLog> = (0..spec.pods)
            .map(|p| tree.container("chaos", &format!("pod{p}"), "app"))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let deleted = Arc::new(AtomicU64::new(0));
        let (s, w, d) = (stop.clone(), written.clone(), deleted.clone());
        let handle = std::thread::spawn(move || {
            let mut sizes = vec![0u64; logs.len()];
            let mut rotations = vec![0usize; logs.len()];
            let tick = Duration::from_millis(10);
            let per_tick = (spec.per_second / 100).max(1);
            let mut next = Instant::now();
            let mut seq = 0u64;
            while seq < spec.lines && !s.load(Ordering::Relaxed) {
                for _ in 0..per_tick.min(spec.lines - seq) {
                    let p = (seq % logs.len() as u64) as usize;
                    let line = seq_lines(seq, 1);
                    logs[p].append(line.as_bytes());
                    sizes[p] += line.len() as u64;
                    seq += 1;
                    w.store(seq, Ordering::Relaxed);
                    if sizes[p] >= spec.rotate_bytes && spec.rotation == Rotation::DockerNumbered {
                        sizes[p] = 0;
                        rotations[p] += 1;
                        if docker_rotate(&logs[p], spec.keep) {
                            d.fetch_add(1, Ordering::Relaxed);
                        }
                    } else if sizes[p] >= spec.rotate_bytes {
                        sizes[p] = 0;
                        rotations[p] += 1;
                        rotate(&logs[p], rotations[p], spec.rotation);
                        if rotations[p] > spec.keep {
                            let n = rotations[p] - spec.keep;
                            let old = logs[p].dir.join(format!("0.log.{n:08}"));
                            let gz = logs[p].dir.join(format!("0.log.{n:08}.gz"));
                            if fs::remove_file(old).is_ok() || fs::remove_file(gz).is_ok() {
                                d.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                next += tick;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        });
        Writer {
            stop,
            written,
            deleted,
            handle: Some(handle),
        }
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Waits for the writer to finish its lines; returns how many it wrote.
    fn finish(mut self) -> u64 {
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        self.written()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Docker's rotation; returns whether the oldest file was deleted.
fn docker_rotate(log: &ContainerLog, keep: usize) -> bool {
    let numbered = |k: usize| log.dir.join(format!("0.log.{k}"));
    let deleted = fs::remove_file(numbered(keep)).is_ok();
    for k in (1..keep).rev() {
        let _ = fs::rename(numbered(k), numbered(k + 1));
    }
    fs::rename(log.path(), numbered(1)).unwrap();
    fs::File::create(log.path()).unwrap();
    deleted
}

fn rotate(log: &ContainerLog, n: usize, how: Rotation) {
    let rotated = log.dir.join(format!("0.log.{n:08}"));
    match how {
        Rotation::Rename => log.rotate(n),
        Rotation::KubeletGzip => {
            log.rotate(n);
            if n > 1 {
                gzip_like_kubelet(&log.dir.join(format!("0.log.{:08}", n - 1)));
            }
        }
        Rotation::DockerNumbered => unreachable!("docker_rotate"),
        Rotation::CopyTruncate => {
            fs::copy(log.path(), &rotated).unwrap();
            fs::OpenOptions::new()
                .write(true)
                .open(log.path())
                .unwrap()
                .set_len(0)
                .unwrap();
        }
    }
}

/// The agent as a process, restartable with the same config and state directory.
struct AgentProcess {
    config: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl AgentProcess {
    fn new(tree: &Tree, es: &EsServer, extra: &str) -> AgentProcess {
        let config = tree.root.path().join("agent.toml");
        fs::write(
            &config,
            format!(
                r#"state_dir = "{state}"
[source]
include = ["{glob}"]
rescan_interval = "100ms"
max_idle_poll = "20ms"
rotate_wait = "30s"
[checkpoint]
interval = "100ms"
[output]
type = "elasticsearch"
[output.elasticsearch]
endpoints = ["{url}"]
namespace = "chaos"
flush_interval = "100ms"
batch_max_events = 2000
retry_initial_backoff = "20ms"
retry_max_backoff = "200ms"
[shutdown]
timeout = "3s"
[http]
listen = "127.0.0.1:0"
{extra}
"#,
                state = tree.state_dir().display(),
                glob = tree.glob(),
                url = es.url,
            ),
        )
        .unwrap();
        AgentProcess {
            config,
            child: None,
            starts: 0,
        }
    }

    fn start(&mut self) {
        self.starts += 1;
        let log = fs::File::options()
            .create(true)
            .append(true)
            .open(self.config.with_extension("log"))
            .unwrap();
        self.child = Some(
            Command::new(BIN)
                .args(["run", "--config"])
                .arg(&self.config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            sigterm(&c);
            let status = c.wait().unwrap();
            assert!(
                status.success(),
                "agent exited with {status}\n{}",
                self.log_tail()
            );
        }
    }

    /// Freezes (`STOP`) or thaws (`CONT`) the agent.
    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn log(&self) -> String {
        fs::read_to_string(self.config.with_extension("log")).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.config.with_extension("log")).unwrap_or_default();
        log[log.len().saturating_sub(4000)..].to_string()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sequence numbers of every document the server holds, with repeats.
fn indexed(es: &EsServer) -> Vec<u64> {
    es.with(|s| {
        s.docs("logs-*")
            .iter()
            .filter_map(|(_, d)| {
                let m = d["message"].as_str()?;
                let i = m.find("seq=")?;
                m[i + 4..i + 12].parse().ok()
            })
            .collect()
    })
}

/// Waits until `n` documents are indexed or `limit` passes; returns how many are.
fn wait_indexed(es: &EsServer, n: u64, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    loop {
        let c = es.with(|s| s.count("logs-*")) as u64;
        if std::env::var_os("CHAOS_TRACE").is_some() {
            eprintln!("{:?} indexed {c} of {n}", Instant::now());
        }
        if c >= n || Instant::now() > deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_all_once(es: &EsServer, n: u64, agent: &AgentProcess) {
    assert_exactly_once_or(
        &indexed(es),
        n,
        &format!("agent log:\n{}", agent.log_tail()),
    );
}

const DISK_BUFFER: &str = r#"[buffer]
type = "disk"
max_size = "4GiB"
fsync = "interval"
fsync_interval = "100ms"
"#;

pub fn disk_buffer_keeps_lines_whose_files_kubelet_deleted_during_an_outage(scale: u64) {
    let es = EsServer::start();
    let tree = Tree::new();
    es.set_down(true);
    let mut agent = AgentProcess::new(&tree, &es, DISK_BUFFER);
    agent.start();
    // 60,000 lines over 3 containers, rotated every 256 KiB, one rotated file kept: most
    // files are gone before the cluster comes back.
    let writer = Writer::start(
        &tree,
        WriterSpec {
            pods: 3,
            lines: 60_000 * scale,
            per_second: 30_000,
            rotate_bytes: 256 * 1024,
            keep: 1,
            ..WriterSpec::default()
        },
    );
    let deleted = writer.deleted.clone();
    let total = writer.finish();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        deleted.load(Ordering::Relaxed) >= 10,
        "the test must delete rotated files during the outage"
    );
    assert_eq!(es.with(|s| s.count("logs-*")), 0, "the cluster was down");
    es.set_down(false);
    let got = wait_indexed(&es, total, Duration::from_secs(60 * scale));
    assert_eq!(got, total, "indexed of written\n{}", agent.log_tail());
    agent.stop();
    assert_all_once(&es, total, &agent);
}

pub fn kill_9_while_spooling_then_the_files_vanish_and_the_buffer_still_delivers(scale: u64) {
    let es = EsServer::start();
    let tree = Tree::new();
    es.set_down(true);
    let mut agent = AgentProcess::new(&tree, &es, DISK_BUFFER);
    let writer = Writer::start(
        &tree,
        WriterSpec {
            pods: 4,
            lines: 40_000 * scale,
            per_second: 40_000,
            ..WriterSpec::default()
        },
    );
    let mut rng = 0x9e3779b97f4a7c15u64;
    // Killed at random moments while it reads into the buffer.
    for _ in 0..4 {
        agent.start();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(150 + rng % 400));
        agent.kill9();
    }
    let total = writer.finish();
    agent.start();
    // Every file's checkpoint reaches its end once its lines are in the buffer.
    let state = tree.state_dir().join("checkpoints.json");
    let sizes: u64 = (0..4)
        .map(|p| {
            let log = tree.pods.join(format!("chaos_pod{p}_uid-pod{p}/app/0.log"));
            fs::metadata(log).unwrap().len()
        })
        .sum();
    let deadline = Instant::now() + Duration::from_secs(30);
    while committed_bytes(&state) < sizes {
        assert!(
            Instant::now() < deadline,
            "checkpoints never reached the end of the files"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.kill9();
    // The log files are gone (pods deleted): the buffer alone holds the lines.
    fs::remove_dir_all(tree.root.path().join("var/log/pods")).unwrap();
    es.set_down(false);
    agent.start();
    let got = wait_indexed(&es, total, Duration::from_secs(60 * scale));
    assert_eq!(got, total, "indexed of written\n{}", agent.log_tail());
    agent.stop();
    assert_all_once(&es, total, &agent);
}

/// The sum of the committed offsets in a checkpoint file.
fn committed_bytes(path: &Path) -> u64 {
    let Ok(data) = fs::read(path) else { return 0 };
    let v: serde_json::Value = serde_json::from_slice(&data).unwrap_or_default();
    v["files"]
        .as_array()
        .map(|f| f.iter().filter_map(|e| e["offset"].as_u64()).sum())
        .unwrap_or(0)
}

/// Kills the agent at random moments while lines are written and rotated, restarts it with
/// the same state, several times; then lets it finish.
fn kill_9_at_random_points(extra: &str, seed: u64, scale: u64) {
    let es = EsServer::start();
    let tree = Tree::new();
    let mut agent = AgentProcess::new(&tree, &es, extra);
    agent.start();
    let writer = Writer::start(
        &tree,
        WriterSpec {
            pods: 4,
            lines: 60_000 * scale,
            rotate_bytes: 1 << 20,
            ..WriterSpec::default()
        },
    );
    let mut rng = seed | 1;
    while writer.written() < 50_000 * scale {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(200 + rng % 600));
        agent.kill9();
        std::thread::sleep(Duration::from_millis(rng % 200));
        agent.start();
    }
    let total = writer.finish();
    let got = wait_indexed(&es, total, Duration::from_secs(60 * scale));
    assert_eq!(
        got,
        total,
        "after {} starts\n{}",
        agent.starts,
        agent.log_tail()
    );
    agent.stop();
    assert!(agent.starts >= 4, "only {} starts", agent.starts);
    assert_all_once(&es, total, &agent);
}

pub fn kill_9_at_random_points_under_load_loses_and_repeats_nothing(scale: u64) {
    kill_9_at_random_points("", 0x5eed_0001, scale);
}

pub fn kill_9_at_random_points_with_the_disk_buffer_loses_and_repeats_nothing(scale: u64) {
    kill_9_at_random_points(DISK_BUFFER, 0x5eed_0002, scale);
}

pub fn throttling_by_items_and_whole_requests_loses_and_repeats_nothing(scale: u64) {
    let es = EsServer::start();
    es.faults(|f| {
        f.item_429_ratio = 0.3;
        f.request_fail_ratio = 0.2;
    });
    let tree = Tree::new();
    let mut agent = AgentProcess::new(&tree, &es, "");
    agent.start();
    let total = Writer::start(
        &tree,
        WriterSpec {
            pods: 4,
            lines: 40_000 * scale,
            rotate_bytes: 1 << 20,
            ..WriterSpec::default()
        },
    )
    .finish();
    let got = wait_indexed(&es, total, Duration::from_secs(60 * scale));
    assert_eq!(got, total, "indexed of written\n{}", agent.log_tail());
    agent.stop();
    let (items_429, failed) = es.with(|s| (s.items_429, s.requests_failed));
    assert!(
        items_429 > 1000 && failed > 5,
        "faults injected: {items_429} items, {failed} requests"
    );
    assert_all_once(&es, total, &agent);
}

pub fn a_rotation_every_mebibyte_at_a_high_rate_loses_and_repeats_nothing(scale: u64) {
    let es = EsServer::start();
    let tree = Tree::new();
    let mut agent = AgentProcess::new(&tree, &es, "");
    agent.start();
    let writer = Writer::start(
        &tree,
        WriterSpec {
            lines: 120_000 * scale,
            per_second: 60_000,
            rotate_bytes: 1 << 20,
            keep: 3,
            ..WriterSpec::default()
        },
    );
    let deleted = writer.deleted.clone();
    let total = writer.finish();
    assert!(deleted.load(Ordering::Relaxed) > 0);
    let got = wait_indexed(&es, total, Duration::from_secs(60 * scale));
    if got < total {
        assert_all_once(&es, total, &agent);
    }
    assert_eq!(got, total, "indexed of written\n{}", agent.log_tail());
    agent.stop();
    assert_all_once(&es, total, &agent);
}

/// logrotate's `copytruncate` at 20,000 lines/s: what the agent had not read when a file
/// was truncated is read from the copy beside it, so nothing is lost (issue 13 measured
/// 0.7% lost before; peers lose more and repeat lines).
pub fn copytruncate_loses_nothing_the_copy_holds_what_was_not_read(scale: u64) {
    let es = EsServer::start();
    let tree = Tree::new();
    let mut agent = agent_at_the_default_intervals(&tree, &es);
    let total = storm_writer(&tree, scale, Rotation::CopyTruncate).finish();
    let got = wait_indexed(&es, total, Duration::from_secs(60 * scale));
    let log = agent.config.with_extension("log");
    let m = fetch(&log, "/metrics").map(|(_, m)| m).unwrap_or_default();
    let truncations = sample(&m, "logferry_truncations_total").unwrap_or(0);
    let unrecovered = sample(&m, "logferry_truncations_unrecovered_total");
    assert_all_once(&es, total, &agent);
    assert_eq!(got, total);
    assert!(truncations >= 10, "{truncations} truncations seen");
    assert_eq!(unrecovered, Some(0), "every truncated file had its copy");
    println!(
        "copytruncate: {truncations} truncations, {} bytes read from copies",
        sample(&m, "logferry_truncation_recovered_bytes_total").unwrap_or(0)
    );
    agent.stop();
}

pub fn five_hundred_containers_at_once_lose_and_repeat_nothing(scale: u64) {
    let es = EsServer::start();
    let tree = Tree::new();
    let mut agent = AgentProcess::new(&tree, &es, "");
    let writer = Writer::start(
        &tree,
        WriterSpec {
            pods: 500,
            lines: 50_000 * scale,
            per_second: 50_000,
            ..WriterSpec::default()
        },
    );
    agent.start();
    let total = writer.finish();
    let got = wait_indexed(&es, total, Duration::from_secs(60 * scale));
    assert_eq!(got, total, "indexed of written\n{}", agent.log_tail());
    agent.stop();
    assert_all_once(&es, total, &agent);
}

/// Appends `per_pod` more lines to each of the two pods a default `Writer` writes,
/// numbered on from `first` as the writer numbers them; returns the new total.
fn append_to_both_pods(tree: &Tree, first: u64, per_pod: u64) -> u64 {
    for p in 0..2u64 {
        let log = tree.pods.join(format!("chaos_pod{p}_uid-pod{p}/app/0.log"));
        let data: String = (0..per_pod)
            .map(|i| seq_lines(first + i * 2 + p, 1))
            .collect();
        fs::OpenOptions::new()
            .append(true)
            .open(log)
            .unwrap()
            .write_all(data.as_bytes())
            .unwrap();
    }
    first + 2 * per_pod
}

/// Checkpoint writes fail (`spoil`) while lines keep coming: the failure is reported,
/// shipping goes on, and once `mend` runs the checkpoints catch up.
fn checkpoints_fail_then_recover(tree: &Tree, spoil: impl FnOnce(), mend: impl FnOnce()) {
    let es = EsServer::start();
    let mut agent = AgentProcess::new(tree, &es, "");
    agent.start();
    let first = Writer::start(
        tree,
        WriterSpec {
            lines: 2_000,
            ..WriterSpec::default()
        },
    )
    .finish();
    assert_eq!(wait_indexed(&es, first, Duration::from_secs(30)), first);
    let state = tree.state_dir().join("checkpoints.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    while committed_bytes(&state) == 0 {
        assert!(Instant::now() < deadline, "no checkpoint written");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = committed_bytes(&state);
    spoil();
    let total = append_to_both_pods(tree, first, 1_000);
    assert_eq!(
        wait_indexed(&es, total, Duration::from_secs(30)),
        total,
        "shipping goes on"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        committed_bytes(&state),
        before,
        "no checkpoint could be written"
    );
    assert!(
        agent.log_tail().contains("cannot write checkpoints"),
        "the failure is reported:\n{}",
        agent.log_tail()
    );
    mend();
    let deadline = Instant::now() + Duration::from_secs(10);
    while committed_bytes(&state) <= before {
        assert!(
            Instant::now() < deadline,
            "the checkpoint write was not retried"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.stop();
    assert_all_once(&es, total, &agent);
}

pub fn an_unwritable_state_directory_is_reported_shipping_goes_on_and_the_write_is_retried(
    _scale: u64,
) {
    let tree = Tree::new();
    // The temporary file's name taken by a directory: every checkpoint write fails (as on
    // a read-only disk; root ignores permission bits).
    let blocker = tree.state_dir().join("checkpoints.json.tmp");
    checkpoints_fail_then_recover(
        &tree,
        || fs::create_dir(&blocker).unwrap(),
        || fs::remove_dir(&blocker).unwrap(),
    );
}

pub fn the_kubernetes_api_down_and_its_watch_history_expired_lose_no_line_and_no_metadata(
    scale: u64,
) {
    use logferry_testkit::kube_server::{KubeServer, PodSpec};
    let api = KubeServer::start();
    let pod = |name: &'static str, uid: &'static str| PodSpec {
        namespace: "chaos",
        name,
        uid,
        node: "node-a",
        containers: &["app"],
        labels: serde_json::json!({ "app": "chaos" }),
        annotations: serde_json::json!({}),
        owner: Some(("ReplicaSet", "chaos-rs")),
    };
    api.add_pod(pod("pod0", "uid-pod0"));
    api.add_pod(pod("pod1", "uid-pod1"));
    api.add_pod(pod("pod2", "uid-pod2"));
    let es = EsServer::start();
    let tree = Tree::new();
    let kubeconfig = api.kubeconfig(tree.root.path());
    let mut agent = AgentProcess::new(
        &tree,
        &es,
        &format!(
            "[kubernetes]\nenabled = true\nnode_name = \"node-a\"\nkubeconfig = \"{}\"\nmetadata_wait = \"20s\"\n",
            kubeconfig.display()
        ),
    );
    agent.start();
    let writer = Writer::start(
        &tree,
        WriterSpec {
            pods: 3,
            lines: 30_000 * scale,
            per_second: 10_000,
            rotate_bytes: 1 << 20,
            ..WriterSpec::default()
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    // Away for a while; when it is back, the history the watch resumes from is gone (410).
    api.set_down(true);
    std::thread::sleep(Duration::from_secs(2));
    api.expire_history();
    api.set_down(false);
    std::thread::sleep(Duration::from_millis(500));
    api.expire_history();
    let written = writer.finish();
    // A pod that starts after the outage is known only through the watch made anew.
    api.add_pod(pod("late", "uid-late"));
    tree.container("chaos", "late", "app")
        .append(seq_lines(written, 100).as_bytes());
    let total = written + 100;
    let got = wait_indexed(&es, total, Duration::from_secs(60 * scale));
    assert_eq!(got, total, "indexed of written\n{}", agent.log_tail());
    agent.stop();
    assert_all_once(&es, total, &agent);
    let without: u64 = es.with(|s| {
        s.docs("logs-*")
            .iter()
            .filter(|(_, d)| d["kubernetes"]["labels"]["app"] != "chaos")
            .count() as u64
    });
    assert_eq!(without, 0, "documents without their pod's metadata");
    assert!(api.with(|s| s.lists) >= 2, "relisted after 410 Gone");
}

pub fn sigterm_during_an_outage_with_the_disk_buffer_stops_cleanly_and_delivers_after_restart(
    scale: u64,
) {
    let es = EsServer::start();
    let tree = Tree::new();
    es.set_down(true);
    let mut agent = AgentProcess::new(&tree, &es, DISK_BUFFER);
    agent.start();
    let total = Writer::start(
        &tree,
        WriterSpec {
            lines: 10_000 * scale,
            ..WriterSpec::default()
        },
    )
    .finish();
    std::thread::sleep(Duration::from_secs(1));
    // Stops without waiting for the cluster: the documents are safe on disk.
    agent.stop();
    let log = agent.log_tail();
    assert!(!log.contains("shutdown timed out"), "{log}");
    assert!(log.contains("stay in the disk buffer"), "{log}");
    es.set_down(false);
    agent.start();
    let got = wait_indexed(&es, total, Duration::from_secs(60 * scale));
    assert_eq!(got, total, "indexed of written\n{}", agent.log_tail());
    agent.stop();
    assert_all_once(&es, total, &agent);
}

/// An agent that sends one bulk request at a time: with the server's latency, a slow cluster.
fn one_request_at_a_time(tree: &Tree, es: &EsServer) -> AgentProcess {
    let agent = AgentProcess::new(tree, es, "");
    fs::write(
        &agent.config,
        fs::read_to_string(&agent.config).unwrap().replace(
            "batch_max_events = 2000",
            "batch_max_events = 2000\nmax_in_flight = 1",
        ),
    )
    .unwrap();
    agent
}

pub fn a_cluster_slower_than_the_writers_keeps_memory_bounded_and_is_caught_up_after(scale: u64) {
    let es = EsServer::start();
    // Each bulk request takes 300 ms, one at a time: about a third of the write rate.
    es.faults(|f| f.latency = Duration::from_millis(300));
    let tree = Tree::new();
    let mut agent = one_request_at_a_time(&tree, &es);
    agent.start();
    let writer = Writer::start(
        &tree,
        WriterSpec {
            pods: 4,
            lines: 60_000 * scale,
            per_second: 15_000,
            rotate_bytes: 4 << 20,
            ..WriterSpec::default()
        },
    );
    let pid = agent.child.as_ref().unwrap().id();
    let log = agent.config.with_extension("log");
    let (mut behind, mut lag_shown, mut in_flight, mut waited) = (0, 0, 0, 0.0f64);
    while writer.written() < 60_000 * scale {
        std::thread::sleep(Duration::from_millis(500));
        let indexed = es.with(|s| s.count("logs-*")) as u64;
        behind = behind.max(writer.written().saturating_sub(indexed));
        let Some((_, m)) = fetch(&log, "/metrics") else {
            continue;
        };
        lag_shown = lag_shown.max(sample(&m, "logferry_checkpoint_lag_bytes").unwrap_or(0));
        in_flight =
            in_flight.max(sample(&m, "logferry_elasticsearch_in_flight_bytes").unwrap_or(0));
        if let Some(s) = m.lines().find_map(|l| {
            l.strip_prefix("logferry_backpressure_seconds_total ")?
                .parse::<f64>()
                .ok()
        }) {
            waited = waited.max(s);
        }
    }
    let total = writer.finish();
    let peak = peak_rss_kib(pid);
    assert!(
        behind > 10_000,
        "the cluster was not slower than the writers ({behind} behind)"
    );
    assert!(peak > 0 && peak < 256 * 1024, "peak RSS {peak} KiB");
    // A line is about 100 bytes: the backlog shows in the agent's own metrics.
    assert!(
        lag_shown > 500_000,
        "checkpoint lag seen: {lag_shown} bytes"
    );
    // A request is out most of the time, and the tailer waits on the full pipeline.
    assert!(in_flight > 10_000, "in-flight bytes seen: {in_flight}");
    assert!(waited > 1.0, "backpressure seconds seen: {waited}");
    es.faults(|f| f.latency = Duration::ZERO);
    let got = wait_indexed(&es, total, Duration::from_secs(60 * scale));
    assert_eq!(got, total, "indexed of written\n{}", agent.log_tail());
    let deadline = Instant::now() + Duration::from_secs(10);
    while fetch(&log, "/metrics").and_then(|(_, m)| sample(&m, "logferry_checkpoint_lag_bytes"))
        != Some(0)
    {
        assert!(
            Instant::now() < deadline,
            "the agent never saw itself caught up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.stop();
    assert_all_once(&es, total, &agent);
    println!(
        "slow cluster: at most {behind} lines and {lag_shown} bytes behind, peak RSS {} MiB",
        peak / 1024
    );
}

/// A small tmpfs mounted over a directory for the life of the value (needs root and mount
/// rights; `None` where the machine does not allow it).
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        fs::create_dir_all(dir).ok()?;
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .ok()?
            .success();
        ok.then(|| SmallDisk(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

pub fn a_full_state_disk_is_reported_shipping_goes_on_and_the_write_is_retried(_scale: u64) {
    let tree = Tree::new();
    let Some(_disk) = SmallDisk::mount(&tree.state_dir(), "256k") else {
        return eprintln!("skipped: cannot mount a tmpfs here");
    };
    let filler = tree.state_dir().join("filler");
    let fill = || {
        let mut f = fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.write_all(&[0u8]);
    };
    checkpoints_fail_then_recover(&tree, fill, || fs::remove_file(&filler).unwrap());
}

pub fn a_cluster_with_less_write_capacity_than_the_writers_gets_every_line_once_with_few_resends(
    scale: u64,
) {
    let es = EsServer::start();
    // A node that indexes 3,000 documents a second and refuses the rest with 429.
    es.faults(|f| f.write_capacity = 3_000);
    let tree = Tree::new();
    let mut agent = AgentProcess::new(&tree, &es, "");
    agent.start();
    let writer = Writer::start(
        &tree,
        WriterSpec {
            pods: 4,
            lines: 45_000 * scale,
            per_second: 4_500,
            rotate_bytes: 1 << 20,
            ..WriterSpec::default()
        },
    );
    let log = agent.config.with_extension("log");
    let (mut paced, mut lowest_limit) = (0u64, u64::MAX);
    while writer.written() < 45_000 * scale {
        std::thread::sleep(Duration::from_millis(300));
        let Some((_, m)) = fetch(&log, "/metrics") else {
            continue;
        };
        if let Some(r) = sample(&m, "logferry_elasticsearch_rate_limit_documents_per_second") {
            paced = paced.max(r);
        }
        if let Some(l) = sample(&m, "logferry_elasticsearch_concurrency_limit") {
            lowest_limit = lowest_limit.min(l);
        }
    }
    let total = writer.finish();
    let got = wait_indexed(&es, total, Duration::from_secs(90 * scale));
    assert_eq!(got, total, "indexed of written\n{}", agent.log_tail());
    agent.stop();
    assert_all_once(&es, total, &agent);
    let (sent, over) = es.with(|s| (s.bulk_items, s.items_over_capacity));
    assert!(over > 0, "the cluster's capacity was never reached");
    // Resends are paid only for what the cluster refused; the agent found its pace
    // instead of resending everything over and over (the benchmark holds it to 1.2).
    let per_doc = sent as f64 / total as f64;
    assert!(per_doc < 1.5, "{per_doc:.2} items sent per line");
    assert!(
        paced > 0 && paced < 4_500,
        "a send rate below the write rate was learnt: {paced}"
    );
    assert!(
        lowest_limit < 4,
        "requests in flight were cut: {lowest_limit}"
    );
    println!(
        "write capacity: {per_doc:.3} items sent per line, {over} refused over capacity, pace {paced}/s"
    );
}

pub fn the_end_of_an_outage_is_found_by_the_probe_not_by_waiting_out_the_backoff(_scale: u64) {
    let es = EsServer::start();
    let tree = Tree::new();
    // After the first failure the next attempt would wait 10–20 s; the probe runs every
    // 100 ms.
    let mut agent = AgentProcess::new(&tree, &es, "");
    fs::write(
        &agent.config,
        fs::read_to_string(&agent.config)
            .unwrap()
            .replace(
                "retry_initial_backoff = \"20ms\"",
                "retry_initial_backoff = \"20s\"",
            )
            .replace(
                "retry_max_backoff = \"200ms\"",
                "retry_max_backoff = \"60s\"\noutage_probe_interval = \"100ms\"",
            ),
    )
    .unwrap();
    agent.start();
    let first = Writer::start(
        &tree,
        WriterSpec {
            lines: 2_000,
            ..WriterSpec::default()
        },
    )
    .finish();
    assert_eq!(wait_indexed(&es, first, Duration::from_secs(30)), first);
    es.set_down(true);
    let total = append_to_both_pods(&tree, first, 10_000);
    // Long enough for the agent to fail a request and back off.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.log_tail().contains("bulk request failed") {
        assert!(
            Instant::now() < deadline,
            "no request failed during the outage"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    es.set_down(false);
    let up = Instant::now();
    let got = wait_indexed(&es, total, Duration::from_secs(60));
    let took = up.elapsed();
    assert_eq!(got, total, "indexed of written\n{}", agent.log_tail());
    // The backoff alone would have held the documents for at least 10 s.
    assert!(
        took < Duration::from_secs(8),
        "the backlog took {took:?} after the cluster came back\n{}",
        agent.log_tail()
    );
    assert!(agent.log_tail().contains("Elasticsearch answers again"));
    agent.stop();
    assert_all_once(&es, total, &agent);
}

/// The agent with the default rescan and idle intervals, as a new user runs it, started.
fn agent_at_the_default_intervals(tree: &Tree, es: &EsServer) -> AgentProcess {
    let mut agent = AgentProcess::new(tree, es, "");
    fs::write(
        &agent.config,
        fs::read_to_string(&agent.config)
            .unwrap()
            .replace("rescan_interval = \"100ms\"", "rescan_interval = \"5s\"")
            .replace("max_idle_poll = \"20ms\"", "max_idle_poll = \"500ms\""),
    )
    .unwrap();
    agent.start();
    std::thread::sleep(Duration::from_millis(300));
    agent
}

/// 20,000 lines/s over 4 containers, each rotated (`how`) about ten times (lines are ~100
/// bytes here), 4 rotated files kept.
fn storm_writer(tree: &Tree, scale: u64, how: Rotation) -> Writer {
    Writer::start(
        tree,
        WriterSpec {
            pods: 4,
            lines: 100_000 * scale,
            per_second: 20_000,
            rotate_bytes: 256 * 1024,
            keep: 4,
            rotation: how,
        },
    )
}

/// A rotation storm as kubelet makes it, under the default rescan interval (5 s): the
/// rotations happen in `/var/log/pods/…`, unseen from the `/var/log/containers` symlinks,
/// and each rotated file is gzipped and deleted at the next rotation. Every generation
/// must be opened before that.
pub fn a_kubelet_rotation_storm_under_the_default_rescan_interval_loses_and_repeats_nothing(
    scale: u64,
) {
    let es = EsServer::start();
    let tree = Tree::new();
    let mut agent = agent_at_the_default_intervals(&tree, &es);
    let writer = storm_writer(&tree, scale, Rotation::KubeletGzip);
    let deleted = writer.deleted.clone();
    let total = writer.finish();
    assert!(deleted.load(Ordering::Relaxed) > 0, "kubelet deleted files");
    let got = wait_indexed(&es, total, Duration::from_secs(60 * scale));
    if got < total {
        assert_all_once(&es, total, &agent);
    }
    agent.stop();
    assert_all_once(&es, total, &agent);
    let gz = fs::read_dir(tree.pods.join("chaos_pod0_uid-pod0/app"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "gz")
        })
        .count();
    assert!(gz > 0, "rotated files were gzipped");
}

/// Docker json-file's numbered rotation (`.1` … `.N`, renamed down the chain at each
/// rotation) at 20,000 lines/s under the default intervals: every generation once.
pub fn a_docker_numbered_rotation_storm_loses_and_repeats_nothing(scale: u64) {
    let es = EsServer::start();
    let tree = Tree::new();
    let mut agent = agent_at_the_default_intervals(&tree, &es);
    let writer = storm_writer(&tree, scale, Rotation::DockerNumbered);
    let deleted = writer.deleted.clone();
    let total = writer.finish();
    assert!(
        deleted.load(Ordering::Relaxed) > 0,
        "the runtime deleted files"
    );
    let got = wait_indexed(&es, total, Duration::from_secs(60 * scale));
    if got < total {
        assert_all_once(&es, total, &agent);
    }
    agent.stop();
    assert_all_once(&es, total, &agent);
}

/// A kubelet rotation storm (two rotations a second per container, each rotated file
/// compressed at the next rotation, 16 kept), interrupted twice by `interrupt`: every line
/// once, and some generation read from its `.gz`.
fn storm_with_interruptions(scale: u64, interrupt: impl Fn(&mut AgentProcess)) {
    let es = EsServer::start();
    let tree = Tree::new();
    let mut agent = agent_at_the_default_intervals(&tree, &es);
    let writer = Writer::start(
        &tree,
        WriterSpec {
            pods: 4,
            lines: 100_000 * scale,
            per_second: 20_000,
            rotate_bytes: 256 * 1024,
            // Deleted long after the interruptions (not at all at scale 1): every line can
            // be read, however slowly a debug build on a shared machine catches up.
            keep: 16,
            rotation: Rotation::KubeletGzip,
        },
    );
    let mut interrupted = 0;
    while writer.written() < 100_000 * scale && interrupted < 2 * scale {
        std::thread::sleep(Duration::from_millis(1200));
        interrupt(&mut agent);
        interrupted += 1;
    }
    let total = writer.finish();
    let got = wait_indexed(&es, total, Duration::from_secs(60 * scale));
    if got < total {
        assert_all_once(&es, total, &agent);
    }
    agent.stop();
    assert_all_once(&es, total, &agent);
    assert!(
        agent
            .log()
            .contains("reading a generation compressed before it was read to its end"),
        "no generation was read from its .gz\n{}",
        agent.log_tail()
    );
}

/// The agent frozen (SIGSTOP) for 1.6 s, three rotations of each container, twice: the
/// generations created and compressed meanwhile are read from their `.gz`.
pub fn generations_compressed_while_the_agent_was_frozen_are_read_from_their_gz(scale: u64) {
    storm_with_interruptions(scale, |agent| {
        agent.signal("STOP");
        std::thread::sleep(Duration::from_millis(1600));
        agent.signal("CONT");
    });
}

/// `kill -9` in a kubelet rotation storm, restarted 1.6 s later: the file being read was
/// compressed meanwhile and is read on from its checkpoint out of the `.gz`, with the same
/// document ids; the generations written while the agent was down are read whole.
pub fn kill_9_in_a_rotation_storm_reads_on_from_the_compressed_generation(scale: u64) {
    storm_with_interruptions(scale, |agent| {
        agent.kill9();
        std::thread::sleep(Duration::from_millis(1600));
        agent.start();
    });
}

/// Issue 14's test: `kill -9` under load, a rollover of the data stream while the agent is
/// down, a restart. What the agent replays from its checkpoint goes to the new write index,
/// where its ids are unknown: unless the replay asks which ids the stream holds first,
/// it is indexed twice.
pub fn kill_9_then_a_rollover_then_a_restart_indexes_every_line_once(scale: u64) {
    rollovers_between_kill_9_and_restart(scale, "");
}

/// The same with the disk buffer: what the last run left in it is looked up before it goes.
pub fn kill_9_then_a_rollover_with_the_disk_buffer_indexes_every_line_once(scale: u64) {
    rollovers_between_kill_9_and_restart(scale, DISK_BUFFER);
}

fn rollovers_between_kill_9_and_restart(scale: u64, extra: &str) {
    let es = EsServer::start();
    let tree = Tree::new();
    let mut agent = AgentProcess::new(&tree, &es, extra);
    agent.start();
    let writer = Writer::start(
        &tree,
        WriterSpec {
            pods: 4,
            lines: 40_000 * scale,
            per_second: 10_000,
            ..WriterSpec::default()
        },
    );
    for _ in 0..scale {
        std::thread::sleep(Duration::from_millis(1500));
        agent.kill9();
        std::thread::sleep(Duration::from_millis(200));
        for stream in es.with(|s| s.data_streams()) {
            es.rollover(&stream).expect("a data stream");
        }
        std::thread::sleep(Duration::from_millis(300));
        agent.start();
    }
    let total = writer.finish();
    wait_indexed(&es, total, Duration::from_secs(60 * scale));
    std::thread::sleep(Duration::from_millis(500));
    // The replays sent after the last restart went to the newest write index of each
    // stream holding lines, and the agent says which.
    let status = fetch(&agent.config.with_extension("log"), "/status")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
    let generation = format!("-{:06}", scale + 1);
    let took = &status["sink"]["replay_write_indices"];
    let streams: Vec<String> = es.with(|s| {
        s.data_streams()
            .into_iter()
            .filter(|d| s.count(d) > 0)
            .collect()
    });
    assert!(!streams.is_empty());
    for stream in streams {
        assert!(
            took[&stream]
                .as_str()
                .is_some_and(|i| i.ends_with(&generation)),
            "{stream}: {took}"
        );
    }
    agent.stop();
    assert_all_once(&es, total, &agent);
}

/// A slow cluster leaves a backlog far larger than what the agent reads ahead. After a
/// `kill -9`, only what the checkpoints reserved may have been sent: that is looked up in
/// Elasticsearch, not the whole backlog, and every line is still indexed once across a
/// rollover.
pub fn a_crash_with_a_backlog_looks_up_only_what_was_reserved(scale: u64) {
    let es = EsServer::start();
    es.faults(|f| f.latency = Duration::from_millis(300));
    let tree = Tree::new();
    let log = tree.container("chaos", "pod0", "app");
    let total = 400_000 * scale;
    for from in (0..total).step_by(50_000) {
        log.append(seq_lines(from, 50_000.min(total - from)).as_bytes());
    }
    let size = fs::metadata(log.dir.join("0.log")).unwrap().len();
    let mut agent = one_request_at_a_time(&tree, &es);
    agent.start();
    let checkpoints = tree.state_dir().join("checkpoints.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    while committed_bytes(&checkpoints) == 0 {
        assert!(
            Instant::now() < deadline,
            "nothing committed\n{}",
            agent.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    agent.kill9();
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(&checkpoints).unwrap()).unwrap();
    let entry = &state["files"][0];
    let (offset, reserved) = (
        entry["offset"].as_u64().unwrap(),
        entry["reserved"].as_u64().unwrap(),
    );
    let ahead = 16 << 20;
    assert!(
        reserved > offset && reserved <= offset + 2 * ahead && reserved < size,
        "committed {offset}, reserved {reserved}, file {size}"
    );
    for stream in es.with(|s| s.data_streams()) {
        es.rollover(&stream).expect("a data stream");
    }
    es.faults(|f| f.latency = Duration::ZERO);
    agent.start();
    let got = wait_indexed(&es, total, Duration::from_secs(60 * scale));
    assert_eq!(got, total, "indexed of written\n{}", agent.log_tail());
    let metrics = fetch(&agent.config.with_extension("log"), "/metrics")
        .map(|(_, m)| m)
        .unwrap_or_default();
    let checked = sample(&metrics, "logferry_elasticsearch_replays_checked_total").unwrap_or(0);
    let line = size / total;
    // A request holding a replay is looked up whole: up to a batch beyond the window.
    let window = (reserved - offset).div_ceil(line);
    let backlog = (size - offset) / line;
    assert!(
        checked > 0 && checked <= window + 2000 && window < backlog,
        "{checked} looked up, {window} lines reserved past the checkpoint, {backlog} not committed"
    );
    agent.stop();
    assert_all_once(&es, total, &agent);
    println!("crash with a backlog: {checked} of {backlog} uncommitted lines looked up");
}
