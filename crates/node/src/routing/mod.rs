//! Multi-hop routing: `/peercomm/route/1.0.0`.
//!
//! Some peers cannot reach each other directly (NAT, firewalls, different
//! transports, a link down). A routed message is the sealed envelope,
//! unchanged, wrapped with its destination, message id, attempt, TTL, hop
//! count, previous hop and origin ([`peercomm_wire::Routed`]); each relay
//! checks it, picks a next hop and passes it on, and the destination's answer
//! (its signed receipt) travels back along the same chain of streams.
//!
//! This module is the sans-IO part: [`Router`] takes events and the current
//! `Instant` and answers with decisions. The event loop does the I/O.
//!
//! - [`seen`]: the bounded, time-expiring duplicate filter.
//! - [`table`]: destination → next hops with their metric, learned from
//!   answers coming back and from the reverse path, invalidated on failure.
//! - [`quota`]: what a relay forwards for each previous hop.

pub(crate) mod quota;
pub(crate) mod seen;
pub(crate) mod table;

use std::time::{Duration, Instant};

use libp2p::{kad::KBucketKey, PeerId, StreamProtocol};
use peercomm_wire::pb::RouteRefusalCode;
use peercomm_wire::{MessageId, Routed};

use crate::config::RoutingConfig;
use quota::ForwardQuota;
use seen::SeenCache;
use table::RouteTable;

pub use table::RouteInfo;

/// The routed-envelope protocol.
pub const ROUTE_PROTOCOL: StreamProtocol = StreamProtocol::new("/peercomm/route/1.0.0");

/// What to do with a routed message that arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admit {
    /// It is for us: accept the envelope and answer with its receipt.
    Deliver,
    /// Pass it on; `ttl` and `hops` are what the next hop gets.
    Forward {
        /// Remaining hops for the next hop.
        ttl: u32,
        /// Hops taken when it reaches the next hop's caller (us).
        hops: u32,
    },
    /// Refuse it (counted by the caller).
    Refuse(RouteRefusalCode, &'static str),
}

/// Why a next hop is on the candidate list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// A live connection to the destination itself.
    Direct,
    /// A cached route.
    Cached,
    /// A connected peer the destination's record names as its relay.
    Relay,
    /// A connected peer XOR-closer to the destination than we are.
    Closer,
    /// The destination itself, not connected but in our DHT routing table:
    /// dialled.
    Dial,
    /// A peer of our DHT routing table XOR-closer to the destination than
    /// we are, not connected: dialled.
    Table,
    /// The sender's last resort when no peer is closer than itself (it is
    /// the closest it knows of): its other peers, nearest first.
    Any,
}

/// The routing state of one node.
#[derive(Debug)]
pub(crate) struct Router {
    local: PeerId,
    config: RoutingConfig,
    relay: bool,
    seen: SeenCache,
    table: RouteTable,
    quota: ForwardQuota,
}

impl Router {
    /// `relay`: whether this node forwards for others (the relay role).
    pub(crate) fn new(local: PeerId, config: RoutingConfig, relay: bool) -> Self {
        Self {
            local,
            relay,
            seen: SeenCache::new(config.seen_capacity, config.seen_ttl),
            table: RouteTable::new(config.route_ttl, config.max_routes),
            quota: ForwardQuota::new(
                config.forward_per_peer_per_minute,
                config.forward_bytes_per_peer_per_minute,
            ),
            config,
        }
    }

    /// The TTL a message starts with: the configured default, or what the
    /// sender asked for, capped.
    pub(crate) fn initial_ttl(&self, asked: Option<u32>) -> u32 {
        asked
            .unwrap_or(self.config.default_ttl)
            .clamp(1, self.config.max_ttl)
    }

    /// Decides about a routed message `from` a peer. Learns the reverse
    /// path (the origin is reachable through `from`) from every message
    /// that is not refused.
    pub(crate) fn admit(&mut self, from: PeerId, routed: &Routed, now: Instant) -> Admit {
        if routed.previous_hop != from {
            return Admit::Refuse(
                RouteRefusalCode::RouteRefusalMalformed,
                "previous hop is not the peer that sent it",
            );
        }
        if routed.origin == self.local {
            return Admit::Refuse(
                RouteRefusalCode::RouteRefusalDuplicate,
                "our own message came back",
            );
        }
        let hops = routed.hops.saturating_add(1);
        if routed.destination == self.local {
            // The destination de-duplicates by message id itself, and a
            // retransmission must be answered with its receipt again.
            self.learn_reverse(routed, from, hops, now);
            return Admit::Deliver;
        }
        let ttl = routed.ttl.min(self.config.max_ttl);
        if ttl <= 1 {
            return Admit::Refuse(
                RouteRefusalCode::RouteRefusalTtlExpired,
                "TTL ran out before the destination",
            );
        }
        if !self.relay {
            return Admit::Refuse(
                RouteRefusalCode::RouteRefusalPolicy,
                "this node does not relay (relay role off)",
            );
        }
        let key = (routed.message_id, routed.destination, routed.attempt);
        if !self.seen.insert(key, now) {
            return Admit::Refuse(
                RouteRefusalCode::RouteRefusalDuplicate,
                "seen this message before",
            );
        }
        if !self.quota.allow(from, routed.envelope.len() as u64, now) {
            return Admit::Refuse(
                RouteRefusalCode::RouteRefusalPolicy,
                "over this relay's quota for your messages",
            );
        }
        self.learn_reverse(routed, from, hops, now);
        Admit::Forward { ttl: ttl - 1, hops }
    }

    /// Marks a message we send ourselves as seen, so a loop that brings it
    /// back is dropped like any duplicate.
    pub(crate) fn mark_sent(
        &mut self,
        id: MessageId,
        destination: PeerId,
        attempt: u32,
        now: Instant,
    ) {
        let _ = self.seen.insert((id, destination, attempt), now);
    }

    fn learn_reverse(&mut self, routed: &Routed, from: PeerId, hops: u32, now: Instant) {
        if routed.origin != from {
            self.table.learn(routed.origin, from, hops, None, now);
        }
    }

    /// Next hops for `destination`, best first, never one in `exclude`:
    /// a live connection to it; cached routes; connected relays its record
    /// names; the destination itself if our DHT routing table knows it;
    /// connected peers XOR-closer to it than we are, closest first; then
    /// routing-table peers closer than we are (`table`, closest first),
    /// which are dialled. With `any` (the sender itself), peers that are
    /// not closer come last. At most `max_candidates`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn candidates(
        &mut self,
        destination: PeerId,
        exclude: &[PeerId],
        connected: &[PeerId],
        relays: &[PeerId],
        table: &[PeerId],
        any: bool,
        now: Instant,
    ) -> Vec<(PeerId, Why)> {
        let mut out: Vec<(PeerId, Why)> = Vec::new();
        let push = |peer: PeerId, why: Why, out: &mut Vec<(PeerId, Why)>| {
            if peer != self.local
                && !exclude.contains(&peer)
                && !out.iter().any(|(p, _)| *p == peer)
            {
                out.push((peer, why));
            }
        };
        if connected.contains(&destination) {
            push(destination, Why::Direct, &mut out);
        }
        for hop in self.table.next_hops(&destination, now) {
            push(hop, Why::Cached, &mut out);
        }
        for relay in relays {
            if connected.contains(relay) {
                push(*relay, Why::Relay, &mut out);
            }
        }
        if table.contains(&destination) {
            push(destination, Why::Dial, &mut out);
        }
        let target = KBucketKey::from(destination);
        let ours = KBucketKey::from(self.local).distance(&target);
        let by_distance = |peers: &[PeerId], only_closer: bool| {
            let mut sorted: Vec<_> = peers
                .iter()
                .filter(|p| **p != destination && !exclude.contains(p))
                .map(|p| (KBucketKey::from(*p).distance(&target), *p))
                .filter(|(d, _)| !only_closer || *d < ours)
                .collect();
            sorted.sort();
            sorted
        };
        let closer = |peers: &[PeerId]| by_distance(peers, true);
        // Half the slots at most for connected peers, so the routing
        // table's peers (the destination's DHT neighbourhood) get a turn.
        let half = self.config.max_candidates.div_ceil(2);
        for (_, peer) in closer(connected).into_iter().take(half) {
            push(peer, Why::Closer, &mut out);
        }
        for (_, peer) in closer(table).into_iter().take(self.config.max_candidates) {
            let why = if connected.contains(&peer) {
                Why::Closer
            } else {
                Why::Table
            };
            push(peer, why, &mut out);
        }
        if any {
            let rest = by_distance(connected, false)
                .into_iter()
                .chain(by_distance(table, false));
            for (_, peer) in rest.take(self.config.max_candidates) {
                push(peer, Why::Any, &mut out);
            }
        }
        out.truncate(self.config.max_candidates.max(1));
        out
    }

    /// An answer came back from `destination` through `next_hop`, `hops`
    /// hops beyond us, after `rtt`.
    pub(crate) fn learn(
        &mut self,
        destination: PeerId,
        next_hop: PeerId,
        hops: u32,
        rtt: Duration,
        now: Instant,
    ) {
        self.table
            .learn(destination, next_hop, hops.max(1), Some(rtt), now);
    }

    /// Sending through `next_hop` towards `destination` failed.
    pub(crate) fn failed(&mut self, destination: PeerId, next_hop: PeerId) {
        self.table.invalidate(&destination, &next_hop);
    }

    /// A peer is gone for good (its connection closed): routes through it
    /// stay until they fail, as a redial may well work.
    pub(crate) fn forget_peer(&mut self, peer: &PeerId) {
        self.quota.forget(peer);
    }

    /// Known routes, for status output.
    pub(crate) fn routes(&self, now: Instant) -> Vec<RouteInfo> {
        self.table.snapshot(now)
    }
}

#[cfg(test)]
mod tests;
