//! Per-peer rate limits on inbound Kademlia requests.
//!
//! libp2p-kad answers `FIND_NODE`, `GET_VALUE`, `GET_PROVIDERS`,
//! `ADD_PROVIDER` and `PUT_VALUE` itself and never tells the behaviour's user
//! who asked (only `PUT_VALUE` carries its source), so the limit sits in a
//! thin [`NetworkBehaviour`] around Kademlia. It sees every event a
//! connection's handler sends up, keeps those that are inbound requests under
//! a per-peer token bucket ([`PeerLimiter`]), and drops the rest, counted.
//!
//! A dropped request is never answered: the asker's own request timeout ends
//! it. Its stream waits in the connection's Kademlia handler, which holds at
//! most 32 such streams per connection, so a peer that keeps flooding is
//! disconnected once it has had a handler's worth of requests dropped.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::kad;
use libp2p::swarm::{
    CloseConnection, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

use super::record_store::PersistentStore;
use crate::stats::{bump, Stats};

/// Peers whose buckets are kept; beyond this, idle buckets are forgotten.
const MAX_TRACKED_PEERS: usize = 10_000;
/// Requests dropped for one peer (since it was last within its rate) before
/// its connections are closed: the Kademlia handler's stream budget.
const DROPS_BEFORE_DISCONNECT: u32 = 32;

/// One peer's token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
    /// Requests dropped since the peer was last within its rate.
    dropped: u32,
}

/// What the limiter decided about one inbound request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the peer's rate: answer it.
    Allow,
    /// Over the rate: drop it.
    Drop,
    /// Over the rate for long enough: drop it and disconnect the peer.
    Disconnect,
}

/// Per-peer token buckets: `per_minute` requests a minute on average, bursts
/// of up to a quarter of that (at least 8). Sans-IO: the caller passes `now`.
#[derive(Debug)]
pub(crate) struct PeerLimiter {
    per_minute: u32,
    buckets: HashMap<PeerId, Bucket>,
}

impl PeerLimiter {
    /// A limiter allowing `per_minute` requests per peer; 0 turns it off.
    pub(crate) fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: HashMap::new(),
        }
    }

    fn capacity(&self) -> f64 {
        f64::from((self.per_minute / 4).max(8))
    }

    /// Decides about one inbound request from `peer` at `now`.
    pub(crate) fn check(&mut self, peer: PeerId, now: Instant) -> Verdict {
        if self.per_minute == 0 {
            return Verdict::Allow;
        }
        let capacity = self.capacity();
        let rate = f64::from(self.per_minute) / 60.0;
        if self.buckets.len() >= MAX_TRACKED_PEERS && !self.buckets.contains_key(&peer) {
            // Forget buckets that have refilled: they hold no information.
            self.buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < capacity
            });
            if self.buckets.len() >= MAX_TRACKED_PEERS {
                // Still full of busy peers: newcomers are not tracked, and
                // the count of tracked ones stays bounded.
                return Verdict::Allow;
            }
        }
        let bucket = self.buckets.entry(peer).or_insert(Bucket {
            tokens: capacity,
            last: now,
            dropped: 0,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(capacity);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            bucket.dropped = 0;
            return Verdict::Allow;
        }
        bucket.dropped = bucket.dropped.saturating_add(1);
        if bucket.dropped >= DROPS_BEFORE_DISCONNECT {
            bucket.dropped = 0;
            Verdict::Disconnect
        } else {
            Verdict::Drop
        }
    }

    /// Forgets a peer that has gone (its last connection closed).
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.buckets.remove(peer);
    }

    /// Peers currently tracked.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// Whether a Kademlia handler event is a request from the remote peer, by
/// the name of its variant (the handler's event type is private to
/// libp2p-kad; its `Debug` output starts with the variant name). Only the
/// first word is formatted, so this costs no allocation.
fn is_inbound_request(event: &impl std::fmt::Debug) -> bool {
    /// Collects the variant name and stops formatting right after it.
    struct FirstWord {
        buf: [u8; 24],
        len: usize,
    }
    impl std::fmt::Write for FirstWord {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            for b in s.bytes() {
                if !b.is_ascii_alphanumeric() || self.len == self.buf.len() {
                    return Err(std::fmt::Error);
                }
                self.buf[self.len] = b;
                self.len += 1;
            }
            Ok(())
        }
    }
    let mut word = FirstWord {
        buf: [0; 24],
        len: 0,
    };
    // Formatting stops with an error at the first non-name character.
    let _ = write!(word, "{event:?}");
    matches!(
        &word.buf[..word.len],
        b"FindNodeReq" | b"GetProvidersReq" | b"AddProvider" | b"GetRecord" | b"PutRecord"
    )
}

/// Kademlia with per-peer limits on inbound requests. Derefs to the
/// Kademlia behaviour, so queries are started on it as usual.
pub(crate) struct RateLimitedKad {
    inner: kad::Behaviour<PersistentStore>,
    limiter: PeerLimiter,
    stats: Arc<Stats>,
    /// Peers to disconnect at the next poll.
    disconnect: Vec<PeerId>,
}

impl RateLimitedKad {
    /// Wraps `inner`, allowing each peer `per_minute` inbound requests a
    /// minute (0: no limit); drops are counted in `stats`.
    pub(crate) fn new(
        inner: kad::Behaviour<PersistentStore>,
        per_minute: u32,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            inner,
            limiter: PeerLimiter::new(per_minute),
            stats,
            disconnect: Vec::new(),
        }
    }
}

impl std::ops::Deref for RateLimitedKad {
    type Target = kad::Behaviour<PersistentStore>;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl std::ops::DerefMut for RateLimitedKad {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

type Inner = kad::Behaviour<PersistentStore>;

impl NetworkBehaviour for RateLimitedKad {
    type ConnectionHandler = THandler<Inner>;
    type ToSwarm = kad::Event;

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
        self.inner.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )
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
        self.inner.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(closed) = &event {
            if closed.remaining_established == 0 {
                self.limiter.forget(&closed.peer_id);
            }
        }
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        if is_inbound_request(&event) {
            match self.limiter.check(peer_id, Instant::now()) {
                Verdict::Allow => {}
                Verdict::Drop => {
                    bump(&self.stats.dht_inbound_rate_limited);
                    return;
                }
                Verdict::Disconnect => {
                    bump(&self.stats.dht_inbound_rate_limited);
                    tracing::info!(%peer_id, "disconnecting a peer that floods DHT requests");
                    self.disconnect.push(peer_id);
                    return;
                }
            }
        }
        self.inner
            .on_connection_handler_event(peer_id, connection_id, event);
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some(peer_id) = self.disconnect.pop() {
            return Poll::Ready(ToSwarm::CloseConnection {
                peer_id,
                connection: CloseConnection::All,
            });
        }
        self.inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_peer_within_its_rate_is_always_answered() {
        let mut limiter = PeerLimiter::new(60);
        let peer = PeerId::random();
        let start = Instant::now();
        // One a second for ten minutes: exactly the rate.
        for s in 0..600 {
            let now = start + Duration::from_secs(s);
            assert_eq!(limiter.check(peer, now), Verdict::Allow, "second {s}");
        }
    }

    #[test]
    fn a_burst_beyond_the_bucket_is_dropped_then_the_peer_recovers() {
        let mut limiter = PeerLimiter::new(60);
        let peer = PeerId::random();
        let other = PeerId::random();
        let now = Instant::now();
        // Capacity is max(60 / 4, 8) = 15.
        let allowed = (0..20)
            .filter(|_| limiter.check(peer, now) == Verdict::Allow)
            .count();
        assert_eq!(allowed, 15);
        // Another peer has its own bucket.
        assert_eq!(limiter.check(other, now), Verdict::Allow);
        // Two seconds later two more tokens have come back.
        let later = now + Duration::from_secs(2);
        assert_eq!(limiter.check(peer, later), Verdict::Allow);
        assert_eq!(limiter.check(peer, later), Verdict::Allow);
        assert_eq!(limiter.check(peer, later), Verdict::Drop);
    }

    #[test]
    fn a_peer_that_keeps_flooding_is_disconnected() {
        let mut limiter = PeerLimiter::new(60);
        let peer = PeerId::random();
        let now = Instant::now();
        let verdicts: Vec<Verdict> = (0..15 + 32).map(|_| limiter.check(peer, now)).collect();
        assert!(verdicts[..15].iter().all(|v| *v == Verdict::Allow));
        assert!(verdicts[15..15 + 31].iter().all(|v| *v == Verdict::Drop));
        assert_eq!(verdicts[15 + 31], Verdict::Disconnect);
    }

    #[test]
    fn zero_means_no_limit_and_tracking_stays_bounded() {
        let mut off = PeerLimiter::new(0);
        let peer = PeerId::random();
        let now = Instant::now();
        assert!((0..10_000).all(|_| off.check(peer, now) == Verdict::Allow));
        assert_eq!(off.tracked(), 0);

        let mut limiter = PeerLimiter::new(60);
        for _ in 0..MAX_TRACKED_PEERS + 500 {
            let _ = limiter.check(PeerId::random(), now);
        }
        assert!(limiter.tracked() <= MAX_TRACKED_PEERS);
        limiter.forget(&peer);
    }

    #[test]
    fn inbound_requests_are_told_apart_by_variant_name() {
        #[derive(Debug)]
        #[allow(dead_code)]
        enum Fake {
            FindNodeReq { key: Vec<u8> },
            FindNodeRes { closer: Vec<u8> },
            GetRecord { key: Vec<u8> },
            GetRecordRes { record: Option<Vec<u8>> },
            PutRecord { record: Vec<u8> },
            AddProvider { key: Vec<u8> },
            GetProvidersReq { key: Vec<u8> },
            ProtocolConfirmed,
        }
        assert!(is_inbound_request(&Fake::FindNodeReq { key: vec![1] }));
        assert!(is_inbound_request(&Fake::GetRecord { key: vec![1] }));
        assert!(is_inbound_request(&Fake::PutRecord { record: vec![1] }));
        assert!(is_inbound_request(&Fake::AddProvider { key: vec![1] }));
        assert!(is_inbound_request(&Fake::GetProvidersReq { key: vec![1] }));
        assert!(!is_inbound_request(&Fake::FindNodeRes { closer: vec![1] }));
        assert!(!is_inbound_request(&Fake::GetRecordRes { record: None }));
        assert!(!is_inbound_request(&Fake::ProtocolConfirmed));
    }
}
