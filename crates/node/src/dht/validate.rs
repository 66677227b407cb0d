//! The checks every DHT record passes before it is stored or believed.

use libp2p::kad::Record;
use peercomm_wire::{limits::MAX_RECORD_BYTES, PeerRecord, RecordError};

use super::peer_of_key;

/// Why a DHT record was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Not signed by the key behind the PeerId its key names.
    #[error("forged: not signed by the peer it names")]
    Forged,
    /// Older than the record already held for that peer.
    #[error("stale: sequence older than the record held")]
    Stale,
    /// Past its expiry.
    #[error("expired")]
    Expired,
    /// Over the record size limit.
    #[error("over the record size limit")]
    TooLarge,
    /// Not a peer record, or undecodable.
    #[error("malformed")]
    Malformed,
}

/// Checks a DHT record: key names a peer, size, signature by that peer's
/// key, expiry, and a sequence not older than `held_seq`.
pub(crate) fn validate(
    record: &Record,
    now_ms: u64,
    held_seq: Option<u64>,
) -> Result<PeerRecord, Rejection> {
    if record.value.len() > MAX_RECORD_BYTES {
        return Err(Rejection::TooLarge);
    }
    let Some(named) = peer_of_key(&record.key) else {
        return Err(Rejection::Malformed);
    };
    let peer_record = peercomm_wire::verify_record(&record.value, now_ms).map_err(|e| match e {
        RecordError::Expired => Rejection::Expired,
        RecordError::TooLarge { .. } => Rejection::TooLarge,
        RecordError::WrongSigner | RecordError::BadSignature | RecordError::BadKey(_) => {
            Rejection::Forged
        }
        _ => Rejection::Malformed,
    })?;
    if peer_record.peer_id != named {
        return Err(Rejection::Forged);
    }
    if held_seq.is_some_and(|held| peer_record.seq < held) {
        return Err(Rejection::Stale);
    }
    Ok(peer_record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dht::peer_key;
    use libp2p::identity::Keypair;

    const NOW: u64 = 1_800_000_000_000;

    fn record_of(keypair: &Keypair, seq: u64, expires_ms: u64) -> PeerRecord {
        PeerRecord {
            peer_id: keypair.public().to_peer_id(),
            addrs: vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()],
            box_key: [7; 32],
            protocol_version: 1,
            seq,
            expires_ms,
            roles: vec![],
            onion: None,
            dictionaries: vec![],
        }
    }

    #[test]
    fn a_valid_record_passes_and_each_defect_is_named() {
        let alice = Keypair::generate_ed25519();
        let mallory = Keypair::generate_ed25519();
        let good = record_of(&alice, 5, NOW + 60_000);
        let key = peer_key(&good.peer_id);
        let valid = Record::new(key.clone(), good.sign(&alice).unwrap());
        assert_eq!(validate(&valid, NOW, Some(5)).unwrap().seq, 5);

        // Mallory publishes her own valid record under Alice's key.
        let forged = Record::new(
            key.clone(),
            record_of(&mallory, 9, NOW + 60_000).sign(&mallory).unwrap(),
        );
        assert_eq!(validate(&forged, NOW, None), Err(Rejection::Forged));
        // A tampered byte breaks the signature.
        let mut tampered = valid.clone();
        let last = tampered.value.len() - 1;
        tampered.value[last] ^= 1;
        assert!(matches!(
            validate(&tampered, NOW, None),
            Err(Rejection::Forged | Rejection::Malformed)
        ));
        // Older than what we hold.
        assert_eq!(validate(&valid, NOW, Some(6)), Err(Rejection::Stale));
        // Expired.
        let old = Record::new(
            key.clone(),
            record_of(&alice, 6, NOW - 1).sign(&alice).unwrap(),
        );
        assert_eq!(validate(&old, NOW, None), Err(Rejection::Expired));
        // Oversized.
        let big = Record::new(key.clone(), vec![0; MAX_RECORD_BYTES + 1]);
        assert_eq!(validate(&big, NOW, None), Err(Rejection::TooLarge));
        // Not a peer record key.
        let other = Record::new(libp2p::kad::RecordKey::new(b"/x"), valid.value.clone());
        assert_eq!(validate(&other, NOW, None), Err(Rejection::Malformed));
    }
}
