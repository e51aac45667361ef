//! How hard to push the cluster: requests in flight and documents per second, adapted to
//! what it answers (AIMD, as TCP and Vector's adaptive request concurrency do). Pure logic:
//! time comes in as arguments, so it is tested against simulated clusters.
//!
//! - A response whose rejected share (429 items) is clearly above the share that does not
//!   follow our pace cuts the limits multiplicatively: requests in flight are halved and
//!   the send rate is set to what the cluster took, a little under. One cut per congestion
//!   event: responses to requests sent before the cut do not cut again.
//! - The first response to a request sent after a cut judges it: if the rejected share did
//!   not fall, the rejections do not follow our pace (a hot shard, random refusals), the
//!   cut is undone and that share becomes the baseline, which fades over time.
//! - Clean responses raise the rate by a fixed step and the requests in flight by one per
//!   window of responses, up to `max_in_flight`. When the agent sends well under its rate
//!   for a while, the rate cap is lifted: a healthy cluster costs nothing.
//! - A whole request refused with 429/5xx, timed out or unanswered halves the requests in
//!   flight (the wait before the next attempt is `Backoff`'s).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Lowest send rate, in documents per second.
const MIN_RATE: f64 = 20.0;
/// A paced request carries about this much of a second's rate.
const REQUEST_SPAN: f64 = 0.25;
/// Pacing lets this much of a second's rate go at once.
const BURST_SPAN: f64 = 0.5;
/// Rejected share above the baseline that counts as congestion, before the allowance for
/// a small sample.
const MARGIN: f64 = 0.05;
/// The baseline share halves over this time.
const BASELINE_HALF_LIFE: Duration = Duration::from_secs(30);
/// Sending under half the rate for this long lifts the rate cap.
const UNUSED_RATE_LIFT: Duration = Duration::from_secs(10);
/// Window over which the send rate is measured.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// A cut goes this far under what the cluster took, so that its queue drains.
const CUT_MARGIN: f64 = 0.97;
/// Items answered after a cut before it is judged: a small request says little.
const JUDGE_SAMPLE: usize = 200;

/// A cut whose effect is not judged yet, and the items answered since.
#[derive(Debug, Clone, Copy)]
struct Cut {
    at: Instant,
    share: f64,
    rate_before: Option<f64>,
    limit_before: usize,
    sent: usize,
    rejected: usize,
}

#[derive(Debug)]
pub struct Controller {
    adaptive: bool,
    max_limit: usize,
    max_docs: usize,
    limit: usize,
    /// Clean responses since the limit last changed.
    clean: usize,
    /// The limit was reached since it last changed (growing an unused limit means nothing).
    saturated: bool,
    rate: Option<f64>,
    /// Additive increase of the rate per clean response, fixed at each cut.
    step: f64,
    tokens: f64,
    tokens_at: Option<Instant>,
    last_cut: Option<Instant>,
    judging: Option<Cut>,
    baseline: f64,
    baseline_at: Option<Instant>,
    /// Documents dispatched, and documents the cluster took, lately.
    sent: Window,
    taken: Window,
    /// Since when the agent has sent under half its rate.
    unused_since: Option<Instant>,
    /// Rejected share of recent responses, smoothed (for metrics).
    share: f64,
}

impl Controller {
    /// `max_docs`: documents per request when nothing limits them. Not `adaptive`: the
    /// requests in flight stay at `max_in_flight` and nothing is paced.
    pub fn new(max_in_flight: usize, max_docs: usize, adaptive: bool) -> Self {
        let max_limit = max_in_flight.max(1);
        Controller {
            adaptive,
            max_limit,
            max_docs: max_docs.max(1),
            limit: max_limit,
            clean: 0,
            saturated: false,
            rate: None,
            step: 0.0,
            tokens: 0.0,
            tokens_at: None,
            last_cut: None,
            judging: None,
            baseline: 0.0,
            baseline_at: None,
            sent: Window::default(),
            taken: Window::default(),
            unused_since: None,
            share: 0.0,
        }
    }

    /// Requests allowed in flight.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The send rate cap in documents per second; `None` when unpaced.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// The smoothed rejected share of recent responses.
    pub fn rejected_share(&self) -> f64 {
        self.share
    }

    /// The share of items rejected regardless of pace, as learnt.
    #[cfg(test)]
    pub fn baseline(&self) -> f64 {
        self.baseline
    }

    /// Documents one request may carry now.
    pub fn max_docs(&self) -> usize {
        match self.rate {
            Some(r) => ((r * REQUEST_SPAN) as usize).clamp(1, self.max_docs),
            None => self.max_docs,
        }
    }

    fn burst(&self, rate: f64) -> f64 {
        (rate * BURST_SPAN).max(self.max_docs() as f64)
    }

    fn refill(&mut self, now: Instant) {
        let Some(rate) = self.rate else { return };
        let since = self
            .tokens_at
            .map_or(Duration::ZERO, |t| now.duration_since(t));
        self.tokens = (self.tokens + rate * since.as_secs_f64()).min(self.burst(rate));
        self.tokens_at = Some(now);
    }

    /// When a request of `docs` documents may go, by the pace (now when unpaced).
    pub fn ready_at(&mut self, now: Instant, docs: usize) -> Instant {
        self.refill(now);
        match self.rate {
            // A request larger than the burst goes once the bucket is full.
            Some(rate) => {
                let need = (docs as f64).min(self.burst(rate));
                if self.tokens >= need {
                    now
                } else {
                    now + Duration::from_secs_f64((need - self.tokens) / rate)
                }
            }
            None => now,
        }
    }

    /// A request of `docs` documents was sent; `in_flight` counts it.
    pub fn on_dispatch(&mut self, now: Instant, docs: usize, in_flight: usize) {
        self.refill(now);
        if self.rate.is_some() {
            self.tokens -= docs as f64;
        }
        if in_flight >= self.limit {
            self.saturated = true;
        }
        self.sent.add(now, docs);
        if let Some(rate) = self.rate {
            if self.sent.rate(now) < rate / 2.0 {
                let since = *self.unused_since.get_or_insert(now);
                if now.duration_since(since) >= UNUSED_RATE_LIFT {
                    self.rate = None;
                    self.unused_since = None;
                }
            } else {
                self.unused_since = None;
            }
        }
    }

    fn fade_baseline(&mut self, now: Instant) {
        if let Some(at) = self.baseline_at {
            let halves = now.duration_since(at).as_secs_f64() / BASELINE_HALF_LIFE.as_secs_f64();
            self.baseline *= 0.5f64.powf(halves);
        }
        self.baseline_at = Some(now);
    }

    /// A bulk response with per-item results: `sent` items of which `rejected` were
    /// refused for load (429, `es_rejected_execution_exception`), for a request sent at
    /// `sent_at`.
    pub fn on_items(&mut self, now: Instant, sent_at: Instant, sent: usize, rejected: usize) {
        if sent == 0 {
            return;
        }
        let share = rejected as f64 / sent as f64;
        self.share = 0.7 * self.share + 0.3 * share;
        self.taken.add(now, sent - rejected);
        if !self.adaptive {
            return;
        }
        self.fade_baseline(now);
        // A small sample says less: allow two standard deviations of the baseline's noise.
        let p = self.baseline.clamp(0.01, 0.99);
        let threshold = self.baseline + MARGIN + 2.0 * (p * (1.0 - p) / sent as f64).sqrt();
        if let Some(cut) = &mut self.judging {
            if sent_at < cut.at {
                return; // sent before the cut: the same congestion
            }
            cut.sent += sent;
            cut.rejected += rejected;
            if cut.sent < JUDGE_SAMPLE {
                return;
            }
            let cut = *cut;
            self.judging = None;
            let after = cut.rejected as f64 / cut.sent as f64;
            if after > cut.share * 0.6 && after > self.baseline + MARGIN {
                // Sending less did not lower the share: it does not follow our pace.
                self.baseline = self.baseline.max(after);
                self.rate = cut.rate_before;
                self.limit = cut.limit_before;
                self.clean = 0;
                return;
            }
        }
        if share > threshold {
            if self.last_cut.is_some_and(|c| sent_at < c) {
                return; // the same congestion, already answered
            }
            // What the cluster took lately bounds the cut: a burst sent in one go is not a
            // pace it could take (Westwood's estimate).
            let current = match self.rate {
                Some(r) => r,
                None => self.sent.rate(now).max(sent as f64),
            };
            let excess = (share - self.baseline).max(0.0);
            let factor = ((1.0 - excess) * CUT_MARGIN).clamp(0.5, CUT_MARGIN);
            let taken = self.taken.rate(now) * CUT_MARGIN;
            let rate = (current * factor).min(taken).max(MIN_RATE);
            self.judging = Some(Cut {
                at: now,
                share,
                rate_before: self.rate,
                limit_before: self.limit,
                sent: 0,
                rejected: 0,
            });
            self.rate = Some(rate);
            self.step = (rate * 0.01).max(1.0);
            // The bucket starts empty: the next request waits its share of the new pace.
            self.tokens = self.tokens.min(0.0);
            self.tokens_at = Some(now);
            self.limit = (self.limit / 2).max(1);
            self.clean = 0;
            self.saturated = false;
            self.last_cut = Some(now);
            self.unused_since = None;
        } else {
            if let Some(r) = self.rate {
                self.rate = Some(r + self.step);
            }
            self.grow(sent_at);
        }
    }

    fn grow(&mut self, sent_at: Instant) {
        if self.last_cut.is_some_and(|c| sent_at < c) {
            return;
        }
        self.clean += 1;
        if self.clean >= self.limit && self.limit < self.max_limit && self.saturated {
            self.limit += 1;
            self.clean = 0;
            self.saturated = false;
        }
    }

    /// A whole request was throttled, failed with 5xx, timed out or found no endpoint.
    pub fn on_throttled(&mut self, now: Instant, sent_at: Instant) {
        self.share = 0.7 * self.share + 0.3;
        if !self.adaptive || self.last_cut.is_some_and(|c| sent_at < c) {
            return;
        }
        self.limit = (self.limit / 2).max(1);
        self.clean = 0;
        self.saturated = false;
        self.last_cut = Some(now);
    }

    /// A whole request went through (a response other than a load refusal, without items
    /// to judge, such as a 413).
    pub fn on_success(&mut self, sent_at: Instant) {
        if self.adaptive {
            self.grow(sent_at);
        }
    }
}

/// Documents counted over the last `RATE_WINDOW`.
#[derive(Debug, Default)]
struct Window {
    entries: VecDeque<(Instant, usize)>,
    sum: usize,
}

impl Window {
    fn add(&mut self, now: Instant, docs: usize) {
        self.entries.push_back((now, docs));
        self.sum += docs;
        self.trim(now);
    }

    fn trim(&mut self, now: Instant) {
        while let Some(&(t, n)) = self.entries.front() {
            if now.duration_since(t) <= RATE_WINDOW {
                break;
            }
            self.entries.pop_front();
            self.sum -= n;
        }
    }

    /// Documents per second over the window.
    fn rate(&mut self, now: Instant) -> f64 {
        self.trim(now);
        self.sum as f64 / RATE_WINDOW.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster in virtual time: a token bucket of `capacity` documents a second (burst
    /// one second), `random` of the items rejected whatever the pace, `latency` per request,
    /// and at most `slots` requests at once (more are refused whole with 429).
    struct Cluster {
        capacity: f64,
        random: f64,
        /// Share of requests refused whole (429/503) whatever the pace.
        whole: f64,
        latency: Duration,
        slots: usize,
    }

    /// A healthy cluster: no limit, no refusal, 5 ms answers.
    impl Default for Cluster {
        fn default() -> Self {
            Cluster {
                capacity: 1e9,
                random: 0.0,
                whole: 0.0,
                latency: Duration::from_millis(5),
                slots: 100,
            }
        }
    }

    struct Outcome {
        delivered: u64,
        sent: u64,
        seconds: f64,
        final_limit: usize,
        final_rate: Option<f64>,
    }

    /// The agent with an endless backlog (or `offered` documents a second) against the
    /// cluster for `seconds`, a tick of 1 ms.
    fn simulate(cluster: &Cluster, offered: Option<f64>, seconds: u64) -> Outcome {
        let t0 = Instant::now();
        let mut c = Controller::new(4, 20_000, true);
        let mut rng = 0x9e3779b97f4a7c15u64;
        let mut random = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % 1_000_000) as f64 / 1_000_000.0
        };
        let mut tokens = cluster.capacity;
        let mut in_flight: Vec<(Instant, Instant, usize)> = vec![];
        let (mut delivered, mut sent, mut backlog) = (0u64, 0u64, 0f64);
        let (mut retry, mut last_flush) = (0usize, t0);
        let end = t0 + Duration::from_secs(seconds);
        let mut now = t0;
        while now < end {
            now += Duration::from_millis(1);
            tokens = (tokens + cluster.capacity / 1000.0).min(cluster.capacity);
            backlog += offered.map_or(1e9, |r| r / 1000.0);
            let mut i = 0;
            while i < in_flight.len() {
                let (due, at, docs) = in_flight[i];
                if due > now {
                    i += 1;
                    continue;
                }
                in_flight.swap_remove(i);
                if random() < cluster.whole {
                    retry += docs;
                    c.on_throttled(now, at);
                    continue;
                }
                let mut rejected = 0;
                for _ in 0..docs {
                    if random() < cluster.random || tokens < 1.0 {
                        rejected += 1;
                    } else {
                        tokens -= 1.0;
                    }
                }
                delivered += (docs - rejected) as u64;
                retry += rejected;
                c.on_items(now, at, docs, rejected);
            }
            // Batches leave when full or after a flush interval of a second.
            let waiting = retry + backlog as usize;
            let want = waiting.min(c.max_docs());
            let full = want == c.max_docs() || now.duration_since(last_flush).as_secs() >= 1;
            if want > 0 && full && in_flight.len() < c.limit() && c.ready_at(now, want) <= now {
                if in_flight.len() >= cluster.slots {
                    c.on_throttled(now, now);
                    continue;
                }
                let from_retry = want.min(retry);
                retry -= from_retry;
                backlog -= (want - from_retry) as f64;
                sent += want as u64;
                in_flight.push((now + cluster.latency, now, want));
                c.on_dispatch(now, want, in_flight.len());
                last_flush = now;
            }
        }
        Outcome {
            delivered,
            sent,
            seconds: seconds as f64,
            final_limit: c.limit(),
            final_rate: c.rate(),
        }
    }

    #[test]
    fn a_capacity_limited_cluster_is_used_to_the_full_with_little_waste() {
        let cluster = Cluster {
            capacity: 4_000.0,
            ..Cluster::default()
        };
        // 6,000 documents a second offered to a cluster that takes 4,000.
        let o = simulate(&cluster, Some(6_000.0), 60);
        let rate = o.delivered as f64 / o.seconds;
        let waste = o.sent as f64 / o.delivered as f64;
        assert!(rate >= 0.95 * 4_000.0, "delivered {rate:.0}/s of 4000");
        assert!(waste <= 1.1, "{waste:.3} items sent per document indexed");
        assert!(o.final_rate.is_some_and(|r| r < 6_000.0));
        // An endless backlog: the first requests go at full size, then the pace holds.
        let o = simulate(&cluster, None, 60);
        let rate = o.delivered as f64 / o.seconds;
        assert!(rate >= 0.95 * 4_000.0, "delivered {rate:.0}/s of 4000");
    }

    #[test]
    fn random_rejections_do_not_slow_the_agent_down() {
        // 30% of items and 20% of requests refused whatever the pace: cutting would not
        // help, so the agent must keep offering what comes (5,000 a second) plus the
        // resends.
        let cluster = Cluster {
            random: 0.3,
            whole: 0.2,
            ..Cluster::default()
        };
        let o = simulate(&cluster, Some(5_000.0), 60);
        let rate = o.delivered as f64 / o.seconds;
        assert!(rate >= 0.97 * 5_000.0, "delivered {rate:.0}/s of 5000");
        let c = {
            let mut c = Controller::new(4, 20_000, true);
            let t = Instant::now();
            c.on_items(t, t, 1000, 300);
            let t1 = t + Duration::from_millis(10);
            c.on_items(t1 + Duration::from_millis(5), t1, 1000, 295);
            c
        };
        assert!(c.rate().is_none(), "the cut was undone");
        assert!((c.baseline() - 0.295).abs() < 0.01);
    }

    #[test]
    fn a_cluster_with_few_write_slots_brings_the_requests_in_flight_down() {
        let cluster = Cluster {
            latency: Duration::from_millis(200),
            slots: 2,
            ..Cluster::default()
        };
        let o = simulate(&cluster, None, 30);
        assert!(o.final_limit <= 3, "limit {}", o.final_limit);
        // Two slots of 20,000 documents every 200 ms.
        let rate = o.delivered as f64 / o.seconds;
        assert!(rate >= 100_000.0, "delivered {rate:.0}/s");
    }

    #[test]
    fn a_cut_rate_is_lifted_once_the_cluster_keeps_up_and_the_agent_sends_less() {
        let mut c = Controller::new(4, 20_000, true);
        let t0 = Instant::now();
        c.on_dispatch(t0, 5_000, 1);
        c.on_items(t0 + Duration::from_millis(5), t0, 5_000, 2_000);
        let cut = c.rate().expect("paced after congestion");
        assert!((2_500.0..3_000.0).contains(&cut), "{cut}");
        assert_eq!(c.limit(), 2);
        // The next request shows it helped.
        let t1 = t0 + Duration::from_millis(300);
        c.on_items(t1 + Duration::from_millis(5), t1, 500, 0);
        assert!(c.rate().unwrap() > cut, "additive increase");
        // Then the agent sends little for more than ten seconds.
        for s in 0..12 {
            let t = t1 + Duration::from_secs(1 + s);
            c.on_dispatch(t, 10, 1);
            c.on_items(t + Duration::from_millis(5), t, 10, 0);
        }
        assert!(c.rate().is_none(), "the cap is lifted");
    }

    #[test]
    fn whole_request_refusals_halve_the_limit_once_per_event_and_clean_windows_grow_it() {
        let mut c = Controller::new(8, 1_000, true);
        let t0 = Instant::now();
        for _ in 0..8 {
            c.on_dispatch(t0, 100, 8);
        }
        let t1 = t0 + Duration::from_millis(10);
        c.on_throttled(t1, t0);
        c.on_throttled(t1, t0); // sent before the cut: the same event
        assert_eq!(c.limit(), 4);
        let t2 = t1 + Duration::from_millis(10);
        for i in 0..40 {
            let t = t2 + Duration::from_millis(i);
            c.on_dispatch(t, 100, c.limit());
            c.on_items(t, t, 100, 0);
        }
        assert_eq!(c.limit(), 8, "grown back to max_in_flight");
        assert_eq!(c.rate(), None, "whole refusals leave the pace alone");
    }

    #[test]
    fn pacing_spaces_requests_by_the_rate() {
        let mut c = Controller::new(4, 20_000, true);
        let t0 = Instant::now();
        c.on_dispatch(t0, 4_000, 1);
        c.on_items(t0, t0, 4_000, 2_000);
        let rate = c.rate().unwrap();
        let docs = c.max_docs();
        assert_eq!(docs, (rate * REQUEST_SPAN) as usize);
        // The bucket starts empty after a cut: the first request waits its share.
        let at = c.ready_at(t0, docs);
        let wait = at.duration_since(t0).as_secs_f64();
        assert!((wait - REQUEST_SPAN).abs() < 0.01, "{wait}");
        let mut fixed = Controller::new(4, 20_000, false);
        fixed.on_items(t0, t0, 4_000, 4_000);
        assert_eq!(fixed.ready_at(t0, 20_000), t0);
        assert_eq!(fixed.limit(), 4, "not adaptive: fixed");
    }
}
