//! The route cache: destination → next hops, each with its metric (hops,
//! then observed round-trip time) and an expiry. Learned from answers that
//! come back (forward path) and from messages that pass (reverse path);
//! an entry whose next hop fails is dropped at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use serde::Serialize;

/// Destinations tracked at most; past this, expired entries are swept and
/// then the new destination is not cached.
const MAX_DESTINATIONS: usize = 16_384;

#[derive(Debug, Clone)]
struct Entry {
    next_hop: PeerId,
    hops: u32,
    rtt: Option<Duration>,
    learned: Instant,
}

/// One cached route, for status output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteInfo {
    /// Where the route leads.
    pub destination: PeerId,
    /// The peer to hand messages to.
    pub next_hop: PeerId,
    /// Hops from us to the destination.
    pub hops: u32,
    /// Round trip observed through this next hop, if measured.
    pub rtt_ms: Option<u64>,
    /// Seconds until the route expires.
    pub expires_in_secs: u64,
}

#[derive(Debug)]
pub(crate) struct RouteTable {
    ttl: Duration,
    per_destination: usize,
    routes: HashMap<PeerId, Vec<Entry>>,
}

impl RouteTable {
    pub(crate) fn new(ttl: Duration, per_destination: usize) -> Self {
        Self {
            ttl,
            per_destination: per_destination.max(1),
            routes: HashMap::new(),
        }
    }

    /// Learns (or refreshes) `destination` via `next_hop`.
    pub(crate) fn learn(
        &mut self,
        destination: PeerId,
        next_hop: PeerId,
        hops: u32,
        rtt: Option<Duration>,
        now: Instant,
    ) {
        if destination == next_hop && hops > 1 {
            return;
        }
        if self.routes.len() >= MAX_DESTINATIONS && !self.routes.contains_key(&destination) {
            self.sweep(now);
            if self.routes.len() >= MAX_DESTINATIONS {
                return;
            }
        }
        let ttl = self.ttl;
        let entries = self.routes.entry(destination).or_default();
        entries.retain(|e| now.saturating_duration_since(e.learned) < ttl);
        match entries.iter_mut().find(|e| e.next_hop == next_hop) {
            Some(e) => {
                e.hops = hops;
                e.rtt = rtt.or(e.rtt);
                e.learned = now;
            }
            None => entries.push(Entry {
                next_hop,
                hops,
                rtt,
                learned: now,
            }),
        }
        entries.sort_by_key(|e| (e.hops, e.rtt.unwrap_or(Duration::MAX)));
        entries.truncate(self.per_destination);
    }

    /// Live next hops for `destination`, best first.
    pub(crate) fn next_hops(&mut self, destination: &PeerId, now: Instant) -> Vec<PeerId> {
        let ttl = self.ttl;
        let Some(entries) = self.routes.get_mut(destination) else {
            return Vec::new();
        };
        entries.retain(|e| now.saturating_duration_since(e.learned) < ttl);
        let hops = entries.iter().map(|e| e.next_hop).collect();
        if entries.is_empty() {
            self.routes.remove(destination);
        }
        hops
    }

    /// Drops the route to `destination` through `next_hop`.
    pub(crate) fn invalidate(&mut self, destination: &PeerId, next_hop: &PeerId) {
        if let Some(entries) = self.routes.get_mut(destination) {
            entries.retain(|e| e.next_hop != *next_hop);
            if entries.is_empty() {
                self.routes.remove(destination);
            }
        }
    }

    fn sweep(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.routes.retain(|_, entries| {
            entries.retain(|e| now.saturating_duration_since(e.learned) < ttl);
            !entries.is_empty()
        });
    }

    pub(crate) fn snapshot(&self, now: Instant) -> Vec<RouteInfo> {
        let mut out: Vec<RouteInfo> = self
            .routes
            .iter()
            .flat_map(|(destination, entries)| {
                entries.iter().filter_map(move |e| {
                    let age = now.saturating_duration_since(e.learned);
                    (age < self.ttl).then(|| RouteInfo {
                        destination: *destination,
                        next_hop: e.next_hop,
                        hops: e.hops,
                        rtt_ms: e.rtt.map(|r| r.as_millis() as u64),
                        expires_in_secs: (self.ttl - age).as_secs(),
                    })
                })
            })
            .collect();
        out.sort_by_key(|r| (r.destination.to_bytes(), r.hops));
        out
    }
}
