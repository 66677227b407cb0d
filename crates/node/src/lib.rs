//! peercomm-node: a peer-to-peer messaging node.
//!
//! A [`Node`] owns an identity (Ed25519 PeerId + X25519 box key), a SQLite
//! store and a libp2p swarm (TCP + QUIC, Noise, Yamux, identify, ping, and
//! peercomm's own protocols). Everything else talks to it through a
//! [`NodeHandle`]: send end-to-end encrypted messages, read the inbox, follow
//! delivery states, subscribe to [`NodeEvent`]s.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use peercomm_node::{Config, Node, NodeOptions, SendOptions};
//! let node = Node::start(NodeOptions::new("/tmp/alice", Config::default())).await?;
//! let handle = node.handle();
//! # let bob = handle.peer_id();
//! let id = handle.send(bob, b"hello".to_vec(), SendOptions::default()).await?;
//! println!("queued {id}");
//! node.shutdown().await;
//! # Ok(()) }
//! ```

pub mod bandwidth;
#[doc(hidden)]
pub mod bench_support;
pub mod clock;
mod commit;
pub mod config;
pub mod delivery;
pub mod dht;
pub mod groups;
mod handle;
pub mod identity;
mod known_records;
pub mod mailbox;
pub mod msg;
mod node;
mod observed;
pub mod onion;
pub mod routing;
mod stats;
mod transport;

pub use clock::{Clock, SystemClock, TestClock};
pub use config::{
    ApiSettings, BandwidthConfig, Config, ConfigError, ConfigOverrides, DhtConfig, DhtMode,
    GroupsConfig, MailboxConfig, OnionConfig, Role, RoutingConfig,
};
pub use groups::{
    GroupChange, GroupError, GroupId, GroupInfo, GroupMember, GroupMessage, GroupState,
};
pub use handle::{
    ConnectedPeer, DialError, FindError, InboxQuery, NodeHandle, OnionStatus, QueryError,
    SendError, SendOptions, Status, EPHEMERAL_MAX_TTL, MAX_PAGE,
};
pub use identity::{Identity, IdentityError};
pub use libp2p::{Multiaddr, PeerId};
pub use node::{Node, NodeOptions, StartError, DATABASE_FILE};
pub use peercomm_store::{
    DeliveryState, IncomingMessage, MailboxStats, OutgoingMessage, ParseRouteError, Route,
};
pub use peercomm_wire::{MessageId, PeerRecord, Priority};
pub use stats::StatsSnapshot;
pub use transport::WireCounters;

/// Something that happened in the node, broadcast to every subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A new message arrived and is stored in the inbox.
    MessageReceived {
        /// Its id.
        id: MessageId,
        /// Its sender.
        from: PeerId,
    },
    /// An outgoing message changed state.
    MessageState {
        /// Its id.
        id: MessageId,
        /// The new state.
        state: DeliveryState,
    },
    /// A first connection to a peer opened.
    PeerConnected {
        /// The peer.
        peer: PeerId,
    },
    /// The last connection to a peer closed.
    PeerDisconnected {
        /// The peer.
        peer: PeerId,
    },
    /// A peer's signed record was received and checked.
    PeerRecord {
        /// The peer.
        peer: PeerId,
    },
    /// The node listens on a new address.
    Listening {
        /// The address.
        address: Multiaddr,
    },
    /// A group message was decrypted and added to the group's history.
    GroupMessage {
        /// The group.
        group: GroupId,
        /// Its local position in the history ([`NodeHandle::group_history`]).
        seq: i64,
        /// Its author.
        from: PeerId,
    },
    /// A group changed: new epoch, members, name or admins, or this node's standing.
    GroupChanged {
        /// The group.
        group: GroupId,
        /// The epoch this node is now in.
        epoch: u64,
        /// This node's standing.
        state: GroupState,
    },
    /// This node was invited to a group (a Welcome is held, see
    /// [`NodeHandle::group_join`]).
    GroupInvited {
        /// The group.
        group: GroupId,
        /// Who invited.
        from: PeerId,
    },
}
