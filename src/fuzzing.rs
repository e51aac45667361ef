//! Entry points for the fuzz targets in `fuzz/` and their regression tests: each takes
//! arbitrary bytes, runs one parser the way the agent does, and panics only when an
//! invariant breaks (a document that is not JSON, an offset out of range), never on
//! input alone.

use crate::config::MultilineRules;
use crate::config::{Config, JsonConfig, LineOverflow, LogFormat, MultilineConfig};
use crate::encode::ecs_fields::FieldKeys;
use crate::encode::json_message::lift;
use crate::encode::DocumentEncoder;
use crate::enrich::path::PathMetadata;
use crate::event::{FileContext, FileIdentity, LogEvent};
use crate::source::assembler::{Assembler, AssemblyRules};
use crate::source::reader::LineReader;
use bytes::Bytes;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A target: arbitrary bytes in, a panic only on a broken invariant.
pub type Target = fn(&[u8]);

/// Every target, by name, for the regression replay.
pub const TARGETS: [(&str, Target); 8] = [
    ("cri", cri),
    ("docker", docker),
    ("assemble", assemble),
    ("json_lift", json_lift),
    ("logfmt", logfmt),
    ("bulk_response", bulk_response),
    ("config", config),
    ("buffer_record", buffer_record),
];

pub fn cri(data: &[u8]) {
    if let Some(l) = crate::source::cri::parse(&Bytes::copy_from_slice(data)) {
        assert!(l.content.len() < data.len());
        assert!(crate::time::is_rfc3339(&l.timestamp));
    }
}

pub fn docker(data: &[u8]) {
    if let Some(l) = crate::source::docker::parse(&Bytes::copy_from_slice(data)) {
        assert!(std::str::from_utf8(&l.content).is_ok());
        assert!(crate::time::is_rfc3339(&l.timestamp));
    }
}

/// The whole read path on a file's bytes: lines, runtime formats, partial and multiline
/// merging, then documents. Every document must be one line of valid JSON, and the
/// offsets must stay inside the input and move forward.
pub fn assemble(data: &[u8]) {
    // Compiling the multiline rules costs more than a run: once per process.
    static RULES: OnceLock<[Arc<AssemblyRules>; 2]> = OnceLock::new();
    let rules = RULES.get_or_init(|| {
        [LineOverflow::Split, LineOverflow::Truncate].map(|overflow| {
            Arc::new(AssemblyRules {
                format: LogFormat::Auto,
                max_line_bytes: 256,
                overflow,
                multiline: MultilineRules::from_config(&MultilineConfig {
                    presets: vec!["java".into(), "python".into(), "go".into()],
                    ..Default::default()
                })
                .expect("presets compile"),
            })
        })
    });
    let rules = rules[usize::from(data.first().is_some_and(|b| b & 1 == 1))].clone();
    let mut asm = Assembler::new(context(), rules);
    let mut reader = LineReader::new(0, 64, 1024);
    let mut lines = Vec::new();
    let mut events = Vec::new();
    let now = Instant::now();
    let mut src = data;
    while reader
        .read(&mut src, 97, u64::MAX, &mut lines)
        .expect("reading a slice cannot fail")
        > 0
    {
        for l in lines.drain(..) {
            asm.push(l, now, &mut events);
        }
    }
    if let Some(l) = reader.take_remainder() {
        asm.push(l, now, &mut events);
    }
    asm.flush_expired(now + Duration::from_secs(3600), &mut events);
    asm.flush_all(now, &mut events);
    let mut encoder = DocumentEncoder::new(&JsonConfig::default());
    let mut doc = Vec::new();
    let mut last_safe = 0;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64);
        assert!(e.offset < data.len() as u64 || data.is_empty());
        assert!(e.safe_point <= data.len() as u64);
        assert!(e.safe_point >= last_safe, "safe points move forward");
        last_safe = e.safe_point;
        doc.clear();
        encoder.encode(e, &mut doc);
        check_document(&doc, e);
    }
}

fn check_document(doc: &[u8], e: &LogEvent) {
    assert!(!doc.contains(&b'\n'), "a document is one NDJSON line");
    let v: serde_json::Value = serde_json::from_slice(doc)
        .unwrap_or_else(|err| panic!("not JSON ({err}): {}", String::from_utf8_lossy(doc)));
    assert!(v["@timestamp"].is_string());
    assert!(v.get("message").is_some() || e.message.is_empty() || v.get("json").is_some());
}

fn context() -> Arc<FileContext> {
    let path = Path::new("/var/log/containers/app-1_ns_c-0123456789abcdef.log");
    let meta = PathMetadata::from_paths(path, Path::new("/var/log/pods/ns_app-1_uid/c/0.log"));
    Arc::new(FileContext {
        key: 1,
        identity: FileIdentity {
            dev: 1,
            inode: 2,
            fingerprint: 3,
        },
        path: path.to_path_buf(),
        kube: meta,
        known_since: Instant::now(),
        replay_end: 0,
        ids: crate::event::IdScheme::Offset,
    })
}

fn field_keys() -> &'static FieldKeys {
    static KEYS: OnceLock<FieldKeys> = OnceLock::new();
    KEYS.get_or_init(|| FieldKeys::new(&crate::config::FieldsConfig::default()))
}

pub fn json_lift(data: &[u8]) {
    let mut ecs = crate::encode::ecs_fields::EcsValues::default();
    let lifted = lift(data, field_keys(), &mut ecs);
    assert!(
        lifted.is_some() || ecs.is_empty(),
        "nothing lifted from a non-object"
    );
    if let Some(l) = lifted {
        assert!(!l.object.contains(&b'\n') && !l.object.contains(&b'\r'));
        // Grammar, not range: `5e51110` is JSON (Elasticsearch refuses the field, and the
        // sink's rescue takes that case).
        let raw: &serde_json::value::RawValue =
            serde_json::from_slice(&l.object).expect("a lifted object is JSON");
        assert!(raw.get().starts_with('{'));
    }
}

pub fn logfmt(data: &[u8]) {
    if let Some(p) = crate::encode::logfmt::parse(data, field_keys()) {
        assert!(p.pairs.len() >= 2);
        // The document of a logfmt line is JSON whatever the line held.
        let e = LogEvent {
            file: context(),
            pod: None,
            seq: 0,
            offset: 0,
            safe_point: data.len() as u64,
            timestamp: Bytes::new(),
            stream: crate::event::Stream::Stdout,
            message: Bytes::copy_from_slice(data),
            flags: crate::event::Flags::empty(),
        };
        let mut doc = Vec::new();
        DocumentEncoder::new(&JsonConfig::default()).encode(&e, &mut doc);
        check_document(&doc, &e);
        let v: serde_json::Value = serde_json::from_slice(&doc).expect("checked");
        let kept = v["logfmt"].as_object().map_or(0, |o| o.len());
        assert_eq!(kept, p.pairs.len(), "every pair kept once");
    }
}

pub fn bulk_response(data: &[u8]) {
    if let Some(items) = crate::sink::elasticsearch::response::parse(data) {
        for i in items {
            let _ = crate::sink::elasticsearch::response::classify(i.status, i.error_type());
        }
    }
}

pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = Config::parse(text, "fuzz", &|_| None) {
            let es = &c.output.elasticsearch;
            if !(es.password.is_empty() && es.api_key.is_empty() && es.bearer_token.is_empty()) {
                return; // printed as "<redacted>", which is not meant to be read back
            }
            // What parses must print and parse again the same way.
            let again = Config::parse(&c.to_toml(), "fuzz-again", &|_| None)
                .expect("printed config parses");
            assert_eq!(again.to_toml(), c.to_toml());
        }
    }
}

pub fn buffer_record(data: &[u8]) {
    use crate::buffer::record::{decode, Decoded, HEADER};
    let mut pos = 0;
    while pos < data.len() {
        match decode(&data[pos..]) {
            Decoded::Record { payload, len } => {
                assert_eq!(len, HEADER + payload.len());
                assert!(pos + len <= data.len());
                pos += len;
            }
            Decoded::Incomplete => break,
            Decoded::Corrupt { skip } => {
                assert!(skip > 0, "progress on damage");
                pos += skip;
            }
        }
    }
}
