//! Reading and checking PeerIds from the wire. peercomm requires PeerIds that inline an
//! Ed25519 key, so a signature can be checked with nothing but the signer's PeerId.

use libp2p_identity::{ed25519, PeerId, PublicKey};

use crate::limits::MAX_PEER_ID_BYTES;

/// Multihash code of the identity "hash" (the digest is the input itself).
const IDENTITY_MULTIHASH_CODE: u64 = 0x00;

/// Parses a binary PeerId, refusing oversized and non-canonical encodings.
pub(crate) fn parse_peer_id(bytes: &[u8], what: &str) -> Result<PeerId, String> {
    if bytes.len() > MAX_PEER_ID_BYTES {
        return Err(format!(
            "{what} PeerId of {} bytes exceeds {MAX_PEER_ID_BYTES}",
            bytes.len()
        ));
    }
    let peer = PeerId::from_bytes(bytes).map_err(|e| format!("{what} PeerId: {e}"))?;
    // The bytes are signed and compared; accept only the one encoding we would produce.
    if peer.to_bytes() != bytes {
        return Err(format!("{what} PeerId is not canonically encoded"));
    }
    Ok(peer)
}

/// The Ed25519 key a PeerId inlines. Hashed (SHA-256) PeerIds and other key types fail.
pub(crate) fn inline_ed25519_key(peer: &PeerId) -> Result<ed25519::PublicKey, String> {
    let multihash = peer.as_ref();
    if multihash.code() != IDENTITY_MULTIHASH_CODE {
        return Err(format!(
            "PeerId {peer} does not inline its key (multihash code {:#x})",
            multihash.code()
        ));
    }
    let key = PublicKey::try_decode_protobuf(multihash.digest())
        .map_err(|e| format!("PeerId {peer} key: {e}"))?;
    key.try_into_ed25519()
        .map_err(|_| format!("PeerId {peer} key is not Ed25519"))
}

/// The 32-byte Ed25519 key behind a PeerId: the node's address in Sphinx
/// packets. `None` for PeerIds that do not inline an Ed25519 key.
pub fn node_address(peer: &PeerId) -> Option<[u8; 32]> {
    inline_ed25519_key(peer).ok().map(|k| k.to_bytes())
}

/// The PeerId of a Sphinx node address (an Ed25519 key); `None` if the
/// bytes are not a valid key.
pub fn peer_of_node_address(address: &[u8; 32]) -> Option<PeerId> {
    let key = ed25519::PublicKey::try_from_bytes(address).ok()?;
    Some(PublicKey::from(key).to_peer_id())
}

/// Concatenates the parts of a signature input.
pub(crate) fn signing_input(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        out.extend_from_slice(part);
    }
    out
}

/// Big-endian `u32` length of a field inside a signature input.
pub(crate) fn len_be(bytes: &[u8]) -> [u8; 4] {
    // Every signed field is bounded far below 4 GiB by the limits; saturate anyway.
    u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_keys::{keypair, seeded_rng};

    #[test]
    fn ed25519_peer_ids_have_the_documented_layout() {
        let kp = keypair(&mut seeded_rng());
        let bytes = kp.public().to_peer_id().to_bytes();
        // docs/PROTOCOL.md section 1: identity multihash of the libp2p protobuf public key.
        assert_eq!(bytes.len(), 38);
        assert_eq!(bytes[..6], [0x00, 0x24, 0x08, 0x01, 0x12, 0x20]);
        let peer = parse_peer_id(&bytes, "test").unwrap();
        let key = inline_ed25519_key(&peer).unwrap();
        assert_eq!(bytes[6..], key.to_bytes());
    }

    #[test]
    fn node_addresses_round_trip() {
        let peer = keypair(&mut seeded_rng()).public().to_peer_id();
        let address = node_address(&peer).unwrap();
        assert_eq!(peer_of_node_address(&address), Some(peer));
        assert_eq!(node_address(&PeerId::random()), None);
    }

    #[test]
    fn non_canonical_and_oversized_ids_are_refused() {
        assert!(parse_peer_id(&[0; MAX_PEER_ID_BYTES + 1], "test").is_err());
        let kp = keypair(&mut seeded_rng());
        let mut bytes = kp.public().to_peer_id().to_bytes();
        bytes.push(0);
        assert!(parse_peer_id(&bytes, "test").is_err());
    }

    #[test]
    fn signing_input_layout() {
        assert_eq!(len_be(&[0; 300]), [0, 0, 1, 44]);
        assert_eq!(signing_input(&[b"ab", b"", b"c"]), b"abc");
    }
}
