use std::time::{Duration, Instant};

use libp2p::kad::KBucketKey;
use libp2p::PeerId;
use peercomm_wire::pb::RouteRefusalCode;
use peercomm_wire::{MessageId, Routed};

use super::quota::ForwardQuota;
use super::seen::SeenCache;
use super::table::RouteTable;
use super::{Admit, Router, Why};
use crate::config::RoutingConfig;

fn routed(from: PeerId, origin: PeerId, destination: PeerId, ttl: u32) -> Routed {
    Routed {
        destination,
        message_id: MessageId::from([1; 16]),
        attempt: 1,
        ttl,
        hops: 0,
        previous_hop: from,
        origin,
        envelope: vec![0; 100],
    }
}

fn router() -> (PeerId, Router) {
    let local = PeerId::random();
    (local, Router::new(local, RoutingConfig::default(), true))
}

#[test]
fn a_message_for_us_is_delivered_and_teaches_the_way_back() {
    let (local, mut r) = router();
    let (prev, origin) = (PeerId::random(), PeerId::random());
    let now = Instant::now();
    let mut m = routed(prev, origin, local, 1);
    m.hops = 2;
    assert_eq!(r.admit(prev, &m, now), Admit::Deliver);
    // A retransmission reaches the destination again: it is answered again.
    assert_eq!(r.admit(prev, &m, now), Admit::Deliver);
    let back = r.candidates(origin, &[], &[prev], &[], &[], false, now);
    assert_eq!(back, vec![(prev, Why::Cached)]);
    assert_eq!(r.routes(now)[0].hops, 3);
}

#[test]
fn ttl_counts_down_and_runs_out() {
    let (_, mut r) = router();
    let (prev, origin, dest) = (PeerId::random(), PeerId::random(), PeerId::random());
    let now = Instant::now();
    let mut m = routed(prev, origin, dest, 3);
    m.hops = 4;
    assert_eq!(r.admit(prev, &m, now), Admit::Forward { ttl: 2, hops: 5 });
    let mut last = routed(prev, origin, dest, 1);
    last.attempt = 2;
    assert!(matches!(
        r.admit(prev, &last, now),
        Admit::Refuse(RouteRefusalCode::RouteRefusalTtlExpired, _)
    ));
    // A TTL larger than the configured cap is cut to it.
    let mut big = routed(prev, origin, dest, 1000);
    big.attempt = 3;
    let cap = RoutingConfig::default().max_ttl;
    assert_eq!(
        r.admit(prev, &big, now),
        Admit::Forward {
            ttl: cap - 1,
            hops: 1
        }
    );
}

#[test]
fn duplicates_and_loops_are_refused_but_a_new_attempt_passes() {
    let (local, mut r) = router();
    let (prev, origin, dest) = (PeerId::random(), PeerId::random(), PeerId::random());
    let now = Instant::now();
    let m = routed(prev, origin, dest, 8);
    assert!(matches!(r.admit(prev, &m, now), Admit::Forward { .. }));
    // The same transmission again, from anyone: dropped.
    let other = PeerId::random();
    let again = Routed {
        previous_hop: other,
        ..m.clone()
    };
    assert!(matches!(
        r.admit(other, &again, now),
        Admit::Refuse(RouteRefusalCode::RouteRefusalDuplicate, _)
    ));
    let retry = Routed {
        attempt: 2,
        ..m.clone()
    };
    assert!(matches!(r.admit(prev, &retry, now), Admit::Forward { .. }));
    // Our own message coming back is a loop.
    let ours = routed(prev, local, dest, 8);
    assert!(matches!(
        r.admit(prev, &ours, now),
        Admit::Refuse(RouteRefusalCode::RouteRefusalDuplicate, _)
    ));
    // After the seen-cache's lifetime the entry is gone.
    let later = now + RoutingConfig::default().seen_ttl + Duration::from_secs(1);
    assert!(matches!(r.admit(prev, &m, later), Admit::Forward { .. }));
}

#[test]
fn a_lying_previous_hop_is_malformed() {
    let (_, mut r) = router();
    let m = routed(PeerId::random(), PeerId::random(), PeerId::random(), 8);
    assert!(matches!(
        r.admit(PeerId::random(), &m, Instant::now()),
        Admit::Refuse(RouteRefusalCode::RouteRefusalMalformed, _)
    ));
}

#[test]
fn relays_forward_only_with_the_role_and_within_quota() {
    let local = PeerId::random();
    let mut off = Router::new(local, RoutingConfig::default(), false);
    let (prev, origin, dest) = (PeerId::random(), PeerId::random(), PeerId::random());
    let now = Instant::now();
    assert!(matches!(
        off.admit(prev, &routed(prev, origin, dest, 8), now),
        Admit::Refuse(RouteRefusalCode::RouteRefusalPolicy, _)
    ));
    // Still the destination of its own messages.
    assert_eq!(
        off.admit(prev, &routed(prev, origin, local, 8), now),
        Admit::Deliver
    );

    let config = RoutingConfig {
        forward_per_peer_per_minute: 16,
        ..RoutingConfig::default()
    };
    let mut limited = Router::new(local, config, true);
    let mut forwarded = 0;
    for attempt in 0..100 {
        let m = Routed {
            attempt,
            ..routed(prev, origin, dest, 8)
        };
        if matches!(limited.admit(prev, &m, now), Admit::Forward { .. }) {
            forwarded += 1;
        }
    }
    assert_eq!(
        forwarded, 4,
        "a burst of a quarter minute's worth, at least 4"
    );
    // Another previous hop has its own quota.
    let other = PeerId::random();
    let fresh = Routed {
        attempt: 1000,
        ..routed(other, origin, dest, 8)
    };
    assert!(matches!(
        limited.admit(other, &fresh, now),
        Admit::Forward { .. }
    ));
}

#[test]
fn byte_quota_refuses_large_floods() {
    let mut q = ForwardQuota::new(0, 1024 * 1024);
    let (peer, now) = (PeerId::random(), Instant::now());
    // Burst: a quarter of a MiB.
    assert!(q.allow(peer, 200 * 1024, now));
    assert!(!q.allow(peer, 200 * 1024, now));
    // A minute later the bucket has refilled.
    assert!(q.allow(peer, 200 * 1024, now + Duration::from_secs(60)));
}

#[test]
fn candidates_come_in_order_direct_cached_relay_closer() {
    let local = PeerId::random();
    let config = RoutingConfig {
        max_candidates: 8,
        ..RoutingConfig::default()
    };
    let mut r = Router::new(local, config, true);
    let now = Instant::now();
    let dest = PeerId::random();
    let target = KBucketKey::from(dest);
    let ours = KBucketKey::from(local).distance(&target);
    // Peers on either side of us, by XOR distance to the destination.
    let mut closer = Vec::new();
    let mut farther = Vec::new();
    while closer.len() < 2 || farther.len() < 2 {
        let p = PeerId::random();
        if KBucketKey::from(p).distance(&target) < ours {
            closer.push(p);
        } else {
            farther.push(p);
        }
    }
    closer.sort_by_key(|p| KBucketKey::from(*p).distance(&target));
    // The relay is farther than us: it is chosen for its record, not greed.
    let (cached, relay) = (PeerId::random(), farther[1]);
    r.learn(dest, cached, 2, Duration::from_millis(5), now);
    let connected = [farther[0], closer[1], closer[0], relay, dest];
    let got = r.candidates(dest, &[], &connected, &[relay], &[], false, now);
    assert_eq!(
        got,
        vec![
            (dest, Why::Direct),
            (cached, Why::Cached),
            (relay, Why::Relay),
            (closer[0], Why::Closer),
            (closer[1], Why::Closer),
        ]
    );
    // Excluded peers (the previous hop, hops already tried) never appear;
    // a farther peer is never a greedy choice.
    let got = r.candidates(
        dest,
        &[dest, cached, closer[0]],
        &connected,
        &[],
        &[],
        false,
        now,
    );
    assert_eq!(got, vec![(closer[1], Why::Closer)]);
    // At most `max_candidates`, best first.
    let (small_id, mut small) = router();
    small.learn(dest, cached, 2, Duration::from_millis(5), now);
    let ours = KBucketKey::from(small_id).distance(&target);
    let many: Vec<PeerId> = std::iter::repeat_with(PeerId::random)
        .filter(|p| KBucketKey::from(*p).distance(&target) < ours)
        .take(10)
        .chain([dest])
        .collect();
    let got = small.candidates(dest, &[], &many, &[], &[], false, now);
    assert_eq!(got.len(), RoutingConfig::default().max_candidates);
    assert_eq!(got[..2], [(dest, Why::Direct), (cached, Why::Cached)]);
}

#[test]
fn a_failed_next_hop_is_dropped_and_the_next_best_remains() {
    let mut t = RouteTable::new(Duration::from_secs(60), 4);
    let (dest, a, b) = (PeerId::random(), PeerId::random(), PeerId::random());
    let now = Instant::now();
    t.learn(dest, b, 3, None, now);
    t.learn(dest, a, 2, Some(Duration::from_millis(9)), now);
    assert_eq!(t.next_hops(&dest, now), vec![a, b]);
    t.invalidate(&dest, &a);
    assert_eq!(t.next_hops(&dest, now), vec![b]);
    // Routes expire.
    assert!(t.next_hops(&dest, now + Duration::from_secs(61)).is_empty());
    assert!(t.snapshot(now).is_empty());
}

#[test]
fn equal_hops_prefer_the_faster_route_and_the_list_is_bounded() {
    let mut t = RouteTable::new(Duration::from_secs(60), 2);
    let dest = PeerId::random();
    let (slow, fast, far) = (PeerId::random(), PeerId::random(), PeerId::random());
    let now = Instant::now();
    t.learn(dest, slow, 2, Some(Duration::from_millis(80)), now);
    t.learn(dest, fast, 2, Some(Duration::from_millis(8)), now);
    t.learn(dest, far, 5, None, now);
    assert_eq!(t.next_hops(&dest, now), vec![fast, slow]);
}

#[test]
fn the_seen_cache_is_bounded() {
    let mut s = SeenCache::new(100, Duration::from_secs(60));
    let now = Instant::now();
    let dest = PeerId::random();
    for i in 0..1000u32 {
        let id = MessageId::from([(i % 251) as u8; 16]);
        s.insert((id, dest, i), now);
        assert!(s.len() <= 100);
    }
    // The newest entries are still there.
    assert!(!s.insert((MessageId::from([(999 % 251) as u8; 16]), dest, 999), now));
}
