//! Config reload in a running agent: SIGHUP, and a ConfigMap-style update of the file (a
//! symlink swap). The new config shows in the documents, every line lands exactly once
//! across the reload, and a config that does not load is refused with the old one kept.

mod support;

use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// A `logferry debug` process whose stdout and stderr are collected as they come.
struct Running {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
}

fn collect(mut from: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_logferry"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = collect(child.stdout.take().unwrap());
        let err = collect(child.stderr.take().unwrap());
        Running { child, out, err }
    }

    fn docs(&self) -> Vec<Value> {
        parse_docs(&self.out.lock().unwrap())
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    fn wait(&self, what: &str, done: impl Fn(&Running) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_docs(&self, n: usize) {
        self.wait(&format!("{n} documents"), |r| r.docs().len() >= n);
    }

    fn signal(&self, sig: libc::c_int) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn stop(mut self) -> (Vec<Value>, String) {
        sigterm(&self.child);
        let status = self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(status.success(), "{status}\n{}", self.log());
        (self.docs(), self.log())
    }
}

fn config(host: &str, extra: &str) -> String {
    format!(
        "host_name = \"{host}\"\n{extra}\n[source]\nrescan_interval = \"100ms\"\nmax_idle_poll = \"20ms\"\n\
         [checkpoint]\ninterval = \"50ms\"\n"
    )
}

fn host_of(d: &Value) -> &str {
    d["host"]["name"].as_str().unwrap()
}

/// Appends lines `from..to` in small steps, so that some are written while a reload runs.
fn write_slowly(c: &ContainerLog, from: u64, to: u64) {
    let mut at = from;
    while at < to {
        let n = 50.min(to - at);
        c.append(seq_lines(at, n).as_bytes());
        at += n;
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sighup_reloads_the_config_without_losing_or_repeating_a_line() {
    let tree = Tree::new();
    let c = tree.container("shop", "web-1", "app");
    let cfg = tree.root.path().join("logferry.toml");
    std::fs::write(&cfg, config("before", "[reload]\nwatch = false")).unwrap();
    c.append(seq_lines(0, 1000).as_bytes());
    // No state directory: the offsets carry over in memory.
    let agent = Running::start(&[
        "debug",
        "--config",
        cfg.to_str().unwrap(),
        "--from-beginning",
        &tree.glob(),
    ]);
    agent.wait_docs(1000);

    std::fs::write(&cfg, config("after", "[reload]\nwatch = false")).unwrap();
    agent.signal(libc::SIGHUP);
    write_slowly(&c, 1000, 2000);
    agent.wait("the reload", |r| r.log().contains("config reloaded"));
    write_slowly(&c, 2000, 3000);
    agent.wait_docs(3000);

    // A broken config is refused, naming the key; the running one stays.
    std::fs::write(
        &cfg,
        config(
            "broken",
            "[reload]\nwatch = false\n[source.multiline]\npresets = [\"cobol\"]",
        ),
    )
    .unwrap();
    agent.signal(libc::SIGHUP);
    agent.wait("the refusal", |r| r.log().contains("config not reloaded"));
    // A syntax error inside a multi-line password: refused, and the log does not quote it.
    std::fs::write(
        &cfg,
        config(
            "broken",
            "[reload]\nwatch = false\n[output.elasticsearch]\npassword = \"\"\"\nhunter2-reload \\q\n\"\"\"",
        ),
    )
    .unwrap();
    agent.signal(libc::SIGHUP);
    agent.wait("the second refusal", |r| {
        r.log().matches("config not reloaded").count() == 2
    });
    c.append(seq_lines(3000, 100).as_bytes());
    agent.wait_docs(3100);
    let (docs, log) = agent.stop();

    assert_exactly_once(&seqs(&docs), 3100);
    assert!(log.contains("source.multiline.presets[0]"), "{log}");
    assert!(log.contains("line 6"), "the error still says where: {log}");
    assert!(!log.contains("hunter2"), "{log}");
    assert_eq!(log.matches("config reloaded").count(), 1, "{log}");
    for d in &docs {
        let seq = seqs(std::slice::from_ref(d))[0];
        match seq {
            0..1000 => assert_eq!(host_of(d), "before"),
            2000.. => assert_eq!(host_of(d), "after", "seq {seq}"),
            _ => assert!(["before", "after"].contains(&host_of(d))),
        }
    }
    assert!(docs.iter().all(|d| host_of(d) != "broken"));
}

/// A ConfigMap volume: `logferry.toml -> ..data/logferry.toml`, `..data -> <version dir>`;
/// an update writes a new version dir and swaps `..data` in one rename.
struct ConfigMapVolume {
    dir: PathBuf,
    version: u32,
}

impl ConfigMapVolume {
    fn new(dir: &Path, text: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut v = ConfigMapVolume {
            dir: dir.to_path_buf(),
            version: 0,
        };
        v.update(text);
        std::os::unix::fs::symlink("..data/logferry.toml", dir.join("logferry.toml")).unwrap();
        v
    }

    fn update(&mut self, text: &str) {
        self.version += 1;
        let name = format!("..2026_11_30_v{}", self.version);
        std::fs::create_dir(self.dir.join(&name)).unwrap();
        std::fs::write(self.dir.join(&name).join("logferry.toml"), text).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }

    fn path(&self) -> PathBuf {
        self.dir.join("logferry.toml")
    }
}

#[test]
fn a_configmap_update_is_picked_up_without_a_signal() {
    let tree = Tree::new();
    let c = tree.container("shop", "api-1", "app");
    let watch = "[reload]\ninterval = \"100ms\"";
    let mut volume = ConfigMapVolume::new(&tree.root.path().join("etc"), &config("v1", watch));
    c.append(seq_lines(0, 500).as_bytes());
    let state = tree.state_dir();
    let agent = Running::start(&[
        "debug",
        "--config",
        volume.path().to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--from-beginning",
        &tree.glob(),
    ]);
    agent.wait_docs(500);
    volume.update(&config("v2", watch));
    write_slowly(&c, 500, 1500);
    agent.wait("the reload", |r| r.log().contains("config reloaded"));
    c.append(seq_lines(1500, 500).as_bytes());
    agent.wait_docs(2000);
    // Unchanged content (kubelet refreshing the volume) is not a reload.
    volume.update(&config("v2", watch));
    std::thread::sleep(Duration::from_millis(400));
    let (docs, log) = agent.stop();
    assert_exactly_once(&seqs(&docs), 2000);
    assert_eq!(log.matches("config reloaded").count(), 1, "{log}");
    assert!(log.contains("the file changed"), "{log}");
    let last = docs
        .iter()
        .find(|d| seqs(std::slice::from_ref(d)) == [1999])
        .unwrap();
    assert_eq!(host_of(last), "v2");
}

#[test]
fn a_deleted_pods_last_lines_keep_their_metadata_across_a_reload() {
    use support::kube_server::{KubeServer, PodSpec};
    let api = KubeServer::start();
    api.add_pod(PodSpec {
        namespace: "batch",
        name: "job-1",
        uid: "uid-job-1",
        node: "node-a",
        containers: &["app"],
        labels: serde_json::json!({ "app": "nightly" }),
        annotations: serde_json::json!({}),
        owner: Some(("Job", "nightly-1")),
    });
    let tree = Tree::new();
    let c = tree.container("batch", "job-1", "app");
    c.append(seq_lines(0, 100).as_bytes());
    let kube = format!(
        "[kubernetes]\nenabled = true\nnode_name = \"node-a\"\nkubeconfig = \"{}\"\nmetadata_wait = \"1s\"\n[reload]\nwatch = false",
        api.kubeconfig(tree.root.path()).display()
    );
    let cfg = tree.root.path().join("logferry.toml");
    std::fs::write(&cfg, config("before", &kube)).unwrap();
    let agent = Running::start(&[
        "debug",
        "--config",
        cfg.to_str().unwrap(),
        "--from-beginning",
        &tree.glob(),
    ]);
    agent.wait_docs(100);
    // The job's pod is deleted while its last lines are still to come.
    api.delete_pod("uid-job-1");
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&cfg, config("after", &kube)).unwrap();
    agent.signal(libc::SIGHUP);
    agent.wait("the reload", |r| r.log().contains("config reloaded"));
    c.append(seq_lines(100, 50).as_bytes());
    agent.wait_docs(150);
    let (docs, _) = agent.stop();
    assert_exactly_once(&seqs(&docs), 150);
    for d in &docs {
        assert_eq!(d["kubernetes"]["labels"]["app"], "nightly", "{d}");
        assert_eq!(d["kubernetes"]["job"]["name"], "nightly-1");
        assert!(d["log"].get("flags").is_none(), "{d}");
    }
    assert!(docs.iter().any(|d| host_of(d) == "after"));
}
