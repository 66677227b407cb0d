//! Building and peeling peercomm's Sphinx packets (sphinx-packet 0.8):
//! forward packets whose last Sphinx hop is the recipient itself, the SURBs
//! their answers come back through, and path checks that loop back to the
//! sender. Node addresses are the 32-byte Ed25519 keys behind PeerIds.

use libp2p::PeerId;
use peercomm_wire::{node_address, peer_of_node_address, ONION_PAYLOAD_BYTES};
use rand::RngCore;
use sphinx_packet::constants::IDENTIFIER_LENGTH;
use sphinx_packet::header::delays::Delay;
use sphinx_packet::payload::Payload;
use sphinx_packet::route::{Destination, DestinationAddressBytes, Node, NodeAddressBytes};
use sphinx_packet::surb::{SURBMaterial, SurbReplyRecovery, SURB};
use sphinx_packet::version::SINGLE_SEED_SURB_VERSION;
use sphinx_packet::{ProcessedPacket, ProcessedPacketData, SphinxPacket, SphinxPacketBuilder};
use x25519_sphinx::{PublicKey, StaticSecret};

use super::path::Relay;

/// One Sphinx hop: a node's address and its onion key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hop {
    pub(crate) node: [u8; 32],
    pub(crate) onion_key: [u8; 32],
}

impl From<&Relay> for Hop {
    fn from(r: &Relay) -> Self {
        Self {
            node: r.node,
            onion_key: r.onion_key,
        }
    }
}

/// Why a packet could not be built or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PacketError {
    /// The route is empty or longer than Sphinx allows.
    #[error("a route of {0} hops (1 to 5, the recipient included)")]
    BadRoute(usize),
    /// sphinx-packet refused the input.
    #[error("sphinx: {0}")]
    Sphinx(String),
    /// A next hop's address is not an Ed25519 key.
    #[error("the next hop's address is not a node key")]
    BadAddress,
    /// A reply arrived for a SURB we do not hold (expired, or not ours).
    #[error("an answer for an unknown reply block")]
    UnknownSurb,
}

fn sphinx(e: sphinx_packet::Error) -> PacketError {
    PacketError::Sphinx(e.to_string())
}

fn secret(rng: &mut dyn RngCore) -> StaticSecret {
    let mut bytes = [0u8; 32];
    rng.fill_bytes(&mut bytes);
    StaticSecret::from(bytes)
}

fn route_of(hops: &[Hop]) -> Result<(Vec<Node>, Destination, Vec<Delay>), PacketError> {
    if hops.is_empty() || hops.len() > sphinx_packet::constants::MAX_PATH_LENGTH {
        return Err(PacketError::BadRoute(hops.len()));
    }
    let route: Vec<Node> = hops
        .iter()
        .map(|h| {
            Node::new(
                NodeAddressBytes::from_bytes(h.node),
                PublicKey::from(h.onion_key),
            )
        })
        .collect();
    let last = hops[hops.len() - 1].node;
    let destination = Destination::new(
        DestinationAddressBytes::from_bytes(last),
        [0; IDENTIFIER_LENGTH],
    );
    // No mixing delays: peercomm relays forward at once (see PROTOCOL.md).
    let delays = vec![Delay::new_from_nanos(0); hops.len()];
    Ok((route, destination, delays))
}

/// A packet carrying `payload` along `hops`; the last hop is the one that
/// reads it. Returns the packet's bytes.
pub(crate) fn build(
    hops: &[Hop],
    payload: &[u8],
    rng: &mut dyn RngCore,
) -> Result<Vec<u8>, PacketError> {
    let (route, destination, delays) = route_of(hops)?;
    let initial = secret(rng);
    let packet = SphinxPacketBuilder::new()
        .with_payload_size(ONION_PAYLOAD_BYTES)
        .with_initial_secret(&initial)
        .build_packet(payload, &route, &destination, &delays)
        .map_err(sphinx)?;
    Ok(packet.to_bytes())
}

/// What we keep to read the answer that comes back through a SURB.
pub(crate) struct SurbKey {
    pub(crate) id: [u8; IDENTIFIER_LENGTH],
    recovery: SurbReplyRecovery,
}

/// A single-use reply block along `hops` (the last being us), and the key
/// to read what comes back through it.
pub(crate) fn surb(hops: &[Hop], rng: &mut dyn RngCore) -> Result<(Vec<u8>, SurbKey), PacketError> {
    let (route, mut destination, delays) = route_of(hops)?;
    let mut id = [0u8; IDENTIFIER_LENGTH];
    while id == [0; IDENTIFIER_LENGTH] {
        rng.fill_bytes(&mut id);
    }
    destination.identifier = id;
    let material = SURBMaterial::new(route, delays, destination, SINGLE_SEED_SURB_VERSION);
    let (surb, recovery) = SURB::new_recoverable(secret(rng), material).map_err(sphinx)?;
    Ok((surb.to_bytes(), SurbKey { id, recovery }))
}

/// A packet carrying `payload` through a SURB someone gave us: the packet's
/// bytes and the peer to send it to.
pub(crate) fn use_surb(surb: &[u8], payload: &[u8]) -> Result<(Vec<u8>, PeerId), PacketError> {
    let surb = SURB::from_bytes(surb).map_err(sphinx)?;
    let (packet, first) = surb
        .use_surb(payload, ONION_PAYLOAD_BYTES)
        .map_err(sphinx)?;
    let first = peer_of_node_address(first.as_bytes()).ok_or(PacketError::BadAddress)?;
    Ok((packet.to_bytes(), first))
}

/// A peeled packet.
pub(crate) enum Peeled {
    /// Pass `packet` on to `next`.
    Forward { next: PeerId, packet: Vec<u8> },
    /// We are the last hop: the (still sealed) payload and its SURB
    /// identifier (zero for packets that are not answers).
    Final {
        identifier: [u8; IDENTIFIER_LENGTH],
        payload: Payload,
    },
}

/// What a processed packet means for this node.
pub(crate) fn peeled(processed: ProcessedPacket) -> Result<Peeled, PacketError> {
    match processed.data {
        ProcessedPacketData::ForwardHop {
            next_hop_packet,
            next_hop_address,
            ..
        } => {
            let next =
                peer_of_node_address(next_hop_address.as_bytes()).ok_or(PacketError::BadAddress)?;
            Ok(Peeled::Forward {
                next,
                packet: next_hop_packet.to_bytes(),
            })
        }
        ProcessedPacketData::FinalHop {
            identifier,
            payload,
            ..
        } => Ok(Peeled::Final {
            identifier,
            payload,
        }),
    }
}

/// The plaintext of a packet that ended here: an answer through one of our
/// SURBs (found by its identifier in `surbs`) or a packet built for us.
pub(crate) fn open_final(
    identifier: [u8; IDENTIFIER_LENGTH],
    payload: Payload,
    surb_key: Option<&SurbKey>,
) -> Result<Vec<u8>, PacketError> {
    if identifier == [0; IDENTIFIER_LENGTH] {
        return payload.recover_plaintext().map_err(sphinx);
    }
    let key = surb_key
        .filter(|k| k.id == identifier)
        .ok_or(PacketError::UnknownSurb)?;
    key.recovery.recover_plaintext(payload).map_err(sphinx)
}

/// Parses packet bytes (already size-checked by the wire decoder).
pub(crate) fn parse(bytes: &[u8]) -> Result<SphinxPacket, PacketError> {
    SphinxPacket::from_bytes(bytes).map_err(sphinx)
}

/// The Sphinx hop of `peer` with onion key `onion_key`.
pub(crate) fn hop_of(peer: &PeerId, onion_key: [u8; 32]) -> Option<Hop> {
    Some(Hop {
        node: node_address(peer)?,
        onion_key,
    })
}

#[cfg(test)]
mod tests {
    use libp2p::identity::Keypair;
    use peercomm_wire::{ONION_PACKET_BYTES, SPHINX_HEADER_BYTES, SURB_BYTES};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::onion::keys::OnionKeys;

    struct TestNode {
        peer: PeerId,
        keys: OnionKeys,
    }

    impl TestNode {
        fn new(rng: &mut ChaCha8Rng) -> Self {
            Self {
                peer: Keypair::generate_ed25519().public().to_peer_id(),
                keys: OnionKeys::new(0, 3_600_000, 600_000, 1000, rng),
            }
        }

        fn hop(&self) -> Hop {
            hop_of(&self.peer, self.keys.current().1).expect("ed25519 peer")
        }

        fn peel(&mut self, bytes: &[u8]) -> Peeled {
            let packet = parse(bytes).expect("parse");
            peeled(self.keys.peel(packet).expect("peel").processed).expect("peeled")
        }
    }

    #[test]
    fn sizes_match_the_wire_constants() {
        assert_eq!(sphinx_packet::header::HEADER_SIZE, SPHINX_HEADER_BYTES);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let nodes: Vec<TestNode> = (0..5).map(|_| TestNode::new(&mut rng)).collect();
        let hops: Vec<Hop> = nodes.iter().map(TestNode::hop).collect();
        let packet = build(&hops, b"x", &mut rng).expect("build");
        assert_eq!(packet.len(), ONION_PACKET_BYTES);
        let (surb, _) = surb(&hops[..4], &mut rng).expect("surb");
        assert_eq!(surb.len(), SURB_BYTES);
        assert!(build(&[], b"x", &mut rng).is_err());
        let six: Vec<Hop> = (0..6).map(|_| hops[0]).collect();
        assert_eq!(build(&six, b"x", &mut rng), Err(PacketError::BadRoute(6)));
    }

    #[test]
    fn each_relay_sees_only_its_neighbours_and_the_answer_comes_back() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut sender = TestNode::new(&mut rng);
        let mut relays: Vec<TestNode> = (0..3).map(|_| TestNode::new(&mut rng)).collect();
        let mut recipient = TestNode::new(&mut rng);
        let forward: Vec<Hop> = relays
            .iter()
            .map(TestNode::hop)
            .chain([recipient.hop()])
            .collect();
        let back: Vec<Hop> = relays
            .iter()
            .rev()
            .map(TestNode::hop)
            .chain([sender.hop()])
            .collect();
        let (surb_bytes, key) = surb(&back, &mut rng).expect("surb");
        let mut bytes = build(&forward, b"sealed envelope", &mut rng).expect("build");
        let nexts: Vec<PeerId> = relays
            .iter()
            .skip(1)
            .map(|r| r.peer)
            .chain([recipient.peer])
            .collect();
        for (i, (relay, expected)) in relays.iter_mut().zip(&nexts).enumerate() {
            match relay.peel(&bytes) {
                Peeled::Forward { next, packet } => {
                    assert_eq!(next, *expected);
                    assert_eq!(packet.len(), ONION_PACKET_BYTES, "packets keep their size");
                    bytes = packet;
                }
                Peeled::Final { .. } => panic!("relay {i} was not meant to be last"),
            }
        }
        let Peeled::Final {
            identifier,
            payload,
        } = recipient.peel(&bytes)
        else {
            panic!("the recipient is the last hop");
        };
        assert_eq!(
            open_final(identifier, payload, None).expect("open"),
            b"sealed envelope"
        );

        // The answer goes back through the SURB: last relay first.
        let (mut bytes, first) = use_surb(&surb_bytes, b"receipt").expect("use surb");
        assert_eq!(first, relays[2].peer);
        for i in (0..3).rev() {
            match relays[i].peel(&bytes) {
                Peeled::Forward { next, packet } => {
                    let expected = if i == 0 {
                        sender.peer
                    } else {
                        relays[i - 1].peer
                    };
                    assert_eq!(next, expected);
                    bytes = packet;
                }
                Peeled::Final { .. } => panic!("relay {i} was not meant to be last"),
            }
        }
        let Peeled::Final {
            identifier,
            payload,
        } = sender.peel(&bytes)
        else {
            panic!("the sender is the last hop of its SURB");
        };
        assert_eq!(identifier, key.id);
        assert_eq!(
            open_final(identifier, payload, Some(&key)).expect("open"),
            b"receipt"
        );
    }

    #[test]
    fn an_answer_needs_the_matching_surb_key() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut relay = TestNode::new(&mut rng);
        let mut sender = TestNode::new(&mut rng);
        let hops = [relay.hop(), sender.hop()];
        let (surb_a, _key_a) = surb(&hops, &mut rng).expect("surb");
        let (_, key_b) = surb(&hops, &mut rng).expect("surb");
        let (bytes, _) = use_surb(&surb_a, b"answer").expect("use");
        let Peeled::Forward { packet, .. } = relay.peel(&bytes) else {
            panic!("forward");
        };
        let Peeled::Final {
            identifier,
            payload,
        } = sender.peel(&packet)
        else {
            panic!("final");
        };
        assert_eq!(
            open_final(identifier, payload, Some(&key_b)).err(),
            Some(PacketError::UnknownSurb)
        );
    }
}
