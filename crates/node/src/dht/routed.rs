//! Peers that were in the routing table earlier in this run.
//!
//! A peer that leaves the routing table (its address stopped answering) and
//! comes back is "new" to Kademlia again, and the hand-off would copy every
//! record we are the closest holder of to it. A peer with the same id is the
//! same node with the same data dir, and its record store is SQLite: it kept
//! what it held. With DHT tuning a peer routed within the last
//! `dht.republish_interval` (1 h: any record it missed meanwhile is at most
//! that stale, and its owner republishes it) gets no hand-off.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// Peers remembered at most: past it, those older than the window go, and
/// then all (a forgotten peer only gets a hand-off it did not need).
const ROUTED_MAX: usize = 8192;

/// When each peer last entered the routing table.
#[derive(Debug, Default)]
pub(crate) struct Routed {
    at: HashMap<PeerId, Instant>,
}

impl Routed {
    /// `peer` entered the routing table at `now`: whether it had entered it
    /// before, within `within`.
    pub(crate) fn returning(&mut self, peer: PeerId, now: Instant, within: Duration) -> bool {
        let before = self.at.insert(peer, now);
        if self.at.len() > ROUTED_MAX {
            self.at
                .retain(|_, at| now.saturating_duration_since(*at) <= within);
            if self.at.len() > ROUTED_MAX {
                self.at.clear();
                self.at.insert(peer, now);
            }
        }
        before.is_some_and(|at| now.saturating_duration_since(at) <= within)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_returning_only_within_the_window_and_memory_is_bounded() {
        let hour = Duration::from_secs(3600);
        let t0 = Instant::now();
        let mut routed = Routed::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        assert!(!routed.returning(a, t0, hour));
        assert!(routed.returning(a, t0 + Duration::from_secs(600), hour));
        assert!(!routed.returning(b, t0 + Duration::from_secs(600), hour));
        // Over an hour after it last entered: treated as new again.
        assert!(!routed.returning(a, t0 + Duration::from_secs(4300), hour));
        for _ in 0..ROUTED_MAX + 10 {
            routed.returning(PeerId::random(), t0, hour);
        }
        assert!(routed.at.len() <= ROUTED_MAX);
    }
}
