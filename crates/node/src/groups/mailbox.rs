//! A group's mailboxes: the mailbox-role peers nearest
//! `SHA-256("group" || group id)` keep the group's posts (MLS ciphertext)
//! for [`crate::config::GroupsConfig::retention`], so members that were
//! offline or outside the gossip mesh catch up, paged, in apply order.
//!
//! Anyone may deposit (each post is rate limited like every mailbox
//! request and counted against the group's quota) and anyone who knows a
//! group's id may fetch: posts are ciphertext, and the id is a 128-bit
//! random value members keep to themselves.

use peercomm_store::Store;
use peercomm_wire::group::{GroupPost, PostKey, GROUP_PAGE_BYTES, MAX_GROUP_PAGE_POSTS};
use peercomm_wire::pb::{MailDepositCode, MailRefusalCode};
use peercomm_wire::MailboxResponse;
use sha2::{Digest, Sha256};

use super::store::{self as gstore, Held, PostRow};
use super::GroupId;
use crate::mailbox::{Context, Effect, Served};

/// The Kademlia key a group's mailboxes are closest to.
pub fn group_mailbox_key(group: &GroupId) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(b"group");
    hash.update(group.as_bytes());
    hash.finalize().to_vec()
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The row a post is kept as.
pub(crate) fn row(post: &GroupPost) -> PostRow {
    PostRow {
        post_id: post.key.post_id,
        group: GroupId::from(post.group_id),
        epoch: post.key.epoch,
        is_commit: post.key.commit,
        created_ms: post.key.created_ms,
        post: post.encoded.clone(),
    }
}

/// Serves a group deposit.
pub(crate) fn deposit(store: &mut Store, cx: &Context<'_>, bytes: &[u8]) -> Served {
    if !cx.is_mailbox {
        return Served::refused(
            MailDepositCode::MailDepositNotAMailbox,
            "this node is not a mailbox",
        );
    }
    let post = match GroupPost::decode(bytes) {
        Ok(p) => p,
        Err(e) => return Served::refused(MailDepositCode::MailDepositInvalid, e.to_string()),
    };
    let expires = cx.now_ms.saturating_add(ms(cx.groups.retention));
    match gstore::mailbox_put(
        store.connection(),
        &row(&post),
        cx.from,
        cx.now_ms,
        expires,
        cx.groups.max_posts_per_group,
    ) {
        Ok(Held::Stored) => Served {
            response: MailboxResponse::deposited(MailDepositCode::MailDepositStored, ""),
            effect: Effect::None,
        },
        Ok(Held::Duplicate) => Served::answer(MailboxResponse::deposited(
            MailDepositCode::MailDepositDuplicate,
            "",
        )),
        Ok(Held::Full) => Served::refused(
            MailDepositCode::MailDepositQuota,
            "this mailbox holds as many posts for the group as it keeps",
        ),
        Err(e) => {
            tracing::warn!("group deposit: {e}");
            Served::refused(
                MailDepositCode::MailDepositQuota,
                "the mailbox cannot write its store; try another",
            )
        }
    }
}

/// Serves a group fetch.
pub(crate) fn fetch(
    store: &mut Store,
    cx: &Context<'_>,
    group: [u8; 16],
    after: PostKey,
    limit: u32,
) -> Served {
    if !cx.is_mailbox {
        return Served::refusal(
            MailRefusalCode::MailRefusalNotAMailbox,
            "this node is not a mailbox",
        );
    }
    let limit = limit.clamp(1, MAX_GROUP_PAGE_POSTS as u32);
    let key = gstore::PostKey {
        epoch: after.epoch,
        is_commit: after.commit,
        created_ms: after.created_ms,
        post_id: after.post_id,
    };
    match gstore::mailbox_page(
        store.connection(),
        GroupId::from(group),
        &key,
        limit,
        cx.now_ms,
    ) {
        Ok((mut posts, mut more)) => {
            // Keep the page under its byte budget (one post may pass it alone).
            let mut total = 0;
            let mut keep = 0;
            for p in &posts {
                if keep > 0 && total + p.len() > GROUP_PAGE_BYTES {
                    break;
                }
                total += p.len();
                keep += 1;
            }
            if keep < posts.len() {
                posts.truncate(keep);
                more = true;
            }
            Served {
                response: MailboxResponse::GroupPage { posts, more },
                effect: Effect::Fetched,
            }
        }
        Err(e) => {
            tracing::warn!("group fetch: {e}");
            Served::refusal(
                MailRefusalCode::MailRefusalInternal,
                "the mailbox cannot read its store; try later",
            )
        }
    }
}
