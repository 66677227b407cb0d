//! The X25519 "box" keypair envelopes are sealed to, published in the peer record.

use std::fmt;

use rand::{CryptoRng, RngCore};

use crate::limits::BOX_KEY_BYTES;

/// An X25519 keypair for HPKE. The secret is never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct BoxKeypair {
    secret: [u8; BOX_KEY_BYTES],
    public: [u8; BOX_KEY_BYTES],
}

impl BoxKeypair {
    /// Draws a fresh keypair from `rng`.
    pub fn generate<R: RngCore + CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut secret = [0u8; BOX_KEY_BYTES];
        rng.fill_bytes(&mut secret);
        Self::from_secret(secret)
    }

    /// Rebuilds the keypair from its stored secret.
    pub fn from_secret(secret: [u8; BOX_KEY_BYTES]) -> Self {
        // Implementation notes: X25519 clamps the scalar on use, so every 32-byte string is a
        // valid secret; hpke clamps the same way, so both sides agree on the public key.
        let public =
            x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(secret)).to_bytes();
        Self { secret, public }
    }

    /// The secret key bytes, to store (with care) and to open envelopes.
    pub fn secret(&self) -> &[u8; BOX_KEY_BYTES] {
        &self.secret
    }

    /// The public key bytes, to publish in the peer record.
    pub fn public(&self) -> &[u8; BOX_KEY_BYTES] {
        &self.public
    }
}

impl fmt::Debug for BoxKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoxKeypair")
            .field("public", &hex::encode(self.public))
            .finish_non_exhaustive()
    }
}

/// Adapts a `rand` 0.8 RNG to the `rand_core` 0.9 traits hpke 0.13 expects.
pub(crate) struct HpkeRng<'a, R: ?Sized>(pub(crate) &'a mut R);

impl<R: RngCore + CryptoRng + ?Sized> hpke::rand_core::RngCore for HpkeRng<'_, R> {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.0.fill_bytes(dst)
    }
}

impl<R: RngCore + CryptoRng + ?Sized> hpke::rand_core::CryptoRng for HpkeRng<'_, R> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_secret_matches_hpke_public_key() {
        use hpke::{kem::X25519HkdfSha256, Deserializable, Kem, Serializable};
        let kp = BoxKeypair::from_secret([7; 32]);
        let sk = <X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(kp.secret()).unwrap();
        let pk = X25519HkdfSha256::sk_to_pk(&sk);
        assert_eq!(pk.to_bytes().as_slice(), kp.public());
        assert!(!format!("{kp:?}").contains(&hex::encode([7u8; 32])));
    }
}
