//! The ECS document of one event, written byte by byte into the sink's buffer. What all
//! events of a file share was encoded once when the file was opened.

use super::escape::{write_bytes, write_str};
use super::json_message::lift;
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
    /// Where replaced invalid UTF-8 is counted.
    stats: Option<std::sync::Arc<crate::stats::Stats>>,
}

impl DocumentEncoder {
    pub fn new(cfg: &crate::config::JsonConfig) -> Self {
        let json_key = (cfg.enabled && !cfg.target.is_empty()).then(|| {
            let mut k = Vec::new();
            write_str(&mut k, &cfg.target);
            k.push(b':');
            k
        });
        DocumentEncoder {
            json_key,
            lift_json: cfg.enabled,
            stats: None,
        }
    }

    /// Counts events whose invalid UTF-8 was replaced in `stats`.
    pub fn counting(mut self, stats: std::sync::Arc<crate::stats::Stats>) -> Self {
        self.stats = Some(stats);
        self
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
        let lifted = if self.lift_json && e.message.first() == Some(&b'{') {
            lift(&e.message)
        } else {
            None
        };
        let mut flags = e.flags;
        match lifted.as_ref().and_then(|l| l.message.as_deref()) {
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
        if let Some(level) = lifted.as_ref().and_then(|l| l.level.as_deref()) {
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
        if let (Some(l), Some(key)) = (&lifted, &self.json_key) {
            out.push(b',');
            out.extend_from_slice(key);
            out.extend_from_slice(&l.object);
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
