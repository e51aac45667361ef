//! The end-to-end load benchmark: the real `logferry` binary reads a generated kubelet-style
//! tree, takes pod metadata from the in-tree Kubernetes API server and ships gzip bulk
//! requests to the in-tree Elasticsearch server (which validates every request and keeps
//! only ids). Both servers run in this process, so the agent's process is measured alone:
//! CPU from `wait4`, peak RSS, wall time until the server holds every document, and an
//! exactly-once check of every document's `seq=` marker.
//!
//! ```text
//! cargo bench --bench end_to_end                       # the reference workload, 3 runs
//! cargo bench --bench end_to_end -- --pods 500 --runs 1
//! cargo bench --bench end_to_end -- --live 20000 --seconds 60
//! cargo bench --bench end_to_end -- --idle 600 --pods 500
//! # Pressure: a cluster that rejects, one with a write capacity, an outage.
//! cargo bench --bench end_to_end -- --live 5000 --item-429 0.3 --request-429 0.2
//! cargo bench --bench end_to_end -- --live 6000 --capacity 4000
//! cargo bench --bench end_to_end -- --live 10000 --outage-at 5 --outage-seconds 15
//! cargo bench --bench end_to_end -- --latency-ms 200 --max-in-flight 2
//! cargo bench --bench end_to_end -- --live 20000 --pods 4 --rotate-kib 1024 --copytruncate
//! ```
//! Under `cargo test` (no `--bench` argument) it runs each mode once on a small scale and
//! fails on any lost or repeated document, so it cannot rot.

use clap::Parser;
use logferry_testkit::es_server::EsServer;
use logferry_testkit::kube_server::{KubeServer, PodSpec};
use logferry_testkit::workload::{self, Generator, PodLog, Spec};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NODE: &str = "bench-node";

#[derive(Parser, Debug, Clone)]
#[command(about = "logferry end-to-end load benchmark")]
struct Args {
    /// CRI lines to pre-write (stack-trace lines and partial chunks included).
    #[arg(long, default_value_t = 2_000_000)]
    lines: u64,
    /// Containers (one per pod), each with its own log file.
    #[arg(long, default_value_t = 20)]
    pods: usize,
    /// Mean message size in bytes.
    #[arg(long, default_value_t = 200)]
    message_size: usize,
    /// gzip level of the bulk requests (0 = uncompressed); the agent's default.
    #[arg(long, default_value_t = 3)]
    gzip_level: u32,
    /// Repetitions; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Without the Kubernetes API (metadata from paths only).
    #[arg(long)]
    no_kubernetes: bool,
    /// Live mode: write this many lines per second, rotating files, and measure lag.
    #[arg(long, value_name = "LINES_PER_SECOND")]
    live: Option<u64>,
    /// How long live mode writes.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Live mode rotates a file past this size, keeping 4 rotated files (kubelet's default
    /// is 10 MiB and 5 files).
    #[arg(long, default_value_t = 10 * 1024)]
    rotate_kib: u64,
    /// Live mode rotates as logrotate's `copytruncate` does (copy, then truncate in place)
    /// instead of kubelet's rename.
    #[arg(long)]
    copytruncate: bool,
    /// Live mode: as kubelet does at each rotation, the previous rotated file is gzipped
    /// (through `.tmp`) and the original deleted.
    #[arg(long)]
    kubelet_gzip: bool,
    /// Live mode: share of bulk items the cluster answers 429 `es_rejected_execution_exception`.
    #[arg(long, default_value_t = 0.0)]
    item_429: f64,
    /// Live mode: share of bulk requests answered 429 or 503 as a whole.
    #[arg(long, default_value_t = 0.0)]
    request_429: f64,
    /// Added to each bulk answer, in milliseconds (a cluster far away or busy).
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Overrides the agent's `max_in_flight` (default: the agent's default).
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Live mode: the cluster's write capacity in documents a second (items beyond: 429).
    #[arg(long, default_value_t = 0)]
    capacity: u32,
    /// Live mode: the cluster goes away (connections refused) this many seconds in…
    #[arg(long)]
    outage_at: Option<u64>,
    /// …for this long.
    #[arg(long, default_value_t = 15)]
    outage_seconds: u64,
    /// Idle mode: follow the files without writing for this many seconds, and report CPU
    /// and memory growth.
    #[arg(long, value_name = "SECONDS")]
    idle: Option<u64>,
    /// Where to write the JSON report (default: target/logferry-bench/<mode>.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// The agent binary (default: the one cargo built with this benchmark).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Lines appended to the agent's config (TOML), e.g. `[source.logfmt]\nenabled = false`
    /// to measure what a feature costs.
    #[arg(long)]
    extra_config: Option<String>,
    /// The multiline presets, comma-separated (default: the agent's default, all three).
    #[arg(long, default_value = "java,python,go")]
    presets: String,
    /// Keep the generated tree and agent logs here instead of a temp dir.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if !argv.iter().any(|a| a == "--bench") {
        return quick_check();
    }
    let args = Args::parse_from(argv);
    let report = if let Some(rate) = args.live {
        live(&args, rate)
    } else if let Some(secs) = args.idle {
        idle(&args, secs)
    } else {
        throughput(&args)
    };
    let path = args.json.clone().unwrap_or_else(|| {
        let mode = report["mode"].as_str().unwrap_or("run").to_string();
        PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("../logferry-bench")
            .join(format!("{mode}.json"))
    });
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).expect("create the report's directory");
    }
    fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).expect("write the report");
    println!("report: {}", path.display());
}

/// `cargo test`: every mode once, small, with the exactly-once check.
fn quick_check() {
    let mut args = Args::parse_from(["end_to_end"]);
    args.lines = 20_000;
    args.pods = 5;
    args.runs = 1;
    throughput(&args);
    args.pods = 3;
    args.seconds = 3;
    args.rotate_kib = 256;
    live(&args, 2_000);
    // Each pressure once, small: the exactly-once check holds through them.
    let mut pressed = args.clone();
    pressed.item_429 = 0.3;
    pressed.request_429 = 0.2;
    live(&pressed, 2_000);
    let mut pressed = args.clone();
    pressed.capacity = 1_500;
    live(&pressed, 2_000);
    let mut pressed = args.clone();
    (pressed.outage_at, pressed.outage_seconds) = (Some(1), 1);
    live(&pressed, 2_000);
    idle(&args, 1);
}

// ---------------------------------------------------------------------------------------
// What the servers saw.

/// Every document the Elasticsearch server accepted, checked off by pod and `seq`.
#[derive(Default)]
struct Tracker {
    pods: HashMap<String, usize>,
    seen: Vec<Vec<u64>>,
    docs: u64,
    repeated: u64,
    unmarked: u64,
    /// Write (CRI timestamp) to acceptance, in microseconds; live mode only.
    lags_us: Vec<u32>,
    track_lag: bool,
}

impl Tracker {
    fn new(pods: &[PodLog], track_lag: bool) -> Tracker {
        Tracker {
            pods: pods
                .iter()
                .enumerate()
                .map(|(i, p)| (p.name.clone(), i))
                .collect(),
            seen: vec![Vec::new(); pods.len()],
            track_lag,
            ..Default::default()
        }
    }

    fn observe(&mut self, doc: &Map<String, Value>) {
        if self.track_lag {
            if let Some(t) = doc["@timestamp"].as_str().and_then(workload::unix_nanos) {
                let lag = workload::now_nanos().saturating_sub(t) / 1_000;
                self.lags_us.push(lag.min(u32::MAX as u64) as u32);
            }
        }
        let pod = doc
            .get("kubernetes")
            .and_then(|k| k["pod"]["name"].as_str())
            .and_then(|p| self.pods.get(p).copied());
        let text = doc
            .get("message")
            .and_then(Value::as_str)
            .and_then(|m| workload::seq_of(m.as_bytes()))
            .or_else(|| {
                doc.get("json")
                    .and_then(|j| j["msg"].as_str())
                    .and_then(|m| workload::seq_of(m.as_bytes()))
            });
        let (Some(pod), Some(seq)) = (pod, text) else {
            self.unmarked += 1;
            return;
        };
        let bits = &mut self.seen[pod];
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        if bits[word] & bit != 0 {
            self.repeated += 1;
        } else {
            bits[word] |= bit;
            self.docs += 1;
        }
    }

    /// Documents of each pod's `0..docs` that never arrived.
    fn missing(&self, pods: &[PodLog]) -> u64 {
        let mut missing = 0u64;
        for (i, p) in pods.iter().enumerate() {
            let have: u64 = self.seen[i].iter().map(|w| u64::from(w.count_ones())).sum();
            missing += p.docs - have.min(p.docs);
        }
        missing
    }

    /// Panics unless each pod's `0..docs` arrived exactly once.
    fn assert_exactly_once(&self, pods: &[PodLog]) {
        let missing = self.missing(pods);
        assert!(
            missing == 0 && self.repeated == 0 && self.unmarked == 0,
            "exactly-once violated: {missing} missing, {} repeated, {} without a marker",
            self.repeated,
            self.unmarked
        );
    }
}

struct Servers {
    es: EsServer,
    _kube: Option<KubeServer>,
    tracker: Arc<Mutex<Tracker>>,
    kubeconfig: Option<PathBuf>,
}

fn start_servers(args: &Args, dir: &Path, pods: &[PodLog], track_lag: bool) -> Servers {
    let es = EsServer::start();
    es.faults(|f| f.latency = Duration::from_millis(args.latency_ms));
    let tracker = Arc::new(Mutex::new(Tracker::new(pods, track_lag)));
    {
        let mut s = es.state.lock().unwrap();
        s.discard = true;
        let t = tracker.clone();
        s.observer = Some(Box::new(move |_, doc| t.lock().unwrap().observe(doc)));
    }
    let kube = (!args.no_kubernetes).then(|| {
        let api = KubeServer::start();
        for p in pods {
            api.add_pod(PodSpec {
                namespace: &p.namespace,
                name: &p.name,
                uid: &p.uid,
                node: NODE,
                containers: &[&p.container],
                labels: json!({ "app": p.name.rsplitn(3, '-').last().unwrap_or("app"), "app.kubernetes.io/part-of": "shop", "pod-template-hash": "7d4b9c5f8" }),
                annotations: json!({}),
                owner: Some(("ReplicaSet", "app-7d4b9c5f8")),
            });
        }
        api
    });
    let kubeconfig = kube.as_ref().map(|k| k.kubeconfig(dir));
    Servers {
        es,
        _kube: kube,
        tracker,
        kubeconfig,
    }
}

// ---------------------------------------------------------------------------------------
// The agent process.

fn agent_binary(args: &Args) -> PathBuf {
    args.agent
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_logferry")))
}

fn write_config(args: &Args, dir: &Path, servers: &Servers) -> PathBuf {
    let state = dir.join("state");
    let _ = fs::remove_dir_all(&state);
    let kube = match &servers.kubeconfig {
        Some(k) => format!(
            "enabled = true\nnode_name = \"{NODE}\"\nkubeconfig = \"{}\"",
            k.display()
        ),
        None => "enabled = false".into(),
    };
    let cfg = format!(
        r#"state_dir = "{state}"
host_name = "{NODE}"
[source]
include = ["{root}/var/log/containers/*.log"]
start_at = "beginning"
[source.multiline]
# Said here so that an older build compared runs the same (its default had none).
presets = [{presets}]
[kubernetes]
{kube}
[http]
enabled = false
[output]
type = "elasticsearch"
[output.elasticsearch]
endpoints = ["{url}"]
compression_level = {level}
{in_flight}
{extra}
"#,
        state = state.display(),
        root = dir.display(),
        url = servers.es.url,
        level = args.gzip_level,
        in_flight = args
            .max_in_flight
            .map_or(String::new(), |n| format!("max_in_flight = {n}")),
        presets = args
            .presets
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| format!("{p:?}"))
            .collect::<Vec<_>>()
            .join(", "),
        extra = args.extra_config.as_deref().unwrap_or(""),
    );
    let path = dir.join("agent.toml");
    fs::write(&path, cfg).expect("write the agent's config");
    path
}

/// The agent as a child process, measured.
struct Agent {
    pid: libc::pid_t,
    _child: std::process::Child,
}

/// CPU time and memory of the agent.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    cpu_s: f64,
    peak_rss_kib: u64,
}

impl Agent {
    fn spawn(args: &Args, config: &Path) -> Agent {
        let log = fs::File::create(config.with_extension("log")).expect("create the agent log");
        let child = Command::new(agent_binary(args))
            .args(["run", "--config"])
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("LOGFERRY_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the agent");
        Agent {
            pid: child.id() as libc::pid_t,
            _child: child,
        }
    }

    /// CPU seconds so far and current/peak RSS, from /proc.
    fn sample(&self) -> (f64, u64, u64) {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let cpu = (ticks(11) + ticks(12)) / hz;
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (cpu, kib("VmRSS:"), kib("VmHWM:"))
    }

    /// Context switches of all the agent's threads so far: each is a thread going to sleep
    /// or being put off the CPU, so their rate counts its wake-ups.
    fn context_switches(&self) -> u64 {
        let Ok(tasks) = fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return 0;
        };
        tasks
            .flatten()
            .filter_map(|t| fs::read_to_string(t.path().join("status")).ok())
            .flat_map(|status| {
                status
                    .lines()
                    .filter(|l| l.contains("ctxt_switches:"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    }

    fn alive(&self) -> bool {
        let mut status = 0;
        unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) == 0 }
    }

    /// SIGTERM, then the whole run's CPU time from `wait4`. The peak RSS is the agent's
    /// own `VmHWM`, read just before: `wait4`'s `ru_maxrss` also counts the memory of this
    /// process, which the child shared between fork and exec.
    fn stop(self) -> Usage {
        let (_, _, hwm) = self.sample();
        unsafe {
            libc::kill(self.pid, libc::SIGTERM);
        }
        let mut status = 0;
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(self.pid, &mut status, 0, &mut ru) };
        assert_eq!(r, self.pid, "wait4 on the agent");
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Usage {
            cpu_s: secs(ru.ru_utime) + secs(ru.ru_stime),
            peak_rss_kib: hwm,
        }
    }
}

/// Waits until the server holds `docs` documents; fails if the agent dies or stalls.
fn wait_delivered(agent: &Agent, servers: &Servers, docs: u64, dir: &Path) {
    assert!(
        wait_or_stall(agent, servers, docs, dir, Duration::from_secs(60)),
        "no progress for 60 s at {} of {docs} documents:\n{}",
        servers.tracker.lock().unwrap().docs,
        fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
    );
}

/// Waits until the server holds `docs` documents; false when nothing new arrived for
/// `stall` (lines lost); fails if the agent dies.
fn wait_or_stall(agent: &Agent, servers: &Servers, docs: u64, dir: &Path, stall: Duration) -> bool {
    let mut last = (0u64, Instant::now());
    loop {
        let n = servers.tracker.lock().unwrap().docs;
        if n >= docs {
            return true;
        }
        if n != last.0 {
            last = (n, Instant::now());
        }
        let log = || fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
        assert!(agent.alive(), "the agent exited early:\n{}", log());
        if last.1.elapsed() >= stall {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn work_dir(args: &Args) -> (PathBuf, Option<tempfile::TempDir>) {
    match &args.work_dir {
        Some(d) => {
            let _ = fs::remove_dir_all(d);
            fs::create_dir_all(d).expect("create the work dir");
            (d.clone(), None)
        }
        None => {
            let t = tempfile::tempdir().expect("temp dir");
            (t.path().to_path_buf(), Some(t))
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

// ---------------------------------------------------------------------------------------
// Throughput: a pre-written tree, read from the beginning.

fn throughput(args: &Args) -> Value {
    let (dir, _tmp) = work_dir(args);
    let spec = Spec {
        lines: args.lines,
        pods: args.pods,
        mean_message: args.message_size,
        seed: args.seed,
        ..Default::default()
    };
    let t = Instant::now();
    let (pods, written) = workload::generate(&dir, &spec);
    println!(
        "workload: {} lines, {} documents, {:.1} MiB in {} files (written in {:.1} s); gzip level {}; kubernetes {}",
        written.lines,
        written.docs,
        written.bytes as f64 / 1048576.0,
        pods.len(),
        t.elapsed().as_secs_f64(),
        args.gzip_level,
        if args.no_kubernetes { "off" } else { "on" },
    );
    println!(
        "{:>4} {:>8} {:>11} {:>13} {:>11} {:>9} {:>11} {:>9}",
        "run",
        "wall s",
        "lines/s",
        "lines/CPU-s",
        "µs CPU/line",
        "peak RSS",
        "gz B/line",
        "requests"
    );
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        let servers = start_servers(args, &dir, &pods, false);
        let config = write_config(args, &dir, &servers);
        let start = Instant::now();
        let agent = Agent::spawn(args, &config);
        wait_delivered(&agent, &servers, written.docs, &dir);
        let wall = start.elapsed().as_secs_f64();
        let usage = agent.stop();
        servers.tracker.lock().unwrap().assert_exactly_once(&pods);
        let (requests, sent, decoded, dup409) = servers.es.with(|s| {
            (
                s.bulk_requests,
                s.bulk_bytes,
                s.bulk_bytes_decoded,
                s.items_409,
            )
        });
        let lines = written.lines as f64;
        let r = json!({
            "run": run,
            "wall_s": wall,
            "lines_per_s": lines / wall,
            "cpu_s": usage.cpu_s,
            "lines_per_cpu_s": lines / usage.cpu_s,
            "cpu_us_per_line": usage.cpu_s * 1e6 / lines,
            "peak_rss_mib": usage.peak_rss_kib as f64 / 1024.0,
            "compressed_bytes_per_line": sent as f64 / lines,
            "raw_bytes_per_line": decoded as f64 / lines,
            "requests": requests,
            "duplicates_409": dup409,
        });
        print_row(&run.to_string(), &r);
        runs.push(r);
    }
    let med = |k: &str| median(runs.iter().map(|r| r[k].as_f64().unwrap_or(0.0)).collect());
    let summary = json!({
        "wall_s": med("wall_s"),
        "lines_per_s": med("lines_per_s"),
        "cpu_s": med("cpu_s"),
        "lines_per_cpu_s": med("lines_per_cpu_s"),
        "cpu_us_per_line": med("cpu_us_per_line"),
        "peak_rss_mib": med("peak_rss_mib"),
        "compressed_bytes_per_line": med("compressed_bytes_per_line"),
        "raw_bytes_per_line": med("raw_bytes_per_line"),
        "requests": med("requests"),
    });
    print_row("med", &summary);
    json!({
        "mode": "throughput",
        "workload": {
            "lines": written.lines, "documents": written.docs, "bytes": written.bytes,
            "pods": args.pods, "mean_message": args.message_size, "seed": args.seed,
            "gzip_level": args.gzip_level, "kubernetes": !args.no_kubernetes,
        },
        "runs": runs,
        "median": summary,
    })
}

fn print_row(label: &str, r: &Value) {
    let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
    println!(
        "{:>4} {:>8.2} {:>11.0} {:>13.0} {:>11.2} {:>5.1} MiB {:>11.1} {:>9.0}",
        label,
        f("wall_s"),
        f("lines_per_s"),
        f("lines_per_cpu_s"),
        f("cpu_us_per_line"),
        f("peak_rss_mib"),
        f("compressed_bytes_per_line"),
        f("requests"),
    );
}

// ---------------------------------------------------------------------------------------
// Live: a fixed write rate with kubelet-style rotation; lag from write to acceptance.

/// Appends to a pod's `0.log`, rotating it the way kubelet does: rename to
/// `0.log.<time>`, start a new `0.log`, delete the oldest beyond `keep`.
struct LiveFile {
    file: fs::File,
    size: u64,
    rotated: Vec<PathBuf>,
}

/// kubelet's compression of a rotated file; returns the `.gz` path.
fn gzip_like_kubelet(rotated: &Path) -> PathBuf {
    let name = rotated.file_name().unwrap().to_string_lossy().into_owned();
    let tmp = rotated.with_file_name(format!("{name}.tmp"));
    let gz = rotated.with_file_name(format!("{name}.gz"));
    let mut enc = flate2::write::GzEncoder::new(
        fs::File::create(&tmp).expect("tmp"),
        flate2::Compression::fast(),
    );
    enc.write_all(&fs::read(rotated).expect("rotated file"))
        .expect("gzip");
    enc.finish().expect("gzip");
    fs::rename(&tmp, &gz).expect("rename .tmp");
    fs::remove_file(rotated).expect("remove rotated");
    gz
}

fn live(args: &Args, rate: u64) -> Value {
    let (dir, _tmp) = work_dir(args);
    let mut pods = workload::layout(&dir, args.pods);
    let servers = start_servers(args, &dir, &pods, true);
    servers.es.faults(|f| {
        f.item_429_ratio = args.item_429;
        f.request_fail_ratio = args.request_429;
        f.write_capacity = args.capacity;
    });
    let config = write_config(args, &dir, &servers);
    let agent = Agent::spawn(args, &config);
    // Let it start and find the (empty) files before the clock starts.
    std::thread::sleep(Duration::from_millis(500));
    let (cpu0, _, _) = agent.sample();
    let spec = Spec {
        pods: args.pods,
        mean_message: args.message_size,
        seed: args.seed,
        ..Default::default()
    };
    let mut gen = Generator::new(&spec);
    let mut rng = workload::Rng::new(args.seed);
    let mut files: Vec<LiveFile> = pods
        .iter()
        .map(|p| LiveFile {
            file: fs::OpenOptions::new().append(true).open(&p.path).unwrap(),
            size: 0,
            rotated: vec![],
        })
        .collect();
    let rotate_at = args.rotate_kib * 1024;
    let (mut lines, mut docs, mut rotations) = (0u64, 0u64, 0u64);
    let mut rss_samples = Vec::new();
    let start = Instant::now();
    let duration = Duration::from_secs(args.seconds);
    let mut buf = Vec::new();
    let outage = args.outage_at.map(|at| {
        (
            Duration::from_secs(at),
            Duration::from_secs(at + args.outage_seconds),
        )
    });
    // When the cluster came back, and how many documents were written by then.
    let mut back: Option<(Instant, u64)> = None;
    let mut recovered_s: Option<f64> = None;
    let watch_recovery = |back: Option<(Instant, u64)>, recovered_s: &mut Option<f64>| {
        if let Some((at, backlog)) = back {
            if recovered_s.is_none() && servers.tracker.lock().unwrap().docs >= backlog {
                *recovered_s = Some(at.elapsed().as_secs_f64());
            }
        }
    };
    while start.elapsed() < duration {
        if let Some((down_at, up_at)) = outage {
            let t = start.elapsed();
            if t >= down_at && t < up_at && back.is_none() {
                servers.es.set_down(true);
            } else if t >= up_at && back.is_none() {
                servers.es.set_down(false);
                back = Some((Instant::now(), docs));
            }
        }
        watch_recovery(back, &mut recovered_s);
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        gen.set_clock(workload::now_nanos());
        while lines < due {
            let i = rng.below(pods.len() as u64) as usize;
            buf.clear();
            let w = gen.document(&mut pods[i], &mut buf);
            let f = &mut files[i];
            f.file.write_all(&buf).expect("append");
            f.size += buf.len() as u64;
            lines += w.lines;
            docs += w.docs;
            if f.size >= rotate_at {
                rotations += 1;
                let to = pods[i].path.with_extension(format!("log.{rotations:06}"));
                if args.copytruncate {
                    fs::copy(&pods[i].path, &to).expect("copy");
                    f.file.set_len(0).expect("truncate");
                } else {
                    if args.kubelet_gzip {
                        if let Some(prev) = f.rotated.last_mut() {
                            *prev = gzip_like_kubelet(prev);
                        }
                    }
                    fs::rename(&pods[i].path, &to).expect("rotate");
                    f.file = fs::File::create(&pods[i].path).expect("new 0.log");
                }
                f.size = 0;
                f.rotated.push(to);
                if f.rotated.len() > 4 {
                    let _ = fs::remove_file(f.rotated.remove(0));
                }
            }
        }
        if rss_samples.len() < (start.elapsed().as_secs() as usize) {
            rss_samples.push(agent.sample().1);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let wrote_for = start.elapsed().as_secs_f64();
    if back.is_none() && outage.is_some() {
        servers.es.set_down(false);
        back = Some((Instant::now(), docs));
    }
    while back.is_some() && recovered_s.is_none() {
        watch_recovery(back, &mut recovered_s);
        assert!(agent.alive(), "the agent exited early");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Lines lost (a generation never read) never arrive: report them rather than wait.
    wait_or_stall(&agent, &servers, docs, &dir, Duration::from_secs(20));
    let drained = start.elapsed().as_secs_f64();
    let (cpu1, _, _) = agent.sample();
    let usage = agent.stop();
    let t = servers.tracker.lock().unwrap();
    let (lost, repeated) = (t.missing(&pods), t.repeated);
    if lost + repeated > 0 {
        println!("live: {lost} documents lost, {repeated} repeated, of {docs}");
    }
    let mut lags = t.lags_us.clone();
    lags.sort_unstable();
    let pct = |p: f64| {
        lags.get(((lags.len() as f64 - 1.0) * p).round() as usize)
            .map_or(0.0, |&us| us as f64 / 1e6)
    };
    let cpu = cpu1 - cpu0;
    let (items_sent, items_429) = servers.es.with(|s| (s.bulk_items, s.items_429));
    let bound = (args.capacity > 0).then(|| docs as f64 / f64::from(args.capacity));
    let r = json!({
        "mode": "live",
        "rate": rate,
        "pressure": {
            "item_429": args.item_429, "request_429": args.request_429,
            "capacity": args.capacity, "outage_at": args.outage_at,
            "outage_seconds": args.outage_at.map(|_| args.outage_seconds),
        },
        "seconds_after_writing": drained - wrote_for,
        "items_sent_per_document": items_sent as f64 / docs.max(1) as f64,
        "items_429": items_429,
        "capacity_bound_s": bound,
        "time_over_capacity_bound": bound.map(|b| drained / b),
        "recovery_after_outage_s": recovered_s,
        "documents_lost": lost,
        "documents_repeated": repeated,
        "seconds_writing": wrote_for,
        "seconds_until_drained": drained,
        "lines": lines,
        "documents": docs,
        "rotations": rotations,
        "rotation": if args.copytruncate { "copytruncate" } else if args.kubelet_gzip { "rename, gzip previous" } else { "rename" },
        "lag_p50_s": pct(0.50),
        "lag_p95_s": pct(0.95),
        "lag_max_s": lags.last().map_or(0.0, |&us| us as f64 / 1e6),
        "cpu_s": cpu,
        "cpu_s_per_1000_lines": cpu * 1000.0 / lines.max(1) as f64,
        "cpu_share_of_core": cpu / drained,
        "peak_rss_mib": usage.peak_rss_kib as f64 / 1024.0,
        "rss_mib_per_second": rss_samples.iter().map(|&k| k as f64 / 1024.0).collect::<Vec<_>>(),
    });
    println!(
        "live: {rate} lines/s for {wrote_for:.0} s, {lines} lines, {docs} documents, {rotations} rotations\n\
         lag write → accepted: p50 {:.3} s, p95 {:.3} s, max {:.3} s\n\
         CPU {:.2} s = {:.4} s per 1,000 lines ({:.1}% of a core); peak RSS {:.1} MiB\n\
         drained {:.1} s after writing ended; {:.3} items sent per document ({} answered 429){}{}",
        r["lag_p50_s"].as_f64().unwrap(),
        r["lag_p95_s"].as_f64().unwrap(),
        r["lag_max_s"].as_f64().unwrap(),
        cpu,
        r["cpu_s_per_1000_lines"].as_f64().unwrap(),
        100.0 * r["cpu_share_of_core"].as_f64().unwrap(),
        r["peak_rss_mib"].as_f64().unwrap(),
        drained - wrote_for,
        r["items_sent_per_document"].as_f64().unwrap(),
        items_429,
        bound.map_or(String::new(), |b| format!(
            "; done in {drained:.1} s = {:.3} × the capacity's {b:.1} s",
            drained / b
        )),
        recovered_s.map_or(String::new(), |s| format!(
            "; backlog indexed {s:.2} s after the cluster came back"
        )),
    );
    // After the report: a run that lost or repeated a line fails.
    t.assert_exactly_once(&pods);
    r
}

// ---------------------------------------------------------------------------------------
// Idle: files followed, nothing written.

fn idle(args: &Args, seconds: u64) -> Value {
    let (dir, _tmp) = work_dir(args);
    let spec = Spec {
        lines: args.pods as u64 * 10,
        pods: args.pods,
        mean_message: args.message_size,
        seed: args.seed,
        giant_every: 0,
        ..Default::default()
    };
    let (pods, written) = workload::generate(&dir, &spec);
    let servers = start_servers(args, &dir, &pods, false);
    let config = write_config(args, &dir, &servers);
    let agent = Agent::spawn(args, &config);
    wait_delivered(&agent, &servers, written.docs, &dir);
    // Past the first flush and checkpoint: what is left is the steady state.
    std::thread::sleep(Duration::from_secs(3));
    let (cpu0, rss0, _) = agent.sample();
    let switches0 = agent.context_switches();
    let step = Duration::from_secs(seconds.clamp(1, 10));
    let start = Instant::now();
    let mut rss = vec![rss0];
    while start.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(step);
        rss.push(agent.sample().1);
    }
    let (cpu1, rss1, _) = agent.sample();
    let wakeups = (agent.context_switches() - switches0) as f64;
    let elapsed = start.elapsed().as_secs_f64();
    let usage = agent.stop();
    servers.tracker.lock().unwrap().assert_exactly_once(&pods);
    let share = (cpu1 - cpu0) / elapsed;
    println!(
        "idle: {} files followed for {elapsed:.0} s: {:.3}% of a core, {:.1} wake-ups/s; RSS {:.1} → {:.1} MiB (peak {:.1} MiB)",
        pods.len(),
        share * 100.0,
        wakeups / elapsed,
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        usage.peak_rss_kib as f64 / 1024.0,
    );
    json!({
        "mode": "idle",
        "files": pods.len(),
        "seconds": elapsed,
        "cpu_share_of_core": share,
        "wakeups_per_second": wakeups / elapsed,
        "rss_start_mib": rss0 as f64 / 1024.0,
        "rss_end_mib": rss1 as f64 / 1024.0,
        "rss_mib_samples": rss.iter().map(|&k| k as f64 / 1024.0).collect::<Vec<_>>(),
        "peak_rss_mib": usage.peak_rss_kib as f64 / 1024.0,
    })
}
