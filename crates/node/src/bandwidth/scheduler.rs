//! Per-peer priority scheduling of outgoing requests.
//!
//! A [`Scheduler`] holds one bounded FIFO queue per [`Priority`] class and
//! decides which queued item goes out next. It is sans-IO: it never sends
//! anything and has no clock; every time-dependent method takes `now`.
//!
//! Policy:
//! - **Priority within a round, weighted shares across rounds.** Scheduling is
//!   a byte-based deficit round robin (DRR). Each round, every backlogged
//!   class is credited `quantum_bytes × weight` bytes; within a round the most
//!   urgent class that can afford its head item goes first. So higher classes
//!   go first, yet every backlogged class gets at least its weighted share of
//!   bytes every round: nothing starves.
//! - **Control effectively always first.** Control is not strict priority
//!   (a flood of Control would then starve everything else); it has the
//!   largest weight (16 by default) and, like every class, joins the current
//!   round as soon as it has something queued. A Control item arriving
//!   mid-round therefore goes out on the next [`Scheduler::pop`], unless
//!   Control has already spent its credit this round.
//! - **Non-ephemeral items are never dropped.** A full queue hands the item
//!   back in [`Rejected`]; the caller keeps it durable and retries later.
//! - **Ephemeral items are droppable.** A full ephemeral queue drops its
//!   oldest item for the new one; ephemeral items older than
//!   [`SchedulerConfig::ephemeral_max_age`] are dropped, never sent stale;
//!   [`Scheduler::shed_ephemeral`] drops them all. Every drop is counted,
//!   and dropped items are handed back ([`Scheduler::take_dropped`],
//!   [`Scheduler::shed_ephemeral`]) so the caller can settle them.
//! - **Held classes** ([`Scheduler::set_hold`]) keep their items queued but
//!   are not popped, e.g. Bulk while the peer is congested.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use peercomm_wire::Priority;

/// Default credit per weight unit and round, in bytes.
pub const DEFAULT_QUANTUM_BYTES: usize = 1024;
/// Default age past which a queued ephemeral item is dropped.
pub const DEFAULT_EPHEMERAL_MAX_AGE: Duration = Duration::from_secs(3);
/// Dropped items kept for [`Scheduler::take_dropped`]; beyond this the
/// oldest kept one is forgotten (counted in
/// [`SchedulerStats::dropped_untaken`]).
pub const MAX_DROPPED_KEPT: usize = 1024;

/// One value per priority class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PerClass<V> {
    /// The value for [`Priority::Control`].
    pub control: V,
    /// The value for [`Priority::Interactive`].
    pub interactive: V,
    /// The value for [`Priority::Group`].
    pub group: V,
    /// The value for [`Priority::Bulk`].
    pub bulk: V,
    /// The value for [`Priority::Ephemeral`].
    pub ephemeral: V,
}

impl<V> PerClass<V> {
    /// A table whose value for each class is `f(class)`.
    pub fn from_fn(mut f: impl FnMut(Priority) -> V) -> Self {
        Self {
            control: f(Priority::Control),
            interactive: f(Priority::Interactive),
            group: f(Priority::Group),
            bulk: f(Priority::Bulk),
            ephemeral: f(Priority::Ephemeral),
        }
    }

    /// The value for `class`.
    pub fn get(&self, class: Priority) -> &V {
        match class {
            Priority::Control => &self.control,
            Priority::Interactive => &self.interactive,
            Priority::Group => &self.group,
            Priority::Bulk => &self.bulk,
            Priority::Ephemeral => &self.ephemeral,
        }
    }

    /// The value for `class`, mutably.
    pub fn get_mut(&mut self, class: Priority) -> &mut V {
        match class {
            Priority::Control => &mut self.control,
            Priority::Interactive => &mut self.interactive,
            Priority::Group => &mut self.group,
            Priority::Bulk => &mut self.bulk,
            Priority::Ephemeral => &mut self.ephemeral,
        }
    }
}

/// Configuration of a [`Scheduler`]. Out-of-range values are raised to
/// their minimum by [`Scheduler::new`] (weights, queue bounds and the
/// quantum to 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Relative byte share of each class while several are backlogged.
    pub weights: PerClass<u32>,
    /// Most items queued per class (at least 1).
    pub max_queued: PerClass<usize>,
    /// Credit per weight unit and round, in bytes: a class of weight `w`
    /// may send `w × quantum_bytes` per round.
    pub quantum_bytes: usize,
    /// Queued ephemeral items older than this are dropped, never sent.
    pub ephemeral_max_age: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            weights: PerClass {
                control: 16,
                interactive: 8,
                group: 4,
                bulk: 2,
                ephemeral: 1,
            },
            max_queued: PerClass {
                control: 128,
                interactive: 256,
                group: 256,
                bulk: 256,
                ephemeral: 32,
            },
            quantum_bytes: DEFAULT_QUANTUM_BYTES,
            ephemeral_max_age: DEFAULT_EPHEMERAL_MAX_AGE,
        }
    }
}

/// A non-ephemeral item refused because its class's queue is full. The
/// item is handed back: keep it and push it again later.
#[derive(Debug, thiserror::Error)]
#[error("the {class} queue is full; keep the item and retry later")]
pub struct Rejected<T> {
    /// Class of the refused item.
    pub class: Priority,
    /// The refused item, handed back.
    pub item: T,
    /// Its size, as given to [`Scheduler::push`].
    pub bytes: usize,
}

impl<T> Rejected<T> {
    /// The refused item.
    pub fn into_item(self) -> T {
        self.item
    }
}

/// An item taken out of a [`Scheduler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Popped<T> {
    /// Its class.
    pub class: Priority,
    /// The item.
    pub item: T,
    /// Its size, as given to [`Scheduler::push`].
    pub bytes: usize,
    /// How long it waited in the queue.
    pub queued_for: Duration,
}

/// Counters of a [`Scheduler`], since it was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SchedulerStats {
    /// Items popped, per class.
    pub popped: PerClass<u64>,
    /// Bytes popped, per class.
    pub popped_bytes: PerClass<u64>,
    /// Pushes refused because the class's queue was full.
    pub rejected: PerClass<u64>,
    /// Ephemeral items dropped to make room for a newer one.
    pub dropped_ephemeral: u64,
    /// Ephemeral items dropped for being older than the maximum age.
    pub expired_ephemeral: u64,
    /// Ephemeral items dropped by [`Scheduler::shed_ephemeral`].
    pub shed_ephemeral: u64,
    /// Dropped items forgotten because [`Scheduler::take_dropped`] was not
    /// called for [`MAX_DROPPED_KEPT`] drops.
    pub dropped_untaken: u64,
}

/// One queued item.
#[derive(Debug)]
struct Entry<T> {
    item: T,
    bytes: usize,
    queued_at: Instant,
}

/// One class's queue and its round-robin state.
#[derive(Debug)]
struct Lane<T> {
    queue: VecDeque<Entry<T>>,
    /// Sum of `bytes` over `queue`.
    bytes: u64,
    /// Bytes this class may still send before it needs more credit.
    deficit: u64,
    /// The last round this class was credited in.
    credited_round: u64,
    /// Kept queued, not popped.
    held: bool,
}

impl<T> Lane<T> {
    fn new() -> Self {
        Self {
            queue: VecDeque::new(),
            bytes: 0,
            deficit: 0,
            credited_round: 0,
            held: false,
        }
    }

    /// Whether the lane takes part in scheduling.
    fn eligible(&self) -> bool {
        !self.held && !self.queue.is_empty()
    }

    fn head_bytes(&self) -> Option<u64> {
        self.queue.front().map(|e| to_u64(e.bytes))
    }

    fn pop_front(&mut self) -> Option<Entry<T>> {
        let entry = self.queue.pop_front()?;
        self.bytes = self.bytes.saturating_sub(to_u64(entry.bytes));
        if self.queue.is_empty() {
            // An idle class keeps no credit (standard DRR).
            self.deficit = 0;
        }
        Some(entry)
    }

    fn push_back(&mut self, entry: Entry<T>) {
        self.bytes = self.bytes.saturating_add(to_u64(entry.bytes));
        self.queue.push_back(entry);
    }
}

fn to_u64(bytes: usize) -> u64 {
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

/// Per-peer outgoing queues, one per priority class, drained by a weighted
/// deficit round robin (see the module docs).
pub struct Scheduler<T> {
    config: SchedulerConfig,
    lanes: PerClass<Lane<T>>,
    /// Current round; starts at 1 so that every lane (credited in round 0)
    /// joins the first round.
    round: u64,
    /// Ephemeral items dropped (full queue, expiry) and not yet taken.
    dropped: VecDeque<T>,
    stats: SchedulerStats,
}

impl<T> fmt::Debug for Scheduler<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("len", &self.len())
            .field("queued_bytes", &self.queued_bytes())
            .field("round", &self.round)
            .field("dropped", &self.dropped.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

// Implementation notes
//
// Rounds are virtual. A lane is credited `weight × quantum` once per round:
// when a round starts (`refill`) for every eligible lane, or, for a lane that
// becomes eligible mid-round (new item, hold lifted), on the next `pop`
// (`join`), unless it was already credited this round. Emptying and refilling
// a lane within one round therefore gives no extra credit. When no eligible
// lane can afford its head item, `refill` starts as many rounds at once as
// the cheapest lane needs, so an item larger than one round's credit costs
// O(classes), not one loop iteration per round.

impl<T> Scheduler<T> {
    /// An empty scheduler.
    pub fn new(mut config: SchedulerConfig) -> Self {
        for class in Priority::ALL {
            let w = config.weights.get_mut(class);
            *w = (*w).max(1);
            let m = config.max_queued.get_mut(class);
            *m = (*m).max(1);
        }
        config.quantum_bytes = config.quantum_bytes.max(1);
        Self {
            config,
            lanes: PerClass::from_fn(|_| Lane::new()),
            round: 1,
            dropped: VecDeque::new(),
            stats: SchedulerStats::default(),
        }
    }

    /// The configuration in use (after [`Scheduler::new`] raised
    /// out-of-range values).
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Queues `item` of size `bytes` (as it will go on the wire) in `class`.
    ///
    /// A full ephemeral queue drops its oldest item (counted in
    /// [`SchedulerStats::dropped_ephemeral`], kept for
    /// [`Scheduler::take_dropped`]) and accepts the new one; any other full
    /// queue refuses the item and hands it back.
    pub fn push(
        &mut self,
        class: Priority,
        item: T,
        bytes: usize,
        now: Instant,
    ) -> Result<(), Rejected<T>> {
        let max = *self.config.max_queued.get(class);
        if class == Priority::Ephemeral {
            self.expire_ephemeral(now);
            while self.lanes.ephemeral.queue.len() >= max {
                let Some(entry) = self.lanes.ephemeral.pop_front() else {
                    break;
                };
                self.stats.dropped_ephemeral += 1;
                self.keep_dropped(entry.item);
            }
        } else if self.lanes.get(class).queue.len() >= max {
            *self.stats.rejected.get_mut(class) += 1;
            return Err(Rejected { class, item, bytes });
        }
        self.lanes.get_mut(class).push_back(Entry {
            item,
            bytes,
            queued_at: now,
        });
        Ok(())
    }

    /// Takes the next item to send, or `None` if every class that is not
    /// held is empty. Expired ephemeral items are dropped first (kept for
    /// [`Scheduler::take_dropped`]).
    pub fn pop(&mut self, now: Instant) -> Option<Popped<T>> {
        self.expire_ephemeral(now);
        self.join();
        let class = match self.first_affordable() {
            Some(class) => class,
            None => {
                self.refill();
                self.first_affordable()?
            }
        };
        let lane = self.lanes.get_mut(class);
        let entry = lane.pop_front()?;
        lane.deficit = lane.deficit.saturating_sub(to_u64(entry.bytes));
        *self.stats.popped.get_mut(class) += 1;
        *self.stats.popped_bytes.get_mut(class) += to_u64(entry.bytes);
        Some(Popped {
            class,
            item: entry.item,
            bytes: entry.bytes,
            queued_for: now.saturating_duration_since(entry.queued_at),
        })
    }

    /// Takes every queued item, held or not, most urgent class first and
    /// FIFO within a class (e.g. to hand them back when the peer goes
    /// away). Expired ephemeral items are dropped (kept for
    /// [`Scheduler::take_dropped`]), not returned.
    pub fn drain(&mut self, now: Instant) -> Vec<Popped<T>> {
        self.expire_ephemeral(now);
        let mut out = Vec::with_capacity(self.len());
        for class in Priority::ALL {
            let lane = self.lanes.get_mut(class);
            while let Some(entry) = lane.pop_front() {
                out.push(Popped {
                    class,
                    item: entry.item,
                    bytes: entry.bytes,
                    queued_for: now.saturating_duration_since(entry.queued_at),
                });
            }
        }
        out
    }

    /// Drops every queued ephemeral item and hands them back, oldest
    /// first (e.g. to settle them as expired).
    pub fn shed_ephemeral(&mut self) -> Vec<T> {
        let lane = &mut self.lanes.ephemeral;
        let shed: Vec<T> = lane.queue.drain(..).map(|e| e.item).collect();
        lane.bytes = 0;
        lane.deficit = 0;
        self.stats.shed_ephemeral += to_u64(shed.len());
        shed
    }

    /// Takes the ephemeral items dropped since the last call, because their
    /// queue was full or they expired, oldest drop first. Call it after
    /// [`Scheduler::push`] and [`Scheduler::pop`]: at most
    /// [`MAX_DROPPED_KEPT`] are kept.
    pub fn take_dropped(&mut self) -> Vec<T> {
        self.dropped.drain(..).collect()
    }

    /// Holds `class` (its items stay queued but are not popped) or lifts
    /// the hold. A held class earns no round-robin credit.
    pub fn set_hold(&mut self, class: Priority, held: bool) {
        self.lanes.get_mut(class).held = held;
    }

    /// Whether `class` is held.
    pub fn is_held(&self, class: Priority) -> bool {
        self.lanes.get(class).held
    }

    /// Items queued, in every class (held or not; may include ephemeral
    /// items that have expired but not yet been dropped).
    pub fn len(&self) -> usize {
        Priority::ALL.iter().map(|&c| self.len_of(c)).sum()
    }

    /// Whether no item is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items queued in `class`.
    pub fn len_of(&self, class: Priority) -> usize {
        self.lanes.get(class).queue.len()
    }

    /// Bytes queued, in every class.
    pub fn queued_bytes(&self) -> u64 {
        Priority::ALL
            .iter()
            .map(|&c| self.queued_bytes_of(c))
            .fold(0, u64::saturating_add)
    }

    /// Size of the next item of `class`, if any.
    pub fn head_bytes(&self, class: Priority) -> Option<usize> {
        self.lanes.get(class).queue.front().map(|e| e.bytes)
    }

    /// Size of the largest item at the head of any class, held or not: an
    /// upper bound on what the next [`Scheduler::pop`] returns.
    pub fn max_head_bytes(&self) -> usize {
        Priority::ALL
            .iter()
            .filter_map(|&c| self.head_bytes(c))
            .max()
            .unwrap_or(0)
    }

    /// Bytes queued in `class`.
    pub fn queued_bytes_of(&self, class: Priority) -> u64 {
        self.lanes.get(class).bytes
    }

    /// Head-of-line queueing delay: how long the oldest item of any class
    /// that is not held has waited, ignoring expired ephemeral items.
    /// `None` if nothing poppable is queued.
    ///
    /// Held classes are left out on purpose: they wait because the caller
    /// chose so (e.g. Bulk deferred while congested), and counting them
    /// would keep the congestion signal that caused the hold alive.
    pub fn oldest_wait(&self, now: Instant) -> Option<Duration> {
        let max_age = self.config.ephemeral_max_age;
        Priority::ALL
            .into_iter()
            .map(|class| (class, self.lanes.get(class)))
            .filter(|(_, lane)| !lane.held)
            .filter_map(|(class, lane)| {
                lane.queue
                    .iter()
                    .map(|e| now.saturating_duration_since(e.queued_at))
                    .find(|age| class != Priority::Ephemeral || *age <= max_age)
            })
            .max()
    }

    /// Counters since creation.
    pub fn stats(&self) -> &SchedulerStats {
        &self.stats
    }

    /// Drops ephemeral items older than the maximum age, oldest first.
    fn expire_ephemeral(&mut self, now: Instant) {
        let max_age = self.config.ephemeral_max_age;
        while self
            .lanes
            .ephemeral
            .queue
            .front()
            .is_some_and(|e| now.saturating_duration_since(e.queued_at) > max_age)
        {
            let Some(entry) = self.lanes.ephemeral.pop_front() else {
                break;
            };
            self.stats.expired_ephemeral += 1;
            self.keep_dropped(entry.item);
        }
    }

    /// Keeps a dropped item for [`Scheduler::take_dropped`].
    fn keep_dropped(&mut self, item: T) {
        if self.dropped.len() >= MAX_DROPPED_KEPT {
            self.dropped.pop_front();
            self.stats.dropped_untaken += 1;
        }
        self.dropped.push_back(item);
    }

    /// Credit per round of `class`, in bytes (at least 1).
    fn quantum(&self, class: Priority) -> u64 {
        to_u64(self.config.quantum_bytes)
            .saturating_mul(u64::from(*self.config.weights.get(class)))
            .max(1)
    }

    /// Credits, for the current round, eligible lanes not yet credited in it.
    fn join(&mut self) {
        for class in Priority::ALL {
            let quantum = self.quantum(class);
            let round = self.round;
            let lane = self.lanes.get_mut(class);
            if lane.eligible() && lane.credited_round < round {
                lane.deficit = lane.deficit.saturating_add(quantum);
                lane.credited_round = round;
            }
        }
    }

    /// The most urgent eligible class whose credit covers its head item.
    fn first_affordable(&self) -> Option<Priority> {
        Priority::ALL.into_iter().find(|&class| {
            let lane = self.lanes.get(class);
            lane.eligible() && lane.head_bytes().is_some_and(|b| b <= lane.deficit)
        })
    }

    /// Starts as many new rounds as it takes for some eligible lane to
    /// afford its head item, crediting every eligible lane for each.
    fn refill(&mut self) {
        let rounds = Priority::ALL
            .into_iter()
            .filter_map(|class| {
                let lane = self.lanes.get(class);
                if !lane.eligible() {
                    return None;
                }
                let missing = lane.head_bytes()?.saturating_sub(lane.deficit);
                Some(missing.div_ceil(self.quantum(class)).max(1))
            })
            .min();
        let Some(rounds) = rounds else {
            return;
        };
        self.round = self.round.saturating_add(rounds);
        for class in Priority::ALL {
            let credit = self.quantum(class).saturating_mul(rounds);
            let round = self.round;
            let lane = self.lanes.get_mut(class);
            if lane.eligible() {
                lane.deficit = lane.deficit.saturating_add(credit);
                lane.credited_round = round;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const Q: usize = DEFAULT_QUANTUM_BYTES;

    fn sched<T>() -> Scheduler<T> {
        Scheduler::new(SchedulerConfig::default())
    }

    fn classes_of<T>(s: &mut Scheduler<T>, now: Instant, n: usize) -> Vec<Priority> {
        (0..n).filter_map(|_| s.pop(now)).map(|p| p.class).collect()
    }

    #[test]
    fn classes_go_out_most_urgent_first() {
        let now = Instant::now();
        let mut s = sched();
        for class in Priority::ALL.into_iter().rev() {
            s.push(class, class.as_str(), 100, now).unwrap();
        }
        assert_eq!(classes_of(&mut s, now, 10), Priority::ALL.to_vec());
        assert!(s.pop(now).is_none());
        assert!(s.is_empty());
    }

    #[test]
    fn max_head_bytes_bounds_the_next_pop() {
        let now = Instant::now();
        let mut s = sched();
        assert_eq!(s.max_head_bytes(), 0);
        s.push(Priority::Interactive, "small", 300, now).unwrap();
        s.push(Priority::Bulk, "big", 90_000, now).unwrap();
        s.push(Priority::Bulk, "after", 10, now).unwrap();
        assert_eq!(s.max_head_bytes(), 90_000);
        s.set_hold(Priority::Bulk, true);
        assert_eq!(s.max_head_bytes(), 90_000, "held classes count too");
        s.set_hold(Priority::Bulk, false);
        let mut popped = 0;
        for _ in 0..10 {
            let bound = s.max_head_bytes();
            let Some(p) = s.pop(now) else { break };
            assert!(p.bytes <= bound, "{} popped, bound {bound}", p.bytes);
            popped += 1;
        }
        assert_eq!(popped, 3);
        assert_eq!(s.max_head_bytes(), 0);
    }

    #[test]
    fn fifo_within_a_class() {
        let now = Instant::now();
        let mut s = sched();
        for i in 0..50 {
            s.push(Priority::Group, i, 3000, now).unwrap();
        }
        let items: Vec<i32> = (0..50).filter_map(|_| s.pop(now)).map(|p| p.item).collect();
        assert_eq!(items, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn interactive_flood_leaves_bulk_its_weighted_share() {
        let now = Instant::now();
        let mut s = sched();
        // Keep both queues topped up: a constant flood.
        for i in 0..100 {
            s.push(Priority::Interactive, i, Q, now).unwrap();
            s.push(Priority::Bulk, i, Q, now).unwrap();
        }
        let mut counts = PerClass::<usize>::default();
        let mut since_bulk = 0;
        for n in 0..1000 {
            let p = s.pop(now).unwrap();
            *counts.get_mut(p.class) += 1;
            s.push(p.class, n, Q, now).unwrap();
            if p.class == Priority::Bulk {
                since_bulk = 0;
            } else {
                since_bulk += 1;
                // Weights 8:2 with equal sizes: at most 8 Interactive in a row.
                assert!(since_bulk <= 8, "bulk starved at pop {n}");
            }
        }
        // Exactly 8:2 over whole rounds of 10 pops.
        assert_eq!(counts.interactive, 800);
        assert_eq!(counts.bulk, 200);
        assert_eq!(s.stats().popped.bulk, 200);
    }

    #[test]
    fn every_backlogged_class_gets_its_weight_per_round() {
        let now = Instant::now();
        let mut s = sched();
        for class in Priority::ALL {
            for i in 0..32 {
                s.push(class, i, Q, now).unwrap();
            }
        }
        // One round with default weights 16+8+4+2+1 = 31 pops, in priority order.
        let round = classes_of(&mut s, now, 31);
        let mut expected = Vec::new();
        for class in Priority::ALL {
            let w = *SchedulerConfig::default().weights.get(class);
            expected.extend(std::iter::repeat_n(class, w as usize));
        }
        assert_eq!(round, expected);
    }

    #[test]
    fn control_flood_does_not_starve_bulk() {
        let now = Instant::now();
        let mut s = sched();
        for i in 0..100 {
            s.push(Priority::Control, i, Q, now).unwrap();
            s.push(Priority::Bulk, i, Q, now).unwrap();
        }
        let mut counts = PerClass::<usize>::default();
        for n in 0..180 {
            let p = s.pop(now).unwrap();
            *counts.get_mut(p.class) += 1;
            s.push(p.class, n, Q, now).unwrap();
        }
        assert_eq!(counts.control, 160);
        assert_eq!(counts.bulk, 20);
    }

    #[test]
    fn shares_are_by_bytes_not_items() {
        let now = Instant::now();
        let mut s = sched();
        for i in 0..100 {
            s.push(Priority::Interactive, i, 2 * Q, now).unwrap();
            s.push(Priority::Bulk, i, Q / 2, now).unwrap();
        }
        let mut counts = PerClass::<usize>::default();
        for n in 0..80 {
            let p = s.pop(now).unwrap();
            *counts.get_mut(p.class) += 1;
            s.push(p.class, n, p.bytes, now).unwrap();
        }
        // Per round: Interactive 8Q = 4 items, Bulk 2Q = 4 items.
        assert_eq!(counts.interactive, 40);
        assert_eq!(counts.bulk, 40);
        assert_eq!(s.stats().popped_bytes.interactive, 40 * 2 * Q as u64);
        assert_eq!(s.stats().popped_bytes.bulk, 40 * (Q / 2) as u64);
    }

    #[test]
    fn control_arriving_mid_round_goes_next() {
        let now = Instant::now();
        let mut s = sched();
        for i in 0..20 {
            s.push(Priority::Interactive, i, Q, now).unwrap();
            s.push(Priority::Bulk, i, Q, now).unwrap();
        }
        // Mid-round: 3 Interactive out, 5 credits left.
        assert_eq!(classes_of(&mut s, now, 3), vec![Priority::Interactive; 3]);
        s.push(Priority::Control, 99, 100, now).unwrap();
        let p = s.pop(now).unwrap();
        assert_eq!((p.class, p.item), (Priority::Control, 99));
        // Then the round resumes where it was.
        assert_eq!(classes_of(&mut s, now, 5), vec![Priority::Interactive; 5]);
        assert_eq!(classes_of(&mut s, now, 2), vec![Priority::Bulk; 2]);
    }

    #[test]
    fn item_larger_than_a_round_still_goes_out() {
        let now = Instant::now();
        let mut s = sched();
        // Bulk earns 2Q per round; this item needs 50 rounds.
        s.push(Priority::Bulk, u32::MAX, 100 * Q, now).unwrap();
        for i in 0..100 {
            s.push(Priority::Interactive, i, Q, now).unwrap();
        }
        let mut interactive_before = 0;
        loop {
            let p = s.pop(now).unwrap();
            if p.class == Priority::Bulk {
                assert_eq!(p.item, u32::MAX);
                break;
            }
            interactive_before += 1;
            // A constant Interactive flood.
            s.push(Priority::Interactive, p.item, Q, now).unwrap();
        }
        // Bulk affords its item in round 50; Interactive goes first within
        // every round, 8 items each.
        assert_eq!(interactive_before, 50 * 8);
    }

    #[test]
    fn oversized_item_alone_is_sent_at_once() {
        let now = Instant::now();
        let mut s = sched();
        s.push(Priority::Ephemeral, 1, usize::MAX, now).unwrap();
        assert_eq!(s.pop(now).unwrap().bytes, usize::MAX);
        assert!(s.pop(now).is_none());
    }

    #[test]
    fn full_queue_hands_the_item_back() {
        let now = Instant::now();
        let mut config = SchedulerConfig::default();
        config.max_queued.interactive = 2;
        let mut s = Scheduler::new(config);
        s.push(Priority::Interactive, "a", 10, now).unwrap();
        s.push(Priority::Interactive, "b", 10, now).unwrap();
        let err = s.push(Priority::Interactive, "c", 10, now).unwrap_err();
        assert_eq!(err.class, Priority::Interactive);
        assert_eq!(err.bytes, 10);
        assert!(err.to_string().contains("interactive"));
        assert_eq!(err.into_item(), "c");
        assert_eq!(s.len_of(Priority::Interactive), 2);
        assert_eq!(s.stats().rejected.interactive, 1);
        // Other classes are unaffected.
        s.push(Priority::Group, "g", 10, now).unwrap();
        // Room again after a pop: nothing was lost.
        assert_eq!(s.pop(now).unwrap().item, "a");
        s.push(Priority::Interactive, "c", 10, now).unwrap();
        let items: Vec<_> = s.drain(now).into_iter().map(|p| p.item).collect();
        assert_eq!(items, vec!["b", "c", "g"]);
    }

    #[test]
    fn full_ephemeral_queue_drops_its_oldest() {
        let now = Instant::now();
        let mut config = SchedulerConfig::default();
        config.max_queued.ephemeral = 2;
        let mut s = Scheduler::new(config);
        for item in ["a", "b", "c", "d"] {
            s.push(Priority::Ephemeral, item, 10, now).unwrap();
        }
        assert_eq!(s.len_of(Priority::Ephemeral), 2);
        assert_eq!(s.stats().dropped_ephemeral, 2);
        // The dropped ones are handed back, once.
        assert_eq!(s.take_dropped(), vec!["a", "b"]);
        assert!(s.take_dropped().is_empty());
        assert_eq!(s.pop(now).unwrap().item, "c");
        assert_eq!(s.pop(now).unwrap().item, "d");
        assert!(s.pop(now).is_none());
    }

    #[test]
    fn stale_ephemeral_items_are_dropped_not_sent() {
        let t0 = Instant::now();
        let mut s = sched();
        s.push(Priority::Ephemeral, "old", 10, t0).unwrap();
        s.push(Priority::Ephemeral, "new", 10, t0 + Duration::from_secs(2))
            .unwrap();
        let p = s.pop(t0 + Duration::from_millis(3500)).unwrap();
        assert_eq!(p.item, "new");
        assert_eq!(p.queued_for, Duration::from_millis(1500));
        assert_eq!(s.stats().expired_ephemeral, 1);
        assert_eq!(s.take_dropped(), vec!["old"]);

        // Exactly the maximum age is still fresh; a moment later it is not.
        s.push(Priority::Ephemeral, "edge", 10, t0).unwrap();
        s.push(Priority::Ephemeral, "late", 10, t0).unwrap();
        assert_eq!(s.pop(t0 + DEFAULT_EPHEMERAL_MAX_AGE).unwrap().item, "edge");
        let later = t0 + DEFAULT_EPHEMERAL_MAX_AGE + Duration::from_millis(1);
        assert!(s.pop(later).is_none());
        assert_eq!(s.stats().expired_ephemeral, 2);
        assert_eq!(s.take_dropped(), vec!["late"]);
        assert!(s.is_empty());
    }

    #[test]
    fn expiry_makes_room_before_dropping_fresh_ephemeral() {
        let t0 = Instant::now();
        let mut config = SchedulerConfig::default();
        config.max_queued.ephemeral = 2;
        let mut s = Scheduler::new(config);
        s.push(Priority::Ephemeral, "stale", 10, t0).unwrap();
        let t1 = t0 + Duration::from_secs(10);
        s.push(Priority::Ephemeral, "fresh", 10, t1).unwrap();
        s.push(Priority::Ephemeral, "newest", 10, t1).unwrap();
        assert_eq!(s.stats().expired_ephemeral, 1);
        assert_eq!(s.stats().dropped_ephemeral, 0);
        assert_eq!(s.pop(t1).unwrap().item, "fresh");
    }

    #[test]
    fn dropped_items_kept_for_the_caller_are_bounded() {
        let now = Instant::now();
        let mut config = SchedulerConfig::default();
        config.max_queued.ephemeral = 1;
        let mut s = Scheduler::new(config);
        let pushes = MAX_DROPPED_KEPT + 11;
        for i in 0..pushes {
            s.push(Priority::Ephemeral, i, 1, now).unwrap();
        }
        let dropped = s.take_dropped();
        assert_eq!(dropped.len(), MAX_DROPPED_KEPT);
        // The most recent drops are the ones kept.
        assert_eq!(dropped.first(), Some(&10));
        assert_eq!(dropped.last(), Some(&(pushes - 2)));
        assert_eq!(s.stats().dropped_untaken, 10);
        assert_eq!(s.stats().dropped_ephemeral, (pushes - 1) as u64);
    }

    #[test]
    fn shed_ephemeral_drops_only_ephemeral() {
        let now = Instant::now();
        let mut s = sched();
        for i in 0..5 {
            s.push(Priority::Ephemeral, i, 10, now).unwrap();
        }
        s.push(Priority::Bulk, 100, 10, now).unwrap();
        assert_eq!(s.shed_ephemeral(), vec![0, 1, 2, 3, 4]);
        assert!(s.shed_ephemeral().is_empty());
        assert_eq!(s.queued_bytes_of(Priority::Ephemeral), 0);
        assert_eq!(s.stats().shed_ephemeral, 5);
        assert_eq!(s.len(), 1);
        assert_eq!(s.queued_bytes(), 10);
        assert_eq!(s.pop(now).unwrap().item, 100);
    }

    #[test]
    fn held_bulk_stays_queued_until_released() {
        let t0 = Instant::now();
        let mut s = sched();
        s.set_hold(Priority::Bulk, true);
        assert!(s.is_held(Priority::Bulk));
        s.push(Priority::Bulk, "b1", 10, t0).unwrap();
        s.push(Priority::Bulk, "b2", 10, t0).unwrap();
        s.push(Priority::Group, "g", 10, t0).unwrap();
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(s.pop(t1).unwrap().item, "g");
        assert!(s.pop(t1).is_none());
        assert_eq!(s.len_of(Priority::Bulk), 2);
        // A held class does not count as head-of-line delay.
        assert_eq!(s.oldest_wait(t1), None);

        s.set_hold(Priority::Bulk, false);
        assert_eq!(s.oldest_wait(t1), Some(Duration::from_secs(60)));
        let p = s.pop(t1).unwrap();
        assert_eq!((p.item, p.queued_for), ("b1", Duration::from_secs(60)));
        assert_eq!(s.pop(t1).unwrap().item, "b2");
        assert_eq!(s.stats().popped.bulk, 2);
    }

    #[test]
    fn held_class_earns_no_credit() {
        let now = Instant::now();
        let mut s = sched();
        for i in 0..100 {
            s.push(Priority::Interactive, i, Q, now).unwrap();
            s.push(Priority::Bulk, i, Q, now).unwrap();
        }
        s.set_hold(Priority::Bulk, true);
        assert_eq!(classes_of(&mut s, now, 40), vec![Priority::Interactive; 40]);
        s.set_hold(Priority::Bulk, false);
        // Released after 5 rounds, Bulk joins the current one with one
        // round's credit, not the five it missed.
        let next = classes_of(&mut s, now, 10);
        assert_eq!(next.iter().filter(|c| **c == Priority::Bulk).count(), 2);
    }

    #[test]
    fn lengths_bytes_and_oldest_wait() {
        let t0 = Instant::now();
        let mut s = sched();
        assert_eq!(s.oldest_wait(t0), None);
        s.push(Priority::Bulk, 1, 300, t0).unwrap();
        s.push(Priority::Interactive, 2, 200, t0 + Duration::from_secs(1))
            .unwrap();
        s.push(Priority::Ephemeral, 3, 50, t0 + Duration::from_secs(1))
            .unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s.len_of(Priority::Bulk), 1);
        assert_eq!(s.len_of(Priority::Control), 0);
        assert_eq!(s.queued_bytes(), 550);
        assert_eq!(s.queued_bytes_of(Priority::Interactive), 200);
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(s.oldest_wait(t2), Some(Duration::from_secs(2)));
        assert_eq!(s.pop(t2).unwrap().item, 2);
        assert_eq!(s.pop(t2).unwrap().item, 1);
        assert_eq!(s.oldest_wait(t2), Some(Duration::from_secs(1)));
        // An expired ephemeral item is not head-of-line delay.
        assert_eq!(s.oldest_wait(t0 + Duration::from_secs(10)), None);
        assert_eq!(s.queued_bytes(), 50);
    }

    #[test]
    fn drain_returns_everything_in_order() {
        let now = Instant::now();
        let mut s = sched();
        s.set_hold(Priority::Bulk, true);
        s.push(Priority::Bulk, "b", 1, now).unwrap();
        s.push(Priority::Control, "c1", 1, now).unwrap();
        s.push(Priority::Ephemeral, "e", 1, now).unwrap();
        s.push(Priority::Control, "c2", 1, now).unwrap();
        let drained: Vec<_> = s.drain(now).into_iter().map(|p| p.item).collect();
        assert_eq!(drained, vec!["c1", "c2", "b", "e"]);
        assert!(s.is_empty());
        assert_eq!(s.queued_bytes(), 0);
    }

    #[test]
    fn out_of_range_config_is_raised() {
        let now = Instant::now();
        let config = SchedulerConfig {
            weights: PerClass::default(),
            max_queued: PerClass::default(),
            quantum_bytes: 0,
            ephemeral_max_age: Duration::ZERO,
        };
        let mut s = Scheduler::new(config);
        assert_eq!(s.config().quantum_bytes, 1);
        assert_eq!(*s.config().weights.get(Priority::Bulk), 1);
        s.push(Priority::Bulk, 1, 5, now).unwrap();
        assert!(s.push(Priority::Bulk, 2, 5, now).is_err());
        s.push(Priority::Group, 3, 5, now).unwrap();
        assert_eq!(s.pop(now).unwrap().item, 3);
        assert_eq!(s.pop(now).unwrap().item, 1);
    }

    #[test]
    fn time_going_backwards_does_not_panic() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut s = sched();
        s.push(Priority::Ephemeral, 1, 10, t0).unwrap();
        s.push(Priority::Group, 2, 10, t0).unwrap();
        let earlier = t0 - Duration::from_secs(5);
        assert_eq!(s.oldest_wait(earlier), Some(Duration::ZERO));
        assert_eq!(s.pop(earlier).unwrap().queued_for, Duration::ZERO);
        assert_eq!(s.pop(earlier).unwrap().item, 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(usize, usize),
        Pop,
        Hold(usize, bool),
        Shed,
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..5usize, 0..5000usize).prop_map(|(c, b)| Op::Push(c, b)),
            4 => Just(Op::Pop),
            1 => (0..5usize, any::<bool>()).prop_map(|(c, h)| Op::Hold(c, h)),
            1 => Just(Op::Shed),
            1 => (0..2000u64).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Every accepted item comes out exactly once: non-ephemeral ones
        /// popped or drained, FIFO per class; ephemeral ones popped,
        /// drained, shed or handed back as dropped. Queues stay bounded and
        /// byte totals consistent.
        #[test]
        fn no_item_is_lost(ops in proptest::collection::vec(op(), 0..400)) {
            let config = SchedulerConfig {
                max_queued: PerClass::from_fn(|_| 8),
                ..SchedulerConfig::default()
            };
            let mut s = Scheduler::new(config);
            let mut now = Instant::now();
            let mut next_id = 0u64;
            let mut accepted: PerClass<Vec<u64>> = PerClass::default();
            let mut out: PerClass<Vec<u64>> = PerClass::default();
            let mut ephemeral_gone = Vec::new();
            for op in ops {
                match op {
                    Op::Push(c, bytes) => {
                        let class = Priority::ALL[c];
                        next_id += 1;
                        match s.push(class, next_id, bytes, now) {
                            Ok(()) => accepted.get_mut(class).push(next_id),
                            Err(r) => {
                                prop_assert!(class != Priority::Ephemeral);
                                prop_assert_eq!(r.item, next_id);
                            }
                        }
                    }
                    Op::Pop => {
                        if let Some(p) = s.pop(now) {
                            prop_assert!(!s.is_held(p.class));
                            if p.class == Priority::Ephemeral {
                                prop_assert!(p.queued_for <= DEFAULT_EPHEMERAL_MAX_AGE);
                            }
                            out.get_mut(p.class).push(p.item);
                        }
                    }
                    Op::Hold(c, h) => s.set_hold(Priority::ALL[c], h),
                    Op::Shed => ephemeral_gone.extend(s.shed_ephemeral()),
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                }
                ephemeral_gone.extend(s.take_dropped());
                for class in Priority::ALL {
                    prop_assert!(s.len_of(class) <= 8);
                }
            }
            for p in s.drain(now) {
                out.get_mut(p.class).push(p.item);
            }
            ephemeral_gone.extend(s.take_dropped());
            prop_assert_eq!(s.queued_bytes(), 0);
            prop_assert_eq!(s.stats().dropped_untaken, 0);
            let st = *s.stats();
            prop_assert_eq!(
                ephemeral_gone.len() as u64,
                st.dropped_ephemeral + st.expired_ephemeral + st.shed_ephemeral
            );
            for class in Priority::ALL {
                if class == Priority::Ephemeral {
                    let mut all = out.ephemeral.clone();
                    all.extend(&ephemeral_gone);
                    all.sort_unstable();
                    prop_assert_eq!(&all, accepted.get(class));
                } else {
                    prop_assert_eq!(out.get(class), accepted.get(class));
                }
            }
        }
    }
}
