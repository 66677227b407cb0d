//! Seeded keys for unit tests.

use libp2p_identity::Keypair;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// A test RNG seeded from `PEERCOMM_TEST_SEED` or the clock; the seed is printed so a
/// failure can be replayed.
pub(crate) fn seeded_rng() -> ChaCha20Rng {
    let seed = std::env::var("PEERCOMM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
    println!("PEERCOMM_TEST_SEED={seed}");
    ChaCha20Rng::seed_from_u64(seed)
}

/// An Ed25519 identity drawn from `rng`.
pub(crate) fn keypair(rng: &mut impl RngCore) -> Keypair {
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    Keypair::ed25519_from_bytes(secret).unwrap()
}
