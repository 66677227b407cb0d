//! Gossipsub that lets unused connections close.
//!
//! libp2p-gossipsub keeps a long-lived stream each way on every connection
//! to a peer that speaks it, and an open stream counts as activity, so no
//! connection between two peercomm nodes ever went idle: every node kept a
//! connection to every peer it had ever talked to (rust-libp2p issue #5190).
//! In a network of thousands that is thousands of connections per node, each
//! with its buffers, timers and pings.
//!
//! [`Gossip`] wraps gossipsub. Its streams no longer keep a connection alive;
//! instead a connection stays open while the peer is subscribed to a topic
//! we are subscribed to (a fellow member of one of our groups: gossip flows
//! there) or sits in one of our meshes. Every other connection closes after
//! `network.idle_connection_timeout` like any unused one, and is dialled
//! again when a message or lookup needs it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::{Deref, DerefMut};
use std::task::{Context, Poll, Waker};

use either::Either;
use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::gossipsub::{self, IdentTopic, SubscriptionError, TopicHash};
use libp2p::swarm::handler::{
    ConnectionEvent, ConnectionHandler, ConnectionHandlerEvent, FullyNegotiatedInbound,
    FullyNegotiatedOutbound, SubstreamProtocol,
};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// Gossipsub's own connection handler.
type Inner = THandler<gossipsub::Behaviour>;

/// Gossipsub whose streams do not keep connections alive; see the module.
pub(crate) struct Gossip {
    inner: gossipsub::Behaviour,
    /// Topics each connected peer told us it is subscribed to.
    peer_topics: HashMap<PeerId, HashSet<TopicHash>>,
    /// Open connections by peer.
    connections: HashMap<PeerId, HashSet<ConnectionId>>,
    /// Peers whose connections are kept open (they share a topic with us).
    kept: HashSet<PeerId>,
    /// Keep-alive changes not yet handed to the swarm.
    pending: VecDeque<ToSwarm<gossipsub::Event, THandlerInEvent<Self>>>,
    waker: Option<Waker>,
}

impl Gossip {
    pub(crate) fn new(inner: gossipsub::Behaviour) -> Self {
        Self {
            inner,
            peer_topics: HashMap::new(),
            connections: HashMap::new(),
            kept: HashSet::new(),
            pending: VecDeque::new(),
            waker: None,
        }
    }

    /// Subscribes to `topic` (gossipsub's `subscribe`); connections to peers
    /// on it are kept from now on.
    pub(crate) fn subscribe(&mut self, topic: &IdentTopic) -> Result<bool, SubscriptionError> {
        let subscribed = self.inner.subscribe(topic)?;
        self.refresh_all();
        Ok(subscribed)
    }

    /// Unsubscribes from `topic` (gossipsub's `unsubscribe`); connections
    /// kept only for it may now go idle.
    pub(crate) fn unsubscribe(&mut self, topic: &IdentTopic) -> bool {
        let was = self.inner.unsubscribe(topic);
        self.refresh_all();
        was
    }

    /// Whether connections to `peer` are kept open now.
    #[cfg(test)]
    pub(crate) fn keeps(&self, peer: &PeerId) -> bool {
        self.kept.contains(peer)
    }

    fn shares_a_topic(&self, peer: &PeerId) -> bool {
        let Some(theirs) = self.peer_topics.get(peer) else {
            return false;
        };
        self.inner.topics().any(|t| theirs.contains(t))
    }

    /// Tells `peer`'s connections whether to stay open, if that changed.
    fn refresh(&mut self, peer: PeerId) {
        let keep = self.shares_a_topic(&peer);
        let changed = if keep {
            self.kept.insert(peer)
        } else {
            self.kept.remove(&peer)
        };
        if !changed {
            return;
        }
        for connection in self.connections.get(&peer).into_iter().flatten() {
            self.pending.push_back(ToSwarm::NotifyHandler {
                peer_id: peer,
                handler: NotifyHandler::One(*connection),
                event: Either::Right(keep),
            });
        }
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    fn refresh_all(&mut self) {
        let peers: Vec<PeerId> = self.connections.keys().copied().collect();
        for peer in peers {
            self.refresh(peer);
        }
    }

    fn on_event(&mut self, event: &gossipsub::Event) {
        match event {
            gossipsub::Event::Subscribed { peer_id, topic }
                if self.connections.contains_key(peer_id) =>
            {
                self.peer_topics
                    .entry(*peer_id)
                    .or_default()
                    .insert(topic.clone());
                self.refresh(*peer_id);
            }
            gossipsub::Event::Unsubscribed { peer_id, topic } => {
                if let Some(topics) = self.peer_topics.get_mut(peer_id) {
                    topics.remove(topic);
                }
                self.refresh(*peer_id);
            }
            _ => {}
        }
    }

    fn handler(&self, peer: &PeerId, inner: Inner) -> KeepAliveHandler {
        KeepAliveHandler {
            inner,
            keep: self.kept.contains(peer),
        }
    }
}

impl Deref for Gossip {
    type Target = gossipsub::Behaviour;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl DerefMut for Gossip {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

impl NetworkBehaviour for Gossip {
    type ConnectionHandler = KeepAliveHandler;
    type ToSwarm = gossipsub::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self.inner.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )?;
        Ok(self.handler(&peer, inner))
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self.inner.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )?;
        Ok(self.handler(&peer, inner))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match &event {
            FromSwarm::ConnectionEstablished(e) => {
                self.connections
                    .entry(e.peer_id)
                    .or_default()
                    .insert(e.connection_id);
            }
            FromSwarm::ConnectionClosed(e) => {
                if let Some(open) = self.connections.get_mut(&e.peer_id) {
                    open.remove(&e.connection_id);
                    if open.is_empty() {
                        self.connections.remove(&e.peer_id);
                        self.peer_topics.remove(&e.peer_id);
                        self.kept.remove(&e.peer_id);
                    }
                }
            }
            _ => {}
        }
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner
            .on_connection_handler_event(peer_id, connection_id, event);
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some(event) = self.pending.pop_front() {
            return Poll::Ready(event);
        }
        match self.inner.poll(cx) {
            Poll::Ready(ToSwarm::GenerateEvent(event)) => {
                self.on_event(&event);
                Poll::Ready(ToSwarm::GenerateEvent(event))
            }
            Poll::Ready(other) => Poll::Ready(other.map_in(Either::Left)),
            Poll::Pending => {
                self.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Gossipsub's handler, with its streams ignored for keep-alive and the
/// connection kept open while the behaviour says so (or the peer is in a
/// mesh).
pub(crate) struct KeepAliveHandler {
    inner: Inner,
    keep: bool,
}

type InnerEvent = <Inner as ConnectionHandler>::FromBehaviour;

impl ConnectionHandler for KeepAliveHandler {
    /// Gossipsub's own events, or "keep this connection open" (`true`) or
    /// not.
    type FromBehaviour = Either<InnerEvent, bool>;
    type ToBehaviour = <Inner as ConnectionHandler>::ToBehaviour;
    type InboundProtocol = <Inner as ConnectionHandler>::InboundProtocol;
    type OutboundProtocol = <Inner as ConnectionHandler>::OutboundProtocol;
    type InboundOpenInfo = <Inner as ConnectionHandler>::InboundOpenInfo;
    type OutboundOpenInfo = <Inner as ConnectionHandler>::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        self.inner.listen_protocol()
    }

    fn connection_keep_alive(&self) -> bool {
        self.keep || self.inner.connection_keep_alive()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        self.inner.poll(cx)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        self.inner.poll_close(cx)
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        match event {
            Either::Left(event) => self.inner.on_behaviour_event(event),
            Either::Right(keep) => self.keep = keep,
        }
    }

    fn on_connection_event(
        &mut self,
        mut event: ConnectionEvent<
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        match &mut event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: futures::future::Either::Left((stream, _)),
                ..
            }) => stream.ignore_for_keep_alive(),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: (stream, _),
                ..
            }) => stream.ignore_for_keep_alive(),
            _ => {}
        }
        self.inner.on_connection_event(event);
    }
}

#[cfg(test)]
mod tests {
    use libp2p::core::ConnectedPoint;
    use libp2p::swarm::behaviour::{ConnectionClosed, ConnectionEstablished};
    use libp2p::swarm::ConnectionId;

    use super::*;

    fn gossip() -> Gossip {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let inner = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key),
            gossipsub::Config::default(),
        )
        .unwrap();
        Gossip::new(inner)
    }

    fn endpoint() -> ConnectedPoint {
        ConnectedPoint::Listener {
            local_addr: "/memory/1".parse().unwrap(),
            send_back_addr: "/memory/2".parse().unwrap(),
        }
    }

    /// Gossipsub's own handler for a new inbound connection.
    fn inner_handler(g: &mut Gossip, peer: PeerId, id: usize) -> Inner {
        g.inner
            .handle_established_inbound_connection(
                ConnectionId::new_unchecked(id),
                peer,
                &"/memory/1".parse().unwrap(),
                &"/memory/2".parse().unwrap(),
            )
            .unwrap()
    }

    fn connect(g: &mut Gossip, peer: PeerId, id: usize, endpoint: &ConnectedPoint) {
        inner_handler(g, peer, id);
        g.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
            peer_id: peer,
            connection_id: ConnectionId::new_unchecked(id),
            endpoint,
            failed_addresses: &[],
            other_established: 0,
        }));
    }

    /// The keep-alive notices queued for the swarm: (peer, connection, keep).
    fn notices(g: &mut Gossip) -> Vec<(PeerId, bool)> {
        g.pending
            .drain(..)
            .filter_map(|e| match e {
                ToSwarm::NotifyHandler {
                    peer_id,
                    event: Either::Right(keep),
                    ..
                } => Some((peer_id, keep)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn connections_stay_open_only_to_peers_sharing_a_topic() {
        let mut g = gossip();
        let (member, stranger) = (PeerId::random(), PeerId::random());
        let ep = endpoint();
        connect(&mut g, member, 1, &ep);
        connect(&mut g, member, 2, &ep);
        connect(&mut g, stranger, 3, &ep);
        let topic = IdentTopic::new("group-a");
        // Peers on a topic we are not on: nothing kept.
        g.on_event(&gossipsub::Event::Subscribed {
            peer_id: member,
            topic: topic.hash(),
        });
        assert!(!g.keeps(&member));
        assert!(notices(&mut g).is_empty());
        // We join the topic: both of the member's connections are kept.
        assert!(g.subscribe(&topic).unwrap());
        assert!(g.keeps(&member));
        assert!(!g.keeps(&stranger));
        assert_eq!(notices(&mut g), vec![(member, true), (member, true)]);
        // A new connection of a kept peer starts kept.
        let inner = inner_handler(&mut g, member, 9);
        let handler = g.handler(&member, inner);
        assert!(handler.connection_keep_alive());
        // The member leaves the topic: its connections may go idle.
        g.on_event(&gossipsub::Event::Unsubscribed {
            peer_id: member,
            topic: topic.hash(),
        });
        assert!(!g.keeps(&member));
        assert_eq!(notices(&mut g), vec![(member, false), (member, false)]);
        // It comes back, then we leave: released again.
        g.on_event(&gossipsub::Event::Subscribed {
            peer_id: member,
            topic: topic.hash(),
        });
        assert_eq!(notices(&mut g).len(), 2);
        assert!(g.unsubscribe(&topic));
        assert!(!g.keeps(&member));
        assert_eq!(notices(&mut g), vec![(member, false), (member, false)]);
        // Gone peers are forgotten.
        for id in [1, 2] {
            g.on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id: member,
                connection_id: ConnectionId::new_unchecked(id),
                endpoint: &ep,
                cause: None,
                remaining_established: 2 - id,
            }));
        }
        assert!(!g.connections.contains_key(&member));
        assert!(!g.peer_topics.contains_key(&member));
    }

    #[test]
    fn the_handler_follows_the_behaviour() {
        let mut g = gossip();
        let peer = PeerId::random();
        let inner = inner_handler(&mut g, peer, 1);
        let mut handler = g.handler(&peer, inner);
        assert!(!handler.connection_keep_alive(), "not in a mesh, no topic");
        handler.on_behaviour_event(Either::Right(true));
        assert!(handler.connection_keep_alive());
        handler.on_behaviour_event(Either::Right(false));
        assert!(!handler.connection_keep_alive());
    }
}
