//! Restarts of the real binary with the same state directory: after SIGTERM nothing is
//! missing or repeated; after `kill -9` nothing is missing and every repeat carries the same
//! document id (so Elasticsearch stores it once).

mod support;

use serde_json::Value;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_logferry");

fn write_config(dir: &Path) -> PathBuf {
    let p = dir.join("fast.toml");
    fs::write(
        &p,
        "[source]\nrescan_interval = \"100ms\"\nmax_idle_poll = \"20ms\"\nrotate_wait = \"300ms\"\n[checkpoint]\ninterval = \"50ms\"\n[output.stdout]\nformat = \"bulk\"\n",
    )
    .unwrap();
    p
}

fn spawn(tree: &Tree, config: &Path, out: &Path, once: bool) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.arg("debug")
        .arg("--config")
        .arg(config)
        .arg("--from-beginning");
    if once {
        cmd.arg("--once");
    }
    cmd.arg("--state-dir")
        .arg(tree.state_dir())
        .arg(tree.glob());
    cmd.stdout(fs::File::create(out).unwrap())
        .stderr(Stdio::null());
    cmd.spawn().unwrap()
}

/// (id, seq) of every complete document pair in a bulk output file.
fn read_bulk(path: &Path) -> Vec<(String, u64)> {
    let data = fs::read(path).unwrap();
    // A kill can cut the last write short: only whole lines count.
    let end = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let lines: Vec<&[u8]> = data[..end]
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let mut out = Vec::new();
    for pair in lines.chunks(2) {
        if pair.len() < 2 {
            break;
        }
        let action: Value = serde_json::from_slice(pair[0]).unwrap();
        let doc: Value = serde_json::from_slice(pair[1]).unwrap();
        let id = action["create"]["_id"].as_str().unwrap().to_string();
        out.push((id, seqs(&[doc])[0]));
    }
    out
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "did not exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_output(path: &Path, min_bytes: u64) {
    let deadline = Instant::now() + WAIT;
    while fs::metadata(path).map(|m| m.len()).unwrap_or(0) < min_bytes {
        assert!(Instant::now() < deadline, "no output");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn kill_9_in_the_middle_then_restart_loses_nothing_and_repeats_only_same_ids() {
    let tree = Tree::new();
    let config = write_config(tree.root.path());
    let per_file = 40_000u64;
    let mut total = 0;
    for (i, pod) in ["a", "b", "c"].iter().enumerate() {
        let c = tree.container("ns", pod, "app");
        let base = i as u64 * per_file;
        let data: String = (base..base + per_file)
            .map(|s| cri("stdout", "F", &seq_msg(s)) + "\n")
            .collect();
        c.append(data.as_bytes());
        total += per_file;
    }
    let mut outputs = vec![];
    // Kill at growing points of the output, then let a last run finish.
    for (round, kill_at) in [2_000_000u64, 6_000_000, 12_000_000].iter().enumerate() {
        let out = tree.root.path().join(format!("out{round}"));
        let mut child = spawn(&tree, &config, &out, true);
        let already: u64 = outputs
            .iter()
            .map(|p: &PathBuf| fs::metadata(p).unwrap().len())
            .sum();
        wait_output(&out, kill_at.saturating_sub(already).max(100_000));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        outputs.push(out);
    }
    let out = tree.root.path().join("out-final");
    let mut child = spawn(&tree, &config, &out, true);
    assert!(wait_exit(&mut child, WAIT).success());
    outputs.push(out);

    let mut ids_of: HashMap<u64, Vec<String>> = HashMap::new();
    let mut printed = 0;
    for p in &outputs {
        for (id, seq) in read_bulk(p) {
            ids_of.entry(seq).or_default().push(id);
            printed += 1;
        }
    }
    let missing: Vec<u64> = (0..total).filter(|s| !ids_of.contains_key(s)).collect();
    assert!(
        missing.is_empty(),
        "{} lines missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    for (seq, ids) in &ids_of {
        assert!(
            ids.iter().all(|i| i == &ids[0]),
            "seq {seq} printed with different ids {ids:?}"
        );
    }
    let repeated = printed - total;
    // Only what was printed after the last checkpoint write of each killed run repeats.
    assert!(repeated < total / 4, "{repeated} repeats of {total}");
    println!("kill -9 x3: {total} lines, {repeated} printed twice with the same id");

    // The final checkpoints cover every file to its end.
    let ck: Value =
        serde_json::from_slice(&fs::read(tree.state_dir().join("checkpoints.json")).unwrap())
            .unwrap();
    let files = ck["files"].as_array().unwrap();
    assert_eq!(files.len(), 3);
    for f in files {
        let size = fs::metadata(f["path"].as_str().unwrap()).unwrap().len();
        assert_eq!(f["offset"].as_u64().unwrap(), size);
    }
}

#[test]
fn sigterm_while_writing_then_restart_repeats_and_loses_nothing() {
    let tree = Tree::new();
    let config = write_config(tree.root.path());
    let c = tree.container("ns", "live", "app");
    let mut next = 0u64;
    let mut write = |n: u64| {
        let data: String = (next..next + n)
            .map(|s| cri("stdout", "F", &seq_msg(s)) + "\n")
            .collect();
        c.append(data.as_bytes());
        next += n;
    };
    let mut outputs = vec![];
    for round in 0..3 {
        let out = tree.root.path().join(format!("out{round}"));
        let mut child = spawn(&tree, &config, &out, false);
        for _ in 0..20 {
            write(200);
            std::thread::sleep(Duration::from_millis(10));
        }
        wait_output(&out, 1000);
        // SIGTERM in the middle of writing.
        sigterm(&child);
        let status = wait_exit(&mut child, Duration::from_secs(20));
        assert!(status.success(), "exit status {status:?}");
        outputs.push(out);
        write(300); // written while the agent is down
    }
    let out = tree.root.path().join("out-final");
    let mut child = spawn(&tree, &config, &out, true);
    assert!(wait_exit(&mut child, WAIT).success());
    outputs.push(out);
    let got: Vec<u64> = outputs
        .iter()
        .flat_map(|p| read_bulk(p))
        .map(|(_, s)| s)
        .collect();
    assert_exactly_once(&got, next);
}

#[test]
fn shutdown_is_bounded_even_when_the_output_is_stuck() {
    let tree = Tree::new();
    let c = tree.container("ns", "stuck", "app");
    let data: String = (0..50_000)
        .map(|s| cri("stdout", "F", &seq_msg(s)) + "\n")
        .collect();
    c.append(data.as_bytes());
    let config = tree.root.path().join("slow.toml");
    fs::write(&config, "[shutdown]\ntimeout = \"1s\"\n").unwrap();
    // Nobody reads stdout: the pipe fills and the sink blocks.
    let mut child = Command::new(BIN)
        .args(["debug", "--from-beginning", "--config"])
        .arg(&config)
        .arg(tree.glob())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
}
