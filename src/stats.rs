//! Counters every stage adds to; `/metrics` and `/status` read them at each scrape. Lossy
//! events (truncations, skipped bytes) are always counted here, never silent.

use std::sync::atomic::{AtomicU64, Ordering};

/// A Prometheus histogram: counts per upper bound (cumulated when shown), sum and count.
#[derive(Debug)]
pub struct Histogram {
    pub bounds: &'static [f64],
    /// One per bound, plus one for larger values.
    buckets: Vec<AtomicU64>,
    /// The sum in millionths, to keep it an integer.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((v.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (the last is `+Inf`), and the sum.
    pub fn snapshot(&self) -> (Vec<u64>, f64) {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        (
            cumulative,
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}

/// Seconds a bulk request took, answer included.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Documents in a batch.
pub const BATCH_BOUNDS: &[f64] = &[
    1.0, 10.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 20000.0,
];

#[derive(Debug)]
pub struct Stats {
    pub bytes_read: AtomicU64,
    pub lines_read: AtomicU64,
    /// Reads from log files that returned data: lines per read says how well the reading
    /// of many slow files is gathered.
    pub file_reads: AtomicU64,
    /// Idle files that could not be watched for writes: refused, or a write came without
    /// its event. They are polled.
    pub file_watches_failed: AtomicU64,
    /// Gauge: idle files watched for their next write instead of polled.
    pub files_idle_watched: AtomicU64,
    pub events: AtomicU64,
    pub events_delivered: AtomicU64,
    pub files_opened: AtomicU64,
    pub files_released: AtomicU64,
    pub rotations: AtomicU64,
    pub truncations: AtomicU64,
    /// Bytes of truncated files not read before the truncation and read from the copy
    /// `copytruncate` left; truncations where no copy was found (what was not read of the
    /// file then is lost).
    pub truncation_recovered_bytes: AtomicU64,
    pub truncations_unrecovered: AtomicU64,
    /// Generations rotated away before they were opened, found in their directory and read.
    pub generations_recovered: AtomicU64,
    /// Generations compressed before they were read to their end, read from their `.gz`.
    pub generations_decompressed: AtomicU64,
    /// Turns a file with data waited for its reservation in the checkpoints to be written.
    pub reads_held_for_reservation: AtomicU64,
    /// Connections to the agent's HTTP endpoint closed to make room for a newer one.
    pub http_connections_evicted: AtomicU64,
    /// Bytes of over-long lines that were not kept.
    pub bytes_dropped: AtomicU64,
    pub events_truncated: AtomicU64,
    /// Events of the stderr stream (the rest are stdout).
    pub events_stderr: AtomicU64,
    /// Events joined from runtime partial chunks, from multiline groups; pieces of a
    /// too-long line; events without a runtime timestamp.
    pub events_partial_merged: AtomicU64,
    pub events_multiline: AtomicU64,
    pub events_split: AtomicU64,
    pub events_no_timestamp: AtomicU64,
    pub events_malformed: AtomicU64,
    pub read_errors: AtomicU64,
    pub es_requests: AtomicU64,
    pub es_request_failures: AtomicU64,
    pub es_items_retried: AtomicU64,
    pub es_duplicates: AtomicU64,
    pub es_rescued: AtomicU64,
    pub es_dead_lettered: AtomicU64,
    /// Events the last run may have sent, looked up in their data stream before sending;
    /// of those, found there already (acknowledged, not sent); and sent unchecked because
    /// the cluster would not answer the lookup.
    pub es_replays_checked: AtomicU64,
    pub es_replays_present: AtomicU64,
    pub es_replays_unchecked: AtomicU64,
    /// Per data stream, the write index that took the last replays sent (`/status`).
    pub es_write_indices: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
    /// Bulk bodies before and after compression.
    pub es_bytes_raw: AtomicU64,
    pub es_bytes_sent: AtomicU64,
    pub kube_watch_errors: AtomicU64,
    /// Events shipped without API metadata after `metadata_wait`.
    pub kube_metadata_missing: AtomicU64,
    /// Pods in the metadata cache (a gauge, updated at each purge).
    pub kube_cache_pods: AtomicU64,
    /// Deleted pods dropped before their TTL because more than the cap were kept.
    pub kube_cache_evicted: AtomicU64,
    /// Files not read because their pod is excluded.
    pub files_excluded: AtomicU64,
    /// Links not followed because they lead out of the log directories.
    pub links_refused: AtomicU64,
    /// Links in the include globs found leading to no file.
    pub links_dangling: AtomicU64,
    /// Files that waited because `source.max_open_files` were followed.
    pub files_deferred: AtomicU64,
    /// Times the enrich stage held its most and stopped taking input.
    pub enrich_full: AtomicU64,
    /// Dead-letter bytes deleted to stay under `dead_letter_max_bytes`.
    pub dead_letter_evicted_bytes: AtomicU64,
    /// Times a batch was ready and `max_in_flight` requests were already out.
    pub es_in_flight_full: AtomicU64,
    /// Bulk requests by what came back: items, a refusal (4xx), throttling or a server
    /// error (429/5xx), no answer.
    pub es_outcome_items: AtomicU64,
    pub es_outcome_refused: AtomicU64,
    pub es_outcome_throttled: AtomicU64,
    pub es_outcome_unreachable: AtomicU64,
    pub es_bulk_seconds: Histogram,
    pub es_batch_documents: Histogram,
    /// Bytes in the disk buffer now (a gauge).
    pub buffer_bytes: AtomicU64,
    /// Times the disk buffer was full and reading paused.
    pub buffer_full: AtomicU64,
    /// Damaged or torn records found in the disk buffer, skipped, and their bytes.
    pub buffer_corrupt_records: AtomicU64,
    pub buffer_corrupt_bytes: AtomicU64,
    /// Events by the runtime format of their file.
    pub events_cri: AtomicU64,
    pub events_docker: AtomicU64,
    /// Events whose invalid UTF-8 was replaced with U+FFFD when encoded.
    pub events_invalid_utf8: AtomicU64,
    /// Structured messages with a configured key whose value had another type (not lifted).
    pub events_field_type_mismatch: AtomicU64,
    /// Lines dropped over a container's rate limit, and the summary events that said so.
    pub lines_rate_limited: AtomicU64,
    /// `logferry.io/retention` annotations refused (unparsable or out of bounds), once per
    /// file and pod version.
    pub retention_refused: AtomicU64,
    pub rate_limit_summaries: AtomicU64,
    /// Bytes of bulk bodies sent and not yet answered (a gauge).
    pub es_in_flight_bytes: AtomicU64,
    /// Bulk items sent, resends included.
    pub es_items_sent: AtomicU64,
    /// Documents waiting to be sent again, and their bytes (gauges).
    pub es_retry_queue_documents: AtomicU64,
    pub es_retry_queue_bytes: AtomicU64,
    /// Requests allowed in flight now, and the send rate cap in documents per second
    /// (0: none) (gauges).
    pub es_concurrency_limit: AtomicU64,
    pub es_rate_limit: AtomicU64,
    /// Smoothed share of bulk items refused for load (an `f64`'s bits).
    pub es_rejected_share: AtomicU64,
    /// Seconds until the next request after a failure (an `f64`'s bits).
    pub es_backoff_seconds: AtomicU64,
    /// Microseconds the tailer waited for room in a full pipeline.
    pub backpressure_micros: AtomicU64,
    /// Config reloads taken, and new configs refused (the running one kept).
    pub config_reloads: AtomicU64,
    pub config_reload_failures: AtomicU64,
    /// What the last bulk request came to: 0 none yet, then as `es_outcome_*` in order
    /// (items, refused, throttled, unreachable).
    pub es_last_outcome: AtomicU64,
    /// Requests sent to the Kubernetes API, and full lists of the node's pods (at start,
    /// after 410 Gone or an error).
    pub kube_api_requests: AtomicU64,
    pub kube_relists: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            bytes_read: AtomicU64::new(0),
            lines_read: AtomicU64::new(0),
            file_reads: AtomicU64::new(0),
            file_watches_failed: AtomicU64::new(0),
            files_idle_watched: AtomicU64::new(0),
            events: AtomicU64::new(0),
            events_delivered: AtomicU64::new(0),
            files_opened: AtomicU64::new(0),
            files_released: AtomicU64::new(0),
            rotations: AtomicU64::new(0),
            truncations: AtomicU64::new(0),
            truncation_recovered_bytes: AtomicU64::new(0),
            truncations_unrecovered: AtomicU64::new(0),
            generations_recovered: AtomicU64::new(0),
            generations_decompressed: AtomicU64::new(0),
            reads_held_for_reservation: AtomicU64::new(0),
            http_connections_evicted: AtomicU64::new(0),
            bytes_dropped: AtomicU64::new(0),
            events_truncated: AtomicU64::new(0),
            events_stderr: AtomicU64::new(0),
            events_partial_merged: AtomicU64::new(0),
            events_multiline: AtomicU64::new(0),
            events_split: AtomicU64::new(0),
            events_no_timestamp: AtomicU64::new(0),
            events_malformed: AtomicU64::new(0),
            read_errors: AtomicU64::new(0),
            es_requests: AtomicU64::new(0),
            es_request_failures: AtomicU64::new(0),
            es_items_retried: AtomicU64::new(0),
            es_duplicates: AtomicU64::new(0),
            es_rescued: AtomicU64::new(0),
            es_dead_lettered: AtomicU64::new(0),
            es_replays_checked: AtomicU64::new(0),
            es_replays_present: AtomicU64::new(0),
            es_replays_unchecked: AtomicU64::new(0),
            es_write_indices: Default::default(),
            es_bytes_raw: AtomicU64::new(0),
            es_bytes_sent: AtomicU64::new(0),
            kube_watch_errors: AtomicU64::new(0),
            kube_metadata_missing: AtomicU64::new(0),
            kube_cache_pods: AtomicU64::new(0),
            kube_cache_evicted: AtomicU64::new(0),
            files_excluded: AtomicU64::new(0),
            links_refused: AtomicU64::new(0),
            links_dangling: AtomicU64::new(0),
            files_deferred: AtomicU64::new(0),
            enrich_full: AtomicU64::new(0),
            dead_letter_evicted_bytes: AtomicU64::new(0),
            es_in_flight_full: AtomicU64::new(0),
            es_outcome_items: AtomicU64::new(0),
            es_outcome_refused: AtomicU64::new(0),
            es_outcome_throttled: AtomicU64::new(0),
            es_outcome_unreachable: AtomicU64::new(0),
            es_bulk_seconds: Histogram::new(LATENCY_BOUNDS),
            es_batch_documents: Histogram::new(BATCH_BOUNDS),
            buffer_bytes: AtomicU64::new(0),
            buffer_full: AtomicU64::new(0),
            buffer_corrupt_records: AtomicU64::new(0),
            buffer_corrupt_bytes: AtomicU64::new(0),
            events_cri: AtomicU64::new(0),
            events_docker: AtomicU64::new(0),
            events_invalid_utf8: AtomicU64::new(0),
            events_field_type_mismatch: AtomicU64::new(0),
            lines_rate_limited: AtomicU64::new(0),
            retention_refused: AtomicU64::new(0),
            rate_limit_summaries: AtomicU64::new(0),
            es_in_flight_bytes: AtomicU64::new(0),
            es_items_sent: AtomicU64::new(0),
            es_retry_queue_documents: AtomicU64::new(0),
            es_retry_queue_bytes: AtomicU64::new(0),
            es_concurrency_limit: AtomicU64::new(0),
            es_rate_limit: AtomicU64::new(0),
            es_rejected_share: AtomicU64::new(0),
            es_backoff_seconds: AtomicU64::new(0),
            backpressure_micros: AtomicU64::new(0),
            config_reloads: AtomicU64::new(0),
            config_reload_failures: AtomicU64::new(0),
            es_last_outcome: AtomicU64::new(0),
            kube_api_requests: AtomicU64::new(0),
            kube_relists: AtomicU64::new(0),
        }
    }
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Lowers a gauge kept as a count.
    pub fn sub(gauge: &AtomicU64, n: u64) {
        gauge.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// A gauge stored as an `f64`'s bits.
    pub fn get_f64(gauge: &AtomicU64) -> f64 {
        f64::from_bits(gauge.load(Ordering::Relaxed))
    }
}
