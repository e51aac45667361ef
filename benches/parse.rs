//! Micro-benchmarks of the per-line hot path: parsing, partial merging, JSON lifting and
//! document encoding. Criterion reports time per line (`Throughput::Elements(1)`).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use logferry::config::ElasticsearchConfig;
use logferry::config::MultilineRules;
use logferry::config::{JsonConfig, LineOverflow, LogFormat, MultilineConfig};
use logferry::encode::ecs_fields::FieldKeys;
use logferry::encode::file_fields::Describe;
use logferry::encode::json_message::lift;
use logferry::encode::logfmt;
use logferry::encode::DocumentEncoder;
use logferry::enrich::kube::pod::PodInfo;
use logferry::enrich::path::PathMetadata;
use logferry::event::{FileContext, FileIdentity, Flags, LogEvent, PodMetadata, Stream};
use logferry::sink::elasticsearch::batch::Batch;
use logferry::sink::elasticsearch::target::Router;
use logferry::source::assembler::{Assembler, AssemblyRules};
use logferry::source::reader::RawLine;
use logferry::source::{cri, docker};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

const TEXT: &str = "10.0.3.7 - - [30/Nov/2026:10:00:00 +0000] \"GET /api/v1/products?page=2 HTTP/1.1\" 200 5123 \"-\" \"Mozilla/5.0 (X11; Linux x86_64)\" 0.012";
const JSON: &str = r#"{"level":"info","ts":"2026-11-30T10:00:00.123Z","msg":"request done","path":"/api/orders","status":200,"latency_ms":42,"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"}"#;
const LOGFMT: &str = r#"time="2026-11-30T10:00:00.123Z" level=warn msg="request done" component=http method=GET path=/api/orders status_code=200 duration=932ms trace_id=4bf92f3577b34da6a3ce929d0e0e4736"#;

fn ctx() -> Arc<FileContext> {
    let path = Path::new("/var/log/containers/checkout-6c9f7b8d4-k7wzp_shop_app-9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b.log");
    let meta = PathMetadata::from_paths(path, Path::new("/var/log/pods/shop_checkout-6c9f7b8d4-k7wzp_7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d/app/0.log"));
    Arc::new(FileContext {
        key: 1,
        kube: meta.clone(),
        identity: FileIdentity {
            dev: 1,
            inode: 2,
            fingerprint: 3,
        },
        path: path.to_path_buf(),
        known_since: Instant::now(),
        replay_end: 0,
        ids: logferry::event::IdScheme::Offset,
    })
}

fn event(message: &str) -> LogEvent {
    LogEvent {
        file: ctx(),
        pod: None,
        seq: 0,
        offset: 123_456,
        safe_point: 123_600,
        timestamp: Bytes::from_static(b"2026-11-30T10:00:00.123456789Z"),
        stream: Stream::Stdout,
        message: Bytes::copy_from_slice(message.as_bytes()),
        flags: Flags::empty(),
    }
}

fn parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    let line = Bytes::from(format!("2026-11-30T10:00:00.123456789Z stdout F {TEXT}"));
    g.bench_function("cri", |b| {
        b.iter(|| black_box(cri::parse(black_box(&line))))
    });
    let dline = Bytes::from(serde_json::json!({"log": format!("{TEXT}\n"), "stream": "stdout", "time": "2026-11-30T10:00:00.123456789Z"}).to_string());
    g.bench_function("docker", |b| {
        b.iter(|| black_box(docker::parse(black_box(&dline))))
    });
    let keys = FieldKeys::new(&Default::default());
    g.bench_function("json_lift", |b| {
        b.iter(|| {
            black_box(lift(black_box(JSON.as_bytes()), &keys, &mut Default::default()).is_some())
        })
    });
    // The same with no ECS field configured: what the lifting of issue 15 costs.
    let none = FieldKeys::new(&logferry::config::FieldsConfig {
        trace_id: vec![],
        span_id: vec![],
        transaction_id: vec![],
        user_id: vec![],
        http_method: vec![],
        url_path: vec![],
        http_status: vec![],
        duration_ms: vec![],
        duration: vec![],
    });
    g.bench_function("json_lift_no_fields", |b| {
        b.iter(|| {
            black_box(lift(black_box(JSON.as_bytes()), &none, &mut Default::default()).is_some())
        })
    });
    g.bench_function("logfmt", |b| {
        b.iter(|| black_box(logfmt::parse(black_box(LOGFMT.as_bytes()), &keys)))
    });
    // A text line with `=` in it: tried as logfmt, refused at its first word.
    g.bench_function("logfmt_refused", |b| {
        b.iter(|| black_box(logfmt::parse(black_box(TEXT.as_bytes()), &keys)))
    });
    g.finish();
}

fn assembling(c: &mut Criterion) {
    let mut g = c.benchmark_group("assemble");
    g.throughput(Throughput::Elements(1));
    let rules = |presets: Vec<String>| {
        Arc::new(AssemblyRules {
            format: LogFormat::Auto,
            max_line_bytes: 1 << 20,
            overflow: LineOverflow::Split,
            multiline: MultilineRules::from_config(&MultilineConfig {
                presets,
                ..Default::default()
            })
            .unwrap(),
        })
    };
    let full = Bytes::from(format!("2026-11-30T10:00:00.123456789Z stdout F {TEXT}"));
    let chunk = Bytes::from(format!("2026-11-30T10:00:00.123456789Z stdout P {TEXT}"));
    for (name, presets) in [
        ("cri_line", vec![]),
        (
            "cri_line_with_multiline",
            vec!["java".into(), "python".into(), "go".into()],
        ),
    ] {
        let mut asm = Assembler::new(ctx(), rules(presets));
        let mut out = Vec::with_capacity(1024);
        let mut off = 0u64;
        let now = Instant::now();
        g.bench_function(name, |b| {
            b.iter(|| {
                let raw = RawLine {
                    start: off,
                    end: off + full.len() as u64 + 1,
                    bytes: full.clone(),
                    flags: Flags::empty(),
                };
                off = raw.end;
                asm.push(raw, now, &mut out);
                if out.len() >= 1024 {
                    out.clear();
                }
            })
        });
    }
    // Four chunks merged into one line: time per chunk.
    let mut asm = Assembler::new(ctx(), rules(vec![]));
    let mut out = Vec::with_capacity(1024);
    let mut off = 0u64;
    let mut i = 0u32;
    let now = Instant::now();
    g.bench_function("partial_chunk", |b| {
        b.iter(|| {
            i += 1;
            let bytes = if i.is_multiple_of(4) {
                full.clone()
            } else {
                chunk.clone()
            };
            let raw = RawLine {
                start: off,
                end: off + bytes.len() as u64 + 1,
                bytes,
                flags: Flags::empty(),
            };
            off = raw.end;
            asm.push(raw, now, &mut out);
            if out.len() >= 1024 {
                out.clear();
            }
        })
    });
    g.finish();
}

fn encoding(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    let mut enc = on_node_1(DocumentEncoder::new(&JsonConfig::default()));
    // Neither logfmt nor ECS fields: the encoder as it was before issue 15.
    let mut plain = logferry::config::SourceConfig::default();
    plain.logfmt.enabled = false;
    plain.fields = serde_json::from_value(serde_json::json!({
        "trace_id": [], "span_id": [], "transaction_id": [], "user_id": [], "http_method": [],
        "url_path": [], "http_status": [], "duration_ms": [], "duration": []
    }))
    .expect("empty lists");
    let mut plain = on_node_1(DocumentEncoder::for_source(&plain));
    let mut buf = Vec::with_capacity(1 << 20);
    for (name, msg) in [("text_document_plain", TEXT), ("json_document_plain", JSON)] {
        let e = event(msg);
        g.bench_function(name, |b| {
            b.iter(|| {
                buf.clear();
                plain.encode(black_box(&e), &mut buf);
                black_box(buf.len())
            })
        });
    }
    let mut buf = Vec::with_capacity(1 << 20);
    for (name, msg, pod) in [
        ("text_document", TEXT, false),
        ("json_document", JSON, false),
        ("text_document_with_pod", TEXT, true),
        ("json_document_with_pod", JSON, true),
        ("logfmt_document", LOGFMT, false),
    ] {
        let e = if pod {
            with_pod(event(msg))
        } else {
            event(msg)
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                buf.clear();
                enc.encode(black_box(&e), &mut buf);
                black_box(buf.len())
            })
        });
    }
    g.finish();
}

/// A pod as the API describes it (labels, owner, image), one for every event as the
/// enrich stage hands it.
fn pod() -> Arc<PodMetadata> {
    static POD: std::sync::OnceLock<Arc<PodMetadata>> = std::sync::OnceLock::new();
    POD.get_or_init(|| {
        Arc::new(PodMetadata {
            pod: Arc::new(pod_info()),
            namespace_labels: None,
            namespace_annotations: None,
        })
    })
    .clone()
}

fn pod_info() -> PodInfo {
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": "checkout-6c9f7b8d4-k7wzp", "namespace": "shop",
            "uid": "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "resourceVersion": "1",
            "labels": { "app": "checkout", "app.kubernetes.io/name": "checkout",
                        "app.kubernetes.io/part-of": "shop", "pod-template-hash": "6c9f7b8d4",
                        "team": "payments" },
            "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet",
                                  "name": "checkout-6c9f7b8d4", "uid": "o", "controller": true }]
        },
        "spec": { "nodeName": "node-1", "containers": [{ "name": "app", "image": "registry.example/shop/checkout:2.14.1" }] },
        "status": { "podIP": "10.1.2.3", "containerStatuses": [{
            "name": "app", "image": "registry.example/shop/checkout:2.14.1", "imageID": "",
            "containerID": "containerd://9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b",
            "ready": true, "restartCount": 0 }] }
    }))
    .expect("a valid pod");
    PodInfo::from_pod(&pod).expect("the pod has a uid")
}

fn with_pod(mut e: LogEvent) -> LogEvent {
    e.pod = Some(pod());
    e
}

fn bulk(c: &mut Criterion) {
    let mut g = c.benchmark_group("bulk");
    const N: usize = 1000;
    g.throughput(Throughput::Elements(N as u64));
    let mut enc = on_node_1(DocumentEncoder::new(&JsonConfig::default()));
    let router = Router::new(&ElasticsearchConfig::default(), &Default::default());
    let target = router.target(router.retention().default_class(), Some("shop"), "");
    // 30% JSON messages, as in the reference workload.
    let events: Vec<LogEvent> = (0..N)
        .map(|i| {
            let mut e = with_pod(event(if i % 10 < 3 { JSON } else { TEXT }));
            (e.seq, e.offset) = (i as u64, i as u64 * 230);
            e
        })
        .collect();
    for level in [0u32, 1, 6] {
        g.bench_function(format!("build_gzip_level_{level}"), |b| {
            b.iter(|| {
                let mut batch = Batch::new(level);
                for e in &events {
                    batch.push(e, &target, &mut enc);
                }
                black_box(batch.seal().payload.len())
            })
        });
    }
    g.finish();
}

/// The encoder as the agent builds it, on a node named `node-1`.
fn on_node_1(enc: DocumentEncoder) -> DocumentEncoder {
    enc.describing(Describe {
        host_name: "node-1".into(),
        ..Default::default()
    })
}

criterion_group!(benches, parsing, assembling, encoding, bulk);
criterion_main!(benches);
