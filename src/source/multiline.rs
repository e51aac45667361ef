//! Joins stack traces and other multi-line messages into one event. Each parser is a small
//! state machine (as in Fluent Bit): rules `state --pattern--> next`, entered from `start_state`.
//! One group is kept per stream, so stdout and stderr never mix.

use super::line::Line;
use crate::config::MultilineRules;
use crate::event::Flags;
use bytes::Bytes;
use std::time::Instant;

#[derive(Debug)]
struct Group {
    parser: usize,
    state: usize,
    start: u64,
    end: u64,
    timestamp: Bytes,
    buf: Vec<u8>,
    lines: usize,
    flags: Flags,
    deadline: Instant,
}

/// The group being built for one stream of one file.
#[derive(Debug, Default)]
pub struct MultilineBuffer {
    group: Option<Group>,
}

impl MultilineBuffer {
    pub fn held_start(&self) -> Option<u64> {
        self.group.as_ref().map(|g| g.start)
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.group.as_ref().map(|g| g.deadline)
    }

    /// Feeds one line; finished events go to `out` (a flushed group before the line itself).
    pub fn push(
        &mut self,
        rules: &MultilineRules,
        line: Line,
        max_bytes: usize,
        now: Instant,
        out: &mut Vec<Line>,
    ) {
        if let Some(mut g) = self.group.take() {
            let fits =
                g.lines < rules.max_lines && g.buf.len() + 1 + line.content.len() <= max_bytes;
            match rules.next(g.parser, g.state, &line.content) {
                Some(next) if fits => {
                    g.buf.push(b'\n');
                    g.buf.extend_from_slice(&line.content);
                    g.end = line.end;
                    g.state = next;
                    g.lines += 1;
                    g.flags.insert(line.flags);
                    g.deadline = now + rules.flush_timeout;
                    if rules.is_final(g.parser, next) {
                        out.push(finish(g, line.stream));
                    } else {
                        self.group = Some(g);
                    }
                    return;
                }
                _ => out.push(finish(g, line.stream)),
            }
        }
        match rules.start(&line.content) {
            Some((parser, state)) if line.content.len() < max_bytes => {
                self.group = Some(Group {
                    parser,
                    state,
                    start: line.start,
                    end: line.end,
                    timestamp: line.timestamp,
                    buf: line.content.to_vec(),
                    lines: 1,
                    flags: line.flags,
                    deadline: now + rules.flush_timeout,
                });
            }
            _ => out.push(line),
        }
    }

    /// Ends the group if its flush timeout passed (or always, with `force`).
    pub fn flush(
        &mut self,
        now: Instant,
        force: bool,
        stream: crate::event::Stream,
    ) -> Option<Line> {
        match &self.group {
            Some(g) if force || g.deadline <= now => {
                let g = self.group.take()?;
                Some(finish(g, stream))
            }
            _ => None,
        }
    }
}

fn finish(g: Group, stream: crate::event::Stream) -> Line {
    let mut buf = g.buf;
    // A group closed by blank lines (Go) should not end in them.
    while buf.last() == Some(&b'\n') {
        buf.pop();
    }
    let mut flags = g.flags;
    if g.lines > 1 {
        flags.insert(Flags::MULTILINE);
    }
    Line {
        start: g.start,
        end: g.end,
        timestamp: g.timestamp,
        stream,
        content: Bytes::from(buf),
        flags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MultilineConfig;
    use crate::event::Stream;

    fn rules(presets: &[&str]) -> MultilineRules {
        let cfg = MultilineConfig {
            presets: presets.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        MultilineRules::from_config(&cfg).unwrap()
    }

    fn run(rules: &MultilineRules, text: &str) -> Vec<String> {
        let mut buf = MultilineBuffer::default();
        let mut out = Vec::new();
        let now = Instant::now();
        for (i, l) in text.lines().enumerate() {
            let line = Line {
                start: i as u64 * 10,
                end: i as u64 * 10 + 10,
                timestamp: Bytes::new(),
                stream: Stream::Stdout,
                content: Bytes::copy_from_slice(l.as_bytes()),
                flags: Flags::empty(),
            };
            buf.push(rules, line, 1 << 20, now, &mut out);
        }
        out.extend(buf.flush(now, true, Stream::Stdout));
        out.iter()
            .map(|l| String::from_utf8(l.content.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn joins_java_stack_trace() {
        let text = "starting\njava.lang.IllegalStateException: boom\n\tat a.b.C.d(C.java:10)\n\tat a.b.C.e(C.java:20)\nCaused by: java.io.IOException: disk\n\tat x.Y.z(Y.java:1)\n\t... 3 more\nnext line";
        let out = run(&rules(&["java"]), text);
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(out[0], "starting");
        assert!(out[1].starts_with("java.lang.IllegalStateException: boom\n\tat a.b.C.d"));
        assert!(out[1].ends_with("\t... 3 more"));
        assert_eq!(out[2], "next line");
    }

    #[test]
    fn joins_python_traceback_and_ends_at_exception_line() {
        let text = "Traceback (most recent call last):\n  File \"app.py\", line 3, in <module>\n    main()\n  File \"app.py\", line 2, in main\n    raise ValueError(\"bad\")\nValueError: bad\nafter";
        let out = run(&rules(&["python"]), text);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].ends_with("ValueError: bad"));
        assert_eq!(out[1], "after");
    }

    #[test]
    fn joins_go_panic() {
        let text = "panic: runtime error: index out of range\n\ngoroutine 1 [running]:\nmain.main()\n\t/app/main.go:5 +0x1d\nexit status 2";
        let out = run(&rules(&["go"]), text);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].starts_with("panic: runtime error"));
        assert!(out[0].ends_with("+0x1d"));
        assert_eq!(out[1], "exit status 2");
    }

    #[test]
    fn plain_lines_pass_through() {
        let out = run(&rules(&["java", "python", "go"]), "a\nb\n\tat not a trace");
        assert_eq!(out, vec!["a", "b", "\tat not a trace"]);
    }

    #[test]
    fn an_indented_line_joins_only_an_exception() {
        let all = rules(&["java", "python", "go"]);
        for text in [
            "GET /cart 200\n    at the end of the queue\nnext",
            "Error: disk full\n    retrying in 5s\nnext",
            "Traceback is a word\n  File \"x\"\nnext",
            "starting\n\tgoroutine-ish detail\nnext",
        ] {
            let out = run(&all, text);
            assert_eq!(out.len(), 3, "{text:?} became {out:?}");
        }
        let out = run(
            &all,
            "java.lang.RuntimeException: x\n\tat a.B.c(B.java:1)\nnext",
        );
        assert_eq!(out.len(), 2, "{out:?}");
    }

    #[test]
    fn the_three_presets_are_on_by_default() {
        let r = MultilineRules::from_config(&MultilineConfig::default()).unwrap();
        let out = run(
            &r,
            "panic: boom\n\ngoroutine 1 [running]:\nmain.main()\n\t/m.go:5\nafter",
        );
        assert_eq!(out.len(), 2, "{out:?}");
        let off = MultilineConfig {
            presets: vec![],
            ..MultilineConfig::default()
        };
        let r = MultilineRules::from_config(&off).unwrap();
        assert_eq!(run(&r, "panic: boom\n\ngoroutine 1 [running]:").len(), 3);
    }

    #[test]
    fn custom_parser_from_config() {
        let cfg: MultilineConfig = toml::from_str(
            r#"
[[parsers]]
name = "dated"
rules = [
  { state = "start_state", pattern = '^\d{4}-\d\d-\d\d ', next = "cont" },
  { state = "cont", pattern = '^[^\d]', next = "cont" },
]"#,
        )
        .unwrap();
        let r = MultilineRules::from_config(&cfg).unwrap();
        let out = run(&r, "2024-01-01 one\n  detail\n  more\n2024-01-01 two");
        assert_eq!(
            out,
            vec!["2024-01-01 one\n  detail\n  more", "2024-01-01 two"]
        );
    }

    #[test]
    fn times_out() {
        let r = rules(&["java"]);
        let mut buf = MultilineBuffer::default();
        let now = Instant::now();
        let line = Line {
            start: 0,
            end: 5,
            timestamp: Bytes::new(),
            stream: Stream::Stdout,
            content: Bytes::from_static(b"java.lang.Error: x"),
            flags: Flags::empty(),
        };
        let mut out = Vec::new();
        buf.push(&r, line, 1 << 20, now, &mut out);
        assert!(out.is_empty());
        assert!(buf.flush(now, false, Stream::Stdout).is_none());
        assert_eq!(buf.held_start(), Some(0));
        let l = buf
            .flush(now + r.flush_timeout, false, Stream::Stdout)
            .unwrap();
        assert_eq!(&l.content[..], b"java.lang.Error: x");
        assert!(!l.flags.contains(Flags::MULTILINE));
    }

    proptest::proptest! {
        /// Whatever the lines, grouping only joins them: every line comes out once, in order.
        #[test]
        fn groups_preserve_every_line(lines in proptest::collection::vec(proptest::prop_oneof![
            proptest::prelude::Just("java.lang.Error: x".to_string()),
            proptest::prelude::Just("\tat a.b(C.java:1)".to_string()),
            proptest::prelude::Just("Traceback (most recent call last):".to_string()),
            proptest::prelude::Just("  File \"x\", line 1".to_string()),
            proptest::prelude::Just("panic: boom".to_string()),
            proptest::prelude::Just("goroutine 1 [running]:".to_string()),
            proptest::prelude::Just(String::new()),
            "[ -~]{0,20}",
        ], 0..60)) {
            let r = rules(&["java", "python", "go"]);
            let out = run(&r, &lines.join("\n"));
            let joined: Vec<String> = out.iter().flat_map(|e| e.split('\n').map(str::to_string).collect::<Vec<_>>()).collect();
            // Trailing blank lines of a group are trimmed; compare the rest.
            let want: Vec<&String> = lines.iter().filter(|l| !l.is_empty()).collect();
            let got: Vec<&String> = joined.iter().filter(|l| !l.is_empty()).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }
}
