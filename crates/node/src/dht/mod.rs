//! Peer discovery through the Kademlia DHT: no central registry.
//!
//! Every node publishes its signed peer record under `/peercomm/peer/<peer-id>`
//! on `/peercomm/kad/1.0.0` (libp2p-kad, wire-compatible with the libp2p
//! Kademlia spec). Records are validated before they are stored
//! ([`validate`]) — Kademlia runs with record filtering, so nothing unchecked
//! is ever served — and the records a node holds, as well as the peers of its
//! routing table, persist in SQLite ([`record_store`]) so a restart keeps
//! them. Bucket diversity ([`diversity`]) keeps one subnet from filling a
//! bucket.

pub(crate) mod diversity;
pub(crate) mod lookups;
pub(crate) mod ratelimit;
pub(crate) mod record_store;
pub(crate) mod refresh;
pub(crate) mod routed;
pub(crate) mod validate;

use libp2p::kad::RecordKey;
use libp2p::{PeerId, StreamProtocol};

pub use lookups::{DhtStats, LookupFigures};
pub use validate::Rejection;

/// The Kademlia protocol name.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/peercomm/kad/1.0.0");

/// Prefix of peer record keys.
pub const PEER_KEY_PREFIX: &str = "/peercomm/peer/";

/// The DHT key of a peer's record: `/peercomm/peer/<peer-id base58>`.
pub fn peer_key(peer: &PeerId) -> RecordKey {
    RecordKey::new(&format!("{PEER_KEY_PREFIX}{peer}"))
}

/// The peer a record key names, if it is a peer record key.
pub fn peer_of_key(key: &RecordKey) -> Option<PeerId> {
    std::str::from_utf8(key.as_ref())
        .ok()?
        .strip_prefix(PEER_KEY_PREFIX)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_keys_round_trip_and_others_are_refused() {
        let peer = PeerId::random();
        assert_eq!(peer_of_key(&peer_key(&peer)), Some(peer));
        assert_eq!(peer_of_key(&RecordKey::new(b"/peercomm/kp/x")), None);
        assert_eq!(
            peer_of_key(&RecordKey::new(b"/peercomm/peer/not-a-peer")),
            None
        );
    }
}
