//! The Elasticsearch sink: events are encoded straight into bulk bodies, sent gzip-compressed
//! with `create` and deterministic ids, and each item's result decides its fate: delivered,
//! duplicate (409, also delivered), retried (429/5xx), rescued once, or dead-lettered. A
//! batch is acknowledged when every item in it is settled, so checkpoints never pass a line
//! that is not in Elasticsearch (or in the dead-letter file).

pub mod batch;
pub mod client;
pub mod dead_letter;
pub mod rescue;
pub mod response;
pub mod setup;
pub mod spool;
pub mod target;

use self::batch::{Batch, Sealed};
use self::client::{BulkClient, Reply};
use self::dead_letter::DeadLetter;
use self::response::{classify, Outcome};
use self::target::{Router, Targets};
use crate::checkpoint::CheckpointMsg;
use crate::config::ElasticsearchConfig;
use crate::encode::DocumentEncoder;
use crate::event::LogEvent;
use crate::log_limit;
use crate::stats::Stats;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What a settled batch did.
#[derive(Debug, Default, Clone, Copy)]
struct Settled {
    delivered: u64,
    duplicates: u64,
    rescued: u64,
    dead_lettered: u64,
}

struct Shared {
    client: BulkClient,
    cfg: ElasticsearchConfig,
    json_key: String,
    stats: Arc<Stats>,
    dead_letter: Mutex<DeadLetter>,
}

pub struct ElasticsearchSink {
    health: Arc<crate::http::Health>,
    shared: Arc<Shared>,
    router: Router,
    encoder: DocumentEncoder,
    acks: mpsc::UnboundedSender<CheckpointMsg>,
}

impl ElasticsearchSink {
    pub fn new(
        health: Arc<crate::http::Health>,
        cfg: &ElasticsearchConfig,
        json: &crate::config::JsonConfig,
        dead_letter_dir: &std::path::Path,
        acks: mpsc::UnboundedSender<CheckpointMsg>,
        stats: Arc<Stats>,
    ) -> Result<Self, client::ClientError> {
        let json_key = if json.enabled {
            json.target.clone()
        } else {
            String::new()
        };
        Ok(ElasticsearchSink {
            health,
            shared: Arc::new(Shared {
                client: BulkClient::new(cfg)?,
                cfg: cfg.clone(),
                json_key,
                stats: stats.clone(),
                dead_letter: Mutex::new(DeadLetter::new(
                    dead_letter_dir,
                    cfg.dead_letter_max_bytes,
                )),
            }),
            router: Router::new(cfg),
            encoder: DocumentEncoder::new(json).counting(stats),
            acks,
        })
    }

    /// Ships until the channel closes and everything in flight is settled.
    pub async fn run(self, mut rx: mpsc::Receiver<Vec<LogEvent>>) {
        if self.shared.cfg.setup {
            ensure_setup(&self.shared).await;
        }
        self.health.set_ready(true);
        let cfg = &self.shared.cfg;
        let (max_bytes, max_events) = (cfg.batch_max_bytes as usize, cfg.batch_max_events);
        let mut targets = Targets::new(self.router.clone());
        let level = cfg.compression_level;
        let mut batch = Batch::new(level);
        let mut in_flight: JoinSet<(Vec<crate::event::AckRange>, Settled)> = JoinSet::new();
        let mut open = true;
        while open || !batch.is_empty() || !in_flight.is_empty() {
            let deadline = batch
                .started
                .map(|s| Instant::from_std(s) + cfg.flush_interval);
            let room = in_flight.len() < cfg.max_in_flight;
            tokio::select! {
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    if let Ok((acks, settled)) = done {
                        self.settle(acks, settled);
                    }
                }
                msg = rx.recv(), if open && room => match msg {
                    Some(events) => {
                        for e in &events {
                            let t = targets.get(e);
                            batch.push(e, &t, &self.encoder);
                            if batch.is_full(max_bytes, max_events) {
                                if in_flight.len() >= cfg.max_in_flight {
                                    Stats::add(&self.shared.stats.es_in_flight_full, 1);
                                }
                                while in_flight.len() >= cfg.max_in_flight {
                                    if let Some(Ok((acks, settled))) = in_flight.join_next().await {
                                        self.settle(acks, settled);
                                    }
                                }
                                self.dispatch(&mut in_flight, std::mem::replace(&mut batch, Batch::new(level)));
                            }
                        }
                    }
                    None => open = false,
                },
                _ = crate::time::sleep_until(deadline), if room && !batch.is_empty() => {
                    self.dispatch(&mut in_flight, std::mem::replace(&mut batch, Batch::new(level)));
                }
                _ = std::future::ready(()), if !open && room && !batch.is_empty() => {
                    self.dispatch(&mut in_flight, std::mem::replace(&mut batch, Batch::new(level)));
                }
            }
        }
    }

    /// Ships from the disk buffer. Checkpoints were moved by the spool; this side only
    /// frees the buffer. When the spool is done (shutdown), `drain` says whether to deliver
    /// everything first (`--once`) or to stop at once: what is in flight stays in the
    /// buffer and is sent again on the next start, answered 409 if it had landed.
    pub async fn run_buffered(self, mut reader: crate::buffer::QueueReader, drain: bool) {
        let ElasticsearchSink {
            health,
            shared,
            acks,
            ..
        } = self;
        // Holding a sender would keep the checkpointer from its final save at shutdown.
        drop(acks);
        if shared.cfg.setup {
            // A shutdown during an outage must not wait for the setup: the spool has
            // already made everything safe.
            let closed = async {
                while !reader.available().1 {
                    reader.appended().await;
                }
            };
            tokio::select! {
                _ = ensure_setup(&shared) => {}
                _ = closed, if !drain => {
                    tracing::info!("stopping before Elasticsearch answered; the documents stay in the disk buffer");
                    return;
                }
            }
        }
        health.set_ready(true);
        let cfg = &shared.cfg;
        let (max_bytes, max_events) = (cfg.batch_max_bytes as usize, cfg.batch_max_events);
        let level = cfg.compression_level;
        let mut in_flight: JoinSet<(crate::buffer::Ticket, Settled)> = JoinSet::new();
        // When records first waited for a batch to fill.
        let mut waiting_since: Option<Instant> = None;
        // A batch is ready and every request slot is taken (counted once per wait).
        let mut blocked = false;
        loop {
            let (available, closed) = reader.available();
            if closed && !drain {
                in_flight.abort_all();
                while let Some(done) = in_flight.join_next().await {
                    if let Ok((ticket, settled)) = done {
                        record_settled(&shared.stats, settled);
                        let _ = reader.ack(ticket);
                    }
                }
                if available > 0 {
                    tracing::info!(
                        bytes = available,
                        "stopping; undelivered documents stay in the disk buffer"
                    );
                }
                break;
            }
            if available == 0 && closed && in_flight.is_empty() {
                break;
            }
            let room = in_flight.len() < cfg.max_in_flight;
            if available > 0 {
                let since = *waiting_since.get_or_insert_with(Instant::now);
                let ready = available >= max_bytes as u64
                    || closed
                    || since.elapsed() >= cfg.flush_interval;
                if ready && !room && !blocked {
                    blocked = true;
                    Stats::add(&shared.stats.es_in_flight_full, 1);
                }
                if room && ready {
                    blocked = false;
                    let mut batch = Batch::new(level);
                    match reader.read(max_bytes, max_events, |item| batch.push_encoded(item)) {
                        Ok(Some(ticket)) => {
                            waiting_since = None;
                            let (sealed, _) = batch.seal();
                            shared.stats.es_batch_documents.observe(sealed.len() as f64);
                            let shared = shared.clone();
                            in_flight.spawn(async move { (ticket, ship(&shared, sealed).await) });
                        }
                        Ok(None) => waiting_since = None,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot read the disk buffer; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                    continue;
                }
            }
            let deadline = waiting_since.map(|s| s + cfg.flush_interval);
            tokio::select! {
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    if let Ok((ticket, settled)) = done {
                        record_settled(&shared.stats, settled);
                        if let Err(e) = reader.ack(ticket) {
                            tracing::error!(error = %e, "cannot free delivered records in the disk buffer");
                        }
                    }
                }
                _ = reader.appended(), if room => {}
                _ = crate::time::sleep_until(deadline), if room => {}
            }
        }
    }

    fn dispatch(&self, set: &mut JoinSet<(Vec<crate::event::AckRange>, Settled)>, batch: Batch) {
        let (batch, acks) = batch.seal();
        self.shared
            .stats
            .es_batch_documents
            .observe(batch.len() as f64);
        let shared = self.shared.clone();
        set.spawn(async move {
            let settled = ship(&shared, batch).await;
            (acks, settled)
        });
    }

    fn settle(&self, acks: Vec<crate::event::AckRange>, s: Settled) {
        record_settled(&self.shared.stats, s);
        let _ = self.acks.send(CheckpointMsg::Acked(acks));
    }
}

fn record_settled(st: &Stats, s: Settled) {
    Stats::add(
        &st.events_delivered,
        s.delivered + s.duplicates + s.dead_lettered,
    );
    Stats::add(&st.es_duplicates, s.duplicates);
    Stats::add(&st.es_rescued, s.rescued);
    Stats::add(&st.es_dead_lettered, s.dead_lettered);
}

/// Installs the index setup, retrying until Elasticsearch answers. Shipping waits for
/// it, so the data stream is never created without our template.
async fn ensure_setup(shared: &Shared) {
    let rs = setup::resources(&shared.cfg, &shared.json_key);
    let mut backoff = Backoff::new(&shared.cfg);
    loop {
        match setup::apply(shared.client.transport(), &rs, false).await {
            Ok(changes) => {
                for (r, c) in changes {
                    match c {
                        setup::Change::Differs => {
                            tracing::warn!(kind = r.kind, name = %r.name, "{c}")
                        }
                        _ => tracing::info!(kind = r.kind, name = %r.name, "{c}"),
                    }
                }
                return;
            }
            Err(e @ setup::SetupError::Refused { .. }) => {
                // Retrying will not change a refusal (e.g. a user allowed to write but not
                // to manage templates): ship, so that no line waits on it.
                tracing::error!(error = %e, "Elasticsearch refused the index setup; shipping without it (run `logferry setup` with a privileged user)");
                return;
            }
            Err(e) => {
                let wait = backoff.next();
                // Logged on attempts 1, 2, 4, 8…: a long outage does not flood the log.
                if backoff.attempt.is_power_of_two() {
                    tracing::error!(error = %e, attempt = backoff.attempt, retry_in = ?wait, "Elasticsearch index setup failed; shipping waits for it");
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Exponential backoff with jitter.
struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    seed: u64,
}

impl Backoff {
    fn new(cfg: &ElasticsearchConfig) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        Backoff {
            initial: cfg.retry_initial_backoff,
            max: cfg.retry_max_backoff,
            attempt: 0,
            seed,
        }
    }

    fn next(&mut self) -> Duration {
        let base = self
            .initial
            .saturating_mul(1 << self.attempt.min(20))
            .min(self.max);
        self.attempt += 1;
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        // Between half and all of the base, so agents do not retry in step.
        base.mul_f64(0.5 + (self.seed % 1000) as f64 / 2000.0)
    }
}

/// Sends a batch until every item is settled. Returns what happened to its items.
async fn ship(shared: &Shared, batch: Sealed) -> Settled {
    // Counted from the first send until settled, backoffs included.
    let bytes = batch.raw_len as u64;
    Stats::add(&shared.stats.es_in_flight_bytes, bytes);
    let settled = ship_until_settled(shared, batch).await;
    shared
        .stats
        .es_in_flight_bytes
        .fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
    settled
}

async fn ship_until_settled(shared: &Shared, mut batch: Sealed) -> Settled {
    let cfg = &shared.cfg;
    let st = &shared.stats;
    let mut settled = Settled::default();
    let mut rescued: HashMap<usize, Vec<u8>> = HashMap::new();
    // Groups of items still to send; a 413 splits a group in two.
    let mut groups: VecDeque<Vec<usize>> = VecDeque::from([(0..batch.len()).collect::<Vec<_>>()]);
    let mut backoff = Backoff::new(cfg);
    let mut attempts = 0u32;
    // Unreachable answers in a row: another endpoint is tried at once before backing off.
    let mut unreachable = 0usize;
    let mut body = Vec::new();
    while let Some(group) = groups.pop_front() {
        let whole = group.len() == batch.len() && rescued.is_empty();
        attempts += 1;
        Stats::add(&st.es_requests, 1);
        let started = Instant::now();
        let (reply, sent) = if whole {
            Stats::add(&st.es_bytes_raw, batch.raw_len as u64);
            shared.client.send(batch.payload.clone(), batch.gzip).await
        } else {
            body.clear();
            for &i in &group {
                match rescued.get(&i) {
                    Some(doc) => {
                        body.extend_from_slice(batch.action(i));
                        body.push(b'\n');
                        body.extend_from_slice(doc);
                        body.push(b'\n');
                    }
                    None => body.extend_from_slice(batch.lines(i)),
                }
            }
            Stats::add(&st.es_bytes_raw, body.len() as u64);
            shared.client.bulk(&body).await
        };
        Stats::add(&st.es_bytes_sent, sent as u64);
        st.es_bulk_seconds.observe(started.elapsed().as_secs_f64());
        let (outcome, counter) = match &reply {
            Reply::Items(_) => (1, &st.es_outcome_items),
            Reply::Status(429 | 500..=599, _) => (3, &st.es_outcome_throttled),
            Reply::Status(..) => (2, &st.es_outcome_refused),
            Reply::Unreachable(_) => (4, &st.es_outcome_unreachable),
        };
        Stats::add(counter, 1);
        st.es_last_outcome
            .store(outcome, std::sync::atomic::Ordering::Relaxed);
        let mut retry = Vec::new();
        let mut fail_whole: Option<String> = None;
        match reply {
            Reply::Items(items) if items.len() == group.len() => {
                let mut unauthorized = None;
                for (&i, item) in group.iter().zip(&items) {
                    match classify(item.status, item.error_type.as_deref()) {
                        Outcome::Delivered => settled.delivered += 1,
                        Outcome::Duplicate => settled.duplicates += 1,
                        Outcome::Retry => retry.push(i),
                        Outcome::Unauthorized => {
                            unauthorized = Some(item.reason.clone().unwrap_or_default());
                            retry.push(i);
                        }
                        Outcome::Rejected => {
                            let kind = item.error_type.as_deref().unwrap_or("unknown");
                            let reason = item.reason.as_deref().unwrap_or("");
                            let again = !rescued.contains_key(&i)
                                && rescue::rescue(batch.doc(i), &shared.json_key, kind, reason)
                                    .map(|doc| rescued.insert(i, doc))
                                    .is_some();
                            if again {
                                settled.rescued += 1;
                                retry.push(i);
                            } else if dead_letter(
                                shared,
                                &mut batch,
                                i,
                                rescued.get(&i),
                                item.status,
                                kind,
                                reason,
                            ) {
                                settled.dead_lettered += 1;
                            } else {
                                retry.push(i);
                            }
                        }
                    }
                }
                if let Some(reason) = unauthorized {
                    if let Some(held_back) = log_limit::allow("es.index_forbidden") {
                        tracing::error!(reason = %reason, held_back, "Elasticsearch refuses the documents' index for these credentials (401/403); retrying");
                    }
                }
                let only_rescues =
                    retry.iter().all(|i| rescued.contains_key(i)) && !retry.is_empty();
                if only_rescues && attempts < 1000 {
                    // A rescued document goes again at once; nothing to wait for.
                    groups.push_front(retry);
                    continue;
                }
                Stats::add(&st.es_items_retried, retry.len() as u64);
            }
            Reply::Items(items) => {
                fail_whole = Some(format!(
                    "{} results for {} documents",
                    items.len(),
                    group.len()
                ));
                retry = group;
            }
            Reply::Status(413, _) if group.len() > 1 => {
                let (a, b) = group.split_at(group.len() / 2);
                groups.push_front(b.to_vec());
                groups.push_front(a.to_vec());
                continue;
            }
            Reply::Status(413, body) => {
                if dead_letter(
                    shared,
                    &mut batch,
                    group[0],
                    rescued.get(&group[0]),
                    413,
                    "request_entity_too_large",
                    &body,
                ) {
                    settled.dead_lettered += 1;
                } else {
                    retry = group;
                }
            }
            Reply::Status(status @ (401 | 403), body) => {
                if let Some(held_back) = log_limit::allow("es.credentials") {
                    tracing::error!(status, body = %body, held_back, "Elasticsearch refuses logferry's credentials; retrying");
                }
                retry = group;
            }
            Reply::Status(status @ (429 | 500..=599), body) => {
                fail_whole = Some(format!("HTTP {status}: {body}"));
                retry = group;
            }
            Reply::Status(status, body) => {
                // The request itself was refused (a 4xx a retry cannot change).
                if let Some(held_back) = log_limit::allow("es.request_refused") {
                    tracing::error!(status, body = %body, held_back, "Elasticsearch refused a bulk request; its documents go to the dead-letter file");
                }
                for &i in &group {
                    if dead_letter(
                        shared,
                        &mut batch,
                        i,
                        rescued.get(&i),
                        status,
                        "request_refused",
                        &body,
                    ) {
                        settled.dead_lettered += 1;
                    } else {
                        retry.push(i);
                    }
                }
            }
            Reply::Unreachable(e) => {
                unreachable += 1;
                if unreachable < cfg.endpoints.len() {
                    Stats::add(&st.es_request_failures, 1);
                    groups.push_front(group);
                    continue;
                }
                fail_whole = Some(e);
                retry = group;
            }
        }
        unreachable = 0;
        if retry.is_empty() {
            continue;
        }
        if cfg.max_retries > 0 && attempts >= cfg.max_retries {
            tracing::error!(
                documents = retry.len(),
                attempts,
                "giving up on documents after max_retries; they go to the dead-letter file"
            );
            for &i in &retry {
                if dead_letter(
                    shared,
                    &mut batch,
                    i,
                    rescued.get(&i),
                    0,
                    "max_retries_exceeded",
                    fail_whole.as_deref().unwrap_or(""),
                ) {
                    settled.dead_lettered += 1;
                }
            }
            continue;
        }
        let wait = backoff.next();
        if let Some(why) = &fail_whole {
            Stats::add(&st.es_request_failures, 1);
            if backoff.attempt.is_power_of_two() {
                tracing::warn!(error = %why, attempt = backoff.attempt, retry_in = ?wait, "bulk request failed; retrying");
            }
        }
        tokio::time::sleep(wait).await;
        groups.push_front(retry);
    }
    settled
}

fn dead_letter(
    shared: &Shared,
    batch: &mut Sealed,
    i: usize,
    rescued: Option<&Vec<u8>>,
    status: u16,
    kind: &str,
    reason: &str,
) -> bool {
    let (action, encoded) = batch.action_and_doc(i);
    let doc = rescued.map_or(encoded, |d| &d[..]);
    let mut dl = shared.dead_letter.lock().unwrap_or_else(|e| e.into_inner());
    let written = dl.write(action, doc, status, kind, reason);
    shared
        .stats
        .dead_letter_evicted_bytes
        .store(dl.evicted_bytes, std::sync::atomic::Ordering::Relaxed);
    match written {
        Ok(()) => {
            // The reason can quote the document: it stays in the dead-letter file.
            if let Some(held_back) = log_limit::allow("es.dead_letter") {
                tracing::warn!(status, error = kind, held_back, dir = %dl.dir().display(), "document refused by Elasticsearch; kept in the dead-letter file");
            }
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot write the dead-letter file; the document will be sent again");
            false
        }
    }
}
