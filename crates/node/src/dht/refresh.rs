//! Lean bucket refreshes (DHT tuning).
//!
//! A Kademlia bootstrap looks up the node's own key (which finds its
//! neighbourhood, where its record goes) and then refreshes every bucket
//! farther out than its closest neighbour with a lookup for a random key in
//! that bucket. libp2p runs each refresh as a full lookup: it converges on
//! the k closest peers to a random key, some 25 to 35 requests, each usually
//! a new connection. A refresh exists only to put a few live peers into that
//! bucket, and the first round of answers already comes from it, so with
//! DHT tuning the node finishes libp2p's refresh steps unsent and asks for
//! the [`REFRESH_RESULTS`] closest peers to each bucket's random key
//! instead: the same buckets reached, in a third of the requests and
//! connections. A joining node thus opens far fewer connections, and the
//! nodes it asks do far less work (measured in docs/OPERATIONS.md).

use libp2p::kad::{KBucketDistance, KBucketKey};
use libp2p::PeerId;

/// Peers each lean refresh converges on: as many as a lookup asks at once.
pub(crate) const REFRESH_RESULTS: usize = 3;

/// Random keys tried per bucket before the last one is used anyway (as
/// libp2p does: a key lands in bucket 255 with probability 1/2, in bucket
/// 252 with 1/16, so far-out buckets are hit almost surely and near ones
/// get a key close to them).
const TRIES: usize = 16;

/// The buckets a bootstrap refreshes: every one farther out than the
/// closest non-empty bucket `closest` (none while the table is empty).
pub(crate) fn buckets_to_refresh(closest: Option<u32>) -> std::ops::RangeInclusive<u32> {
    match closest {
        Some(i) => i.saturating_add(1)..=255,
        #[allow(clippy::reversed_empty_ranges)]
        None => 1..=0,
    }
}

/// The bucket (0 to 255) a distance falls into; `None` for our own key.
pub(crate) fn bucket_of(distance: KBucketDistance) -> Option<u32> {
    distance.ilog2()
}

/// A random key whose distance from `local` falls into bucket `index`, as
/// far as [`TRIES`] random keys allow (the last one otherwise).
pub(crate) fn key_in_bucket(local: &KBucketKey<PeerId>, index: u32) -> PeerId {
    let mut target = PeerId::random();
    for _ in 1..TRIES {
        if bucket_of(local.distance(&KBucketKey::from(target))) == Some(index) {
            break;
        }
        target = PeerId::random();
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bucket_beyond_the_closest_is_refreshed() {
        assert_eq!(
            buckets_to_refresh(Some(250)).collect::<Vec<_>>(),
            vec![251, 252, 253, 254, 255]
        );
        assert_eq!(buckets_to_refresh(Some(255)).count(), 0);
        assert_eq!(buckets_to_refresh(None).count(), 0);
    }

    #[test]
    fn keys_fall_into_far_buckets() {
        let local = KBucketKey::from(PeerId::random());
        let hits = |index: u32| {
            (0..100)
                .filter(|_| {
                    let key = KBucketKey::from(key_in_bucket(&local, index));
                    bucket_of(local.distance(&key)) == Some(index)
                })
                .count()
        };
        // A key misses bucket 255 with probability (1/2)^16 and bucket 254
        // with (3/4)^16 (1%); a random key alone would miss half the time.
        assert!(hits(255) >= 99, "bucket 255");
        assert!(hits(254) >= 92, "bucket 254");
    }
}
