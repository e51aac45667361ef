//! Following files through what kubelet, logrotate and the filesystem do to them, while
//! lines are being written. Sequence numbers in the lines count loss and repeats exactly.

mod support;

use logferry::stats::Stats;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;
use support::*;

/// The documents once `n` lines have arrived, and a moment more for any repeat to show.
fn every_line(agent: &Agent, n: u64) -> Vec<serde_json::Value> {
    agent.wait_until("every line", |d| seqs(d).len() as u64 >= n);
    std::thread::sleep(Duration::from_millis(300));
    agent.docs()
}

#[test]
fn kubelet_rename_rotation_while_writing_loses_and_repeats_nothing() {
    let tree = Tree::new();
    let c = tree.container("ns", "rot", "app");
    let agent = Agent::start(test_config(vec![tree.glob()]), None);
    const TOTAL: u64 = 20_000;
    const PER_FILE: u64 = 2_000;
    let mut f = OpenOptions::new().append(true).open(c.path()).unwrap();
    let mut next = 0;
    let mut rotations = 0;
    while next < TOTAL {
        f.write_all(seq_lines(next, 100).as_bytes()).unwrap();
        next += 100;
        if next % PER_FILE == 0 && next < TOTAL {
            rotations += 1;
            c.rotate(rotations);
            // The runtime writes a few more lines to the old file before it reopens.
            f.write_all(seq_lines(next, 10).as_bytes()).unwrap();
            next += 10;
            f = OpenOptions::new().append(true).open(c.path()).unwrap();
        }
        // About 800 ms a file: kubelet rotates at 10 MiB, far slower than discovery.
        std::thread::sleep(Duration::from_millis(40));
    }
    let docs = every_line(&agent, next);
    assert_exactly_once(&seqs(&docs), next);
    // Lines of one file come in order.
    let s = seqs(&docs);
    assert!(s.windows(2).all(|w| w[0] < w[1]), "in order");
    let summary = agent.stop();
    assert!(Stats::get(&summary.stats.rotations) >= rotations as u64);
}

#[test]
fn copytruncate_while_writing_loses_and_repeats_nothing() {
    let tree = Tree::new();
    let c = tree.container("ns", "ct", "app");
    let agent = Agent::start(test_config(vec![tree.glob()]), None);
    let mut f = OpenOptions::new().append(true).open(c.path()).unwrap();
    let mut next = 0;
    for g in 0..6 {
        for _ in 0..10 {
            f.write_all(seq_lines(next, 50).as_bytes()).unwrap();
            next += 50;
            std::thread::sleep(Duration::from_millis(10));
        }
        if g < 5 {
            fs::copy(c.path(), c.dir.join(format!("0.log.{g}"))).unwrap();
            f.set_len(0).unwrap();
        }
    }
    // What the agent had not read when a file was truncated is read from its copy.
    let docs = every_line(&agent, next);
    assert_exactly_once(&seqs(&docs), next);
    let summary = agent.stop();
    assert!(Stats::get(&summary.stats.truncations) >= 5);
    assert_eq!(Stats::get(&summary.stats.truncations_unrecovered), 0);
}

#[test]
fn a_file_deleted_while_open_is_read_to_its_end() {
    let tree = Tree::new();
    let c = tree.container("ns", "del", "app");
    let agent = Agent::start(test_config(vec![tree.glob()]), None);
    let mut f = OpenOptions::new().append(true).open(c.path()).unwrap();
    f.write_all(seq_lines(0, 100).as_bytes()).unwrap();
    agent.wait_until("the first lines", |d| seqs(d).len() == 100);
    fs::remove_file(c.path()).unwrap();
    fs::remove_file(&c.link).unwrap();
    // The container still writes through its descriptor.
    f.write_all(seq_lines(100, 100).as_bytes()).unwrap();
    drop(f);
    let docs = agent.wait_until("lines written after the delete", |d| seqs(d).len() >= 200);
    assert_exactly_once(&seqs(&docs), 200);
    agent.wait_stat("the file let go", |s| Stats::get(&s.files_released), 1);
    agent.stop();
}

#[test]
fn a_reused_inode_is_not_taken_for_the_old_file() {
    let tree = Tree::new();
    let c = tree.container("ns", "reuse", "app");
    let state = tree.state_dir();
    c.append(seq_lines(0, 50).as_bytes());
    let (_, docs) = Agent::start_with(test_config(vec![tree.glob()]), Some(&state), true).finish();
    assert_eq!(seqs(&docs).len(), 50);
    let old_inode = fs::metadata(c.path()).unwrap().ino();

    // The file goes away and a new one takes its place, usually on the same inode.
    fs::remove_file(c.path()).unwrap();
    c.append(seq_lines(1000, 10).as_bytes());
    let new_meta = fs::metadata(c.path()).unwrap();
    let (_, docs) = Agent::start_with(test_config(vec![tree.glob()]), Some(&state), true).finish();
    assert_eq!(
        seqs(&docs),
        (1000..1010).collect::<Vec<_>>(),
        "read from its start (inode reused: {})",
        new_meta.ino() == old_inode
    );

    // Deterministically: a checkpoint for this very dev/inode but another first line.
    fs::remove_file(c.path()).unwrap();
    c.append(seq_lines(2000, 10).as_bytes());
    let m = fs::metadata(c.path()).unwrap();
    fs::write(
        state.join("checkpoints.json"),
        serde_json::json!({"version":1,"files":[{"dev":m.dev(),"inode":m.ino(),"fingerprint":"0123456789abcdef","path":c.link,"offset":300}]}).to_string(),
    )
    .unwrap();
    let (_, docs) = Agent::start_with(test_config(vec![tree.glob()]), Some(&state), true).finish();
    assert_eq!(seqs(&docs), (2000..2010).collect::<Vec<_>>());
}

#[test]
fn new_files_are_read_from_their_first_line() {
    let tree = Tree::new();
    let mut cfg = test_config(vec![tree.glob()]);
    cfg.source.start_at = logferry::config::StartAt::End;
    let old = tree.container("ns", "old", "app");
    old.append(seq_lines(0, 10).as_bytes());
    let agent = Agent::start(cfg, None);
    // Present at the first start with start_at = end: only new lines.
    agent.wait_stat("the first scan", |s| Stats::get(&s.files_opened), 1);
    old.append(seq_lines(10, 5).as_bytes());
    // A container that starts while the agent runs: from its first line, even with start_at = end.
    let fresh = tree.container("ns", "fresh", "app");
    fresh.append(seq_lines(100, 7).as_bytes());
    let docs = agent.wait_until("both files", |d| seqs(d).len() >= 12);
    std::thread::sleep(Duration::from_millis(200));
    let mut got = seqs(&agent.docs());
    got.sort();
    let mut want: Vec<u64> = (10..15).chain(100..107).collect();
    want.sort();
    assert_eq!(got, want, "{} docs", docs.len());
    agent.stop();
}

#[test]
fn one_noisy_container_does_not_starve_the_others() {
    let tree = Tree::new();
    let noisy = tree.container("ns", "noisy", "app");
    let quiet = tree.container("ns", "quiet", "app");
    let lines = 60_000u64;
    noisy.append(seq_lines(0, lines).as_bytes());
    quiet.append(seq_lines(1_000_000, 5).as_bytes());
    let (_, docs) = Agent::start_with(test_config(vec![tree.glob()]), None, true).finish();
    let s = seqs(&docs);
    assert_eq!(s.len() as u64, lines + 5);
    let last_quiet = s.iter().rposition(|&x| x >= 1_000_000).unwrap();
    // One read quantum of the noisy file is ~2,000 lines: the quiet file is done within it.
    assert!(
        last_quiet < 5_000,
        "quiet file's last line at position {last_quiet} of {}",
        s.len()
    );
}

/// Many containers writing a line every few milliseconds each: a file read to its end
/// waits `read_interval` before it is read again, so each read gathers several lines and
/// a pass gathers many files (not one read, one batch per line).
#[test]
fn many_slow_files_are_read_in_gathered_passes() {
    let tree = Tree::new();
    let files = tree.containers("slow", 40);
    let mut cfg = test_config(vec![tree.glob()]);
    cfg.source.read_interval = Duration::from_millis(100);
    cfg.source.max_idle_poll = Duration::from_millis(500);
    let agent = Agent::start(cfg, None);
    let (rounds, started) = (150u64, std::time::Instant::now());
    for r in 0..rounds {
        for (p, f) in files.iter().enumerate() {
            f.append(seq_lines(p as u64 * rounds + r, 1).as_bytes());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let writing = started.elapsed();
    let total = files.len() as u64 * rounds;
    let docs = agent.wait_until("every line", |d| seqs(d).len() as u64 >= total);
    let summary = agent.stop();
    assert_exactly_once(&seqs(&docs), total);
    // A machine slower than this one reads less often, never more.
    let looks = (writing.as_millis() / 100 + 3) as u64;
    let reads = Stats::get(&summary.stats.file_reads);
    assert!(
        reads <= files.len() as u64 * looks,
        "{reads} reads for {total} lines over {writing:?} (at most {} expected)",
        files.len() as u64 * looks
    );
}

/// Files with nothing new for a while are watched (inotify, one event) instead of polled:
/// a write, a truncation, a rotation still reach the reader at once, not at the next
/// look (every 10 s for a watched file).
#[test]
fn idle_files_are_watched_and_a_write_wakes_the_reader() {
    let tree = Tree::new();
    let files = tree.containers("idle", 10);
    for (p, f) in files.iter().enumerate() {
        f.append(seq_lines(p as u64 * 100, 1).as_bytes());
    }
    let agent = Agent::start(test_config(vec![tree.glob()]), None);
    agent.wait_for(10);
    let watched = |s: &Stats| Stats::get(&s.files_idle_watched);
    agent.wait_stat("every idle file watched", watched, 10);
    // Sooner than any look at a watched file: only its event can bring the line.
    let soon = |agent: &Agent, what: &str, n: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while agent.docs().len() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: not read within 5 s of being written"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    files[3].append(seq_lines(301, 2).as_bytes());
    soon(&agent, "a write", 12);
    agent.wait_stat("watched again once idle", watched, 10);
    // copytruncate on a watched file: the truncation is its event.
    let c = &files[5];
    fs::copy(c.path(), c.dir.join("0.log.1")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(c.path())
        .unwrap()
        .set_len(0)
        .unwrap();
    c.append(seq_lines(501, 1).as_bytes());
    soon(&agent, "a write after a truncation", 13);
    agent.wait_stat("watched again once idle", watched, 10);
    // kubelet's rotation of a watched file: the directory's event, then the new file.
    files[7].rotate(1);
    files[7].append(seq_lines(701, 1).as_bytes());
    soon(&agent, "a line in the new file", 14);
    let docs = agent.docs();
    let summary = agent.stop();
    let mut expected: Vec<u64> = (0..10).map(|p| p * 100).collect();
    expected.extend([301, 302, 501, 701]);
    let mut got = seqs(&docs);
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    assert_eq!(Stats::get(&summary.stats.file_watches_failed), 0);
}

#[test]
fn inotify_finds_new_containers_without_waiting_for_a_rescan() {
    let tree = Tree::new();
    let mut cfg = test_config(vec![tree.glob()]);
    // A rescan would come only after an hour: only inotify can find the new file in time.
    cfg.source.rescan_interval = Duration::from_secs(3600);
    let agent = Agent::start(cfg, None);
    std::thread::sleep(Duration::from_millis(200));
    let c = tree.container("ns", "late", "app");
    c.append(seq_lines(0, 3).as_bytes());
    let docs = agent.wait_until("the new container's lines", |d| seqs(d).len() >= 3);
    assert_eq!(seqs(&docs), vec![0, 1, 2]);
    agent.stop();
}

#[test]
fn excluded_files_are_not_read() {
    let tree = Tree::new();
    let keep = tree.container("ns", "keep", "app");
    let skip = tree.container("kube-system", "noise", "app");
    keep.append(seq_lines(0, 2).as_bytes());
    skip.append(seq_lines(100, 2).as_bytes());
    let mut cfg = test_config(vec![tree.glob()]);
    cfg.source.exclude = vec!["**/*_kube-system_*.log".into()];
    let (summary, docs) = Agent::start_with(cfg, None, true).finish();
    assert_eq!(seqs(&docs), vec![0, 1]);
    assert_eq!(Stats::get(&summary.stats.files_opened), 1);
}

/// A first run that reads 100 lines of `c` and stops; returns what it delivered.
fn first_run_of_a_hundred_lines(tree: &Tree, c: &ContainerLog) -> Vec<u64> {
    c.append(seq_lines(0, 100).as_bytes());
    let agent = Agent::start(test_config(vec![tree.glob()]), Some(&tree.state_dir()));
    agent.wait_until("the first lines", |d| seqs(d).len() == 100);
    let first = seqs(&agent.docs());
    agent.stop();
    first
}

#[test]
fn a_file_rotated_while_the_agent_was_down_is_finished_after_restart() {
    let tree = Tree::new();
    let c = tree.container("ns", "down", "app");
    let state = tree.state_dir();
    let first = first_run_of_a_hundred_lines(&tree, &c);
    // While logferry is down the container writes on, and kubelet rotates the file.
    c.append(seq_lines(100, 50).as_bytes());
    c.rotate(1);
    c.append(seq_lines(150, 20).as_bytes());
    let agent = Agent::start(test_config(vec![tree.glob()]), Some(&state));
    let docs = agent.wait_until("the rest", |d| seqs(d).len() >= 70);
    std::thread::sleep(Duration::from_millis(200));
    let mut all = first;
    all.extend(seqs(&agent.docs()));
    assert_exactly_once(&all, 170);
    assert!(docs.len() >= 70);
    agent.stop();
}

/// kubelet rotates twice while logferry is down and compresses the generation it was
/// reading: that one is read on from its checkpoint out of the `.gz`, then the generation
/// no run ever opened, then the current file, each line once and in order.
#[test]
fn generations_rotated_and_compressed_while_the_agent_was_down_are_read_in_order() {
    let tree = Tree::new();
    let c = tree.container("ns", "down", "app");
    let state = tree.state_dir();
    let first = first_run_of_a_hundred_lines(&tree, &c);
    c.append(seq_lines(100, 50).as_bytes());
    c.rotate(1);
    c.append(seq_lines(150, 60).as_bytes());
    c.rotate(2);
    gzip_like_kubelet(&c.dir.join("0.log.00000001"));
    c.append(seq_lines(210, 20).as_bytes());
    let agent = Agent::start(test_config(vec![tree.glob()]), Some(&state));
    let docs = every_line(&agent, 130);
    let summary = agent.stop();
    let rest = seqs(&docs);
    assert_eq!(
        rest,
        (100..230).collect::<Vec<_>>(),
        "each line once, oldest first"
    );
    let mut all = first;
    all.extend(rest);
    assert_exactly_once(&all, 230);
    assert_eq!(Stats::get(&summary.stats.generations_decompressed), 1);
}

/// A compressed generation already read to its end in the last run is not read again, nor
/// decompressed (its trailer says how long it is).
#[test]
fn a_generation_compressed_after_it_was_read_is_not_read_again_after_a_restart() {
    let tree = Tree::new();
    let c = tree.container("ns", "done", "app");
    let state = tree.state_dir();
    let mut cfg = test_config(vec![tree.glob()]);
    cfg.source.rotate_wait = Duration::from_millis(50);
    c.append(seq_lines(0, 100).as_bytes());
    let agent = Agent::start(cfg.clone(), Some(&state));
    agent.wait_until("the first lines", |d| seqs(d).len() == 100);
    c.rotate(1);
    c.append(seq_lines(100, 10).as_bytes());
    agent.wait_until("the new file", |d| seqs(d).len() == 110);
    agent.wait_stat(
        "the rotated file let go",
        |s| Stats::get(&s.files_released),
        1,
    );
    std::thread::sleep(Duration::from_millis(300));
    let first = seqs(&agent.docs());
    agent.stop();
    // While logferry is down: the next rotation compresses the one read to its end.
    c.rotate(2);
    gzip_like_kubelet(&c.dir.join("0.log.00000001"));
    c.append(seq_lines(110, 5).as_bytes());
    let agent = Agent::start(cfg, Some(&state));
    let docs = every_line(&agent, 5);
    let summary = agent.stop();
    let mut all = first;
    all.extend(seqs(&docs));
    assert_exactly_once(&all, 115);
    assert_eq!(Stats::get(&summary.stats.generations_decompressed), 0);
}

#[test]
fn past_max_open_files_new_files_wait_for_room_and_lose_nothing() {
    let tree = Tree::new();
    let logs = tree.containers("p", 3);
    for (p, log) in logs.iter().enumerate() {
        log.append(seq_lines(p as u64 * 100, 100).as_bytes());
    }
    let mut cfg = test_config(vec![tree.glob()]);
    cfg.source.max_open_files = 2;
    let agent = Agent::start(cfg, None);
    agent.wait_stat("a file deferred", |s| Stats::get(&s.files_deferred), 1);
    let docs = agent.wait_until("two files", |d| d.len() == 200);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(agent.docs().len(), 200, "the third file waits");
    // One of the followed files goes away (its pod was deleted): the third gets its turn.
    let read: Vec<u64> = seqs(&docs);
    let gone = (0..3).find(|p| read.contains(&(p * 100))).unwrap() as usize;
    fs::remove_file(&logs[gone].link).unwrap();
    fs::remove_file(logs[gone].path()).unwrap();
    let docs = agent.wait_until("the third file", |d| d.len() == 300);
    assert_exactly_once(&seqs(&docs), 300);
    let summary = agent.stop();
    assert_eq!(Stats::get(&summary.stats.files_deferred), 1);
}

/// What the runtime, kubelet or logrotate may do to a container's log directory.
#[derive(Debug, Clone)]
enum RotationOp {
    /// The container writes this many lines.
    Write(u64),
    /// kubelet: `0.log` renamed to `0.log.<n>`, a new `0.log`.
    Rename,
    /// logrotate: copied to `0.log.<n>`, then truncated in place.
    CopyTruncate,
    /// Docker json-file: `.k` to `.k+1`, the live file to `.1`, a new one.
    Numbered,
    /// kubelet: the newest uncompressed rotated file gzipped (through `.tmp`), then deleted.
    GzipNewest,
    /// The oldest rotated file deleted.
    DeleteOldest,
}

fn rotation_op() -> impl proptest::strategy::Strategy<Value = RotationOp> {
    use proptest::prelude::*;
    prop_oneof![
        3 => (1u64..120).prop_map(RotationOp::Write),
        1 => Just(RotationOp::Rename),
        1 => Just(RotationOp::CopyTruncate),
        1 => Just(RotationOp::Numbered),
        1 => Just(RotationOp::GzipNewest),
        1 => Just(RotationOp::DeleteOldest),
    ]
}

/// Rotated files in the container's directory, oldest first (by modification, then name).
fn rotated_files(c: &ContainerLog) -> Vec<std::path::PathBuf> {
    let mut v: Vec<(std::time::SystemTime, std::path::PathBuf)> = fs::read_dir(&c.dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n != "0.log"))
        .map(|p| (fs::metadata(&p).unwrap().modified().unwrap(), p))
        .collect();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

/// Plays `ops` against the model that every line written is delivered once. Before
/// anything is deleted (or gzipped away) the lines written so far are waited for, so no
/// loss is allowed; repeats would come from a generation taken for another (a copy, a
/// renamed or renumbered file, a reused name).
/// `slow`: the agent comes back to a file only every 200 ms, so that every operation
/// happens between two of its looks.
fn check_rotation_sequence(ops: &[RotationOp], slow: bool) {
    let tree = Tree::new();
    let c = tree.container("ns", "model", "app");
    let mut cfg = test_config(vec![tree.glob()]);
    if slow {
        cfg.source.read_interval = Duration::from_millis(200);
        cfg.source.max_idle_poll = Duration::from_millis(200);
    }
    let agent = Agent::start(cfg, None);
    let mut next = 0u64;
    let mut n = 0usize;
    // The first line written to the live file since it was last rotated.
    let mut first_of_live: Option<u64> = None;
    let delivered = |next: u64| {
        agent.wait_until("the lines written so far", |d| seqs(d).len() as u64 >= next);
    };
    for op in ops {
        n += 1;
        match op {
            RotationOp::Write(k) => {
                let mut f = OpenOptions::new().append(true).open(c.path()).unwrap();
                f.write_all(seq_lines(next, *k).as_bytes()).unwrap();
                first_of_live.get_or_insert(next);
                next += k;
            }
            RotationOp::Rename => {
                c.rotate(n);
                first_of_live = None;
            }
            RotationOp::CopyTruncate => {
                // The copy is known by the file's first line: a file truncated before
                // the agent read its first line is not followed into its copy.
                if let Some(first) = first_of_live.take() {
                    agent.wait_until("the live file's first line", |d| seqs(d).contains(&first));
                }
                fs::copy(c.path(), c.dir.join(format!("0.log.{n:08}"))).unwrap();
                OpenOptions::new()
                    .write(true)
                    .open(c.path())
                    .unwrap()
                    .set_len(0)
                    .unwrap();
            }
            RotationOp::Numbered => {
                first_of_live = None;
                let numbered = |k: usize| c.dir.join(format!("0.log.{k}"));
                for k in (1..4).rev() {
                    let _ = fs::rename(numbered(k), numbered(k + 1));
                }
                fs::rename(c.path(), numbered(1)).unwrap();
                fs::File::create(c.path()).unwrap();
            }
            RotationOp::GzipNewest => {
                let newest = rotated_files(&c)
                    .into_iter()
                    .rev()
                    .find(|p| !p.extension().is_some_and(|e| e == "gz" || e == "tmp"));
                // Not waited for: a generation compressed before it was read to its
                // end is read from its `.gz`.
                if let Some(p) = newest {
                    gzip_like_kubelet(&p);
                }
            }
            RotationOp::DeleteOldest => {
                if let Some(p) = rotated_files(&c).into_iter().next() {
                    delivered(next);
                    fs::remove_file(p).unwrap();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    delivered(next);
    std::thread::sleep(Duration::from_millis(300));
    let got = seqs(&agent.docs());
    agent.stop();
    assert_exactly_once_or(&got, next, &format!("after {ops:?}"));
    // Generations are read oldest first, each to its end before the next.
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "out of order after {ops:?}: {got:?}"
    );
}

/// Sequences the property below once failed on, when the agent came back to a file late.
#[test]
fn rotation_sequences_that_once_failed() {
    use RotationOp::*;
    // The file was renamed, then seen truncated: its copy holds the older lines.
    check_rotation_sequence(
        &[
            Rename,
            Write(1),
            Numbered,
            Write(2),
            Write(2),
            Write(105),
            CopyTruncate,
            Write(103),
            Rename,
        ],
        true,
    );
    // A generation compressed before its first line was looked at.
    check_rotation_sequence(
        &[
            Write(1),
            Rename,
            Rename,
            Rename,
            Rename,
            Write(10),
            Rename,
            GzipNewest,
        ],
        true,
    );
    // Truncated, written again, renamed and compressed before the truncation was seen.
    check_rotation_sequence(
        &[Write(12), CopyTruncate, Write(59), Numbered, GzipNewest],
        true,
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 10,
        failure_persistence: None,
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// Any sequence of rotations of every kind, against the model.
    #[test]
    fn any_sequence_of_rotations_delivers_every_line_once(
        ops in proptest::collection::vec(rotation_op(), 1..14)
    ) {
        check_rotation_sequence(&ops, false);
    }
}
