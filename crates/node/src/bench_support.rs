//! Hooks for the criterion benches in `benches/`: the onion packet code is
//! crate-private, so this wraps it. Not part of the library's API.

use rand::RngCore;

use crate::onion::keys::OnionKeys;
use crate::onion::packet::{self, Hop};

/// A path of onion hops, each with its own keys, to build packets along and
/// peel them at its first hop.
pub struct OnionPath {
    first: OnionKeys,
    hops: Vec<Hop>,
}

impl OnionPath {
    /// `hops` hops (the last one reads the payload) with fresh identities.
    pub fn new(hops: usize, rng: &mut dyn RngCore) -> Self {
        let mut path = Vec::with_capacity(hops);
        let mut first = None;
        for _ in 0..hops.max(1) {
            // Every peel records a replay tag: room for any bench run.
            let keys = OnionKeys::new(1_800_000_000_000, u64::MAX, 0, usize::MAX, rng);
            let peer = libp2p::identity::Keypair::generate_ed25519()
                .public()
                .to_peer_id();
            let (_, public) = keys.current();
            path.push(packet::hop_of(&peer, public).expect("an ed25519 peer id"));
            first.get_or_insert(keys);
        }
        Self {
            first: first.expect("at least one hop"),
            hops: path,
        }
    }

    /// A packet carrying `payload` along the path.
    pub fn build(&self, payload: &[u8], rng: &mut dyn RngCore) -> Vec<u8> {
        packet::build(&self.hops, payload, rng).expect("a packet fits the payload")
    }

    /// Parses `bytes` and peels the first hop's layer off; whether it opened.
    pub fn peel_first(&mut self, bytes: &[u8]) -> bool {
        packet::parse(bytes)
            .ok()
            .is_some_and(|p| self.first.peel(p).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn a_built_packet_opens_at_the_first_hop_once() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut path = OnionPath::new(3, &mut rng);
        let bytes = path.build(b"hello", &mut rng);
        assert!(path.peel_first(&bytes));
        // Its replay tag is recorded: the same packet does not open again.
        assert!(!path.peel_first(&bytes));
        assert!(!path.peel_first(&bytes[1..]));
    }
}
