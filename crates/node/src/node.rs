//! Starting a node and its event loop: the one task that owns the libp2p
//! `Swarm`.
//!
//! The loop is a thin adapter. It turns swarm events and handle commands into
//! work on the store and the wire types, and runs that work (SQLite commits,
//! signature checks, sealing) on blocking threads so the swarm keeps being
//! polled; results come back on an internal channel.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::kad::{self, store::RecordStore as _, QueryId};
use libp2p::metrics::{Metrics, Recorder};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{allow_block_list, identify, noise, ping, Multiaddr, PeerId, Swarm};
use peercomm_store::{
    AttemptUpdate, DeliveryState, NewIncoming, PeerRow, ReceiptRow, Route, Store, UpsertOutcome,
};
use peercomm_wire::{pb, MessageId, PeerRecord};
use prometheus_client::registry::Registry;
use prost::Message as _;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, DhtMode, Role};
use crate::delivery::Backoff;
use crate::dht::lookups::LookupLog;
use crate::dht::ratelimit::RateLimitedKad;
use crate::dht::record_store::PersistentStore;
use crate::dht::{diversity, peer_key, validate::validate, DhtStats, Rejection, KAD_PROTOCOL};
use crate::handle::FindError;
use crate::handle::{Command, ConnectedPeer, NodeHandle, Shared};
use crate::identity::{Identity, IdentityError};
use crate::known_records::{KnownRecords, RecordDigest};
use crate::mailbox::MAILBOX_PROTOCOL;
use crate::msg::{FrameCodec, MSG_BATCH_PROTOCOL, MSG_PROTOCOL, RECORD_PROTOCOL};
use crate::observed::ObservedAddrs;
use crate::onion::ONION_PROTOCOL;
use crate::routing::{Router, ROUTE_PROTOCOL};
use crate::stats::{add, bump, Stats};

mod bandwidth;
mod groups;
mod mailbox;
mod onion;
mod route;
use crate::bandwidth::meter::Meter;
use crate::transport::{self, Throttle, WireCounters};
use crate::NodeEvent;

/// Name of the database file inside the data dir.
pub const DATABASE_FILE: &str = "peercomm.db";
/// Protocol string announced through identify.
const AGENT_PROTOCOL: &str = "/peercomm/1.0.0";
/// Commands queued from handles before senders wait.
const COMMAND_QUEUE: usize = 1024;
/// Results of background work queued before workers wait.
const INTERNAL_QUEUE: usize = 4096;
/// Events buffered per subscriber before a slow one misses some.
const EVENT_QUEUE: usize = 4096;
/// Known peers dialled at start, most recently seen first.
const DIAL_KNOWN_AT_START: usize = 32;
/// How long `start` waits for listeners to report their addresses.
const LISTEN_WAIT: Duration = Duration::from_secs(10);
/// Peers whose told addresses we keep.
const MAX_TOLD_PEERS: usize = 10_000;
/// Told addresses kept per peer (oldest dropped first).
const MAX_TOLD_ADDRS_PER_PEER: usize = 8;
/// How long a graceful shutdown waits for work in flight.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// Gossip posts at least this big get a gossipsub IDONTWANT from each
/// member that has them (an IDONTWANT costs about 30 bytes on the wire).
const IDONTWANT_FROM_BYTES: usize = 200;
/// With idle tuning, pings are this many times rarer than `network.ping_interval`.
const IDLE_PING_FACTOR: u32 = 4;

/// What a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Where the identity, database and config live.
    pub data_dir: PathBuf,
    /// The loaded configuration.
    pub config: Config,
    /// The time source (the real clock unless a test moves it).
    pub clock: Arc<dyn Clock>,
    /// Seed of the node's random choices (relays, jitter) so a test can
    /// replay them; `None` seeds from the OS. Keys never come from it.
    pub rng_seed: Option<u64>,
}

impl NodeOptions {
    /// Options with the real clock.
    pub fn new(data_dir: impl Into<PathBuf>, config: Config) -> Self {
        Self {
            data_dir: data_dir.into(),
            config,
            clock: Arc::new(SystemClock),
            rng_seed: None,
        }
    }
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The identity file is missing, exposed or corrupt.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The configuration does not make sense.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The database could not be opened or migrated.
    #[error("cannot open the database {path}: {reason}")]
    Store {
        /// The database file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The transports could not be set up.
    #[error("cannot set up the network transports: {0}")]
    Transport(String),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
}

/// A running node: its handle and its event loop task.
#[derive(Debug)]
pub struct Node {
    handle: NodeHandle,
    task: tokio::task::JoinHandle<()>,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    /// Peers this node refuses to be connected to (`NodeHandle::block_peer`).
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    msg: request_response::Behaviour<FrameCodec>,
    msg_batch: request_response::Behaviour<FrameCodec>,
    record: request_response::Behaviour<FrameCodec>,
    route: request_response::Behaviour<FrameCodec>,
    onion: request_response::Behaviour<FrameCodec>,
    mailbox: request_response::Behaviour<FrameCodec>,
    kad: RateLimitedKad,
    /// Gossipsub whose streams let unused connections close.
    gossipsub: crate::groups::keep_alive::Gossip,
}

/// A direct attempt awaiting its answer: enough to send it along a route
/// at once if the recipient cannot be dialled.
#[derive(Debug)]
struct InFlight {
    id: MessageId,
    route: Route,
    attempt: u32,
    /// Its priority class.
    priority: peercomm_wire::Priority,
    envelope: Vec<u8>,
}

/// One delivery attempt prepared on a blocking thread.
#[derive(Debug)]
struct Attempt {
    id: MessageId,
    recipient: PeerId,
    /// How the sender wants it to travel.
    route: Route,
    /// Which attempt this is (1 for the first).
    attempt: u32,
    /// Its priority class.
    priority: peercomm_wire::Priority,
    /// The sealed envelope, or `None` while we lack the recipient's box key.
    envelope: Option<Vec<u8>>,
    addrs: Vec<Multiaddr>,
    /// The recipient's onion key, from its record.
    onion: Option<peercomm_wire::OnionKey>,
}

/// Results of background work, back to the loop.
#[derive(Debug)]
enum Internal {
    Due {
        attempts: Vec<Attempt>,
        full: bool,
        /// When the outbox next has something due (0: unknown, look again
        /// at the next tick; `u64::MAX`: nothing pending).
        next_due_ms: u64,
    },
    Respond {
        token: u64,
        response: Vec<u8>,
    },
    RespondBatch {
        token: u64,
        response: Vec<u8>,
    },
    RecordStored {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        /// What the record says of the peer as a relay, when it is newer
        /// than what we held (a stale record teaches nothing).
        relay: Option<Option<crate::onion::path::Relay>>,
        /// The record's digest and expiry, when it was stored as the newest
        /// we hold (so an identical copy is not checked again).
        known: Option<(RecordDigest, u64)>,
    },
    Rescheduled,
    /// The answer to an attempt was processed (and a receipt committed).
    Answered {
        id: MessageId,
    },
    /// The answer to a routed message delivered here, for the hop that
    /// brought it.
    RouteRespond {
        token: u64,
        response: Vec<u8>,
    },
    Settled,
    /// The relays among the records we hold.
    OnionRelays {
        relays: Vec<crate::onion::path::Relay>,
    },
    /// The answer to an onion message delivered here, to send back
    /// through its SURB.
    OnionAnswer {
        surb: Vec<u8>,
        answer: Option<peercomm_wire::MsgResponse>,
    },
    /// A mailbox request served against the store.
    MailboxServed {
        token: u64,
        from: PeerId,
        response: Vec<u8>,
        effect: crate::mailbox::Effect,
    },
    /// Our message `id`, read for a deposit: its recipient and envelope,
    /// or `None` if it needs no deposit.
    MailboxDepositReady {
        id: MessageId,
        found: Option<(PeerId, Vec<u8>)>,
    },
    /// A page from one of our mailboxes was stored.
    MailboxDrained(mailbox::Drained),
    /// This mailbox holds items for a peer that just connected.
    MailboxHolds(PeerId),
    /// A page of a re-replication pass was read.
    MailboxHandoffPage(mailbox::HandoffPage),
    /// Group work done.
    Group(groups::GroupDone),
    /// An invite checked: this node owns the group, fetch the key package.
    GroupInvite {
        group: crate::groups::GroupId,
        peers: Vec<PeerId>,
        reply: oneshot::Sender<Result<crate::groups::GroupChange, crate::groups::GroupError>>,
    },
    /// The held items a peer lacked, read for copying.
    MailboxHandoffItems {
        job: u64,
        peer: PeerId,
        items: Vec<peercomm_wire::MailPayload>,
    },
}

impl Node {
    /// Loads (or creates) the identity, opens the database, binds the listen
    /// addresses, dials the configured and remembered peers, and starts the
    /// event loop. Returns once every listener has an address.
    pub async fn start(options: NodeOptions) -> Result<Self, StartError> {
        options.config.validate()?;
        let (identity, _) = Identity::load_or_create(&options.data_dir)?;
        let db_path = options.data_dir.join(DATABASE_FILE);
        let store = {
            let path = db_path.clone();
            tokio::task::spawn_blocking(move || Store::open(&path))
                .await
                .map_err(|e| StartError::Store {
                    path: db_path.clone(),
                    reason: e.to_string(),
                })?
                .map_err(|e| StartError::Store {
                    path: db_path.clone(),
                    reason: e.to_string(),
                })?
        };
        let wire = Arc::new(WireCounters::default());
        let meter = Arc::new(Meter::new());
        let stats = Arc::new(Stats::default());
        let mut registry = Registry::default();
        let mut store = store;
        crate::groups::mls::Mls::migrate(store.connection_mut()).map_err(|e| {
            StartError::Store {
                path: db_path.clone(),
                reason: e.to_string(),
            }
        })?;
        let mls = Arc::new(
            crate::groups::mls::Mls::new(identity.keypair())
                .map_err(|e| StartError::Transport(e.to_string()))?,
        );
        let store = Arc::new(Mutex::new(store));
        let kad_store =
            PersistentStore::open(identity.peer_id(), store.clone(), options.clock.clone());
        let mut swarm = build_swarm(
            &identity,
            &options.config,
            wire.clone(),
            meter.clone(),
            stats.clone(),
            &mut registry,
            kad_store,
        )?;
        let metrics = Metrics::new(&mut registry);

        for addr in &options.config.network.external_addrs {
            swarm.add_external_address(addr.clone());
        }
        let mut pending_listeners = HashMap::new();
        for addr in &options.config.listen {
            let id = swarm
                .listen_on(addr.clone())
                .map_err(|e| StartError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
            pending_listeners.insert(id, addr.clone());
        }
        let mut listen_addrs = Vec::new();
        let deadline = tokio::time::Instant::now() + LISTEN_WAIT;
        while !pending_listeners.is_empty() {
            let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
                .await
                .map_err(|_| StartError::Listen {
                    addr: pending_listeners
                        .values()
                        .next()
                        .cloned()
                        .unwrap_or_else(Multiaddr::empty),
                    reason: "no address reported in time".into(),
                })?;
            match event {
                SwarmEvent::NewListenAddr {
                    listener_id,
                    address,
                } => {
                    pending_listeners.remove(&listener_id);
                    listen_addrs.push(address);
                }
                SwarmEvent::ListenerClosed {
                    listener_id,
                    reason: Err(e),
                    ..
                }
                | SwarmEvent::ListenerError {
                    listener_id,
                    error: e,
                } => {
                    let addr = pending_listeners
                        .remove(&listener_id)
                        .unwrap_or_else(Multiaddr::empty);
                    return Err(StartError::Listen {
                        addr,
                        reason: e.to_string(),
                    });
                }
                _ => {}
            }
        }

        let (events, _) = broadcast::channel(EVENT_QUEUE);
        let committer = crate::commit::Committer::new(
            store.clone(),
            stats.clone(),
            options.config.delivery.group_commit,
        );
        let shared = Arc::new(Shared {
            peer_id: identity.peer_id(),
            store,
            committer,
            stats,
            wire,
            meter,
            events,
            config: options.config.clone(),
            clock: options.clock.clone(),
            started: Instant::now(),
            registry: Arc::new(registry),
        });
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let (internal_tx, internal_rx) = mpsc::channel(INTERNAL_QUEUE);
        let rng = options
            .rng_seed
            .map_or_else(StdRng::from_entropy, StdRng::seed_from_u64);
        let onion = onion::OnionState::new(&options.config.onion, options.clock.now_ms());
        let mut event_loop = EventLoop {
            swarm,
            metrics,
            identity: Arc::new(identity),
            shared: shared.clone(),
            commands: commands_rx,
            internal_tx,
            internal_rx,
            backoff: Backoff::from_config(&options.config.delivery),
            rng,
            listen_addrs,
            record: Vec::new(),
            record_seq: 0,
            record_signed_ms: 0,
            in_flight: HashMap::new(),
            in_flight_ids: HashSet::new(),
            batch_responses: HashMap::new(),
            bw: bandwidth::BandwidthState::new(),
            responses: HashMap::new(),
            next_token: 0,
            background: 0,
            told_addrs: HashMap::new(),
            remotes: HashMap::new(),
            observed: ObservedAddrs::default(),
            dht: DhtState::default(),
            onion,
            mailbox: mailbox::MailboxState::new(&options.config.mailbox),
            groups: groups::GroupsState::new(mls),
            route: route::RouteState::new(Router::new(
                shared.peer_id,
                options.config.routing.clone(),
                options.config.has_role(Role::Relay),
            )),
            due_dirty: true,
            due_running: false,
            next_due_ms: 0,
            due_checked: Instant::now(),
            known_records: KnownRecords::default(),
            shutdown: None,
        };
        event_loop.sign_record();
        event_loop.dial_at_start().await;
        let handle = NodeHandle {
            shared,
            commands: commands_tx,
        };
        let task = tokio::spawn(event_loop.run());
        Ok(Self { handle, task })
    }

    /// A handle to the node.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Stops the node gracefully and waits for its event loop to end.
    pub async fn shutdown(self) {
        let _ = self.handle.shutdown().await;
        let _ = self.task.await;
    }

    /// Ends the node at once, as a crash would: no graceful shutdown, work
    /// in flight is abandoned. What was committed to the database stays.
    pub fn kill(self) {
        self.task.abort();
    }
}

fn build_swarm(
    identity: &Identity,
    config: &Config,
    wire: Arc<WireCounters>,
    meter: Arc<Meter>,
    stats: Arc<Stats>,
    registry: &mut Registry,
    kad_store: PersistentStore,
) -> Result<Swarm<Behaviour>, StartError> {
    let dht = config.dht.clone();
    let record_ttl = config.network.record_ttl;
    let mut kad_config = kad::Config::new(KAD_PROTOCOL);
    let k = NonZeroUsize::new(dht.k).unwrap_or(NonZeroUsize::MIN);
    kad_config
        .set_replication_factor(k)
        .set_kbucket_size(k)
        .set_parallelism(NonZeroUsize::new(dht.alpha).unwrap_or(NonZeroUsize::MIN))
        .set_query_timeout(dht.query_timeout)
        .disjoint_query_paths(dht.disjoint_paths)
        // Nothing is stored before `validate` has checked it.
        .set_record_filtering(kad::StoreInserts::FilterBoth)
        // Peers join buckets only through `EventLoop::dht_add` (diversity).
        .set_kbucket_inserts(kad::BucketInserts::Manual)
        .set_periodic_bootstrap_interval(Some(dht.refresh_interval))
        .set_record_ttl(Some(record_ttl))
        .set_replication_interval(Some(dht.republish_interval))
        // We re-publish our own record ourselves (signed anew, new sequence).
        .set_publication_interval(None);
    let transport_err = |e: &dyn std::fmt::Display| StartError::Transport(e.to_string());
    let boxed = |e: noise::Error| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) };
    // One bucket for all connections: the node's access link.
    let throttle = Throttle::for_link(config.network.link_rate_bytes_per_sec);
    let net = config.network.clone();
    let routing = config.routing.clone();
    let groups = config.groups.clone();
    let gossip_tuning = config.bandwidth.gossip_tuning_on();
    let batch_support = if config.bandwidth.batching_on() {
        ProtocolSupport::Full
    } else {
        ProtocolSupport::Outbound
    };
    // Keepalive probes: every message answered is a round-trip sample
    // already, so with idle tuning pings are a fallback, 4× rarer.
    let ping_interval = if config.bandwidth.idle_tuning_on() {
        config
            .network
            .ping_interval
            .saturating_mul(IDLE_PING_FACTOR)
    } else {
        config.network.ping_interval
    };
    // A node answers a packet once every later hop has: its wait covers them.
    let onion_timeout = config.onion.hop_timeout.saturating_mul(6);
    let codec = FrameCodec::counting(stats.clone());
    let swarm = libp2p::SwarmBuilder::with_existing_identity(identity.keypair().clone())
        .with_tokio()
        .with_other_transport(|key| transport::quic(key, meter.clone()))
        .map_err(|e| transport_err(&e))?
        .with_other_transport(|key| {
            transport::tcp(key, wire.clone(), meter.clone(), throttle.clone()).map_err(boxed)
        })
        .map_err(|e| transport_err(&e))?
        // In-process networks (`/memory/<port>`): simulations of thousands of nodes.
        .with_other_transport(|key| {
            transport::memory(key, wire.clone(), meter.clone(), throttle.clone()).map_err(boxed)
        })
        .map_err(|e| transport_err(&e))?
        .with_dns()
        .map_err(|e| transport_err(&e))?
        .with_bandwidth_metrics(registry)
        .with_behaviour(|key| {
            let rr_config = request_response::Config::default()
                .with_request_timeout(net.request_timeout)
                .with_max_concurrent_streams(net.max_concurrent_streams);
            let route_config = request_response::Config::default()
                .with_request_timeout(routing.hop_timeout)
                .with_max_concurrent_streams(net.max_concurrent_streams);
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Behaviour {
                blocked: allow_block_list::Behaviour::default(),
                identify: identify::Behaviour::new(identify::Config::new(
                    AGENT_PROTOCOL.to_string(),
                    key.public(),
                )),
                ping: ping::Behaviour::new(ping::Config::new().with_interval(ping_interval)),
                msg: request_response::Behaviour::with_codec(
                    codec.clone(),
                    [(MSG_PROTOCOL, ProtocolSupport::Full)],
                    rr_config.clone(),
                ),
                msg_batch: request_response::Behaviour::with_codec(
                    codec.clone(),
                    // Offered only with batching on; a node with it off
                    // gets single requests.
                    [(MSG_BATCH_PROTOCOL, batch_support)],
                    rr_config.clone(),
                ),
                record: request_response::Behaviour::with_codec(
                    codec.clone(),
                    [(RECORD_PROTOCOL, ProtocolSupport::Full)],
                    rr_config.clone(),
                ),
                route: request_response::Behaviour::with_codec(
                    codec.clone(),
                    [(ROUTE_PROTOCOL, ProtocolSupport::Full)],
                    route_config,
                ),
                mailbox: request_response::Behaviour::with_codec(
                    codec.clone(),
                    [(MAILBOX_PROTOCOL, ProtocolSupport::Full)],
                    rr_config,
                ),
                onion: request_response::Behaviour::with_codec(
                    codec,
                    [(ONION_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(onion_timeout)
                        .with_max_concurrent_streams(net.max_concurrent_streams),
                ),
                gossipsub: {
                    let g = &groups;
                    let mut builder = libp2p::gossipsub::ConfigBuilder::default();
                    if gossip_tuning {
                        // IHAVE goes to D_lazy peers, never a quarter of
                        // every subscribed peer we know: a sender connected
                        // to hundreds of members (a bootstrap node, the
                        // owner) would otherwise answer hundreds of IWANTs.
                        // Gossipsub 1.2 IDONTWANT: tell mesh peers not to
                        // send a post we already have (ours included) once
                        // it is bigger than the control message.
                        builder
                            .gossip_factor(0.0)
                            .idontwant_on_publish(true)
                            .idontwant_message_size_threshold(IDONTWANT_FROM_BYTES);
                    }
                    let config = builder
                        .mesh_n(g.mesh_n)
                        .mesh_n_low(g.mesh_n_low)
                        .mesh_n_high(g.mesh_n_high)
                        .mesh_outbound_min(
                            (g.mesh_n / 2).min(g.mesh_n_low.saturating_sub(1)).min(2),
                        )
                        .gossip_lazy(g.gossip_lazy)
                        // A publisher sends to its mesh only, not to every
                        // subscribed peer it happens to be connected to.
                        .flood_publish(false)
                        .heartbeat_interval(g.heartbeat)
                        .max_transmit_size(peercomm_wire::group::MAX_GROUP_POST_BYTES + 4096)
                        .validation_mode(libp2p::gossipsub::ValidationMode::Strict)
                        .validate_messages()
                        .message_id_fn(|m: &libp2p::gossipsub::Message| {
                            libp2p::gossipsub::MessageId::from(
                                peercomm_wire::group::post_id(&m.data).to_vec(),
                            )
                        })
                        .build()
                        .map_err(|e| format!("groups: gossipsub settings: {e}"))?;
                    crate::groups::keep_alive::Gossip::new(
                        libp2p::gossipsub::Behaviour::new(
                            libp2p::gossipsub::MessageAuthenticity::Signed(key.clone()),
                            config,
                        )
                        .map_err(|e| format!("groups: gossipsub: {e}"))?,
                    )
                },
                kad: {
                    let mut kad = kad::Behaviour::with_config(
                        key.public().to_peer_id(),
                        kad_store,
                        kad_config,
                    );
                    kad.set_mode(Some(match dht.mode {
                        DhtMode::Server => kad::Mode::Server,
                        DhtMode::Client => kad::Mode::Client,
                    }));
                    RateLimitedKad::new(kad, dht.max_requests_per_peer_per_minute, stats)
                },
            })
        })
        .map_err(|e| transport_err(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(net.idle_connection_timeout))
        .build();
    Ok(swarm)
}

struct EventLoop {
    swarm: Swarm<Behaviour>,
    /// libp2p's own metrics, fed with swarm events.
    metrics: Metrics,
    identity: Arc<Identity>,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    internal_tx: mpsc::Sender<Internal>,
    internal_rx: mpsc::Receiver<Internal>,
    backoff: Backoff,
    rng: StdRng,
    listen_addrs: Vec<Multiaddr>,
    /// Our signed peer record, as sent to peers.
    record: Vec<u8>,
    record_seq: u64,
    record_signed_ms: u64,
    /// Outbound message requests awaiting their receipt.
    in_flight: HashMap<OutboundRequestId, InFlight>,
    in_flight_ids: HashSet<MessageId>,
    /// Inbound requests whose response is being prepared in the background.
    responses: HashMap<u64, ResponseChannel<Vec<u8>>>,
    /// The same for batch requests.
    batch_responses: HashMap<u64, ResponseChannel<Vec<u8>>>,
    /// Per-peer queues, congestion control, batching, presence.
    bw: bandwidth::BandwidthState,
    next_token: u64,
    /// Background tasks not yet settled.
    background: usize,
    /// Addresses we were told about (config, `add_peer_address`), re-offered
    /// on every dial: libp2p forgets an address after a failed dial.
    told_addrs: HashMap<PeerId, Vec<Multiaddr>>,
    /// The remote address of each open connection (for observed addresses).
    remotes: HashMap<libp2p::swarm::ConnectionId, Multiaddr>,
    /// Addresses peers see us at, confirmed before they are announced.
    observed: ObservedAddrs,
    due_dirty: bool,
    due_running: bool,
    /// When the outbox next has something due, as the last round saw it;
    /// the tick skips the store until then (anything that adds or
    /// reschedules a message marks the outbox dirty itself).
    next_due_ms: u64,
    /// When a round last ran, for the safety-net look every
    /// [`DUE_RECHECK`].
    due_checked: Instant,
    /// Peer records verified and stored recently (reconnections skip both).
    known_records: KnownRecords,
    shutdown: Option<(oneshot::Sender<()>, tokio::time::Instant)>,
    dht: DhtState,
    route: route::RouteState,
    onion: onion::OnionState,
    mailbox: mailbox::MailboxState,
    groups: groups::GroupsState,
}

/// The event loop's view of the DHT.
#[derive(Default)]
struct DhtState {
    joined: bool,
    /// Routing table size when we last published our record.
    published_table: usize,
    last_bootstrap: Option<Instant>,
    last_publish: Option<Instant>,
    /// Publishes in a row that reached nobody, and when to try again.
    publish_failures: u32,
    publish_retry_at: Option<Instant>,
    /// A publish straight to the closest peers we know, after a full one
    /// timed out in its lookup phase.
    direct_publish: Option<QueryId>,
    last_saved: Option<Instant>,
    /// The routing table changed since its peers were last saved.
    peers_unsaved: bool,
    /// Peers in the routing table when last counted, and when that was.
    table_len: usize,
    table_counted: Option<Instant>,
    /// The routing table may have changed since it was last counted.
    table_changed: bool,
    /// Lookups in flight, by query.
    lookups: HashMap<QueryId, PendingLookup>,
    /// The query looking for a peer, so one lookup serves every asker.
    lookup_of: HashMap<PeerId, QueryId>,
    /// Verified records found recently.
    found: HashMap<PeerId, (PeerRecord, Instant)>,
    /// When we last looked a peer up because it could not be reached.
    looked_up: HashMap<PeerId, Instant>,
    /// Record stores per peer in the current minute.
    puts: HashMap<PeerId, (Instant, u32)>,
    log: LookupLog,
    /// When a bootstrap last refreshed every bucket.
    full_refresh_at: Option<Instant>,
    /// Bootstraps whose bucket refreshes are being skipped.
    cutting: HashSet<QueryId>,
    /// Lean bucket refreshes in flight.
    refreshing: HashSet<QueryId>,
    /// Peers that entered the routing table earlier in this run.
    routed: crate::dht::routed::Routed,
}

/// How long after a complete bootstrap a new one skips its bucket
/// refreshes (DHT tuning): a minute, or half the refresh interval when
/// that is shorter (so the periodic refresh always runs whole).
fn full_refresh_gap(refresh_interval: Duration) -> Duration {
    (refresh_interval / 2).min(Duration::from_secs(60))
}

struct PendingLookup {
    peer: PeerId,
    started: Instant,
    waiters: Vec<oneshot::Sender<Result<PeerRecord, FindError>>>,
    answered: bool,
    /// Queries run for this lookup so far.
    attempts: u32,
    /// Requests sent by the queries before the current one.
    earlier_requests: u32,
}

/// Queries one lookup may run: a lookup that timed out or came back empty
/// (a busy network, a table still filling) is asked once more.
const LOOKUP_ATTEMPTS: u32 = 2;
/// The first wait before publishing again after a publish reached nobody.
const PUBLISH_RETRY_BASE: Duration = Duration::from_secs(2);

/// Open connections whose remote address is remembered, at most.
const MAX_TRACKED_CONNECTIONS: usize = 10_000;
/// Verified records kept in `DhtState::found`.
const MAX_FOUND: usize = 10_000;
/// Peers whose last reachability lookup is remembered.
const MAX_LOOKED_UP: usize = 10_000;
/// Per-peer put counters kept.
const MAX_PUT_COUNTERS: usize = 10_000;
/// The least time between two reachability lookups for one peer.
const RELOOKUP_AFTER: Duration = Duration::from_secs(5);
/// Why an ephemeral message for a peer that could not be reached was dropped.
const UNREACHABLE_SHED: &str =
    "shed: the recipient could not be reached, and ephemeral messages are not relayed or left at mailboxes";
/// Records handed to one new routing-table peer at most.
const HANDOFF_MAX: usize = 32;
/// The least time between two bootstraps when the table runs low.
const REBOOTSTRAP_AFTER: Duration = Duration::from_secs(10);
/// How often the routing table's peers are saved.
const SAVE_PEERS_EVERY: Duration = Duration::from_secs(30);
/// How long a count of the routing table is trusted without a change seen.
const TABLE_RECOUNT: Duration = Duration::from_secs(10);
/// The outbox is looked at this often even when nothing is due by the
/// last round's reckoning: a safety net, not the schedule.
const DUE_RECHECK: Duration = Duration::from_secs(30);
/// Routing-table peers saved and re-added at start, at most.
const MAX_SAVED_PEERS: u32 = 500;

impl EventLoop {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(self.shared.config.delivery.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.due_dirty && !self.due_running && self.shutdown.is_none() {
                self.start_due_round();
            }
            if let Some((_, deadline)) = &self.shutdown {
                if self.background == 0 || tokio::time::Instant::now() >= *deadline {
                    break;
                }
            }
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => {
                        // Every handle is gone: nobody can use the node.
                        break;
                    }
                },
                Some(internal) = self.internal_rx.recv() => self.on_internal(internal),
                _ = tick.tick() => self.on_tick(),
            }
        }
        self.finish().await;
    }

    async fn finish(mut self) {
        let peers = self.routing_peers();
        let now = self.now_ms();
        let store = self.shared.store.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let mut guard = store.lock().unwrap_or_else(|p| p.into_inner());
            guard.save_dht_peers(&peers, now)
        })
        .await;
        let store = self.shared.store.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let guard = store.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = guard.checkpoint() {
                tracing::warn!("checkpoint at shutdown failed: {e}");
            }
        })
        .await;
        if let Some((reply, _)) = self.shutdown.take() {
            let _ = reply.send(());
        }
        tracing::info!(peer = %self.shared.peer_id, "node stopped");
    }

    fn now_ms(&self) -> u64 {
        self.shared.clock.now_ms()
    }

    /// Runs `work` on a blocking thread with the store; its result (if any)
    /// comes back as an [`Internal`].
    fn background(&mut self, work: impl FnOnce(&mut Store) -> Option<Internal> + Send + 'static) {
        self.background += 1;
        let store = self.shared.store.clone();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let result = tokio::task::spawn_blocking(move || {
                let mut guard = store.lock().unwrap_or_else(|p| p.into_inner());
                work(&mut guard)
            })
            .await;
            let internal = match result {
                Ok(Some(internal)) => internal,
                Ok(None) => Internal::Settled,
                Err(e) => {
                    tracing::error!("background store task failed: {e}");
                    Internal::Settled
                }
            };
            let _ = tx.send(internal).await;
        });
    }

    /// Like [`background`](Self::background), but `write` joins the next
    /// shared commit of the group committer; `finish` builds the result once
    /// that commit's outcome is known (`Err`: the writes were rolled back).
    fn committed<T: Send + 'static>(
        &mut self,
        write: impl FnOnce(&mut Store) -> T + Send + 'static,
        finish: impl FnOnce(T, Result<(), String>) -> Option<Internal> + Send + 'static,
    ) {
        self.background += 1;
        let committer = self.shared.committer.clone();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let internal = match committer.run(write).await {
                Ok(done) => finish(done.value, done.durable),
                Err(crate::commit::JobLost) => None,
            };
            let _ = tx.send(internal.unwrap_or(Internal::Settled)).await;
        });
    }

    fn emit(&self, event: NodeEvent) {
        let _ = self.shared.events.send(event);
    }

    // ---- our peer record -------------------------------------------------

    fn sign_record(&mut self) {
        let now = self.now_ms();
        self.record_seq = now.max(self.record_seq + 1);
        let ttl_ms =
            u64::try_from(self.shared.config.network.record_ttl.as_millis()).unwrap_or(u64::MAX);
        let record = PeerRecord {
            peer_id: self.shared.peer_id,
            addrs: self.announced_addrs(),
            box_key: *self.identity.box_keys().public(),
            protocol_version: peercomm_wire::limits::PROTOCOL_VERSION,
            seq: self.record_seq,
            expires_ms: now.saturating_add(ttl_ms),
            roles: self
                .shared
                .config
                .roles
                .iter()
                .map(|r| r.as_str().to_string())
                .collect(),
            onion: Some(self.onion.record_key()),
            // Dictionaries we want to receive with (we open every one we
            // have regardless).
            dictionaries: if self.shared.config.bandwidth.compression_on() {
                peercomm_wire::SUPPORTED_DICTIONARIES.to_vec()
            } else {
                Vec::new()
            },
        };
        match record.sign(self.identity.keypair()) {
            Ok(bytes) => {
                self.record = bytes;
                self.record_signed_ms = now;
                if self.dht.joined {
                    self.publish();
                }
            }
            Err(e) => tracing::error!("cannot sign our peer record: {e}"),
        }
    }

    /// What our record announces: the addresses we listen on, then the
    /// external ones (configured, or observed by enough peers), no duplicates.
    fn announced_addrs(&self) -> Vec<Multiaddr> {
        let mut addrs = self.listen_addrs.clone();
        for addr in self.swarm.external_addresses() {
            if !addrs.contains(addr) {
                addrs.push(addr.clone());
            }
        }
        addrs
    }

    fn on_record_bytes(&mut self, from: PeerId, bytes: Vec<u8>) {
        let now = self.now_ms();
        let stats = self.shared.stats.clone();
        let digest = RecordDigest::of(&bytes);
        if let Some(addrs) = self.known_records.addrs_if_known(&from, &digest, now) {
            // A reconnecting peer with the record we verified and stored:
            // nothing to check or write.
            bump(&stats.records_unchanged);
            self.on_record_stored(from, addrs, None, None);
            return;
        }
        // With nothing pending in the outbox there is nothing to release.
        let reschedule = !self.outbox_idle();
        self.background(move |store| {
            let record = match peercomm_wire::verify_record(&bytes, now) {
                Ok(r) if r.peer_id == from => r,
                Ok(r) => {
                    tracing::debug!(%from, claimed = %r.peer_id, "record for another peer");
                    bump(&stats.records_rejected);
                    return None;
                }
                Err(e) => {
                    tracing::debug!(%from, "bad peer record: {e}");
                    bump(&stats.records_rejected);
                    return None;
                }
            };
            let row = PeerRow {
                peer_id: from.to_base58(),
                record: bytes,
                seq: record.seq,
                addrs: record.addrs.iter().map(|a| a.to_string()).collect(),
                box_key: record.box_key,
                first_seen_ms: now,
                last_seen_ms: now,
            };
            // One transaction for the record and the messages it releases.
            let (fresh, committed) = store.in_one_commit(|store| {
                let fresh = store.upsert_peer(&row).map(|outcome| {
                    let fresh = outcome != UpsertOutcome::Stale;
                    bump(if fresh {
                        &stats.records_accepted
                    } else {
                        &stats.records_rejected
                    });
                    fresh
                });
                // Whatever we hold now, messages to this peer can go out.
                if reschedule {
                    if let Err(e) = store.reschedule_recipient(&from.to_base58(), now) {
                        tracing::warn!("cannot reschedule messages to {from}: {e}");
                    }
                }
                fresh
            });
            let (fresh, known) = match committed.and(fresh) {
                Ok(true) => (true, Some((digest, record.expires_ms))),
                // Stale: we hold a newer one; check the next one in full.
                Ok(false) => (false, None),
                Err(e) => {
                    tracing::warn!("cannot store the record of {from}: {e}");
                    (false, None)
                }
            };
            Some(Internal::RecordStored {
                peer: from,
                relay: fresh.then(|| onion::relay_of(&record)),
                addrs: record.addrs,
                known,
            })
        });
    }

    /// A peer's record is verified and stored (or was already): learn its
    /// addresses and relay key, and release what waits for it.
    fn on_record_stored(
        &mut self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        relay: Option<Option<crate::onion::path::Relay>>,
        known: Option<(RecordDigest, u64)>,
    ) {
        if let Some((digest, expires_ms)) = known {
            let now = self.now_ms();
            self.known_records
                .remember(peer, digest, expires_ms, addrs.clone(), now);
        }
        self.route.note_relays(peer, &addrs);
        if let Some(relay) = relay.filter(|_| peer != self.shared.peer_id) {
            self.onion.learn_relay(peer, relay);
        }
        for addr in addrs {
            self.swarm.add_peer_address(peer, addr);
        }
        if !self.outbox_idle() {
            self.due_dirty = true;
        }
        self.emit(NodeEvent::PeerRecord { peer });
    }

    /// Whether the outbox holds nothing to send: the last due round found
    /// nothing pending and nothing was queued or made due since. A new
    /// connection or record then has no message to release, and neither a
    /// reschedule nor a due round is needed. (A message queued meanwhile is
    /// due at once, so it never waits on a skipped reschedule.)
    fn outbox_idle(&self) -> bool {
        self.next_due_ms == u64::MAX && !self.due_dirty && !self.due_running
    }

    // ---- start-up ----------------------------------------------------------

    async fn dial_at_start(&mut self) {
        for addr in self.shared.config.bootstrap.clone() {
            if let Some(Protocol::P2p(peer)) = addr.iter().last() {
                self.remember_addr(peer, strip_p2p(&addr));
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer, strip_p2p(&addr));
            }
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::warn!(%addr, "cannot dial configured peer: {e}");
            }
        }
        let store = self.shared.store.clone();
        let known = tokio::task::spawn_blocking(move || {
            let guard = store.lock().unwrap_or_else(|p| p.into_inner());
            guard.peers(DIAL_KNOWN_AT_START as u32)
        })
        .await;
        let store = self.shared.store.clone();
        let saved = tokio::task::spawn_blocking(move || {
            let guard = store.lock().unwrap_or_else(|p| p.into_inner());
            guard.dht_peers(MAX_SAVED_PEERS)
        })
        .await;
        if let Ok(Ok(saved)) = saved {
            for (peer, addrs) in saved {
                let Ok(peer) = peer.parse::<PeerId>() else {
                    continue;
                };
                // In our table last run: not new to the network, so it needs
                // no hand-off of what we hold (with DHT tuning).
                let within = self.shared.config.dht.republish_interval;
                self.dht.routed.returning(peer, Instant::now(), within);
                for addr in addrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()) {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                }
            }
        }
        self.bootstrap();
        let store = self.shared.store.clone();
        let remembered = tokio::task::spawn_blocking(move || {
            let guard = store.lock().unwrap_or_else(|p| p.into_inner());
            guard.own_mailboxes()
        })
        .await;
        self.mailbox_on_start(match remembered {
            Ok(Ok(peers)) => peers.iter().filter_map(|p| p.parse().ok()).collect(),
            _ => Vec::new(),
        });
        let Ok(Ok(known)) = known else { return };
        for row in known {
            let Ok(peer) = row.peer_id.parse::<PeerId>() else {
                continue;
            };
            let addrs: Vec<Multiaddr> = row.addrs.iter().filter_map(|a| a.parse().ok()).collect();
            for addr in &addrs {
                self.swarm.add_peer_address(peer, addr.clone());
            }
            let _ = self.swarm.dial(
                DialOpts::peer_id(peer)
                    .addresses(addrs)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build(),
            );
        }
    }

    // ---- the outbox --------------------------------------------------------

    fn on_tick(&mut self) {
        if self.now_ms() >= self.next_due_ms || self.due_checked.elapsed() >= DUE_RECHECK {
            self.due_dirty = true;
        }
        self.dht_tick();
        self.bw_tick();
        self.onion_tick();
        self.mailbox_tick();
        self.groups_tick();
        let ttl_ms =
            u64::try_from(self.shared.config.network.record_ttl.as_millis()).unwrap_or(u64::MAX);
        if self.now_ms().saturating_sub(self.record_signed_ms) > ttl_ms / 2 {
            self.sign_record();
        }
    }

    /// Takes the due messages from the outbox: expires what is past its
    /// lifetime, seals what can be sealed, schedules each message's next
    /// attempt *before* this one goes out (so a crash never loses a retry).
    fn start_due_round(&mut self) {
        self.due_dirty = false;
        self.due_running = true;
        self.due_checked = Instant::now();
        let now = self.now_ms();
        let batch = self.shared.config.delivery.batch as u32;
        let skip = self.in_flight_ids.clone();
        let backoff = self.backoff;
        let presence = self
            .shared
            .config
            .bandwidth
            .adaptive_retry_on()
            .then(|| self.bw.presence.clone());
        let replicas = self.shared.config.mailbox.replicas as u32;
        let mut rng =
            StdRng::from_rng(&mut self.rng).unwrap_or_else(|_| StdRng::seed_from_u64(now));
        let keypair = self.identity.keypair().clone();
        let events = self.shared.events.clone();
        let stats = self.shared.stats.clone();
        let compress_mode = CompressMode::of(&self.shared.config.bandwidth);
        self.background(move |store| {
            match store.expire_due(now) {
                Ok(expired) => {
                    for id in expired {
                        let _ = events.send(NodeEvent::MessageState {
                            id: MessageId::from(id),
                            state: DeliveryState::Expired,
                        });
                    }
                }
                Err(e) => tracing::warn!("cannot expire messages: {e}"),
            }
            let due = match store.due_outgoing(now, batch) {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!("cannot read the outbox: {e}");
                    return Some(Internal::Due {
                        attempts: Vec::new(),
                        full: false,
                        next_due_ms: 0,
                    });
                }
            };
            let full = due.len() as u32 >= batch;
            let mut attempts = Vec::with_capacity(due.len());
            let mut updates = Vec::with_capacity(due.len());
            for m in due {
                let id = MessageId::from(m.id);
                if skip.contains(&id) {
                    continue;
                }
                let Ok(recipient) = m.recipient.parse::<PeerId>() else {
                    let _ = store.set_state(&m.id, DeliveryState::Failed, now);
                    continue;
                };
                let peer = store.get_peer(&m.recipient).ok().flatten();
                let mut envelope = m.envelope.clone();
                let held = m.held_by(replicas);
                let delay = match &presence {
                    Some(p) => p.lock().unwrap_or_else(|p| p.into_inner()).delay(
                        &backoff,
                        &recipient,
                        m.attempts + 1,
                        held,
                        Instant::now(),
                        &mut rng,
                    ),
                    None => backoff.delay_held(m.attempts + 1, held, &mut rng),
                };
                let mut update = AttemptUpdate {
                    id: m.id,
                    next_attempt_ms: now
                        .saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)),
                    error: None,
                    envelope: None,
                };
                if envelope.is_none() {
                    match &peer {
                        Some(peer) => {
                            let opts = compress_mode.options(&peer.record);
                            count_compression(&stats, &m.body, &opts);
                            match seal_outgoing(
                                &keypair,
                                &m,
                                recipient,
                                &peer.box_key,
                                &opts,
                                &mut rng,
                            ) {
                                Ok(sealed) => {
                                    update.envelope = Some(sealed.clone());
                                    envelope = Some(sealed);
                                }
                                Err(e) => {
                                    let _ = store.set_state(&m.id, DeliveryState::Failed, now);
                                    tracing::warn!(%id, "cannot seal: {e}");
                                    continue;
                                }
                            }
                        }
                        None => {
                            update.error =
                                Some("no record of the recipient yet: connecting to it".into())
                        }
                    }
                }
                let onion = peer
                    .as_ref()
                    .and_then(|p| peercomm_wire::verify_record(&p.record, 0).ok())
                    .and_then(|r| r.onion);
                updates.push(update);
                attempts.push(Attempt {
                    id,
                    recipient,
                    route: m.route,
                    attempt: m.attempts + 1,
                    priority: peercomm_wire::Priority::try_from(i32::from(m.priority))
                        .unwrap_or(peercomm_wire::Priority::Interactive),
                    envelope,
                    addrs: peer
                        .map(|p| p.addrs.iter().filter_map(|a| a.parse().ok()).collect())
                        .unwrap_or_default(),
                    onion,
                });
            }
            // One commit for the round: each next attempt is scheduled before
            // this attempt goes out, so a crash never strands a message.
            if let Err(e) = store.record_attempts(now, &updates) {
                tracing::warn!("cannot record attempts: {e}");
                attempts.clear();
            }
            let next_due_ms = match store.next_due_ms() {
                Ok(next) => next.unwrap_or(u64::MAX),
                Err(e) => {
                    tracing::warn!("cannot read when the outbox is next due: {e}");
                    0
                }
            };
            Some(Internal::Due {
                attempts,
                full,
                next_due_ms,
            })
        });
    }

    fn on_due(&mut self, attempts: Vec<Attempt>, full: bool, next_due_ms: u64) {
        self.due_running = false;
        self.next_due_ms = next_due_ms;
        if full {
            self.due_dirty = true;
        }
        if self.shutdown.is_some() {
            return;
        }
        for attempt in attempts {
            let mut addrs = attempt.addrs;
            if let Some(told) = self.told_addrs.get(&attempt.recipient) {
                for addr in told {
                    if !addrs.contains(addr) {
                        addrs.push(addr.clone());
                    }
                }
            }
            match attempt.envelope {
                Some(envelope) if attempt.route == Route::Onion => {
                    self.in_flight_ids.insert(attempt.id);
                    match attempt.onion {
                        Some(onion_key) => self.send_onion(onion::OnionSend {
                            id: attempt.id,
                            recipient: attempt.recipient,
                            onion_key,
                            envelope,
                        }),
                        None => self.origin_failed(
                            attempt.id,
                            "the recipient's record has no onion key (an older peercomm?)",
                        ),
                    }
                }
                Some(_)
                    if self.goes_routed(attempt.recipient, attempt.route)
                        && self.sheds_when_unreachable(attempt.priority) =>
                {
                    self.shed(vec![attempt.id], UNREACHABLE_SHED);
                }
                Some(envelope) if self.goes_routed(attempt.recipient, attempt.route) => {
                    bump(&self.shared.stats.attempts);
                    self.in_flight_ids.insert(attempt.id);
                    self.send_routed(attempt.id, attempt.recipient, attempt.attempt, envelope);
                }
                Some(envelope) if self.queues_on() => {
                    bump(&self.shared.stats.attempts);
                    self.in_flight_ids.insert(attempt.id);
                    let flight = InFlight {
                        id: attempt.id,
                        route: attempt.route,
                        attempt: attempt.attempt,
                        priority: attempt.priority,
                        envelope,
                    };
                    self.bw_enqueue(attempt.recipient, attempt.priority, flight, addrs);
                }
                Some(envelope) => {
                    let request_id = self.swarm.behaviour_mut().msg.send_request_with_addresses(
                        &attempt.recipient,
                        envelope.clone(),
                        addrs,
                    );
                    bump(&self.shared.stats.attempts);
                    self.in_flight.insert(
                        request_id,
                        InFlight {
                            id: attempt.id,
                            route: attempt.route,
                            attempt: attempt.attempt,
                            priority: attempt.priority,
                            envelope,
                        },
                    );
                    self.in_flight_ids.insert(attempt.id);
                }
                None => {
                    // We need the peer's record first; connecting exchanges it,
                    // and the DHT has it for peers we know no address of.
                    if !self.swarm.is_connected(&attempt.recipient) && addrs.is_empty() {
                        self.lookup_unreachable(attempt.recipient);
                        continue;
                    }
                    if self.swarm.is_connected(&attempt.recipient) {
                        let record = self.record.clone();
                        self.swarm
                            .behaviour_mut()
                            .record
                            .send_request(&attempt.recipient, record);
                    } else {
                        let _ = self.swarm.dial(
                            DialOpts::peer_id(attempt.recipient)
                                .addresses(addrs)
                                .condition(PeerCondition::DisconnectedAndNotDialing)
                                .build(),
                        );
                    }
                }
            }
        }
    }

    fn on_msg_response(&mut self, peer: PeerId, request_id: OutboundRequestId, response: Vec<u8>) {
        self.bw_answered(request_id, true);
        let Some(flight) = self.in_flight.remove(&request_id) else {
            return;
        };
        let response = pb::MsgResponse::decode(response.as_slice()).map_err(|e| e.to_string());
        self.settle(peer, flight.id, response, None);
    }

    /// The recipient's answer to one of our messages (directly, or carried
    /// back along a route of `hops` hops): a receipt makes it delivered, a
    /// final reject makes it failed or expired.
    fn settle(
        &mut self,
        peer: PeerId,
        id: MessageId,
        response: Result<pb::MsgResponse, String>,
        hops: Option<u32>,
    ) {
        // `id` stays in `in_flight_ids` until the receipt is committed, so
        // no round resends it in between.
        let now = self.now_ms();
        let stats = self.shared.stats.clone();
        let events = self.shared.events.clone();
        let after = stats.clone();
        self.committed(
            move |store| {
                let mut gathered = Vec::new();
                settle_in_store(store, &stats, &mut gathered, peer, id, response, hops, now);
                gathered
            },
            move |gathered, durable| {
                if durable.is_ok() {
                    for event in &gathered {
                        if let NodeEvent::MessageState {
                            state: DeliveryState::Delivered,
                            ..
                        } = event
                        {
                            bump(&after.delivered);
                        }
                    }
                    send_events(&events, gathered);
                }
                // Rolled back: the message is still due, is sent again, and
                // the recipient's answer to the copy settles it.
                Some(Internal::Answered { id })
            },
        );
    }

    // ---- inbound envelopes ------------------------------------------------

    fn on_msg_request(
        &mut self,
        peer: PeerId,
        request: Vec<u8>,
        channel: ResponseChannel<Vec<u8>>,
    ) {
        if self.shutdown.is_some() {
            // Dropping the channel closes the stream: the sender retries.
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        self.responses.insert(token, channel);
        let now = self.now_ms();
        let identity = self.identity.clone();
        let stats = self.shared.stats.clone();
        let events = self.shared.events.clone();
        self.committed(
            move |store| {
                let mut gathered = Vec::new();
                let response =
                    accept_envelope(store, &identity, &stats, &mut gathered, peer, &request, now);
                (response, gathered)
            },
            move |(response, gathered), durable| {
                // The receipt promises the message is stored: only once it is.
                let response = match durable {
                    Ok(()) => {
                        send_events(&events, gathered);
                        response
                    }
                    Err(_) => reject_uncommitted(),
                };
                Some(Internal::Respond {
                    token,
                    response: response.encode_to_vec(),
                })
            },
        );
    }

    // ---- events ------------------------------------------------------------

    fn on_internal(&mut self, internal: Internal) {
        self.background = self.background.saturating_sub(1);
        match internal {
            Internal::Due {
                attempts,
                full,
                next_due_ms,
            } => self.on_due(attempts, full, next_due_ms),
            Internal::RespondBatch { token, response } => {
                if let Some(channel) = self.batch_responses.remove(&token) {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .msg_batch
                        .send_response(channel, response);
                }
            }
            Internal::Respond { token, response } => {
                if let Some(channel) = self.responses.remove(&token) {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .msg
                        .send_response(channel, response);
                }
            }
            Internal::RecordStored {
                peer,
                addrs,
                relay,
                known,
            } => self.on_record_stored(peer, addrs, relay, known),
            Internal::Rescheduled => self.due_dirty = true,
            Internal::Answered { id } => {
                self.in_flight_ids.remove(&id);
            }
            Internal::RouteRespond { token, response } => self.route_respond(token, response),
            Internal::Settled => {}
            Internal::OnionRelays { relays } => self.on_onion_relays(relays),
            Internal::OnionAnswer { surb, answer } => self.onion_answer(surb, answer),
            Internal::MailboxServed {
                token,
                from,
                response,
                effect,
            } => self.on_mailbox_served(token, from, response, effect),
            Internal::MailboxDepositReady { id, found } => self.on_deposit_ready(id, found),
            Internal::MailboxDrained(drained) => self.on_drained(drained),
            Internal::MailboxHolds(peer) => self.notify_recipient(peer),
            Internal::MailboxHandoffPage(page) => self.on_handoff_page(page),
            Internal::MailboxHandoffItems { job, peer, items } => {
                self.on_handoff_items(job, peer, items)
            }
            Internal::Group(done) => self.on_group_done(done),
            Internal::GroupInvite {
                group,
                peers,
                reply,
            } => self.group_fetch_key_packages(group, peers, Some(reply)),
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Kick => self.due_dirty = true,
            Command::Dial(addr, reply) => {
                let result = self.swarm.dial(addr).map_err(|e| e.to_string());
                let _ = reply.send(result);
            }
            Command::AddAddress(peer, addr) => {
                self.remember_addr(peer, addr.clone());
                self.swarm.add_peer_address(peer, addr);
                self.due_dirty = true;
            }
            Command::Peers(reply) => {
                let peers = self
                    .swarm
                    .connected_peers()
                    .map(|p| ConnectedPeer {
                        peer_id: *p,
                        addresses: Vec::new(),
                        has_record: false,
                    })
                    .collect();
                let _ = reply.send(peers);
            }
            Command::Addresses(reply) => {
                let _ = reply.send(self.listen_addrs.clone());
            }
            Command::FindPeer(peer, reply) => self.find_peer(peer, reply),
            Command::DhtStats(reply) => {
                let _ = reply.send(self.dht_stats());
            }
            Command::Bandwidth(reply) => {
                let _ = reply.send(self.bw_report());
            }
            Command::Routes(reply) => {
                let _ = reply.send(self.route.routes());
            }
            Command::Onion(reply) => {
                let _ = reply.send(self.onion.status());
            }
            Command::Group(command) => self.on_group_command(command),
            Command::Block(peer, true) => {
                self.swarm.behaviour_mut().blocked.block_peer(peer);
            }
            Command::Block(peer, false) => {
                self.swarm.behaviour_mut().blocked.unblock_peer(peer);
            }
            Command::Shutdown(reply) => {
                if self.shutdown.is_none() {
                    tracing::info!("shutting down");
                    self.shutdown = Some((reply, tokio::time::Instant::now() + SHUTDOWN_WAIT));
                } else {
                    let _ = reply.send(());
                }
            }
        }
    }

    // ---- the DHT ------------------------------------------------------------

    fn bootstrap(&mut self) {
        self.dht.last_bootstrap = Some(Instant::now());
        if self.swarm.behaviour_mut().kad.bootstrap().is_err() {
            tracing::debug!("no known DHT peers to bootstrap from yet");
        }
    }

    /// A step of a bootstrap finished (the self-lookup, or one bucket's
    /// refresh; `own_key` when it was the self-lookup). With DHT tuning:
    ///
    /// - a bootstrap that starts within [`full_refresh_gap`] of a complete
    ///   one keeps its self-lookup and skips the bucket refreshes: Kademlia
    ///   starts one whenever a peer enters a table of fewer than 20, so in a
    ///   small network every peer coming back online had every node walk
    ///   every bucket again (most of the DHT's bytes);
    /// - otherwise libp2p's refreshes (full lookups) give way to lean ones
    ///   ([`crate::dht::refresh`]) once the self-lookup is done.
    ///
    /// Each skipped step is finished before it sends a request.
    fn on_bootstrap_step(&mut self, id: QueryId, last: bool, own_key: bool) {
        let cut = self.dht.cutting.contains(&id);
        if last {
            if !self.dht.cutting.remove(&id) {
                self.dht.full_refresh_at = Some(Instant::now());
            }
            return;
        }
        let tuning = self.shared.config.bandwidth.dht_tuning_on();
        let gap = full_refresh_gap(self.shared.config.dht.refresh_interval);
        let soon_after_full = tuning
            && self.dht.joined
            && self
                .dht
                .full_refresh_at
                .is_some_and(|at| at.elapsed() < gap);
        let lean = tuning && own_key && !cut && !soon_after_full;
        if !cut && !soon_after_full && !lean {
            return;
        }
        if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
            q.finish();
            if !cut {
                self.dht.cutting.insert(id);
                if soon_after_full {
                    bump(&self.shared.stats.dht_refreshes_cut);
                }
            }
        }
        if lean {
            self.lean_refresh();
            self.dht.full_refresh_at = Some(Instant::now());
        }
    }

    /// Requests a bootstrap step or a lean refresh sent.
    fn count_refresh_requests(&self, stats: &kad::QueryStats) {
        add(
            &self.shared.stats.dht_refresh_requests,
            u64::from(stats.num_requests()),
        );
    }

    /// Refreshes every bucket beyond our closest neighbour's with a lookup
    /// for the few peers closest to a random key in it.
    fn lean_refresh(&mut self) {
        use crate::dht::refresh;
        let local = kad::KBucketKey::from(self.shared.peer_id);
        let kad = &mut self.swarm.behaviour_mut().kad;
        let closest = kad
            .kbuckets()
            .next()
            .and_then(|b| refresh::bucket_of(b.range().0));
        let n = NonZeroUsize::new(refresh::REFRESH_RESULTS).unwrap_or(NonZeroUsize::MIN);
        let mut started = 0u64;
        for index in refresh::buckets_to_refresh(closest) {
            let id = kad.get_n_closest_peers(refresh::key_in_bucket(&local, index), n);
            self.dht.refreshing.insert(id);
            started += 1;
        }
        add(&self.shared.stats.dht_lean_refreshes, started);
    }

    /// Our record under `/peercomm/peer/<us>`, to the k closest peers.
    fn publish(&mut self) {
        self.dht.last_publish = Some(Instant::now());
        self.dht.publish_retry_at = None;
        self.dht.published_table = self.routing_table_len();
        let record = self.own_dht_record();
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .kad
            .put_record(record, kad::Quorum::One)
        {
            tracing::warn!("cannot publish our record: {e}");
        }
    }

    /// Our record, straight to the k closest peers in our routing table: the
    /// fallback when a full publish timed out before it found the closest
    /// peers of the whole network (a busy network, slow dials).
    fn publish_direct(&mut self) {
        let record = self.own_dht_record();
        let k = self.shared.config.dht.k;
        let kad = &mut self.swarm.behaviour_mut().kad;
        let target = kad::KBucketKey::new(record.key.clone());
        let closest: Vec<PeerId> = kad
            .get_closest_local_peers(&target)
            .take(k)
            .map(|key| *key.preimage())
            .collect();
        if closest.is_empty() {
            self.on_published(false);
            return;
        }
        let query = kad.put_record_to(record, closest.into_iter(), kad::Quorum::One);
        self.dht.direct_publish = Some(query);
    }

    fn own_dht_record(&self) -> kad::Record {
        let mut record = kad::Record::new(peer_key(&self.shared.peer_id), self.record.clone());
        record.publisher = Some(self.shared.peer_id);
        record.expires = Some(Instant::now() + self.shared.config.network.record_ttl);
        record
    }

    /// Peers in the routing table. Counting walks all 256 buckets, which
    /// every node did on every tick: with thousands of nodes in one process
    /// that was a fifth of an idle network's CPU. The count is kept, and
    /// made again only after the table changed or [`TABLE_RECOUNT`] since
    /// the last count (Kademlia may drop a peer without telling us).
    fn routing_table_len(&mut self) -> usize {
        let stale = self.dht.table_changed
            || self
                .dht
                .table_counted
                .is_none_or(|t| t.elapsed() >= TABLE_RECOUNT);
        if stale {
            self.dht.table_len = self
                .swarm
                .behaviour_mut()
                .kad
                .kbuckets()
                .map(|b| b.num_entries())
                .sum();
            self.dht.table_counted = Some(Instant::now());
            self.dht.table_changed = false;
        }
        self.dht.table_len
    }

    /// The routing table may have changed: count it again when asked, and
    /// save its peers at the next save.
    fn routing_table_touched(&mut self) {
        self.dht.table_changed = true;
        self.dht.peers_unsaved = true;
    }

    fn dht_tick(&mut self) {
        let config = self.shared.config.dht.clone();
        let table = self.routing_table_len();
        let since_bootstrap = self.dht.last_bootstrap.map(|t| t.elapsed());
        if table < config.low_watermark
            && since_bootstrap.is_none_or(|d| d >= REBOOTSTRAP_AFTER)
            && self.shutdown.is_none()
        {
            for addr in self.shared.config.bootstrap.clone() {
                let _ = self.swarm.dial(addr);
            }
            self.bootstrap();
        }
        // Publish again on the timer, and early while the routing table is
        // still growing fast (a node that joined with a small table placed
        // its record at the few peers it knew, not at the k closest).
        let grew = table >= 2 * self.dht.published_table.max(1)
            && self
                .dht
                .last_publish
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        let retry_due = self
            .dht
            .publish_retry_at
            .is_some_and(|at| Instant::now() >= at);
        if self.dht.joined
            && (grew
                || retry_due
                || self
                    .dht
                    .last_publish
                    .is_none_or(|t| t.elapsed() >= config.republish_interval))
        {
            self.publish();
        }
        if self.dht.peers_unsaved
            && self
                .dht
                .last_saved
                .is_none_or(|t| t.elapsed() >= SAVE_PEERS_EVERY)
        {
            self.dht.last_saved = Some(Instant::now());
            self.dht.peers_unsaved = false;
            let peers = self.routing_peers();
            let now = self.now_ms();
            self.background(move |store| {
                if let Err(e) = store.save_dht_peers(&peers, now) {
                    tracing::warn!("cannot save routing-table peers: {e}");
                }
                None
            });
        }
    }

    fn routing_peers(&mut self) -> Vec<(String, Vec<String>)> {
        let mut peers = Vec::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            for entry in bucket.iter() {
                let addrs = entry.node.value.iter().map(|a| a.to_string()).collect();
                peers.push((entry.node.key.preimage().to_base58(), addrs));
                if peers.len() >= MAX_SAVED_PEERS as usize {
                    return peers;
                }
            }
        }
        peers
    }

    /// Adds a peer to the routing table if its bucket has room for its subnet.
    fn dht_add(&mut self, peer: PeerId, addr: Multiaddr) {
        let limit = self.shared.config.dht.max_peers_per_subnet;
        let was_empty = !self.dht.joined && self.routing_table_len() == 0;
        let kad = &mut self.swarm.behaviour_mut().kad;
        if limit > 0 && diversity::subnet(&addr).is_some() {
            if let Some(bucket) = kad.kbucket(peer) {
                let members: Vec<Vec<Multiaddr>> = bucket
                    .iter()
                    .filter(|e| *e.node.key.preimage() != peer)
                    .map(|e| e.node.value.iter().cloned().collect())
                    .collect();
                if !diversity::admits(&addr, members.iter().map(|m| m.as_slice()), limit) {
                    tracing::debug!(%peer, %addr, "bucket full for this subnet");
                    return;
                }
            }
        }
        kad.add_address(&peer, addr);
        self.routing_table_touched();
        if was_empty {
            // The first peer we learn of: join through it now.
            self.bootstrap();
        }
    }

    fn find_peer(&mut self, peer: PeerId, reply: oneshot::Sender<Result<PeerRecord, FindError>>) {
        if let Some((record, at)) = self.dht.found.get(&peer) {
            if at.elapsed() < self.shared.config.dht.cache_ttl && record.expires_ms > self.now_ms()
            {
                let _ = reply.send(Ok(record.clone()));
                return;
            }
        }
        match self.start_lookup(peer) {
            Some(query) => {
                if let Some(lookup) = self.dht.lookups.get_mut(&query) {
                    lookup.waiters.push(reply);
                }
            }
            None => {
                let _ = reply.send(Err(FindError::NotJoined));
            }
        }
    }

    /// A peer a message cannot reach: look its record up, at most every few seconds.
    fn lookup_unreachable(&mut self, peer: PeerId) {
        if self
            .dht
            .looked_up
            .get(&peer)
            .is_some_and(|t| t.elapsed() < RELOOKUP_AFTER)
        {
            return;
        }
        if self.dht.looked_up.len() >= MAX_LOOKED_UP {
            self.dht
                .looked_up
                .retain(|_, t| t.elapsed() < RELOOKUP_AFTER);
        }
        self.dht.looked_up.insert(peer, Instant::now());
        let _ = self.start_lookup(peer);
    }

    /// Starts (or joins) a lookup of `peer`'s record; `None` if the routing
    /// table is empty.
    fn start_lookup(&mut self, peer: PeerId) -> Option<QueryId> {
        if let Some(query) = self.dht.lookup_of.get(&peer) {
            return Some(*query);
        }
        if self.routing_table_len() == 0 {
            return None;
        }
        // A record we hold ourselves is not an answer: ask the network.
        let query = self.swarm.behaviour_mut().kad.get_record(peer_key(&peer));
        self.dht.lookups.insert(
            query,
            PendingLookup {
                peer,
                started: Instant::now(),
                waiters: Vec::new(),
                answered: false,
                attempts: 1,
                earlier_requests: 0,
            },
        );
        self.dht.lookup_of.insert(peer, query);
        Some(query)
    }

    fn count_rejection(&self, rejection: Rejection) {
        let stats = &self.shared.stats;
        bump(match rejection {
            Rejection::Forged => &stats.dht_rejected_forged,
            Rejection::Stale => &stats.dht_rejected_stale,
            Rejection::Expired => &stats.dht_rejected_expired,
            Rejection::TooLarge => &stats.dht_rejected_too_large,
            Rejection::Malformed => &stats.dht_rejected_malformed,
        });
    }

    /// The sequence of the record we hold under `key`, if any.
    fn held_seq(&mut self, key: &kad::RecordKey) -> Option<u64> {
        let held = self.swarm.behaviour_mut().kad.store_mut().get(key)?;
        peercomm_wire::verify_record(&held.value, 0)
            .ok()
            .map(|r| r.seq)
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::PutRecord {
                        source,
                        record: Some(record),
                        ..
                    },
            } => self.on_inbound_put(source, record),
            kad::Event::RoutingUpdated {
                is_new_peer: false, ..
            } => self.routing_table_touched(),
            kad::Event::RoutingUpdated {
                peer,
                is_new_peer: true,
                ..
            } => {
                self.routing_table_touched();
                let within = self.shared.config.dht.republish_interval;
                let returning = self.dht.routed.returning(peer, Instant::now(), within);
                if returning && self.shared.config.bandwidth.dht_tuning_on() {
                    // Its SQLite record store kept what it held.
                    bump(&self.shared.stats.dht_handoffs_skipped);
                } else {
                    self.hand_off(peer);
                }
            }
            kad::Event::RoutablePeer { peer, address }
            | kad::Event::PendingRoutablePeer { peer, address } => self.dht_add(peer, address),
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } if self.groups.owns_query(&id) => self.on_group_query(id, result, step.last),
            kad::Event::OutboundQueryProgressed {
                id,
                result,
                stats,
                step,
                ..
            } => match result {
                kad::QueryResult::Bootstrap(Ok(kad::BootstrapOk {
                    peer,
                    num_remaining,
                })) => {
                    self.count_refresh_requests(&stats);
                    self.on_bootstrap_step(id, step.last, peer == self.shared.peer_id);
                    // The table has peers: fetch what waited for us at once,
                    // without waiting for every bucket's refresh.
                    self.mailbox_first_drain();
                    if num_remaining == 0 && !self.dht.joined {
                        self.dht.joined = true;
                        tracing::info!("joined the DHT");
                        self.publish();
                    }
                }
                kad::QueryResult::Bootstrap(Err(e)) => {
                    self.count_refresh_requests(&stats);
                    if step.last {
                        self.dht.cutting.remove(&id);
                    }
                    // A bootstrap that timed out still filled the table.
                    tracing::debug!("bootstrap: {e}");
                    if self.routing_table_len() > 0 && !self.dht.joined {
                        self.dht.joined = true;
                        self.publish();
                    }
                }
                kad::QueryResult::PutRecord(result) if step.last => {
                    let direct = self.dht.direct_publish == Some(id);
                    if direct {
                        self.dht.direct_publish = None;
                    }
                    match result {
                        Err(e) if !direct && self.shutdown.is_none() => {
                            tracing::debug!(?stats, "publish timed out, putting directly: {e}");
                            self.publish_direct();
                        }
                        result => self.on_published(result.is_ok()),
                    }
                }
                kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(found))) => {
                    self.on_found_record(id, found.record, &stats);
                }
                kad::QueryResult::GetRecord(_) if step.last => self.finish_lookup(id, &stats),
                kad::QueryResult::GetClosestPeers(_) if self.dht.refreshing.contains(&id) => {
                    // What it found entered the table as it connected.
                    self.count_refresh_requests(&stats);
                    if step.last {
                        self.dht.refreshing.remove(&id);
                    }
                }
                kad::QueryResult::GetClosestPeers(result) if self.mailbox.owns(&id) => {
                    let peers = match result {
                        Ok(ok) => ok.peers,
                        Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                    };
                    self.on_mailbox_placement(id, peers.into_iter().map(|p| p.peer_id).collect());
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn on_inbound_put(&mut self, source: PeerId, record: kad::Record) {
        let now = Instant::now();
        if self.dht.puts.len() >= MAX_PUT_COUNTERS {
            self.dht
                .puts
                .retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
        }
        let entry = self.dht.puts.entry(source).or_insert((now, 0));
        if now.duration_since(entry.0) >= Duration::from_secs(60) {
            *entry = (now, 0);
        }
        entry.1 += 1;
        if entry.1 > self.shared.config.dht.max_puts_per_peer_per_minute {
            bump(&self.shared.stats.dht_rate_limited);
            return;
        }
        if record
            .key
            .as_ref()
            .starts_with(peercomm_wire::group::KEY_PACKAGES_PREFIX.as_bytes())
        {
            self.on_inbound_key_packages(source, record);
            return;
        }
        let held = self.held_seq(&record.key);
        match validate(&record, self.now_ms(), held) {
            Ok(_) => {
                if let Err(e) = self.swarm.behaviour_mut().kad.store_mut().put(record) {
                    tracing::debug!(%source, "record not stored: {e}");
                }
            }
            Err(rejection) => {
                tracing::debug!(%source, "DHT record refused: {rejection}");
                self.count_rejection(rejection);
            }
        }
    }

    fn on_found_record(&mut self, query: QueryId, record: kad::Record, stats: &kad::QueryStats) {
        let now = self.now_ms();
        let checked = validate(&record, now, None);
        let Some(lookup) = self.dht.lookups.get_mut(&query) else {
            return;
        };
        let peer = lookup.peer;
        let found = match checked {
            Ok(found) if found.peer_id == peer => found,
            Ok(_) => {
                self.count_rejection(Rejection::Forged);
                return;
            }
            Err(rejection) => {
                self.count_rejection(rejection);
                return;
            }
        };
        // The first valid record answers; stop the query there. The
        // counters are settled before anyone hears the answer, so an asker
        // that reads them next sees this lookup in them.
        lookup.answered = true;
        let waiters = std::mem::take(&mut lookup.waiters);
        if self.dht.found.len() >= MAX_FOUND {
            self.dht.found.clear();
        }
        self.dht.found.insert(peer, (found.clone(), Instant::now()));
        for addr in &found.addrs {
            self.swarm.add_peer_address(peer, addr.clone());
        }
        self.on_record_bytes(peer, record.value);
        self.finish_lookup(query, stats);
        for waiter in waiters {
            let _ = waiter.send(Ok(found.clone()));
        }
        if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&query) {
            q.finish();
        }
    }

    /// Kademlia's hand-off: a peer new to our routing table that is among
    /// the k closest we know to a record we hold gets a copy from us if we
    /// are the closest holder we know of, so records move to the nodes that
    /// join nearest them (libp2p-kad only re-replicates hourly). At most
    /// `HANDOFF_MAX` records per new peer.
    fn hand_off(&mut self, peer: PeerId) {
        let k = self.shared.config.dht.k;
        let local = kad::KBucketKey::from(self.shared.peer_id);
        let kad = &mut self.swarm.behaviour_mut().kad;
        let keys: Vec<kad::RecordKey> = kad.store_mut().records().map(|r| r.key.clone()).collect();
        let now = Instant::now();
        let mut due = Vec::new();
        for key in keys {
            if crate::dht::peer_of_key(&key) == Some(peer) {
                // Its own record: it has the newest one.
                continue;
            }
            let target = kad::KBucketKey::new(key.clone());
            let ours = local.distance(&target);
            if !hand_off_due(
                kad.get_closest_local_peers(&target),
                &peer,
                &target,
                ours,
                k,
            ) {
                continue;
            }
            if let Some(record) = kad.store_mut().get(&key) {
                if record.expires.is_none_or(|at| at > now) {
                    due.push(record.into_owned());
                }
            }
            if due.len() >= HANDOFF_MAX {
                break;
            }
        }
        for record in due {
            let _ = kad.put_record_to(record, std::iter::once(peer), kad::Quorum::One);
            bump(&self.shared.stats.dht_handoffs);
        }
    }

    /// A publish finished: reset the retry on success, back off on failure.
    fn on_published(&mut self, ok: bool) {
        let stats = &self.shared.stats;
        if ok {
            bump(&stats.dht_publish_ok);
            self.dht.publish_failures = 0;
            self.dht.publish_retry_at = None;
            return;
        }
        bump(&stats.dht_publish_failed);
        self.dht.publish_failures = self.dht.publish_failures.saturating_add(1);
        let wait = PUBLISH_RETRY_BASE
            .saturating_mul(1 << self.dht.publish_failures.min(10))
            .min(self.shared.config.dht.republish_interval);
        // Up to a quarter more, so peers that failed together spread out.
        let jitter = wait.mul_f64(rand::random::<f64>() / 4.0);
        self.dht.publish_retry_at = Some(Instant::now() + wait + jitter);
        tracing::debug!(?wait, "our record reached nobody; publishing again later");
    }

    fn finish_lookup(&mut self, query: QueryId, stats: &kad::QueryStats) {
        let Some(mut lookup) = self.dht.lookups.remove(&query) else {
            return;
        };
        if !lookup.answered && lookup.attempts < LOOKUP_ATTEMPTS && self.shutdown.is_none() {
            // Once more: the first query may have timed out on busy peers,
            // and it has taught the routing table closer ones.
            let retry = self
                .swarm
                .behaviour_mut()
                .kad
                .get_record(peer_key(&lookup.peer));
            lookup.attempts += 1;
            lookup.earlier_requests = lookup.earlier_requests.saturating_add(stats.num_requests());
            self.dht.lookup_of.insert(lookup.peer, retry);
            self.dht.lookups.insert(retry, lookup);
            bump(&self.shared.stats.dht_lookup_retries);
            return;
        }
        self.dht.lookup_of.remove(&lookup.peer);
        let ms = u64::try_from(lookup.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let requests = lookup.earlier_requests.saturating_add(stats.num_requests());
        self.dht.log.record(lookup.answered, requests, ms);
        let counters = &self.shared.stats;
        bump(&counters.dht_lookups);
        if lookup.answered {
            bump(&counters.dht_lookups_found);
        }
        add(&counters.dht_lookup_requests, u64::from(requests));
        for waiter in lookup.waiters {
            let _ = waiter.send(Err(FindError::NotFound(lookup.peer)));
        }
    }

    fn dht_stats(&mut self) -> DhtStats {
        let joined = self.dht.joined;
        let lookups = self.dht.log.figures();
        let kad = &mut self.swarm.behaviour_mut().kad;
        let mut buckets = Vec::new();
        let mut routing_table_peers = 0;
        for bucket in kad.kbuckets() {
            let n = bucket.num_entries();
            if n > 0 {
                let index = bucket.range().0.ilog2().unwrap_or(0);
                buckets.push((index, n));
                routing_table_peers += n;
            }
        }
        let records_held = kad.store_mut().records().count();
        DhtStats {
            routing_table_peers,
            buckets,
            records_held,
            joined,
            lookups,
        }
    }

    fn remember_addr(&mut self, peer: PeerId, addr: Multiaddr) {
        if self.told_addrs.len() >= MAX_TOLD_PEERS && !self.told_addrs.contains_key(&peer) {
            return;
        }
        let addrs = self.told_addrs.entry(peer).or_default();
        if !addrs.contains(&addr) {
            if addrs.len() >= MAX_TOLD_ADDRS_PER_PEER {
                addrs.remove(0);
            }
            addrs.push(addr);
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.metrics.record(&event);
        match &event {
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => self.metrics.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => self.metrics.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.metrics.record(e),
            _ => {}
        }
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                if !self.listen_addrs.contains(&address) {
                    self.listen_addrs.push(address.clone());
                    self.sign_record();
                }
                self.emit(NodeEvent::Listening { address });
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != &address);
                self.sign_record();
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                connection_id,
                ..
            } => {
                if self.remotes.len() < MAX_TRACKED_CONNECTIONS {
                    self.remotes
                        .insert(connection_id, endpoint.get_remote_address().clone());
                }
                if num_established.get() == 1 {
                    self.on_first_connection(peer_id, &endpoint);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                connection_id,
                ..
            } => {
                self.remotes.remove(&connection_id);
                if num_established == 0 {
                    self.bw
                        .presence
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .on_disconnected(peer_id, Instant::now());
                    self.route.router.forget_peer(&peer_id);
                    // What it speaks is learnt again from the next
                    // connection's identify: a peer that restarts may have
                    // turned batching off (it would refuse a batch).
                    self.bw.batch_peers.remove(&peer_id);
                    self.emit(NodeEvent::PeerDisconnected { peer: peer_id });
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Msg(event)) => self.on_msg_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::MsgBatch(event)) => {
                self.on_msg_batch_event(event)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Record(event)) => self.on_record_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Route(event)) => self.on_route_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Onion(event)) => self.on_onion_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Mailbox(event)) => self.on_mailbox_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(event)) => {
                self.on_gossipsub_event(event)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                connection_id,
            })) => {
                if let Some(remote) = self.remotes.get(&connection_id) {
                    let confirmed =
                        self.observed
                            .observe(remote, &info.observed_addr, &self.listen_addrs);
                    if let Some(addr) = confirmed {
                        tracing::info!(%addr, "peers in several subnets see us at this address");
                        self.swarm.add_external_address(addr);
                        self.sign_record();
                    }
                }
                let speaks_kad = info.protocols.contains(&KAD_PROTOCOL);
                if info.protocols.contains(&MSG_BATCH_PROTOCOL) {
                    self.bw.batch_peers.insert(peer_id);
                } else {
                    self.bw.batch_peers.remove(&peer_id);
                }
                for addr in info.listen_addrs {
                    if is_dialable(&addr) {
                        self.swarm.add_peer_address(peer_id, addr.clone());
                        if speaks_kad {
                            self.dht_add(peer_id, addr);
                        }
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.on_kad_event(event),
            _ => {}
        }
    }

    /// A first connection to `peer`: exchange records (as dialer), and let
    /// its pending messages go now.
    fn on_first_connection(&mut self, peer: PeerId, endpoint: &ConnectedPoint) {
        if let ConnectedPoint::Dialer { address, .. } = endpoint {
            let record = self.record.clone();
            self.swarm
                .behaviour_mut()
                .record
                .send_request(&peer, record);
            self.swarm.add_peer_address(peer, strip_p2p(address));
        }
        self.emit(NodeEvent::PeerConnected { peer });
        self.mailbox_on_connected(peer);
        let spread = self
            .bw
            .presence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .on_connected(peer, Instant::now());
        if self.outbox_idle() {
            // Nothing queued for anyone: nothing to release.
            return;
        }
        let mut now = self.now_ms();
        if self.shared.config.bandwidth.adaptive_retry_on() && !spread.is_zero() {
            // Many peers back at once (a healed partition): spread what is
            // queued for them instead of sending it all in one burst.
            use rand::Rng;
            let ms = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX);
            now = now.saturating_add(self.rng.gen_range(0..=ms));
        }
        self.background(move |store| {
            store
                .reschedule_recipient(&peer.to_base58(), now)
                .ok()
                .filter(|n| *n > 0)
                .map(|_| Internal::Rescheduled)
        });
    }

    fn on_msg_event(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.on_msg_request(peer, request, channel),
                request_response::Message::Response {
                    request_id,
                    response,
                } => self.on_msg_response(peer, request_id, response),
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                self.bw_answered(request_id, false);
                let unreachable = matches!(error, request_response::OutboundFailure::DialFailure);
                if let Some(flight) = self.in_flight.remove(&request_id) {
                    self.attempt_failed(peer, flight, &error.to_string(), unreachable);
                } else if unreachable {
                    self.lookup_unreachable(peer);
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                // Unreadable requests are counted by the codec; these are
                // timeouts and connections closed before we answered.
                bump(&self.shared.stats.inbound_stream_failures);
                tracing::debug!(%peer, "inbound message stream failed: {error}");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// A direct attempt failed: route it when the peer cannot be dialled,
    /// otherwise leave it to a mailbox and the next retry.
    fn attempt_failed(&mut self, peer: PeerId, flight: InFlight, error: &str, unreachable: bool) {
        if unreachable {
            // Its addresses may have changed: ask the DHT.
            self.lookup_unreachable(peer);
        }
        let id = flight.id;
        if unreachable && self.sheds_when_unreachable(flight.priority) {
            // Typing and presence for a peer that is away would only be
            // stale by the time relays or its mailboxes got them there.
            self.shed(vec![id], UNREACHABLE_SHED);
            return;
        }
        if unreachable && flight.route == Route::Auto && self.shutdown.is_none() {
            // It cannot be dialled: let the network carry it.
            self.route.mark_unreachable(peer);
            tracing::debug!(%peer, %id, "not reachable directly; routing it");
            self.send_routed(id, peer, flight.attempt, flight.envelope);
            return;
        }
        self.in_flight_ids.remove(&id);
        bump(&self.shared.stats.attempt_failures);
        tracing::debug!(%peer, %id, "attempt failed: {error}");
        self.mailbox_deposit(id);
        let note = format!("attempt failed: {error}");
        let now = self.now_ms();
        self.background(move |store| {
            let _ = store.note_error(id.as_bytes(), &note, now);
            None
        });
    }

    fn on_record_event(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let record = self.record.clone();
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .record
                        .send_response(channel, record);
                    self.on_record_bytes(peer, request);
                }
                request_response::Message::Response { response, .. } => {
                    self.on_record_bytes(peer, response);
                }
            },
            request_response::Event::OutboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, "record exchange failed: {error}");
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                bump(&self.shared.stats.records_rejected);
                tracing::debug!(%peer, "inbound record stream failed: {error}");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}

/// Whether a record under `target` is ours to hand to `peer`, new in the
/// routing table: `peer` is among the `k` peers we know closest to it, and
/// no other peer among them is closer than we are (`ours`), so we are the
/// closest holder and the one to send it, not all k of them. `closest`
/// yields known peers by increasing distance; it is read only as far as the
/// answer needs (usually one peer: someone else is closer than we are).
fn hand_off_due(
    closest: impl Iterator<Item = kad::KBucketKey<PeerId>>,
    peer: &PeerId,
    target: &kad::KBucketKey<kad::RecordKey>,
    ours: kad::KBucketDistance,
    k: usize,
) -> bool {
    let mut found = false;
    for known in closest.take(k) {
        if known.preimage() == peer {
            found = true;
        } else if known.distance(target) < ours {
            return false;
        } else if found {
            // This one and every later one are at least as far as we are.
            return true;
        }
    }
    found
}

/// How bodies are compressed before sealing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CompressMode {
    /// Never (`bandwidth.compression = false`: the user opted out).
    Off,
    /// Plain zstd from 64 bytes, as before adaptation (`adaptive = false`).
    Plain,
    /// With the shipped dictionary when the recipient's record lists it.
    Dictionary,
}

impl CompressMode {
    fn of(config: &crate::config::BandwidthConfig) -> Self {
        if !config.compression {
            Self::Off
        } else if config.adaptive {
            Self::Dictionary
        } else {
            Self::Plain
        }
    }

    /// Options for a recipient whose signed record is `record`.
    fn options(self, record: &[u8]) -> peercomm_wire::CompressOptions {
        match self {
            Self::Off => peercomm_wire::CompressOptions::disabled(),
            Self::Plain => peercomm_wire::CompressOptions::default(),
            Self::Dictionary => {
                let theirs = peercomm_wire::verify_record(record, 0)
                    .map(|r| r.dictionaries)
                    .unwrap_or_default();
                peercomm_wire::CompressOptions::for_recipient(&theirs)
            }
        }
    }
}

/// Counts how a body will be compressed.
fn count_compression(stats: &Stats, body: &[u8], opts: &peercomm_wire::CompressOptions) {
    match peercomm_wire::compress(body, opts) {
        Ok((peercomm_wire::CompressionKind::ZstdDict(_), _)) => bump(&stats.sealed_dictionary),
        Ok((peercomm_wire::CompressionKind::Zstd, _)) => bump(&stats.sealed_zstd),
        _ => bump(&stats.sealed_uncompressed),
    }
}

/// Seals an outgoing row for its recipient.
fn seal_outgoing(
    keypair: &libp2p::identity::Keypair,
    m: &peercomm_store::OutgoingMessage,
    recipient: PeerId,
    box_key: &[u8; 32],
    opts: &peercomm_wire::CompressOptions,
    rng: &mut StdRng,
) -> Result<Vec<u8>, peercomm_wire::SealError> {
    let priority = peercomm_wire::Priority::try_from(m.priority as i32)
        .unwrap_or(peercomm_wire::Priority::Interactive);
    let kind = peercomm_wire::Kind::try_from(m.kind as i32).unwrap_or(peercomm_wire::Kind::Chat);
    let draft = peercomm_wire::Draft {
        id: MessageId::from(m.id),
        recipient,
        created_ms: m.created_ms,
        expires_ms: m.expires_ms,
        priority,
        kind,
        body: &m.body,
    };
    peercomm_wire::seal_with(keypair, &draft, box_key, opts, rng)
}

/// Checks, opens and stores one inbound envelope; the answer is a receipt
/// (also for a duplicate, so a lost receipt is repaired) or a reject. The
/// event it raises goes to `events`, for the caller to send once the write is
/// committed ([`send_events`]).
fn accept_envelope(
    store: &mut Store,
    identity: &Identity,
    stats: &Stats,
    events: &mut Vec<NodeEvent>,
    from: PeerId,
    bytes: &[u8],
    now: u64,
) -> pb::MsgResponse {
    accept_envelope_seen(store, identity, stats, events, from, bytes, now, &mut None)
}

/// [`accept_envelope`] for a path whose write commits on its own (not
/// through the group committer): its event goes out at once.
fn accept_envelope_now(
    store: &mut Store,
    identity: &Identity,
    stats: &Stats,
    events: &broadcast::Sender<NodeEvent>,
    from: PeerId,
    bytes: &[u8],
    now: u64,
) -> pb::MsgResponse {
    let mut gathered = Vec::new();
    let answer = accept_envelope(store, identity, stats, &mut gathered, from, bytes, now);
    send_events(events, gathered);
    answer
}

/// Accepts each envelope of a batch request (concatenated frames, at most
/// [`MAX_BATCH_MESSAGES`](crate::config::MAX_BATCH_MESSAGES)); the answers
/// are in the same order ([`encode_answers`] frames them).
pub(crate) fn accept_batch(
    store: &mut Store,
    identity: &Identity,
    stats: &Stats,
    events: &mut Vec<NodeEvent>,
    from: PeerId,
    bytes: &[u8],
    now: u64,
) -> Vec<pb::MsgResponse> {
    let frames = bandwidth::split_frames(bytes, crate::config::MAX_BATCH_MESSAGES);
    if frames.is_empty() {
        bump(&stats.rejected_malformed);
    }
    frames
        .iter()
        .map(|frame| accept_envelope(store, identity, stats, events, from, frame, now))
        .collect()
}

/// Answers as concatenated frames: the body of a batch response.
pub(crate) fn encode_answers(answers: &[pb::MsgResponse]) -> Vec<u8> {
    let mut out = Vec::new();
    for answer in answers {
        if let Ok(encoded) = peercomm_wire::encode_frame(&answer.encode_to_vec()) {
            out.extend(encoded);
        }
    }
    out
}

/// [`accept_envelope`], also telling `seen` the envelope's header once its
/// signature verified, and whether it was stored now (not a duplicate).
#[allow(clippy::too_many_arguments)]
fn accept_envelope_seen(
    store: &mut Store,
    identity: &Identity,
    stats: &Stats,
    events: &mut Vec<NodeEvent>,
    from: PeerId,
    bytes: &[u8],
    now: u64,
    seen: &mut Option<(peercomm_wire::EnvelopeHeader, bool)>,
) -> pb::MsgResponse {
    let reject = |code: pb::RejectCode, reason: String| pb::MsgResponse {
        result: Some(pb::msg_response::Result::Reject(pb::Reject {
            code: code as i32,
            reason,
        })),
    };
    let verified = match peercomm_wire::verify(bytes, now) {
        Ok(v) => v,
        Err(e) => {
            let code = e.reject_code();
            bump(match code {
                pb::RejectCode::RejectTooLarge => &stats.rejected_too_large,
                pb::RejectCode::RejectBadSignature => &stats.rejected_bad_signature,
                pb::RejectCode::RejectExpired => &stats.rejected_expired,
                pb::RejectCode::RejectUnsupportedVersion => &stats.rejected_unsupported_version,
                pb::RejectCode::RejectUndecryptable => &stats.rejected_undecryptable,
                _ => &stats.rejected_malformed,
            });
            tracing::debug!(%from, "envelope rejected: {e}");
            return reject(code, e.to_string());
        }
    };
    let header = verified.header.clone();
    *seen = Some((header.clone(), false));
    if header.recipient != identity.peer_id() {
        bump(&stats.rejected_wrong_recipient);
        return reject(
            pb::RejectCode::RejectWrongRecipient,
            format!(
                "this node is {}, not {}",
                identity.peer_id(),
                header.recipient
            ),
        );
    }
    let body = match verified.open(identity.box_keys().secret()) {
        Ok(body) => body,
        Err(e) => {
            bump(&stats.rejected_undecryptable);
            return reject(pb::RejectCode::RejectUndecryptable, e.to_string());
        }
    };
    let row = NewIncoming {
        id: *header.id.as_bytes(),
        sender: header.sender.to_base58(),
        body,
        priority: header.priority as u8,
        kind: header.kind as u8,
        created_ms: header.created_ms,
        expires_ms: header.expires_ms,
        received_ms: now,
        envelope: bytes.to_vec(),
    };
    match store.insert_incoming(&row) {
        Ok(true) => {
            if let Some((_, fresh)) = seen.as_mut() {
                *fresh = true;
            }
            bump(&stats.received);
            events.push(NodeEvent::MessageReceived {
                id: header.id,
                from: header.sender,
            });
        }
        Ok(false) => bump(&stats.duplicates),
        Err(e) => {
            tracing::warn!("cannot store an incoming message: {e}");
            return reject_uncommitted();
        }
    }
    let receipt = match peercomm_wire::sign_receipt_message(
        identity.keypair(),
        header.id,
        &header.sender,
        now,
    ) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot sign a receipt: {e}");
            return reject(
                pb::RejectCode::RejectInternal,
                "cannot sign a receipt".into(),
            );
        }
    };
    pb::MsgResponse {
        result: Some(pb::msg_response::Result::Receipt(receipt)),
    }
}

/// Records the recipient's answer to one of our messages (see
/// [`EventLoop::settle`]); the events it raises go to `events`, to be sent
/// once the writes are committed.
#[allow(clippy::too_many_arguments)]
fn settle_in_store(
    store: &mut Store,
    stats: &Stats,
    events: &mut Vec<NodeEvent>,
    peer: PeerId,
    id: MessageId,
    response: Result<pb::MsgResponse, String>,
    hops: Option<u32>,
    now: u64,
) {
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            bump(&stats.bad_receipts);
            tracing::debug!(%peer, %id, "undecodable response: {e}");
            return;
        }
    };

    match response.result {
        Some(pb::msg_response::Result::Receipt(receipt)) => {
            match peercomm_wire::verify_signed_receipt(&receipt, &peer, id) {
                Ok(info) => {
                    let row = ReceiptRow {
                        message_id: *id.as_bytes(),
                        recipient: peer.to_base58(),
                        received_ms: info.received_ms,
                        signed: receipt.encode_to_vec(),
                    };
                    if let Some(hops) = hops {
                        if let Err(e) = store.set_hops(id.as_bytes(), hops, now) {
                            tracing::warn!(%id, "cannot record the hop count: {e}");
                        }
                    }
                    match store.mark_delivered(id.as_bytes(), &row, now) {
                        Ok(true) => events.push(NodeEvent::MessageState {
                            id,
                            state: DeliveryState::Delivered,
                        }),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(%id, "cannot mark delivered: {e}"),
                    }
                }
                Err(e) => {
                    bump(&stats.bad_receipts);
                    tracing::debug!(%peer, %id, "bad receipt: {e}");
                }
            }
        }
        Some(pb::msg_response::Result::Reject(reject)) => {
            bump(&stats.attempt_failures);
            let code =
                pb::RejectCode::try_from(reject.code).unwrap_or(pb::RejectCode::RejectUnspecified);
            tracing::debug!(%peer, %id, ?code, reason = %reject.reason, "message rejected");
            let terminal = match code {
                pb::RejectCode::RejectExpired => Some(DeliveryState::Expired),
                pb::RejectCode::RejectInternal | pb::RejectCode::RejectUnspecified => None,
                _ => Some(DeliveryState::Failed),
            };
            if let Some(state) = terminal {
                let note = format!("rejected by recipient: {}", reject.reason);
                let _ = store.record_attempt(id.as_bytes(), now, now, Some(&note));
                if let Ok(true) = store.set_state(id.as_bytes(), state, now) {
                    events.push(NodeEvent::MessageState { id, state });
                }
            }
        }
        None => bump(&stats.bad_receipts),
    }
}

/// Sends events gathered while writing, once the writes are committed.
fn send_events(events: &broadcast::Sender<NodeEvent>, gathered: Vec<NodeEvent>) {
    for event in gathered {
        let _ = events.send(event);
    }
}

/// The answer to an envelope whose store write was rolled back with the
/// shared commit: the sender retries it later.
fn reject_uncommitted() -> pb::MsgResponse {
    pb::MsgResponse {
        result: Some(pb::msg_response::Result::Reject(pb::Reject {
            code: pb::RejectCode::RejectInternal as i32,
            reason: "the recipient could not store it; retry later".into(),
        })),
    }
}

fn strip_p2p(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

fn is_dialable(addr: &Multiaddr) -> bool {
    !addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `hand_off_due` against its definition: `peer` among the k closest
    /// known, and nobody else among them closer to the key than we are.
    #[test]
    fn hand_off_is_due_exactly_when_we_are_the_closest_holder() {
        let k = 20;
        let mut not_due = 0;
        for round in 0..200u32 {
            let known: Vec<PeerId> = (0..60).map(|_| PeerId::random()).collect();
            let target = kad::KBucketKey::new(kad::RecordKey::new(&round.to_be_bytes()));
            let mut by_distance: Vec<kad::KBucketKey<PeerId>> =
                known.iter().map(|p| kad::KBucketKey::from(*p)).collect();
            by_distance.sort_by_key(|p| p.distance(&target));
            let closest: Vec<_> = by_distance.iter().take(k).cloned().collect();
            // We are some peer not in the table; the new peer is one of
            // the closest few (or, now and then, any known peer).
            let ours = kad::KBucketKey::from(PeerId::random()).distance(&target);
            let peer = known[(round as usize * 7) % known.len()];
            let peer = if round % 3 == 0 {
                *by_distance[(round as usize) % 3].preimage()
            } else {
                peer
            };
            let expected = closest.iter().any(|p| *p.preimage() == peer)
                && !closest
                    .iter()
                    .any(|p| *p.preimage() != peer && p.distance(&target) < ours);
            let got = hand_off_due(by_distance.iter().cloned(), &peer, &target, ours, k);
            assert_eq!(got, expected, "round {round}");
            not_due += usize::from(!expected);
        }
        assert!(not_due > 0);
        // Due: we are nearer than every known peer but the new one.
        let target = kad::KBucketKey::new(kad::RecordKey::new(b"key"));
        let mut by_distance: Vec<kad::KBucketKey<PeerId>> = (0..30)
            .map(|_| kad::KBucketKey::from(PeerId::random()))
            .collect();
        by_distance.sort_by_key(|p| p.distance(&target));
        let nearest = *by_distance[0].preimage();
        let ours = by_distance[0].distance(&target);
        assert!(hand_off_due(
            by_distance.iter().cloned(),
            &nearest,
            &target,
            ours,
            k
        ));
        // The second-nearest is not ours to hand to while the nearest is
        // closer than we are.
        let second = *by_distance[1].preimage();
        let ours = by_distance[1].distance(&target);
        assert!(!hand_off_due(
            by_distance.iter().cloned(),
            &second,
            &target,
            ours,
            k
        ));
        // Past the k closest it is never due.
        let far = *by_distance[25].preimage();
        let zero = kad::KBucketDistance::default();
        assert!(!hand_off_due(
            by_distance.iter().cloned(),
            &far,
            &target,
            zero,
            k
        ));
    }
}
