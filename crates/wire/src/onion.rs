//! `/peercomm/onion/1.0.0`: fixed-size Sphinx packets, the hop-by-hop
//! acknowledgement, and what the final hop finds inside a packet's payload.
//!
//! The Sphinx layout itself (header, payload, SURB) is sphinx-packet 0.8's;
//! this module fixes the sizes peercomm uses and checks them before anything
//! is decoded.

use prost::Message;

use crate::error::ResponseError;
use crate::limits::MAX_ENVELOPE_BYTES;
use crate::pb::{self, onion_payload, OnionAckCode};
use crate::response::{bounded_reason, check_reason, MsgResponse};

/// Bytes of a Sphinx header (sphinx-packet 0.8, at most 5 hops): the
/// 32-byte group element, a 16-byte MAC and 5 × 60 bytes of routing
/// information.
pub const SPHINX_HEADER_BYTES: usize = 348;

/// Bytes of every Sphinx payload peercomm sends, whatever it carries.
pub const ONION_PAYLOAD_BYTES: usize = 2048;

/// Bytes of every Sphinx packet on `/peercomm/onion/1.0.0`.
pub const ONION_PACKET_BYTES: usize = SPHINX_HEADER_BYTES + ONION_PAYLOAD_BYTES;

/// Sphinx's own payload overhead (16 zero bytes and a padding marker).
const SPHINX_PAYLOAD_OVERHEAD_BYTES: usize = 17;

/// Most bytes of an encoded `OnionPayload` one packet carries.
pub const MAX_ONION_PAYLOAD_BYTES: usize = ONION_PAYLOAD_BYTES - SPHINX_PAYLOAD_OVERHEAD_BYTES;

/// Bytes of a SURB peercomm sends: a Sphinx header, the first hop's
/// 32-byte address and one 16-byte payload key seed.
pub const SURB_BYTES: usize = SPHINX_HEADER_BYTES + 32 + 16;

/// Length of a path check's nonce.
pub const PROBE_NONCE_BYTES: usize = 16;

/// Largest sealed envelope one onion packet carries, with its SURB: what
/// is left of the payload after the SURB and the protobuf framing.
pub const MAX_ONION_ENVELOPE_BYTES: usize = MAX_ONION_PAYLOAD_BYTES - SURB_BYTES - 12;

/// Largest message body (before compression) that is sure to fit one onion
/// packet once sealed: the envelope's own overhead is at most 320 bytes.
pub const MAX_ONION_BODY_BYTES: usize = MAX_ONION_ENVELOPE_BYTES - 320;

/// What the final hop of a packet finds in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OnionContent {
    /// A sealed envelope for this node, and the SURB to answer through.
    Message {
        /// The sealed, signed envelope.
        envelope: Vec<u8>,
        /// The reply block, [`SURB_BYTES`] long.
        surb: Vec<u8>,
    },
    /// The answer to one of our messages, back through our SURB.
    Answer(MsgResponse),
    /// One of our path checks, back from its loop.
    Probe([u8; PROBE_NONCE_BYTES]),
}

impl OnionContent {
    /// Encodes the content as an `OnionPayload`; an error if it would not
    /// fit one packet.
    pub fn encode(&self) -> Result<Vec<u8>, ResponseError> {
        let content = match self {
            Self::Message { envelope, surb } => onion_payload::Content::Message(pb::OnionMessage {
                envelope: envelope.clone(),
                surb: surb.clone(),
            }),
            Self::Answer(answer) => onion_payload::Content::Answer(answer.to_pb()),
            Self::Probe(nonce) => onion_payload::Content::Probe(nonce.to_vec()),
        };
        let bytes = pb::OnionPayload {
            content: Some(content),
        }
        .encode_to_vec();
        if bytes.len() > MAX_ONION_PAYLOAD_BYTES {
            return Err(ResponseError::TooLarge {
                what: "onion payload",
                len: bytes.len(),
                max: MAX_ONION_PAYLOAD_BYTES,
            });
        }
        Ok(bytes)
    }

    /// Decodes an `OnionPayload`, checking every size.
    pub fn decode(bytes: &[u8]) -> Result<Self, ResponseError> {
        if bytes.len() > MAX_ONION_PAYLOAD_BYTES {
            return Err(ResponseError::TooLarge {
                what: "onion payload",
                len: bytes.len(),
                max: MAX_ONION_PAYLOAD_BYTES,
            });
        }
        let raw = pb::OnionPayload::decode(bytes)
            .map_err(|e| ResponseError::Malformed(format!("onion payload: {e}")))?;
        match raw.content {
            Some(onion_payload::Content::Message(m)) => {
                if m.envelope.is_empty() || m.envelope.len() > MAX_ENVELOPE_BYTES {
                    return Err(ResponseError::Malformed(format!(
                        "onion envelope of {} bytes",
                        m.envelope.len()
                    )));
                }
                if m.surb.len() != SURB_BYTES {
                    return Err(ResponseError::Malformed(format!(
                        "surb must be {SURB_BYTES} bytes, got {}",
                        m.surb.len()
                    )));
                }
                Ok(Self::Message {
                    envelope: m.envelope,
                    surb: m.surb,
                })
            }
            Some(onion_payload::Content::Answer(answer)) => {
                Ok(Self::Answer(MsgResponse::decode(&answer.encode_to_vec())?))
            }
            Some(onion_payload::Content::Probe(nonce)) => {
                let nonce =
                    <[u8; PROBE_NONCE_BYTES]>::try_from(nonce.as_slice()).map_err(|_| {
                        ResponseError::Malformed(format!(
                            "probe nonce must be {PROBE_NONCE_BYTES} bytes, got {}",
                            nonce.len()
                        ))
                    })?;
                Ok(Self::Probe(nonce))
            }
            None => Err(ResponseError::Malformed(
                "onion payload without content".into(),
            )),
        }
    }
}

/// Encodes one hop's `OnionPacket`.
pub fn encode_onion_packet(packet: &[u8]) -> Vec<u8> {
    pb::OnionPacket {
        packet: packet.to_vec(),
    }
    .encode_to_vec()
}

/// Decodes an `OnionPacket`: the Sphinx packet, exactly
/// [`ONION_PACKET_BYTES`] long.
pub fn decode_onion_packet(bytes: &[u8]) -> Result<Vec<u8>, ResponseError> {
    // The packet, its tag and a length of at most 3 bytes.
    if bytes.len() > ONION_PACKET_BYTES + 4 {
        return Err(ResponseError::TooLarge {
            what: "onion packet",
            len: bytes.len(),
            max: ONION_PACKET_BYTES + 4,
        });
    }
    let raw = pb::OnionPacket::decode(bytes)
        .map_err(|e| ResponseError::Malformed(format!("onion packet: {e}")))?;
    if raw.packet.len() != ONION_PACKET_BYTES {
        return Err(ResponseError::Malformed(format!(
            "a Sphinx packet must be {ONION_PACKET_BYTES} bytes, got {}",
            raw.packet.len()
        )));
    }
    Ok(raw.packet)
}

/// A decoded `OnionAck`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnionAck {
    /// What happened; codes this version does not know decode as
    /// `OnionAckUnspecified`.
    pub code: OnionAckCode,
    /// With a failure: hops beyond the answering node where it happened.
    pub distance: u32,
    /// Detail for logs, at most 256 bytes.
    pub reason: String,
}

impl OnionAck {
    /// The packet was accepted (by every later hop too).
    pub fn accepted() -> Self {
        Self {
            code: OnionAckCode::OnionAckAccepted,
            distance: 0,
            reason: String::new(),
        }
    }

    /// A failure `distance` hops beyond the answering node; the reason is
    /// cut to 256 bytes.
    pub fn failed(code: OnionAckCode, distance: u32, reason: impl Into<String>) -> Self {
        Self {
            code,
            distance,
            reason: bounded_reason(reason.into()),
        }
    }

    /// The same failure as seen one hop further back.
    pub fn passed_back(mut self) -> Self {
        if self.code != OnionAckCode::OnionAckAccepted {
            self.distance = self.distance.saturating_add(1);
        }
        self
    }

    /// Encodes the ack.
    pub fn encode(&self) -> Vec<u8> {
        pb::OnionAck {
            code: self.code.into(),
            distance: self.distance,
            reason: self.reason.clone(),
        }
        .encode_to_vec()
    }

    /// Decodes an ack, checking sizes.
    pub fn decode(bytes: &[u8]) -> Result<Self, ResponseError> {
        if bytes.len() > 512 {
            return Err(ResponseError::TooLarge {
                what: "onion ack",
                len: bytes.len(),
                max: 512,
            });
        }
        let raw = pb::OnionAck::decode(bytes)
            .map_err(|e| ResponseError::Malformed(format!("onion ack: {e}")))?;
        check_reason("onion ack reason", &raw.reason)?;
        Ok(Self {
            code: OnionAckCode::try_from(raw.code).unwrap_or(OnionAckCode::OnionAckUnspecified),
            distance: raw.distance,
            reason: raw.reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::RejectCode;

    #[test]
    fn contents_round_trip_and_sizes_are_checked() {
        let message = OnionContent::Message {
            envelope: vec![1; MAX_ONION_ENVELOPE_BYTES],
            surb: vec![2; SURB_BYTES],
        };
        let bytes = message.encode().expect("a maximal message fits");
        assert!(bytes.len() <= MAX_ONION_PAYLOAD_BYTES);
        assert_eq!(OnionContent::decode(&bytes).expect("decode"), message);
        let too_big = OnionContent::Message {
            envelope: vec![1; MAX_ONION_ENVELOPE_BYTES + 8],
            surb: vec![2; SURB_BYTES],
        };
        assert!(too_big.encode().is_err());

        let answer = OnionContent::Answer(MsgResponse::reject(RejectCode::RejectExpired, "late"));
        assert_eq!(
            OnionContent::decode(&answer.encode().expect("encode")).expect("decode"),
            answer
        );
        let probe = OnionContent::Probe([9; PROBE_NONCE_BYTES]);
        assert_eq!(
            OnionContent::decode(&probe.encode().expect("encode")).expect("decode"),
            probe
        );
    }

    #[test]
    fn the_largest_onion_body_seals_into_the_largest_onion_envelope() {
        use crate::test_keys::{keypair, seeded_rng};
        use crate::{seal, BoxKeypair, Draft, Kind, MessageId, Priority};
        use rand::RngCore;

        let mut rng = seeded_rng();
        let (alice, bob) = (keypair(&mut rng), keypair(&mut rng));
        let bob_box = BoxKeypair::generate(&mut rng);
        // Random bytes do not compress: the worst case.
        let mut body = vec![0u8; MAX_ONION_BODY_BYTES];
        rng.fill_bytes(&mut body);
        let draft = Draft {
            id: MessageId::random(&mut rng),
            recipient: bob.public().to_peer_id(),
            created_ms: u64::MAX / 4,
            expires_ms: u64::MAX / 2,
            priority: Priority::Bulk,
            kind: Kind::Chat,
            body: &body,
        };
        let envelope = seal(&alice, &draft, bob_box.public(), &mut rng).expect("seal");
        assert!(
            envelope.len() <= MAX_ONION_ENVELOPE_BYTES,
            "{} > {MAX_ONION_ENVELOPE_BYTES}",
            envelope.len()
        );
    }

    #[test]
    fn bad_payloads_are_refused() {
        let short_surb = pb::OnionPayload {
            content: Some(onion_payload::Content::Message(pb::OnionMessage {
                envelope: vec![1; 10],
                surb: vec![2; SURB_BYTES - 1],
            })),
        };
        assert!(OnionContent::decode(&short_surb.encode_to_vec()).is_err());
        let long_nonce = pb::OnionPayload {
            content: Some(onion_payload::Content::Probe(vec![0; 17])),
        };
        assert!(OnionContent::decode(&long_nonce.encode_to_vec()).is_err());
        assert!(OnionContent::decode(&[]).is_err(), "no content");
        assert!(OnionContent::decode(&[0xff; 40]).is_err());
        assert!(OnionContent::decode(&vec![0; MAX_ONION_PAYLOAD_BYTES + 1]).is_err());
    }

    #[test]
    fn packets_must_have_the_fixed_size() {
        let packet = vec![5; ONION_PACKET_BYTES];
        assert_eq!(
            decode_onion_packet(&encode_onion_packet(&packet)).expect("decode"),
            packet
        );
        assert!(decode_onion_packet(&encode_onion_packet(&packet[1..])).is_err());
        assert!(decode_onion_packet(&vec![0; ONION_PACKET_BYTES + 10]).is_err());
        assert!(decode_onion_packet(&[0xff, 0xff]).is_err());
    }

    #[test]
    fn acks_count_the_distance_back_and_bound_the_reason() {
        let ack = OnionAck::failed(OnionAckCode::OnionAckUnreachable, 1, "x".repeat(1000));
        assert_eq!(ack.reason.len(), 256);
        let back = ack.clone().passed_back().passed_back();
        assert_eq!(back.distance, 3);
        assert_eq!(OnionAck::decode(&back.encode()).expect("decode"), back);
        assert_eq!(OnionAck::accepted().passed_back().distance, 0);
        let long = pb::OnionAck {
            code: 1,
            distance: 0,
            reason: "y".repeat(300),
        };
        assert!(OnionAck::decode(&long.encode_to_vec()).is_err());
        let unknown = pb::OnionAck {
            code: 99,
            distance: 0,
            reason: String::new(),
        };
        assert_eq!(
            OnionAck::decode(&unknown.encode_to_vec())
                .expect("decode")
                .code,
            OnionAckCode::OnionAckUnspecified
        );
    }
}
