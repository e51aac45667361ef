//! Test support: a kubelet-style log tree in a temp dir, CRI/Docker line writers, and the
//! pipeline run in-process with its stdout captured.
#![allow(dead_code)]

use logferry::config::Config;
use logferry::pipeline::{self, RunOptions, Summary};
use serde_json::Value;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `/var/log/containers` and `/var/log/pods` under a temp dir.
pub struct Tree {
    pub root: tempfile::TempDir,
    pub containers: PathBuf,
    pub pods: PathBuf,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    pub fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let containers = root.path().join("var/log/containers");
        let pods = root.path().join("var/log/pods");
        fs::create_dir_all(&containers).unwrap();
        fs::create_dir_all(&pods).unwrap();
        Tree {
            root,
            containers,
            pods,
        }
    }

    pub fn glob(&self) -> String {
        format!("{}/*.log", self.containers.display())
    }

    /// A container's log as kubelet lays it out: `pods/<ns>_<pod>_<uid>/<c>/0.log` and a
    /// symlink to it in `containers/`. The file is created empty.
    /// `n` pods `<prefix>0`… in namespace `ns`, one container `app` each.
    pub fn containers(&self, prefix: &str, n: usize) -> Vec<ContainerLog> {
        (0..n)
            .map(|p| self.container("ns", &format!("{prefix}{p}"), "app"))
            .collect()
    }

    pub fn container(&self, ns: &str, pod: &str, container: &str) -> ContainerLog {
        let uid = format!("uid-{pod}");
        let dir = self.pods.join(format!("{ns}_{pod}_{uid}")).join(container);
        fs::create_dir_all(&dir).unwrap();
        let id: String = format!("{:0>64}", format!("{:x}", fxhash(pod.as_bytes())));
        let link = self
            .containers
            .join(format!("{pod}_{ns}_{container}-{id}.log"));
        let log = ContainerLog { dir, link };
        fs::File::create(log.path()).unwrap();
        std::os::unix::fs::symlink(log.path(), &log.link).unwrap();
        log
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.path().join("state")
    }
}

fn fxhash(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, &c| {
        (h ^ c as u64).wrapping_mul(0x100000001b3)
    })
}

pub struct ContainerLog {
    pub dir: PathBuf,
    pub link: PathBuf,
}

impl ContainerLog {
    pub fn path(&self) -> PathBuf {
        self.dir.join("0.log")
    }

    pub fn append(&self, data: &[u8]) {
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.path())
            .unwrap();
        f.write_all(data).unwrap();
    }

    pub fn append_lines(&self, lines: &[String]) {
        let mut data = String::new();
        for l in lines {
            data.push_str(l);
            data.push('\n');
        }
        self.append(data.as_bytes());
    }

    /// kubelet's rotation: rename `0.log` away and start a new empty one.
    pub fn rotate(&self, n: usize) {
        fs::rename(self.path(), self.dir.join(format!("0.log.{n:08}"))).unwrap();
        fs::File::create(self.path()).unwrap();
    }
}

/// kubelet's compression of a rotated file: gzipped to `.tmp`, renamed to `.gz`, and the
/// original deleted.
pub fn gzip_like_kubelet(rotated: &Path) {
    let name = rotated.file_name().unwrap().to_string_lossy().into_owned();
    let tmp = rotated.with_file_name(format!("{name}.tmp"));
    let mut enc =
        flate2::write::GzEncoder::new(fs::File::create(&tmp).unwrap(), flate2::Compression::fast());
    enc.write_all(&fs::read(rotated).unwrap()).unwrap();
    enc.finish().unwrap();
    fs::rename(&tmp, rotated.with_file_name(format!("{name}.gz"))).unwrap();
    fs::remove_file(rotated).unwrap();
}

static CLOCK: AtomicU64 = AtomicU64::new(0);

/// A CRI line with a unique, increasing timestamp.
pub fn cri(stream: &str, tag: &str, content: &str) -> String {
    let n = CLOCK.fetch_add(1, Ordering::Relaxed);
    format!(
        "2026-11-30T10:{:02}:{:02}.{:09}Z {stream} {tag} {content}",
        (n / 60_000_000) % 60,
        (n / 1_000_000) % 60,
        n % 1_000_000
    )
}

/// A Docker json-file line.
pub fn docker(stream: &str, log: &str) -> String {
    let n = CLOCK.fetch_add(1, Ordering::Relaxed);
    serde_json::json!({
        "log": log,
        "stream": stream,
        "time": format!("2026-11-30T11:00:00.{:09}Z", n % 1_000_000_000),
    })
    .to_string()
}

/// The message of sequence line `n`.
pub fn seq_msg(n: u64) -> String {
    format!("seq={n:08} the quick brown fox jumps over the lazy dog")
}

/// CRI stdout lines carrying sequence numbers `from..from + n`, newline-terminated.
pub fn seq_lines(from: u64, n: u64) -> String {
    (from..from + n)
        .map(|i| cri("stdout", "F", &seq_msg(i)) + "\n")
        .collect()
}

/// Sequence numbers found in the documents' messages.
pub fn seqs(docs: &[Value]) -> Vec<u64> {
    docs.iter()
        .filter_map(|d| {
            let m = d["message"].as_str()?;
            let i = m.find("seq=")?;
            m[i + 4..i + 12].parse().ok()
        })
        .collect()
}

/// Settings that make tests fast; every wait in a test is bounded and polls.
pub fn test_config(include: Vec<String>) -> Config {
    let mut c = Config::default();
    c.source.include = include;
    c.source.rescan_interval = Duration::from_millis(100);
    c.source.max_idle_poll = Duration::from_millis(20);
    c.source.rotate_wait = Duration::from_millis(300);
    c.source.multiline.flush_timeout = Duration::from_millis(200);
    c.checkpoint.interval = Duration::from_millis(50);
    c.host_name = "test-node".into();
    c
}

#[derive(Clone, Default)]
pub struct SharedBuf(pub Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The pipeline running on its own thread, printing into a buffer.
pub struct Agent {
    out: SharedBuf,
    pub stats: Arc<logferry::stats::Stats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<Summary, pipeline::PipelineError>>>,
}

pub const WAIT: Duration = Duration::from_secs(30);

impl Agent {
    pub fn start(cfg: Config, state_dir: Option<&Path>) -> Agent {
        Self::start_with(cfg, state_dir, false)
    }

    pub fn start_with(cfg: Config, state_dir: Option<&Path>, once: bool) -> Agent {
        let out = SharedBuf::default();
        let stats = Arc::new(logferry::stats::Stats::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let opts = RunOptions {
            once,
            state_dir: state_dir.map(Path::to_path_buf),
            output: Box::new(out.clone()),
            host_name: cfg.host_name.clone(),
            stats: stats.clone(),
            health: Default::default(),
            resume: None,
            pods: None,
        };
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(pipeline::run(&cfg, opts, async {
                let _ = rx.await;
            }))
        });
        Agent {
            out,
            stats,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// Every document printed so far.
    pub fn docs(&self) -> Vec<Value> {
        let data = self.out.0.lock().unwrap().clone();
        parse_docs(&data)
    }

    /// Waits until `pred` holds for the documents, or fails the test after `WAIT`.
    pub fn wait_until(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let docs = self.docs();
            if pred(&docs) {
                return docs;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; have {} documents",
                    docs.len()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until a counter reaches `n`, or fails the test after `WAIT`.
    pub fn wait_stat(&self, what: &str, counter: impl Fn(&logferry::stats::Stats) -> u64, n: u64) {
        let deadline = Instant::now() + WAIT;
        while counter(&self.stats) < n {
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}: {} < {n}",
                    counter(&self.stats)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn wait_for(&self, n: usize) -> Vec<Value> {
        self.wait_until(&format!("{n} documents"), |d| d.len() >= n)
    }

    /// Stops like SIGTERM does and returns the run's summary.
    pub fn stop(mut self) -> Summary {
        let _ = self.stop.take().unwrap().send(());
        self.thread
            .take()
            .unwrap()
            .join()
            .unwrap()
            .expect("pipeline failed")
    }

    /// Waits for a `once` run to end by itself.
    pub fn finish(mut self) -> (Summary, Vec<Value>) {
        let summary = self
            .thread
            .take()
            .unwrap()
            .join()
            .unwrap()
            .expect("pipeline failed");
        let docs = self.docs();
        (summary, docs)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// NDJSON documents; `{"create":…}` action lines of the bulk format are skipped, and so is
/// a last line without its newline (still being written by a running agent).
pub fn parse_docs(data: &[u8]) -> Vec<Value> {
    let complete = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    data[..complete]
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_slice::<Value>(l)
                .unwrap_or_else(|e| panic!("bad document {e}: {}", String::from_utf8_lossy(l)))
        })
        .filter(|v| v.get("create").is_none())
        .collect()
}

/// Sends SIGTERM, as Kubernetes does to stop a pod.
pub fn sigterm(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// The numbers of `0..n` missing from `got`, and those in it more than once (or outside).
pub fn loss_and_repeats(got: &[u64], n: u64) -> (Vec<u64>, Vec<u64>) {
    let mut seen = vec![0u32; n as usize];
    let mut outside = Vec::new();
    for &s in got {
        match seen.get_mut(s as usize) {
            Some(c) => *c += 1,
            None => outside.push(s),
        }
    }
    let missing = (0..n).filter(|&i| seen[i as usize] == 0).collect();
    let mut repeated: Vec<u64> = (0..n).filter(|&i| seen[i as usize] > 1).collect();
    repeated.extend(outside);
    (missing, repeated)
}

/// Asserts that `got` holds each of `0..n` exactly once; `context` is shown on failure.
pub fn assert_exactly_once_or(got: &[u64], n: u64, context: &str) {
    let (missing, repeated) = loss_and_repeats(got, n);
    assert!(
        missing.is_empty() && repeated.is_empty(),
        "{} missing (first {:?}), {} repeated (first {:?}) of {n}\n{context}",
        missing.len(),
        &missing[..missing.len().min(10)],
        repeated.len(),
        &repeated[..repeated.len().min(10)]
    );
}

/// Asserts that `got` holds each of `0..n` exactly once.
pub fn assert_exactly_once(got: &[u64], n: u64) {
    assert_exactly_once_or(got, n, "");
}

#[allow(unused_imports)]
pub use logferry_testkit::{es_server, kube_server, serve};

/// The Elasticsearch the tests talk to: the in-tree server, or a real cluster when
/// `LOGFERRY_TEST_ES_URL` is set (tests that need injected faults skip themselves then).
pub enum Es {
    InTree(es_server::EsServer),
    Real(String),
}

impl Es {
    pub fn new() -> Es {
        match std::env::var("LOGFERRY_TEST_ES_URL") {
            Ok(url) if !url.is_empty() => Es::Real(url),
            _ => Es::InTree(es_server::EsServer::start()),
        }
    }

    pub fn url(&self) -> String {
        match self {
            Es::InTree(s) => s.url.clone(),
            Es::Real(u) => u.clone(),
        }
    }

    pub fn in_tree(&self) -> Option<&es_server::EsServer> {
        match self {
            Es::InTree(s) => Some(s),
            Es::Real(_) => None,
        }
    }

    /// One HTTP call with a JSON body; returns the status and the JSON reply.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.send(
            method,
            path,
            "application/json",
            body.map(|b| b.to_string()),
        )
    }

    /// A raw bulk request with an NDJSON body, as given.
    pub fn bulk_raw(&self, body: &str) -> (u16, Value) {
        self.send(
            "POST",
            "/_bulk",
            "application/x-ndjson",
            Some(body.to_string()),
        )
    }

    /// Any request with a body, as given.
    pub fn send_raw(
        &self,
        method: &str,
        path: &str,
        content_type: &'static str,
        body: String,
    ) -> (u16, Value) {
        self.send(method, path, content_type, Some(body))
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        content_type: &'static str,
        body: Option<String>,
    ) -> (u16, Value) {
        use elasticsearch::http::headers::{HeaderMap, HeaderValue, CONTENT_TYPE};
        use elasticsearch::http::transport::Transport;
        use elasticsearch::http::Method;
        let t = Transport::single_node(&self.url()).unwrap();
        let m = match method {
            "GET" => Method::Get,
            "PUT" => Method::Put,
            "POST" => Method::Post,
            "DELETE" => Method::Delete,
            _ => panic!("method {method}"),
        };
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let resp = t
                .send(m, path, headers, None::<&()>, body, None)
                .await
                .expect("Elasticsearch answers");
            let status = resp.status_code().as_u16();
            let text = resp.text().await.unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        })
    }

    pub fn count(&self, index: &str) -> u64 {
        self.call("POST", &format!("/{index}/_refresh"), None);
        let (status, v) = self.call("GET", &format!("/{index}/_count"), None);
        if status == 404 {
            return 0;
        }
        v["count"].as_u64().unwrap_or(0)
    }

    /// Every document of an index or data stream (at most 10,000).
    pub fn docs(&self, index: &str) -> Vec<Value> {
        self.call("POST", &format!("/{index}/_refresh"), None);
        let (_, v) = self.call(
            "POST",
            &format!("/{index}/_search"),
            Some(serde_json::json!({"size": 10000, "query": {"match_all": {}}})),
        );
        v["hits"]["hits"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|h| h["_source"].clone())
            .collect()
    }

    /// Waits until the index holds `n` documents, or fails the test after `WAIT`.
    pub fn wait_count(&self, index: &str, n: u64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let c = self.count(index);
            if c >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out: {c} of {n} documents in {index}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A name no other test run uses, for data streams on a shared cluster.
pub fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{}", n % 10_000_000_000)
}

/// A config shipping `tree` to `es` into the data stream `logs-kubernetes-<namespace>`.
pub fn es_config(include: Vec<String>, es: &Es, namespace: &str) -> Config {
    let mut c = test_config(include);
    c.output.kind = logferry::config::OutputKind::Elasticsearch;
    let e = &mut c.output.elasticsearch;
    e.endpoints = vec![es.url()];
    e.namespace = namespace.into();
    e.flush_interval = Duration::from_millis(100);
    e.retry_initial_backoff = Duration::from_millis(50);
    e.retry_max_backoff = Duration::from_millis(500);
    e.request_timeout = Duration::from_secs(10);
    c
}
#[allow(dead_code)]
pub mod chaos;

/// `GET path` on the agent's HTTP endpoint (its address read from the agent's log):
/// the status code and the body.
pub fn fetch(log: &Path, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let text = fs::read_to_string(log).ok()?;
    // The last run's address: the log is appended to across restarts.
    let line = text.lines().rfind(|l| l.contains("serving /healthz"))?;
    let addr = line
        .split("addr=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '.' && c != ':');
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    let status = reply.split_whitespace().nth(1)?.parse().ok()?;
    let body = reply.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// The value of an unlabelled sample in a Prometheus text exposition.
pub fn sample(metrics: &str, name: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Peak resident memory of a process, in KiB (its own `VmHWM`; 0 if unreadable).
pub fn peak_rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
