//! One bulk request sent once, and what its answer makes of each item: delivered or 409
//! (acknowledged at once), refused for load (sent again with later requests), refused for
//! good (rescued once, then dead-lettered). Nothing here waits: the wait before a resend
//! is decided by `Backoff` and the shipper, from what the cluster said.

use super::batch::{ItemMeta, Origin, Sealed};
use super::client::Reply;
use super::response::{classify, ItemResult, Outcome};
use super::{replay, Shared};
use crate::event::AckBuilder;
use crate::log_limit;
use crate::stats::Stats;
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// What became of the items of one answer, for the counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct Settled {
    pub delivered: u64,
    pub duplicates: u64,
    pub rescued: u64,
    pub dead_lettered: u64,
}

/// An item to send again with a later request.
#[derive(Debug)]
pub struct Pending {
    /// Its action line and document, each ending in `\n`.
    pub lines: Bytes,
    pub meta: ItemMeta,
    /// Not to be sent before; `None` until the shipper sets it from its backoff.
    pub ready_at: Option<Instant>,
}

/// Settled items, to acknowledge: events as runs of a file's sequence numbers (joined here,
/// in the request's task), disk-buffer records as runs of one read ticket.
#[derive(Debug, Default)]
pub struct Acked {
    pub events: AckBuilder,
    /// (ticket, records) in the order read.
    pub records: Vec<(u64, usize)>,
}

impl Acked {
    fn push(&mut self, origin: Origin) {
        match origin {
            Origin::Event {
                key,
                seq,
                safe_point,
            } => self.events.push_parts(key, seq, safe_point),
            Origin::Record(t) => match self.records.last_mut() {
                Some((last, n)) if *last == t => *n += 1,
                _ => self.records.push((t, 1)),
            },
        }
    }
}

/// What the cluster said of a request as a whole: the shipper's cue for its pace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Per-item results: `rejected` refused for load; `got_in` whether any item landed.
    Items { rejected: usize, got_in: bool },
    /// Nothing got through: 429, 5xx, no answer. `down`: no answer or 502–504, the
    /// cluster looks away (worth probing).
    Throttled { down: bool },
    /// 401/403 for the whole request.
    Unauthorized,
    /// 413: its items go again in smaller requests.
    TooLarge,
    /// Refused for good as a whole (another 4xx): its items were dead-lettered.
    Refused,
}

/// A request's answer, settled.
pub struct Completion {
    pub sent_at: Instant,
    pub docs: usize,
    pub raw_len: usize,
    /// Items delivered, duplicate or dead-lettered: acknowledge them.
    pub acked: Acked,
    /// Items to send again with later requests.
    pub loose: Vec<Pending>,
    /// The whole request to send again as it is (nothing in it got through).
    pub again: Option<Sealed>,
    pub settled: Settled,
    pub verdict: Verdict,
}

/// Sends `batch` once (trying each endpoint while none answers) and settles its items.
pub(super) async fn send_and_settle(shared: &Shared, mut batch: Sealed) -> Completion {
    let st = &shared.stats;
    let sent_at = Instant::now();
    let (docs, raw_len) = (batch.len(), batch.raw_len);
    // Sent before with no answer: what the stream holds of it now is not sent again (a
    // rollover since would index it twice).
    let mut found_before = Acked::default();
    let mut already = 0;
    let checked = batch.ambiguous;
    if batch.ambiguous {
        match replay::check_sealed(shared, &mut batch).await {
            Ok(found) => {
                already = found.len() as u64;
                for &i in &found {
                    found_before.push(batch.meta[i].origin);
                }
                batch = batch.without(&found, shared.cfg.compression_level);
            }
            // No answer to the lookup either: the request waits, still unsure.
            Err(true) => {
                let mut c = Completion::new(sent_at, docs, raw_len);
                c.verdict = Verdict::Throttled { down: true };
                c.again = Some(batch);
                return c;
            }
            Err(false) => batch.ambiguous = false,
        }
        if batch.is_empty() {
            let mut c = Completion::new(sent_at, docs, raw_len);
            c.acked = found_before;
            c.settled.duplicates = already;
            c.verdict = Verdict::Items {
                rejected: 0,
                got_in: true,
            };
            return c;
        }
    }
    let mut unreachable = 0usize;
    let reply = loop {
        Stats::add(&st.es_requests, 1);
        Stats::add(&st.es_items_sent, batch.len() as u64);
        Stats::add(&st.es_bytes_raw, batch.raw_len as u64);
        let started = Instant::now();
        let (reply, sent) = shared
            .client
            .send(batch.payload.clone(), batch.gzip, checked)
            .await;
        Stats::add(&st.es_bytes_sent, sent as u64);
        st.es_bulk_seconds.observe(started.elapsed().as_secs_f64());
        let (outcome, counter) = match &reply {
            Reply::Items(_) => (1, &st.es_outcome_items),
            Reply::Status(429 | 500..=599, _) => (3, &st.es_outcome_throttled),
            Reply::Status(..) => (2, &st.es_outcome_refused),
            Reply::Unreachable(_) | Reply::Unanswered(_) => (4, &st.es_outcome_unreachable),
        };
        Stats::add(counter, 1);
        st.es_last_outcome.store(outcome, Ordering::Relaxed);
        // Not sent: another endpoint is tried at once. Sent with no answer: it goes again
        // only after a lookup (below).
        if matches!(reply, Reply::Unreachable(_)) {
            unreachable += 1;
            if unreachable < shared.cfg.endpoints.len() {
                Stats::add(&st.es_request_failures, 1);
                continue;
            }
        }
        break reply;
    };
    let mut c = Completion::new(sent_at, docs, raw_len);
    c.acked = found_before;
    c.settled.duplicates = already;
    match reply {
        Reply::Items(items) if items.len() == batch.len() => {
            if checked {
                note_write_indices(shared, &mut batch, &items);
            }
            let mut rejected = 0;
            let mut unauthorized = None;
            for (i, item) in items.iter().enumerate() {
                let meta = batch.meta[i];
                match classify(item.status, item.error_type()) {
                    Outcome::Delivered => {
                        c.settled.delivered += 1;
                        c.acked.push(meta.origin);
                    }
                    Outcome::Duplicate => {
                        c.settled.duplicates += 1;
                        c.acked.push(meta.origin);
                    }
                    Outcome::Retry => {
                        rejected += 1;
                        retry_item(shared, &mut batch, i, &mut c, item.status, "rejected");
                    }
                    Outcome::Unauthorized => {
                        unauthorized = Some(item.reason().unwrap_or_default().to_string());
                        retry_item(shared, &mut batch, i, &mut c, item.status, "forbidden");
                    }
                    Outcome::Rejected => {
                        let kind = item.error_type().unwrap_or("unknown");
                        let reason = item.reason().unwrap_or("");
                        refused_item(shared, &mut batch, i, &mut c, item.status, kind, reason);
                    }
                }
            }
            if let Some(reason) = unauthorized {
                if let Some(held_back) = log_limit::allow("es.index_forbidden") {
                    tracing::error!(reason = %reason, held_back, "Elasticsearch refuses the documents' index for these credentials (401/403); retrying");
                }
            }
            c.verdict = Verdict::Items {
                rejected,
                got_in: c.settled.delivered + c.settled.duplicates > 0,
            };
        }
        Reply::Items(items) => {
            let why = format!("{} results for {} documents", items.len(), batch.len());
            c.verdict = Verdict::Throttled { down: false };
            whole_again(shared, batch, &mut c, &why);
        }
        Reply::Status(413, body) if batch.len() == 1 => {
            dead_letter_or_retry(
                shared,
                &mut batch,
                0,
                &mut c,
                413,
                "request_entity_too_large",
                &body,
            );
            c.verdict = Verdict::TooLarge;
        }
        Reply::Status(413, _) => {
            for i in 0..batch.len() {
                c.loose.push(Pending {
                    lines: Bytes::copy_from_slice(batch.lines(i)),
                    meta: batch.meta[i],
                    ready_at: Some(sent_at),
                });
            }
            c.verdict = Verdict::TooLarge;
        }
        Reply::Status(status @ (401 | 403), body) => {
            if let Some(held_back) = log_limit::allow("es.credentials") {
                tracing::error!(status, body = %body, held_back, "Elasticsearch refuses logferry's credentials; retrying");
            }
            c.verdict = Verdict::Unauthorized;
            whole_again(shared, batch, &mut c, &format!("HTTP {status}"));
        }
        Reply::Status(status @ (429 | 500..=599), body) => {
            c.verdict = Verdict::Throttled {
                down: matches!(status, 502..=504),
            };
            // A gateway's: the cluster behind it may have indexed the request.
            if matches!(status, 502 | 504) {
                batch.ambiguous = true;
            }
            whole_again(shared, batch, &mut c, &format!("HTTP {status}: {body}"));
        }
        Reply::Status(status, body) => {
            // The request itself was refused (a 4xx a retry cannot change).
            if let Some(held_back) = log_limit::allow("es.request_refused") {
                tracing::error!(status, body = %body, held_back, "Elasticsearch refused a bulk request; its documents go to the dead-letter file");
            }
            for i in 0..batch.len() {
                dead_letter_or_retry(
                    shared,
                    &mut batch,
                    i,
                    &mut c,
                    status,
                    "request_refused",
                    &body,
                );
            }
            c.verdict = Verdict::Refused;
        }
        Reply::Unreachable(e) => {
            c.verdict = Verdict::Throttled { down: true };
            whole_again(shared, batch, &mut c, &e);
        }
        Reply::Unanswered(e) => {
            c.verdict = Verdict::Throttled { down: true };
            // It may have been indexed before the answer was lost.
            batch.ambiguous = true;
            whole_again(shared, batch, &mut c, &e);
        }
    }
    c
}

/// Which write index took the replays just sent, per data stream: kept for `/status`, and
/// a change (a rollover since the last replays) is said once.
fn note_write_indices(shared: &Shared, batch: &mut Sealed, items: &[ItemResult]) {
    let mut took: Vec<(String, &str)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(index) = item.index() else {
            continue;
        };
        if took.iter().any(|(_, known)| *known == index) {
            continue;
        }
        if let Some((stream, _)) = batch.target_and_id(i) {
            took.push((stream, index));
        }
    }
    let mut known = shared
        .stats
        .es_write_indices
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    for (stream, index) in took {
        let previous = known.insert(stream.clone(), index.to_string());
        if previous.as_deref() != Some(index) {
            tracing::info!(stream = %stream, write_index = %index, previous = previous.as_deref().unwrap_or("none"), "documents that may have been sent before went to this write index");
        }
    }
}

impl Completion {
    fn new(sent_at: Instant, docs: usize, raw_len: usize) -> Completion {
        Completion {
            sent_at,
            docs,
            raw_len,
            acked: Acked::default(),
            loose: Vec::new(),
            again: None,
            settled: Settled::default(),
            verdict: Verdict::Refused,
        }
    }
}

/// Nothing in the request got through: it goes again as it is, unless its documents have
/// had `max_retries` attempts.
fn whole_again(shared: &Shared, mut batch: Sealed, c: &mut Completion, why: &str) {
    Stats::add(&shared.stats.es_request_failures, 1);
    if let Some(held_back) = log_limit::allow("es.bulk_failed") {
        tracing::warn!(error = %why, held_back, documents = batch.len(), "bulk request failed; retrying");
    }
    let max = shared.cfg.max_retries;
    let exhausted = max > 0 && batch.meta.iter().any(|m| m.attempts + 1 >= max);
    if !exhausted {
        Stats::add(&shared.stats.es_items_retried, batch.len() as u64);
        for m in &mut batch.meta {
            m.attempts += 1;
        }
        c.again = Some(batch);
        return;
    }
    give_up_log(batch.len(), max);
    for i in 0..batch.len() {
        dead_letter_or_retry(shared, &mut batch, i, c, 0, "max_retries_exceeded", why);
    }
}

fn give_up_log(documents: usize, attempts: u32) {
    if let Some(held_back) = log_limit::allow("es.max_retries") {
        tracing::error!(
            documents,
            attempts,
            held_back,
            "giving up on documents after max_retries; they go to the dead-letter file"
        );
    }
}

/// An item refused for load (or forbidden): sent again later, or dead-lettered after
/// `max_retries` attempts.
fn retry_item(
    shared: &Shared,
    batch: &mut Sealed,
    i: usize,
    c: &mut Completion,
    status: u16,
    why: &str,
) {
    let max = shared.cfg.max_retries;
    let mut meta = batch.meta[i];
    if max > 0 && meta.attempts + 1 >= max {
        give_up_log(1, max);
        dead_letter_or_retry(shared, batch, i, c, status, "max_retries_exceeded", why);
        return;
    }
    meta.attempts += 1;
    Stats::add(&shared.stats.es_items_retried, 1);
    c.loose.push(Pending {
        lines: Bytes::copy_from_slice(batch.lines(i)),
        meta,
        ready_at: None,
    });
}

/// A document refused for good: rescued once (sent again at once), then dead-lettered.
fn refused_item(
    shared: &Shared,
    batch: &mut Sealed,
    i: usize,
    c: &mut Completion,
    status: u16,
    kind: &str,
    reason: &str,
) {
    let mut meta = batch.meta[i];
    if !meta.rescued {
        let (action, doc) = batch.action_and_doc(i);
        if let Some(doc) = super::rescue::rescue(doc, &shared.kept, kind, reason) {
            let mut lines = Vec::with_capacity(action.len() + doc.len() + 2);
            lines.extend_from_slice(action);
            lines.push(b'\n');
            lines.extend_from_slice(&doc);
            lines.push(b'\n');
            meta.rescued = true;
            c.settled.rescued += 1;
            c.loose.push(Pending {
                lines: Bytes::from(lines),
                meta,
                ready_at: Some(c.sent_at),
            });
            return;
        }
    }
    dead_letter_or_retry(shared, batch, i, c, status, kind, reason);
}

/// Writes item `i` to the dead-letter file and acknowledges it; if the file cannot be
/// written, the item is sent again later instead of being lost.
fn dead_letter_or_retry(
    shared: &Shared,
    batch: &mut Sealed,
    i: usize,
    c: &mut Completion,
    status: u16,
    kind: &str,
    reason: &str,
) {
    let (action, doc) = batch.action_and_doc(i);
    let mut dl = shared.dead_letter.lock().unwrap_or_else(|e| e.into_inner());
    let written = dl.write(action, doc, status, kind, reason);
    shared
        .stats
        .dead_letter_evicted_bytes
        .store(dl.evicted_bytes, Ordering::Relaxed);
    match written {
        Ok(()) => {
            // The reason can quote the document: it stays in the dead-letter file.
            if let Some(held_back) = log_limit::allow("es.dead_letter") {
                tracing::warn!(status, error = kind, held_back, dir = %dl.dir().display(), "document refused by Elasticsearch; kept in the dead-letter file");
            }
            c.settled.dead_lettered += 1;
            c.acked.push(batch.meta[i].origin);
        }
        Err(e) => {
            if let Some(held_back) = log_limit::allow("es.dead_letter_write") {
                tracing::error!(error = %e, held_back, "cannot write the dead-letter file; the document will be sent again");
            }
            drop(dl);
            c.loose.push(Pending {
                lines: Bytes::copy_from_slice(batch.lines(i)),
                meta: batch.meta[i],
                ready_at: Some(c.sent_at + Duration::from_secs(1)),
            });
        }
    }
}
