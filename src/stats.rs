//! Counters every stage adds to; the metrics endpoint will read them. Lossy events
//! (truncations, skipped bytes) are always counted here, never silent.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    pub bytes_read: AtomicU64,
    pub lines_read: AtomicU64,
    pub events: AtomicU64,
    pub events_delivered: AtomicU64,
    pub files_opened: AtomicU64,
    pub files_released: AtomicU64,
    pub rotations: AtomicU64,
    pub truncations: AtomicU64,
    /// Bytes of over-long lines that were not kept.
    pub bytes_dropped: AtomicU64,
    pub events_truncated: AtomicU64,
    pub events_malformed: AtomicU64,
    pub read_errors: AtomicU64,
    pub es_requests: AtomicU64,
    pub es_request_failures: AtomicU64,
    pub es_items_retried: AtomicU64,
    pub es_duplicates: AtomicU64,
    pub es_rescued: AtomicU64,
    pub es_dead_lettered: AtomicU64,
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
    /// Files that waited because `source.max_open_files` were followed.
    pub files_deferred: AtomicU64,
    /// Times the enrich stage held its most and stopped taking input.
    pub enrich_full: AtomicU64,
    /// Dead-letter bytes deleted to stay under `dead_letter_max_bytes`.
    pub dead_letter_evicted_bytes: AtomicU64,
    /// Times a batch was ready and `max_in_flight` requests were already out.
    pub es_in_flight_full: AtomicU64,
    /// Bytes in the disk buffer now (a gauge).
    pub buffer_bytes: AtomicU64,
    /// Times the disk buffer was full and reading paused.
    pub buffer_full: AtomicU64,
    /// Damaged or torn records found in the disk buffer, skipped, and their bytes.
    pub buffer_corrupt_records: AtomicU64,
    pub buffer_corrupt_bytes: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
