//! The ECS document of one event, written byte by byte into the sink's buffer. What all
//! events of a file share is encoded once per file and pod version (`file_fields`).

use super::ecs_fields::{EcsValues, FieldKeys};
use super::escape::{write_bytes, write_str};
use super::file_fields::{Describe, FileFields, FileFieldsCache};
use super::json_message::{lift, Lifted};
use super::logfmt::{self, Parsed};
use super::metadata::MetadataOptions;
use crate::event::{Flags, LogEvent};
use std::time::SystemTime;

/// Writes documents; one per sink, reused for every event. What a file's documents share
/// is encoded once per file and pod version (`FileFieldsCache`).
#[derive(Debug, Clone)]
pub struct DocumentEncoder {
    event: EventEncoder,
    files: FileFieldsCache,
}

/// What differs from one document to the next: the message and what is lifted from it.
#[derive(Debug, Clone)]
struct EventEncoder {
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

    /// The agent's documents: the source's settings, this node's name, and what of each
    /// pod the Kubernetes config keeps.
    pub fn for_config(config: &crate::config::Config, host_name: &str) -> Self {
        DocumentEncoder::for_source(&config.source).describing(Describe {
            host_name: host_name.to_string(),
            options: MetadataOptions {
                annotations: config.kubernetes.annotations.clone(),
                dedot: config.kubernetes.dedot_keys,
                namespace_labels: config.kubernetes.namespace_labels,
            },
        })
    }

    fn with(
        json: &crate::config::JsonConfig,
        logfmt: &crate::config::LogfmtConfig,
        fields: &crate::config::FieldsConfig,
    ) -> Self {
        DocumentEncoder {
            event: EventEncoder {
                json_key: member_key(json.enabled, &json.target),
                lift_json: json.enabled,
                logfmt_key: member_key(logfmt.enabled, &logfmt.target),
                lift_logfmt: logfmt.enabled,
                keys: std::sync::Arc::new(FieldKeys::new(fields)),
                stats: None,
            },
            files: FileFieldsCache::default(),
        }
    }

    /// The node's name and the pod metadata options of the shared members.
    pub fn describing(mut self, describe: Describe) -> Self {
        self.files = FileFieldsCache::new(describe);
        self
    }

    /// Counts events whose invalid UTF-8 was replaced in `stats`.
    pub fn counting(mut self, stats: std::sync::Arc<crate::stats::Stats>) -> Self {
        self.event.stats = Some(stats);
        self
    }

    /// Appends the event's document (no trailing newline) to `out`.
    pub fn encode(&mut self, e: &LogEvent, out: &mut Vec<u8>) {
        self.encode_with(e, &[], out)
    }

    /// Like `encode`, adding `extra` members (e.g. `data_stream`, no leading comma).
    pub fn encode_with(&mut self, e: &LogEvent, extra: &[u8], out: &mut Vec<u8>) {
        let fields = self.files.get(e);
        self.event.encode(e, fields, extra, out)
    }

    /// Appends the event's bulk item: the `create` action for `index` with the document's
    /// id, and the document with `extra` members, each line ending in `\n`. Returns the
    /// length of the action line.
    pub fn encode_bulk_item(
        &mut self,
        e: &LogEvent,
        index: &str,
        extra: &[u8],
        out: &mut Vec<u8>,
    ) -> usize {
        let fields = self.files.get(e);
        let a = out.len();
        out.extend_from_slice(b"{\"create\":{\"_index\":\"");
        out.extend_from_slice(index.as_bytes());
        out.extend_from_slice(b"\",\"_id\":\"");
        out.extend_from_slice(&fields.ids.id(e.offset));
        out.extend_from_slice(b"\"}}\n");
        let action_len = out.len() - a;
        self.event.encode(e, fields, extra, out);
        out.push(b'\n');
        action_len
    }
}

impl EventEncoder {
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

    /// Appends the document, `fields` being its file's shared parts.
    fn encode(&self, e: &LogEvent, fields: &FileFields, extra: &[u8], out: &mut Vec<u8>) {
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
        out.extend_from_slice(&fields.path);
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
        if !fields.members.is_empty() {
            out.push(b',');
            out.extend_from_slice(&fields.members);
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
    use crate::enrich::path::PathMetadata;
    use crate::event::{FileContext, FileIdentity, Stream};
    use bytes::Bytes;
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
                kube: meta,
                identity: FileIdentity {
                    dev: 1,
                    inode: 2,
                    fingerprint: 3,
                },
                path: "/var/log/containers/x.log".into(),
                known_since: std::time::Instant::now(),
                replay_end: 0,
                ids: crate::event::IdScheme::Offset,
            }),
            pod: None,
            seq: 0,
            offset: 1234,
            safe_point: 2000,
            timestamp: Bytes::from_static(b"2024-05-01T10:00:00.123456789Z"),
            stream: Stream::Stderr,
            message: Bytes::copy_from_slice(message),
            flags,
        }
    }

    /// The document `enc` writes for `e` on node `node-1`.
    fn encode(enc: &DocumentEncoder, e: &LogEvent) -> Value {
        let mut enc = enc.clone().describing(Describe {
            host_name: "node-1".into(),
            ..Default::default()
        });
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
