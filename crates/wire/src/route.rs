//! `/peercomm/route/1.0.0`: a sealed envelope wrapped with what relays need to
//! move it on (destination, message id, TTL, hops, previous hop, origin), and
//! the answer that travels back along the same chain.

use libp2p_identity::PeerId;
use prost::Message;

use crate::error::ResponseError;
use crate::id::MessageId;
use crate::limits::{MAX_ENVELOPE_BYTES, MAX_FRAME_BYTES, MAX_PEER_ID_BYTES};
use crate::pb::{self, route_response, RouteRefusalCode};
use crate::response::{bounded_reason, check_reason, MsgResponse};

/// Largest TTL any node accepts on the wire; a larger one is cut to this.
pub const MAX_ROUTE_TTL: u32 = 32;

/// One hop of a routed message, decoded and size-checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routed {
    /// The final recipient.
    pub destination: PeerId,
    /// The envelope's message id.
    pub message_id: MessageId,
    /// The sender's attempt number: a retry is a new transmission.
    pub attempt: u32,
    /// Hops the message may still take.
    pub ttl: u32,
    /// Hops taken so far.
    pub hops: u32,
    /// The node that sent this hop.
    pub previous_hop: PeerId,
    /// The sender.
    pub origin: PeerId,
    /// The sealed envelope, unchanged from the sender.
    pub envelope: Vec<u8>,
}

impl Routed {
    /// Encodes the hop as a `Routed` protobuf.
    pub fn encode(&self) -> Vec<u8> {
        pb::Routed {
            destination: self.destination.to_bytes(),
            message_id: self.message_id.as_bytes().to_vec(),
            attempt: self.attempt,
            ttl: self.ttl,
            hops: self.hops,
            previous_hop: self.previous_hop.to_bytes(),
            origin: self.origin.to_bytes(),
            envelope: self.envelope.clone(),
        }
        .encode_to_vec()
    }

    /// Decodes a `Routed` protobuf, checking sizes before anything else; the
    /// TTL is cut to [`MAX_ROUTE_TTL`].
    pub fn decode(bytes: &[u8]) -> Result<Self, ResponseError> {
        if bytes.len() > MAX_FRAME_BYTES {
            return Err(ResponseError::TooLarge {
                what: "routed message",
                len: bytes.len(),
                max: MAX_FRAME_BYTES,
            });
        }
        let raw = pb::Routed::decode(bytes)
            .map_err(|e| ResponseError::Malformed(format!("routed message: {e}")))?;
        if raw.envelope.len() > MAX_ENVELOPE_BYTES {
            return Err(ResponseError::TooLarge {
                what: "routed envelope",
                len: raw.envelope.len(),
                max: MAX_ENVELOPE_BYTES,
            });
        }
        let peer = |what: &str, b: &[u8]| {
            if b.len() > MAX_PEER_ID_BYTES {
                return Err(ResponseError::Malformed(format!("{what}: too long")));
            }
            PeerId::from_bytes(b).map_err(|e| ResponseError::Malformed(format!("{what}: {e}")))
        };
        Ok(Self {
            destination: peer("destination", &raw.destination)?,
            message_id: MessageId::from_bytes(&raw.message_id)
                .map_err(|e| ResponseError::Malformed(format!("message id: {e}")))?,
            attempt: raw.attempt,
            ttl: raw.ttl.min(MAX_ROUTE_TTL),
            hops: raw.hops,
            previous_hop: peer("previous hop", &raw.previous_hop)?,
            origin: peer("origin", &raw.origin)?,
            envelope: raw.envelope,
        })
    }
}

/// What comes back for a routed message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteResponse {
    /// The destination's own answer, passed back unchanged by every relay.
    Answer {
        /// Its receipt or its reject.
        response: MsgResponse,
        /// Hops the message took to the destination.
        hops: u32,
    },
    /// A relay refused or could not forward the message.
    Refusal {
        /// Why; codes this version does not know decode as `RouteRefusalUnspecified`.
        code: RouteRefusalCode,
        /// Detail for logs, at most `MAX_REJECT_REASON_BYTES`.
        reason: String,
        /// Hops the message took to the refusing relay.
        hops: u32,
    },
}

impl RouteResponse {
    /// A refusal, with `reason` cut to `MAX_REJECT_REASON_BYTES` on a
    /// character boundary.
    pub fn refusal(code: RouteRefusalCode, reason: impl Into<String>, hops: u32) -> Self {
        Self::Refusal {
            code,
            reason: bounded_reason(reason.into()),
            hops,
        }
    }

    /// Hops the message took to whoever answered.
    pub fn hops(&self) -> u32 {
        match self {
            Self::Answer { hops, .. } | Self::Refusal { hops, .. } => *hops,
        }
    }

    /// Encodes the response as a `RouteResponse` protobuf.
    pub fn encode(&self) -> Vec<u8> {
        let (result, hops) = match self {
            Self::Answer { response, hops } => {
                (route_response::Result::Answer(response.to_pb()), *hops)
            }
            Self::Refusal { code, reason, hops } => (
                route_response::Result::Refusal(pb::RouteRefusal {
                    code: (*code).into(),
                    reason: reason.clone(),
                }),
                *hops,
            ),
        };
        pb::RouteResponse {
            result: Some(result),
            hops,
        }
        .encode_to_vec()
    }

    /// Decodes a `RouteResponse` protobuf, checking sizes.
    pub fn decode(bytes: &[u8]) -> Result<Self, ResponseError> {
        if bytes.len() > MAX_FRAME_BYTES {
            return Err(ResponseError::TooLarge {
                what: "route response",
                len: bytes.len(),
                max: MAX_FRAME_BYTES,
            });
        }
        let raw = pb::RouteResponse::decode(bytes)
            .map_err(|e| ResponseError::Malformed(format!("route response: {e}")))?;
        match raw.result {
            Some(route_response::Result::Answer(answer)) => Ok(Self::Answer {
                response: MsgResponse::from_pb(answer)?,
                hops: raw.hops,
            }),
            Some(route_response::Result::Refusal(refusal)) => {
                check_reason("refusal reason", &refusal.reason)?;
                Ok(Self::Refusal {
                    code: RouteRefusalCode::try_from(refusal.code)
                        .unwrap_or(RouteRefusalCode::RouteRefusalUnspecified),
                    reason: refusal.reason,
                    hops: raw.hops,
                })
            }
            None => Err(ResponseError::Malformed("route response: no result".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::MAX_REJECT_REASON_BYTES;
    use crate::pb::RejectCode;

    fn routed() -> Routed {
        Routed {
            destination: PeerId::random(),
            message_id: MessageId::from([7; 16]),
            attempt: 2,
            ttl: 8,
            hops: 1,
            previous_hop: PeerId::random(),
            origin: PeerId::random(),
            envelope: vec![1, 2, 3],
        }
    }

    #[test]
    fn routed_round_trips_and_ttl_is_capped() {
        let r = routed();
        assert_eq!(Routed::decode(&r.encode()).unwrap(), r);
        let big = Routed { ttl: 1000, ..r };
        assert_eq!(Routed::decode(&big.encode()).unwrap().ttl, MAX_ROUTE_TTL);
    }

    #[test]
    fn bad_routed_headers_are_errors() {
        assert!(Routed::decode(&[0xff; 4]).is_err());
        let mut raw = pb::Routed::decode(routed().encode().as_slice()).unwrap();
        raw.destination = vec![1, 2, 3];
        assert!(matches!(
            Routed::decode(&raw.encode_to_vec()),
            Err(ResponseError::Malformed(_))
        ));
        let mut raw = pb::Routed::decode(routed().encode().as_slice()).unwrap();
        raw.message_id = vec![1; 15];
        assert!(Routed::decode(&raw.encode_to_vec()).is_err());
        let mut raw = pb::Routed::decode(routed().encode().as_slice()).unwrap();
        raw.envelope = vec![0; MAX_ENVELOPE_BYTES + 1];
        assert!(matches!(
            Routed::decode(&raw.encode_to_vec()),
            Err(ResponseError::TooLarge { .. })
        ));
    }

    #[test]
    fn responses_round_trip_and_unknown_codes_decode() {
        let answer = RouteResponse::Answer {
            response: MsgResponse::reject(RejectCode::RejectExpired, "old"),
            hops: 3,
        };
        assert_eq!(RouteResponse::decode(&answer.encode()).unwrap(), answer);
        let refusal = RouteResponse::refusal(RouteRefusalCode::RouteRefusalTtlExpired, "ttl", 8);
        assert_eq!(RouteResponse::decode(&refusal.encode()).unwrap(), refusal);
        assert_eq!(refusal.hops(), 8);
        let future = pb::RouteResponse {
            result: Some(route_response::Result::Refusal(pb::RouteRefusal {
                code: 99,
                reason: String::new(),
            })),
            hops: 1,
        };
        assert!(matches!(
            RouteResponse::decode(&future.encode_to_vec()).unwrap(),
            RouteResponse::Refusal {
                code: RouteRefusalCode::RouteRefusalUnspecified,
                ..
            }
        ));
        assert!(RouteResponse::decode(&[]).is_err());
        let long =
            RouteResponse::refusal(RouteRefusalCode::RouteRefusalNoRoute, "é".repeat(300), 0);
        assert!(
            matches!(long, RouteResponse::Refusal { ref reason, .. } if reason.len() <= MAX_REJECT_REASON_BYTES)
        );
    }
}
