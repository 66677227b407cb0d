//! [`NodeHandle`]: the only way into a running node.
//!
//! A handle is cheap to clone. Reads go straight to the store (off the async
//! threads); anything that touches the network is a command to the event
//! loop with a `oneshot` reply.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use peercomm_store::{IncomingMessage, NewOutgoing, OutgoingMessage, Route, Store, StoreError};
use peercomm_wire::{limits::MAX_BODY_BYTES, Kind, MessageId, Priority, MAX_ONION_BODY_BYTES};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::clock::Clock;
use crate::config::Config;
use crate::dht::DhtStats;
use crate::stats::{Stats, StatsSnapshot};
use crate::transport::WireCounters;
use crate::NodeEvent;
use peercomm_wire::PeerRecord;

/// Largest page of messages one `inbox` call returns.
pub const MAX_PAGE: u32 = 500;

/// Commands from handles to the event loop.
#[derive(Debug)]
pub(crate) enum Command {
    /// New messages are in the outbox: look at it now.
    Kick,
    /// Dial an address.
    Dial(Multiaddr, oneshot::Sender<Result<(), String>>),
    /// Remember an address for a peer (used by the simulator and `peers add`).
    AddAddress(PeerId, Multiaddr),
    /// The connected peers.
    Peers(oneshot::Sender<Vec<ConnectedPeer>>),
    /// Our listen addresses.
    Addresses(oneshot::Sender<Vec<Multiaddr>>),
    /// Stop gracefully; the reply comes when everything in flight is settled.
    Shutdown(oneshot::Sender<()>),
    /// Find a peer's record in the DHT.
    FindPeer(PeerId, oneshot::Sender<Result<PeerRecord, FindError>>),
    /// DHT figures.
    DhtStats(oneshot::Sender<DhtStats>),
    Bandwidth(oneshot::Sender<crate::bandwidth::BandwidthReport>),
    /// The route cache.
    Routes(oneshot::Sender<Vec<crate::routing::RouteInfo>>),
    /// Refuse (`true`) or allow again (`false`) connections with a peer.
    Block(PeerId, bool),
    /// Onion state: paths held, and what this node saw of packets.
    Onion(oneshot::Sender<OnionStatus>),
    /// A group operation.
    Group(crate::groups::GroupCommand),
}

/// What a node's onion routing looks like now.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct OnionStatus {
    /// The relays of each path held, first hop first.
    pub paths: Vec<Vec<PeerId>>,
    /// Relays known (relay role and an onion key in a record we hold).
    pub relays_known: usize,
    /// The current onion key's epoch.
    pub epoch: u64,
    /// Epochs whose keys still open packets (the current one, and the
    /// previous one during its grace window), newest first.
    pub live_epochs: Vec<u64>,
    /// Replay tags held over those epochs.
    pub replay_tags: usize,
    /// What this node saw of the packets it handled, oldest first (only
    /// with `onion.keep_hop_log`).
    pub hops_seen: Vec<crate::onion::HopSeen>,
}

/// Why `find_peer` found nothing.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FindError {
    /// No valid record for the peer in the DHT.
    #[error("no valid record for {0} in the DHT (the peer may never have joined, or its record expired)")]
    NotFound(PeerId),
    /// The node knows no other peer to ask.
    #[error("the node has not joined the DHT: no known peers to ask (configure `bootstrap`)")]
    NotJoined,
    /// Looking for ourselves.
    #[error("{0} is this node itself")]
    Itself(PeerId),
    /// The node is shutting down or gone.
    #[error("the node is not running")]
    NodeStopped,
}

/// State shared by the event loop and every handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) peer_id: PeerId,
    pub(crate) store: Arc<Mutex<Store>>,
    /// Group commit of the writes that acknowledge something.
    pub(crate) committer: Arc<crate::commit::Committer>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) wire: Arc<WireCounters>,
    pub(crate) meter: Arc<crate::bandwidth::meter::Meter>,
    pub(crate) events: broadcast::Sender<NodeEvent>,
    pub(crate) config: Config,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) started: Instant,
    pub(crate) registry: Arc<prometheus_client::registry::Registry>,
}

/// A handle to a running node. Clone it freely.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    pub(crate) shared: Arc<Shared>,
    pub(crate) commands: mpsc::Sender<Command>,
}

/// How to send one message.
#[derive(Debug, Clone, Copy, Default)]
pub struct SendOptions {
    /// Lifetime; the configured default when `None`.
    pub ttl: Option<Duration>,
    /// Priority class; `interactive` when `None`.
    pub priority: Option<Priority>,
    /// Route preference, stored with the message and shown back in
    /// [`OutgoingMessage::route`]; [`Route::Auto`] (the node chooses) when `None`.
    pub route: Option<Route>,
}

/// Longest lifetime of an ephemeral message (typing, presence): it is
/// dropped, not delivered late.
pub const EPHEMERAL_MAX_TTL: Duration = Duration::from_secs(30);

/// Why a message was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The body is larger than an envelope may carry.
    #[error("message body is {len} bytes; the limit is {max} bytes")]
    BodyTooLarge {
        /// Body length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body is larger than one onion packet carries.
    #[error(
        "message body is {len} bytes; an onion message carries at most {max} bytes \
         (send it with another route, or split it)"
    )]
    TooLargeForOnion {
        /// Body length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The requested lifetime is longer than the node allows.
    #[error("ttl {ttl} is longer than the allowed maximum {max} (delivery.max_ttl)")]
    TtlTooLong {
        /// Asked for, human-readable.
        ttl: String,
        /// Allowed, human-readable.
        max: String,
    },
    /// A lifetime of zero.
    #[error("ttl must be above zero")]
    TtlZero,
    /// Sending to ourselves.
    #[error("cannot send a message to this node itself ({0})")]
    ToSelf(PeerId),
    /// The store refused the message; it was not accepted.
    #[error("message not accepted: {0}")]
    Store(#[from] StoreError),
    /// The node is shutting down or gone.
    #[error("the node is not running")]
    NodeStopped,
    /// A background task failed (a bug); nothing was accepted.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A blocking store task panicked or was cancelled.
#[derive(Debug)]
pub(crate) struct BackgroundFailed(pub(crate) String);

impl From<BackgroundFailed> for SendError {
    fn from(e: BackgroundFailed) -> Self {
        SendError::Internal(e.0)
    }
}

impl From<BackgroundFailed> for QueryError {
    fn from(e: BackgroundFailed) -> Self {
        QueryError::Internal(e.0)
    }
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The store failed.
    #[error("store error: {0}")]
    Store(#[from] StoreError),
    /// The node is shutting down or gone.
    #[error("the node is not running")]
    NodeStopped,
    /// A background task failed (a bug).
    #[error("internal error: {0}")]
    Internal(String),
}

/// What `inbox` returns: which messages.
#[derive(Debug, Clone, Default)]
pub struct InboxQuery {
    /// Only messages from this peer.
    pub peer: Option<PeerId>,
    /// Only messages after this local sequence number (paging cursor).
    pub after: Option<i64>,
    /// At most this many (capped at [`MAX_PAGE`]); 100 when `None`.
    pub limit: Option<u32>,
}

/// A peer we are connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectedPeer {
    /// Its id.
    pub peer_id: PeerId,
    /// Addresses of its open connections.
    pub addresses: Vec<Multiaddr>,
    /// Whether we hold its signed record (and so its box key).
    pub has_record: bool,
}

/// A summary of the node.
#[derive(Debug, Clone)]
pub struct Status {
    /// Our id.
    pub peer_id: PeerId,
    /// Where we listen.
    pub listen_addrs: Vec<Multiaddr>,
    /// Connected peers.
    pub connected_peers: usize,
    /// Time since start.
    pub uptime: Duration,
    /// Outgoing messages per delivery state.
    pub outgoing: std::collections::BTreeMap<String, u64>,
    /// Messages in the inbox.
    pub incoming: u64,
    /// Peers whose record we hold.
    pub known_peers: u64,
    /// Live counters.
    pub stats: StatsSnapshot,
}

impl NodeHandle {
    /// This node's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.shared.peer_id
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    async fn with_store<T, E>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: Send + 'static + From<BackgroundFailed>,
    {
        let store = self.shared.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = store.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .unwrap_or_else(|e| Err(E::from(BackgroundFailed(e.to_string()))))
    }

    /// Queues a message to `to`. When this returns `Ok`, the message is
    /// committed to the outbox and will be delivered, retried or expired
    /// even if the node crashes right after.
    pub async fn send(
        &self,
        to: PeerId,
        body: Vec<u8>,
        options: SendOptions,
    ) -> Result<MessageId, SendError> {
        if to == self.shared.peer_id {
            return Err(SendError::ToSelf(to));
        }
        if body.len() > MAX_BODY_BYTES {
            return Err(SendError::BodyTooLarge {
                len: body.len(),
                max: MAX_BODY_BYTES,
            });
        }
        if options.route == Some(Route::Onion) && body.len() > MAX_ONION_BODY_BYTES {
            return Err(SendError::TooLargeForOnion {
                len: body.len(),
                max: MAX_ONION_BODY_BYTES,
            });
        }
        let delivery = &self.shared.config.delivery;
        let mut ttl = options.ttl.unwrap_or(delivery.default_ttl);
        if options.priority == Some(Priority::Ephemeral) {
            // Typing and presence signals are worthless once stale.
            ttl = ttl.min(EPHEMERAL_MAX_TTL);
        }
        if ttl.is_zero() {
            return Err(SendError::TtlZero);
        }
        if ttl > delivery.max_ttl {
            return Err(SendError::TtlTooLong {
                ttl: humantime::format_duration(ttl).to_string(),
                max: humantime::format_duration(delivery.max_ttl).to_string(),
            });
        }
        let id = MessageId::random(&mut rand::thread_rng());
        let now = self.shared.clock.now_ms();
        let row = NewOutgoing {
            id: *id.as_bytes(),
            recipient: to.to_base58(),
            body,
            priority: options.priority.unwrap_or(Priority::Interactive) as u8,
            kind: Kind::Chat as u8,
            created_ms: now,
            expires_ms: now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
            route: options.route.unwrap_or_default(),
        };
        self.shared
            .committer
            .run(move |s| s.insert_outgoing(&row))
            .await
            .map_err(|_| BackgroundFailed("the store job panicked".into()))?
            .into_result()??;
        // The message is durable; waking the loop is best effort (its tick
        // finds the message anyway).
        let _ = self.commands.try_send(Command::Kick);
        Ok(id)
    }

    /// What this node's mailbox holds for others (items, bytes, recipients,
    /// senders, acknowledgement tombstones).
    pub async fn mailbox_stats(&self) -> Result<peercomm_store::MailboxStats, QueryError> {
        self.with_store(|s| s.mailbox_stats().map_err(QueryError::from))
            .await
    }

    /// A page of received messages, oldest first.
    pub async fn inbox(&self, query: InboxQuery) -> Result<Vec<IncomingMessage>, QueryError> {
        let limit = query.limit.unwrap_or(100).clamp(1, MAX_PAGE);
        let peer = query.peer.map(|p| p.to_base58());
        self.with_store(move |s| {
            s.inbox(peer.as_deref(), query.after, limit)
                .map_err(QueryError::from)
        })
        .await
    }

    /// A page of sent messages with their delivery state, oldest first, as
    /// `(seq, message)`: pass the last `seq` as `after` for the next page.
    pub async fn outbox(
        &self,
        query: InboxQuery,
    ) -> Result<Vec<(i64, OutgoingMessage)>, QueryError> {
        let limit = query.limit.unwrap_or(100).clamp(1, MAX_PAGE);
        let peer = query.peer.map(|p| p.to_base58());
        self.with_store(move |s| {
            s.list_outgoing(peer.as_deref(), query.after, limit)
                .map_err(QueryError::from)
        })
        .await
    }

    /// The outgoing message with this id, with its delivery state.
    pub async fn message_state(
        &self,
        id: MessageId,
    ) -> Result<Option<OutgoingMessage>, QueryError> {
        self.with_store(move |s| s.get_outgoing(id.as_bytes()).map_err(QueryError::from))
            .await
    }

    /// A received message by id.
    pub async fn incoming(&self, id: MessageId) -> Result<Option<IncomingMessage>, QueryError> {
        self.with_store(move |s| s.get_incoming(id.as_bytes()).map_err(QueryError::from))
            .await
    }

    /// The verified peer record this node holds for `peer` (from meeting
    /// it, or from the DHT), if any: what it needs to seal messages to it.
    pub async fn known_record(&self, peer: PeerId) -> Result<Option<PeerRecord>, QueryError> {
        self.with_store(move |s| {
            let row = s.get_peer(&peer.to_base58()).map_err(QueryError::from)?;
            // Expiry is not checked: a record once verified stays usable for
            // its box key; its addresses are only hints.
            Ok(row.and_then(|r| peercomm_wire::verify_record(&r.record, 0).ok()))
        })
        .await
    }

    /// The peers we are connected to.
    pub async fn peers(&self) -> Result<Vec<ConnectedPeer>, QueryError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Peers(tx)).await?;
        rx.await.map_err(|_| QueryError::NodeStopped)
    }

    /// Where the node listens (concrete addresses, without `/p2p/`).
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, QueryError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Addresses(tx)).await?;
        rx.await.map_err(|_| QueryError::NodeStopped)
    }

    /// A summary: id, addresses, uptime, counts and counters.
    pub async fn status(&self) -> Result<Status, QueryError> {
        let peers = self.peers().await?;
        let listen_addrs = self.listen_addrs().await?;
        let counts = self
            .with_store(|s| s.counts().map_err(QueryError::from))
            .await?;
        Ok(Status {
            peer_id: self.shared.peer_id,
            listen_addrs,
            connected_peers: peers.len(),
            uptime: self.shared.started.elapsed(),
            outgoing: counts.outgoing,
            incoming: counts.incoming,
            known_peers: counts.peers,
            stats: self.stats(),
        })
    }

    /// The live counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot(&self.shared.wire)
    }

    /// Metrics in the Prometheus text format: libp2p's own (connections,
    /// bandwidth per transport, identify, ping) and the node's counters.
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode_registry(&mut out, &self.shared.registry)
            .is_err()
        {
            out.clear();
        }
        self.stats().encode_prometheus(&mut out);
        let meter = self.shared.meter.snapshot();
        let classes = crate::bandwidth::report::classes(&meter, &self.shared.stats.class_bytes());
        crate::bandwidth::report::encode_prometheus(&meter, &classes, &mut out);
        out.push_str("# EOF\n");
        out
    }

    /// Events from now on: received messages, state changes, connections.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.shared.events.subscribe()
    }

    /// Dials an address (with or without `/p2p/<peer-id>`).
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), DialError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Dial(addr, tx))
            .await
            .map_err(|_| DialError::NodeStopped)?;
        rx.await
            .map_err(|_| DialError::NodeStopped)?
            .map_err(DialError::Refused)
    }

    /// Finds a peer's signed record through the DHT (verified; answered from
    /// a cache for `dht.cache_ttl`). Also teaches the node the peer's
    /// addresses and box key, so messages to it can go out.
    pub async fn find_peer(&self, peer: PeerId) -> Result<PeerRecord, FindError> {
        if peer == self.shared.peer_id {
            return Err(FindError::Itself(peer));
        }
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::FindPeer(peer, tx))
            .await
            .map_err(|_| FindError::NodeStopped)?;
        rx.await.map_err(|_| FindError::NodeStopped)?
    }

    /// DHT figures: routing table, records held, lookups.
    pub async fn dht_stats(&self) -> Result<DhtStats, QueryError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::DhtStats(tx)).await?;
        rx.await.map_err(|_| QueryError::NodeStopped)
    }

    /// Bytes on the wire by peer, protocol and priority class, each peer
    /// link's queue and congestion state, and what adaptation did.
    pub async fn bandwidth(&self) -> Result<crate::bandwidth::BandwidthReport, QueryError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Bandwidth(tx)).await?;
        rx.await.map_err(|_| QueryError::NodeStopped)
    }

    /// The routes this node has learned: destination, next hop, hops, RTT.
    pub async fn routes(&self) -> Result<Vec<crate::routing::RouteInfo>, QueryError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Routes(tx)).await?;
        rx.await.map_err(|_| QueryError::NodeStopped)
    }

    /// Onion routing now: paths, relays known, key epoch, and (with
    /// `onion.keep_hop_log`) what this node saw of each packet it handled.
    pub async fn onion_status(&self) -> Result<OnionStatus, QueryError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Onion(tx)).await?;
        rx.await.map_err(|_| QueryError::NodeStopped)
    }

    /// Refuses connections with `peer` from now on (and closes those open):
    /// a user's block list, and how simulations cut links.
    pub async fn block_peer(&self, peer: PeerId) -> Result<(), QueryError> {
        self.command(Command::Block(peer, true)).await
    }

    /// Allows connections with a blocked peer again.
    pub async fn unblock_peer(&self, peer: PeerId) -> Result<(), QueryError> {
        self.command(Command::Block(peer, false)).await
    }

    /// Tells the node where a peer can be reached, without dialling it now.
    pub async fn add_peer_address(&self, peer: PeerId, addr: Multiaddr) -> Result<(), QueryError> {
        self.command(Command::AddAddress(peer, addr)).await
    }

    /// Stops the node gracefully: stops taking new work, lets what is in
    /// flight settle (every accepted message is durable either way),
    /// checkpoints the database and closes connections.
    pub async fn shutdown(&self) -> Result<(), QueryError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Shutdown(tx)).await?;
        rx.await.map_err(|_| QueryError::NodeStopped)
    }

    async fn command(&self, command: Command) -> Result<(), QueryError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| QueryError::NodeStopped)
    }
}

/// Why a dial was refused.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// libp2p refused the dial (bad address, no transport for it, …).
    #[error("cannot dial: {0}")]
    Refused(String),
    /// The node is shutting down or gone.
    #[error("the node is not running")]
    NodeStopped,
}
