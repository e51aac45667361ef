//! What `/metrics` and `/status` show: the pipeline's counters in the OpenMetrics text
//! format (written by `prometheus-client`), and how far each followed file's committed
//! offset is behind its size.

use crate::checkpoint::Entry;
use crate::health::Health;
use crate::stats::Stats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// One followed file: where its checkpoint is, and how much is written past it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLag {
    pub path: String,
    pub committed: u64,
    pub size: u64,
    pub lag: u64,
}

/// The lag of every file still followed, from the published checkpoints and the sizes on
/// disk now. A file that cannot be read any more counts as caught up.
pub fn file_lags(entries: &[Entry]) -> Vec<FileLag> {
    entries
        .iter()
        .filter(|e| e.released_at.is_none())
        .map(|e| {
            let on_disk = e.real_path.as_deref().unwrap_or(&e.path);
            let size = std::fs::metadata(on_disk).map_or(e.offset, |m| m.len());
            FileLag {
                path: e.path.display().to_string(),
                committed: e.offset,
                size,
                lag: size.saturating_sub(e.offset),
            }
        })
        .collect()
}

enum Kind {
    Counter,
    Gauge,
}

/// Every counter of `Stats` with its metric name and help.
fn counters(s: &Stats) -> Vec<(&'static str, &'static str, Kind, &AtomicU64)> {
    use Kind::*;
    vec![
        (
            "bytes_read_total",
            "Bytes read from log files.",
            Counter,
            &s.bytes_read,
        ),
        (
            "lines_read_total",
            "Raw lines read from log files.",
            Counter,
            &s.lines_read,
        ),
        (
            "file_reads_total",
            "Reads from log files that returned data.",
            Counter,
            &s.file_reads,
        ),
        (
            "file_watch_failures_total",
            "Idle files that could not be watched for writes (inotify refused, or a write came without its event): they are polled.",
            Counter,
            &s.file_watches_failed,
        ),
        (
            "events_total",
            "Events emitted after partial and multiline merging.",
            Counter,
            &s.events,
        ),
        (
            "events_delivered_total",
            "Events settled: indexed, duplicate (409) or dead-lettered.",
            Counter,
            &s.events_delivered,
        ),
        (
            "events_truncated_total",
            "Events cut at max_line_bytes.",
            Counter,
            &s.events_truncated,
        ),
        (
            "events_malformed_total",
            "Lines in neither runtime format, shipped as they were.",
            Counter,
            &s.events_malformed,
        ),
        (
            "bytes_dropped_total",
            "Bytes of over-long lines not kept.",
            Counter,
            &s.bytes_dropped,
        ),
        (
            "files_opened_total",
            "Log files opened.",
            Counter,
            &s.files_opened,
        ),
        (
            "files_released_total",
            "Log files read to their end and let go.",
            Counter,
            &s.files_released,
        ),
        (
            "files_excluded_total",
            "Files not read because their pod is excluded.",
            Counter,
            &s.files_excluded,
        ),
        (
            "files_deferred_total",
            "Files that waited because source.max_open_files were followed.",
            Counter,
            &s.files_deferred,
        ),
        (
            "links_refused_total",
            "Symlinks not followed because they lead out of the log roots.",
            Counter,
            &s.links_refused,
        ),
        (
            "links_dangling_total",
            "Symlinks in the include globs found leading to no file (on Docker nodes: /var/lib/docker/containers not mounted).",
            Counter,
            &s.links_dangling,
        ),
        (
            "rotations_total",
            "Files seen rotated away or deleted.",
            Counter,
            &s.rotations,
        ),
        (
            "truncations_total",
            "Files seen truncated (copytruncate).",
            Counter,
            &s.truncations,
        ),
        (
            "truncation_recovered_bytes_total",
            "Bytes of truncated files not yet read at the truncation, read from the copy copytruncate left.",
            Counter,
            &s.truncation_recovered_bytes,
        ),
        (
            "truncations_unrecovered_total",
            "Truncations with no copy beside the file: what was not read of it then is lost.",
            Counter,
            &s.truncations_unrecovered,
        ),
        (
            "generations_recovered_total",
            "Generations rotated away before they were opened, found in their directory and read.",
            Counter,
            &s.generations_recovered,
        ),
        (
            "generations_decompressed_total",
            "Generations compressed before they were read to their end, read on from their .gz.",
            Counter,
            &s.generations_decompressed,
        ),
        (
            "reads_held_for_reservation_total",
            "Turns a file with data waited for the checkpoints to reserve more of it (the bound on a crash's replay).",
            Counter,
            &s.reads_held_for_reservation,
        ),
        (
            "http_connections_evicted_total",
            "Connections to this endpoint closed to make room for a newer one (over the cap).",
            Counter,
            &s.http_connections_evicted,
        ),
        (
            "read_errors_total",
            "Errors opening or reading log files.",
            Counter,
            &s.read_errors,
        ),
        (
            "enrich_full_total",
            "Times the enrich stage held its most and paused reading.",
            Counter,
            &s.enrich_full,
        ),
        (
            "kubernetes_watch_errors_total",
            "Kubernetes watch errors and restarts.",
            Counter,
            &s.kube_watch_errors,
        ),
        (
            "kubernetes_api_requests_total",
            "Requests sent to the Kubernetes API (lists and watches).",
            Counter,
            &s.kube_api_requests,
        ),
        (
            "kubernetes_relists_total",
            "Full lists of the node's pods: at start, after 410 Gone or an error.",
            Counter,
            &s.kube_relists,
        ),
        (
            "kubernetes_cache_pods",
            "Pods in the metadata cache.",
            Gauge,
            &s.kube_cache_pods,
        ),
        (
            "kubernetes_cache_evicted_total",
            "Deleted pods dropped before their TTL (over the cap).",
            Counter,
            &s.kube_cache_evicted,
        ),
        (
            "kubernetes_metadata_missing_total",
            "Events shipped without API metadata after metadata_wait.",
            Counter,
            &s.kube_metadata_missing,
        ),
        (
            "elasticsearch_requests_total",
            "Bulk requests sent.",
            Counter,
            &s.es_requests,
        ),
        (
            "elasticsearch_request_failures_total",
            "Bulk requests that failed as a whole (retried).",
            Counter,
            &s.es_request_failures,
        ),
        (
            "elasticsearch_items_retried_total",
            "Bulk items sent again after 429/5xx.",
            Counter,
            &s.es_items_retried,
        ),
        (
            "elasticsearch_duplicates_total",
            "Bulk items answered 409: already indexed.",
            Counter,
            &s.es_duplicates,
        ),
        (
            "elasticsearch_rescued_total",
            "Refused documents sent again with their bad fields moved aside.",
            Counter,
            &s.es_rescued,
        ),
        (
            "elasticsearch_dead_lettered_total",
            "Documents kept in the dead-letter file.",
            Counter,
            &s.es_dead_lettered,
        ),
        (
            "elasticsearch_replays_checked_total",
            "Documents the last run may have sent, looked up in their data stream before sending.",
            Counter,
            &s.es_replays_checked,
        ),
        (
            "elasticsearch_replays_present_total",
            "Of those, found in the stream already (any backing index): not sent again.",
            Counter,
            &s.es_replays_present,
        ),
        (
            "elasticsearch_replays_unchecked_total",
            "Replayed documents sent without a lookup, the cluster refusing or not answering it.",
            Counter,
            &s.es_replays_unchecked,
        ),
        (
            "elasticsearch_bytes_raw_total",
            "Bulk bodies before compression.",
            Counter,
            &s.es_bytes_raw,
        ),
        (
            "elasticsearch_bytes_sent_total",
            "Bulk bodies as sent (compressed).",
            Counter,
            &s.es_bytes_sent,
        ),
        (
            "elasticsearch_in_flight_full_total",
            "Times a batch waited for a request slot (max_in_flight).",
            Counter,
            &s.es_in_flight_full,
        ),
        (
            "dead_letter_evicted_bytes_total",
            "Dead-letter bytes deleted to stay under dead_letter_max_bytes.",
            Counter,
            &s.dead_letter_evicted_bytes,
        ),
        (
            "buffer_bytes",
            "Bytes in the disk buffer.",
            Gauge,
            &s.buffer_bytes,
        ),
        (
            "buffer_full_total",
            "Times the disk buffer was full and reading paused.",
            Counter,
            &s.buffer_full,
        ),
        (
            "buffer_corrupt_records_total",
            "Damaged or torn disk buffer records skipped.",
            Counter,
            &s.buffer_corrupt_records,
        ),
        (
            "buffer_corrupt_bytes_total",
            "Bytes of damaged disk buffer records skipped.",
            Counter,
            &s.buffer_corrupt_bytes,
        ),
        (
            "events_invalid_utf8_total",
            "Events whose invalid UTF-8 was replaced with U+FFFD.",
            Counter,
            &s.events_invalid_utf8,
        ),
        (
            "events_field_type_mismatch_total",
            "Structured messages with a configured key of another type than its ECS field (not lifted, flagged).",
            Counter,
            &s.events_field_type_mismatch,
        ),
        (
            "rate_limited_lines_total",
            "Lines dropped over a container's rate limit.",
            Counter,
            &s.lines_rate_limited,
        ),
        (
            "retention_annotations_refused_total",
            "logferry.io/retention annotations that do not parse or fall outside the bounds (the rules and the default apply), once per file and pod version.",
            Counter,
            &s.retention_refused,
        ),
        (
            "rate_limit_summaries_total",
            "Summary events shipped for lines dropped over a rate limit.",
            Counter,
            &s.rate_limit_summaries,
        ),
        (
            "config_reloads_total",
            "Config reloads taken (SIGHUP or a changed file).",
            Counter,
            &s.config_reloads,
        ),
        (
            "config_reload_failures_total",
            "New configs refused; the running one was kept.",
            Counter,
            &s.config_reload_failures,
        ),
        (
            "elasticsearch_in_flight_bytes",
            "Bytes of bulk requests sent and not yet answered.",
            Gauge,
            &s.es_in_flight_bytes,
        ),
        (
            "elasticsearch_items_sent_total",
            "Bulk items sent, resends included.",
            Counter,
            &s.es_items_sent,
        ),
        (
            "elasticsearch_retry_queue_documents",
            "Documents waiting to be sent again (refused for load, or a failed request).",
            Gauge,
            &s.es_retry_queue_documents,
        ),
        (
            "elasticsearch_retry_queue_bytes",
            "Bytes of the documents waiting to be sent again.",
            Gauge,
            &s.es_retry_queue_bytes,
        ),
        (
            "elasticsearch_concurrency_limit",
            "Bulk requests allowed in flight now (adaptive, up to max_in_flight).",
            Gauge,
            &s.es_concurrency_limit,
        ),
        (
            "elasticsearch_rate_limit_documents_per_second",
            "The send rate cap learnt from the cluster's refusals; 0 when unpaced.",
            Gauge,
            &s.es_rate_limit,
        ),
    ]
}

/// One metric family, read from the counters at a scrape.
#[derive(Debug)]
enum Family {
    Counter(&'static str, &'static str, u64),
    CounterF64(&'static str, &'static str, f64),
    Gauge(&'static str, &'static str, u64),
    GaugeF64(&'static str, &'static str, f64),
    /// A counter family with one label.
    Labelled(
        &'static str,
        &'static str,
        &'static str,
        Vec<(&'static str, u64)>,
    ),
    /// Upper bounds (the last `f64::MAX` for `+Inf`) with the count of each bucket, and the
    /// sum.
    Histogram(&'static str, &'static str, Vec<(f64, u64)>, f64),
}

/// The scrape's values: a collector for `prometheus-client`, which writes the exposition.
/// The counters themselves stay plain atomics on the hot path.
#[derive(Debug)]
struct Scrape(Vec<Family>);

/// OpenMetrics suffixes a counter's samples with `_total` itself.
fn base(name: &str) -> &str {
    name.strip_suffix("_total").unwrap_or(name)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let no_labels: Option<&Exemplar<Vec<(String, String)>, u64>> = None;
        for f in &self.0 {
            match f {
                Family::Counter(name, help, v) => encoder
                    .encode_descriptor(base(name), help, None, MetricType::Counter)?
                    .encode_counter(v, no_labels)?,
                Family::CounterF64(name, help, v) => encoder
                    .encode_descriptor(base(name), help, None, MetricType::Counter)?
                    .encode_counter(v, None::<&Exemplar<Vec<(String, String)>, f64>>)?,
                Family::Gauge(name, help, v) => encoder
                    .encode_descriptor(name, help, None, MetricType::Gauge)?
                    .encode_gauge(v)?,
                Family::GaugeF64(name, help, v) => encoder
                    .encode_descriptor(name, help, None, MetricType::Gauge)?
                    .encode_gauge(v)?,
                Family::Labelled(name, help, label, values) => {
                    let mut family =
                        encoder.encode_descriptor(base(name), help, None, MetricType::Counter)?;
                    for (value, n) in values {
                        family
                            .encode_family(&[(*label, *value)])?
                            .encode_counter(n, no_labels)?;
                    }
                }
                Family::Histogram(name, help, buckets, sum) => {
                    let count = buckets.iter().map(|(_, n)| n).sum();
                    encoder
                        .encode_descriptor(name, help, None, MetricType::Histogram)?
                        .encode_histogram::<Vec<(String, String)>>(*sum, count, buckets, None)?
                }
            }
        }
        Ok(())
    }
}

/// A histogram's buckets as counts per bucket (the exposition adds them up).
fn histogram(name: &'static str, help: &'static str, h: &crate::stats::Histogram) -> Family {
    let (cumulative, sum) = h.snapshot();
    let mut before = 0;
    let buckets = h
        .bounds
        .iter()
        .copied()
        .chain([f64::MAX])
        .zip(&cumulative)
        .map(|(le, n)| {
            let own = n - before;
            before = *n;
            (le, own)
        })
        .collect();
    Family::Histogram(name, help, buckets, sum)
}

/// The content type of `render`'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The OpenMetrics text exposition of every counter, the histograms and the lag gauges.
pub fn render(stats: &Stats, files: &[FileLag]) -> String {
    let mut families: Vec<Family> = counters(stats)
        .into_iter()
        .map(|(name, help, kind, v)| match kind {
            Kind::Counter => Family::Counter(name, help, Stats::get(v)),
            Kind::Gauge => Family::Gauge(name, help, Stats::get(v)),
        })
        .collect();
    let stderr = Stats::get(&stats.events_stderr);
    let stdout = Stats::get(&stats.events).saturating_sub(stderr);
    families.extend([
        Family::Labelled(
            "events_by_stream_total",
            "Events by the container stream that wrote them.",
            "stream",
            vec![("stdout", stdout), ("stderr", stderr)],
        ),
        Family::Labelled(
            "events_by_format_total",
            "Events by the runtime log format of their file.",
            "format",
            vec![
                ("cri", Stats::get(&stats.events_cri)),
                ("docker", Stats::get(&stats.events_docker)),
            ],
        ),
        Family::CounterF64(
            "backpressure_seconds_total",
            "Time the tailer waited for room in a full pipeline.",
            Stats::get(&stats.backpressure_micros) as f64 / 1e6,
        ),
        Family::GaugeF64(
            "elasticsearch_rejected_share",
            "Share of recent bulk items refused for load (429), smoothed.",
            Stats::get_f64(&stats.es_rejected_share),
        ),
        Family::GaugeF64(
            "elasticsearch_backoff_seconds",
            "Time left before the next bulk request after a failure.",
            Stats::get_f64(&stats.es_backoff_seconds),
        ),
        Family::Labelled(
            "events_assembled_total",
            "Events joined from partial chunks or multiline groups, split from a too-long line, or without a runtime timestamp.",
            "kind",
            vec![
                ("partial", Stats::get(&stats.events_partial_merged)),
                ("multiline", Stats::get(&stats.events_multiline)),
                ("split", Stats::get(&stats.events_split)),
                ("no_timestamp", Stats::get(&stats.events_no_timestamp)),
            ],
        ),
        Family::Labelled(
            "elasticsearch_bulk_requests_total",
            "Bulk requests by what came back.",
            "outcome",
            vec![
                ("items", Stats::get(&stats.es_outcome_items)),
                ("refused", Stats::get(&stats.es_outcome_refused)),
                ("throttled", Stats::get(&stats.es_outcome_throttled)),
                ("unreachable", Stats::get(&stats.es_outcome_unreachable)),
            ],
        ),
        histogram(
            "elasticsearch_bulk_duration_seconds",
            "Time a bulk request took, answer included.",
            &stats.es_bulk_seconds,
        ),
        histogram(
            "elasticsearch_batch_documents",
            "Documents per bulk request built (resends included).",
            &stats.es_batch_documents,
        ),
        Family::Gauge(
            "files_followed",
            "Files followed now.",
            files.len() as u64,
        ),
        Family::Gauge(
            "files_idle_watched",
            "Idle files followed by an inotify watch for their next write instead of polled.",
            Stats::get(&stats.files_idle_watched),
        ),
        Family::Gauge(
            "checkpoint_lag_bytes",
            "Bytes written to followed files past their committed offsets.",
            files.iter().map(|f| f.lag).sum(),
        ),
        Family::Gauge(
            "checkpoint_lag_max_file_bytes",
            "The largest lag of one file.",
            files.iter().map(|f| f.lag).max().unwrap_or(0),
        ),
    ]);
    let mut registry = Registry::with_prefix("logferry");
    registry.register_collector(Box::new(Scrape(families)));
    let mut out = String::with_capacity(12 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// `/status`: readiness, each file's offsets and lag, the buffer, the counters.
/// The page of `/status`'s file list: `?offset=N&limit=M`, the most lagging files first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilePage {
    pub offset: usize,
    pub limit: usize,
}

impl Default for FilePage {
    fn default() -> Self {
        FilePage {
            offset: 0,
            limit: Self::DEFAULT_LIMIT,
        }
    }
}

impl FilePage {
    pub const DEFAULT_LIMIT: usize = 100;
    pub const MAX_LIMIT: usize = 1000;

    pub fn parse(query: Option<&str>) -> Result<FilePage, String> {
        let mut page = FilePage::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let n: usize = v.parse().map_err(|_| format!("{k}={v}: not a number\n"))?;
            match k {
                "offset" => page.offset = n,
                "limit" if (1..=Self::MAX_LIMIT).contains(&n) => page.limit = n,
                "limit" => return Err(format!("limit={n}: from 1 to {}\n", Self::MAX_LIMIT)),
                _ => return Err(format!("{k}: unknown parameter (offset, limit)\n")),
            }
        }
        Ok(page)
    }
}

/// `/status`: one page of the files, the most lagging first (a node can follow thousands).
pub fn status(health: &Health, stats: &Stats, files: &[FileLag], page: FilePage) -> String {
    let mut order: Vec<&FileLag> = files.iter().collect();
    order.sort_by(|a, b| b.lag.cmp(&a.lag).then_with(|| a.path.cmp(&b.path)));
    let files_json: Vec<serde_json::Value> = order
        .iter()
        .skip(page.offset)
        .take(page.limit)
        .map(|f| {
            serde_json::json!({
                "path": f.path, "committed_offset": f.committed, "size": f.size, "lag_bytes": f.lag,
            })
        })
        .collect();
    let counters: serde_json::Map<String, serde_json::Value> = counters(stats)
        .into_iter()
        .map(|(name, _, _, v)| (name.to_string(), Stats::get(v).into()))
        .collect();
    let last_bulk = ["none", "items", "refused", "throttled", "unreachable"]
        .get(Stats::get(&stats.es_last_outcome) as usize)
        .copied()
        .unwrap_or("none");
    serde_json::json!({
        "alive": health.alive(),
        "ready": health.ready(),
        "lag_bytes": files.iter().map(|f| f.lag).sum::<u64>(),
        "files_total": files.len(),
        "files_offset": page.offset,
        "files_limit": page.limit,
        "files": files_json,
        "buffer_bytes": Stats::get(&stats.buffer_bytes),
        "sink": {
            "last_bulk_outcome": last_bulk,
            "in_flight_bytes": Stats::get(&stats.es_in_flight_bytes),
            "concurrency_limit": Stats::get(&stats.es_concurrency_limit),
            "rate_limit_documents_per_second": Stats::get(&stats.es_rate_limit),
            "rejected_share": Stats::get_f64(&stats.es_rejected_share),
            "backoff_seconds": Stats::get_f64(&stats.es_backoff_seconds),
            "retry_queue_documents": Stats::get(&stats.es_retry_queue_documents),
            "retry_queue_bytes": Stats::get(&stats.es_retry_queue_bytes),
            "delivered": Stats::get(&stats.events_delivered),
            "retried": Stats::get(&stats.es_items_retried),
            "dead_lettered": Stats::get(&stats.es_dead_lettered),
            "replays_checked": Stats::get(&stats.es_replays_checked),
            "replays_present": Stats::get(&stats.es_replays_present),
            "replays_unchecked": Stats::get(&stats.es_replays_unchecked),
            "replay_write_indices": *stats.es_write_indices.lock().unwrap_or_else(|e| e.into_inner()),
        },
        "kubernetes": {
            "cache_pods": Stats::get(&stats.kube_cache_pods),
            "watch_errors": Stats::get(&stats.kube_watch_errors),
            "relists": Stats::get(&stats.kube_relists),
            "api_requests": Stats::get(&stats.kube_api_requests),
            "metadata_missing": Stats::get(&stats.kube_metadata_missing),
        },
        "counters": counters,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::FileIdentity;

    #[test]
    fn lag_is_what_was_written_past_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0.log");
        std::fs::write(&p, vec![b'x'; 1000]).unwrap();
        let entry = |offset, released_at| Entry {
            identity: FileIdentity {
                dev: 1,
                inode: 2,
                fingerprint: 3,
            },
            path: p.clone(),
            real_path: Some(p.clone()),
            offset,
            reserved: None,
            released_at,
            ids: Default::default(),
        };
        let lags = file_lags(&[entry(600, None), entry(1000, Some(5))]);
        assert_eq!(lags.len(), 1, "a released file is not followed");
        assert_eq!(
            (lags[0].committed, lags[0].size, lags[0].lag),
            (600, 1000, 400)
        );
        let stats = Stats::default();
        Stats::add(&stats.events_delivered, 7);
        let text = render(&stats, &lags);
        assert!(text.contains("logferry_events_delivered_total 7\n"));
        assert!(text.contains("logferry_checkpoint_lag_bytes 400\n"));
        assert!(text.contains("# TYPE logferry_buffer_bytes gauge\n"));
        stats.es_bulk_seconds.observe(0.02);
        stats.es_bulk_seconds.observe(0.3);
        stats.es_bulk_seconds.observe(99.0);
        let text = render(&stats, &lags);
        let has = |l: &str| text.contains(&format!("logferry_{l}\n"));
        assert!(has(
            "elasticsearch_bulk_duration_seconds_bucket{le=\"0.025\"} 1"
        ));
        assert!(has(
            "elasticsearch_bulk_duration_seconds_bucket{le=\"0.5\"} 2"
        ));
        assert!(has(
            "elasticsearch_bulk_duration_seconds_bucket{le=\"+Inf\"} 3"
        ));
        assert!(has("elasticsearch_bulk_duration_seconds_count 3"));
        assert!(has(
            "elasticsearch_bulk_requests_total{outcome=\"items\"} 0"
        ));
        // Every sample line is `name{labels} value` with a name Prometheus accepts.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = l.rsplit_once(' ').unwrap();
            let name = name.split('{').next().unwrap();
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{l}"
            );
            value.parse::<f64>().unwrap();
        }
        let v: serde_json::Value = serde_json::from_str(&status(
            &Health::default(),
            &stats,
            &lags,
            FilePage::default(),
        ))
        .unwrap();
        assert_eq!(v["lag_bytes"], 400);
        assert_eq!(v["files"][0]["committed_offset"], 600);
        assert_eq!(v["counters"]["events_delivered_total"], 7);
    }

    /// The names and labels dashboards and alerts depend on: a change here is a change
    /// for every user's queries.
    #[test]
    fn the_exposition_pins_every_metric_name_and_label() {
        let text = render(&Stats::default(), &[]);
        assert!(
            text.ends_with("# EOF\n"),
            "OpenMetrics text ends with # EOF"
        );
        let mut samples: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let name = l.rsplit_once(' ').unwrap().0;
                regex::Regex::new(r#"="[^"]*""#)
                    .unwrap()
                    .replace_all(name, "=")
                    .into_owned()
            })
            .collect();
        samples.sort();
        samples.dedup();
        let pinned = [
            "logferry_backpressure_seconds_total",
            "logferry_buffer_bytes",
            "logferry_buffer_corrupt_bytes_total",
            "logferry_buffer_corrupt_records_total",
            "logferry_buffer_full_total",
            "logferry_bytes_dropped_total",
            "logferry_bytes_read_total",
            "logferry_checkpoint_lag_bytes",
            "logferry_checkpoint_lag_max_file_bytes",
            "logferry_config_reload_failures_total",
            "logferry_config_reloads_total",
            "logferry_dead_letter_evicted_bytes_total",
            "logferry_elasticsearch_backoff_seconds",
            "logferry_elasticsearch_batch_documents_bucket{le=}",
            "logferry_elasticsearch_batch_documents_count",
            "logferry_elasticsearch_batch_documents_sum",
            "logferry_elasticsearch_bulk_duration_seconds_bucket{le=}",
            "logferry_elasticsearch_bulk_duration_seconds_count",
            "logferry_elasticsearch_bulk_duration_seconds_sum",
            "logferry_elasticsearch_bulk_requests_total{outcome=}",
            "logferry_elasticsearch_bytes_raw_total",
            "logferry_elasticsearch_bytes_sent_total",
            "logferry_elasticsearch_concurrency_limit",
            "logferry_elasticsearch_dead_lettered_total",
            "logferry_elasticsearch_duplicates_total",
            "logferry_elasticsearch_in_flight_bytes",
            "logferry_elasticsearch_in_flight_full_total",
            "logferry_elasticsearch_items_retried_total",
            "logferry_elasticsearch_items_sent_total",
            "logferry_elasticsearch_rate_limit_documents_per_second",
            "logferry_elasticsearch_rejected_share",
            "logferry_elasticsearch_replays_checked_total",
            "logferry_elasticsearch_replays_present_total",
            "logferry_elasticsearch_replays_unchecked_total",
            "logferry_elasticsearch_request_failures_total",
            "logferry_elasticsearch_requests_total",
            "logferry_elasticsearch_rescued_total",
            "logferry_elasticsearch_retry_queue_bytes",
            "logferry_elasticsearch_retry_queue_documents",
            "logferry_enrich_full_total",
            "logferry_events_assembled_total{kind=}",
            "logferry_events_by_format_total{format=}",
            "logferry_events_by_stream_total{stream=}",
            "logferry_events_delivered_total",
            "logferry_events_field_type_mismatch_total",
            "logferry_events_invalid_utf8_total",
            "logferry_events_malformed_total",
            "logferry_events_total",
            "logferry_events_truncated_total",
            "logferry_file_reads_total",
            "logferry_file_watch_failures_total",
            "logferry_files_deferred_total",
            "logferry_files_excluded_total",
            "logferry_files_followed",
            "logferry_files_idle_watched",
            "logferry_files_opened_total",
            "logferry_files_released_total",
            "logferry_generations_decompressed_total",
            "logferry_generations_recovered_total",
            "logferry_http_connections_evicted_total",
            "logferry_kubernetes_api_requests_total",
            "logferry_kubernetes_cache_evicted_total",
            "logferry_kubernetes_cache_pods",
            "logferry_kubernetes_metadata_missing_total",
            "logferry_kubernetes_relists_total",
            "logferry_kubernetes_watch_errors_total",
            "logferry_lines_read_total",
            "logferry_links_dangling_total",
            "logferry_links_refused_total",
            "logferry_rate_limit_summaries_total",
            "logferry_rate_limited_lines_total",
            "logferry_read_errors_total",
            "logferry_reads_held_for_reservation_total",
            "logferry_retention_annotations_refused_total",
            "logferry_rotations_total",
            "logferry_truncation_recovered_bytes_total",
            "logferry_truncations_total",
            "logferry_truncations_unrecovered_total",
        ];
        assert_eq!(samples, pinned);
        // Every family says its type once, before its samples.
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        assert_eq!(types, helps);
        assert!(types >= 60, "{types} families");
    }
}
