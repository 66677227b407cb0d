//! The event loop's side of multi-hop routing: sending our messages along a
//! route, relaying others', delivering those for us, and carrying answers
//! back. Decisions come from the sans-IO [`Router`]; this is the I/O.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::kad::KBucketKey;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::{Multiaddr, PeerId};
use peercomm_store::{DeliveryState, Route};
use peercomm_wire::pb::RouteRefusalCode;
use peercomm_wire::{MessageId, MsgResponse, RouteResponse, Routed};

use super::{accept_envelope_now, EventLoop, Internal};
use crate::routing::{Admit, RouteInfo, Router};
use crate::stats::bump;
use crate::NodeEvent;

/// How long a direct dial failure makes `auto` messages to that peer go
/// routed without trying the direct path first.
const UNREACHABLE_FOR: Duration = Duration::from_secs(60);
/// Peers whose relays (from their records) are remembered, at most.
const MAX_RELAY_ENTRIES: usize = 10_000;
/// Peers remembered as unreachable directly, at most.
const MAX_UNREACHABLE: usize = 10_000;

/// Who is waiting for the answer of a hop we sent.
#[derive(Debug, Clone, Copy)]
enum Upstream {
    /// Our own message.
    Origin { id: MessageId },
    /// A message we relay; the hop that brought it waits on `token`.
    Relay { token: u64 },
}

/// A hop in flight.
#[derive(Debug)]
struct PendingHop {
    routed: Routed,
    next_hop: PeerId,
    /// Peers never to try for this message: where it came from, its origin,
    /// and every next hop tried so far.
    tried: Vec<PeerId>,
    sent_at: Instant,
    upstream: Upstream,
}

/// Routing state kept by the event loop.
pub(super) struct RouteState {
    pub(super) router: Router,
    pending: HashMap<OutboundRequestId, PendingHop>,
    /// Inbound routed requests waiting for their answer.
    channels: HashMap<u64, ResponseChannel<Vec<u8>>>,
    next_token: u64,
    /// Relays named in peers' records (`/p2p/<relay>/p2p-circuit` addresses).
    relays_of: HashMap<PeerId, Vec<PeerId>>,
    /// Peers a direct dial to failed recently.
    unreachable: HashMap<PeerId, Instant>,
}

impl RouteState {
    pub(super) fn new(router: Router) -> Self {
        Self {
            router,
            pending: HashMap::new(),
            channels: HashMap::new(),
            next_token: 0,
            relays_of: HashMap::new(),
            unreachable: HashMap::new(),
        }
    }

    /// Remembers the relays `peer`'s record names.
    pub(super) fn note_relays(&mut self, peer: PeerId, addrs: &[Multiaddr]) {
        let relays = relays_in(addrs);
        if relays.is_empty() {
            self.relays_of.remove(&peer);
            return;
        }
        if self.relays_of.len() >= MAX_RELAY_ENTRIES && !self.relays_of.contains_key(&peer) {
            self.relays_of.clear();
        }
        self.relays_of.insert(peer, relays);
    }

    pub(super) fn mark_unreachable(&mut self, peer: PeerId) {
        if self.unreachable.len() >= MAX_UNREACHABLE {
            self.unreachable
                .retain(|_, at| at.elapsed() < UNREACHABLE_FOR);
        }
        self.unreachable.insert(peer, Instant::now());
    }

    fn recently_unreachable(&self, peer: &PeerId) -> bool {
        self.unreachable
            .get(peer)
            .is_some_and(|at| at.elapsed() < UNREACHABLE_FOR)
    }

    /// Known routes, for status output.
    pub(super) fn routes(&self) -> Vec<RouteInfo> {
        self.router.routes(Instant::now())
    }
}

/// The relays in `addrs`: the peer before each `/p2p-circuit`.
fn relays_in(addrs: &[Multiaddr]) -> Vec<PeerId> {
    let mut relays = Vec::new();
    for addr in addrs {
        let mut last_peer = None;
        for p in addr.iter() {
            match p {
                Protocol::P2p(peer) => last_peer = Some(peer),
                Protocol::P2pCircuit => {
                    if let Some(relay) = last_peer.take() {
                        if !relays.contains(&relay) {
                            relays.push(relay);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    relays
}

impl EventLoop {
    /// Whether an attempt to `peer` goes along a route rather than directly.
    pub(super) fn goes_routed(&self, peer: PeerId, route: Route) -> bool {
        match route {
            Route::Direct | Route::Onion => false,
            Route::Multihop => true,
            Route::Auto => {
                !self.swarm.is_connected(&peer) && self.route.recently_unreachable(&peer)
            }
        }
    }

    /// Sends one of our messages into the routed network. Its id is in
    /// `in_flight_ids` until the answer is settled.
    pub(super) fn send_routed(
        &mut self,
        id: MessageId,
        destination: PeerId,
        attempt: u32,
        envelope: Vec<u8>,
    ) {
        let local = self.shared.peer_id;
        let routed = Routed {
            destination,
            message_id: id,
            attempt,
            ttl: self.route.router.initial_ttl(None),
            hops: 0,
            previous_hop: local,
            origin: local,
            envelope,
        };
        let now = Instant::now();
        self.route.router.mark_sent(id, destination, attempt, now);
        bump(&self.shared.stats.routed_sent);
        // A recipient we just failed to dial is not worth a hop.
        let mut tried = vec![local];
        if self.route.recently_unreachable(&destination) {
            tried.push(destination);
        }
        if self.forward(routed, Upstream::Origin { id }, tried) {
            if self.route.recently_unreachable(&destination) {
                self.mailbox_deposit_later(id);
            }
            let now_ms = self.now_ms();
            let events = self.shared.events.clone();
            self.background(move |store| {
                if let Ok(true) = store.set_in_transit(id.as_bytes(), DeliveryState::Routed, now_ms)
                {
                    let _ = events.send(NodeEvent::MessageState {
                        id,
                        state: DeliveryState::Routed,
                    });
                }
                None
            });
        } else {
            self.origin_failed(
                id,
                "no route: no connected peer leads towards the recipient",
            );
        }
    }

    /// Hands `routed` to the best next hop not in `tried`; false if there
    /// is none.
    fn forward(&mut self, mut routed: Routed, upstream: Upstream, mut tried: Vec<PeerId>) -> bool {
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        let relays = self
            .route
            .relays_of
            .get(&routed.destination)
            .cloned()
            .unwrap_or_default();
        let k = self.shared.config.dht.k;
        let table: Vec<PeerId> = self
            .swarm
            .behaviour_mut()
            .kad
            .get_closest_local_peers(&KBucketKey::from(routed.destination))
            .take(k)
            .map(|key| *key.preimage())
            .collect();
        let candidates = self.route.router.candidates(
            routed.destination,
            &tried,
            &connected,
            &relays,
            &table,
            routed.origin == self.shared.peer_id,
            Instant::now(),
        );
        let Some(&(next_hop, why)) = candidates.first() else {
            return false;
        };
        if tried.len() > self.shared.config.routing.max_candidates + 2 {
            return false;
        }
        tracing::debug!(
            destination = %routed.destination,
            %next_hop,
            ?why,
            hops = routed.hops,
            "routing a message"
        );
        routed.previous_hop = self.shared.peer_id;
        let request_id = self
            .swarm
            .behaviour_mut()
            .route
            .send_request(&next_hop, routed.encode());
        tried.push(next_hop);
        self.route.pending.insert(
            request_id,
            PendingHop {
                routed,
                next_hop,
                tried,
                sent_at: Instant::now(),
                upstream,
            },
        );
        true
    }

    pub(super) fn on_route_event(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.on_route_request(peer, request, channel),
                request_response::Message::Response {
                    request_id,
                    response,
                } => self.on_route_response(request_id, response),
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(hop) = self.route.pending.remove(&request_id) {
                    tracing::debug!(next_hop = %hop.next_hop, "routed hop failed: {error}");
                    self.hop_failed(hop, RouteRefusalCode::RouteRefusalNoRoute);
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                bump(&self.shared.stats.inbound_stream_failures);
                tracing::debug!(%peer, "inbound routed stream failed: {error}");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_route_request(
        &mut self,
        from: PeerId,
        bytes: Vec<u8>,
        channel: ResponseChannel<Vec<u8>>,
    ) {
        let stats = self.shared.stats.clone();
        let routed = match Routed::decode(&bytes) {
            Ok(r) => r,
            Err(e) => {
                bump(&stats.routed_malformed);
                tracing::debug!(%from, "malformed routed message: {e}");
                self.refuse(
                    channel,
                    RouteResponse::refusal(
                        RouteRefusalCode::RouteRefusalMalformed,
                        e.to_string(),
                        0,
                    ),
                );
                return;
            }
        };
        let arrived = routed.hops.saturating_add(1);
        if self.shutdown.is_some() {
            // Dropping the channel closes the stream: the hop tries another.
            return;
        }
        match self.route.router.admit(from, &routed, Instant::now()) {
            Admit::Deliver => {
                let token = self.park(channel);
                let now = self.now_ms();
                let identity = self.identity.clone();
                let events = self.shared.events.clone();
                let origin = routed.origin;
                self.background(move |store| {
                    let answer = accept_envelope_now(
                        store,
                        &identity,
                        &stats,
                        &events,
                        origin,
                        &routed.envelope,
                        now,
                    );
                    bump(&stats.routed_delivered);
                    let response = match MsgResponse::from_pb(answer) {
                        Ok(response) => RouteResponse::Answer {
                            response,
                            hops: arrived,
                        },
                        Err(e) => RouteResponse::refusal(
                            RouteRefusalCode::RouteRefusalUnspecified,
                            e.to_string(),
                            arrived,
                        ),
                    };
                    Some(Internal::RouteRespond {
                        token,
                        response: response.encode(),
                    })
                });
            }
            Admit::Forward { ttl, hops } => {
                if let Err(reason) = self.check_envelope(&routed) {
                    bump(&stats.routed_malformed);
                    tracing::debug!(%from, "routed envelope refused: {reason}");
                    self.refuse(
                        channel,
                        RouteResponse::refusal(
                            RouteRefusalCode::RouteRefusalMalformed,
                            reason,
                            arrived,
                        ),
                    );
                    return;
                }
                let token = self.park(channel);
                let origin = routed.origin;
                let next = Routed {
                    ttl,
                    hops,
                    ..routed
                };
                if self.forward(next, Upstream::Relay { token }, vec![from, origin]) {
                    bump(&stats.routed_forwarded);
                } else {
                    bump(&stats.routed_no_route);
                    self.route_respond(
                        token,
                        RouteResponse::refusal(
                            RouteRefusalCode::RouteRefusalNoRoute,
                            "no next hop towards the destination",
                            arrived,
                        )
                        .encode(),
                    );
                }
            }
            Admit::Refuse(code, reason) => {
                bump(match code {
                    RouteRefusalCode::RouteRefusalTtlExpired => &stats.routed_dropped_ttl,
                    RouteRefusalCode::RouteRefusalDuplicate => &stats.routed_dropped_duplicate,
                    RouteRefusalCode::RouteRefusalPolicy => &stats.routed_refused_policy,
                    _ => &stats.routed_malformed,
                });
                tracing::debug!(%from, ?code, "routed message refused: {reason}");
                self.refuse(channel, RouteResponse::refusal(code, reason, arrived));
            }
        }
    }

    /// A relay checks the envelope it carries: signed by the origin, for
    /// the destination, with the id the header claims, not expired. So a
    /// relay never spends bandwidth on forged or stale messages, and the
    /// reverse routes it learns point at real senders.
    fn check_envelope(&self, routed: &Routed) -> Result<(), String> {
        let verified =
            peercomm_wire::verify(&routed.envelope, self.now_ms()).map_err(|e| e.to_string())?;
        let h = &verified.header;
        if h.id != routed.message_id {
            return Err("message id differs from the envelope's".into());
        }
        if h.recipient != routed.destination {
            return Err("destination differs from the envelope's recipient".into());
        }
        if h.sender != routed.origin {
            return Err("origin differs from the envelope's signed sender".into());
        }
        Ok(())
    }

    fn refuse(&mut self, channel: ResponseChannel<Vec<u8>>, refusal: RouteResponse) {
        let _ = self
            .swarm
            .behaviour_mut()
            .route
            .send_response(channel, refusal.encode());
    }

    fn park(&mut self, channel: ResponseChannel<Vec<u8>>) -> u64 {
        let token = self.route.next_token;
        self.route.next_token += 1;
        self.route.channels.insert(token, channel);
        token
    }

    /// Answers the hop that brought a routed message.
    pub(super) fn route_respond(&mut self, token: u64, response: Vec<u8>) {
        if let Some(channel) = self.route.channels.remove(&token) {
            let _ = self
                .swarm
                .behaviour_mut()
                .route
                .send_response(channel, response);
        }
    }

    fn on_route_response(&mut self, request_id: OutboundRequestId, bytes: Vec<u8>) {
        let Some(hop) = self.route.pending.remove(&request_id) else {
            return;
        };
        let response = match RouteResponse::decode(&bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(next_hop = %hop.next_hop, "malformed route response: {e}");
                self.hop_failed(hop, RouteRefusalCode::RouteRefusalMalformed);
                return;
            }
        };
        match response {
            RouteResponse::Answer { response, hops } => {
                if matches!(response, MsgResponse::Receipt(_)) {
                    let beyond = hops.saturating_sub(hop.routed.hops);
                    self.route.router.learn(
                        hop.routed.destination,
                        hop.next_hop,
                        beyond,
                        hop.sent_at.elapsed(),
                        Instant::now(),
                    );
                }
                match hop.upstream {
                    Upstream::Origin { id } => {
                        self.settle(hop.routed.destination, id, Ok(response.to_pb()), Some(hops));
                    }
                    Upstream::Relay { token } => self.route_respond(token, bytes),
                }
            }
            RouteResponse::Refusal { code, reason, .. } => {
                tracing::debug!(next_hop = %hop.next_hop, ?code, "next hop refused: {reason}");
                self.hop_failed(hop, code);
            }
        }
    }

    /// A next hop failed or refused: forget the route through it and try
    /// the next-best; when none is left, tell whoever is waiting.
    fn hop_failed(&mut self, hop: PendingHop, code: RouteRefusalCode) {
        bump(&self.shared.stats.routed_hop_failures);
        let PendingHop {
            routed,
            next_hop,
            tried,
            upstream,
            ..
        } = hop;
        self.route.router.failed(routed.destination, next_hop);
        let (destination, hops) = (routed.destination, routed.hops);
        if self.shutdown.is_none() && self.forward(routed, upstream, tried) {
            return;
        }
        match upstream {
            Upstream::Origin { id } => {
                self.origin_failed(id, &format!("no route to {destination} ({code:?})"));
            }
            Upstream::Relay { token } => {
                bump(&self.shared.stats.routed_no_route);
                self.route_respond(
                    token,
                    RouteResponse::refusal(
                        RouteRefusalCode::RouteRefusalNoRoute,
                        format!("every next hop failed ({code:?})"),
                        hops,
                    )
                    .encode(),
                );
            }
        }
    }

    /// Our routed attempt found no way: the outbox retries it later.
    pub(super) fn origin_failed(&mut self, id: MessageId, note: &str) {
        self.in_flight_ids.remove(&id);
        bump(&self.shared.stats.attempt_failures);
        tracing::debug!(%id, "routed attempt failed: {note}");
        self.mailbox_deposit(id);
        let note = note.to_string();
        let now = self.now_ms();
        self.background(move |store| {
            let _ = store.note_error(id.as_bytes(), &note, now);
            None
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays_are_read_from_circuit_addresses() {
        let (relay, target) = (PeerId::random(), PeerId::random());
        let circuit: Multiaddr =
            format!("/ip4/192.0.2.1/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{target}")
                .parse()
                .unwrap();
        let plain: Multiaddr = "/ip4/192.0.2.2/tcp/4001".parse().unwrap();
        assert_eq!(
            relays_in(&[plain.clone(), circuit.clone(), circuit]),
            vec![relay]
        );
        assert!(relays_in(&[plain]).is_empty());
    }
}
