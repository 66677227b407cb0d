//! Signed peer records: what a peer announces about itself (addresses, box key, roles,
//! onion key, body dictionaries) in the DHT and on `/peercomm/record/1.0.0`.

use libp2p_identity::{Keypair, PeerId, PublicKey};
use multiaddr::Multiaddr;
use prost::Message;

use crate::error::RecordError;
use crate::identity::{parse_peer_id, signing_input};
use crate::limits::{
    BOX_KEY_BYTES, MAX_ADDR_BYTES, MAX_RECORD_ADDRS, MAX_RECORD_BYTES, MAX_RECORD_DICTIONARIES,
    MAX_ROLES, MAX_ROLE_BYTES, RECORD_SIG_DOMAIN, SIGNATURE_BYTES,
};
use crate::pb;

/// A peer record, checked or ready to sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRecord {
    /// The peer described; only its own key may sign the record.
    pub peer_id: PeerId,
    /// Where the peer can be reached, relay circuit addresses included.
    pub addrs: Vec<Multiaddr>,
    /// X25519 public key envelopes to this peer are sealed to.
    pub box_key: [u8; BOX_KEY_BYTES],
    /// Highest envelope protocol version the peer speaks.
    pub protocol_version: u32,
    /// Sequence number; higher replaces lower.
    pub seq: u64,
    /// Expiry, Unix milliseconds.
    pub expires_ms: u64,
    /// Services offered, for example "relay" or "mailbox".
    pub roles: Vec<String>,
    /// The onion key Sphinx packets to this peer are built for, if it has one.
    pub onion: Option<OnionKey>,
    /// zstd dictionary ids of the body dictionaries the peer can decompress (a node
    /// announces `SUPPORTED_DICTIONARIES`); at most `MAX_RECORD_DICTIONARIES`, none 0.
    /// Empty in records of peers that predate dictionaries.
    pub dictionaries: Vec<u32>,
}

/// A peer's X25519 onion key and its epoch (a new key has a higher epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OnionKey {
    /// The X25519 public key.
    pub key: [u8; BOX_KEY_BYTES],
    /// Its epoch.
    pub epoch: u64,
}

impl PeerRecord {
    /// Signs the record with `keypair`, which must be the Ed25519 key of `peer_id`, and
    /// returns the encoded `SignedPeerRecord`.
    pub fn sign(&self, keypair: &Keypair) -> Result<Vec<u8>, RecordError> {
        let public = keypair.public();
        if public.to_peer_id() != self.peer_id {
            return Err(RecordError::WrongSigner);
        }
        if public.clone().try_into_ed25519().is_err() {
            return Err(RecordError::BadKey("the keypair is not Ed25519".into()));
        }
        check_count("addrs", self.addrs.len(), MAX_RECORD_ADDRS)?;
        for addr in &self.addrs {
            check_count("addr bytes", addr.as_ref().len(), MAX_ADDR_BYTES)?;
        }
        check_roles(self.roles.iter().map(String::as_str))?;
        check_dictionaries(&self.dictionaries)?;

        let record = pb::PeerRecord {
            protocol_version: self.protocol_version,
            peer_id: self.peer_id.to_bytes(),
            addrs: self.addrs.iter().map(|a| a.to_vec()).collect(),
            box_key: self.box_key.to_vec(),
            seq: self.seq,
            expires_ms: self.expires_ms,
            roles: self.roles.clone(),
            onion_key: self.onion.map(|o| o.key.to_vec()).unwrap_or_default(),
            onion_epoch: self.onion.map_or(0, |o| o.epoch),
            dictionaries: self.dictionaries.clone(),
        }
        .encode_to_vec();
        let signature = keypair
            .sign(&signing_input(&[RECORD_SIG_DOMAIN, &record]))
            .map_err(|e| RecordError::Sign(e.to_string()))?;
        let signed = pb::SignedPeerRecord {
            public_key: public.encode_protobuf(),
            record,
            signature,
        }
        .encode_to_vec();
        check_count("record", signed.len(), MAX_RECORD_BYTES)?;
        Ok(signed)
    }
}

/// Decodes and checks an encoded `SignedPeerRecord` at `now_ms`: size, key, that the key
/// is the record's peer, signature, expiry and every limit. Whether its `seq` is newer than
/// a record already held is for the caller to decide.
pub fn verify_record(bytes: &[u8], now_ms: u64) -> Result<PeerRecord, RecordError> {
    check_count("record", bytes.len(), MAX_RECORD_BYTES)?;
    let signed = pb::SignedPeerRecord::decode(bytes)
        .map_err(|e| RecordError::Malformed(format!("signed record: {e}")))?;
    if signed.signature.len() != SIGNATURE_BYTES {
        return Err(RecordError::Malformed(format!(
            "signature must be {SIGNATURE_BYTES} bytes, got {}",
            signed.signature.len()
        )));
    }
    let public = PublicKey::try_decode_protobuf(&signed.public_key)
        .map_err(|e| RecordError::BadKey(e.to_string()))?;
    let key = public
        .clone()
        .try_into_ed25519()
        .map_err(|_| RecordError::BadKey("not an Ed25519 key".into()))?;
    let record = pb::PeerRecord::decode(signed.record.as_slice())
        .map_err(|e| RecordError::Malformed(format!("record: {e}")))?;
    let peer_id = parse_peer_id(&record.peer_id, "record").map_err(RecordError::Malformed)?;
    if public.to_peer_id() != peer_id {
        return Err(RecordError::WrongSigner);
    }
    if !key.verify(
        &signing_input(&[RECORD_SIG_DOMAIN, &signed.record]),
        &signed.signature,
    ) {
        return Err(RecordError::BadSignature);
    }
    if record.expires_ms <= now_ms {
        return Err(RecordError::Expired);
    }
    let box_key = <[u8; BOX_KEY_BYTES]>::try_from(record.box_key.as_slice()).map_err(|_| {
        RecordError::Malformed(format!(
            "box_key must be {BOX_KEY_BYTES} bytes, got {}",
            record.box_key.len()
        ))
    })?;
    check_count("addrs", record.addrs.len(), MAX_RECORD_ADDRS)?;
    check_roles(record.roles.iter().map(String::as_str))?;
    check_dictionaries(&record.dictionaries)?;
    let onion = match record.onion_key.len() {
        0 => None,
        _ => Some(OnionKey {
            key: <[u8; BOX_KEY_BYTES]>::try_from(record.onion_key.as_slice()).map_err(|_| {
                RecordError::Malformed(format!(
                    "onion_key must be empty or {BOX_KEY_BYTES} bytes, got {}",
                    record.onion_key.len()
                ))
            })?,
            epoch: record.onion_epoch,
        }),
    };
    let addrs = record
        .addrs
        .into_iter()
        .map(|raw| {
            check_count("addr bytes", raw.len(), MAX_ADDR_BYTES)?;
            Multiaddr::try_from(raw).map_err(|e| RecordError::InvalidAddr(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PeerRecord {
        peer_id,
        addrs,
        box_key,
        protocol_version: record.protocol_version,
        seq: record.seq,
        expires_ms: record.expires_ms,
        roles: record.roles,
        onion,
        dictionaries: record.dictionaries,
    })
}

fn check_count(what: &'static str, len: usize, max: usize) -> Result<(), RecordError> {
    if len > max {
        Err(RecordError::TooLarge { what, len, max })
    } else {
        Ok(())
    }
}

fn check_dictionaries(ids: &[u32]) -> Result<(), RecordError> {
    check_count("dictionaries", ids.len(), MAX_RECORD_DICTIONARIES)?;
    if ids.contains(&0) {
        return Err(RecordError::Malformed("dictionary id 0".into()));
    }
    Ok(())
}

fn check_roles<'a>(roles: impl ExactSizeIterator<Item = &'a str>) -> Result<(), RecordError> {
    check_count("roles", roles.len(), MAX_ROLES)?;
    for role in roles {
        check_count("role bytes", role.len(), MAX_ROLE_BYTES)?;
        if role.is_empty() {
            return Err(RecordError::Malformed("empty role".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_keys::{keypair, seeded_rng};
    use crate::BoxKeypair;

    fn record_for(keypair: &Keypair, box_key: [u8; 32]) -> PeerRecord {
        PeerRecord {
            peer_id: keypair.public().to_peer_id(),
            addrs: vec![
                "/ip4/192.0.2.1/tcp/4001".parse().unwrap(),
                "/ip4/192.0.2.1/udp/4001/quic-v1".parse().unwrap(),
            ],
            box_key,
            protocol_version: 1,
            seq: 3,
            expires_ms: 10_000,
            roles: vec!["relay".into(), "mailbox".into()],
            onion: Some(OnionKey {
                key: [7; 32],
                epoch: 42,
            }),
            dictionaries: vec![crate::CHAT_DICT_V1_ID, 99_999],
        }
    }

    #[test]
    fn sign_and_verify_roundtrip() {
        let mut rng = seeded_rng();
        let kp = keypair(&mut rng);
        let record = record_for(&kp, *BoxKeypair::generate(&mut rng).public());
        let bytes = record.sign(&kp).unwrap();
        assert_eq!(verify_record(&bytes, 9_999).unwrap(), record);
    }

    #[test]
    fn refuses_wrong_signer_and_stale_records() {
        let mut rng = seeded_rng();
        let (kp, other) = (keypair(&mut rng), keypair(&mut rng));
        let record = record_for(&kp, [1; 32]);
        assert!(matches!(record.sign(&other), Err(RecordError::WrongSigner)));

        let bytes = record.sign(&kp).unwrap();
        assert!(matches!(
            verify_record(&bytes, 10_000),
            Err(RecordError::Expired)
        ));

        // Another peer re-signs the record under its own key: the key is not the record's peer.
        let mut signed = pb::SignedPeerRecord::decode(bytes.as_slice()).unwrap();
        signed.public_key = other.public().encode_protobuf();
        signed.signature = other
            .sign(&signing_input(&[RECORD_SIG_DOMAIN, &signed.record]))
            .unwrap();
        assert!(matches!(
            verify_record(&signed.encode_to_vec(), 0),
            Err(RecordError::WrongSigner)
        ));
    }

    #[test]
    fn refuses_tampering_and_bad_fields() {
        let mut rng = seeded_rng();
        let kp = keypair(&mut rng);
        let bytes = record_for(&kp, [1; 32]).sign(&kp).unwrap();
        let signed = pb::SignedPeerRecord::decode(bytes.as_slice()).unwrap();

        let resign = |record: pb::PeerRecord| {
            let record = record.encode_to_vec();
            let signature = kp
                .sign(&signing_input(&[RECORD_SIG_DOMAIN, &record]))
                .unwrap();
            pb::SignedPeerRecord {
                public_key: signed.public_key.clone(),
                record,
                signature,
            }
            .encode_to_vec()
        };
        let base = pb::PeerRecord::decode(signed.record.as_slice()).unwrap();

        // A changed seq without a new signature.
        let mut tampered = signed.clone();
        let mut r = base.clone();
        r.seq += 1;
        tampered.record = r.encode_to_vec();
        assert!(matches!(
            verify_record(&tampered.encode_to_vec(), 0),
            Err(RecordError::BadSignature)
        ));

        let mut r = base.clone();
        r.addrs.push(vec![0xff, 0xff, 0xff]);
        assert!(matches!(
            verify_record(&resign(r), 0),
            Err(RecordError::InvalidAddr(_))
        ));

        let mut r = base.clone();
        r.addrs = vec![base.addrs[0].clone(); MAX_RECORD_ADDRS + 1];
        assert!(matches!(
            verify_record(&resign(r), 0),
            Err(RecordError::TooLarge { what: "addrs", .. })
        ));

        let mut r = base.clone();
        r.roles = vec!["relay".into(); MAX_ROLES + 1];
        assert!(matches!(
            verify_record(&resign(r), 0),
            Err(RecordError::TooLarge { what: "roles", .. })
        ));

        let mut r = base.clone();
        r.onion_key = vec![1; 33];
        assert!(matches!(
            verify_record(&resign(r), 0),
            Err(RecordError::Malformed(_))
        ));

        let mut r = base.clone();
        r.onion_key = Vec::new();
        assert_eq!(verify_record(&resign(r), 0).unwrap().onion, None);

        let mut r = base.clone();
        r.box_key = vec![1; 31];
        assert!(matches!(
            verify_record(&resign(r), 0),
            Err(RecordError::Malformed(_))
        ));

        let mut bad_key = signed.clone();
        bad_key.public_key = vec![1, 2, 3];
        assert!(matches!(
            verify_record(&bad_key.encode_to_vec(), 0),
            Err(RecordError::BadKey(_))
        ));

        assert!(matches!(
            verify_record(&bytes[..bytes.len() - 3], 0),
            Err(RecordError::Malformed(_))
        ));
        assert!(matches!(
            verify_record(&vec![0; MAX_RECORD_BYTES + 1], 0),
            Err(RecordError::TooLarge { what: "record", .. })
        ));
    }

    /// `PeerRecord` as it was before field 10 (`dictionaries`).
    #[derive(Clone, PartialEq, prost::Message)]
    struct OldPeerRecord {
        #[prost(uint32, tag = "1")]
        protocol_version: u32,
        #[prost(bytes = "vec", tag = "2")]
        peer_id: Vec<u8>,
        #[prost(bytes = "vec", repeated, tag = "3")]
        addrs: Vec<Vec<u8>>,
        #[prost(bytes = "vec", tag = "4")]
        box_key: Vec<u8>,
        #[prost(uint64, tag = "5")]
        seq: u64,
        #[prost(uint64, tag = "6")]
        expires_ms: u64,
        #[prost(string, repeated, tag = "7")]
        roles: Vec<String>,
        #[prost(bytes = "vec", tag = "8")]
        onion_key: Vec<u8>,
        #[prost(uint64, tag = "9")]
        onion_epoch: u64,
    }

    #[test]
    fn dictionaries_are_signed_bounded_and_optional() {
        let mut rng = seeded_rng();
        let kp = keypair(&mut rng);
        let record = record_for(&kp, [1; 32]);
        let bytes = record.sign(&kp).unwrap();
        assert_eq!(
            verify_record(&bytes, 0).unwrap().dictionaries,
            [crate::CHAT_DICT_V1_ID, 99_999]
        );

        // Covered by the signature: a relay cannot add or strip dictionaries.
        let signed = pb::SignedPeerRecord::decode(bytes.as_slice()).unwrap();
        let base = pb::PeerRecord::decode(signed.record.as_slice()).unwrap();
        for dictionaries in [vec![], vec![crate::CHAT_DICT_V1_ID], vec![1, 2]] {
            let mut tampered = signed.clone();
            tampered.record = pb::PeerRecord {
                dictionaries,
                ..base.clone()
            }
            .encode_to_vec();
            assert!(matches!(
                verify_record(&tampered.encode_to_vec(), 0),
                Err(RecordError::BadSignature)
            ));
        }

        let resign = |record: pb::PeerRecord| {
            let record = record.encode_to_vec();
            let signature = kp
                .sign(&signing_input(&[RECORD_SIG_DOMAIN, &record]))
                .unwrap();
            pb::SignedPeerRecord {
                public_key: signed.public_key.clone(),
                record,
                signature,
            }
            .encode_to_vec()
        };
        // A record signed by a peer that predates the field decodes with none.
        let old = OldPeerRecord {
            protocol_version: base.protocol_version,
            peer_id: base.peer_id.clone(),
            addrs: base.addrs.clone(),
            box_key: base.box_key.clone(),
            seq: base.seq,
            expires_ms: base.expires_ms,
            roles: base.roles.clone(),
            onion_key: base.onion_key.clone(),
            onion_epoch: base.onion_epoch,
        }
        .encode_to_vec();
        let old = pb::PeerRecord::decode(old.as_slice()).unwrap();
        assert_eq!(old.dictionaries, Vec::<u32>::new());
        let verified = verify_record(&resign(old), 0).unwrap();
        assert_eq!(verified.dictionaries, Vec::<u32>::new());
        assert_eq!(verified.seq, record.seq);

        let too_many = pb::PeerRecord {
            dictionaries: (1..=MAX_RECORD_DICTIONARIES as u32 + 1).collect(),
            ..base.clone()
        };
        assert!(matches!(
            verify_record(&resign(too_many), 0),
            Err(RecordError::TooLarge {
                what: "dictionaries",
                ..
            })
        ));
        let zero = pb::PeerRecord {
            dictionaries: vec![0],
            ..base.clone()
        };
        assert!(matches!(
            verify_record(&resign(zero), 0),
            Err(RecordError::Malformed(_))
        ));

        let mut record = record_for(&kp, [1; 32]);
        record.dictionaries = vec![7; MAX_RECORD_DICTIONARIES + 1];
        assert!(matches!(
            record.sign(&kp),
            Err(RecordError::TooLarge { .. })
        ));
        record.dictionaries = vec![0];
        assert!(matches!(record.sign(&kp), Err(RecordError::Malformed(_))));
    }

    #[test]
    fn sign_refuses_oversized_records() {
        let mut rng = seeded_rng();
        let kp = keypair(&mut rng);
        let mut record = record_for(&kp, [1; 32]);
        record.roles = vec!["x".repeat(MAX_ROLE_BYTES + 1)];
        assert!(matches!(
            record.sign(&kp),
            Err(RecordError::TooLarge { .. })
        ));
        let mut record = record_for(&kp, [1; 32]);
        record.addrs = vec![record.addrs[0].clone(); MAX_RECORD_ADDRS + 1];
        assert!(matches!(
            record.sign(&kp),
            Err(RecordError::TooLarge { .. })
        ));
    }
}
