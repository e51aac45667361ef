//! The Elasticsearch sink: events are encoded straight into bulk bodies, sent gzip-compressed
//! with `create` and deterministic ids, and each item's result decides its fate: delivered,
//! duplicate (409, also delivered), retried (429/5xx), rescued once, or dead-lettered. Each
//! item is acknowledged as soon as it is settled; checkpoints move over contiguous runs
//! only, so they never pass a line that is not in Elasticsearch (or the dead-letter file).
//! The flow, its pace and its retries are `shipper`'s.

pub mod backoff;
pub mod batch;
pub mod client;
pub mod concurrency;
pub mod dead_letter;
pub mod lookup;
mod replay;
pub mod rescue;
pub mod response;
pub mod retention;
pub mod retry;
pub mod shipper;
pub mod spool;
pub mod target;

use self::client::BulkClient;
use self::dead_letter::DeadLetter;
use self::retry::Acked;
use self::shipper::Shipper;
use self::target::{Router, Targets};
use crate::checkpoint::CheckpointMsg;
use crate::config::{ElasticsearchConfig, RetentionConfig};
use crate::encode::DocumentEncoder;
use crate::event::LogEvent;
use crate::stats::Stats;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

struct Shared {
    client: BulkClient,
    cfg: ElasticsearchConfig,
    retention: RetentionConfig,
    router: Router,
    /// The document keys structured messages are kept under (`json`, `logfmt`).
    kept: Vec<String>,
    stats: Arc<Stats>,
    dead_letter: Mutex<DeadLetter>,
}

pub struct ElasticsearchSink {
    health: Arc<crate::health::Health>,
    shared: Arc<Shared>,
    router: Router,
    encoder: DocumentEncoder,
    acks: mpsc::UnboundedSender<CheckpointMsg>,
}

impl ElasticsearchSink {
    /// Ships to `config.output.elasticsearch`, routing by `config.retention`.
    pub fn new(
        health: Arc<crate::health::Health>,
        config: &crate::config::Config,
        encoder: DocumentEncoder,
        dead_letter_dir: &std::path::Path,
        acks: mpsc::UnboundedSender<CheckpointMsg>,
        stats: Arc<Stats>,
    ) -> Result<Self, client::ClientError> {
        let (cfg, retention) = (&config.output.elasticsearch, &config.retention);
        Ok(ElasticsearchSink {
            health,
            shared: Arc::new(Shared {
                client: BulkClient::new(cfg)?,
                cfg: cfg.clone(),
                retention: retention.clone(),
                router: Router::new(cfg, retention),
                kept: config.source.kept_objects(),
                stats: stats.clone(),
                dead_letter: Mutex::new(DeadLetter::new(
                    dead_letter_dir,
                    cfg.dead_letter_max_bytes,
                )),
            }),
            router: Router::new(cfg, retention),
            encoder,
            acks,
        })
    }

    /// Ships until the channel closes and everything in flight is settled.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Vec<LogEvent>>) {
        if self.shared.cfg.setup {
            crate::setup::ensure(
                self.shared.client.transport(),
                &self.shared.cfg,
                &self.shared.retention,
                &self.shared.kept,
            )
            .await;
        }
        self.health.set_ready(true);
        let mut targets = Targets::new(self.router.clone()).counting(self.shared.stats.clone());
        let mut shipper = Shipper::new(self.shared.clone());
        let mut open = true;
        loop {
            let wake = shipper.dispatch(Instant::now(), !open);
            if !open && shipper.is_idle() {
                break;
            }
            tokio::select! {
                ev = shipper.next(), if shipper.busy() => {
                    let acked = shipper.settle(ev, Instant::now());
                    self.acknowledge(acked);
                }
                msg = rx.recv(), if open && shipper.accepts_input() => match msg {
                    Some(events) => {
                        for e in &events {
                            let t = targets.get(e);
                            let replay = e.is_replay() && t.replays_need_lookup();
                            shipper.push_event(e, &t, &mut self.encoder, replay);
                        }
                    }
                    None => open = false,
                },
                _ = shipper::sleep_until(wake), if wake.is_some() => {}
                // Nothing to wait for cannot happen while anything is held; look again.
                else => tokio::time::sleep(Duration::from_millis(50)).await,
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
        // What the last run left in the buffer may have been sent (a request unanswered
        // when it stopped): looked up before it is sent. Counted in record bytes, so a
        // little more than that is looked up, never less. Lines this run read again from
        // before its checkpoint come tagged by the spool.
        let mut replay_left = reader.available().0;
        if shared.cfg.setup {
            // A shutdown during an outage must not wait for the setup: the spool has
            // already made everything safe.
            let closed = async {
                while !reader.available().1 {
                    reader.appended().await;
                }
            };
            tokio::select! {
                _ = crate::setup::ensure(shared.client.transport(), &shared.cfg, &shared.retention, &shared.kept) => {}
                _ = closed, if !drain => {
                    tracing::info!("stopping before Elasticsearch answered; the documents stay in the disk buffer");
                    return;
                }
            }
        }
        health.set_ready(true);
        let mut shipper = Shipper::new(shared.clone());
        // Records not settled yet, by the ticket they were read under.
        let mut unsettled: HashMap<u64, usize> = HashMap::new();
        loop {
            let (available, closed) = reader.available();
            if closed && !drain {
                shipper.abort();
                while shipper.busy() {
                    let ev = shipper.next().await;
                    let acked = shipper.settle(ev, Instant::now());
                    free_records(&mut reader, &mut unsettled, &acked);
                }
                if available > 0 || !shipper.is_idle() {
                    tracing::info!(
                        bytes = available,
                        "stopping; undelivered documents stay in the disk buffer"
                    );
                }
                break;
            }
            if available > 0 && shipper.accepts_input() {
                let (bytes, docs) = shipper.batch_room();
                let ticket = reader.next_ticket();
                let mut read = 0usize;
                let result = reader.read(bytes.max(1), docs, |record| {
                    let (item, replayed) = spool::untag(record);
                    shipper.push_record(item, ticket, replayed || replay_left > 0);
                    replay_left = replay_left.saturating_sub(record.len() as u64);
                    read += 1;
                });
                match result {
                    Ok(Some(_)) => {
                        unsettled.insert(ticket, read);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the disk buffer; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            let (available, closed) = reader.available();
            let wake = shipper.dispatch(Instant::now(), closed && available == 0);
            if available == 0 && closed && shipper.is_idle() {
                break;
            }
            if available > 0 && shipper.accepts_input() {
                // More to read: answers are taken in turn, without waiting.
                while let Some(ev) = shipper.ready_event() {
                    let acked = shipper.settle(ev, Instant::now());
                    free_records(&mut reader, &mut unsettled, &acked);
                }
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                ev = shipper.next(), if shipper.busy() => {
                    let acked = shipper.settle(ev, Instant::now());
                    free_records(&mut reader, &mut unsettled, &acked);
                }
                _ = reader.appended(), if shipper.accepts_input() => {}
                _ = shipper::sleep_until(wake), if wake.is_some() => {}
                else => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Acknowledges delivered events to the checkpointer.
    fn acknowledge(&self, acked: Acked) {
        if !acked.events.is_empty() {
            let _ = self.acks.send(CheckpointMsg::Acked(acked.events.finish()));
        }
    }
}

/// Frees the disk buffer's records once every one read under a ticket is settled.
fn free_records(
    reader: &mut crate::buffer::QueueReader,
    unsettled: &mut HashMap<u64, usize>,
    acked: &Acked,
) {
    for &(t, settled) in &acked.records {
        let Some(n) = unsettled.get_mut(&t) else {
            continue;
        };
        *n -= settled;
        if *n == 0 {
            unsettled.remove(&t);
            if let Err(e) = reader.ack(crate::buffer::Ticket::from_id(t)) {
                tracing::error!(error = %e, "cannot free delivered records in the disk buffer");
            }
        }
    }
}
