//! The ECS document of one event, written byte by byte into the sink's buffer. What all
//! events of a file share was encoded once when the file was opened.

use super::ecs_fields::{EcsValues, FieldKeys};
use super::escape::{write_bytes, write_str};
use super::json_message::{lift, Lifted};
use super::logfmt::{self, Parsed};
use crate::enrich::path::PathMetadata;
use crate::event::{Flags, LogEvent};
use bytes::Bytes;
use std::path::Path;
use std::time::SystemTime;

/// Builds the pre-encoded parts of a file's documents.
pub struct FileMetadata;

impl FileMetadata {
    /// `"file":{"path":"…"}`, for inside the `log` object.
    pub fn path_fragment(path: &Path) -> Bytes {
        let mut out = b"\"file\":{\"path\":".to_vec();
        write_bytes(&mut out, path.as_os_str().as_encoded_bytes());
        out.push(b'}');
        Bytes::from(out)
    }

    /// The Kubernetes, container, host and agent members from the path alone, without braces.
    pub fn metadata_fragment(k: &PathMetadata, host_name: &str) -> Bytes {
        let options = crate::enrich::metadata::MetadataOptions::default();
        crate::enrich::metadata::ContainerMetadata {
            path: k,
            pod: None,
            namespace_labels: None,
            options: &options,
        }
        .fragment(host_name)
    }
}

/// Writes documents; one per sink, reused for every event.
#[derive(Debug, Clone)]
pub struct DocumentEncoder {
    /// `"<target>":` when JSON messages are lifted and kept.
    json_key: Option<Vec<u8>>,
    lift_json: bool,
    /// `"<target>":` when logfmt messages are lifted and their pairs kept.
    logfmt_key: Option<Vec<u8>>,
    lift_logfmt: bool,
    /// Which message keys feed which ECS fields.
    keys: std::sync::Arc<FieldKeys>,
    /// Where replaced invalid UTF-8 is counted.
    stats: Option<std::sync::Arc<crate::stats::Stats>>,
}

/// A message that is a record: what it gives the document.
enum Structured<'a> {
    Json(Lifted<'a>),
    Logfmt(Parsed<'a>),
}

impl Structured<'_> {
    fn message(&self) -> Option<&str> {
        match self {
            Structured::Json(l) => l.message.as_deref(),
            Structured::Logfmt(p) => p.message.as_deref(),
        }
    }

    fn level(&self) -> Option<&str> {
        match self {
            Structured::Json(l) => l.level.as_deref(),
            Structured::Logfmt(p) => p.level.as_deref(),
        }
    }
}

/// `"<target>":`, or `None` when nothing is kept.
fn member_key(enabled: bool, target: &str) -> Option<Vec<u8>> {
    (enabled && !target.is_empty()).then(|| {
        let mut k = Vec::new();
        write_str(&mut k, target);
        k.push(b':');
        k
    })
}

impl DocumentEncoder {
    /// JSON messages as `cfg` says; logfmt and the ECS fields as by default.
    pub fn new(cfg: &crate::config::JsonConfig) -> Self {
        DocumentEncoder::with(
            cfg,
            &crate::config::LogfmtConfig::default(),
            &crate::config::FieldsConfig::default(),
        )
    }

    /// Every structured-message setting of the source.
    pub fn for_source(src: &crate::config::SourceConfig) -> Self {
        DocumentEncoder::with(&src.json, &src.logfmt, &src.fields)
    }

    fn with(
        json: &crate::config::JsonConfig,
        logfmt: &crate::config::LogfmtConfig,
        fields: &crate::config::FieldsConfig,
    ) -> Self {
        DocumentEncoder {
            json_key: member_key(json.enabled, &json.target),
            lift_json: json.enabled,
            logfmt_key: member_key(logfmt.enabled, &logfmt.target),
            lift_logfmt: logfmt.enabled,
            keys: std::sync::Arc::new(FieldKeys::new(fields)),
            stats: None,
        }
    }

    /// Counts events whose invalid UTF-8 was replaced in `stats`.
    pub fn counting(mut self, stats: std::sync::Arc<crate::stats::Stats>) -> Self {
        self.stats = Some(stats);
        self
    }

    /// The message as a JSON object or a logfmt line, when it is one and lifting is on.
    /// The ECS fields go into `ecs`.
    fn structured<'a>(&self, message: &'a [u8], ecs: &mut EcsValues<'a>) -> Option<Structured<'a>> {
        match message.first() {
            Some(b'{') if self.lift_json => lift(message, &self.keys, ecs).map(Structured::Json),
            Some(_) if self.lift_logfmt && memchr::memchr(b'=', message).is_some() => {
                logfmt::parse(message, &self.keys).map(|mut p| {
                    *ecs = std::mem::take(&mut p.ecs);
                    Structured::Logfmt(p)
                })
            }
            _ => None,
        }
    }

    /// Appends the event's document (no trailing newline) to `out`.
    pub fn encode(&self, e: &LogEvent, out: &mut Vec<u8>) {
        self.encode_with(e, &[], out)
    }

    /// Like `encode`, adding `extra` members (e.g. `data_stream`, no leading comma).
    pub fn encode_with(&self, e: &LogEvent, extra: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"@timestamp\":\"");
        if e.timestamp.is_empty() {
            crate::time::format_rfc3339_nanos(SystemTime::now(), out);
        } else {
            out.extend_from_slice(&e.timestamp);
        }
        out.extend_from_slice(b"\",\"message\":");
        let mut ecs = EcsValues::default();
        let lifted = self.structured(&e.message, &mut ecs);
        let mut flags = e.flags;
        if ecs.mismatched {
            flags.insert(Flags::FIELD_TYPE_MISMATCH);
            if let Some(s) = &self.stats {
                crate::stats::Stats::add(&s.events_field_type_mismatch, 1);
            }
        }
        match lifted.as_ref().and_then(|l| l.message()) {
            Some(m) => write_str(out, m),
            None => {
                if !write_bytes(out, &e.message) {
                    flags.insert(Flags::INVALID_UTF8);
                    if let Some(s) = &self.stats {
                        crate::stats::Stats::add(&s.events_invalid_utf8, 1);
                    }
                }
            }
        }
        out.extend_from_slice(b",\"stream\":\"");
        out.extend_from_slice(e.stream.as_str().as_bytes());
        out.extend_from_slice(b"\",\"log\":{\"offset\":");
        out.extend_from_slice(itoa::Buffer::new().format(e.offset).as_bytes());
        out.push(b',');
        out.extend_from_slice(&e.file.path_fragment);
        if let Some(level) = lifted.as_ref().and_then(|l| l.level()) {
            out.extend_from_slice(b",\"level\":");
            write_str(out, level);
        }
        if !flags.is_empty() {
            out.extend_from_slice(b",\"flags\":[");
            for (i, name) in flags.names().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.push(b'"');
                out.extend_from_slice(name.as_bytes());
                out.push(b'"');
            }
            out.push(b']');
        }
        out.push(b'}');
        if !e.file.metadata.is_empty() {
            out.push(b',');
            out.extend_from_slice(&e.file.metadata);
        }
        ecs.write(out);
        match (&lifted, &self.json_key, &self.logfmt_key) {
            (Some(Structured::Json(l)), Some(key), _) => {
                out.push(b',');
                out.extend_from_slice(key);
                out.extend_from_slice(&l.object);
            }
            (Some(Structured::Logfmt(p)), _, Some(key)) => {
                out.push(b',');
                out.extend_from_slice(key);
                out.push(b'{');
                for (i, (k, v)) in p.pairs.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_str(out, k);
                    out.push(b':');
                    write_str(out, v);
                }
                out.push(b'}');
            }
            _ => {}
        }
        if !extra.is_empty() {
            out.push(b',');
            out.extend_from_slice(extra);
        }
        out.push(b'}');
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::JsonConfig;
    use crate::event::{FileContext, FileIdentity, Stream};
    use serde_json::{json, Value};
    use std::sync::Arc;

    pub(crate) fn event(message: &[u8], flags: Flags) -> LogEvent {
        let meta = PathMetadata {
            namespace: Some("shop".into()),
            pod_name: Some("web-1".into()),
            pod_uid: Some("uid-1".into()),
            container_name: Some("nginx".into()),
            container_id: Some("abc".into()),
        };
        LogEvent {
            file: Arc::new(FileContext {
                key: 1,
                kube: Default::default(),
                identity: FileIdentity {
                    dev: 1,
                    inode: 2,
                    fingerprint: 3,
                },
                path: "/var/log/containers/x.log".into(),
                id_seed: 0,
                path_fragment: FileMetadata::path_fragment(Path::new("/var/log/containers/x.log")),
                metadata: FileMetadata::metadata_fragment(&meta, "node-1"),
                known_since: std::time::Instant::now(),
                replay_end: 0,
            }),
            seq: 0,
            offset: 1234,
            safe_point: 2000,
            timestamp: Bytes::from_static(b"2024-05-01T10:00:00.123456789Z"),
            stream: Stream::Stderr,
            message: Bytes::copy_from_slice(message),
            flags,
        }
    }

    fn encode(enc: &DocumentEncoder, e: &LogEvent) -> Value {
        let mut out = Vec::new();
        enc.encode(e, &mut out);
        assert!(!out.contains(&b'\n'));
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn writes_ecs_fields() {
        let enc = DocumentEncoder::new(&JsonConfig::default());
        let d = encode(&enc, &event(b"hello \"world\"", Flags::empty()));
        assert_eq!(d["@timestamp"], "2024-05-01T10:00:00.123456789Z");
        assert_eq!(d["message"], "hello \"world\"");
        assert_eq!(d["stream"], "stderr");
        assert_eq!(d["log"]["offset"], 1234);
        assert_eq!(d["log"]["file"]["path"], "/var/log/containers/x.log");
        assert_eq!(d["kubernetes"]["namespace"], "shop");
        assert_eq!(d["kubernetes"]["pod"]["name"], "web-1");
        assert_eq!(d["kubernetes"]["pod"]["uid"], "uid-1");
        assert_eq!(d["kubernetes"]["container"]["name"], "nginx");
        assert_eq!(d["container"]["id"], "abc");
        assert_eq!(d["host"]["name"], "node-1");
        assert_eq!(d["agent"]["name"], "logferry");
        assert!(d["log"].get("flags").is_none());
        assert!(d.get("json").is_none());
    }

    #[test]
    fn lifts_json_messages() {
        let enc = DocumentEncoder::new(&JsonConfig::default());
        let d = encode(
            &enc,
            &event(
                br#"{"level":"WARN","msg":"slow","latency_ms":1500}"#,
                Flags::empty(),
            ),
        );
        assert_eq!(d["message"], "slow");
        assert_eq!(d["log"]["level"], "warn");
        assert_eq!(d["json"]["latency_ms"], 1500);
        let enc = DocumentEncoder::new(&JsonConfig {
            enabled: true,
            target: "app".into(),
        });
        assert_eq!(
            encode(&enc, &event(br#"{"msg":"m"}"#, Flags::empty()))["app"]["msg"],
            "m"
        );
        let enc = DocumentEncoder::new(&JsonConfig {
            enabled: false,
            target: "json".into(),
        });
        let d = encode(&enc, &event(br#"{"msg":"m"}"#, Flags::empty()));
        assert_eq!(d["message"], r#"{"msg":"m"}"#);
        assert!(d.get("json").is_none());
    }

    #[test]
    fn lifts_ecs_fields_from_json_and_logfmt() {
        let enc = DocumentEncoder::new(&JsonConfig::default());
        let d = encode(
            &enc,
            &event(
                br#"{"msg":"done","trace_id":"t-1","user":{"id":"u-9","name":"ann"},"http":{"request":{"method":"POST"}},"status_code":"502","latency_ms":1234.5}"#,
                Flags::empty(),
            ),
        );
        assert_eq!(d["trace"]["id"], "t-1");
        assert_eq!(d["user"]["id"], "u-9");
        assert_eq!(d["http"]["request"]["method"], "POST");
        assert_eq!(d["http"]["response"]["status_code"], 502);
        assert_eq!(d["event"]["duration"], 1_234_500_000i64);
        assert_eq!(d["json"]["user"]["name"], "ann", "the object is kept whole");
        assert!(d["log"].get("flags").is_none());

        let d = encode(
            &enc,
            &event(
                b"level=error msg=\"payment failed\" request_id=r-5 path=/pay duration=1.5s",
                Flags::empty(),
            ),
        );
        assert_eq!(d["message"], "payment failed");
        assert_eq!(d["log"]["level"], "error");
        assert_eq!(d["transaction"]["id"], "r-5");
        assert_eq!(d["url"]["path"], "/pay");
        assert_eq!(d["event"]["duration"], 1_500_000_000i64);
        assert_eq!(d["logfmt"]["request_id"], "r-5");
        assert!(d.get("json").is_none());

        // A wrong type: not lifted, flagged, kept in the object.
        let d = encode(
            &enc,
            &event(
                br#"{"msg":"m","trace_id":{"a":1},"method":7}"#,
                Flags::empty(),
            ),
        );
        assert!(d.get("trace").is_none() && d.get("http").is_none());
        assert_eq!(d["log"]["flags"], json!(["field_type_mismatch"]));
        assert_eq!(d["json"]["trace_id"]["a"], 1);

        // Prose with `=` in it stays text.
        let d = encode(&enc, &event(b"retrying with timeout=5s", Flags::empty()));
        assert_eq!(d["message"], "retrying with timeout=5s");
        assert!(d.get("logfmt").is_none() && d.get("event").is_none());
    }

    #[test]
    fn flags_invalid_utf8_and_others() {
        let enc = DocumentEncoder::new(&JsonConfig::default());
        let d = encode(&enc, &event(b"bad \xff byte", Flags::PARTIAL_MERGED));
        assert_eq!(d["message"], "bad \u{fffd} byte");
        assert_eq!(d["log"]["flags"], json!(["partial_merged", "invalid_utf8"]));
    }

    #[test]
    fn fills_missing_timestamp_with_read_time() {
        let enc = DocumentEncoder::new(&JsonConfig::default());
        let mut e = event(b"x", Flags::NO_TIMESTAMP);
        e.timestamp = Bytes::new();
        let d = encode(&enc, &e);
        assert!(crate::time::is_rfc3339(
            d["@timestamp"].as_str().unwrap().as_bytes()
        ));
    }
}
