//! The bandwidth benchmark: one fixed, seeded chat workload played on a
//! fresh simulated network once per configuration of bandwidth adaptation
//! (every mechanism off, each one alone, all on), counting the bytes every
//! node puts on the wire, whether every message arrived, and how long
//! interactive messages take to cross a congested link.
//!
//! Used by `peercomm bench bandwidth` (every configuration) and the demo's
//! bandwidth row (off and all on, over a short window).
//!
//! # What the workload models
//!
//! A dozen people ([`BandwidthOptions::nodes`]) who chat, node 0 being
//! everyone's DHT bootstrap peer. The last node is a **phone** on a slow
//! access link: the simulated transport throttles its whole link, both
//! directions, to [`BandwidthOptions::link_rate_bytes_per_sec`] (24 KiB/s by
//! default, which the burst below overruns for several seconds when nothing
//! adapts). Before measuring, node 1 forms an MLS group of
//! [`BandwidthOptions::members`] nodes (the phone and both nodes that will
//! go away among them) and the mesh settles. Then, over a window of fixed
//! length ([`BandwidthOptions::window`]) — the same length in every run, so
//! keepalives, DHT upkeep and other background traffic weigh the same — a
//! schedule computed from the seed alone ([`workload`]) plays:
//!
//! - **1:1 chat** in [`CHAT_PAIRS`] conversations (two involve the phone,
//!   one each of the nodes that go away), a message every
//!   [`CHAT_GAP_MEAN`] on average per conversation, each preceded by one to
//!   three **typing** signals; chat is `interactive`, typing `ephemeral`;
//! - **presence** (`ephemeral`) from every node to each of its contacts every
//!   [`PRESENCE_EVERY`];
//! - **group posts** from random members every [`GROUP_GAP_MEAN`] on
//!   average, and [`GROUP_PHOTOS`] incompressible "photos" in the group;
//! - **incompressible payloads** (`bulk`, 4–16 KiB) between random pairs and,
//!   at 40% of the window, a burst of [`PHONE_BURST`] of them to the phone,
//!   followed by [`PHONE_URGENT`] interactive messages to the phone while
//!   its link is loaded: their latency is the "interactive latency under
//!   congestion";
//! - **two members going offline** at 30% of the window and returning at 70%
//!   (at a new address, as a phone that changed networks does);
//!   messages sent to them meanwhile (at least one each) must arrive through
//!   mailboxes, retries and group catch-up.
//!
//! After the window every non-ephemeral direct message must come back
//! `delivered` and every group post must be in every member's history
//! (within [`BandwidthOptions::drain`]); what never does is **lost**.
//! Ephemeral messages may be shed by design and are only counted. Bytes are
//! the sum over all nodes of what they wrote to their sockets (handshakes,
//! Noise and Yamux included) from the start of the window until everything
//! arrived, but never less than the whole window.
//!
//! # The text
//!
//! Chat and group texts come from [`crate::corpus::chat_messages`], a
//! synthetic, seeded corpus of English chat (short replies, one-sentence
//! messages, a tail of paragraphs; its module says how it is built and what
//! it is not). The benchmark draws from the corpus's held-out seeds
//! ([`crate::corpus::HELD_OUT_SEEDS`]), never the ones the shipped
//! compression dictionary was trained on, so the dictionary has seen none of
//! these messages. Typing and presence bodies are tiny fixed strings.
//!
//! # Why incompressible payloads
//!
//! Real chat carries photos, voice notes and files that are already
//! compressed. Text alone would let compression claim most of any saving;
//! the random payloads ([`crate::corpus::incompressible`]), which dominate
//! the bytes of the workload as media does in real traffic, make the other
//! mechanisms (priorities, batching, retry, gossip and idle tuning) show what
//! they do or do not save, and are what congests the phone's link.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peercomm_node::groups::MAX_HISTORY_PAGE;
use peercomm_node::{
    BandwidthConfig, DeliveryState, GroupId, MessageId, NodeEvent, Priority, SendOptions,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::corpus::{chat_messages, incompressible, HELD_OUT_SEEDS};
use crate::scale::Spread;
use crate::{test_config, SimError, SimNet, SimOptions, SimTransport, Topology};

/// The seed `peercomm bench bandwidth` and the demo use unless told
/// otherwise, so figures compare across builds.
pub const DEFAULT_SEED: u64 = 9;

/// 1:1 conversations (pairs of nodes) in the workload.
pub const CHAT_PAIRS: usize = 6;
/// Mean time between two messages of one conversation.
pub const CHAT_GAP_MEAN: Duration = Duration::from_secs(3);
/// How often every node tells each of its contacts it is online.
pub const PRESENCE_EVERY: Duration = Duration::from_secs(5);
/// Mean time between two group posts.
pub const GROUP_GAP_MEAN: Duration = Duration::from_secs(2);
/// Incompressible posts ("photos", 4–8 KiB) in the group.
pub const GROUP_PHOTOS: usize = 2;
/// Incompressible payloads between random pairs (not the phone).
pub const BULK_PAIRS: usize = 3;
/// Incompressible payloads sent to the phone in one burst.
pub const PHONE_BURST: usize = 8;
/// Interactive messages to the phone while the burst loads its link.
pub const PHONE_URGENT: usize = 5;
/// Smallest incompressible direct payload, bytes.
pub const BULK_MIN_BYTES: usize = 4 * 1024;
/// Largest incompressible direct payload, bytes.
pub const BULK_MAX_BYTES: usize = 16 * 1024;
/// Where in the window the two nodes go away, and where they come back.
pub const AWAY: (f64, f64) = (0.3, 0.7);
/// Where in the window the burst to the phone starts.
pub const BURST_AT: f64 = 0.4;
/// A returning node sends nothing for this long after its restart (its app
/// is still opening).
const RETURN_GRACE: Duration = Duration::from_secs(1);
/// How often delivery is checked after the window.
const DRAIN_POLL: Duration = Duration::from_millis(250);

/// Which bandwidth mechanisms a run switches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    /// Adaptation off: the baseline.
    Off,
    /// zstd compression (with the shipped dictionary) alone.
    Compression,
    /// Priority queues and congestion control alone.
    Priorities,
    /// Several messages per request alone.
    Batching,
    /// Retry by what is known of the peer alone.
    AdaptiveRetry,
    /// Gossip tuning (IHAVE to D_lazy peers, IDONTWANT) alone.
    GossipTuning,
    /// Stretched keepalives and catch-up polls alone.
    IdleTuning,
    /// Mailbox lookups reused, not repeated per message, alone.
    DhtTuning,
    /// Every mechanism on (the default configuration).
    All,
}

impl Mechanism {
    /// Every run of the full benchmark, in order.
    pub const EVERY: [Mechanism; 9] = [
        Mechanism::Off,
        Mechanism::Compression,
        Mechanism::Priorities,
        Mechanism::Batching,
        Mechanism::AdaptiveRetry,
        Mechanism::GossipTuning,
        Mechanism::IdleTuning,
        Mechanism::DhtTuning,
        Mechanism::All,
    ];

    /// The runs of the short form: off, then all on.
    pub const OFF_AND_ALL: [Mechanism; 2] = [Mechanism::Off, Mechanism::All];

    /// Its name as printed and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Off => "off",
            Mechanism::Compression => "compression",
            Mechanism::Priorities => "priorities",
            Mechanism::Batching => "batching",
            Mechanism::AdaptiveRetry => "adaptive_retry",
            Mechanism::GossipTuning => "gossip_tuning",
            Mechanism::IdleTuning => "idle_tuning",
            Mechanism::DhtTuning => "dht_tuning",
            Mechanism::All => "all",
        }
    }

    /// The bandwidth configuration of every node in this run.
    pub fn config(self) -> BandwidthConfig {
        let none = BandwidthConfig {
            adaptive: true,
            compression: false,
            priorities: false,
            batching: false,
            adaptive_retry: false,
            gossip_tuning: false,
            idle_tuning: false,
            dht_tuning: false,
            ..BandwidthConfig::default()
        };
        match self {
            Mechanism::Off => BandwidthConfig::off(),
            Mechanism::All => BandwidthConfig::default(),
            Mechanism::Compression => BandwidthConfig {
                compression: true,
                ..none
            },
            Mechanism::Priorities => BandwidthConfig {
                priorities: true,
                ..none
            },
            Mechanism::Batching => BandwidthConfig {
                batching: true,
                ..none
            },
            Mechanism::AdaptiveRetry => BandwidthConfig {
                adaptive_retry: true,
                ..none
            },
            Mechanism::GossipTuning => BandwidthConfig {
                gossip_tuning: true,
                ..none
            },
            Mechanism::IdleTuning => BandwidthConfig {
                idle_tuning: true,
                ..none
            },
            Mechanism::DhtTuning => BandwidthConfig {
                dht_tuning: true,
                ..none
            },
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BandwidthOptions {
    /// Nodes; node 0 is the bootstrap peer, the last one the phone. At
    /// least 6.
    pub nodes: usize,
    /// Group members, owner (node 1) and phone included; at least 4, at
    /// most `nodes - 1` (node 0 stays out).
    pub members: usize,
    /// The measured window the schedule plays over.
    pub window: Duration,
    /// How long after the window everything may take to arrive.
    pub drain: Duration,
    /// The phone's link rate, bytes per second each way.
    pub link_rate_bytes_per_sec: u64,
    /// The configurations to run, in order; [`Mechanism::Off`] should be
    /// first, as reductions are against it.
    pub runs: Vec<Mechanism>,
    /// The transport.
    pub transport: SimTransport,
    /// Seed of the schedule, the texts, the payloads and the network.
    pub seed: u64,
}

impl BandwidthOptions {
    /// Every configuration, 12 nodes, a group of 8, a 30 s window, the
    /// phone at 24 KiB/s, on the memory transport.
    pub fn new(seed: u64) -> Self {
        Self {
            nodes: 12,
            members: 8,
            window: Duration::from_secs(30),
            drain: Duration::from_secs(90),
            link_rate_bytes_per_sec: 24 * 1024,
            runs: Mechanism::EVERY.to_vec(),
            transport: SimTransport::Memory,
            seed,
        }
    }

    /// The short form: off and all on, over a 12 s window.
    pub fn quick(seed: u64) -> Self {
        Self {
            window: Duration::from_secs(12),
            runs: Mechanism::OFF_AND_ALL.to_vec(),
            ..Self::new(seed)
        }
    }

    /// Why these options cannot run, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.nodes < 6 {
            return Err(format!("need at least 6 nodes (got {})", self.nodes));
        }
        if self.members < 4 || self.members >= self.nodes {
            return Err(format!(
                "the group needs 4 to {} members with {} nodes (got {})",
                self.nodes - 1,
                self.nodes,
                self.members
            ));
        }
        if self.window < Duration::from_secs(5) {
            return Err(format!(
                "the window must be at least 5 s (got {:?})",
                self.window
            ));
        }
        if self.runs.is_empty() {
            return Err("no configuration to run".into());
        }
        Ok(())
    }

    /// The corpus seed the texts are drawn from: in the held-out range.
    pub fn corpus_seed(&self) -> u64 {
        let span = HELD_OUT_SEEDS.end - HELD_OUT_SEEDS.start;
        HELD_OUT_SEEDS.start + self.seed % span
    }
}

/// What one kind of direct message stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Traffic {
    /// A chat message (corpus text), interactive.
    Chat,
    /// A chat message to the phone while its link is loaded, interactive.
    Urgent,
    /// "is typing", ephemeral.
    Typing,
    /// "is online", ephemeral.
    Presence,
    /// An incompressible payload (photo, file), bulk.
    Bulk,
}

impl Traffic {
    /// The priority class it is sent with.
    pub fn priority(self) -> Priority {
        match self {
            Traffic::Chat | Traffic::Urgent => Priority::Interactive,
            Traffic::Typing | Traffic::Presence => Priority::Ephemeral,
            Traffic::Bulk => Priority::Bulk,
        }
    }

    /// Whether it may be dropped by design (not counted as lost).
    pub fn is_ephemeral(self) -> bool {
        self.priority() == Priority::Ephemeral
    }
}

/// One step of the schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `from` sends `body` to `to`.
    Direct {
        /// Sender.
        from: usize,
        /// Recipient.
        to: usize,
        /// What it stands for (and so its priority).
        traffic: Traffic,
        /// The body.
        body: Vec<u8>,
    },
    /// `from` posts `body` to the group.
    Group {
        /// Author (a member).
        from: usize,
        /// The body.
        body: Vec<u8>,
    },
    /// The node goes offline (gracefully).
    Stop(usize),
    /// The node comes back on its data dir, at a new address.
    Restart(usize),
}

/// An action at a time in the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// From the start of the window.
    pub at: Duration,
    /// What happens.
    pub action: Action,
}

/// The whole schedule and the roles it gives the nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// The node behind the slow link.
    pub phone: usize,
    /// The group's owner.
    pub owner: usize,
    /// The group's other members.
    pub members: Vec<usize>,
    /// The two nodes that go offline and return.
    pub away: [usize; 2],
    /// The 1:1 conversations.
    pub pairs: Vec<(usize, usize)>,
    /// Every action, in time order.
    pub events: Vec<Event>,
}

/// The schedule for these options: a function of the options alone (seed,
/// nodes, members, window), the same in every run.
pub fn workload(opts: &BandwidthOptions) -> Workload {
    let n = opts.nodes;
    let window = opts.window;
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let phone = n - 1;
    let owner = 1;
    let away = [2, 3];
    let mut members: Vec<usize> = (2..opts.members).collect();
    members.push(phone);
    let group: Vec<usize> = std::iter::once(owner).chain(members.clone()).collect();
    let away_from = window.mul_f64(AWAY.0);
    let away_until = window.mul_f64(AWAY.1);
    let online = |i: usize, at: Duration| {
        !(away.contains(&i) && at >= away_from && at < away_until + RETURN_GRACE)
    };

    // The conversations: two with the phone, one with each node that goes
    // away, the rest random.
    let anchors = [phone, phone, away[0], away[1]];
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for _ in 0..1000 {
        if pairs.len() >= CHAT_PAIRS {
            break;
        }
        let a = anchors
            .get(pairs.len())
            .copied()
            .unwrap_or_else(|| rng.gen_range(0..n));
        let b = rng.gen_range(0..n);
        if a == b
            || pairs.contains(&(a, b))
            || pairs.contains(&(b, a))
            || (away.contains(&a) && away.contains(&b))
        {
            continue;
        }
        pairs.push((a, b));
    }
    let contacts = |i: usize| -> Vec<usize> {
        pairs
            .iter()
            .filter_map(|&(a, b)| {
                if a == i {
                    Some(b)
                } else if b == i {
                    Some(a)
                } else {
                    None
                }
            })
            .collect()
    };

    let mut events: Vec<Event> = Vec::new();
    let mut texts = 0usize;
    // Text bodies are filled from the corpus once the count is known.
    let mut text = |events: &mut Vec<Event>, at: Duration, action: Action| {
        texts += 1;
        events.push(Event { at, action });
    };
    let end = window.saturating_sub(Duration::from_millis(200));

    for &(a, b) in &pairs {
        let mut t = gap(&mut rng, CHAT_GAP_MEAN);
        while t < end {
            let (mut from, mut to) = if rng.gen_bool(0.5) { (a, b) } else { (b, a) };
            if !online(from, t) {
                std::mem::swap(&mut from, &mut to);
            }
            if online(from, t) {
                let typing = rng.gen_range(1..=3u32);
                for k in (1..=typing).rev() {
                    let at = t.saturating_sub(Duration::from_millis(400) * k);
                    if online(from, at) {
                        events.push(Event {
                            at,
                            action: Action::Direct {
                                from,
                                to,
                                traffic: Traffic::Typing,
                                body: b"typing".to_vec(),
                            },
                        });
                    }
                }
                text(
                    &mut events,
                    t,
                    Action::Direct {
                        from,
                        to,
                        traffic: Traffic::Chat,
                        body: Vec::new(),
                    },
                );
            }
            t += gap(&mut rng, CHAT_GAP_MEAN);
        }
    }

    // At least one message to each node while it is away.
    for &x in &away {
        let from = contacts(x)
            .into_iter()
            .find(|c| !away.contains(c))
            .unwrap_or(0);
        text(
            &mut events,
            away_from + Duration::from_secs(1),
            Action::Direct {
                from,
                to: x,
                traffic: Traffic::Chat,
                body: Vec::new(),
            },
        );
    }

    // Presence to contacts, each node on its own phase.
    for i in 0..n {
        let to = contacts(i);
        if to.is_empty() {
            continue;
        }
        let mut t = Duration::from_millis(rng.gen_range(0..PRESENCE_EVERY.as_millis() as u64));
        while t < end {
            if online(i, t) {
                for &c in &to {
                    let state = ["online", "online", "idle", "away"][rng.gen_range(0..4)];
                    let body = format!(r#"{{"presence":"{state}","t":{}}}"#, t.as_secs());
                    events.push(Event {
                        at: t,
                        action: Action::Direct {
                            from: i,
                            to: c,
                            traffic: Traffic::Presence,
                            body: body.into_bytes(),
                        },
                    });
                }
            }
            t += PRESENCE_EVERY;
        }
    }

    // Group posts from members online at the time.
    let mut t = gap(&mut rng, GROUP_GAP_MEAN);
    while t < end {
        let from = pick(&mut rng, group.iter().copied().filter(|m| online(*m, t)));
        text(
            &mut events,
            t,
            Action::Group {
                from,
                body: Vec::new(),
            },
        );
        t += gap(&mut rng, GROUP_GAP_MEAN);
    }
    for _ in 0..GROUP_PHOTOS {
        let at = random_time(&mut rng, end);
        let from = pick(&mut rng, group.iter().copied().filter(|m| online(*m, at)));
        let len = rng.gen_range(4 * 1024..=8 * 1024);
        let body = incompressible(rng.gen(), len);
        events.push(Event {
            at,
            action: Action::Group { from, body },
        });
    }

    // Files between others.
    for _ in 0..BULK_PAIRS {
        let at = random_time(&mut rng, end);
        let from = pick(&mut rng, (0..phone).filter(|i| online(*i, at)));
        let to = pick(&mut rng, (0..phone).filter(|i| *i != from));
        let len = rng.gen_range(BULK_MIN_BYTES..=BULK_MAX_BYTES);
        let body = incompressible(rng.gen(), len);
        let traffic = Traffic::Bulk;
        events.push(Event {
            at,
            action: Action::Direct {
                from,
                to,
                traffic,
                body,
            },
        });
    }

    // The burst that loads the phone's link, and chat to it meanwhile.
    let burst = window.mul_f64(BURST_AT);
    for k in 0..PHONE_BURST {
        let at = burst + Duration::from_millis(100) * k as u32;
        let from = pick(&mut rng, (0..phone).filter(|i| online(*i, at)));
        let len = rng.gen_range(BULK_MIN_BYTES..=BULK_MAX_BYTES);
        let body = incompressible(rng.gen(), len);
        events.push(Event {
            at,
            action: Action::Direct {
                from,
                to: phone,
                traffic: Traffic::Bulk,
                body,
            },
        });
    }
    let phone_contacts: Vec<usize> = contacts(phone);
    for k in 0..PHONE_URGENT {
        let at = burst + Duration::from_millis(500 + 600 * k as u64);
        let here: Vec<usize> = phone_contacts
            .iter()
            .copied()
            .filter(|c| online(*c, at))
            .collect();
        let from = here.get(k % here.len().max(1)).copied().unwrap_or(0);
        text(
            &mut events,
            at,
            Action::Direct {
                from,
                to: phone,
                traffic: Traffic::Urgent,
                body: Vec::new(),
            },
        );
    }

    for &x in &away {
        events.push(Event {
            at: away_from,
            action: Action::Stop(x),
        });
        events.push(Event {
            at: away_until,
            action: Action::Restart(x),
        });
    }

    // Fill the text bodies from the corpus, in generation order.
    let mut corpus = chat_messages(opts.corpus_seed(), texts).into_iter();
    for event in &mut events {
        let body = match &mut event.action {
            Action::Direct {
                traffic: Traffic::Chat | Traffic::Urgent,
                body,
                ..
            } => body,
            Action::Group { body, .. } if body.is_empty() => body,
            _ => continue,
        };
        *body = corpus.next().unwrap_or_default().into_bytes();
        if body.is_empty() {
            body.extend_from_slice(b"ok");
        }
    }
    // Stable: equal times keep generation order.
    events.sort_by_key(|e| e.at);
    Workload {
        phone,
        owner,
        members,
        away,
        pairs,
        events,
    }
}

/// An exponential gap with this mean, kept within [mean/10, 4 × mean].
fn gap(rng: &mut StdRng, mean: Duration) -> Duration {
    let u: f64 = rng.gen_range(0.0..1.0);
    let x = -(1.0 - u).ln();
    mean.mul_f64(x.clamp(0.1, 4.0))
}

/// A random one of `among` (node 1, always online, when it is empty).
fn pick(rng: &mut StdRng, among: impl Iterator<Item = usize>) -> usize {
    let among: Vec<usize> = among.collect();
    if among.is_empty() {
        return 1;
    }
    among[rng.gen_range(0..among.len())]
}

/// A uniformly random time before `end`.
fn random_time(rng: &mut StdRng, end: Duration) -> Duration {
    Duration::from_millis(rng.gen_range(0..end.as_millis().max(1) as u64))
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// The configuration.
    pub mechanism: Mechanism,
    /// Bytes every node wrote to its sockets, summed, over the counted span.
    pub bytes_total: u64,
    /// `bytes_total` per node.
    pub bytes_per_node: f64,
    /// Fewer bytes than the run with adaptation off, percent (0 for that
    /// run; negative when more).
    pub reduction_percent: f64,
    /// The counted span: the window, or longer while messages were still
    /// arriving, seconds.
    pub counted_secs: f64,
    /// Non-ephemeral deliveries expected: direct messages, plus each group
    /// post once per member other than its author.
    pub expected: usize,
    /// Of those, how many happened.
    pub delivered: usize,
    /// `delivered / expected`.
    pub delivery_rate: f64,
    /// `expected - delivered`.
    pub lost: usize,
    /// Direct messages (chat and bulk) sent.
    pub direct_expected: usize,
    /// Of those, how many came back `delivered`.
    pub direct_delivered: usize,
    /// Group posts times members other than the author.
    pub group_expected: usize,
    /// Of those, how many were in the member's history.
    pub group_delivered: usize,
    /// Typing and presence signals sent.
    pub ephemeral_sent: usize,
    /// Of those, how many came back `delivered` (the rest were shed or
    /// expired, by design).
    pub ephemeral_delivered: usize,
    /// Ephemeral messages the nodes say they shed.
    pub ephemeral_shed: u64,
    /// Send to the phone's arrival of the interactive messages sent while
    /// the burst loaded its link, ms.
    pub interactive_latency_ms: Spread,
    /// Send to the phone's arrival of the burst's bulk payloads, ms.
    pub bulk_latency_ms: Spread,
    /// From the end of the window until the last delivery, seconds.
    pub drain_secs: f64,
    /// Bytes sent by protocol over the counted span, summed over the
    /// nodes (what the nodes that went away sent before they went
    /// included), most first; `overhead` is Noise, Yamux and handshakes.
    pub sent_by_protocol: Vec<(String, u64)>,
}

/// What the benchmark measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BandwidthReport {
    /// The seed of the schedule, texts and payloads.
    pub seed: u64,
    /// The corpus seed the texts came from (held out from training).
    pub corpus_seed: u64,
    /// Nodes.
    pub nodes: usize,
    /// Group members.
    pub members: usize,
    /// The measured window, seconds.
    pub window_secs: f64,
    /// The phone's link rate, bytes per second each way.
    pub link_rate_bytes_per_sec: u64,
    /// Actions in the schedule.
    pub events: usize,
    /// Bytes of message bodies the schedule sends (direct and group).
    pub body_bytes: usize,
    /// Each run, in order.
    pub runs: Vec<RunReport>,
    /// Fewer bytes with every mechanism on than with adaptation off,
    /// percent (0 when either run is missing).
    pub reduction_percent: f64,
    /// Non-ephemeral messages lost, summed over the runs.
    pub lost: usize,
}

/// Runs every configuration in `opts.runs` on its own fresh network, one
/// after another. `progress` gets a line after each run.
pub async fn bandwidth(
    opts: &BandwidthOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<BandwidthReport, SimError> {
    opts.check().map_err(|reason| SimError::Node {
        index: 0,
        reason: format!("bad options: {reason}"),
    })?;
    let plan = workload(opts);
    let mut runs: Vec<RunReport> = Vec::with_capacity(opts.runs.len());
    for (k, &mechanism) in opts.runs.iter().enumerate() {
        let started = Instant::now();
        let mut run = run_once(opts, &plan, mechanism).await?;
        if let Some(off) = runs.iter().find(|r| r.mechanism == Mechanism::Off) {
            run.reduction_percent = reduction(off.bytes_total, run.bytes_total);
        }
        let top: Vec<String> = run
            .sent_by_protocol
            .iter()
            .map(|(p, b)| format!("{p} {:.0} KiB", *b as f64 / 1024.0))
            .collect();
        progress(&format!("by protocol: {}", top.join(", ")));
        progress(&format!(
            "run {}/{} {:<14} {:>8.1} KiB on the wire, {}/{} delivered, {} lost, \
             interactive to the phone p50 {:.0} ms ({:.0} s)",
            k + 1,
            opts.runs.len(),
            mechanism.name(),
            run.bytes_total as f64 / 1024.0,
            run.delivered,
            run.expected,
            run.lost,
            run.interactive_latency_ms.p50,
            started.elapsed().as_secs_f64()
        ));
        runs.push(run);
    }
    let bytes_of = |m: Mechanism| {
        runs.iter()
            .find(|r| r.mechanism == m)
            .map(|r| r.bytes_total)
    };
    let reduction_percent = match (bytes_of(Mechanism::Off), bytes_of(Mechanism::All)) {
        (Some(off), Some(all)) => reduction(off, all),
        _ => 0.0,
    };
    let body_bytes = plan
        .events
        .iter()
        .map(|e| match &e.action {
            Action::Direct { body, .. } | Action::Group { body, .. } => body.len(),
            _ => 0,
        })
        .sum();
    Ok(BandwidthReport {
        seed: opts.seed,
        corpus_seed: opts.corpus_seed(),
        nodes: opts.nodes,
        members: opts.members,
        window_secs: opts.window.as_secs_f64(),
        link_rate_bytes_per_sec: opts.link_rate_bytes_per_sec,
        events: plan.events.len(),
        body_bytes,
        lost: runs.iter().map(|r| r.lost).sum(),
        runs,
        reduction_percent,
    })
}

fn reduction(off: u64, on: u64) -> f64 {
    if off == 0 {
        return 0.0;
    }
    100.0 * (1.0 - on as f64 / off as f64)
}

fn err(e: impl std::fmt::Display) -> SimError {
    SimError::Node {
        index: 0,
        reason: e.to_string(),
    }
}

/// The nodes' configuration: the defaults a user runs (keepalives, gossip
/// heartbeat, DHT refresh, catch-up and retry schedules), not the test
/// settings, whose fast timers would inflate the background traffic of
/// both runs; only the outbox tick and timeouts are the simulator's, and
/// Welcomes are accepted automatically.
pub fn bench_config() -> peercomm_node::Config {
    let tests = test_config();
    let mut config = peercomm_node::Config::default();
    config.delivery.tick = tests.delivery.tick;
    config.network.request_timeout = tests.network.request_timeout;
    config.dht.query_timeout = tests.dht.query_timeout;
    config.groups.auto_join = true;
    config
}

/// Plays `plan` once on a fresh network whose nodes all run `mechanism`.
pub async fn run_once(
    opts: &BandwidthOptions,
    plan: &Workload,
    mechanism: Mechanism,
) -> Result<RunReport, SimError> {
    let mut config = bench_config();
    config.bandwidth = mechanism.config();
    let mut options = SimOptions::new(opts.nodes, Topology::Isolated);
    options.seed = opts.seed;
    options.bootstrap_via = Some(0);
    options.transport = opts.transport;
    options.config = config;
    let mut net = SimNet::start(options).await?;
    let result = measure(&mut net, opts, plan, mechanism).await;
    net.shutdown().await;
    result
}

/// Bytes out (in all and by protocol) and ephemeral messages shed, per
/// node, across restarts (a restarted node's counters start again from
/// zero).
struct Tally {
    /// Each node's counters when the window started (zero after a restart).
    base: Vec<[u64; 2]>,
    /// Each node's bytes by protocol when the window started (none after a
    /// restart).
    base_protocols: Vec<HashMap<String, u64>>,
    /// What nodes counted before they stopped.
    carried: [u64; 2],
    /// What nodes sent by protocol before they stopped.
    carried_protocols: HashMap<String, u64>,
}

impl Tally {
    fn sample(net: &SimNet, i: usize) -> [u64; 2] {
        net.try_handle(i).map_or([0, 0], |h| {
            let s = h.stats();
            [s.wire_bytes_out, s.ephemeral_shed]
        })
    }

    async fn start(net: &SimNet) -> Self {
        let mut base_protocols = Vec::with_capacity(net.len());
        for i in 0..net.len() {
            base_protocols.push(sent_by_protocol(net, i).await);
        }
        Self {
            base: (0..net.len()).map(|i| Self::sample(net, i)).collect(),
            base_protocols,
            carried: [0, 0],
            carried_protocols: HashMap::new(),
        }
    }

    /// Node `i` stops: keep what it counted.
    async fn stop(&mut self, net: &mut SimNet, i: usize) -> Result<(), SimError> {
        // Only a running node answers for its meter (its goodbyes are not
        // in it); the stats outlive the node: read them after its goodbyes.
        let protocols = sent_by_protocol(net, i).await;
        let base = std::mem::take(&mut self.base_protocols[i]);
        add_since(&mut self.carried_protocols, protocols, &base);
        let handle = net.handle(i).clone();
        net.stop(i).await?;
        let s = handle.stats();
        for (k, now) in [s.wire_bytes_out, s.ephemeral_shed].into_iter().enumerate() {
            self.carried[k] += now.saturating_sub(self.base[i][k]);
        }
        self.base[i] = [0, 0];
        Ok(())
    }

    fn total(&self, net: &SimNet) -> [u64; 2] {
        let mut total = self.carried;
        for i in 0..net.len() {
            let now = Self::sample(net, i);
            for k in 0..2 {
                total[k] += now[k].saturating_sub(self.base[i][k]);
            }
        }
        total
    }

    /// Bytes sent by protocol since the window started, summed over the
    /// nodes, most first.
    async fn total_by_protocol(&self, net: &SimNet) -> Vec<(String, u64)> {
        let mut total = self.carried_protocols.clone();
        for i in 0..net.len() {
            let now = sent_by_protocol(net, i).await;
            add_since(&mut total, now, &self.base_protocols[i]);
        }
        let mut total: Vec<(String, u64)> = total.into_iter().filter(|(_, b)| *b > 0).collect();
        total.sort_by_key(|(_, b)| std::cmp::Reverse(*b));
        total
    }
}

/// Adds to `into` what `now` counts beyond `base`, protocol by protocol.
fn add_since(
    into: &mut HashMap<String, u64>,
    now: HashMap<String, u64>,
    base: &HashMap<String, u64>,
) {
    for (p, b) in now {
        let since = b.saturating_sub(base.get(&p).copied().unwrap_or(0));
        *into.entry(p).or_default() += since;
    }
}

/// A direct message sent in the window.
struct Sent {
    from: usize,
    to: usize,
    traffic: Traffic,
    id: MessageId,
    at: Instant,
}

async fn measure(
    net: &mut SimNet,
    opts: &BandwidthOptions,
    plan: &Workload,
    mechanism: Mechanism,
) -> Result<RunReport, SimError> {
    let n = net.len();
    let phone = plan.phone;
    // The phone's slow link.
    // (A new port: the memory transport may hold the old one a while, and
    // nobody knows the phone's address yet.)
    net.stop(phone).await?;
    net.config_mut(phone).network.link_rate_bytes_per_sec = opts.link_rate_bytes_per_sec;
    net.restart_on_new_port(phone).await?;
    crate::wait_joined(net, Duration::from_secs(120)).await?;
    let group = crate::groups::form(net, plan.owner, &plan.members, 10).await?;
    // Let the mesh settle (a few heartbeats) before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // When each message reached the phone (which never goes away).
    let arrived: Arc<Mutex<HashMap<MessageId, Instant>>> = Arc::default();
    let watcher = {
        let mut events = net.handle(phone).subscribe();
        let arrived = arrived.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(NodeEvent::MessageReceived { id, .. }) => {
                        arrived
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(id)
                            .or_insert_with(Instant::now);
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        })
    };

    let mut tally = Tally::start(net).await;
    let started = Instant::now();
    let mut sent: Vec<Sent> = Vec::new();
    let mut posts: Vec<(usize, String)> = Vec::new();
    // Each post's size and when it was sent, for the report of what is missing.
    let mut post_info: HashMap<String, (usize, Duration)> = HashMap::new();
    for event in &plan.events {
        tokio::time::sleep_until((started + event.at).into()).await;
        match &event.action {
            Action::Direct {
                from,
                to,
                traffic,
                body,
            } => {
                let options = SendOptions {
                    priority: Some(traffic.priority()),
                    ..SendOptions::default()
                };
                let at = Instant::now();
                let id = net
                    .handle(*from)
                    .send(net.peer_id(*to), body.clone(), options)
                    .await
                    .map_err(|e| SimError::Node {
                        index: *from,
                        reason: format!("send to node {to}: {e}"),
                    })?;
                sent.push(Sent {
                    from: *from,
                    to: *to,
                    traffic: *traffic,
                    id,
                    at,
                });
            }
            Action::Group { from, body } => {
                let m = net
                    .handle(*from)
                    .group_send(group, body.clone())
                    .await
                    .map_err(|e| SimError::Node {
                        index: *from,
                        reason: format!("group send: {e}"),
                    })?;
                post_info.insert(m.id.clone(), (body.len(), started.elapsed()));
                posts.push((*from, m.id));
            }
            Action::Stop(i) => tally.stop(net, *i).await?,
            // A new address, as a phone that changed networks has: peers
            // find it again through the DHT.
            Action::Restart(i) => net.restart_on_new_port(*i).await?,
        }
    }
    tokio::time::sleep_until((started + opts.window).into()).await;

    // Wait for everything non-ephemeral to arrive.
    let window_end = Instant::now();
    let mut pending: Vec<(usize, MessageId)> = sent
        .iter()
        .filter(|s| !s.traffic.is_ephemeral())
        .map(|s| (s.from, s.id))
        .collect();
    let direct_expected = pending.len();
    let mut given_up = 0usize;
    let mut group_members = vec![plan.owner];
    group_members.extend_from_slice(&plan.members);
    let mut missing: HashMap<usize, HashSet<String>> = group_members
        .iter()
        .map(|&m| {
            let ids = posts
                .iter()
                .filter(|(from, _)| *from != m)
                .map(|(_, id)| id.clone())
                .collect();
            (m, ids)
        })
        .collect();
    let group_expected: usize = missing.values().map(HashSet::len).sum();
    let deadline = window_end + opts.drain;
    loop {
        let mut left = Vec::with_capacity(pending.len());
        for (from, id) in pending {
            match crate::message(net.handle(from), id).await.map(|m| m.state) {
                Some(DeliveryState::Delivered) => {}
                Some(DeliveryState::Expired | DeliveryState::Failed) => given_up += 1,
                _ => left.push((from, id)),
            }
        }
        pending = left;
        for (&m, ids) in missing.iter_mut() {
            if !ids.is_empty() {
                for id in history_ids(net, m, group).await? {
                    ids.remove(&id);
                }
            }
        }
        let done = pending.is_empty() && missing.values().all(HashSet::is_empty);
        if done || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
    let drain_secs = window_end.elapsed().as_secs_f64();
    let [bytes_total, ephemeral_shed] = tally.total(net);
    let counted_secs = started.elapsed().as_secs_f64();
    watcher.abort();

    for (from, id) in &pending {
        if let Some(m) = crate::message(net.handle(*from), *id).await {
            eprintln!(
                "bandwidth ({}): message {id} from node {from} not delivered: {:?}, {} attempts, \
                 last error {:?}",
                mechanism.name(),
                m.state,
                m.attempts,
                m.last_error
            );
        }
    }
    for (m, ids) in &missing {
        if !ids.is_empty() {
            let what: Vec<String> = ids
                .iter()
                .filter_map(|id| post_info.get(id))
                .map(|(len, at)| format!("{len} B at {:.1} s", at.as_secs_f64()))
                .collect();
            eprintln!(
                "bandwidth ({}): member node {m} misses {} of the group's posts ({})",
                mechanism.name(),
                ids.len(),
                what.join(", ")
            );
        }
    }
    if given_up > 0 {
        eprintln!(
            "bandwidth ({}): {given_up} direct message(s) expired or failed",
            mechanism.name()
        );
    }
    let direct_delivered = direct_expected - pending.len() - given_up;
    let group_delivered = group_expected - missing.values().map(HashSet::len).sum::<usize>();

    // Ephemeral outcomes and the latencies to the phone.
    let arrived = arrived.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut ephemeral_sent = 0;
    let mut ephemeral_delivered = 0;
    let mut interactive = Vec::new();
    let mut bulk = Vec::new();
    for s in &sent {
        if s.traffic.is_ephemeral() {
            ephemeral_sent += 1;
            let state = crate::message(net.handle(s.from), s.id)
                .await
                .map(|m| m.state);
            if state == Some(DeliveryState::Delivered) {
                ephemeral_delivered += 1;
            }
            continue;
        }
        let into = match s.traffic {
            Traffic::Urgent => &mut interactive,
            Traffic::Bulk if s.to == phone => &mut bulk,
            _ => continue,
        };
        if let Some(t) = arrived.get(&s.id) {
            into.push(t.saturating_duration_since(s.at).as_secs_f64() * 1000.0);
        } else if let Some(m) = crate::message(net.handle(s.from), s.id).await {
            // The event was missed (a lagging subscriber): use the receipt.
            if let Some(done) = m.delivered_ms {
                into.push(done.saturating_sub(m.created_ms) as f64);
            }
        }
    }

    let sent_by_protocol = tally.total_by_protocol(net).await;

    let expected = direct_expected + group_expected;
    let delivered = direct_delivered + group_delivered;
    Ok(RunReport {
        mechanism,
        bytes_total,
        bytes_per_node: bytes_total as f64 / n as f64,
        reduction_percent: 0.0,
        counted_secs,
        expected,
        delivered,
        delivery_rate: if expected == 0 {
            1.0
        } else {
            delivered as f64 / expected as f64
        },
        lost: expected - delivered,
        direct_expected,
        direct_delivered,
        group_expected,
        group_delivered,
        ephemeral_sent,
        ephemeral_delivered,
        ephemeral_shed,
        interactive_latency_ms: Spread::of(&interactive),
        bulk_latency_ms: Spread::of(&bulk),
        drain_secs,
        sent_by_protocol,
    })
}

/// Bytes node `i` sent by protocol since its last start (nothing when it
/// is not running); `overhead` is Noise, Yamux and handshakes.
async fn sent_by_protocol(net: &SimNet, i: usize) -> HashMap<String, u64> {
    let mut by_protocol: HashMap<String, u64> = HashMap::new();
    let Some(h) = net.try_handle(i) else {
        return by_protocol;
    };
    if let Ok(r) = h.bandwidth().await {
        for p in r.meter.protocols {
            *by_protocol.entry(p.protocol).or_default() += p.bytes_out;
        }
        by_protocol.insert("overhead".into(), r.meter.overhead_out);
    }
    by_protocol
}

/// The ids of every post in member `m`'s history of `group`.
async fn history_ids(net: &SimNet, m: usize, group: GroupId) -> Result<Vec<String>, SimError> {
    let h = net.handle(m);
    let mut ids = Vec::new();
    let mut after = 0;
    // Bounded: the window holds far fewer posts than this many pages.
    for _ in 0..100 {
        let page = h
            .group_history(group, after, Some(MAX_HISTORY_PAGE))
            .await
            .map_err(err)?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        let full = page.len() >= MAX_HISTORY_PAGE as usize;
        ids.extend(page.into_iter().map(|m| m.id));
        if !full {
            break;
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_depends_on_the_seed_alone() {
        let a = workload(&BandwidthOptions::new(7));
        let b = workload(&BandwidthOptions::new(7));
        assert_eq!(a, b);
        assert_ne!(a, workload(&BandwidthOptions::new(8)));
    }

    #[test]
    fn the_schedule_has_every_kind_of_traffic() {
        let opts = BandwidthOptions::quick(DEFAULT_SEED);
        let w = workload(&opts);
        let count = |t: Traffic| {
            w.events
                .iter()
                .filter(|e| matches!(&e.action, Action::Direct { traffic, .. } if *traffic == t))
                .count()
        };
        assert_eq!(count(Traffic::Urgent), PHONE_URGENT);
        assert!(count(Traffic::Chat) >= 2, "chat");
        assert!(count(Traffic::Typing) > 0, "typing");
        assert!(count(Traffic::Presence) > 0, "presence");
        assert_eq!(count(Traffic::Bulk), BULK_PAIRS + PHONE_BURST);
        assert!(w
            .events
            .iter()
            .any(|e| matches!(e.action, Action::Group { .. })));
        assert!(w.events.iter().all(|e| e.at < opts.window));
        // Nobody acts while away.
        let (from, until) = (opts.window.mul_f64(AWAY.0), opts.window.mul_f64(AWAY.1));
        for e in &w.events {
            let who = match &e.action {
                Action::Direct { from, .. } | Action::Group { from, .. } => *from,
                _ => continue,
            };
            assert!(
                !(w.away.contains(&who) && e.at >= from && e.at < until + RETURN_GRACE),
                "node {who} acts at {:?} while away",
                e.at
            );
        }
    }
}
