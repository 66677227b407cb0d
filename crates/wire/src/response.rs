//! The listener's answer on `/peercomm/msg/1.0.0`: a signed receipt or a rejection.

use prost::Message;

use crate::error::ResponseError;
use crate::limits::{MAX_FRAME_BYTES, MAX_RECEIPT_BYTES, MAX_REJECT_REASON_BYTES};
use crate::pb::{self, msg_response, RejectCode};

/// A decoded `MsgResponse`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MsgResponse {
    /// The message was stored (or already had been); check it with `verify_signed_receipt`.
    Receipt(pb::SignedReceipt),
    /// The message was refused.
    Reject {
        /// Why; codes this version does not know decode as `RejectUnspecified`.
        code: RejectCode,
        /// Detail for logs, at most `MAX_REJECT_REASON_BYTES`.
        reason: String,
    },
}

/// `reason` cut to `MAX_REJECT_REASON_BYTES` on a character boundary.
pub(crate) fn bounded_reason(mut reason: String) -> String {
    if reason.len() > MAX_REJECT_REASON_BYTES {
        let mut end = MAX_REJECT_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

/// A decoded reason longer than `MAX_REJECT_REASON_BYTES` is an error.
pub(crate) fn check_reason(what: &'static str, reason: &str) -> Result<(), ResponseError> {
    if reason.len() > MAX_REJECT_REASON_BYTES {
        return Err(ResponseError::TooLarge {
            what,
            len: reason.len(),
            max: MAX_REJECT_REASON_BYTES,
        });
    }
    Ok(())
}

impl MsgResponse {
    /// A rejection, with `reason` cut to `MAX_REJECT_REASON_BYTES` on a character boundary.
    pub fn reject(code: RejectCode, reason: impl Into<String>) -> Self {
        Self::Reject {
            code,
            reason: bounded_reason(reason.into()),
        }
    }

    /// Encodes the response as a `MsgResponse` protobuf.
    pub fn encode(&self) -> Vec<u8> {
        self.to_pb().encode_to_vec()
    }

    /// The response as its protobuf message.
    pub fn to_pb(&self) -> pb::MsgResponse {
        let result = match self {
            Self::Receipt(receipt) => msg_response::Result::Receipt(receipt.clone()),
            Self::Reject { code, reason } => msg_response::Result::Reject(pb::Reject {
                code: (*code).into(),
                reason: reason.clone(),
            }),
        };
        pb::MsgResponse {
            result: Some(result),
        }
    }

    /// Decodes a `MsgResponse` protobuf, checking sizes.
    pub fn decode(bytes: &[u8]) -> Result<Self, ResponseError> {
        if bytes.len() > MAX_FRAME_BYTES {
            return Err(ResponseError::TooLarge {
                what: "response",
                len: bytes.len(),
                max: MAX_FRAME_BYTES,
            });
        }
        let response = pb::MsgResponse::decode(bytes)
            .map_err(|e| ResponseError::Malformed(format!("response: {e}")))?;
        Self::from_pb(response)
    }

    /// Checks a decoded `MsgResponse` protobuf (sizes, a result set).
    pub fn from_pb(response: pb::MsgResponse) -> Result<Self, ResponseError> {
        match response.result {
            Some(msg_response::Result::Receipt(receipt)) => {
                let len = receipt.encoded_len();
                if len > MAX_RECEIPT_BYTES {
                    return Err(ResponseError::TooLarge {
                        what: "receipt",
                        len,
                        max: MAX_RECEIPT_BYTES,
                    });
                }
                Ok(Self::Receipt(receipt))
            }
            Some(msg_response::Result::Reject(reject)) => {
                check_reason("reject reason", &reject.reason)?;
                // Implementation notes: a newer peer may refuse for a reason we do not know;
                // the rejection itself must still get through.
                let code =
                    RejectCode::try_from(reject.code).unwrap_or(RejectCode::RejectUnspecified);
                Ok(Self::Reject {
                    code,
                    reason: reject.reason,
                })
            }
            None => Err(ResponseError::Malformed("no result set".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_unknown_codes() {
        let reject = MsgResponse::reject(RejectCode::RejectExpired, "too old");
        assert_eq!(MsgResponse::decode(&reject.encode()).unwrap(), reject);

        let receipt = MsgResponse::Receipt(pb::SignedReceipt {
            receipt: vec![1, 2, 3],
            signature: vec![4; 64],
        });
        assert_eq!(MsgResponse::decode(&receipt.encode()).unwrap(), receipt);

        let future = pb::MsgResponse {
            result: Some(msg_response::Result::Reject(pb::Reject {
                code: 99,
                reason: String::new(),
            })),
        };
        assert_eq!(
            MsgResponse::decode(&future.encode_to_vec()).unwrap(),
            MsgResponse::Reject {
                code: RejectCode::RejectUnspecified,
                reason: String::new()
            }
        );
        assert!(matches!(
            MsgResponse::decode(&[]),
            Err(ResponseError::Malformed(_))
        ));
    }

    #[test]
    fn reasons_are_bounded() {
        let long = "é".repeat(MAX_REJECT_REASON_BYTES);
        let MsgResponse::Reject { reason, .. } =
            MsgResponse::reject(RejectCode::RejectInternal, long)
        else {
            panic!("not a reject");
        };
        assert!(reason.len() <= MAX_REJECT_REASON_BYTES);
        let raw = pb::MsgResponse {
            result: Some(msg_response::Result::Reject(pb::Reject {
                code: 1,
                reason: "x".repeat(MAX_REJECT_REASON_BYTES + 1),
            })),
        };
        assert!(matches!(
            MsgResponse::decode(&raw.encode_to_vec()),
            Err(ResponseError::TooLarge { .. })
        ));
    }
}
