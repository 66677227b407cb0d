//! Onion keys: the X25519 key a node peels Sphinx packets with, by epoch.
//!
//! A node makes a fresh key at start and every `rotate_every`; the previous
//! key keeps working for `grace` so packets built from the record a sender
//! fetched a moment ago still peel. Each epoch keeps the replay tags of the
//! packets it peeled; a packet whose tag was seen is a replay and is dropped.
//! The tag sets are bounded: an epoch whose set is full takes no more packets
//! and a fresh key is made at once, so memory stays bounded without ever
//! forgetting a tag while its key still works. Sans-IO: every call takes
//! `now_ms`.
//!
//! Keys live in memory only. A restarted node starts a new epoch (and
//! publishes it), so no replay tag is ever lost across a restart: packets
//! built for the old key fail, and their senders pick a fresh path.

use std::collections::{HashSet, VecDeque};

use rand::RngCore;
use sphinx_packet::constants::REPLAY_TAG_SIZE;
use sphinx_packet::{ProcessedPacket, SphinxPacket};
use x25519_sphinx::{PublicKey, StaticSecret};

/// Bytes of an X25519 key.
pub(crate) const ONION_KEY_BYTES: usize = 32;

/// One epoch's key and the replay tags it has seen.
struct EpochKey {
    epoch: u64,
    secret: StaticSecret,
    public: PublicKey,
    created_ms: u64,
    /// When a newer key replaced this one (the grace window starts).
    retired_ms: Option<u64>,
    tags: HashSet<[u8; REPLAY_TAG_SIZE]>,
}

/// Why a packet was not peeled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PeelError {
    /// No key of ours (current or in grace) opens its header.
    #[error("no onion key of this node opens the packet (wrong or expired epoch, or tampered)")]
    UnknownKey,
    /// Its replay tag was seen before under the same key.
    #[error("replayed packet")]
    Replayed,
    /// The epoch that opens it has no room for more replay tags.
    #[error("the onion key's replay tags are full; the sender must use the new key")]
    EpochFull,
    /// The header opened but the packet did not process.
    #[error("malformed packet: {0}")]
    Malformed(String),
}

/// What a successful peel gives.
pub(crate) struct Peeled {
    /// The epoch whose key opened the packet.
    pub(crate) epoch: u64,
    /// The processed packet: the next hop's packet, or the final payload.
    pub(crate) processed: ProcessedPacket,
}

/// A node's onion keys.
pub(crate) struct OnionKeys {
    /// Newest first; at most the current key and those in grace.
    keys: VecDeque<EpochKey>,
    rotate_every_ms: u64,
    grace_ms: u64,
    max_tags: usize,
}

fn new_key(epoch: u64, now_ms: u64, rng: &mut dyn RngCore) -> EpochKey {
    let mut bytes = [0u8; ONION_KEY_BYTES];
    rng.fill_bytes(&mut bytes);
    let secret = StaticSecret::from(bytes);
    let public = PublicKey::from(&secret);
    EpochKey {
        epoch,
        secret,
        public,
        created_ms: now_ms,
        retired_ms: None,
        tags: HashSet::new(),
    }
}

impl OnionKeys {
    /// A first key at `now_ms`. The epoch is the key's creation time in
    /// seconds (or one past the last epoch), so epochs only grow, across
    /// restarts too.
    pub(crate) fn new(
        now_ms: u64,
        rotate_every_ms: u64,
        grace_ms: u64,
        max_tags: usize,
        rng: &mut dyn RngCore,
    ) -> Self {
        let mut keys = VecDeque::new();
        keys.push_front(new_key(now_ms / 1000, now_ms, rng));
        Self {
            keys,
            rotate_every_ms: rotate_every_ms.max(1),
            grace_ms,
            max_tags: max_tags.max(1),
        }
    }

    /// The current epoch and its public key (what the peer record carries).
    pub(crate) fn current(&self) -> (u64, [u8; ONION_KEY_BYTES]) {
        match self.keys.front() {
            Some(k) => (k.epoch, k.public.to_bytes()),
            None => (0, [0; ONION_KEY_BYTES]),
        }
    }

    /// Epochs whose keys still peel packets, newest first.
    pub(crate) fn live_epochs(&self) -> Vec<u64> {
        self.keys.iter().map(|k| k.epoch).collect()
    }

    /// Replay tags held, over all live epochs.
    pub(crate) fn tags_held(&self) -> usize {
        self.keys.iter().map(|k| k.tags.len()).sum()
    }

    /// Rotates if the current key is due (by age, or because its replay
    /// tags are full) and forgets keys whose grace ran out. `true` when a
    /// new key was made: the caller publishes it.
    pub(crate) fn poll_rotate(&mut self, now_ms: u64, rng: &mut dyn RngCore) -> bool {
        let grace = self.grace_ms;
        self.keys.retain(|k| {
            k.retired_ms
                .is_none_or(|at| now_ms.saturating_sub(at) < grace)
        });
        let due = self.keys.front().is_none_or(|k| {
            now_ms.saturating_sub(k.created_ms) >= self.rotate_every_ms
                || k.tags.len() >= self.max_tags
        });
        if !due {
            return false;
        }
        self.rotate(now_ms, rng);
        true
    }

    /// Makes a new current key at once.
    pub(crate) fn rotate(&mut self, now_ms: u64, rng: &mut dyn RngCore) {
        let last = self.keys.front().map_or(0, |k| k.epoch);
        if let Some(k) = self.keys.front_mut() {
            k.retired_ms = Some(now_ms);
        }
        let epoch = (now_ms / 1000).max(last.saturating_add(1));
        self.keys.push_front(new_key(epoch, now_ms, rng));
        if self.grace_ms == 0 {
            self.keys.truncate(1);
        }
    }

    /// Peels one layer off `packet` with the key that opens it, after
    /// checking and recording its replay tag.
    pub(crate) fn peel(&mut self, packet: SphinxPacket) -> Result<Peeled, PeelError> {
        let max_tags = self.max_tags;
        for key in &mut self.keys {
            let expanded = packet.header.compute_expanded_shared_secret(&key.secret);
            if packet.header.ensure_header_integrity(&expanded).is_err() {
                continue;
            }
            let tag = *expanded.replay_tag();
            if key.tags.contains(&tag) {
                return Err(PeelError::Replayed);
            }
            if key.tags.len() >= max_tags {
                return Err(PeelError::EpochFull);
            }
            key.tags.insert(tag);
            let epoch = key.epoch;
            return packet
                .process_with_expanded_secret(&expanded)
                .map(|processed| Peeled { epoch, processed })
                .map_err(|e| PeelError::Malformed(e.to_string()));
        }
        Err(PeelError::UnknownKey)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use sphinx_packet::header::delays::Delay;
    use sphinx_packet::route::{Destination, DestinationAddressBytes, Node, NodeAddressBytes};
    use sphinx_packet::{ProcessedPacketData, SphinxPacketBuilder};

    use super::*;

    const MIN: u64 = 60_000;

    fn packet_to(keys: &OnionKeys) -> SphinxPacket {
        let (_, public) = keys.current();
        let node = Node::new(
            NodeAddressBytes::from_bytes([1; 32]),
            PublicKey::from(public),
        );
        let destination = Destination::new(DestinationAddressBytes::from_bytes([1; 32]), [0; 16]);
        SphinxPacketBuilder::new()
            .with_payload_size(256)
            .build_packet(b"hello", &[node], &destination, &[Delay::new_from_nanos(0)])
            .expect("packet")
    }

    fn reencode(p: &SphinxPacket) -> SphinxPacket {
        SphinxPacket::from_bytes(&p.to_bytes()).expect("decode")
    }

    #[test]
    fn a_packet_peels_once_and_its_replay_is_refused() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut keys = OnionKeys::new(10 * MIN, 60 * MIN, 10 * MIN, 100, &mut rng);
        let packet = packet_to(&keys);
        let copy = reencode(&packet);
        let peeled = keys.peel(packet).expect("peel");
        match peeled.processed.data {
            ProcessedPacketData::FinalHop { payload, .. } => {
                assert_eq!(payload.recover_plaintext().expect("plaintext"), b"hello");
            }
            ProcessedPacketData::ForwardHop { .. } => panic!("expected the final hop"),
        }
        assert_eq!(keys.peel(copy).err(), Some(PeelError::Replayed));
        assert_eq!(keys.tags_held(), 1);
    }

    #[test]
    fn the_previous_key_works_through_its_grace_window_only() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut keys = OnionKeys::new(0, 60 * MIN, 10 * MIN, 100, &mut rng);
        let (first_epoch, _) = keys.current();
        let old = packet_to(&keys);
        let old_late = reencode(&old);
        assert!(!keys.poll_rotate(59 * MIN, &mut rng), "rotated early");
        assert!(keys.poll_rotate(60 * MIN, &mut rng), "did not rotate");
        let (epoch, _) = keys.current();
        assert!(epoch > first_epoch);
        assert_eq!(keys.live_epochs(), vec![epoch, first_epoch]);
        // Within the grace window the old key still opens the old packet.
        assert_eq!(keys.peel(old).map(|p| p.epoch).ok(), Some(first_epoch));
        // After it, the old key is gone: a packet for it no longer opens.
        keys.poll_rotate(71 * MIN, &mut rng);
        assert_eq!(keys.live_epochs(), vec![epoch]);
        assert_eq!(keys.peel(old_late).err(), Some(PeelError::UnknownKey));
        // The new key works.
        assert_eq!(
            keys.peel(packet_to(&keys)).map(|p| p.epoch).ok(),
            Some(epoch)
        );
    }

    #[test]
    fn a_full_epoch_refuses_packets_and_forces_a_new_key() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut keys = OnionKeys::new(0, 60 * MIN, 10 * MIN, 2, &mut rng);
        let (first, _) = keys.current();
        keys.peel(packet_to(&keys)).expect("1");
        keys.peel(packet_to(&keys)).expect("2");
        assert_eq!(
            keys.peel(packet_to(&keys)).err(),
            Some(PeelError::EpochFull)
        );
        assert!(keys.poll_rotate(1, &mut rng), "a full epoch did not rotate");
        assert_ne!(keys.current().0, first);
        keys.peel(packet_to(&keys))
            .expect("new epoch takes packets");
        assert!(keys.tags_held() <= 4);
    }

    #[test]
    fn a_tampered_packet_opens_with_no_key() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut keys = OnionKeys::new(0, 60 * MIN, 10 * MIN, 100, &mut rng);
        let mut bytes = packet_to(&keys).to_bytes();
        bytes[40] ^= 1;
        let packet = SphinxPacket::from_bytes(&bytes).expect("decode");
        assert_eq!(keys.peel(packet).err(), Some(PeelError::UnknownKey));
        assert_eq!(keys.tags_held(), 0);
    }
}
