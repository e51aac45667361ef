//! A filesystem whose files raise no inotify event when written (NFS, FUSE), played by
//! file watches that are deaf to writes. An idle file is then found written by its 10 s
//! look, and polled from then on. A test binary of its own: the switch is process-wide.

mod support;

use logferry::stats::Stats;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::*;

#[test]
fn idle_files_whose_writes_raise_no_event_are_polled_once_found_so() {
    logferry::source::watcher::DEAF_FILE_WATCHES.store(true, Ordering::Release);
    let tree = Tree::new();
    let files = tree.containers("deaf", 3);
    let mut written = 0u64;
    let write_round = |written: &mut u64| {
        for c in &files {
            c.append(seq_lines(*written, 1).as_bytes());
            *written += 1;
        }
    };
    write_round(&mut written);
    let agent = Agent::start(test_config(vec![tree.glob()]), None);
    agent.wait_for(3);
    // Quiet for a second, the files are watched; a write then raises nothing and is read
    // at the next 10 s look. A look more than 2 s after the write tells the filesystem
    // for what it is (a look sooner may not: the write may have just happened).
    let deadline = Instant::now() + Duration::from_secs(90);
    while Stats::get(&agent.stats.file_watches_failed) < 3 {
        assert!(
            Instant::now() < deadline,
            "{} of 3 files found deaf",
            Stats::get(&agent.stats.file_watches_failed)
        );
        std::thread::sleep(Duration::from_millis(1500));
        write_round(&mut written);
        agent.wait_for(written as usize);
    }
    // Found deaf, they are polled: never watched again, and a write is read at the next
    // poll rather than at a 10 s look.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(Stats::get(&agent.stats.files_idle_watched), 0);
    write_round(&mut written);
    let t = Instant::now();
    agent.wait_for(written as usize);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "read after {:?}",
        t.elapsed()
    );
    let docs = agent.docs();
    let summary = agent.stop();
    assert_exactly_once(&seqs(&docs), written);
    // Each file once.
    assert_eq!(Stats::get(&summary.stats.file_watches_failed), 3);
}
