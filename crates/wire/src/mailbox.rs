//! `/peercomm/mailbox/1.0.0`: deposits, fetches, signed acknowledgements, replication offers
//! and notifications between a mailbox and its clients. Every decoder checks sizes and counts
//! before it allocates per item.

use libp2p_identity::{Keypair, PeerId};
use prost::Message;

use crate::error::{ReceiptError, ResponseError};
use crate::id::MessageId;
use crate::identity::{inline_ed25519_key, parse_peer_id, signing_input};
use crate::limits::{
    MAX_ENVELOPE_BYTES, MAX_FRAME_BYTES, MAX_PEER_ID_BYTES, MAX_RECEIPT_BYTES, SIGNATURE_BYTES,
};
use crate::pb::{
    self, mail_deposit, mail_item, mailbox_request, mailbox_response, MailDepositCode,
    MailRefusalCode,
};
use crate::response::{bounded_reason, check_reason};

/// Domain separation prefix of the mailbox acknowledgement signature input.
pub const MAIL_ACK_SIG_DOMAIN: &[u8] = b"peercomm/v1/mail-ack-sig";
/// Message ids in one acknowledgement, offer or wanted list, at most.
pub const MAX_MAIL_IDS: usize = 256;
/// Items in one fetched page, at most.
pub const MAX_MAIL_PAGE_ITEMS: usize = 64;
/// A page's items together stay under this many bytes (one item may pass it alone, so
/// that any item fits in some page: `MAX_ENVELOPE_BYTES` is below the frame limit).
pub const MAIL_PAGE_BYTES: usize = 64 * 1024;
/// Largest signed acknowledgement.
pub const MAX_MAIL_ACK_BYTES: usize = MAX_MAIL_IDS * 20 + MAX_PEER_ID_BYTES + 128;

/// An item a mailbox holds: a sealed envelope or a signed receipt, encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MailPayload {
    /// An encoded `Envelope` for its header's recipient.
    Envelope(Vec<u8>),
    /// An encoded `SignedReceipt` for the sender of the message it acknowledges.
    Receipt(Vec<u8>),
}

impl MailPayload {
    /// The encoded bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            MailPayload::Envelope(b) | MailPayload::Receipt(b) => b,
        }
    }

    fn check(&self) -> Result<(), ResponseError> {
        let (what, max) = match self {
            MailPayload::Envelope(_) => ("mailbox envelope", MAX_ENVELOPE_BYTES),
            MailPayload::Receipt(_) => ("mailbox receipt", MAX_RECEIPT_BYTES),
        };
        let len = self.bytes().len();
        if len > max {
            return Err(ResponseError::TooLarge { what, len, max });
        }
        Ok(())
    }
}

/// One item of a fetched page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PagedItem {
    /// The item's position in the mailbox: the next fetch's cursor.
    pub seq: u64,
    /// The item.
    pub payload: MailPayload,
}

/// A request on `/peercomm/mailbox/1.0.0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MailboxRequest {
    /// Leave an item for its recipient.
    Deposit(MailPayload),
    /// The caller's items with a seq above `after`, at most `limit`.
    Fetch {
        /// The cursor (0: from the start).
        after: u64,
        /// Items wanted at most.
        limit: u32,
    },
    /// An encoded `SignedMailAck` (check it with [`verify_mail_ack`]).
    Ack(Vec<u8>),
    /// Which of `ids` for `recipient` does the listener lack?
    Offer {
        /// Whose items.
        recipient: PeerId,
        /// At most [`MAX_MAIL_IDS`].
        ids: Vec<MessageId>,
    },
    /// The mailbox holds about `items` items for the listener.
    Notify {
        /// How many (a hint).
        items: u32,
    },
    /// Leave an encoded `GroupPost` with a group's mailbox.
    GroupDeposit(Vec<u8>),
    /// A group's posts after `after`, in apply order, at most `limit`.
    GroupFetch {
        /// The group (16 bytes).
        group_id: [u8; 16],
        /// The cursor (all zero: from the start).
        after: crate::group::PostKey,
        /// Posts wanted at most.
        limit: u32,
    },
    /// One announced post (answered with a `GroupPage` of it, or of nothing).
    GroupGet {
        /// The group (16 bytes).
        group_id: [u8; 16],
        /// The post's id.
        post_id: [u8; 16],
    },
}

fn too_large(what: &'static str, len: usize, max: usize) -> ResponseError {
    ResponseError::TooLarge { what, len, max }
}

fn malformed(what: impl Into<String>) -> ResponseError {
    ResponseError::Malformed(what.into())
}

fn check_frame(what: &'static str, bytes: &[u8]) -> Result<(), ResponseError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(too_large(what, bytes.len(), MAX_FRAME_BYTES));
    }
    Ok(())
}

fn ids_from(raw: Vec<Vec<u8>>, what: &'static str) -> Result<Vec<MessageId>, ResponseError> {
    if raw.len() > MAX_MAIL_IDS {
        return Err(too_large(what, raw.len(), MAX_MAIL_IDS));
    }
    raw.iter()
        .map(|id| MessageId::from_bytes(id).map_err(|e| malformed(format!("{what}: {e}"))))
        .collect()
}

fn ids_to(ids: &[MessageId]) -> Vec<Vec<u8>> {
    ids.iter().map(|id| id.as_bytes().to_vec()).collect()
}

impl MailboxRequest {
    /// Encodes the request as a `MailboxRequest` protobuf.
    pub fn encode(&self) -> Vec<u8> {
        let request = match self {
            MailboxRequest::Deposit(payload) => {
                mailbox_request::Request::Deposit(pb::MailDeposit {
                    item: Some(match payload {
                        MailPayload::Envelope(b) => mail_deposit::Item::Envelope(b.clone()),
                        MailPayload::Receipt(b) => mail_deposit::Item::Receipt(b.clone()),
                    }),
                })
            }
            MailboxRequest::Fetch { after, limit } => {
                mailbox_request::Request::Fetch(pb::MailFetch {
                    after: *after,
                    limit: *limit,
                })
            }
            MailboxRequest::Ack(signed) => mailbox_request::Request::Ack(
                pb::SignedMailAck::decode(signed.as_slice()).unwrap_or_default(),
            ),
            MailboxRequest::Offer { recipient, ids } => {
                mailbox_request::Request::Offer(pb::MailOffer {
                    recipient: recipient.to_bytes(),
                    ids: ids_to(ids),
                })
            }
            MailboxRequest::Notify { items } => {
                mailbox_request::Request::Notify(pb::MailNotify { items: *items })
            }
            MailboxRequest::GroupDeposit(post) => {
                mailbox_request::Request::GroupDeposit(pb::GroupDeposit { post: post.clone() })
            }
            MailboxRequest::GroupFetch {
                group_id,
                after,
                limit,
            } => mailbox_request::Request::GroupFetch(pb::GroupFetch {
                group_id: group_id.to_vec(),
                epoch: after.epoch,
                commit: after.commit,
                created_ms: after.created_ms,
                post_id: after.post_id.to_vec(),
                limit: *limit,
            }),
            MailboxRequest::GroupGet { group_id, post_id } => {
                mailbox_request::Request::GroupGet(pb::GroupGet {
                    group_id: group_id.to_vec(),
                    post_id: post_id.to_vec(),
                })
            }
        };
        pb::MailboxRequest {
            request: Some(request),
        }
        .encode_to_vec()
    }

    /// Decodes a `MailboxRequest` protobuf, checking every size and count.
    pub fn decode(bytes: &[u8]) -> Result<Self, ResponseError> {
        check_frame("mailbox request", bytes)?;
        let raw = pb::MailboxRequest::decode(bytes)
            .map_err(|e| malformed(format!("mailbox request: {e}")))?;
        let request = match raw.request {
            Some(mailbox_request::Request::Deposit(deposit)) => {
                let payload = match deposit.item {
                    Some(mail_deposit::Item::Envelope(b)) => MailPayload::Envelope(b),
                    Some(mail_deposit::Item::Receipt(b)) => MailPayload::Receipt(b),
                    None => return Err(malformed("mailbox deposit: no item")),
                };
                payload.check()?;
                MailboxRequest::Deposit(payload)
            }
            Some(mailbox_request::Request::Fetch(fetch)) => MailboxRequest::Fetch {
                after: fetch.after,
                limit: fetch.limit,
            },
            Some(mailbox_request::Request::Ack(ack)) => {
                let encoded = ack.encode_to_vec();
                if encoded.len() > MAX_MAIL_ACK_BYTES {
                    return Err(too_large("mailbox ack", encoded.len(), MAX_MAIL_ACK_BYTES));
                }
                MailboxRequest::Ack(encoded)
            }
            Some(mailbox_request::Request::Offer(offer)) => MailboxRequest::Offer {
                recipient: parse_peer_id(&offer.recipient, "offer recipient").map_err(malformed)?,
                ids: ids_from(offer.ids, "offered ids")?,
            },
            Some(mailbox_request::Request::Notify(notify)) => MailboxRequest::Notify {
                items: notify.items,
            },
            Some(mailbox_request::Request::GroupDeposit(d)) => {
                if d.post.len() > crate::group::MAX_GROUP_POST_BYTES {
                    return Err(too_large(
                        "group post",
                        d.post.len(),
                        crate::group::MAX_GROUP_POST_BYTES,
                    ));
                }
                MailboxRequest::GroupDeposit(d.post)
            }
            Some(mailbox_request::Request::GroupFetch(f)) => MailboxRequest::GroupFetch {
                group_id: <[u8; 16]>::try_from(f.group_id.as_slice())
                    .map_err(|_| malformed("group fetch: the group id is not 16 bytes"))?,
                after: crate::group::PostKey {
                    epoch: f.epoch,
                    commit: f.commit,
                    created_ms: f.created_ms,
                    post_id: if f.post_id.is_empty() {
                        [0; 16]
                    } else {
                        <[u8; 16]>::try_from(f.post_id.as_slice())
                            .map_err(|_| malformed("group fetch: the post id is not 16 bytes"))?
                    },
                },
                limit: f.limit,
            },
            Some(mailbox_request::Request::GroupGet(g)) => MailboxRequest::GroupGet {
                group_id: <[u8; 16]>::try_from(g.group_id.as_slice())
                    .map_err(|_| malformed("group get: the group id is not 16 bytes"))?,
                post_id: <[u8; 16]>::try_from(g.post_id.as_slice())
                    .map_err(|_| malformed("group get: the post id is not 16 bytes"))?,
            },
            None => return Err(malformed("mailbox request: nothing set")),
        };
        Ok(request)
    }
}

/// The answer on `/peercomm/mailbox/1.0.0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MailboxResponse {
    /// What became of a deposit.
    Deposited {
        /// Codes this version does not know decode as `MailDepositUnspecified`.
        code: MailDepositCode,
        /// Detail, at most `MAX_REJECT_REASON_BYTES`.
        reason: String,
    },
    /// A fetched page.
    Page {
        /// In ascending seq order.
        items: Vec<PagedItem>,
        /// Whether more follow.
        more: bool,
    },
    /// Items deleted after an acknowledgement.
    Acked {
        /// How many.
        deleted: u32,
    },
    /// The offered ids the listener lacks.
    Wanted(Vec<MessageId>),
    /// A notification was heard.
    Noted,
    /// The request was refused.
    Refused {
        /// Codes this version does not know decode as `MailRefusalUnspecified`.
        code: MailRefusalCode,
        /// Detail, at most `MAX_REJECT_REASON_BYTES`.
        reason: String,
    },
    /// A page of a group's posts (encoded `GroupPost`s), in apply order.
    GroupPage {
        /// At most [`crate::group::MAX_GROUP_PAGE_POSTS`].
        posts: Vec<Vec<u8>>,
        /// Whether more follow.
        more: bool,
    },
}

impl MailboxResponse {
    /// A deposit's answer, with `reason` cut to `MAX_REJECT_REASON_BYTES`.
    pub fn deposited(code: MailDepositCode, reason: impl Into<String>) -> Self {
        Self::Deposited {
            code,
            reason: bounded_reason(reason.into()),
        }
    }

    /// A refusal, with `reason` cut to `MAX_REJECT_REASON_BYTES`.
    pub fn refused(code: MailRefusalCode, reason: impl Into<String>) -> Self {
        Self::Refused {
            code,
            reason: bounded_reason(reason.into()),
        }
    }

    /// Encodes the response as a `MailboxResponse` protobuf.
    pub fn encode(&self) -> Vec<u8> {
        let response = match self {
            MailboxResponse::Deposited { code, reason } => {
                mailbox_response::Response::Deposited(pb::MailDeposited {
                    code: (*code).into(),
                    reason: reason.clone(),
                })
            }
            MailboxResponse::Page { items, more } => {
                mailbox_response::Response::Page(pb::MailPage {
                    items: items
                        .iter()
                        .map(|i| pb::MailItem {
                            seq: i.seq,
                            item: Some(match &i.payload {
                                MailPayload::Envelope(b) => mail_item::Item::Envelope(b.clone()),
                                MailPayload::Receipt(b) => mail_item::Item::Receipt(b.clone()),
                            }),
                        })
                        .collect(),
                    more: *more,
                })
            }
            MailboxResponse::Acked { deleted } => {
                mailbox_response::Response::Acked(pb::MailAcked { deleted: *deleted })
            }
            MailboxResponse::Wanted(ids) => {
                mailbox_response::Response::Wanted(pb::MailWanted { ids: ids_to(ids) })
            }
            MailboxResponse::Noted => mailbox_response::Response::Noted(pb::MailNoted {}),
            MailboxResponse::Refused { code, reason } => {
                mailbox_response::Response::Refusal(pb::MailRefusal {
                    code: (*code).into(),
                    reason: reason.clone(),
                })
            }
            MailboxResponse::GroupPage { posts, more } => {
                mailbox_response::Response::GroupPage(pb::GroupPage {
                    posts: posts.clone(),
                    more: *more,
                })
            }
        };
        pb::MailboxResponse {
            response: Some(response),
        }
        .encode_to_vec()
    }

    /// Decodes a `MailboxResponse` protobuf, checking every size and count.
    pub fn decode(bytes: &[u8]) -> Result<Self, ResponseError> {
        check_frame("mailbox response", bytes)?;
        let raw = pb::MailboxResponse::decode(bytes)
            .map_err(|e| malformed(format!("mailbox response: {e}")))?;
        let response = match raw.response {
            Some(mailbox_response::Response::Deposited(d)) => {
                check_reason("deposit reason", &d.reason)?;
                MailboxResponse::Deposited {
                    code: MailDepositCode::try_from(d.code)
                        .unwrap_or(MailDepositCode::MailDepositUnspecified),
                    reason: d.reason,
                }
            }
            Some(mailbox_response::Response::Page(page)) => {
                if page.items.len() > MAX_MAIL_PAGE_ITEMS {
                    return Err(too_large(
                        "mailbox page",
                        page.items.len(),
                        MAX_MAIL_PAGE_ITEMS,
                    ));
                }
                let items = page
                    .items
                    .into_iter()
                    .map(|i| {
                        let payload = match i.item {
                            Some(mail_item::Item::Envelope(b)) => MailPayload::Envelope(b),
                            Some(mail_item::Item::Receipt(b)) => MailPayload::Receipt(b),
                            None => return Err(malformed("mailbox page item: nothing set")),
                        };
                        payload.check()?;
                        Ok(PagedItem {
                            seq: i.seq,
                            payload,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if items.windows(2).any(|w| w[0].seq >= w[1].seq) {
                    return Err(malformed("mailbox page: items out of order"));
                }
                MailboxResponse::Page {
                    items,
                    more: page.more,
                }
            }
            Some(mailbox_response::Response::Acked(a)) => {
                MailboxResponse::Acked { deleted: a.deleted }
            }
            Some(mailbox_response::Response::Wanted(w)) => {
                MailboxResponse::Wanted(ids_from(w.ids, "wanted ids")?)
            }
            Some(mailbox_response::Response::Noted(_)) => MailboxResponse::Noted,
            Some(mailbox_response::Response::Refusal(r)) => {
                check_reason("mailbox refusal reason", &r.reason)?;
                MailboxResponse::Refused {
                    code: MailRefusalCode::try_from(r.code)
                        .unwrap_or(MailRefusalCode::MailRefusalUnspecified),
                    reason: r.reason,
                }
            }
            Some(mailbox_response::Response::GroupPage(page)) => {
                if page.posts.len() > crate::group::MAX_GROUP_PAGE_POSTS {
                    return Err(too_large(
                        "group page",
                        page.posts.len(),
                        crate::group::MAX_GROUP_PAGE_POSTS,
                    ));
                }
                if let Some(p) = page
                    .posts
                    .iter()
                    .find(|p| p.len() > crate::group::MAX_GROUP_POST_BYTES)
                {
                    return Err(too_large(
                        "group post",
                        p.len(),
                        crate::group::MAX_GROUP_POST_BYTES,
                    ));
                }
                MailboxResponse::GroupPage {
                    posts: page.posts,
                    more: page.more,
                }
            }
            None => return Err(malformed("mailbox response: nothing set")),
        };
        Ok(response)
    }
}

/// A verified mailbox acknowledgement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailAck {
    /// The recipient that signed it: its items with these ids are deleted.
    pub recipient: PeerId,
    /// The acknowledged ids.
    pub ids: Vec<MessageId>,
    /// When it was signed, Unix milliseconds.
    pub signed_ms: u64,
}

/// Signs an acknowledgement of `ids` (at most [`MAX_MAIL_IDS`]) by the owner of `keypair`,
/// returned as an encoded `SignedMailAck`.
pub fn sign_mail_ack(
    keypair: &Keypair,
    ids: &[MessageId],
    signed_ms: u64,
) -> Result<Vec<u8>, ReceiptError> {
    if ids.len() > MAX_MAIL_IDS {
        return Err(ReceiptError::TooLarge {
            what: "acknowledged ids",
            len: ids.len(),
            max: MAX_MAIL_IDS,
        });
    }
    let ack = pb::MailAck {
        recipient: keypair.public().to_peer_id().to_bytes(),
        ids: ids_to(ids),
        signed_ms,
    }
    .encode_to_vec();
    let signature = keypair
        .sign(&signing_input(&[MAIL_ACK_SIG_DOMAIN, &ack]))
        .map_err(|e| ReceiptError::Sign(e.to_string()))?;
    Ok(pb::SignedMailAck { ack, signature }.encode_to_vec())
}

/// Decodes and verifies an encoded `SignedMailAck`: its signature must be by the key inlined
/// in its recipient's PeerId.
pub fn verify_mail_ack(bytes: &[u8]) -> Result<MailAck, ReceiptError> {
    if bytes.len() > MAX_MAIL_ACK_BYTES {
        return Err(ReceiptError::TooLarge {
            what: "mailbox ack",
            len: bytes.len(),
            max: MAX_MAIL_ACK_BYTES,
        });
    }
    let signed = pb::SignedMailAck::decode(bytes)
        .map_err(|e| ReceiptError::Malformed(format!("signed mailbox ack: {e}")))?;
    if signed.signature.len() != SIGNATURE_BYTES {
        return Err(ReceiptError::Malformed(format!(
            "signature must be {SIGNATURE_BYTES} bytes, got {}",
            signed.signature.len()
        )));
    }
    let ack = pb::MailAck::decode(signed.ack.as_slice())
        .map_err(|e| ReceiptError::Malformed(format!("mailbox ack: {e}")))?;
    let recipient =
        parse_peer_id(&ack.recipient, "ack recipient").map_err(ReceiptError::Malformed)?;
    let ids = ids_from(ack.ids, "acknowledged ids")
        .map_err(|e| ReceiptError::Malformed(e.to_string()))?;
    let key = inline_ed25519_key(&recipient).map_err(ReceiptError::BadKey)?;
    if !key.verify(
        &signing_input(&[MAIL_ACK_SIG_DOMAIN, &signed.ack]),
        &signed.signature,
    ) {
        return Err(ReceiptError::BadSignature);
    }
    Ok(MailAck {
        recipient,
        ids,
        signed_ms: ack.signed_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_keys::{keypair as draw_keypair, seeded_rng};

    fn keypair(n: u8) -> Keypair {
        let mut rng = seeded_rng();
        let mut key = draw_keypair(&mut rng);
        for _ in 1..n {
            key = draw_keypair(&mut rng);
        }
        key
    }

    fn ids(n: u8) -> Vec<MessageId> {
        (0..n).map(|i| MessageId::from([i; 16])).collect()
    }

    #[test]
    fn requests_round_trip() {
        let requests = [
            MailboxRequest::Deposit(MailPayload::Envelope(vec![1; 100])),
            MailboxRequest::Deposit(MailPayload::Receipt(vec![2; 100])),
            MailboxRequest::Fetch {
                after: 42,
                limit: 10,
            },
            MailboxRequest::Ack(sign_mail_ack(&keypair(1), &ids(3), 7).unwrap()),
            MailboxRequest::Offer {
                recipient: PeerId::random(),
                ids: ids(5),
            },
            MailboxRequest::Notify { items: 3 },
            MailboxRequest::GroupGet {
                group_id: [4; 16],
                post_id: [5; 16],
            },
        ];
        for request in requests {
            assert_eq!(MailboxRequest::decode(&request.encode()).unwrap(), request);
        }
    }

    #[test]
    fn responses_round_trip() {
        let responses = [
            MailboxResponse::deposited(MailDepositCode::MailDepositQuota, "full"),
            MailboxResponse::Page {
                items: vec![
                    PagedItem {
                        seq: 3,
                        payload: MailPayload::Envelope(vec![1; 10]),
                    },
                    PagedItem {
                        seq: 9,
                        payload: MailPayload::Receipt(vec![2; 10]),
                    },
                ],
                more: true,
            },
            MailboxResponse::Acked { deleted: 4 },
            MailboxResponse::Wanted(ids(2)),
            MailboxResponse::Noted,
            MailboxResponse::refused(MailRefusalCode::MailRefusalRateLimited, "slow down"),
        ];
        for response in responses {
            assert_eq!(
                MailboxResponse::decode(&response.encode()).unwrap(),
                response
            );
        }
    }

    #[test]
    fn oversized_and_malformed_input_is_refused() {
        let big = MailboxRequest::Deposit(MailPayload::Receipt(vec![0; MAX_RECEIPT_BYTES + 1]));
        assert!(matches!(
            MailboxRequest::decode(&big.encode()),
            Err(ResponseError::TooLarge { .. })
        ));
        let many = MailboxRequest::Offer {
            recipient: PeerId::random(),
            ids: vec![MessageId::from([1; 16]); MAX_MAIL_IDS + 1],
        };
        assert!(matches!(
            MailboxRequest::decode(&many.encode()),
            Err(ResponseError::TooLarge { .. })
        ));
        assert!(MailboxRequest::decode(&[0xff; 7]).is_err());
        assert!(MailboxRequest::decode(&pb::MailboxRequest::default().encode_to_vec()).is_err());
        assert!(MailboxRequest::decode(&vec![0; MAX_FRAME_BYTES + 1]).is_err());
        let unordered = MailboxResponse::Page {
            items: vec![
                PagedItem {
                    seq: 9,
                    payload: MailPayload::Envelope(vec![1]),
                },
                PagedItem {
                    seq: 3,
                    payload: MailPayload::Envelope(vec![1]),
                },
            ],
            more: false,
        };
        assert!(MailboxResponse::decode(&unordered.encode()).is_err());
        let bad_id = pb::MailboxResponse {
            response: Some(mailbox_response::Response::Wanted(pb::MailWanted {
                ids: vec![vec![1; 5]],
            })),
        };
        assert!(MailboxResponse::decode(&bad_id.encode_to_vec()).is_err());
        let long = MailboxResponse::Refused {
            code: MailRefusalCode::MailRefusalMalformed,
            reason: "x".repeat(1000),
        };
        assert!(MailboxResponse::decode(&long.encode()).is_err());
        // The constructor cuts a long reason instead.
        let cut = MailboxResponse::refused(MailRefusalCode::MailRefusalMalformed, "x".repeat(1000));
        assert!(MailboxResponse::decode(&cut.encode()).is_ok());
    }

    #[test]
    fn an_ack_verifies_only_as_signed_by_its_recipient() {
        let key = keypair(1);
        let signed = sign_mail_ack(&key, &ids(3), 77).unwrap();
        let ack = verify_mail_ack(&signed).unwrap();
        assert_eq!(ack.recipient, key.public().to_peer_id());
        assert_eq!((ack.ids, ack.signed_ms), (ids(3), 77));

        // Claiming another recipient: the signature no longer matches its key.
        let mut raw = pb::SignedMailAck::decode(signed.as_slice()).unwrap();
        let mut inner = pb::MailAck::decode(raw.ack.as_slice()).unwrap();
        inner.recipient = keypair(2).public().to_peer_id().to_bytes();
        raw.ack = inner.encode_to_vec();
        assert!(matches!(
            verify_mail_ack(&raw.encode_to_vec()),
            Err(ReceiptError::BadSignature)
        ));
        // A flipped signature bit.
        let mut raw = pb::SignedMailAck::decode(signed.as_slice()).unwrap();
        raw.signature[0] ^= 1;
        assert!(matches!(
            verify_mail_ack(&raw.encode_to_vec()),
            Err(ReceiptError::BadSignature)
        ));
        assert!(sign_mail_ack(&key, &vec![MessageId::from([1; 16]); MAX_MAIL_IDS + 1], 1).is_err());
        // The most ids fit the size limit.
        let full = sign_mail_ack(&key, &vec![MessageId::from([1; 16]); MAX_MAIL_IDS], 1).unwrap();
        assert!(verify_mail_ack(&full).is_ok());
    }
}
