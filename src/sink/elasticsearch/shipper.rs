//! The flow toward the cluster. New documents are encoded into the open batch; each answer
//! is settled item by item (`retry`), so what landed is acknowledged at once and what was
//! refused for load waits in the retry queue, to be merged into the next requests next to
//! new documents. No request waits for another's items. How many requests go at once and
//! how fast is the `Controller`'s; the wait after a failure is the `Backoff`'s, and while
//! the cluster looks down a cheap probe reopens the way as soon as it answers.
//!
//! Memory is bounded: requests in flight, sealed requests waiting, the retry queue and the
//! open batch together stay under a byte budget, past which no new input is taken and the
//! lines wait in their files (or in the disk buffer).

use super::backoff::Backoff;
use super::batch::{Batch, ItemMeta, Origin, Sealed};
use super::concurrency::Controller;
use super::retry::{self, Acked, Completion, Pending, Settled, Verdict};
use super::target::Target;
use super::Shared;
use crate::encode::DocumentEncoder;
use crate::event::LogEvent;
use crate::stats::Stats;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinSet;

/// Smallest request size a 413 can bring the byte cap down to.
const MIN_REQUEST_BYTES: usize = 1024;

/// A sealed request waiting to be sent.
struct Queued {
    sealed: Sealed,
    ready_at: Instant,
    /// Sent before, as a whole (counted in the retry queue).
    resend: bool,
}

/// What the shipper was waiting for.
pub enum Event {
    Done(Box<Completion>),
    /// The outage probe: whether the cluster answered.
    Probe(bool),
    /// A request's task ended without an answer (aborted at shutdown).
    Lost,
}

impl Event {
    fn done(r: Result<Completion, tokio::task::JoinError>) -> Event {
        r.map_or(Event::Lost, |c| Event::Done(Box::new(c)))
    }

    fn probed(r: Result<bool, tokio::task::JoinError>) -> Event {
        Event::Probe(r.unwrap_or(false))
    }
}

pub struct Shipper {
    shared: Arc<Shared>,
    level: u32,
    batch: Batch,
    ready: VecDeque<Queued>,
    ready_bytes: usize,
    loose: VecDeque<Pending>,
    loose_bytes: usize,
    /// Whole requests sent before and waiting in `ready`: documents and bytes.
    resend_docs: usize,
    resend_bytes: usize,
    in_flight: JoinSet<Completion>,
    in_flight_bytes: usize,
    probes: JoinSet<bool>,
    controller: Controller,
    backoff: Backoff,
    /// No request goes before this (after a failure).
    gate: Option<Instant>,
    /// The last failure looked like the cluster being away: probe it.
    down: bool,
    next_probe: Instant,
    /// `batch_max_bytes`, lowered by 413s.
    max_bytes: usize,
    budget: usize,
    /// A request is ready and every slot is taken (counted once per wait).
    blocked: bool,
}

impl Shipper {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        let cfg = &shared.cfg;
        let max_bytes = cfg.batch_max_bytes as usize;
        Shipper {
            level: cfg.compression_level,
            batch: Batch::new(cfg.compression_level),
            ready: VecDeque::new(),
            ready_bytes: 0,
            loose: VecDeque::new(),
            loose_bytes: 0,
            resend_docs: 0,
            resend_bytes: 0,
            in_flight: JoinSet::new(),
            in_flight_bytes: 0,
            probes: JoinSet::new(),
            controller: Controller::new(
                cfg.max_in_flight,
                cfg.batch_max_events,
                cfg.adaptive_concurrency,
            ),
            backoff: Backoff::new(cfg.retry_initial_backoff, cfg.retry_max_backoff),
            gate: None,
            down: false,
            next_probe: Instant::now(),
            max_bytes,
            budget: cfg.max_in_flight.max(1) * max_bytes + max_bytes,
            blocked: false,
            shared,
        }
    }

    /// Documents the open batch may still take.
    fn room(&self) -> usize {
        let docs = self
            .controller
            .max_docs()
            .min(self.shared.cfg.batch_max_events);
        if self.batch.raw_len() >= self.max_bytes {
            0
        } else {
            docs.saturating_sub(self.batch.len())
        }
    }

    /// Bytes and documents the open batch may still take (for the disk buffer's reads).
    pub fn batch_room(&self) -> (usize, usize) {
        (
            self.max_bytes.saturating_sub(self.batch.raw_len()),
            self.room(),
        )
    }

    fn outstanding(&self) -> usize {
        self.in_flight_bytes + self.ready_bytes + self.loose_bytes + self.batch.raw_len()
    }

    /// Whether new documents may come in now.
    pub fn accepts_input(&self) -> bool {
        self.room() > 0 && self.outstanding() < self.budget
    }

    /// Nothing held: no batch, nothing queued, nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.batch.is_empty()
            && self.ready.is_empty()
            && self.loose.is_empty()
            && self.in_flight.is_empty()
    }

    /// Whether `next` has something to wait for.
    pub fn busy(&self) -> bool {
        !self.in_flight.is_empty() || !self.probes.is_empty()
    }

    /// `replayed`: the event may have been sent by the last run; its request is looked up
    /// before it is sent.
    pub fn push_event(
        &mut self,
        e: &LogEvent,
        target: &Target,
        encoder: &mut DocumentEncoder,
        replayed: bool,
    ) {
        self.batch.ambiguous |= replayed;
        self.batch.push(e, target, encoder);
        if self.room() == 0 {
            self.seal(Instant::now());
        }
    }

    /// A record of the disk buffer, read under `ticket`.
    /// `replayed`: the record may have been sent by the last run; its request is looked up
    /// before it is sent.
    pub fn push_record(&mut self, item: &[u8], ticket: u64, replayed: bool) {
        self.batch.ambiguous |= replayed;
        self.batch
            .push_encoded(item, ItemMeta::new(Origin::Record(ticket)));
        if self.room() == 0 {
            self.seal(Instant::now());
        }
    }

    fn seal(&mut self, now: Instant) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.batch, Batch::new(self.level));
        let sealed = batch.seal();
        self.shared
            .stats
            .es_batch_documents
            .observe(sealed.len() as f64);
        self.ready_bytes += sealed.raw_len;
        self.ready.push_back(Queued {
            sealed,
            ready_at: now,
            resend: false,
        });
    }

    /// Sends whatever may go now: due resends are merged into the open batch, a batch that
    /// is full or due is sealed, and sealed requests go while the backoff, the requests in
    /// flight and the pace allow. `closing`: no more input, send without waiting to fill.
    /// Returns when to look again (besides answers and input).
    pub fn dispatch(&mut self, now: Instant, closing: bool) -> Option<Instant> {
        // A resend has waited its turn already: the batch it joins goes at once.
        let mut merged = false;
        while let Some(p) = self.loose.front().filter(|p| p.ready_at <= Some(now)) {
            // Its size is known: it starts a new request rather than overfill this one.
            let overfills =
                !self.batch.is_empty() && self.batch.raw_len() + p.lines.len() > self.max_bytes;
            if self.room() == 0 || overfills {
                self.seal(now);
            }
            let Some(p) = self.loose.pop_front() else {
                break;
            };
            self.loose_bytes -= p.lines.len();
            self.batch.push_encoded(&p.lines, p.meta);
            merged = true;
        }
        let flush_at = self
            .batch
            .started
            .map(|s| s + self.shared.cfg.flush_interval);
        if !self.batch.is_empty()
            && (closing || merged || self.room() == 0 || flush_at <= Some(now))
        {
            self.seal(now);
        }
        let mut wake: Option<Instant> = None;
        let mut soonest = |t: Instant| wake = Some(wake.map_or(t, |w: Instant| w.min(t)));
        if self.gate.is_some_and(|g| g <= now) {
            self.gate = None;
        }
        while let Some(q) = self.ready.front() {
            if let Some(g) = self.gate {
                soonest(g);
                break;
            }
            if q.ready_at > now {
                soonest(q.ready_at);
                break;
            }
            if self.in_flight.len() >= self.controller.limit() {
                if !self.blocked {
                    self.blocked = true;
                    Stats::add(&self.shared.stats.es_in_flight_full, 1);
                }
                break;
            }
            let at = self.controller.ready_at(now, q.sealed.len());
            if at > now {
                soonest(at);
                break;
            }
            let Some(q) = self.ready.pop_front() else {
                break;
            };
            self.blocked = false;
            let raw = q.sealed.raw_len;
            self.ready_bytes -= raw;
            if q.resend {
                self.resend_docs -= q.sealed.len();
                self.resend_bytes -= raw;
            }
            self.in_flight_bytes += raw;
            self.controller
                .on_dispatch(now, q.sealed.len(), self.in_flight.len() + 1);
            let shared = self.shared.clone();
            self.in_flight
                .spawn(async move { retry::send_and_settle(&shared, q.sealed).await });
        }
        if !self.batch.is_empty() {
            if let Some(f) = flush_at {
                soonest(f);
            }
        }
        if let Some(t) = self.loose.front().and_then(|p| p.ready_at) {
            soonest(t);
        }
        if self.down && self.gate.is_some_and(|g| g > now) {
            if self.probes.is_empty() && now >= self.next_probe {
                self.next_probe = now + self.shared.cfg.outage_probe_interval;
                let shared = self.shared.clone();
                self.probes
                    .spawn(async move { shared.client.probe().await });
            }
            soonest(self.next_probe);
        }
        self.publish();
        wake
    }

    /// The next answer (or probe result). Only while `busy`.
    pub async fn next(&mut self) -> Event {
        tokio::select! {
            Some(done) = self.in_flight.join_next(), if !self.in_flight.is_empty() => Event::done(done),
            Some(up) = self.probes.join_next(), if !self.probes.is_empty() => Event::probed(up),
        }
    }

    /// An answer that is already there, without waiting.
    pub fn ready_event(&mut self) -> Option<Event> {
        match self.in_flight.try_join_next() {
            Some(done) => Some(Event::done(done)),
            None => self.probes.try_join_next().map(Event::probed),
        }
    }

    /// Takes in an answer: the pace and backoff follow it, refused items join the retry
    /// queue. Returns the items to acknowledge.
    pub fn settle(&mut self, event: Event, now: Instant) -> Acked {
        let c = match event {
            Event::Done(c) => *c,
            Event::Probe(up) => {
                if up && self.down {
                    tracing::info!("Elasticsearch answers again; resuming at once");
                    self.reopen(now);
                }
                return Acked::default();
            }
            Event::Lost => return Acked::default(),
        };
        self.in_flight_bytes -= c.raw_len;
        record_settled(&self.shared.stats, c.settled);
        let retry_at = match c.verdict {
            Verdict::Items { rejected, got_in } => {
                self.controller.on_items(now, c.sent_at, c.docs, rejected);
                self.down = false;
                if got_in {
                    self.backoff.succeeded();
                    now + self.backoff.delay()
                } else {
                    self.close_gate(now)
                }
            }
            Verdict::Throttled { down } => {
                self.controller.on_throttled(now, c.sent_at);
                self.down = down;
                self.close_gate(now)
            }
            Verdict::Unauthorized => {
                self.down = false;
                self.close_gate(now)
            }
            Verdict::TooLarge => {
                self.down = false;
                if c.docs > 1 {
                    self.max_bytes = (c.raw_len.min(self.max_bytes) / 2).max(MIN_REQUEST_BYTES);
                    tracing::warn!(
                        bytes = c.raw_len,
                        now_at_most = self.max_bytes,
                        "Elasticsearch refused a request as too large (413); sending smaller ones"
                    );
                }
                self.controller.on_success(c.sent_at);
                now
            }
            Verdict::Refused => {
                self.down = false;
                now + self.backoff.delay()
            }
        };
        for mut p in c.loose {
            let at = *p.ready_at.get_or_insert(retry_at);
            self.loose_bytes += p.lines.len();
            // Mostly in order already; a resend that may go sooner goes first.
            if self.loose.back().is_some_and(|b| b.ready_at > Some(at)) {
                let i = self.loose.partition_point(|q| q.ready_at <= Some(at));
                self.loose.insert(i, p);
            } else {
                self.loose.push_back(p);
            }
        }
        if let Some(sealed) = c.again {
            self.ready_bytes += sealed.raw_len;
            self.resend_docs += sealed.len();
            self.resend_bytes += sealed.raw_len;
            // The oldest documents go first.
            self.ready.push_front(Queued {
                sealed,
                ready_at: retry_at,
                resend: true,
            });
        }
        self.publish();
        c.acked
    }

    /// Nothing got through: wait before the next request.
    fn close_gate(&mut self, now: Instant) -> Instant {
        let until = now + self.backoff.failed();
        self.gate = Some(self.gate.map_or(until, |g| g.max(until)));
        until
    }

    /// The cluster answers again: whatever waited for it goes now.
    fn reopen(&mut self, now: Instant) {
        self.gate = None;
        self.down = false;
        for q in &mut self.ready {
            q.ready_at = q.ready_at.min(now);
        }
        for p in &mut self.loose {
            p.ready_at = p.ready_at.map(|t| t.min(now));
        }
    }

    /// Stops what is in flight (shutdown without draining): its items are not
    /// acknowledged.
    pub fn abort(&mut self) {
        self.in_flight.abort_all();
        self.probes.abort_all();
    }

    fn publish(&self) {
        let st = &self.shared.stats;
        let set = |g: &std::sync::atomic::AtomicU64, v: usize| g.store(v as u64, Ordering::Relaxed);
        set(&st.es_in_flight_bytes, self.in_flight_bytes);
        set(
            &st.es_retry_queue_documents,
            self.loose.len() + self.resend_docs,
        );
        set(
            &st.es_retry_queue_bytes,
            self.loose_bytes + self.resend_bytes,
        );
        set(&st.es_concurrency_limit, self.controller.limit());
        set(
            &st.es_rate_limit,
            self.controller.rate().map_or(0, |r| r.round() as usize),
        );
        st.es_rejected_share.store(
            self.controller.rejected_share().to_bits(),
            Ordering::Relaxed,
        );
        st.es_backoff_seconds.store(
            self.gate
                .map_or(0.0, |g| {
                    g.saturating_duration_since(Instant::now()).as_secs_f64()
                })
                .to_bits(),
            Ordering::Relaxed,
        );
    }
}

pub fn record_settled(st: &Stats, s: Settled) {
    Stats::add(
        &st.events_delivered,
        s.delivered + s.duplicates + s.dead_lettered,
    );
    Stats::add(&st.es_duplicates, s.duplicates);
    Stats::add(&st.es_rescued, s.rescued);
    Stats::add(&st.es_dead_lettered, s.dead_lettered);
}

/// Waits until `wake`, or forever without one.
pub async fn sleep_until(wake: Option<Instant>) {
    crate::time::sleep_until(wake.map(tokio::time::Instant::from_std)).await
}
