//! Mailboxes for peers that are offline (`/peercomm/mailbox/1.0.0`).
//!
//! A recipient's mailboxes are the mailbox-role peers XOR-closest to
//! [`mailbox_key`]. This module holds what needs no network: the key, and
//! [`serve`], which answers one request against the store (verify, check
//! quotas and TTL, store, page, delete on a signed ack). The event loop in
//! `node/mailbox.rs` does the I/O: finding the mailboxes, depositing,
//! draining, acknowledging, passing receipts on.

use libp2p::{PeerId, StreamProtocol};
use peercomm_store::{DepositOutcome, MailKind, NewMailItem, ReceiptRow, Store};
use peercomm_wire::pb::{MailDepositCode, MailRefusalCode};
use peercomm_wire::{
    MailPayload, MailboxRequest, MailboxResponse, MessageId, PagedItem, MAIL_PAGE_BYTES,
    MAX_MAIL_PAGE_ITEMS,
};
use sha2::{Digest, Sha256};

use crate::config::MailboxConfig;

/// The mailbox protocol.
pub const MAILBOX_PROTOCOL: StreamProtocol = StreamProtocol::new("/peercomm/mailbox/1.0.0");

/// The Kademlia key a peer's mailboxes are closest to:
/// `SHA-256("mailbox" || PeerId bytes)`.
pub fn mailbox_key(peer: &PeerId) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(b"mailbox");
    hash.update(peer.to_bytes());
    hash.finalize().to_vec()
}

/// `peers` ordered nearest first to `key` by Kademlia's XOR distance (of
/// the SHA-256 of each, as the DHT measures it), without repeats.
pub fn by_distance(key: &[u8], mut peers: Vec<PeerId>) -> Vec<PeerId> {
    let target = libp2p::kad::KBucketKey::new(key.to_vec());
    peers.sort_by_key(|p| libp2p::kad::KBucketKey::from(*p).distance(&target));
    peers.dedup();
    peers
}

/// What the event loop should do after a request was served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Nothing more.
    None,
    /// An item was stored for `0`: tell it, if it is connected.
    StoredFor(PeerId),
    /// A receipt for our message `0` arrived and was committed.
    Delivered(MessageId),
    /// A mailbox says it holds items for us: fetch from it.
    Drain,
    /// A deposit was refused (counted).
    Refused,
    /// An acknowledgement deleted items here.
    Acked,
    /// A page was served.
    Fetched,
}

/// A served request: the answer, and what follows from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Served {
    pub(crate) response: MailboxResponse,
    pub(crate) effect: Effect,
}

impl Served {
    pub(crate) fn answer(response: MailboxResponse) -> Self {
        Self {
            response,
            effect: Effect::None,
        }
    }

    pub(crate) fn refused(code: MailDepositCode, reason: impl Into<String>) -> Self {
        Self {
            response: MailboxResponse::deposited(code, reason),
            effect: Effect::Refused,
        }
    }

    pub(crate) fn refusal(code: MailRefusalCode, reason: impl Into<String>) -> Self {
        Self::answer(MailboxResponse::refused(code, reason))
    }
}

/// Who is asking and what this node is, for [`serve`].
pub(crate) struct Context<'a> {
    /// This node.
    pub(crate) me: PeerId,
    /// The peer at the other end of the connection (authenticated).
    pub(crate) from: PeerId,
    /// Whether this node has the mailbox role.
    pub(crate) is_mailbox: bool,
    /// The mailbox settings.
    pub(crate) config: &'a MailboxConfig,
    /// Now, ms since the Unix epoch.
    pub(crate) now_ms: u64,
    /// The group settings (how long group posts are kept, how many).
    pub(crate) groups: &'a crate::config::GroupsConfig,
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Answers one mailbox request against the store.
pub(crate) fn serve(store: &mut Store, cx: &Context<'_>, request: MailboxRequest) -> Served {
    match request {
        MailboxRequest::Deposit(payload) => deposit(store, cx, payload),
        MailboxRequest::Fetch { after, limit } => fetch(store, cx, after, limit),
        MailboxRequest::Ack(signed) => ack(store, cx, &signed),
        MailboxRequest::Offer { recipient, ids } => {
            if !cx.is_mailbox {
                return Served::refusal(
                    MailRefusalCode::MailRefusalNotAMailbox,
                    "this node is not a mailbox",
                );
            }
            let recipient = recipient.to_base58();
            let mut wanted = Vec::new();
            for id in ids {
                match store.mailbox_holds(&recipient, id.as_bytes()) {
                    Ok(false) => wanted.push(id),
                    Ok(true) => {}
                    Err(e) => {
                        tracing::warn!("mailbox offer: {e}");
                        return Served::refusal(
                            MailRefusalCode::MailRefusalInternal,
                            "the mailbox cannot read its store; try later",
                        );
                    }
                }
            }
            Served::answer(MailboxResponse::Wanted(wanted))
        }
        MailboxRequest::Notify { .. } => Served {
            response: MailboxResponse::Noted,
            effect: Effect::Drain,
        },
        MailboxRequest::GroupDeposit(post) => crate::groups::mailbox::deposit(store, cx, &post),
        MailboxRequest::GroupFetch {
            group_id,
            after,
            limit,
        } => crate::groups::mailbox::fetch(store, cx, group_id, after, limit),
        // The event loop answers these from its cache of announced posts;
        // the store does not keep posts by id for members.
        MailboxRequest::GroupGet { .. } => Served::answer(MailboxResponse::GroupPage {
            posts: Vec::new(),
            more: false,
        }),
    }
}

fn deposit(store: &mut Store, cx: &Context<'_>, payload: MailPayload) -> Served {
    let item = match payload {
        MailPayload::Envelope(bytes) => {
            let verified = match peercomm_wire::verify(&bytes, cx.now_ms) {
                Ok(v) => v,
                Err(e) => {
                    return Served::refused(
                        MailDepositCode::MailDepositInvalid,
                        format!("envelope refused: {e}"),
                    )
                }
            };
            let header = verified.header;
            if header.recipient == cx.me {
                return Served::refused(
                    MailDepositCode::MailDepositInvalid,
                    "this node is the recipient: send it on /peercomm/msg/1.0.0",
                );
            }
            NewMailItem {
                id: *header.id.as_bytes(),
                kind: MailKind::Envelope,
                recipient: header.recipient.to_base58(),
                depositor: header.sender.to_base58(),
                item: bytes,
                expires_ms: header.expires_ms,
                stored_ms: cx.now_ms,
            }
        }
        MailPayload::Receipt(bytes) => {
            let info = match peercomm_wire::open_receipt(&bytes) {
                Ok(info) => info,
                Err(e) => {
                    return Served::refused(
                        MailDepositCode::MailDepositInvalid,
                        format!("receipt refused: {e}"),
                    )
                }
            };
            if info.message_sender == cx.me {
                return our_receipt(store, cx, info, bytes);
            }
            NewMailItem {
                id: *info.id.as_bytes(),
                kind: MailKind::Receipt,
                recipient: info.message_sender.to_base58(),
                depositor: info.recipient.to_base58(),
                item: bytes,
                expires_ms: cx.now_ms.saturating_add(ms(cx.config.max_ttl)),
                stored_ms: cx.now_ms,
            }
        }
    };
    if !cx.is_mailbox {
        return Served::refused(
            MailDepositCode::MailDepositNotAMailbox,
            "this node is not a mailbox",
        );
    }
    let max_expiry = cx.now_ms.saturating_add(ms(cx.config.max_ttl));
    if item.expires_ms > max_expiry {
        return Served::refused(
            MailDepositCode::MailDepositTtlTooLong,
            format!(
                "this mailbox keeps items at most {}",
                humantime::format_duration(cx.config.max_ttl)
            ),
        );
    }
    let recipient = item.recipient.parse::<PeerId>().ok();
    match store.mailbox_deposit(&item, &cx.config.quotas()) {
        Ok(DepositOutcome::Stored) => Served {
            response: MailboxResponse::deposited(MailDepositCode::MailDepositStored, ""),
            effect: recipient.map_or(Effect::None, Effect::StoredFor),
        },
        Ok(DepositOutcome::Duplicate) => Served::answer(MailboxResponse::deposited(
            MailDepositCode::MailDepositDuplicate,
            "held already",
        )),
        Ok(DepositOutcome::Acknowledged) => Served::answer(MailboxResponse::deposited(
            MailDepositCode::MailDepositAcknowledged,
            "the recipient has it already",
        )),
        Ok(DepositOutcome::Refused(quota)) => {
            Served::refused(MailDepositCode::MailDepositQuota, quota.to_string())
        }
        Err(e) => {
            tracing::warn!("mailbox deposit: {e}");
            Served::refused(
                MailDepositCode::MailDepositUnspecified,
                "the mailbox cannot write its store; try later",
            )
        }
    }
}

/// What a receipt for one of our own messages did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OwnReceipt {
    /// Not for a message of ours, or not signed by its recipient.
    NotOurs(&'static str),
    /// Committed; `fresh` if the message was not delivered before.
    Delivered { id: MessageId, fresh: bool },
    /// The store failed.
    Failed,
}

/// A receipt for one of our messages (handed to us directly, or fetched
/// from our mailboxes): checked against the message's recipient, committed.
pub(crate) fn take_receipt(
    store: &mut Store,
    info: &peercomm_wire::ReceiptInfo,
    signed: Vec<u8>,
    now_ms: u64,
) -> OwnReceipt {
    let Ok(Some(message)) = store.get_outgoing(info.id.as_bytes()) else {
        return OwnReceipt::NotOurs("no such message was sent from here");
    };
    if message.recipient != info.recipient.to_base58() {
        return OwnReceipt::NotOurs("the receipt is not signed by the message's recipient");
    }
    let row = ReceiptRow {
        message_id: *info.id.as_bytes(),
        recipient: info.recipient.to_base58(),
        received_ms: info.received_ms,
        signed,
    };
    match store.mark_delivered(info.id.as_bytes(), &row, now_ms) {
        Ok(fresh) => OwnReceipt::Delivered { id: info.id, fresh },
        Err(e) => {
            tracing::warn!("cannot mark a message delivered: {e}");
            OwnReceipt::Failed
        }
    }
}

/// A receipt for one of our own messages, handed to us directly.
fn our_receipt(
    store: &mut Store,
    cx: &Context<'_>,
    info: peercomm_wire::ReceiptInfo,
    bytes: Vec<u8>,
) -> Served {
    match take_receipt(store, &info, bytes, cx.now_ms) {
        OwnReceipt::NotOurs(why) => Served::refused(MailDepositCode::MailDepositInvalid, why),
        OwnReceipt::Delivered { id, fresh } => Served {
            response: MailboxResponse::deposited(MailDepositCode::MailDepositStored, ""),
            effect: if fresh {
                Effect::Delivered(id)
            } else {
                Effect::None
            },
        },
        OwnReceipt::Failed => Served::refused(
            MailDepositCode::MailDepositUnspecified,
            "the sender cannot write its store; try later",
        ),
    }
}

fn fetch(store: &mut Store, cx: &Context<'_>, after: u64, limit: u32) -> Served {
    let limit = limit.clamp(1, MAX_MAIL_PAGE_ITEMS as u32);
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let held = match store.mailbox_fetch(&cx.from.to_base58(), Some(after), cx.now_ms, limit) {
        Ok(held) => held,
        Err(e) => {
            tracing::warn!("mailbox fetch: {e}");
            return Served::refusal(
                MailRefusalCode::MailRefusalInternal,
                "the mailbox cannot read its store; try later",
            );
        }
    };
    let full = held.len() as u32 >= limit;
    let mut items = Vec::with_capacity(held.len());
    let mut bytes = 0usize;
    let mut cut = false;
    for item in held {
        if !items.is_empty() && bytes + item.item.len() > MAIL_PAGE_BYTES {
            cut = true;
            break;
        }
        bytes += item.item.len();
        items.push(PagedItem {
            seq: u64::try_from(item.seq).unwrap_or(0),
            payload: match item.kind {
                MailKind::Envelope => MailPayload::Envelope(item.item),
                MailKind::Receipt => MailPayload::Receipt(item.item),
            },
        });
    }
    Served {
        response: MailboxResponse::Page {
            items,
            more: full || cut,
        },
        effect: Effect::Fetched,
    }
}

fn ack(store: &mut Store, cx: &Context<'_>, signed: &[u8]) -> Served {
    let ack = match peercomm_wire::verify_mail_ack(signed) {
        Ok(ack) => ack,
        Err(e) => {
            return Served::refusal(
                MailRefusalCode::MailRefusalBadSignature,
                format!("acknowledgement refused: {e}"),
            )
        }
    };
    let ids: Vec<[u8; 16]> = ack.ids.iter().map(|id| *id.as_bytes()).collect();
    let keep_until = cx.now_ms.saturating_add(ms(cx.config.max_ttl));
    match store.mailbox_ack(&ack.recipient.to_base58(), &ids, keep_until) {
        Ok(deleted) => Served {
            response: MailboxResponse::Acked {
                deleted: u32::try_from(deleted).unwrap_or(u32::MAX),
            },
            effect: Effect::Acked,
        },
        Err(e) => {
            tracing::warn!("mailbox ack: {e}");
            Served::refusal(
                MailRefusalCode::MailRefusalInternal,
                "the mailbox cannot write its store; try later",
            )
        }
    }
}

#[cfg(test)]
mod tests;
