//! `[source.multiline]`: the built-in and custom parsers that join stack traces, and their
//! compiled form. Compiling is the one step both validation and the pipeline take.

use super::duration_str;
use regex::bytes::{Regex, RegexSet};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MultilineConfig {
    /// Built-in rule sets to enable: `java`, `python`, `go` (all three by default, so an
    /// exception is one event; `presets = []` turns them off).
    pub presets: Vec<String>,
    pub parsers: Vec<MultilineParserConfig>,
    #[serde(with = "duration_str")]
    pub flush_timeout: Duration,
    pub max_lines: usize,
}

impl Default for MultilineConfig {
    fn default() -> Self {
        MultilineConfig {
            presets: vec!["java".into(), "python".into(), "go".into()],
            parsers: vec![],
            flush_timeout: Duration::from_secs(1),
            max_lines: 500,
        }
    }
}

/// A custom multiline parser: a state machine whose first rules leave `start_state`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultilineParserConfig {
    pub name: String,
    pub rules: Vec<MultilineRuleConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultilineRuleConfig {
    pub state: String,
    pub pattern: String,
    pub next: String,
}

const START: &str = "start_state";

/// `(state, pattern, next)`.
type RuleDef = (String, String, String);

/// The built-in parsers, as `(state, pattern, next)` rules.
fn preset(name: &str) -> Option<Vec<(&'static str, &'static str, &'static str)>> {
    let rules = match name {
        "java" => vec![
            (
                START,
                r"(?:Exception|Error|Throwable)(?:[:\r\n]|$)",
                "java_after_exception",
            ),
            ("java_after_exception", r"^[\t ]*$", "java_after_exception"),
            ("java_after_exception", r"^[\t ]+(?:eval )?at ", "java"),
            (
                "java_after_exception",
                r"^[\t ]*\.\.\. \d+ (?:more|common frames omitted)",
                "java",
            ),
            ("java", r"^[\t ]+(?:eval )?at ", "java"),
            (
                "java",
                r"^[\t ]*(?:Caused by|Suppressed):",
                "java_after_exception",
            ),
            (
                "java",
                r"^[\t ]*\.\.\. \d+ (?:more|common frames omitted)",
                "java",
            ),
        ],
        "python" => vec![
            (START, r"^Traceback \(most recent call last\):$", "python"),
            ("python", r"^[\t ]+File ", "python_code"),
            (
                "python",
                r"^(?:[^\s.():]+\.)*[^\s.():]+(?::|$)",
                "python_end",
            ),
            ("python_code", r"^[\t ]+File ", "python_code"),
            ("python_code", r"^[\t ]+\S", "python"),
            (
                "python_code",
                r"^(?:[^\s.():]+\.)*[^\s.():]+(?::|$)",
                "python_end",
            ),
        ],
        "go" => vec![
            (START, r"^(?:panic: |fatal error: )", "go_panic"),
            (START, r"^goroutine \d+ \[", "go_frames"),
            ("go_panic", r"^$", "go_panic"),
            ("go_panic", r"^\[signal ", "go_panic"),
            ("go_panic", r"^goroutine \d+ \[", "go_frames"),
            ("go_frames", r"^\t", "go_frames"),
            ("go_frames", r"^\S.*\(.*\)$", "go_frames"),
            ("go_frames", r"^created by ", "go_frames"),
            ("go_frames", r"^$", "go_between"),
            ("go_between", r"^goroutine \d+ \[", "go_frames"),
        ],
        _ => return None,
    };
    Some(rules)
}

#[derive(Debug)]
struct Parser {
    /// Rules leaving each state, by state index; state 0 is `start_state`.
    states: Vec<Vec<(Regex, usize)>>,
}

/// The enabled parsers, compiled.
#[derive(Debug)]
pub struct MultilineRules {
    parsers: Vec<Parser>,
    /// All start rules at once, for the per-line fast path.
    starts: RegexSet,
    /// `(parser, next state)` of each pattern in `starts`.
    start_targets: Vec<(usize, usize)>,
    pub flush_timeout: Duration,
    pub max_lines: usize,
}

// Called for every line by `source::multiline`, a module (and codegen unit) away: inlined
// across it as when they lived there.
impl MultilineRules {
    /// Compiles the configured presets and parsers; errors name the config key.
    pub fn from_config(cfg: &MultilineConfig) -> Result<Self, (String, String)> {
        let mut defs: Vec<(String, Vec<RuleDef>)> = Vec::new();
        for (i, name) in cfg.presets.iter().enumerate() {
            let rules = preset(name).ok_or_else(|| {
                (
                    format!("source.multiline.presets[{i}]"),
                    format!("unknown preset {name:?}; known: java, python, go"),
                )
            })?;
            let rules = rules
                .into_iter()
                .map(|(s, p, n)| (s.to_string(), p.to_string(), n.to_string()))
                .collect();
            defs.push((format!("presets[{i}]"), rules));
        }
        for (i, p) in cfg.parsers.iter().enumerate() {
            let rules = p
                .rules
                .iter()
                .map(|r| (r.state.clone(), r.pattern.clone(), r.next.clone()))
                .collect();
            defs.push((format!("parsers[{i}]"), rules));
        }
        let mut parsers = Vec::new();
        let mut start_patterns = Vec::new();
        let mut start_targets = Vec::new();
        for (pi, (key, rules)) in defs.iter().enumerate() {
            let mut names = vec![START.to_string()];
            let mut index = |s: &str| match names.iter().position(|n| n == s) {
                Some(i) => i,
                None => {
                    names.push(s.to_string());
                    names.len() - 1
                }
            };
            let mut compiled = Vec::new();
            for (ri, (state, pattern, next)) in rules.iter().enumerate() {
                let re = Regex::new(pattern).map_err(|e| {
                    (
                        format!("source.multiline.{key}.rules[{ri}].pattern"),
                        format!("bad regex: {e}"),
                    )
                })?;
                compiled.push((index(state), re, index(next)));
            }
            if !compiled.iter().any(|(s, _, _)| *s == 0) {
                return Err((
                    format!("source.multiline.{key}.rules"),
                    format!("needs at least one rule with state = \"{START}\""),
                ));
            }
            let mut states: Vec<Vec<(Regex, usize)>> = vec![Vec::new(); names.len()];
            for (s, re, n) in compiled {
                if s == 0 {
                    start_patterns.push(re.as_str().to_string());
                    start_targets.push((pi, n));
                } else {
                    states[s].push((re, n));
                }
            }
            parsers.push(Parser { states });
        }
        let starts = RegexSet::new(&start_patterns).map_err(|e| {
            (
                "source.multiline".to_string(),
                format!("bad start pattern: {e}"),
            )
        })?;
        Ok(MultilineRules {
            parsers,
            starts,
            start_targets,
            flush_timeout: cfg.flush_timeout,
            max_lines: cfg.max_lines,
        })
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.parsers.is_empty()
    }

    #[inline]
    pub(crate) fn start(&self, content: &[u8]) -> Option<(usize, usize)> {
        if self.start_targets.is_empty() || !self.starts.is_match(content) {
            return None;
        }
        let first = self.starts.matches(content).into_iter().next()?;
        Some(self.start_targets[first])
    }

    #[inline]
    pub(crate) fn next(&self, parser: usize, state: usize, content: &[u8]) -> Option<usize> {
        self.parsers[parser].states[state]
            .iter()
            .find(|(re, _)| re.is_match(content))
            .map(|(_, n)| *n)
    }

    #[inline]
    pub(crate) fn is_final(&self, parser: usize, state: usize) -> bool {
        self.parsers[parser].states[state].is_empty()
    }
}
