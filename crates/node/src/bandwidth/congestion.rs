//! Per-peer congestion detection and in-flight window.
//!
//! A [`Controller`] watches one peer's traffic and says whether the path to
//! it is congested, why, and what to do about it. It is sans-IO: it has no
//! clock and sends nothing. The event loop feeds it
//! - [`Controller::on_sent`], [`Controller::on_acked`] (with the measured
//!   round-trip time) and [`Controller::on_failure`] (timeout, stream error)
//!   for every request to the peer,
//! - [`Controller::on_queue_delay`] with the scheduler's head-of-line wait
//!   ([`super::scheduler::Scheduler::oldest_wait`], zero when it is `None`)
//!   whenever it polls the scheduler,
//!
//! and reads [`Controller::window`] (requests allowed in flight),
//! [`Controller::state`] and [`Controller::actions`]. Reading takes `&self`
//! and is exact at any `now`: a signal that fades with time alone (failures
//! decaying, an old base RTT ageing out, a queue-delay report going stale)
//! needs no polling. [`Controller::next_check`] says when the state will
//! clear if no input comes.
//!
//! The peer is congested when any of these signals is on:
//! - **RTT growth** (delay-based, like LEDBAT): the smoothed RTT exceeds
//!   `base × rtt_growth_factor + rtt_growth_floor`, where the base RTT is
//!   the minimum over roughly the last `base_rtt_window` (so it can rise
//!   after a route change) and the floor keeps loopback jitter from counting;
//! - **queue delay**: our own head-of-line wait exceeds
//!   `queue_delay_threshold` (a report counts for `queue_delay_report_ttl`);
//! - **failures**: the decaying failure count reaches `failure_threshold`
//!   and failures make at least `failure_ratio_threshold` of the decaying
//!   outcomes (so a few timeouts on a busy, healthy peer do not count).
//!
//! It stays congested until every signal has been off for `clear_hold`
//! (hysteresis, so the actions do not flap).
//!
//! The window is AIMD: +1 per window's worth of acks while the network
//! signals (RTT growth, failures) are off; halved, down to `min_window`,
//! on each failure and when a network signal comes on, at most once per
//! smoothed RTT. Queue delay alone does not shrink it: that queue is ours,
//! and a smaller window would only lengthen it.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// Number of buckets of the windowed-minimum base RTT.
const BASE_RTT_BUCKETS: u32 = 6;
/// Buckets alive at once: a bucket lives for `BASE_RTT_BUCKETS + 1` bucket
/// lengths and buckets start at least one bucket length apart.
const MAX_BASE_RTT_BUCKETS: usize = BASE_RTT_BUCKETS as usize + 1;
/// RTT samples are clamped to this, which keeps the arithmetic in range.
const MAX_RTT_SAMPLE: Duration = Duration::from_secs(600);
/// Shortest time between two window decreases (when the smoothed RTT is
/// shorter or unknown).
const MIN_DECREASE_INTERVAL: Duration = Duration::from_millis(100);
/// Longest projection of when a signal ends (keeps `Instant` in range).
const MAX_PROJECTION: Duration = Duration::from_secs(365 * 24 * 3600);
/// Largest accepted `rtt_growth_factor`.
const MAX_RTT_GROWTH_FACTOR: f64 = 1000.0;
/// Decayed counts below this are taken as zero.
const NEGLIGIBLE_COUNT: f64 = 1e-9;

/// Configuration of a [`Controller`]. Out-of-range values are brought into
/// range by [`Controller::new`] (see each field).
#[derive(Debug, Clone, PartialEq)]
pub struct CongestionConfig {
    /// How far back the base RTT (minimum) looks; a sample counts for at
    /// least this long and at most a sixth longer. At least 6 ms.
    pub base_rtt_window: Duration,
    /// RTT growth signal: smoothed RTT above base × this (1.0 ..= 1000.0)…
    pub rtt_growth_factor: f64,
    /// … plus this.
    pub rtt_growth_floor: Duration,
    /// Queue delay signal: head-of-line wait above this.
    pub queue_delay_threshold: Duration,
    /// How long a queue-delay report counts without a newer one.
    pub queue_delay_report_ttl: Duration,
    /// Failure signal: decayed failure count at least this (≥ 0)…
    pub failure_threshold: f64,
    /// … and failures at least this fraction of decayed outcomes
    /// (0.0 ..= 1.0).
    pub failure_ratio_threshold: f64,
    /// Half-life of the decaying failure and ack counts (at least 1 ms).
    pub failure_half_life: Duration,
    /// How long every signal must stay off before the state is clear again.
    pub clear_hold: Duration,
    /// Window before any ack or failure (clamped to the bounds).
    pub initial_window: usize,
    /// Smallest window (at least 1).
    pub min_window: usize,
    /// Largest window (at least `min_window`).
    pub max_window: usize,
    /// Batching window while clear.
    pub clear_batch_window: Duration,
    /// Batching window while congested.
    pub congested_batch_window: Duration,
    /// Keepalive/ping interval multiplier while congested (at least 1).
    pub congested_keepalive_factor: u32,
}

impl Default for CongestionConfig {
    fn default() -> Self {
        Self {
            base_rtt_window: Duration::from_secs(60),
            rtt_growth_factor: 2.0,
            rtt_growth_floor: Duration::from_millis(20),
            queue_delay_threshold: Duration::from_millis(500),
            queue_delay_report_ttl: Duration::from_secs(1),
            failure_threshold: 3.0,
            failure_ratio_threshold: 0.25,
            failure_half_life: Duration::from_secs(10),
            clear_hold: Duration::from_secs(2),
            initial_window: 8,
            min_window: 1,
            max_window: 64,
            clear_batch_window: Duration::from_millis(5),
            congested_batch_window: Duration::from_millis(50),
            congested_keepalive_factor: 4,
        }
    }
}

impl CongestionConfig {
    /// This configuration with every value brought into range.
    fn sanitized(mut self) -> Self {
        self.base_rtt_window = self
            .base_rtt_window
            .max(Duration::from_millis(BASE_RTT_BUCKETS.into()));
        self.rtt_growth_factor = if self.rtt_growth_factor.is_finite() {
            self.rtt_growth_factor.clamp(1.0, MAX_RTT_GROWTH_FACTOR)
        } else {
            MAX_RTT_GROWTH_FACTOR
        };
        self.failure_threshold = if self.failure_threshold.is_nan() {
            0.0
        } else {
            self.failure_threshold.max(0.0)
        };
        self.failure_ratio_threshold = if self.failure_ratio_threshold.is_nan() {
            0.0
        } else {
            self.failure_ratio_threshold.clamp(0.0, 1.0)
        };
        self.failure_half_life = self.failure_half_life.max(Duration::from_millis(1));
        self.min_window = self.min_window.max(1);
        self.max_window = self.max_window.max(self.min_window);
        self.initial_window = self.initial_window.clamp(self.min_window, self.max_window);
        self.congested_keepalive_factor = self.congested_keepalive_factor.max(1);
        self
    }
}

/// Why a peer is congested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Our head-of-line queueing delay is above the threshold.
    QueueDelay,
    /// The smoothed RTT has grown well above the base RTT.
    RttGrowth,
    /// Too many requests to the peer fail.
    Failures,
}

impl Reason {
    /// Lowercase name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueDelay => "queue_delay",
            Self::RttGrowth => "rtt_growth",
            Self::Failures => "failures",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a peer is congested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No signal, or none for at least the hold time.
    Clear,
    /// Congested.
    Congested {
        /// When this congested period began.
        since: Instant,
        /// The most severe signal on (failures, then RTT growth, then queue
        /// delay); while the hold time runs, the last one that was on.
        reason: Reason,
    },
}

impl State {
    /// Whether this is [`State::Congested`].
    pub fn is_congested(&self) -> bool {
        matches!(self, Self::Congested { .. })
    }
}

/// What the event loop should do for this peer, given its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actions {
    /// Drop queued ephemeral traffic (and do not queue more).
    pub shed_ephemeral: bool,
    /// Hold Bulk traffic in its queue.
    pub defer_bulk: bool,
    /// How long to wait to batch small requests together.
    pub batch_window: Duration,
    /// Multiply ping/keepalive intervals by this.
    pub keepalive_factor: u32,
}

/// Counters of a [`Controller`], since it was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ControllerStats {
    /// Requests reported sent.
    pub sent: u64,
    /// Requests reported acknowledged.
    pub acked: u64,
    /// Requests reported failed.
    pub failed: u64,
    /// Bytes reported sent.
    pub bytes_sent: u64,
    /// Bytes reported acknowledged.
    pub bytes_acked: u64,
    /// Times the state went from clear to congested.
    pub congestion_events: u64,
    /// Times the window was halved.
    pub window_decreases: u64,
}

/// The minimum RTT seen in one time bucket.
#[derive(Debug, Clone, Copy)]
struct RttBucket {
    start: Instant,
    min: Duration,
}

/// Which signals are on.
#[derive(Debug, Clone, Copy, Default)]
struct Signals {
    queue_delay: bool,
    rtt_growth: bool,
    failures: bool,
}

impl Signals {
    /// Whether a signal about the network (not our own queue) is on.
    fn network(self) -> bool {
        self.rtt_growth || self.failures
    }

    /// The most severe signal that is on.
    fn reason(self) -> Option<Reason> {
        if self.failures {
            Some(Reason::Failures)
        } else if self.rtt_growth {
            Some(Reason::RttGrowth)
        } else if self.queue_delay {
            Some(Reason::QueueDelay)
        } else {
            None
        }
    }
}

/// [`State`] plus, while congested, when the signals are projected off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Clear,
    Congested {
        since: Instant,
        reason: Reason,
        /// When every signal is (projected to be) off, from the inputs so
        /// far; clear again `clear_hold` later.
        off_at: Instant,
    },
}

/// One peer's congestion controller (see the module docs).
#[derive(Debug)]
pub struct Controller {
    config: CongestionConfig,
    /// The state as of the last input; `settled` gives it at a later time.
    phase: Phase,
    /// When the network signals are projected to be off, `None` if they
    /// were off at the last input.
    network_off_at: Option<Instant>,

    srtt: Option<Duration>,
    rttvar: Duration,
    base_rtt: VecDeque<RttBucket>,
    queue_delay: Duration,
    queue_delay_at: Option<Instant>,

    /// Decaying failure and ack counts, as of `decayed_at`.
    failures: f64,
    acks: f64,
    decayed_at: Option<Instant>,

    window: usize,
    /// Acks counted towards the next window increase.
    ack_credit: usize,
    last_decrease: Option<Instant>,
    in_flight: usize,

    stats: ControllerStats,
}

// Implementation notes
//
// Every input ends with `refresh(now)`, which re-evaluates the signals and
// moves the state. Between inputs, signals can only go off, never on: the
// failure count decays, old base RTT buckets expire (the base can only
// rise), a queue-delay report goes stale. So at each input `refresh`
// projects when every signal will be off absent further input
// (`signals_off_at`: closed form for the decay, bucket expiry times for the
// base RTT, the report's TTL), and `settled(now)` answers for any later
// `now` without mutation: congested until `signals_off_at + clear_hold`.
// An input that turns the signals off moves `signals_off_at` back to its
// own time.
//
// The base RTT is a windowed minimum kept in `BASE_RTT_BUCKETS` time
// buckets of `base_rtt_window / BASE_RTT_BUCKETS` each, so memory is
// constant whatever the ack rate.

impl Controller {
    /// A controller with no samples yet: clear, at the initial window.
    pub fn new(config: CongestionConfig) -> Self {
        let config = config.sanitized();
        Self {
            window: config.initial_window,
            config,
            phase: Phase::Clear,
            network_off_at: None,
            srtt: None,
            rttvar: Duration::ZERO,
            base_rtt: VecDeque::with_capacity(MAX_BASE_RTT_BUCKETS),
            queue_delay: Duration::ZERO,
            queue_delay_at: None,
            failures: 0.0,
            acks: 0.0,
            decayed_at: None,
            ack_credit: 0,
            last_decrease: None,
            in_flight: 0,
            stats: ControllerStats::default(),
        }
    }

    /// The configuration in use (after [`Controller::new`] brought it into
    /// range).
    pub fn config(&self) -> &CongestionConfig {
        &self.config
    }

    /// A request of `bytes` was sent to the peer.
    pub fn on_sent(&mut self, now: Instant, bytes: usize) {
        self.in_flight = self.in_flight.saturating_add(1);
        self.stats.sent += 1;
        self.stats.bytes_sent = self.stats.bytes_sent.saturating_add(to_u64(bytes));
        self.refresh(now);
    }

    /// A request of `bytes` was answered after `rtt`.
    pub fn on_acked(&mut self, now: Instant, rtt: Duration, bytes: usize) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.stats.acked += 1;
        self.stats.bytes_acked = self.stats.bytes_acked.saturating_add(to_u64(bytes));
        self.decay(now);
        self.acks += 1.0;
        self.sample_rtt(now, rtt.min(MAX_RTT_SAMPLE));
        self.refresh(now);
        if self.network_off_at.is_none() {
            self.ack_credit += 1;
            if self.ack_credit >= self.window {
                self.ack_credit = 0;
                self.window = (self.window + 1).min(self.config.max_window);
            }
        }
    }

    /// A request to the peer failed (timeout, stream error). Halves the
    /// window, at most once per smoothed RTT.
    pub fn on_failure(&mut self, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.stats.failed += 1;
        self.decay(now);
        self.failures += 1.0;
        self.decrease(now);
        self.refresh(now);
    }

    /// The scheduler's head-of-line queueing delay for this peer (zero when
    /// nothing is queued). A report counts until the next one, for at most
    /// `queue_delay_report_ttl`.
    pub fn on_queue_delay(&mut self, now: Instant, delay: Duration) {
        self.queue_delay = delay;
        self.queue_delay_at = Some(now);
        self.refresh(now);
    }

    /// Whether the peer is congested at `now` (at or after the last input).
    pub fn state(&self, now: Instant) -> State {
        match self.settled(now) {
            Phase::Clear => State::Clear,
            Phase::Congested {
                since,
                reason,
                off_at,
            } => {
                // Some signal may have faded since the last input.
                let reason = if now < off_at {
                    self.signals(now).reason().unwrap_or(reason)
                } else {
                    reason
                };
                State::Congested { since, reason }
            }
        }
    }

    /// What to do for this peer at `now`, derived from [`Controller::state`].
    pub fn actions(&self, now: Instant) -> Actions {
        if self.state(now).is_congested() {
            Actions {
                shed_ephemeral: true,
                defer_bulk: true,
                batch_window: self.config.congested_batch_window,
                keepalive_factor: self.config.congested_keepalive_factor,
            }
        } else {
            Actions {
                shed_ephemeral: false,
                defer_bulk: false,
                batch_window: self.config.clear_batch_window,
                keepalive_factor: 1,
            }
        }
    }

    /// When the state (and so the actions) will turn clear if no input
    /// comes: `None` while clear (only an input can congest the peer).
    pub fn next_check(&self, now: Instant) -> Option<Instant> {
        match self.settled(now) {
            Phase::Clear => None,
            Phase::Congested { off_at, .. } => {
                Some(off_at.checked_add(self.config.clear_hold).unwrap_or(off_at))
            }
        }
    }

    /// Requests allowed in flight to the peer.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Requests in flight: sent, neither acked nor failed.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether another request may be sent now (in flight below the window).
    pub fn has_room(&self) -> bool {
        self.in_flight < self.window
    }

    /// Smoothed RTT (EWMA, gain 1/8), `None` before the first ack.
    pub fn smoothed_rtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// RTT variation (EWMA of the deviation, gain 1/4).
    pub fn rtt_var(&self) -> Duration {
        self.rttvar
    }

    /// Minimum RTT over the base RTT window, `None` without recent samples.
    pub fn base_rtt(&self, now: Instant) -> Option<Duration> {
        let life = self.bucket_life();
        self.base_rtt
            .iter()
            .filter(|b| now.saturating_duration_since(b.start) < life)
            .map(|b| b.min)
            .min()
    }

    /// The last reported queue delay.
    pub fn queue_delay(&self) -> Duration {
        self.queue_delay
    }

    /// Fraction of recent (decaying) outcomes that were failures, 0.0
    /// without any.
    pub fn failure_rate(&self, now: Instant) -> f64 {
        let (failures, acks) = self.decayed_counts(now);
        let total = failures + acks;
        if total > NEGLIGIBLE_COUNT {
            failures / total
        } else {
            0.0
        }
    }

    /// Counters since creation.
    pub fn stats(&self) -> &ControllerStats {
        &self.stats
    }

    fn bucket_len(&self) -> Duration {
        self.config.base_rtt_window / BASE_RTT_BUCKETS
    }

    /// How long after its start a bucket stops counting.
    fn bucket_life(&self) -> Duration {
        self.config
            .base_rtt_window
            .saturating_add(self.bucket_len())
    }

    fn sample_rtt(&mut self, now: Instant, rtt: Duration) {
        let life = self.bucket_life();
        while self
            .base_rtt
            .front()
            .is_some_and(|b| now.saturating_duration_since(b.start) >= life)
        {
            self.base_rtt.pop_front();
        }
        match self.srtt {
            // First sample, or first for longer than the window: start over.
            Some(srtt) if !self.base_rtt.is_empty() => {
                let deviation = srtt.abs_diff(rtt);
                self.rttvar = self.rttvar * 3 / 4 + deviation / 4;
                self.srtt = Some(srtt * 7 / 8 + rtt / 8);
            }
            _ => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
        }
        let len = self.bucket_len();
        match self.base_rtt.back_mut() {
            Some(last) if now.saturating_duration_since(last.start) < len => {
                last.min = last.min.min(rtt);
            }
            _ => {
                self.base_rtt.push_back(RttBucket {
                    start: now,
                    min: rtt,
                });
                while self.base_rtt.len() > MAX_BASE_RTT_BUCKETS {
                    self.base_rtt.pop_front();
                }
            }
        }
    }

    /// Failure and ack counts decayed to `now`.
    fn decayed_counts(&self, now: Instant) -> (f64, f64) {
        let Some(at) = self.decayed_at else {
            return (self.failures, self.acks);
        };
        let elapsed = now.saturating_duration_since(at).as_secs_f64();
        let factor = 0.5f64.powf(elapsed / self.config.failure_half_life.as_secs_f64());
        (self.failures * factor, self.acks * factor)
    }

    fn decay(&mut self, now: Instant) {
        let (failures, acks) = self.decayed_counts(now);
        let zero_if_negligible = |x: f64| if x < NEGLIGIBLE_COUNT { 0.0 } else { x };
        self.failures = zero_if_negligible(failures);
        self.acks = zero_if_negligible(acks);
        self.decayed_at = Some(match self.decayed_at {
            Some(at) => at.max(now),
            None => now,
        });
    }

    /// Whether `srtt` counts as grown over `base`.
    fn rtt_grown(&self, srtt: Duration, base: Duration) -> bool {
        let scaled =
            Duration::try_from_secs_f64(base.as_secs_f64() * self.config.rtt_growth_factor)
                .unwrap_or(Duration::MAX);
        srtt > scaled.saturating_add(self.config.rtt_growth_floor)
    }

    /// The failure count under which the failure signal is off.
    fn failure_floor(&self) -> f64 {
        self.config.failure_threshold.max(NEGLIGIBLE_COUNT)
    }

    fn signals(&self, now: Instant) -> Signals {
        let rtt_growth = match (self.srtt, self.base_rtt(now)) {
            (Some(srtt), Some(base)) => self.rtt_grown(srtt, base),
            _ => false,
        };
        let (failures, acks) = self.decayed_counts(now);
        let failures = failures >= self.failure_floor()
            && failures / (failures + acks) >= self.config.failure_ratio_threshold;
        let queue_delay = self.queue_delay > self.config.queue_delay_threshold
            && self.queue_delay_at.is_some_and(|at| {
                now.saturating_duration_since(at) < self.config.queue_delay_report_ttl
            });
        Signals {
            queue_delay,
            rtt_growth,
            failures,
        }
    }

    /// `now + by`, or as far as representable within [`MAX_PROJECTION`].
    fn later(now: Instant, by: Duration) -> Instant {
        now.checked_add(by.min(MAX_PROJECTION))
            .or_else(|| now.checked_add(Duration::from_secs(3600)))
            .unwrap_or(now)
    }

    /// With the signals on at `now` as given, when the network signals and
    /// all signals will be off if no input comes (`None`: off now).
    fn projected_off(&self, now: Instant, on: Signals) -> (Option<Instant>, Option<Instant>) {
        let mut network: Option<Instant> = None;
        if on.failures {
            // The ratio does not change as both counts decay alike; the
            // count falls under the floor after half_life × log2(f / floor).
            let (failures, _) = self.decayed_counts(now);
            let halvings = (failures / self.failure_floor()).log2().max(0.0);
            let secs = self.config.failure_half_life.as_secs_f64() * halvings;
            let by = Duration::try_from_secs_f64(secs).unwrap_or(MAX_PROJECTION);
            // One microsecond past the crossing, against rounding.
            network = network.max(Some(Self::later(now, by + Duration::from_micros(1))));
        }
        if on.rtt_growth {
            // The base can only rise, as buckets expire (in start order).
            let life = self.bucket_life();
            let srtt = self.srtt.unwrap_or(Duration::ZERO);
            let alive: Vec<&RttBucket> = self
                .base_rtt
                .iter()
                .filter(|b| now.saturating_duration_since(b.start) < life)
                .collect();
            let mut off = None;
            for (i, bucket) in alive.iter().enumerate() {
                let expiry = Self::later(bucket.start, life);
                let base = alive[i + 1..].iter().map(|b| b.min).min();
                if base.is_none_or(|base| !self.rtt_grown(srtt, base)) {
                    off = Some(expiry.max(now));
                    break;
                }
            }
            network = network.max(Some(off.unwrap_or(now)));
        }
        let mut all = network;
        if on.queue_delay {
            if let Some(at) = self.queue_delay_at {
                let expiry = Self::later(at, self.config.queue_delay_report_ttl);
                all = all.max(Some(expiry.max(now)));
            }
        }
        (network, all)
    }

    /// Halves the window, unless it was halved less than a smoothed RTT ago.
    fn decrease(&mut self, now: Instant) {
        let interval = self
            .srtt
            .unwrap_or(Duration::ZERO)
            .max(MIN_DECREASE_INTERVAL);
        if self
            .last_decrease
            .is_some_and(|t| now.saturating_duration_since(t) < interval)
        {
            return;
        }
        self.window = (self.window / 2).max(self.config.min_window);
        self.ack_credit = 0;
        self.last_decrease = Some(now);
        self.stats.window_decreases += 1;
    }

    /// The phase at `now`, from the last input's projection.
    fn settled(&self, now: Instant) -> Phase {
        self.phase.resolve(now, self.config.clear_hold)
    }

    /// Re-evaluates the signals after an input at `now`.
    fn refresh(&mut self, now: Instant) {
        let before = self.settled(now);
        let on = self.signals(now);
        let (network_off, all_off) = self.projected_off(now, on);
        let network_was_on = self.network_off_at.is_some_and(|t| now < t);
        if on.network() && !network_was_on {
            self.decrease(now);
        }
        self.network_off_at = network_off;
        self.phase = match (before, on.reason(), all_off) {
            (Phase::Clear, Some(reason), Some(off_at)) => {
                self.stats.congestion_events += 1;
                Phase::Congested {
                    since: now,
                    reason,
                    off_at,
                }
            }
            (Phase::Congested { since, .. }, Some(reason), Some(off_at)) => Phase::Congested {
                since,
                reason,
                off_at,
            },
            // Every signal off: they went off at the projected time or now,
            // whichever came first.
            (
                Phase::Congested {
                    since,
                    reason,
                    off_at,
                },
                _,
                _,
            ) => Phase::Congested {
                since,
                reason,
                off_at: off_at.min(now),
            },
            (Phase::Clear, _, _) => Phase::Clear,
        }
        .resolve(now, self.config.clear_hold);
    }
}

impl Phase {
    /// This phase, or clear if its hold time is over at `now`.
    fn resolve(self, now: Instant, hold: Duration) -> Self {
        match self {
            Self::Congested { off_at, .. }
                if now >= off_at && now.saturating_duration_since(off_at) >= hold =>
            {
                Self::Clear
            }
            phase => phase,
        }
    }
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn controller() -> Controller {
        Controller::new(CongestionConfig::default())
    }

    #[test]
    fn steady_low_rtt_with_jitter_stays_clear() {
        let t0 = Instant::now();
        let mut c = controller();
        for i in 0..600u64 {
            let now = t0 + ms(100 * i);
            // 10..=25 ms: jitter under the 20 ms floor.
            c.on_sent(now, 500);
            c.on_acked(now, ms(10 + (i % 4) * 5), 500);
            c.on_queue_delay(now, ms(i % 50));
            assert_eq!(c.state(now), State::Clear, "at sample {i}");
        }
        let now = t0 + ms(60_000);
        assert_eq!(c.base_rtt(now), Some(ms(10)));
        assert!(c.smoothed_rtt().is_some_and(|s| s >= ms(10) && s <= ms(25)));
        assert!(c.rtt_var() > Duration::ZERO);
        assert_eq!(c.stats().congestion_events, 0);
        assert_eq!(c.stats().window_decreases, 0);
        // 600 acks: +1 per window's worth, from 8 up to 35.
        assert_eq!(c.window(), 35);
        assert_eq!(c.in_flight(), 0);
        assert_eq!(c.next_check(now), None);
    }

    #[test]
    fn rtt_climbing_to_five_times_base_congests() {
        let t0 = Instant::now();
        let mut c = controller();
        for i in 0..100u64 {
            c.on_acked(t0 + ms(100 * i), ms(10), 100);
        }
        let mut now = t0 + ms(10_000);
        let mut congested_after = None;
        for i in 0..40u64 {
            now = t0 + ms(10_000 + 100 * i);
            let before = c.window();
            c.on_acked(now, ms(50), 100);
            if let State::Congested { since, reason } = c.state(now) {
                assert_eq!(since, now);
                assert_eq!(reason, Reason::RttGrowth);
                assert_eq!(c.window(), before / 2);
                congested_after = Some(i + 1);
                break;
            }
        }
        // srtt = 50 - 40 × (7/8)^k exceeds 2 × 10 + 20 = 40 ms at k = 11.
        assert_eq!(congested_after, Some(11));
        assert_eq!(c.base_rtt(now), Some(ms(10)));
        assert_eq!(c.stats().congestion_events, 1);
        let actions = c.actions(now);
        assert!(actions.shed_ephemeral && actions.defer_bulk);
        // Still congested while RTT stays high: no growth, no re-entry.
        let window = c.window();
        for i in 1..20u64 {
            c.on_acked(now + ms(100 * i), ms(50), 100);
        }
        assert_eq!(c.window(), window);
        assert_eq!(c.stats().congestion_events, 1);
    }

    #[test]
    fn queue_delay_over_threshold_congests_without_shrinking_the_window() {
        let t0 = Instant::now();
        let mut c = controller();
        c.on_acked(t0, ms(10), 100);
        let window = c.window();
        c.on_queue_delay(t0, ms(500));
        assert_eq!(c.state(t0), State::Clear, "at the threshold is not above");
        let t1 = t0 + ms(100);
        c.on_queue_delay(t1, ms(600));
        assert_eq!(
            c.state(t1),
            State::Congested {
                since: t1,
                reason: Reason::QueueDelay
            }
        );
        assert_eq!(c.window(), window);
        assert_eq!(c.queue_delay(), ms(600));
        // Acks with a healthy RTT still grow the window.
        for i in 0..window as u64 {
            c.on_acked(t1 + ms(i), ms(10), 100);
        }
        assert_eq!(c.window(), window + 1);
    }

    #[test]
    fn failures_halve_the_window_down_to_one_never_zero() {
        let t0 = Instant::now();
        let mut c = Controller::new(CongestionConfig {
            min_window: 0,
            ..CongestionConfig::default()
        });
        assert_eq!(c.config().min_window, 1);
        assert_eq!(c.window(), 8);
        let mut windows = Vec::new();
        for i in 0..6u64 {
            c.on_sent(t0 + ms(1000 * i), 100);
            c.on_failure(t0 + ms(1000 * i));
            windows.push(c.window());
        }
        assert_eq!(windows, vec![4, 2, 1, 1, 1, 1]);
        assert!(c.has_room());
        assert_eq!(c.stats().failed, 6);
        let now = t0 + ms(5000);
        assert!(matches!(
            c.state(now),
            State::Congested {
                reason: Reason::Failures,
                ..
            }
        ));
        assert!(c.failure_rate(now) > 0.99);
    }

    #[test]
    fn a_burst_of_failures_halves_once() {
        let t0 = Instant::now();
        let mut c = controller();
        c.on_acked(t0, ms(200), 100);
        let window = c.window();
        for i in 0..8 {
            c.on_failure(t0 + ms(1000) + ms(i));
        }
        assert_eq!(c.window(), window / 2);
        // One smoothed RTT (200 ms) later, a new failure halves again.
        c.on_failure(t0 + ms(1200));
        assert_eq!(c.window(), window / 4);
        assert_eq!(c.stats().window_decreases, 2);
    }

    #[test]
    fn sparse_failures_on_a_busy_peer_do_not_congest() {
        let t0 = Instant::now();
        let mut c = controller();
        for i in 0..1000u64 {
            let now = t0 + ms(10 * i);
            c.on_acked(now, ms(10), 100);
            if i % 100 == 0 {
                c.on_failure(now);
            }
            assert_eq!(c.state(now), State::Clear);
        }
        assert!(c.failure_rate(t0 + ms(10_000)) < 0.25);
    }

    #[test]
    fn failures_decay_and_the_window_grows_additively_after_recovery() {
        let t0 = Instant::now();
        let mut c = controller();
        for i in 0..5u64 {
            c.on_failure(t0 + ms(200 * i));
        }
        assert_eq!(c.window(), 1);
        let t1 = t0 + ms(800);
        assert!(c.state(t1).is_congested());
        // An ack does not grow the window while failures still signal.
        c.on_acked(t1, ms(10), 100);
        assert_eq!(c.window(), 1);
        // 5 failures decay below 3 after ~7 s, then the 2 s hold; no
        // polling needed.
        let clear_at = c.next_check(t1).unwrap();
        assert!(clear_at > t1 + ms(8_000) && clear_at < t1 + ms(10_000));
        assert!(c.state(clear_at - ms(1)).is_congested());
        assert_eq!(c.state(clear_at), State::Clear);
        let t2 = t1 + ms(12_000);
        assert_eq!(c.state(t2), State::Clear);

        let mut windows = vec![c.window()];
        for i in 0..9u64 {
            c.on_acked(t2 + ms(10 * i), ms(10), 100);
            windows.push(c.window());
        }
        // +1 per window's worth of acks: 1 ack, then 2, then 3, then 4.
        assert_eq!(windows, vec![1, 2, 2, 3, 3, 3, 4, 4, 4, 4]);
    }

    #[test]
    fn window_never_exceeds_its_maximum() {
        let t0 = Instant::now();
        let mut c = Controller::new(CongestionConfig {
            max_window: 3,
            initial_window: 100,
            ..CongestionConfig::default()
        });
        assert_eq!(c.window(), 3);
        for i in 0..100u64 {
            c.on_acked(t0 + ms(i), ms(5), 10);
        }
        assert_eq!(c.window(), 3);
    }

    #[test]
    fn hysteresis_holds_congested_until_clear_for_the_hold_time() {
        let t0 = Instant::now();
        let mut c = controller();
        c.on_queue_delay(t0, ms(800));
        let congested = State::Congested {
            since: t0,
            reason: Reason::QueueDelay,
        };
        assert_eq!(c.state(t0), congested);
        // If no report comes, this one goes stale after its TTL (1 s), then
        // the hold (2 s) runs.
        assert_eq!(c.next_check(t0), Some(t0 + ms(3000)));

        let t1 = t0 + ms(1000);
        c.on_queue_delay(t1, Duration::ZERO);
        assert_eq!(c.state(t1), congested);
        assert_eq!(c.next_check(t1), Some(t1 + ms(2000)));
        assert_eq!(c.state(t1 + ms(1999)), congested);
        assert!(c.actions(t1 + ms(1999)).defer_bulk);
        assert_eq!(c.state(t1 + ms(2000)), State::Clear);
        assert_eq!(c.next_check(t1 + ms(2000)), None);

        // Signal flapping during the hold restarts it, without a new event.
        let t2 = t1 + ms(5000);
        c.on_queue_delay(t2, ms(800));
        c.on_queue_delay(t2 + ms(500), Duration::ZERO);
        c.on_queue_delay(t2 + ms(1500), ms(800));
        c.on_queue_delay(t2 + ms(2000), Duration::ZERO);
        let again = State::Congested {
            since: t2,
            reason: Reason::QueueDelay,
        };
        assert_eq!(c.state(t2 + ms(3999)), again);
        assert_eq!(c.state(t2 + ms(4000)), State::Clear);
        assert_eq!(c.stats().congestion_events, 2);
    }

    #[test]
    fn a_stale_queue_delay_report_stops_counting() {
        let t0 = Instant::now();
        let mut c = controller();
        c.on_queue_delay(t0, ms(900));
        // The loop stops reporting (e.g. nothing poppable is queued).
        let c: &Controller = &c;
        assert!(c.state(t0 + ms(999)).is_congested());
        assert!(c.state(t0 + ms(2999)).is_congested());
        assert_eq!(c.state(t0 + ms(3000)), State::Clear);
        assert!(!c.actions(t0 + ms(3000)).defer_bulk);
        assert_eq!(c.next_check(t0 + ms(3000)), None);
    }

    #[test]
    fn rtt_growth_ends_without_input_when_the_old_base_ages_out() {
        let t0 = Instant::now();
        let mut c = controller();
        for i in 0..50u64 {
            c.on_acked(t0 + ms(100 * i), ms(10), 100);
        }
        for i in 50..200u64 {
            c.on_acked(t0 + ms(100 * i), ms(100), 100);
        }
        let last = t0 + ms(19_900);
        assert!(matches!(
            c.state(last),
            State::Congested {
                reason: Reason::RttGrowth,
                ..
            }
        ));
        // Silence. The bucket holding 10 ms (started at t0) stops counting
        // at t0 + 70 s; the hold ends 2 s later.
        assert_eq!(c.next_check(last), Some(t0 + ms(72_000)));
        assert!(c.state(t0 + ms(71_999)).is_congested());
        assert_eq!(c.state(t0 + ms(72_000)), State::Clear);
        assert_eq!(c.base_rtt(t0 + ms(72_000)), Some(ms(100)));
    }

    #[test]
    fn reason_follows_the_most_severe_signal() {
        let t0 = Instant::now();
        let mut c = controller();
        c.on_queue_delay(t0, ms(800));
        for i in 0..4u64 {
            c.on_failure(t0 + ms(i));
        }
        assert_eq!(
            c.state(t0 + ms(10)),
            State::Congested {
                since: t0,
                reason: Reason::Failures
            }
        );
        assert_eq!(Reason::Failures.to_string(), "failures");
        assert_eq!(Reason::QueueDelay.as_str(), "queue_delay");
    }

    #[test]
    fn base_rtt_ages_out_of_its_window() {
        let t0 = Instant::now();
        let mut c = controller();
        for i in 0..50u64 {
            c.on_acked(t0 + ms(100 * i), ms(10), 100);
        }
        // The route changes: 100 ms from now on. Congested at first…
        let mut now = t0;
        for i in 50..800u64 {
            now = t0 + ms(100 * i);
            c.on_acked(now, ms(100), 100);
            c.on_queue_delay(now, Duration::ZERO);
            if now == t0 + ms(60_000) {
                // The last 10 ms sample (4.9 s) is within the window.
                assert_eq!(c.base_rtt(now), Some(ms(10)));
                assert!(matches!(
                    c.state(now),
                    State::Congested {
                        reason: Reason::RttGrowth,
                        ..
                    }
                ));
            }
        }
        // …until the old minimum ages out (within window + window / 6).
        assert_eq!(c.base_rtt(t0 + ms(75_000)), Some(ms(100)));
        assert_eq!(now, t0 + ms(79_900));
        assert_eq!(c.state(now), State::Clear);
        assert_eq!(c.stats().congestion_events, 1);
    }

    #[test]
    fn a_long_silence_restarts_the_rtt_estimate() {
        let t0 = Instant::now();
        let mut c = controller();
        for i in 0..20u64 {
            c.on_acked(t0 + ms(100 * i), ms(10), 100);
        }
        let later = t0 + Duration::from_secs(300);
        assert_eq!(c.base_rtt(later), None);
        c.on_acked(later, ms(80), 100);
        assert_eq!(c.smoothed_rtt(), Some(ms(80)));
        assert_eq!(c.base_rtt(later), Some(ms(80)));
        assert_eq!(c.state(later), State::Clear);
    }

    #[test]
    fn actions_follow_the_state() {
        let t0 = Instant::now();
        let mut c = controller();
        assert_eq!(
            c.actions(t0),
            Actions {
                shed_ephemeral: false,
                defer_bulk: false,
                batch_window: ms(5),
                keepalive_factor: 1,
            }
        );
        c.on_queue_delay(t0, Duration::from_secs(1));
        assert_eq!(
            c.actions(t0),
            Actions {
                shed_ephemeral: true,
                defer_bulk: true,
                batch_window: ms(50),
                keepalive_factor: 4,
            }
        );
    }

    #[test]
    fn in_flight_tracks_sends_acks_and_failures() {
        let t0 = Instant::now();
        let mut c = Controller::new(CongestionConfig {
            initial_window: 2,
            ..CongestionConfig::default()
        });
        c.on_sent(t0, 10);
        assert!(c.has_room());
        c.on_sent(t0, 10);
        assert!(!c.has_room());
        assert_eq!(c.in_flight(), 2);
        c.on_acked(t0 + ms(10), ms(10), 10);
        c.on_failure(t0 + ms(20));
        c.on_failure(t0 + ms(30)); // unmatched: saturates
        assert_eq!(c.in_flight(), 0);
        let stats = c.stats();
        assert_eq!((stats.sent, stats.acked, stats.failed), (2, 1, 2));
        assert_eq!((stats.bytes_sent, stats.bytes_acked), (20, 10));
    }

    #[test]
    fn hostile_config_and_inputs_do_not_panic() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let mut c = Controller::new(CongestionConfig {
            base_rtt_window: Duration::ZERO,
            rtt_growth_factor: f64::NAN,
            failure_threshold: f64::NAN,
            failure_ratio_threshold: f64::INFINITY,
            failure_half_life: Duration::ZERO,
            min_window: 0,
            max_window: 0,
            initial_window: 0,
            congested_keepalive_factor: 0,
            ..CongestionConfig::default()
        });
        assert_eq!(c.window(), 1);
        c.on_acked(t0, Duration::MAX, usize::MAX);
        c.on_acked(t0 - Duration::from_secs(50), Duration::ZERO, 0);
        c.on_failure(t0 - Duration::from_secs(99));
        c.on_queue_delay(t0, Duration::MAX);
        let state = c.state(t0);
        assert!(state.is_congested());
        assert!(c.actions(t0).keepalive_factor >= 1);
        assert!(c.window() >= 1);
        assert!(c.next_check(t0).is_some());
    }
}
