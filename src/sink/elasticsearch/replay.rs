//! Replays checked before they are sent. Elasticsearch refuses a duplicate `create` only
//! within one backing index: a line the last run sent, replayed after the data stream
//! rolled over, would land twice. So the events a restarted agent may have sent already
//! (`LogEvent::is_replay`) are looked up in the whole stream first; those found count as
//! delivered, the others are sent. Steady shipping pays nothing, and index mode (daily
//! indices named from each line's date) needs no lookup: its index is a function of the
//! line, so a duplicate is always refused.

use super::batch::Sealed;
use super::lookup::{present_ids, LookupError};
use super::target::Target;
use super::Shared;
use crate::encode::doc_id::document_id;
use crate::event::{AckBuilder, LogEvent};
use crate::stats::Stats;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long lookups are tried while the cluster does not answer them before the replays
/// are sent unchecked (counted): shipping is never held forever by a lookup.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

/// Checks `replays` against their streams: returns those to send, and the acknowledgements
/// of those the stream holds already.
pub(super) async fn check(
    shared: &Shared,
    replays: Vec<(LogEvent, Arc<Target>)>,
) -> (Vec<(LogEvent, Arc<Target>)>, AckBuilder) {
    let mut by_stream: HashMap<String, Vec<(LogEvent, Arc<Target>)>> = HashMap::new();
    for r in replays {
        by_stream.entry(r.1.index.clone()).or_default().push(r);
    }
    let mut send = Vec::new();
    let mut present_acks = AckBuilder::default();
    let stats = &shared.stats;
    for (stream, events) in by_stream {
        let ids: Vec<String> = events
            .iter()
            .map(|(e, _)| {
                String::from_utf8_lossy(&document_id(e.file.id_seed, e.offset)).into_owned()
            })
            .collect();
        Stats::add(&stats.es_replays_checked, ids.len() as u64);
        let Some(present) = lookup(shared, &stream, &ids).await else {
            Stats::add(&stats.es_replays_unchecked, ids.len() as u64);
            send.extend(events);
            continue;
        };
        if let Some(held_back) = crate::log_limit::allow("es.replay_checked") {
            tracing::info!(stream, documents = ids.len(), present = present.len(), held_back, "documents the last run may have sent, looked up: those the stream holds are not sent again");
        }
        for ((e, t), id) in events.into_iter().zip(ids) {
            if present.contains(&id) {
                // Delivered: by the last run.
                Stats::add(&stats.es_replays_present, 1);
                Stats::add(&stats.events_delivered, 1);
                present_acks.push(&e);
            } else {
                send.push((e, t));
            }
        }
    }
    (send, present_acks)
}

/// The ids `stream` holds, or `None` when the cluster would not say (refused, or no
/// answer for `GIVE_UP_AFTER`).
async fn lookup(
    shared: &Shared,
    stream: &str,
    ids: &[String],
) -> Option<std::collections::HashSet<String>> {
    let started = Instant::now();
    let mut wait = Duration::from_millis(100);
    loop {
        let transport = shared.client.transport();
        let timeout = shared.cfg.request_timeout;
        let failure = match present_ids(transport, stream, ids, timeout).await {
            Ok(present) => return Some(present),
            Err(e) => e,
        };
        let refused = matches!(&failure, LookupError::Status { status, .. } if (400..500).contains(status) && *status != 429);
        if refused || started.elapsed() >= GIVE_UP_AFTER {
            if let Some(held_back) = crate::log_limit::allow("es.replay_lookup") {
                tracing::warn!(stream, error = %failure, held_back, documents = ids.len(), "cannot ask which replayed documents the stream holds; sending them unchecked (a rollover since they were first sent would index them twice)");
            }
            return None;
        }
        tracing::debug!(stream, error = %failure, "replay lookup failed; trying again");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// Lookups of a request whose first sending went unanswered, before it is given up on and
/// sent unchecked (the cluster answering bulk requests but not searches).
const AMBIGUOUS_LOOKUP_TRIES: u32 = 8;

/// For a request sent before with no answer: the items its streams hold already. `Err(true)`:
/// the lookup had no answer either, the request is to wait; `Err(false)`: the cluster would
/// not say, the request goes unchecked (counted).
pub(super) async fn check_sealed(shared: &Shared, batch: &mut Sealed) -> Result<Vec<usize>, bool> {
    let stats = &shared.stats;
    let mut by_stream: HashMap<String, Vec<(usize, String)>> = HashMap::new();
    for i in 0..batch.len() {
        if let Some((index, id)) = batch.target_and_id(i) {
            by_stream.entry(index).or_default().push((i, id));
        }
    }
    let mut found = Vec::new();
    for (stream, items) in &by_stream {
        let ids: Vec<String> = items.iter().map(|(_, id)| id.clone()).collect();
        let transport = shared.client.transport();
        match present_ids(transport, stream, &ids, shared.cfg.request_timeout).await {
            Ok(present) => found.extend(
                items
                    .iter()
                    .filter(|(_, id)| present.contains(id))
                    .map(|&(i, _)| i),
            ),
            Err(e) => {
                let busy = match &e {
                    LookupError::Unreachable(_) => true,
                    LookupError::Status { status, .. } => *status == 429 || *status >= 500,
                };
                if busy
                    && batch
                        .meta
                        .iter()
                        .all(|m| m.attempts < AMBIGUOUS_LOOKUP_TRIES)
                {
                    for m in &mut batch.meta {
                        m.attempts += 1;
                    }
                    return Err(true);
                }
                if let Some(held_back) = crate::log_limit::allow("es.replay_lookup") {
                    tracing::warn!(stream = %stream, error = %e, held_back, documents = batch.len(), "cannot ask which documents of an unanswered request the stream holds; sending it unchecked (a rollover since would index them twice)");
                }
                Stats::add(&stats.es_replays_unchecked, batch.len() as u64);
                return Err(false);
            }
        }
    }
    Stats::add(&stats.es_replays_checked, batch.len() as u64);
    Stats::add(&stats.es_replays_present, found.len() as u64);
    found.sort_unstable();
    Ok(found)
}
