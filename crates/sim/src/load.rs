//! Load: a network of real nodes driven at a target message rate.
//!
//! The generator is open-loop: message `k` is due at `k / rate` seconds into
//! the window, whatever happened to the ones before it, so a saturated
//! network shows as a delivered rate below the offered one and as growing
//! latency, not as a slower generator. Each message is one of the kinds of
//! the mix, in turn: direct, multi-hop, onion, a group post, or a message
//! to a peer that is offline (it waits in the recipient's mailboxes until
//! the recipient returns).
//!
//! Used by `peercomm bench load` and by the end-to-end test.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peercomm_node::{GroupId, MessageId, NodeEvent, NodeHandle, Route, SendOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};

use crate::scale::{cpu_secs, peak_rss_kib, rss_kib};
use crate::{
    test_config, wait_joined, wait_until, SimError, SimNet, SimOptions, SimTransport, Topology,
};

/// How a message of the load travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadKind {
    /// Over a direct connection.
    Direct,
    /// Hop by hop through other peers.
    Multihop,
    /// Through 3 onion relays.
    Onion,
    /// A post to an MLS group, to every other member.
    Group,
    /// To a peer that is offline: deposited at its mailboxes, delivered
    /// when it returns.
    Offline,
}

impl LoadKind {
    /// Every kind, in report order.
    pub const ALL: [LoadKind; 5] = [
        LoadKind::Direct,
        LoadKind::Multihop,
        LoadKind::Onion,
        LoadKind::Group,
        LoadKind::Offline,
    ];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            LoadKind::Direct => "direct",
            LoadKind::Multihop => "multihop",
            LoadKind::Onion => "onion",
            LoadKind::Group => "group",
            LoadKind::Offline => "offline",
        }
    }

    fn route(self) -> Option<Route> {
        match self {
            LoadKind::Direct => Some(Route::Direct),
            LoadKind::Multihop => Some(Route::Multihop),
            LoadKind::Onion => Some(Route::Onion),
            LoadKind::Group | LoadKind::Offline => None,
        }
    }
}

impl FromStr for LoadKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LoadKind::ALL
            .into_iter()
            .find(|k| k.name() == s.trim())
            .ok_or_else(|| {
                format!("unknown message kind {s:?}: use direct, multihop, onion, group or offline")
            })
    }
}

/// Parses a mix such as `direct,onion,group`: each kind at most once.
pub fn parse_mix(s: &str) -> Result<Vec<LoadKind>, String> {
    let mut mix = Vec::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let kind: LoadKind = part.parse()?;
        if mix.contains(&kind) {
            return Err(format!("{} is in the mix twice", kind.name()));
        }
        mix.push(kind);
    }
    if mix.is_empty() {
        return Err(
            "the mix is empty: name at least one of direct, multihop, onion, group, offline".into(),
        );
    }
    Ok(mix)
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Nodes in the network.
    pub nodes: usize,
    /// Messages per second offered, all kinds together.
    pub rate: f64,
    /// How long messages are offered.
    pub duration: Duration,
    /// The kinds, taken in turn.
    pub mix: Vec<LoadKind>,
    /// Body size of each message, bytes.
    pub body_bytes: usize,
    /// Members of the group (group traffic only): at most the nodes that
    /// stay online.
    pub group_size: usize,
    /// After the window, how long deliveries are waited for at most.
    pub drain: Duration,
    /// The transport.
    pub transport: SimTransport,
    /// Seed for every random choice.
    pub seed: u64,
    /// How often a progress line is printed.
    pub progress_every: Duration,
    /// Messages being submitted at once at most; the generator skips (and
    /// counts) a message due while this many are still being accepted.
    pub max_in_flight: usize,
    /// With group and offline traffic: the nodes that go offline are group
    /// members too, and catch up on what they missed when they return.
    pub members_away: bool,
    /// With group traffic: at half time the owner invites a node that was
    /// not a member (a commit every member applies, away ones on return).
    pub add_member: bool,
    /// One online node's link (both directions) paced to this many bytes
    /// per second: a congested link.
    pub congested_link: Option<u64>,
    /// The nodes' group commit (`delivery.group_commit`); off, every
    /// acknowledging write commits on its own.
    pub group_commit: bool,
}

impl LoadOptions {
    /// `nodes` nodes at `rate` messages per second for `duration`, every kind.
    pub fn new(nodes: usize, rate: f64, duration: Duration, seed: u64) -> Self {
        Self {
            nodes,
            rate,
            duration,
            mix: vec![
                LoadKind::Direct,
                LoadKind::Onion,
                LoadKind::Group,
                LoadKind::Offline,
            ],
            body_bytes: 256,
            group_size: 20,
            drain: Duration::from_secs(60),
            transport: SimTransport::Tcp,
            seed,
            progress_every: Duration::from_secs(5),
            max_in_flight: 4096,
            members_away: true,
            add_member: false,
            congested_link: None,
            group_commit: true,
        }
    }

    /// Nodes that go offline (offline traffic only): two cohorts, one away
    /// in the first half of the window, the other in the second.
    fn away(&self) -> usize {
        if self.mix.contains(&LoadKind::Offline) {
            (self.nodes / 10).max(2)
        } else {
            0
        }
    }

    fn check(&self) -> Result<(), SimError> {
        let fail = |reason: String| Err(SimError::Node { index: 0, reason });
        if self.mix.is_empty() {
            return fail("the mix is empty".into());
        }
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            return fail(format!("the rate must be above 0 (got {})", self.rate));
        }
        // Onion needs a sender, 3 relays and a recipient; offline needs two
        // cohorts and enough online peers to hold their mailboxes.
        let least = if self.mix.contains(&LoadKind::Offline) {
            8
        } else if self.mix.contains(&LoadKind::Onion) {
            5
        } else {
            2
        };
        if self.nodes < least {
            return fail(format!(
                "this mix needs at least {least} nodes (got {})",
                self.nodes
            ));
        }
        Ok(())
    }
}

/// Percentiles of a set of latencies, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Samples.
    pub samples: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Latency {
    /// The percentiles of `values` (empty: all zero).
    pub fn of(values: &[f64]) -> Self {
        let v = crate::scale::sorted(values);
        let at = |q: f64| crate::scale::quantile(&v, q);
        Self {
            samples: v.len(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: v.last().copied().unwrap_or(0.0),
        }
    }
}

/// What one kind of message did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KindReport {
    /// The kind.
    pub kind: String,
    /// Messages accepted by their sender.
    pub sent: usize,
    /// Messages the sender refused (each is an error).
    pub refused: usize,
    /// Messages delivered (a group post: to every other member).
    pub delivered: usize,
    /// Messages delivered within the window.
    pub delivered_in_window: usize,
    /// Group only: times a member's epoch went backwards (commits must
    /// apply in epoch order).
    pub epoch_regressions: usize,
    /// Copies expected at recipients (a group post: one per other member).
    pub copies_expected: usize,
    /// Copies that arrived.
    pub copies: usize,
    /// Copies that arrived more than once.
    pub duplicates: usize,
    /// Time from the send to each copy's arrival.
    pub latency: Latency,
    /// Offline only: time from the recipient's return to each arrival.
    pub after_return: Option<Latency>,
}

/// What a run measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LoadReport {
    /// Nodes in the network.
    pub nodes: usize,
    /// The kinds in the mix.
    pub mix: Vec<String>,
    /// Target rate, messages per second.
    pub target_rate: f64,
    /// The window, seconds.
    pub duration_s: f64,
    /// Messages offered per second over the window (accepted by senders).
    pub offered: f64,
    /// Messages delivered per second over the window (a group post counts
    /// once it has reached every other member; an offline message, whose
    /// recipient may return only at the end of the window, once it has
    /// arrived at all).
    pub delivered: f64,
    /// Messages accepted by senders.
    pub offered_messages: usize,
    /// Of those, delivered by the end of the drain.
    pub delivered_messages: usize,
    /// Copies that never arrived (a group post missing at one member is one).
    pub lost: usize,
    /// Copies that arrived more than once.
    pub duplicates: usize,
    /// Sends refused, messages skipped because too many were being
    /// submitted, events a watcher missed.
    pub errors: usize,
    /// Messages skipped by the generator (too many in flight).
    pub skipped: usize,
    /// Latency over every copy of every kind but offline (whose latency is
    /// the recipient's time away; see its own row).
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Per kind.
    pub kinds: Vec<KindReport>,
    /// CPU seconds the whole process (every node) used from the first send
    /// to the end of the drain.
    pub cpu_secs: f64,
    /// Of the two cores' time over the window, how much was used (1.0: both
    /// cores busy the whole window).
    pub cpu_busy: f64,
    /// CPU seconds per 1,000 messages accepted.
    pub cpu_secs_per_1000: f64,
    /// The same, less what the network uses idle over as long (measured
    /// for a few seconds before the first send): the cost of the messages.
    pub cpu_secs_per_1000_net: f64,
    /// Of the two cores, how much the idle network kept busy.
    pub idle_cpu_busy: f64,
    /// Peak resident memory of the process, KiB.
    pub peak_rss_kib: u64,
    /// That, per node.
    pub peak_rss_kib_per_node: f64,
    /// Seconds the network took to form (and the group, if any).
    pub setup_s: f64,
    /// Seconds the drain took.
    pub drain_s: f64,
    /// Members of the group.
    pub group_members: usize,
    /// Members that were offline for part of the window.
    pub group_members_away: usize,
    /// Whether the node invited at half time became a member (None: none
    /// was invited).
    pub member_added: Option<bool>,
    /// The node on the congested link, if any.
    pub congested_node: Option<usize>,
    /// Whether the nodes ran group commit.
    pub group_commit: bool,
    /// Commits of the nodes' group committers from the first send to the
    /// end of the drain (one per write with group commit off).
    pub store_commits: u64,
    /// Acknowledging writes (messages accepted, envelopes stored, receipts
    /// recorded) in those commits.
    pub store_commit_writes: u64,
    /// Seed of every random choice.
    pub seed: u64,
}

fn err(e: impl std::fmt::Display) -> SimError {
    SimError::Node {
        index: 0,
        reason: e.to_string(),
    }
}

/// An arrival seen by a watcher.
enum Arrival {
    /// A direct, multi-hop, onion or offline message.
    Message { id: MessageId, at: Instant },
    /// A group post, at its local position in `node`'s history.
    Group { node: usize, seq: i64, at: Instant },
    /// `node` is now in this epoch of the group.
    Epoch { node: usize, epoch: u64 },
    /// A watcher fell behind and missed this many events.
    Missed(u64),
}

/// Arrivals gathered from the watchers.
#[derive(Default)]
struct Collected {
    /// Direct, multi-hop, onion and offline messages: each arrival.
    messages: HashMap<MessageId, Vec<Instant>>,
    /// Group posts by member and history position: the first arrival.
    posts: HashMap<(usize, i64), Instant>,
    /// Each member's latest epoch.
    epochs: HashMap<usize, u64>,
    /// Times a member's epoch went backwards.
    regressions: usize,
    /// Events the watchers missed.
    missed: u64,
}

impl Collected {
    /// Takes what is waiting in `rx`; returns how many arrivals that was.
    fn take(&mut self, rx: &mut mpsc::UnboundedReceiver<Arrival>) -> usize {
        let mut n = 0;
        while let Ok(a) = rx.try_recv() {
            n += 1;
            match a {
                Arrival::Message { id, at } => self.messages.entry(id).or_default().push(at),
                Arrival::Group { node, seq, at } => {
                    self.posts.entry((node, seq)).or_insert(at);
                }
                Arrival::Epoch { node, epoch } => {
                    let last = self.epochs.entry(node).or_insert(epoch);
                    if epoch < *last {
                        self.regressions += 1;
                    }
                    *last = epoch.max(*last);
                }
                Arrival::Missed(k) => self.missed += k,
            }
        }
        n
    }
}

/// Forwards `handle`'s arrivals (of `group`, for group posts) to `tx`.
fn watch(
    node: usize,
    handle: &NodeHandle,
    group: Option<GroupId>,
    tx: mpsc::UnboundedSender<Arrival>,
) -> tokio::task::JoinHandle<()> {
    let mut events = handle.subscribe();
    tokio::spawn(async move {
        loop {
            let arrival = match events.recv().await {
                Ok(NodeEvent::MessageReceived { id, .. }) => Arrival::Message {
                    id,
                    at: Instant::now(),
                },
                Ok(NodeEvent::GroupMessage { group: g, seq, .. }) if Some(g) == group => {
                    Arrival::Group {
                        node,
                        seq,
                        at: Instant::now(),
                    }
                }
                Ok(NodeEvent::GroupChanged {
                    group: g, epoch, ..
                }) if Some(g) == group => Arrival::Epoch { node, epoch },
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => Arrival::Missed(n),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            };
            if tx.send(arrival).is_err() {
                break;
            }
        }
    })
}

/// A message accepted by its sender.
#[derive(Debug, Clone)]
struct Sent {
    kind: LoadKind,
    /// The sender.
    from: usize,
    /// The recipient (not for group posts).
    to: usize,
    at: Instant,
}

/// What the generator recorded.
#[derive(Default)]
struct Ledger {
    /// Direct, multi-hop, onion and offline messages by id.
    messages: HashMap<MessageId, Sent>,
    /// Group posts by id.
    posts: HashMap<String, Sent>,
    refused: HashMap<LoadKind, usize>,
    first_refusal: Option<String>,
}

/// Who plays which part.
struct Cast {
    /// Nodes that never go offline: every sender and every recipient of
    /// non-offline traffic.
    online: Vec<usize>,
    /// Offline cohorts: the first is away in the first half of the window,
    /// the second in the second half.
    cohorts: [Vec<usize>; 2],
    /// Group members; the first (the owner) and the senders are online.
    members: Vec<usize>,
    /// Of them, those that go offline.
    members_away: usize,
    /// A node invited at half time.
    joiner: Option<usize>,
    /// The node on the congested link.
    congested: Option<usize>,
}

fn cast(options: &LoadOptions, rng: &mut StdRng) -> Cast {
    let mut order: Vec<usize> = (0..options.nodes).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.gen_range(0..=i));
    }
    let away = options.away();
    let online: Vec<usize> = order[away..].to_vec();
    let first: Vec<usize> = order[..away / 2].to_vec();
    let second: Vec<usize> = order[away / 2..away].to_vec();
    let mut members = Vec::new();
    let mut members_away = 0;
    let mut joiner = None;
    if options.mix.contains(&LoadKind::Group) {
        let size = options.group_size.clamp(2, options.nodes);
        let from_online = if options.members_away {
            members_away = away.min(size - 2);
            size - members_away
        } else {
            size.min(online.len())
        };
        members.extend_from_slice(&online[..from_online.min(online.len())]);
        members.extend_from_slice(&order[..members_away]);
        if options.add_member {
            joiner = online.iter().copied().find(|i| !members.contains(i));
        }
    }
    let congested = options.congested_link.and_then(|_| {
        online
            .iter()
            .rev()
            .copied()
            .find(|i| members.first() != Some(i))
    });
    Cast {
        online,
        cohorts: [first, second],
        members,
        members_away,
        joiner,
        congested,
    }
}

/// Runs the load on a fresh network. `progress` gets a line now and then.
pub async fn load(
    options: &LoadOptions,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<LoadReport, SimError> {
    options.check()?;
    let mut sim = SimOptions::new(options.nodes, Topology::Random(3.min(options.nodes - 1)));
    sim.seed = options.seed;
    sim.transport = options.transport;
    sim.config = test_config();
    // The product's routing-table refresh, not the tests' 30 s: N nodes on
    // two cores each walking their buckets every 30 s is load of its own.
    sim.config.dht.refresh_interval = peercomm_node::Config::default().dht.refresh_interval;
    sim.config.delivery.group_commit = options.group_commit;
    let mut net = SimNet::start(sim).await?;
    let result = run(&mut net, options, progress).await;
    net.shutdown().await;
    result
}

/// Onion senders need relays: waits until every online node knows enough.
async fn relays_known(net: &SimNet, who: &[usize]) -> Result<(), SimError> {
    for &i in who {
        let h = net.handle(i).clone();
        wait_until(
            Duration::from_secs(60),
            &format!("node {i} knows onion relays"),
            || {
                let h = h.clone();
                async move { h.onion_status().await.is_ok_and(|s| s.relays_known >= 3) }
            },
        )
        .await?;
    }
    Ok(())
}

/// Two distinct entries of `from`.
fn pair(from: &[usize], rng: &mut StdRng) -> (usize, usize) {
    let a = rng.gen_range(0..from.len());
    let mut b = rng.gen_range(0..from.len() - 1);
    if b >= a {
        b += 1;
    }
    (from[a], from[b])
}

async fn run(
    net: &mut SimNet,
    options: &LoadOptions,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<LoadReport, SimError> {
    let setup = Instant::now();
    net.introduce_all().await?;
    wait_joined(net, Duration::from_secs(120)).await?;
    let mut rng = StdRng::seed_from_u64(options.seed);
    let cast = cast(options, &mut rng);
    if let (Some(phone), Some(rate)) = (cast.congested, options.congested_link) {
        // A new port: nobody knows the slow node's address until it
        // publishes it again.
        net.stop(phone).await?;
        net.config_mut(phone).network.link_rate_bytes_per_sec = rate;
        net.restart_on_new_port(phone).await?;
        for i in 0..net.len() {
            if i != phone {
                net.connect(phone, i).await.ok();
            }
        }
        wait_joined(net, Duration::from_secs(120)).await?;
    }
    if options.mix.contains(&LoadKind::Onion) {
        relays_known(net, &cast.online).await?;
    }
    let group = if cast.members.len() >= 2 {
        progress(&format!("forming a group of {}", cast.members.len()));
        let g = crate::groups::form(net, cast.members[0], &cast.members[1..], 10).await?;
        // A few heartbeats for the mesh to settle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        Some(g)
    } else {
        None
    };
    let setup_s = setup.elapsed().as_secs_f64();
    progress(&format!(
        "network of {} up in {setup_s:.1}s; offering {:.0} msg/s for {}s ({})",
        net.len(),
        options.rate,
        options.duration.as_secs_f64(),
        options
            .mix
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    ));

    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watchers: Vec<_> = (0..net.len())
        .map(|i| watch(i, net.handle(i), group, tx.clone()))
        .collect();

    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let in_flight = Arc::new(Semaphore::new(options.max_in_flight));
    let mut seen = Collected::default();

    // The idle network's own CPU use, to take out of the per-message cost.
    let idle_cpu0 = cpu_secs();
    let idle_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rate = (cpu_secs() - idle_cpu0) / idle_start.elapsed().as_secs_f64();
    seen.take(&mut rx);

    let cpu0 = cpu_secs();
    let commits0 = commit_counts(net);
    let start = Instant::now();
    let window_end = start + options.duration;
    let half = start + options.duration / 2;
    let mut returned: [Option<Instant>; 2] = [None, None];
    // The first cohort leaves now; the second at half time, when the
    // first returns; the second returns at the end of the window.
    for &i in &cast.cohorts[0] {
        net.stop(i).await?;
    }
    let mut phase = 0;
    let mut joining = None;
    // Senders of group posts: the members that never go offline.
    let posting: Vec<usize> = cast
        .members
        .iter()
        .copied()
        .filter(|m| cast.online.contains(m))
        .collect();
    let total = (options.rate * options.duration.as_secs_f64()).round() as usize;
    let mut skipped = 0usize;
    let mut next_progress = start + options.progress_every;
    let mut arrived_at_progress = 0usize;
    let mut arrived = 0usize;
    let body_base: Vec<u8> = (0..options.body_bytes).map(|_| rng.gen()).collect();
    for k in 0..total {
        let due = start + Duration::from_secs_f64(k as f64 / options.rate);
        if phase == 0 && due >= half {
            for &i in &cast.cohorts[1] {
                net.stop(i).await?;
            }
            for &i in &cast.cohorts[0] {
                net.restart(i).await?;
                watchers.push(watch(i, net.handle(i), group, tx.clone()));
            }
            returned[0] = Some(Instant::now());
            phase = 1;
            if let (Some(joiner), Some(g)) = (cast.joiner, group) {
                let owner = net.handle(cast.members[0]).clone();
                let peer = net.peer_id(joiner);
                joining = Some(tokio::spawn(async move {
                    crate::groups::invite(&owner, g, peer).await
                }));
            }
        }
        tokio::time::sleep_until(due.into()).await;
        arrived += seen.take(&mut rx);
        if Instant::now() >= next_progress {
            let secs = options.progress_every.as_secs_f64();
            progress(&format!(
                "t={:>4.0}s  offered {:>6} msgs  arrivals {:>6.0}/s  in flight {:>5}  skipped {}",
                start.elapsed().as_secs_f64(),
                k,
                (arrived - arrived_at_progress) as f64 / secs,
                options.max_in_flight - in_flight.available_permits(),
                skipped
            ));
            arrived_at_progress = arrived;
            next_progress += options.progress_every;
        }
        let kind = options.mix[k % options.mix.len()];
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        let (from, to) = match kind {
            LoadKind::Offline => {
                let cohort = &cast.cohorts[phase];
                let to = cohort[rng.gen_range(0..cohort.len())];
                (cast.online[rng.gen_range(0..cast.online.len())], to)
            }
            LoadKind::Group => (posting[rng.gen_range(0..posting.len())], 0),
            _ => pair(&cast.online, &mut rng),
        };
        let mut body = body_base.clone();
        let tag = format!("load {k} ");
        let n = tag.len().min(body.len());
        body[..n].copy_from_slice(&tag.as_bytes()[..n]);
        let handle = net.handle(from).clone();
        let recipient = net.peer_id(to);
        let ledger = ledger.clone();
        tokio::spawn(async move {
            let at = Instant::now();
            let sent = Sent { kind, from, to, at };
            let outcome = match (kind, group) {
                (LoadKind::Group, Some(g)) => handle
                    .group_send(g, body)
                    .await
                    .map(|m| {
                        let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
                        l.posts.insert(m.id, sent);
                    })
                    .map_err(|e| e.to_string()),
                _ => {
                    let opts = SendOptions {
                        route: kind.route(),
                        ..SendOptions::default()
                    };
                    handle
                        .send(recipient, body, opts)
                        .await
                        .map(|id| {
                            let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
                            l.messages.insert(id, sent);
                        })
                        .map_err(|e| e.to_string())
                }
            };
            if let Err(e) = outcome {
                let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
                *l.refused.entry(kind).or_default() += 1;
                l.first_refusal.get_or_insert(e);
            }
            drop(permit);
        });
    }
    tokio::time::sleep_until(window_end.into()).await;
    // The second cohort returns at the end of the window.
    for &i in &cast.cohorts[1] {
        net.restart(i).await?;
        watchers.push(watch(i, net.handle(i), group, tx.clone()));
    }
    if !cast.cohorts[1].is_empty() {
        returned[1] = Some(Instant::now());
    }
    // Every submission settles, then the deliveries are waited for.
    let _all = in_flight
        .acquire_many(options.max_in_flight as u32)
        .await
        .map_err(err)?;
    let drain_start = Instant::now();
    let drain_end = drain_start + options.drain;
    let (want_msgs, want_posts) = {
        let l = ledger.lock().unwrap_or_else(|p| p.into_inner());
        (l.messages.len(), l.posts.len())
    };
    let members = cast.members.len();
    let want_group = want_posts * members.saturating_sub(1);
    let mut next_progress = Instant::now() + options.progress_every;
    loop {
        seen.take(&mut rx);
        // Only the load's own messages count (a Welcome is a message too),
        // and only the members' copies (the node invited half-way has some).
        let got_msgs = {
            let l = ledger.lock().unwrap_or_else(|p| p.into_inner());
            l.messages
                .keys()
                .filter(|id| seen.messages.contains_key(id))
                .count()
        };
        // Group arrivals include each author's own post.
        let got_group = seen
            .posts
            .keys()
            .filter(|(node, _)| cast.members.contains(node))
            .count()
            .saturating_sub(want_posts);
        if (got_msgs >= want_msgs && got_group >= want_group) || Instant::now() >= drain_end {
            break;
        }
        if Instant::now() >= next_progress {
            progress(&format!(
                "draining: {got_msgs}/{want_msgs} messages, {got_group}/{want_group} group copies"
            ));
            next_progress += options.progress_every;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain_s = drain_start.elapsed().as_secs_f64();
    let member_added = match (joining, cast.joiner, group) {
        (Some(task), Some(joiner), Some(g)) => {
            let invited = matches!(task.await, Ok(Ok(())));
            let h = net.handle(joiner).clone();
            let active = wait_until(Duration::from_secs(30), "the new member active", || {
                let h = h.clone();
                async move {
                    h.group(g)
                        .await
                        .is_ok_and(|i| i.state == peercomm_node::GroupState::Active)
                }
            })
            .await
            .is_ok();
            Some(invited && active)
        }
        _ => None,
    };
    let cpu = cpu_secs() - cpu0;
    let commits = commit_counts(net);
    let (store_commits, store_commit_writes) = (
        commits.0.saturating_sub(commits0.0),
        commits.1.saturating_sub(commits0.1),
    );
    let wall = start.elapsed().as_secs_f64();
    for w in watchers {
        w.abort();
    }
    drop(tx);
    seen.take(&mut rx);

    let ledger = std::mem::take(&mut *ledger.lock().unwrap_or_else(|p| p.into_inner()));
    // Arrivals a watcher missed (a lagging subscriber, or a restarted node
    // that drained its mailboxes before it was watched again) are found in
    // the recipient's inbox, without a latency.
    let mut found_late: HashSet<MessageId> = HashSet::new();
    for (id, sent) in &ledger.messages {
        if !seen.messages.contains_key(id) {
            if let Some(h) = net.try_handle(sent.to) {
                if h.incoming(*id).await.ok().flatten().is_some() {
                    found_late.insert(*id);
                }
            }
        }
    }
    // Group posts: map each member's history positions to post ids.
    let mut group_copies: HashMap<String, Vec<(usize, Option<Instant>)>> = HashMap::new();
    if let Some(g) = group {
        for &m in &cast.members {
            let h = net.handle(m);
            let mut after = 0;
            loop {
                let page = h.group_history(g, after, Some(500)).await.map_err(err)?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for msg in page {
                    group_copies
                        .entry(msg.id)
                        .or_default()
                        .push((m, seen.posts.get(&(m, msg.seq)).copied()));
                }
            }
        }
    }

    let mut kinds = Vec::new();
    let mut all_latencies = Vec::new();
    let (mut delivered_total, mut in_window_total, mut lost, mut duplicates) = (0, 0, 0, 0);
    for kind in options.mix.iter().copied() {
        let mut r = KindReport {
            kind: kind.name().into(),
            refused: ledger.refused.get(&kind).copied().unwrap_or(0),
            ..KindReport::default()
        };
        let mut lat = Vec::new();
        let mut after_return = Vec::new();
        if kind == LoadKind::Group {
            r.epoch_regressions = seen.regressions;
            let mut missing: HashMap<usize, usize> = HashMap::new();
            for (id, sent) in ledger.posts.iter() {
                r.sent += 1;
                r.copies_expected += members - 1;
                let copies = group_copies.get(id).map(Vec::as_slice).unwrap_or(&[]);
                let mut holders: HashSet<usize> = HashSet::new();
                let mut last: Option<Instant> = Some(sent.at);
                for (member, at) in copies {
                    if !holders.insert(*member) {
                        r.duplicates += 1;
                        continue;
                    }
                    // The author's own copy is not a delivery.
                    if *member == sent.from {
                        continue;
                    }
                    match at {
                        Some(t) => {
                            lat.push(t.saturating_duration_since(sent.at).as_secs_f64() * 1e3);
                            last = last.map(|l| l.max(*t));
                        }
                        None => last = None,
                    }
                }
                let got = holders.iter().filter(|m| **m != sent.from).count();
                for m in cast.members.iter().filter(|m| !holders.contains(m)) {
                    *missing.entry(*m).or_default() += 1;
                }
                r.copies += got;
                if got + 1 >= members && got > 0 {
                    r.delivered += 1;
                    if last.is_some_and(|t| t <= window_end) {
                        r.delivered_in_window += 1;
                    }
                }
            }
            for (m, n) in missing {
                let away = cast.cohorts.iter().position(|c| c.contains(&m));
                progress(&format!(
                    "member {m} lacks {n} posts (away: {away:?}, congested: {})",
                    cast.congested == Some(m)
                ));
            }
        } else {
            for (id, sent) in ledger.messages.iter().filter(|(_, s)| s.kind == kind) {
                r.sent += 1;
                r.copies_expected += 1;
                let times = seen.messages.get(id).map(Vec::as_slice).unwrap_or(&[]);
                if let Some(first) = times.first() {
                    r.copies += 1;
                    r.delivered += 1;
                    r.duplicates += times.len() - 1;
                    // An offline message waits for its recipient's return,
                    // which for the second cohort is the end of the window:
                    // it counts as on time once delivered at all.
                    if *first <= window_end || kind == LoadKind::Offline {
                        r.delivered_in_window += 1;
                    }
                    lat.push(first.saturating_duration_since(sent.at).as_secs_f64() * 1e3);
                    if kind == LoadKind::Offline {
                        let cohort = usize::from(!cast.cohorts[0].contains(&sent.to));
                        if let Some(back) = returned[cohort] {
                            after_return
                                .push(first.saturating_duration_since(back).as_secs_f64() * 1e3);
                        }
                    }
                } else if found_late.contains(id) {
                    r.copies += 1;
                    r.delivered += 1;
                }
            }
        }
        r.latency = Latency::of(&lat);
        if kind == LoadKind::Offline {
            r.after_return = Some(Latency::of(&after_return));
        }
        // An offline message's latency is its recipient's time away: it
        // has its own row and stays out of the figures over all kinds.
        if kind != LoadKind::Offline {
            all_latencies.extend(lat);
        }
        delivered_total += r.delivered;
        in_window_total += r.delivered_in_window;
        lost += r.copies_expected.saturating_sub(r.copies);
        duplicates += r.duplicates;
        kinds.push(r);
    }
    let offered_messages = ledger.messages.len() + ledger.posts.len();
    let refused: usize = ledger.refused.values().sum();
    if let Some(why) = &ledger.first_refusal {
        progress(&format!("{refused} sends refused; the first: {why}"));
    }
    let secs = options.duration.as_secs_f64();
    let all = Latency::of(&all_latencies);
    let peak = peak_rss_kib().max(rss_kib());
    Ok(LoadReport {
        nodes: options.nodes,
        mix: options.mix.iter().map(|k| k.name().to_string()).collect(),
        target_rate: options.rate,
        duration_s: secs,
        offered: offered_messages as f64 / secs,
        delivered: in_window_total as f64 / secs,
        offered_messages,
        delivered_messages: delivered_total,
        lost,
        duplicates,
        errors: refused + skipped + seen.missed as usize,
        skipped,
        p50_ms: all.p50_ms,
        p99_ms: all.p99_ms,
        p999_ms: all.p999_ms,
        kinds,
        cpu_secs: cpu,
        cpu_busy: cpu / (wall * 2.0),
        cpu_secs_per_1000: cpu * 1000.0 / offered_messages.max(1) as f64,
        cpu_secs_per_1000_net: (cpu - idle_rate * wall).max(0.0) * 1000.0
            / offered_messages.max(1) as f64,
        idle_cpu_busy: idle_rate / 2.0,
        peak_rss_kib: peak,
        peak_rss_kib_per_node: peak as f64 / options.nodes as f64,
        setup_s,
        drain_s,
        group_members: members,
        group_members_away: cast.members_away,
        member_added,
        congested_node: cast.congested,
        group_commit: options.group_commit,
        store_commits,
        store_commit_writes,
        seed: options.seed,
    })
}

/// Group-committer rounds and the writes they ran, summed over the running
/// nodes (a node restarted in between counts from its restart).
fn commit_counts(net: &SimNet) -> (u64, u64) {
    (0..net.len())
        .filter(|&i| net.is_running(i))
        .map(|i| net.handle(i).stats())
        .fold((0, 0), |(r, w), s| {
            (r + s.store_commit_rounds, w + s.store_commit_jobs)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_parses_and_names_what_is_wrong() {
        assert_eq!(
            parse_mix("direct, onion,group").unwrap(),
            vec![LoadKind::Direct, LoadKind::Onion, LoadKind::Group]
        );
        assert!(parse_mix("direct,direct").unwrap_err().contains("twice"));
        assert!(parse_mix("carrier-pigeon").unwrap_err().contains("unknown"));
        assert!(parse_mix(" , ").unwrap_err().contains("empty"));
    }

    #[test]
    fn percentiles_are_order_statistics() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        let l = Latency::of(&v);
        assert_eq!(l.samples, 1000);
        assert_eq!(l.p50_ms, 501.0);
        assert_eq!(l.p99_ms, 990.0);
        assert_eq!(l.p999_ms, 999.0);
        assert_eq!(l.max_ms, 1000.0);
        assert_eq!(Latency::of(&[]), Latency::default());
    }

    #[test]
    fn the_cast_keeps_senders_online_and_splits_the_away_nodes() {
        let mut o = LoadOptions::new(20, 10.0, Duration::from_secs(1), 1);
        o.group_size = 50;
        let c = cast(&o, &mut StdRng::seed_from_u64(1));
        assert_eq!(c.cohorts[0].len() + c.cohorts[1].len(), 2);
        assert_eq!(c.online.len(), 18);
        for away in c.cohorts.iter().flatten() {
            assert!(!c.online.contains(away));
        }
        assert_eq!(c.members.len(), 20, "the group is capped at the nodes");
        assert_eq!(c.members_away, 2, "the away nodes are members too");
        assert!(c.online.contains(&c.members[0]), "the owner stays online");
        o.members_away = false;
        o.add_member = true;
        o.group_size = 10;
        let c = cast(&o, &mut StdRng::seed_from_u64(1));
        assert_eq!((c.members.len(), c.members_away), (10, 0));
        let joiner = c.joiner.expect("a node to invite");
        assert!(c.online.contains(&joiner) && !c.members.contains(&joiner));
        o.mix = vec![LoadKind::Direct];
        let c = cast(&o, &mut StdRng::seed_from_u64(1));
        assert!(c.cohorts.iter().all(Vec::is_empty) && c.members.is_empty());
        assert!(LoadOptions::new(4, 1.0, Duration::from_secs(1), 1)
            .check()
            .is_err());
    }
}
