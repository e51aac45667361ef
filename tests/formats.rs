//! Runtime formats end to end: real files in, documents out.

mod support;

use logferry::stats::Stats;

use serde_json::Value;
use support::*;

fn messages(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| d["message"].as_str().unwrap().to_string())
        .collect()
}

fn flags(d: &Value) -> Vec<String> {
    d["log"]["flags"]
        .as_array()
        .map(|a| a.iter().map(|f| f.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn run_once(tree: &Tree, cfg: logferry::config::Config) -> Vec<Value> {
    let _ = tree;
    let (_, docs) = Agent::start_with(cfg, None, true).finish();
    docs
}

#[test]
fn cri_partials_merge_per_stream_with_metadata_from_paths() {
    let tree = Tree::new();
    let c = tree.container("shop", "web-1", "nginx");
    c.append_lines(&[
        cri("stdout", "P", "out part 1, "),
        cri("stderr", "P", "err part 1, "),
        cri("stdout", "P", "out part 2, "),
        cri("stdout", "F", "out end"),
        cri("stderr", "F", "err end"),
        cri("stdout", "F", "whole line"),
    ]);
    let docs = run_once(&tree, test_config(vec![tree.glob()]));
    assert_eq!(
        messages(&docs),
        vec![
            "out part 1, out part 2, out end",
            "err part 1, err end",
            "whole line"
        ]
    );
    assert_eq!(docs[0]["stream"], "stdout");
    assert_eq!(docs[1]["stream"], "stderr");
    assert_eq!(flags(&docs[0]), vec!["partial_merged"]);
    assert!(flags(&docs[2]).is_empty());
    // The merged line keeps its first chunk's timestamp and offset.
    assert_eq!(docs[0]["log"]["offset"], 0);
    let d = &docs[0];
    assert_eq!(d["kubernetes"]["namespace"], "shop");
    assert_eq!(d["kubernetes"]["pod"]["name"], "web-1");
    assert_eq!(d["kubernetes"]["pod"]["uid"], "uid-web-1");
    assert_eq!(d["kubernetes"]["container"]["name"], "nginx");
    assert_eq!(d["container"]["id"].as_str().unwrap().len(), 64);
    assert_eq!(d["host"]["name"], "test-node");
    assert_eq!(d["log"]["file"]["path"], c.link.to_str().unwrap());
    assert!(d["@timestamp"]
        .as_str()
        .unwrap()
        .starts_with("2026-11-30T10:"));
}

#[test]
fn docker_json_file_lines_and_splits() {
    let tree = Tree::new();
    let c = tree.container("legacy", "api-1", "api");
    c.append_lines(&[
        docker("stdout", "hello\n"),
        docker("stdout", "chunk one "),
        docker("stderr", "an error\n"),
        docker("stdout", "chunk two\n"),
        docker(
            "stdout",
            "{\"level\":\"ERROR\",\"msg\":\"json in docker\"}\n",
        ),
    ]);
    let docs = run_once(&tree, test_config(vec![tree.glob()]));
    assert_eq!(
        messages(&docs),
        vec!["hello", "an error", "chunk one chunk two", "json in docker"]
    );
    assert_eq!(docs[1]["stream"], "stderr");
    assert_eq!(flags(&docs[2]), vec!["partial_merged"]);
    assert_eq!(docs[3]["log"]["level"], "error");
    assert_eq!(docs[3]["json"]["msg"], "json in docker");
    assert!(docs[0]["@timestamp"]
        .as_str()
        .unwrap()
        .starts_with("2026-11-30T11:00:00."));
}

#[test]
fn a_one_mib_line_from_16k_chunks_arrives_whole() {
    let tree = Tree::new();
    let c = tree.container("ns", "big", "app");
    let line: String = (0..1024 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let chunks: Vec<String> = line
        .as_bytes()
        .chunks(16 * 1024)
        .enumerate()
        .map(|(i, ch)| {
            let last = (i + 1) * 16 * 1024 >= line.len();
            cri(
                "stdout",
                if last { "F" } else { "P" },
                std::str::from_utf8(ch).unwrap(),
            )
        })
        .collect();
    c.append_lines(&chunks);
    c.append_lines(&[cri("stdout", "F", "after")]);
    let docs = run_once(&tree, test_config(vec![tree.glob()]));
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0]["message"].as_str().unwrap().len(), line.len());
    assert!(docs[0]["message"].as_str().unwrap() == line);
    assert_eq!(flags(&docs[0]), vec!["partial_merged"]);
    assert_eq!(docs[1]["message"], "after");
}

#[test]
fn lines_over_the_bound_are_split_or_truncated_and_flagged_never_dropped() {
    let tree = Tree::new();
    let c = tree.container("ns", "huge", "app");
    // 3 MiB in 16 KiB chunks, a 1 MiB bound.
    let chunk = "x".repeat(16 * 1024);
    let n = 3 * 64;
    let mut lines: Vec<String> = (0..n)
        .map(|i| cri("stdout", if i + 1 == n { "F" } else { "P" }, &chunk))
        .collect();
    lines.push(cri("stdout", "F", "next"));
    c.append_lines(&lines);

    let docs = run_once(&tree, test_config(vec![tree.glob()]));
    let pieces = &docs[..docs.len() - 1];
    assert_eq!(pieces.len(), 3, "3 MiB in pieces of at most 1 MiB");
    let total: usize = pieces
        .iter()
        .map(|d| d["message"].as_str().unwrap().len())
        .sum();
    assert_eq!(total, 3 * 1024 * 1024, "nothing lost");
    for p in pieces {
        assert!(p["message"].as_str().unwrap().len() <= 1024 * 1024);
        assert!(flags(p).contains(&"split".to_string()));
    }
    assert_eq!(docs.last().unwrap()["message"], "next");

    let mut cfg = test_config(vec![tree.glob()]);
    cfg.source.line_overflow = logferry::config::LineOverflow::Truncate;
    let docs = run_once(&tree, cfg);
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0]["message"].as_str().unwrap().len(), 1024 * 1024);
    assert_eq!(flags(&docs[0]), vec!["partial_merged", "truncated"]);
}

#[test]
fn a_giant_raw_line_is_truncated_and_the_next_line_is_intact() {
    let tree = Tree::new();
    let c = tree.container("ns", "raw", "app");
    let mut data = b"not a runtime line ".to_vec();
    data.extend(std::iter::repeat_n(b'z', 5 * 1024 * 1024));
    data.push(b'\n');
    c.append(&data);
    c.append_lines(&[cri("stdout", "F", "fine")]);
    let mut cfg = test_config(vec![tree.glob()]);
    cfg.source.max_line_bytes = 64 * 1024;
    let (summary, docs) = Agent::start_with(cfg, None, true).finish();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0]["message"].as_str().unwrap().len(), 64 * 1024);
    let f = flags(&docs[0]);
    assert!(
        f.contains(&"truncated".into()) && f.contains(&"malformed".into()),
        "{f:?}"
    );
    assert_eq!(docs[1]["message"], "fine");
    let dropped = logferry::stats::Stats::get(&summary.stats.bytes_dropped);
    assert!(
        dropped > 4 * 1024 * 1024,
        "dropped bytes are counted: {dropped}"
    );
}

#[test]
fn invalid_utf8_and_binary_are_shipped_flagged() {
    let tree = Tree::new();
    let c = tree.container("ns", "bin", "app");
    let mut data = cri("stdout", "F", "bad ").into_bytes();
    data.extend_from_slice(b"\xff\xfe\x00\x01 bytes\n");
    c.append(&data);
    c.append_lines(&[cri("stdout", "F", "ok")]);
    let docs = run_once(&tree, test_config(vec![tree.glob()]));
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0]["message"], "bad \u{fffd}\u{fffd}\u{0}\u{1} bytes");
    assert_eq!(flags(&docs[0]), vec!["invalid_utf8"]);
    assert_eq!(docs[1]["message"], "ok");
}

#[test]
fn malformed_lines_are_carried_through() {
    let tree = Tree::new();
    let c = tree.container("ns", "mal", "app");
    c.append_lines(&[
        cri("stdout", "F", "good"),
        "garbage without a timestamp".into(),
        cri("stdout", "F", "good again"),
    ]);
    let docs = run_once(&tree, test_config(vec![tree.glob()]));
    assert_eq!(
        messages(&docs),
        vec!["good", "garbage without a timestamp", "good again"]
    );
    assert_eq!(flags(&docs[1]), vec!["malformed", "no_timestamp"]);
}

#[test]
fn json_messages_are_lifted() {
    let tree = Tree::new();
    let c = tree.container("ns", "json", "app");
    c.append_lines(&[
        cri(
            "stdout",
            "F",
            r#"{"severity":"Warning","message":"disk almost full","pct":91.5}"#,
        ),
        cri("stdout", "F", r#"{"not":"closed""#),
    ]);
    let mut cfg = test_config(vec![tree.glob()]);
    cfg.source.json.target = "app".into();
    let docs = run_once(&tree, cfg);
    assert_eq!(docs[0]["message"], "disk almost full");
    assert_eq!(docs[0]["log"]["level"], "warning");
    assert_eq!(docs[0]["app"]["pct"], 91.5);
    assert_eq!(docs[1]["message"], r#"{"not":"closed""#);
    assert!(docs[1].get("app").is_none());
}

#[test]
fn stack_traces_join_per_stream_and_flush_after_the_timeout() {
    let tree = Tree::new();
    let c = tree.container("ns", "java", "app");
    let mut cfg = test_config(vec![tree.glob()]);
    cfg.source.multiline.presets = vec!["java".into(), "python".into()];
    let agent = Agent::start(cfg, None);
    c.append_lines(&[
        cri("stderr", "F", "java.lang.IllegalStateException: boom"),
        cri("stdout", "F", "an unrelated stdout line"),
        cri("stderr", "F", "\tat com.example.A.b(A.java:1)"),
        cri("stderr", "F", "Caused by: java.io.IOException: x"),
        cri("stderr", "F", "\t... 4 more"),
    ]);
    // No line ends the trace: the flush timeout ships it.
    let docs = agent.wait_for(2);
    assert_eq!(docs[0]["message"], "an unrelated stdout line");
    assert_eq!(
        docs[1]["message"],
        "java.lang.IllegalStateException: boom\n\tat com.example.A.b(A.java:1)\nCaused by: java.io.IOException: x\n\t... 4 more"
    );
    assert_eq!(flags(&docs[1]), vec!["multiline"]);
    c.append_lines(&[
        cri("stdout", "F", "Traceback (most recent call last):"),
        cri("stdout", "F", "  File \"x.py\", line 1, in <module>"),
        cri("stdout", "F", "    f()"),
        cri("stdout", "F", "ZeroDivisionError: division by zero"),
        cri("stdout", "F", "next"),
    ]);
    let docs = agent.wait_for(4);
    assert!(docs[2]["message"]
        .as_str()
        .unwrap()
        .ends_with("ZeroDivisionError: division by zero"));
    assert_eq!(docs[3]["message"], "next");
    let summary = agent.stop();
    assert!(!summary.timed_out);
}

#[test]
fn bulk_format_prints_deterministic_ids() {
    let tree = Tree::new();
    let c = tree.container("ns", "ids", "app");
    c.append_lines(&[cri("stdout", "F", "a"), cri("stdout", "F", "b")]);
    let run = || {
        let mut cfg = test_config(vec![tree.glob()]);
        cfg.output.stdout.format = logferry::config::StdoutFormat::Bulk;
        let out = SharedBuf::default();
        let opts = logferry::pipeline::RunOptions {
            once: true,
            state_dir: None,
            output: Box::new(out.clone()),
            host_name: "h".into(),
            stats: Default::default(),
            health: Default::default(),
            resume: None,
            pods: None,
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(logferry::pipeline::run(&cfg, opts, std::future::pending()))
            .unwrap();
        let data = out.0.lock().unwrap().clone();
        String::from_utf8(data).unwrap()
    };
    let first = run();
    let lines: Vec<&str> = first.lines().collect();
    assert_eq!(lines.len(), 4);
    let a: Value = serde_json::from_str(lines[0]).unwrap();
    let b: Value = serde_json::from_str(lines[2]).unwrap();
    let (ida, idb) = (
        a["create"]["_id"].as_str().unwrap(),
        b["create"]["_id"].as_str().unwrap(),
    );
    assert_eq!(ida.len(), 22);
    assert_ne!(ida, idb);
    // The Elasticsearch sink's body: `_index` in the action, the data stream in the document.
    assert_eq!(a["create"]["_index"], "logs-kubernetes-default");
    let doc: Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(doc["message"], "a");
    assert_eq!(doc["data_stream"]["dataset"], "kubernetes");
    assert_eq!(doc["data_stream"]["namespace"], "default");
    assert_eq!(run(), first, "a second reading gives the same ids");
}

#[test]
fn an_unterminated_last_line_is_shipped_when_the_file_ends() {
    let tree = Tree::new();
    let only = tree.container("ns", "only", "app");
    only.append(cri("stdout", "F", "no newline yet").as_bytes());
    let tail = tree.container("ns", "tail", "app");
    tail.append(
        format!(
            "{}\n{}",
            cri("stdout", "F", "whole"),
            cri("stderr", "F", "cut short")
        )
        .as_bytes(),
    );
    let mut docs = run_once(&tree, test_config(vec![tree.glob()]));
    docs.sort_by_key(|d| d["message"].as_str().unwrap().to_string());
    assert_eq!(
        messages(&docs),
        vec!["cut short", "no newline yet", "whole"]
    );
    assert_eq!(flags(&docs[0]), vec!["incomplete"]);
    assert_eq!(flags(&docs[1]), vec!["incomplete"]);
    assert!(flags(&docs[2]).is_empty());
}

#[test]
fn a_stack_trace_still_in_the_file_is_not_cut_by_the_flush_timeout() {
    // Reading comes back to a file late when there are many (or the output is slow): a
    // group whose next lines are already written must wait for them, whatever the timeout.
    let tree = Tree::new();
    let mut cfg = test_config(vec![tree.glob()]);
    cfg.source.multiline.presets = vec!["java".into()];
    cfg.source.multiline.flush_timeout = std::time::Duration::from_millis(1);
    cfg.source.multiline.max_lines = 1000;
    cfg.source.read_buffer_bytes = 4096;
    cfg.source.max_read_bytes_per_file = 4096;
    let files = 60;
    for f in 0..files {
        let c = tree.container("ns", &format!("java{f}"), "app");
        let mut lines = vec![cri(
            "stderr",
            "F",
            &format!("java.lang.IllegalStateException: file {f}"),
        )];
        lines.extend((0..300).map(|i| {
            cri(
                "stderr",
                "F",
                &format!("\tat com.example.Service.call{i}(Service.java:{i})"),
            )
        }));
        lines.push(cri("stdout", "F", "after the trace"));
        c.append_lines(&lines);
    }
    let agent = Agent::start(cfg, None);
    let docs = agent.wait_for(2 * files);
    let traces: Vec<&Value> = docs.iter().filter(|d| d["stream"] == "stderr").collect();
    assert_eq!(traces.len(), files, "every trace in one document");
    for t in traces {
        assert_eq!(t["message"].as_str().unwrap().lines().count(), 301);
    }
}

#[test]
fn streams_merges_and_splits_are_counted_as_shipped() {
    let tree = Tree::new();
    let c = tree.container("ns", "count", "app");
    c.append_lines(&[
        cri("stdout", "F", "plain one"),
        cri("stderr", "F", "an error line"),
        cri("stdout", "P", "first half "),
        cri("stdout", "F", "second half"),
        cri(
            "stderr",
            "F",
            "Exception in thread \"main\" java.lang.IllegalStateException: x",
        ),
        cri("stderr", "F", "\tat com.example.A.b(A.java:1)"),
        cri("stderr", "F", "\tat com.example.A.main(A.java:2)"),
        cri("stdout", "F", "plain two"),
    ]);
    c.append(b"2024-01-01T00:00:00Z stdout F bad \xff byte\n");
    let d = tree.container("ns", "count-docker", "app");
    d.append_lines(&[docker("stdout", "one\n"), docker("stderr", "two\n")]);
    let mut cfg = test_config(vec![tree.glob()]);
    cfg.source.multiline.presets = vec!["java".into()];
    let agent = Agent::start(cfg, None);
    agent.wait_for(8);
    std::thread::sleep(std::time::Duration::from_millis(400));
    let summary = agent.stop();
    let s = &summary.stats;
    assert_eq!(Stats::get(&s.events), 8);
    assert_eq!(Stats::get(&s.events_stderr), 3);
    assert_eq!(Stats::get(&s.events_partial_merged), 1);
    assert_eq!(Stats::get(&s.events_multiline), 1);
    assert_eq!(Stats::get(&s.events_invalid_utf8), 1);
    let text = logferry::metrics::render(s, &[]);
    assert!(
        text.contains("logferry_events_by_stream_total{stream=\"stdout\"} 5\n"),
        "{text}"
    );
    assert!(text.contains("logferry_events_assembled_total{kind=\"multiline\"} 1\n"));
    assert!(text.contains("logferry_events_by_format_total{format=\"cri\"} 6\n"));
    assert!(text.contains("logferry_events_by_format_total{format=\"docker\"} 2\n"));
    assert!(text.contains("logferry_events_invalid_utf8_total 1\n"));
}
