//! The typed configuration: TOML with `${VAR}` / `${VAR:-default}` interpolation, unknown
//! keys rejected, and every error naming the key that is wrong.

mod buffer;
mod elasticsearch;
mod fields;
mod index_name;
mod kubernetes;
mod multiline;
mod rate_limit;
mod retention;

pub use buffer::{BufferConfig, BufferKind, Fsync};
pub use elasticsearch::{has_userinfo, ElasticsearchConfig, IndexMode, Lifecycle, Secret};
pub use fields::{FieldsConfig, LogfmtConfig};
pub use index_name::{sanitize_index, sanitize_part};
pub use kubernetes::KubernetesConfig;
pub use multiline::{MultilineConfig, MultilineParserConfig, MultilineRuleConfig, MultilineRules};
pub use rate_limit::RateLimitConfig;
pub use retention::{Days, RetentionConfig, RetentionRule};

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: TOML syntax error: {message}")]
    Syntax { path: String, message: String },
    #[error("{path}: key `{key}`: {message}")]
    Key {
        path: String,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `host.name` of every document; empty means the machine's host name.
    pub host_name: String,
    /// Where checkpoints are kept.
    pub state_dir: PathBuf,
    pub source: SourceConfig,
    pub kubernetes: KubernetesConfig,
    pub checkpoint: CheckpointConfig,
    pub output: OutputConfig,
    pub buffer: BufferConfig,
    pub rate_limit: RateLimitConfig,
    pub retention: RetentionConfig,
    pub http: HttpConfig,
    pub reload: ReloadConfig,
    pub shutdown: ShutdownConfig,
    /// The agent's own log level, as `RUST_LOG` takes it (`info`, `logferry=debug,warn`);
    /// `RUST_LOG`, when set, wins.
    pub log_level: String,
}

impl Config {
    /// Whether namespaces are watched: for their labels in documents, or for the retention
    /// rules and annotations.
    pub fn watches_namespaces(&self) -> bool {
        self.kubernetes.namespace_labels
            || self
                .retention
                .reads_namespaces(self.output.elasticsearch.retention_days)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host_name: String::new(),
            state_dir: PathBuf::from("/var/lib/logferry"),
            source: SourceConfig::default(),
            kubernetes: KubernetesConfig::default(),
            checkpoint: CheckpointConfig::default(),
            output: OutputConfig::default(),
            buffer: BufferConfig::default(),
            rate_limit: RateLimitConfig::default(),
            retention: RetentionConfig::default(),
            http: HttpConfig::default(),
            reload: ReloadConfig::default(),
            shutdown: ShutdownConfig::default(),
            log_level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    Beginning,
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Cri,
    Docker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineOverflow {
    /// Ship a too-long merged line as several events, each flagged `split`.
    Split,
    /// Ship its first `max_line_bytes`, flagged `truncated`, and count the rest.
    Truncate,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    #[serde(with = "duration_str")]
    pub rescan_interval: Duration,
    pub start_at: StartAt,
    pub format: LogFormat,
    #[serde(with = "byte_size")]
    pub max_line_bytes: u64,
    pub line_overflow: LineOverflow,
    #[serde(with = "byte_size")]
    pub read_buffer_bytes: u64,
    /// Fairness quantum: at most this much is read from one file before the next gets a turn.
    #[serde(with = "byte_size")]
    pub max_read_bytes_per_file: u64,
    /// How long a rotated or deleted file is kept open at its end for late writes.
    #[serde(with = "duration_str")]
    pub rotate_wait: Duration,
    /// Longest wait between looks at a file with nothing new. A file quiet for a second
    /// is watched with inotify instead; one that cannot be is polled this often.
    #[serde(with = "duration_str")]
    pub max_idle_poll: Duration,
    /// How long a file read to its end waits before it is read again: many files writing
    /// a few lines each are read in passes that gather them, not one read per line.
    #[serde(with = "duration_str")]
    pub read_interval: Duration,
    pub multiline: MultilineConfig,
    pub json: JsonConfig,
    pub logfmt: LogfmtConfig,
    pub fields: FieldsConfig,
    /// Where a symlink may lead besides the parent directory of each include pattern's
    /// fixed part (`/var/log` for `/var/log/containers/*.log`). A link leading elsewhere is
    /// not followed.
    pub symlink_roots: Vec<PathBuf>,
    /// Files followed at once at most (each holds a descriptor); more wait, counted.
    pub max_open_files: u64,
}

impl SourceConfig {
    /// The document keys structured messages are kept under (`json`, `logfmt`), when on.
    pub fn kept_objects(&self) -> Vec<String> {
        [
            (self.json.enabled, &self.json.target),
            (self.logfmt.enabled, &self.logfmt.target),
        ]
        .into_iter()
        .filter(|(on, k)| *on && !k.is_empty())
        .map(|(_, k)| k.clone())
        .collect()
    }
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            include: vec!["/var/log/containers/*.log".into()],
            exclude: vec![],
            rescan_interval: Duration::from_secs(5),
            start_at: StartAt::Beginning,
            format: LogFormat::Auto,
            max_line_bytes: 1024 * 1024,
            line_overflow: LineOverflow::Split,
            read_buffer_bytes: 64 * 1024,
            max_read_bytes_per_file: 256 * 1024,
            rotate_wait: Duration::from_secs(5),
            max_idle_poll: Duration::from_millis(500),
            read_interval: Duration::from_millis(200),
            multiline: MultilineConfig::default(),
            json: JsonConfig::default(),
            logfmt: LogfmtConfig::default(),
            fields: FieldsConfig::default(),
            symlink_roots: vec![PathBuf::from("/var/lib/docker/containers")],
            max_open_files: 10_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JsonConfig {
    /// Lift `level`/`msg` out of messages that are JSON objects.
    pub enabled: bool,
    /// The key the whole object is kept under; empty to not keep it.
    pub target: String,
}

impl Default for JsonConfig {
    fn default() -> Self {
        JsonConfig {
            enabled: true,
            target: "json".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// How often committed offsets are written to disk (and always on shutdown).
    #[serde(with = "duration_str")]
    pub interval: Duration,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// `elasticsearch` or `stdout`.
    #[serde(rename = "type")]
    pub kind: OutputKind,
    pub stdout: StdoutConfig,
    pub elasticsearch: ElasticsearchConfig,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            kind: OutputKind::Stdout,
            stdout: StdoutConfig::default(),
            elasticsearch: ElasticsearchConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    Stdout,
    Elasticsearch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StdoutFormat {
    /// One document per line.
    Document,
    /// The NDJSON bulk body Elasticsearch would get: action line with `_id`, then document.
    Bulk,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StdoutConfig {
    pub format: StdoutFormat,
}

impl Default for StdoutConfig {
    fn default() -> Self {
        StdoutConfig {
            format: StdoutFormat::Document,
        }
    }
}

/// The agent's own HTTP endpoint (`run` only): `/healthz`, `/readyz`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub enabled: bool,
    pub listen: String,
    /// Connections held at once; a new one past it closes the oldest.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            listen: "0.0.0.0:2020".into(),
            max_connections: 64,
        }
    }
}

/// Taking a changed config without a restart: at SIGHUP, and when the file changes (a
/// ConfigMap update) if `watch`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    pub watch: bool,
    /// How often the file is read to see whether it changed.
    #[serde(with = "duration_str")]
    pub interval: Duration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: true,
            interval: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Upper bound on draining in-flight events at SIGTERM/SIGINT.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            timeout: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// Reads, interpolates, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string(), &|k| {
            std::env::var(k).ok()
        })
    }

    /// Parses config text; `env` looks up variables for `${VAR}`.
    pub fn parse(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: origin.to_string(),
                    message: redact_snippet(e.to_string().trim(), text),
                })?;
        no_literal_credentials(&table).map_err(|(key, message)| ConfigError::Key {
            path: origin.to_string(),
            key,
            message,
        })?;
        interpolate_table(&mut table, "", env).map_err(|(key, message)| ConfigError::Key {
            path: origin.to_string(),
            key,
            message,
        })?;
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                ConfigError::Key {
                    path: origin.to_string(),
                    key: if key == "." {
                        "(top level)".into()
                    } else {
                        key
                    },
                    message: e.into_inner().to_string(),
                }
            })?;
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Key {
                path: origin.to_string(),
                key,
                message,
            })?;
        Ok(config)
    }

    /// Checks what types cannot: compiled patterns, sane bounds.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let s = &self.source;
        if s.include.is_empty() {
            return Err(("source.include".into(), "needs at least one glob".into()));
        }
        for (i, g) in s.include.iter().enumerate() {
            glob::Pattern::new(g).map_err(|e| {
                (
                    format!("source.include[{i}]"),
                    format!("bad glob {g:?}: {e}"),
                )
            })?;
        }
        for (i, g) in s.exclude.iter().enumerate() {
            globset::Glob::new(g).map_err(|e| {
                (
                    format!("source.exclude[{i}]"),
                    format!("bad glob {g:?}: {e}"),
                )
            })?;
        }
        s.fields.check()?;
        let positive = [
            ("source.rescan_interval", s.rescan_interval),
            ("source.max_idle_poll", s.max_idle_poll),
            ("source.read_interval", s.read_interval),
            ("source.multiline.flush_timeout", s.multiline.flush_timeout),
            ("checkpoint.interval", self.checkpoint.interval),
            ("shutdown.timeout", self.shutdown.timeout),
            ("reload.interval", self.reload.interval),
        ];
        for (key, d) in positive {
            if d.is_zero() {
                return Err((key.into(), "must be greater than zero".into()));
            }
        }
        if s.max_line_bytes < 64 {
            return Err((
                "source.max_line_bytes".into(),
                "must be at least 64 bytes".into(),
            ));
        }
        if s.read_buffer_bytes < 4096 {
            return Err((
                "source.read_buffer_bytes".into(),
                "must be at least 4 KiB".into(),
            ));
        }
        if s.max_read_bytes_per_file < s.read_buffer_bytes {
            return Err((
                "source.max_read_bytes_per_file".into(),
                "must be at least source.read_buffer_bytes".into(),
            ));
        }
        if s.max_open_files == 0 {
            return Err(("source.max_open_files".into(), "must be at least 1".into()));
        }
        if s.multiline.max_lines < 2 {
            return Err((
                "source.multiline.max_lines".into(),
                "must be at least 2".into(),
            ));
        }
        MultilineRules::from_config(&s.multiline)?;
        self.kubernetes.validate()?;
        if self.http.max_connections == 0 {
            return Err(("http.max_connections".into(), "must be at least 1".into()));
        }
        if self.http.enabled && self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err((
                "http.listen".into(),
                format!("{:?} is not an address like 0.0.0.0:2020", self.http.listen),
            ));
        }
        if self.output.kind == OutputKind::Elasticsearch {
            self.output.elasticsearch.validate()?;
        }
        self.buffer
            .validate(self.output.kind == OutputKind::Elasticsearch)?;
        self.rate_limit.validate()?;
        self.retention
            .validate(self.output.elasticsearch.retention_days)?;
        let classes = !self.retention.rules.is_empty() || !self.retention.classes.is_empty();
        if classes && self.output.elasticsearch.mode == IndexMode::Index {
            return Err((
                "retention.rules".into(),
                "retention classes need data streams (output.elasticsearch.mode = \"data_stream\")"
                    .into(),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level).map_err(|e| {
            (
                "log_level".to_string(),
                format!("{:?}: {e}", self.log_level),
            )
        })?;
        Ok(())
    }

    /// The effective config as TOML, for `check-config`. A `$` in a value is written `$$`,
    /// so that the printed config, read again, means the same.
    pub fn to_toml(&self) -> String {
        fn escape(v: &mut toml::Value) {
            match v {
                toml::Value::String(s) if s.contains('$') => *s = s.replace('$', "$$"),
                toml::Value::Array(a) => a.iter_mut().for_each(escape),
                toml::Value::Table(t) => t.iter_mut().for_each(|(_, v)| escape(v)),
                _ => {}
            }
        }
        match toml::Value::try_from(self) {
            Ok(mut v) => {
                escape(&mut v);
                toml::to_string_pretty(&v)
                    .unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
            }
            Err(e) => format!("# cannot print config: {e}\n"),
        }
    }
}

/// The keys whose values are credentials, in `[output.elasticsearch]`.
pub const CREDENTIAL_KEYS: [&str; 3] = ["password", "api_key", "bearer_token"];

/// A TOML error quotes the line at fault: a line of a credential's value (all of them,
/// for a multi-line string) is replaced by `<redacted>`.
fn redact_snippet(message: &str, text: &str) -> String {
    let secret_lines = credential_lines(text);
    message
        .lines()
        .map(|l| {
            let quoted = l
                .split_once(" | ")
                .and_then(|(n, rest)| Some((n, n.trim().parse::<usize>().ok()?, rest)));
            match quoted {
                Some((n, number, rest)) if secret_lines.contains(&number) => {
                    let key = rest.split('=').next().unwrap_or("").trim_end();
                    if rest.contains('=') && credential_key(key) {
                        format!("{n} | {key} = <redacted>")
                    } else {
                        format!("{n} | <redacted>")
                    }
                }
                _ => l.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether a line may name a credential: the credential keys, and any token or secret
/// (redacting too much costs a less helpful message, too little a leak).
fn credential_key(text: &str) -> bool {
    CREDENTIAL_KEYS
        .iter()
        .chain(&["token", "secret"])
        .any(|k| text.contains(k))
}

/// The 1-based numbers of the lines that may hold a credential: a line naming a credential
/// key, and every line of a multi-line string (`"""` or `'''`) that starts on one.
/// Lexical, as the text did not parse.
fn credential_lines(text: &str) -> std::collections::HashSet<usize> {
    let mut lines = std::collections::HashSet::new();
    let mut open: Option<&str> = None;
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        if let Some(delim) = open {
            lines.insert(number);
            if line.contains(delim) {
                open = None;
            }
            continue;
        }
        if !credential_key(line) {
            continue;
        }
        lines.insert(number);
        for delim in ["\"\"\"", "'''"] {
            if let Some(at) = line.find(delim) {
                if !line[at + 3..].contains(delim) {
                    open = Some(delim);
                }
                break;
            }
        }
    }
    lines
}

/// Credentials come from the environment or from files, never from the config file
/// itself (a ConfigMap anyone with read access to the namespace can see): the value must
/// be made of `${VAR}` references alone, without a default to fall back on.
fn no_literal_credentials(table: &toml::Table) -> Result<(), (String, String)> {
    let Some(es) = table
        .get("output")
        .and_then(|o| o.get("elasticsearch"))
        .and_then(|e| e.as_table())
    else {
        return Ok(());
    };
    for key in CREDENTIAL_KEYS {
        let message = match es.get(key) {
            None => continue,
            Some(toml::Value::String(v)) if only_references(v) => continue,
            Some(toml::Value::String(v)) if v.contains("${") => format!(
                "a credential must come from the environment or a file: \"${{ENV_VAR}}\" \
                 alone, without a default or other text (or use {key}_file)"
            ),
            Some(toml::Value::String(_)) => format!(
                "a credential must not be written in the config file; use \"${{ENV_VAR}}\" or {key}_file"
            ),
            Some(other) => format!(
                "must be a string naming an environment variable, \"${{ENV_VAR}}\" (or use \
                 {key}_file), not a {}",
                other.type_str()
            ),
        };
        return Err((format!("output.elasticsearch.{key}"), message));
    }
    Ok(())
}

/// Whether `v` is empty or only `${VAR}` references (an empty `:-` default allowed).
fn only_references(v: &str) -> bool {
    let mut rest = v;
    while !rest.is_empty() {
        let Some(body) = rest.strip_prefix("${") else {
            return false;
        };
        let Some(end) = body.find('}') else {
            return false;
        };
        if matches!(body[..end].split_once(":-"), Some((_, d)) if !d.is_empty()) {
            return false;
        }
        rest = &body[end + 1..];
    }
    true
}

/// Replaces `${VAR}` and `${VAR:-default}` in every string value; `$$` is a literal `$`.
fn interpolate_table(
    table: &mut toml::Table,
    prefix: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), (String, String)> {
    for (k, v) in table.iter_mut() {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        interpolate_value(v, &key, env)?;
    }
    Ok(())
}

fn interpolate_value(
    v: &mut toml::Value,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), (String, String)> {
    match v {
        toml::Value::String(s) => {
            *s = interpolate(s, env).map_err(|m| (key.to_string(), m))?;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_value(item, &format!("{key}[{i}]"), env)?;
            }
        }
        toml::Value::Table(t) => interpolate_table(t, key, env)?,
        _ => {}
    }
    Ok(())
}

pub fn interpolate(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !s.contains('$') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed `${{` in {s:?}"))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(format!("`${{{expr}}}` is not a valid variable reference"));
            }
            match (env(name).filter(|v| !v.is_empty() || default.is_none()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (use ${{{name}:-default}} for a default)"
                    ))
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Durations as human strings: "500ms", "5s", "1m 30s".
mod duration_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}); write e.g. \"500ms\" or \"5s\""
            ))
        })
    }
}

/// Byte sizes as integers or strings with a unit: 1048576, "1MiB", "64KiB", "5MB".
mod byte_size {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*v)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Str(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let err = |s: &str| {
            serde::de::Error::custom(format!(
                "invalid byte size {s:?}; write an integer or e.g. \"64KiB\", \"1MiB\", \"5MB\""
            ))
        };
        match Raw::deserialize(d).map_err(|_| err("(not a number or string)"))? {
            Raw::Int(v) => Ok(v),
            Raw::Str(s) => parse(&s).ok_or_else(|| err(&s)),
        }
    }

    pub fn parse(s: &str) -> Option<u64> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().ok()?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1000,
            "kib" | "k" => 1024,
            "mb" => 1000 * 1000,
            "mib" | "m" => 1024 * 1024,
            "gb" => 1000 * 1000 * 1000,
            "gib" | "g" => 1024 * 1024 * 1024,
            _ => return None,
        };
        n.checked_mul(mult)
    }

    #[cfg(test)]
    #[test]
    fn parses_units() {
        assert_eq!(parse("1MiB"), Some(1 << 20));
        assert_eq!(parse("64 KiB"), Some(65536));
        assert_eq!(parse("5MB"), Some(5_000_000));
        assert_eq!(parse("12"), Some(12));
        assert_eq!(parse("1.5MiB"), None);
        assert_eq!(parse("MiB"), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "NODE_NAME" => Some("node-7".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", &env)
    }

    #[test]
    fn empty_config_is_all_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.source.include, vec!["/var/log/containers/*.log"]);
        assert_eq!(c.source.rescan_interval, Duration::from_secs(5));
        assert_eq!(c.source.max_line_bytes, 1 << 20);
        assert_eq!(c.source.start_at, StartAt::Beginning);
    }

    #[test]
    fn a_syntax_error_on_a_credential_line_does_not_quote_it() {
        let text = "[output.elasticsearch]\nendpoints = [\"http://x\"]\npassword = \"hunter2\n";
        let e = parse(text).unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("password = <redacted>"), "{e}");
        // Other lines are quoted as they are, to show what is wrong.
        let e = parse("[source]\ninclude = [\"a\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("include = [\"a\""), "{e}");
    }

    #[test]
    fn credentials_written_in_the_file_are_refused() {
        let es = |line: &str| format!("[output.elasticsearch]\n{line}\n");
        match parse(&es(r#"password = "hunter2""#)) {
            Err(ConfigError::Key { key, message, .. }) => {
                assert_eq!(key, "output.elasticsearch.password");
                assert!(!message.contains("hunter2"), "the secret is not repeated");
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&es(r#"api_key = "id:key""#)).is_err());
        // Nor behind a default, nor mixed with references.
        for v in [
            r#""${PW:-hunter2}""#,
            r#""${PW}hunter2""#,
            r#""${PW""#,
            r#"'hunter2'"#,
        ] {
            let e = parse(&es(&format!("password = {v}")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("output.elasticsearch.password"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        assert!(parse(&es(r#"password = "${NODE_NAME}${EMPTY:-}""#)).is_ok());
        // From the environment, a file, or empty: fine.
        let c = parse(&es(r#"password = "${NODE_NAME}""#)).unwrap();
        assert_eq!(c.output.elasticsearch.password.expose(), "node-7");
        assert!(parse(&es(r#"password = """#)).is_ok());
        assert!(parse(&es(r#"bearer_token_file = "/run/secrets/token""#)).is_ok());
    }

    #[test]
    fn interpolates_variables_and_defaults() {
        let c = parse(
            r#"host_name = "${NODE_NAME}"
state_dir = "${STATE:-/tmp/lf}/x"
[source]
include = ["${LOGS:-/logs}/*.log", "$$literal"]
"#,
        )
        .unwrap();
        assert_eq!(c.host_name, "node-7");
        assert_eq!(c.state_dir, PathBuf::from("/tmp/lf/x"));
        assert_eq!(c.source.include, vec!["/logs/*.log", "$literal"]);
        // An empty variable takes the default.
        assert_eq!(interpolate("${EMPTY:-d}", &env).unwrap(), "d");
        assert_eq!(interpolate("${EMPTY}", &env).unwrap(), "");
    }

    #[test]
    fn missing_variable_names_key_and_variable() {
        let e = parse("[source]\ninclude = [\"${NOPE}/x\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("source.include[0]"), "{e}");
        assert!(e.contains("NOPE is not set"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("[source]\nincldue = []").unwrap_err().to_string();
        assert!(e.contains("incldue"), "{e}");
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn wrong_type_names_full_key() {
        let e = parse("[source]\nmax_line_bytes = \"lots\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("source.max_line_bytes"), "{e}");
        let e = parse("[source.multiline]\nflush_timeout = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("source.multiline.flush_timeout"), "{e}");
        assert!(e.contains("invalid duration"), "{e}");
        let e = parse("[source]\nstart_at = \"middle\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("source.start_at"), "{e}");
    }

    #[test]
    fn semantic_errors_name_key() {
        let e = parse("[source]\ninclude = []").unwrap_err().to_string();
        assert!(e.contains("source.include"), "{e}");
        let e = parse("[source.multiline]\npresets = [\"cobol\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("source.multiline.presets[0]"), "{e}");
        let e = parse(
            "[[source.multiline.parsers]]\nname = \"x\"\nrules = [{state = \"start_state\", pattern = \"(\", next = \"a\"}]",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("source.multiline.parsers[0].rules[0].pattern"),
            "{e}"
        );
        let e = parse("[checkpoint]\ninterval = \"0s\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("checkpoint.interval"), "{e}");
        let e = parse("[retention]\nmax = \"1000d\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("retention.max"), "{e}");
        let e = parse("[output.elasticsearch]\nmode = \"index\"\n[[retention.rules]]\nnamespaces = [\"ci-*\"]\nretention = \"7d\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("retention.rules") && e.contains("data streams"),
            "{e}"
        );
        let e = parse("[retention]\ndefault = \"90 days\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("retention.default") && e.contains("not a number of days"),
            "{e}"
        );
    }

    #[test]
    fn syntax_error_is_reported() {
        let e = parse("[source\n").unwrap_err().to_string();
        assert!(e.contains("TOML syntax error"), "{e}");
    }

    #[test]
    fn effective_config_round_trips() {
        let c = parse("[source]\nmax_line_bytes = \"2MiB\"").unwrap();
        let again = parse(&c.to_toml()).unwrap();
        assert_eq!(again.source.max_line_bytes, 2 << 20);
        assert_eq!(again.source.rescan_interval, c.source.rescan_interval);
    }
}
