//! Replays checked before they are sent. Elasticsearch refuses a duplicate `create` only
//! within one backing index: a line the last run sent, replayed after the data stream
//! rolled over, would land twice. So a request that may hold such lines (events a restarted
//! agent may have sent already, `LogEvent::is_replay`; the disk buffer's records the last
//! run left or the spool tagged; a request sent before with no answer) is marked
//! `Sealed::ambiguous`, and its ids are looked up in the whole stream before it is sent, in
//! the request's own task: those found count as delivered, the others are sent. Steady
//! shipping pays nothing, and index mode (daily indices named from each line's date) needs
//! no lookup: its index is a function of the line, so a duplicate is always refused.

use super::batch::Sealed;
use super::lookup::{present_ids, LookupError};
use super::Shared;
use crate::stats::Stats;
use std::collections::HashMap;

/// Lookups of an ambiguous request the cluster may answer with 429 or 5xx, or leave
/// unanswered past the request timeout, before the request is sent unchecked (it takes
/// bulk requests but not searches). A lookup that cannot connect is tried again for as
/// long as it takes: the request could not be sent either.
const AMBIGUOUS_LOOKUP_TRIES: u32 = 8;

/// For a request marked ambiguous: the items its streams hold already. `Err(true)`:
/// the lookup failed for now, the request is to wait; `Err(false)`: the cluster would not
/// say, the request goes unchecked (counted).
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
        // Also in the namespace's streams of other retention classes: a line the last run
        // sent may have moved class since (a rule or an annotation changed).
        let targets = shared.router.lookup_targets(stream);
        match present_ids(transport, &targets, &ids, shared.cfg.request_timeout).await {
            Ok(present) => found.extend(
                items
                    .iter()
                    .filter(|(_, id)| present.contains(id))
                    .map(|&(i, _)| i),
            ),
            Err(e) => {
                match &e {
                    LookupError::Unreachable(_) => return Err(true),
                    LookupError::Status { status, .. }
                        if (*status == 429 || *status >= 500)
                            && batch.lookups_refused < AMBIGUOUS_LOOKUP_TRIES =>
                    {
                        batch.lookups_refused += 1;
                        return Err(true);
                    }
                    LookupError::Unanswered(_)
                        if batch.lookups_refused < AMBIGUOUS_LOOKUP_TRIES =>
                    {
                        batch.lookups_refused += 1;
                        return Err(true);
                    }
                    LookupError::Status { .. } | LookupError::Unanswered(_) => {}
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
    if let Some(held_back) = crate::log_limit::allow("es.replay_checked") {
        tracing::info!(documents = batch.len(), present = found.len(), held_back, "documents that may have been sent before, looked up: those the stream holds are not sent again");
    }
    found.sort_unstable();
    Ok(found)
}
