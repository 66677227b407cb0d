//! Group wire types: posts (on a group's gossipsub topic and in its
//! mailboxes), their apply order, and the signed key-package record a node
//! publishes in the DHT under `/peercomm/kp/<peer-id>`.

use libp2p_identity::{Keypair, PeerId};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::error::ReceiptError;
use crate::identity::{inline_ed25519_key, signing_input};
use crate::limits::SIGNATURE_BYTES;
use crate::pb;

/// Largest encoded `GroupPost`.
pub const MAX_GROUP_POST_BYTES: usize = 120 * 1024;
/// Posts in one group mailbox page, at most.
pub const MAX_GROUP_PAGE_POSTS: usize = 64;
/// A group page's posts together stay under this many bytes (one post may pass it alone).
pub const GROUP_PAGE_BYTES: usize = 100 * 1024;
/// Largest encoded `SignedKeyPackages` record value.
pub const MAX_KEY_PACKAGES_BYTES: usize = 16 * 1024;
/// Key packages in one record, at most (fresh ones; the last-resort one is extra).
pub const MAX_KEY_PACKAGES: usize = 16;
/// Domain separation prefix of the key-package record signature input.
pub const KEY_PACKAGES_SIG_DOMAIN: &[u8] = b"peercomm/v1/key-packages-sig";
/// DHT key prefix of key-package records.
pub const KEY_PACKAGES_PREFIX: &str = "/peercomm/kp/";

/// A post's place in a group's apply order: `(epoch, commit, created_ms, post_id)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PostKey {
    /// The MLS epoch the post was made in.
    pub epoch: u64,
    /// Commits come after an epoch's application messages.
    pub commit: bool,
    /// The author's clock, Unix milliseconds.
    pub created_ms: u64,
    /// The post's id.
    pub post_id: [u8; 16],
}

/// A decoded, size-checked group post.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupPost {
    /// The group.
    pub group_id: [u8; 16],
    /// Where it sorts.
    pub key: PostKey,
    /// The MLS message.
    pub mls: Vec<u8>,
    /// The encoding the id was taken from.
    pub encoded: Vec<u8>,
}

/// Why bytes are not a group post.
#[derive(Clone, Debug, thiserror::Error)]
pub enum PostError {
    /// Over [`MAX_GROUP_POST_BYTES`].
    #[error("group post is {0} bytes; the limit is {MAX_GROUP_POST_BYTES}")]
    TooLarge(usize),
    /// Does not decode, or a field is wrong.
    #[error("malformed group post: {0}")]
    Malformed(String),
}

/// A post's id: the first 16 bytes of SHA-256 of its encoding.
pub fn post_id(encoded: &[u8]) -> [u8; 16] {
    let digest = Sha256::digest(encoded);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

impl GroupPost {
    /// Encodes a new post.
    pub fn new(
        group_id: [u8; 16],
        epoch: u64,
        commit: bool,
        created_ms: u64,
        mls: Vec<u8>,
    ) -> Self {
        let encoded = pb::GroupPost {
            group_id: group_id.to_vec(),
            epoch,
            commit,
            created_ms,
            mls: mls.clone(),
            ..Default::default()
        }
        .encode_to_vec();
        Self {
            group_id,
            key: PostKey {
                epoch,
                commit,
                created_ms,
                post_id: post_id(&encoded),
            },
            mls,
            encoded,
        }
    }

    /// Decodes and checks a post.
    pub fn decode(bytes: &[u8]) -> Result<Self, PostError> {
        if bytes.len() > MAX_GROUP_POST_BYTES {
            return Err(PostError::TooLarge(bytes.len()));
        }
        let raw = pb::GroupPost::decode(bytes).map_err(|e| PostError::Malformed(e.to_string()))?;
        let group_id = <[u8; 16]>::try_from(raw.group_id.as_slice())
            .map_err(|_| PostError::Malformed("the group id is not 16 bytes".into()))?;
        if !raw.announces.is_empty() {
            return Err(PostError::Malformed(
                "an announcement, not a post (announcements travel on the topic only)".into(),
            ));
        }
        if raw.mls.is_empty() {
            return Err(PostError::Malformed("no MLS message".into()));
        }
        Ok(Self {
            group_id,
            key: PostKey {
                epoch: raw.epoch,
                commit: raw.commit,
                created_ms: raw.created_ms,
                post_id: post_id(bytes),
            },
            mls: raw.mls,
            encoded: bytes.to_vec(),
        })
    }
}

/// A large post's announcement on its group's topic: who holds the post
/// (the peer that forwarded the announcement) serves it once to each mesh
/// peer that asks, instead of every mesh peer pushing it to every other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PostAnnounce {
    /// The group.
    pub group_id: [u8; 16],
    /// The announced post's place and id.
    pub key: PostKey,
    /// The announced post's encoded size.
    pub size: u32,
}

impl PostAnnounce {
    /// The announcement of `post`.
    pub fn of(post: &GroupPost) -> Self {
        Self {
            group_id: post.group_id,
            key: post.key,
            size: post.encoded.len() as u32,
        }
    }

    /// Encodes the announcement (a `GroupPost` with `announces` set).
    pub fn encode(&self) -> Vec<u8> {
        pb::GroupPost {
            group_id: self.group_id.to_vec(),
            epoch: self.key.epoch,
            commit: self.key.commit,
            created_ms: self.key.created_ms,
            announces: self.key.post_id.to_vec(),
            size: self.size,
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// Whether `post` is the one announced.
    pub fn matches(&self, post: &GroupPost) -> bool {
        post.group_id == self.group_id
            && post.key == self.key
            && post.encoded.len() == self.size as usize
    }
}

/// What a group's topic carries: a post, or a large post's announcement.
#[derive(Clone, Debug)]
pub enum GroupGossip {
    /// A whole post.
    Post(GroupPost),
    /// A post to fetch from the peer that forwarded this.
    Announce(PostAnnounce),
}

impl GroupGossip {
    /// Decodes and checks what came on a topic.
    pub fn decode(bytes: &[u8]) -> Result<Self, PostError> {
        if bytes.len() > MAX_GROUP_POST_BYTES {
            return Err(PostError::TooLarge(bytes.len()));
        }
        let raw = pb::GroupPost::decode(bytes).map_err(|e| PostError::Malformed(e.to_string()))?;
        if raw.announces.is_empty() {
            return GroupPost::decode(bytes).map(GroupGossip::Post);
        }
        let malformed = |what: &str| PostError::Malformed(format!("announcement: {what}"));
        let group_id = <[u8; 16]>::try_from(raw.group_id.as_slice())
            .map_err(|_| malformed("the group id is not 16 bytes"))?;
        let post_id = <[u8; 16]>::try_from(raw.announces.as_slice())
            .map_err(|_| malformed("the post id is not 16 bytes"))?;
        if !raw.mls.is_empty() {
            return Err(malformed("it carries an MLS message"));
        }
        if raw.size == 0 || raw.size as usize > MAX_GROUP_POST_BYTES {
            return Err(malformed("the size is 0 or over the post limit"));
        }
        Ok(GroupGossip::Announce(PostAnnounce {
            group_id,
            key: PostKey {
                epoch: raw.epoch,
                commit: raw.commit,
                created_ms: raw.created_ms,
                post_id,
            },
            size: raw.size,
        }))
    }
}

/// A verified key-package record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPackages {
    /// Whose.
    pub peer: PeerId,
    /// Publication sequence.
    pub seq: u64,
    /// Valid until, Unix milliseconds.
    pub expires_ms: u64,
    /// Single-use key packages (TLS-encoded MLS KeyPackages).
    pub fresh: Vec<Vec<u8>>,
    /// The reusable one.
    pub last_resort: Vec<u8>,
}

/// The DHT key of `peer`'s key-package record.
pub fn key_packages_key(peer: &PeerId) -> Vec<u8> {
    format!("{KEY_PACKAGES_PREFIX}{peer}").into_bytes()
}

/// Signs a key-package record; returns the encoded `SignedKeyPackages`.
pub fn sign_key_packages(keypair: &Keypair, kp: &KeyPackages) -> Result<Vec<u8>, ReceiptError> {
    let body = pb::KeyPackages {
        peer: kp.peer.to_bytes(),
        seq: kp.seq,
        expires_ms: kp.expires_ms,
        fresh: kp.fresh.clone(),
        last_resort: kp.last_resort.clone(),
    }
    .encode_to_vec();
    let signature = keypair
        .sign(&signing_input(&[KEY_PACKAGES_SIG_DOMAIN, &body]))
        .map_err(|e| ReceiptError::Sign(e.to_string()))?;
    let out = pb::SignedKeyPackages { body, signature }.encode_to_vec();
    if out.len() > MAX_KEY_PACKAGES_BYTES {
        return Err(ReceiptError::TooLarge {
            what: "key-package record",
            len: out.len(),
            max: MAX_KEY_PACKAGES_BYTES,
        });
    }
    Ok(out)
}

/// Decodes and verifies a key-package record: signed by the key inlined in
/// its peer's PeerId, within limits, not expired at `now_ms`.
pub fn verify_key_packages(bytes: &[u8], now_ms: u64) -> Result<KeyPackages, ReceiptError> {
    if bytes.len() > MAX_KEY_PACKAGES_BYTES {
        return Err(ReceiptError::TooLarge {
            what: "key-package record",
            len: bytes.len(),
            max: MAX_KEY_PACKAGES_BYTES,
        });
    }
    let signed = pb::SignedKeyPackages::decode(bytes)
        .map_err(|e| ReceiptError::Malformed(format!("key-package record: {e}")))?;
    if signed.signature.len() != SIGNATURE_BYTES {
        return Err(ReceiptError::Malformed(
            "key-package record: bad signature length".into(),
        ));
    }
    let body = pb::KeyPackages::decode(signed.body.as_slice())
        .map_err(|e| ReceiptError::Malformed(format!("key packages: {e}")))?;
    let peer = PeerId::from_bytes(&body.peer)
        .map_err(|e| ReceiptError::Malformed(format!("key packages: peer: {e}")))?;
    let key = inline_ed25519_key(&peer)
        .map_err(|e| ReceiptError::Malformed(format!("key packages: {e}")))?;
    if !key.verify(
        &signing_input(&[KEY_PACKAGES_SIG_DOMAIN, &signed.body]),
        &signed.signature,
    ) {
        return Err(ReceiptError::BadSignature);
    }
    if body.fresh.len() > MAX_KEY_PACKAGES {
        return Err(ReceiptError::TooLarge {
            what: "key packages",
            len: body.fresh.len(),
            max: MAX_KEY_PACKAGES,
        });
    }
    if body.expires_ms <= now_ms {
        return Err(ReceiptError::Malformed("key-package record expired".into()));
    }
    Ok(KeyPackages {
        peer,
        seq: body.seq,
        expires_ms: body.expires_ms,
        fresh: body.fresh,
        last_resort: body.last_resort,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(len: usize) -> GroupPost {
        GroupPost::new([7; 16], 3, false, 1_700_000_000_000, vec![0xAB; len])
    }

    #[test]
    fn an_announcement_round_trips_and_matches_only_its_post() {
        let big = post(6000);
        let announce = PostAnnounce::of(&big);
        let bytes = announce.encode();
        assert!(bytes.len() < 80, "{} bytes", bytes.len());
        match GroupGossip::decode(&bytes) {
            Ok(GroupGossip::Announce(a)) => {
                assert_eq!(a, announce);
                assert!(a.matches(&big));
                assert!(!a.matches(&post(6001)));
            }
            other => panic!("{other:?}"),
        }
        match GroupGossip::decode(&big.encoded) {
            Ok(GroupGossip::Post(p)) => assert_eq!(p.key, big.key),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_announcement_is_never_a_post_and_bad_ones_are_refused() {
        let announce = PostAnnounce::of(&post(2000));
        // A mailbox or catch-up decoding posts refuses an announcement.
        assert!(GroupPost::decode(&announce.encode()).is_err());
        let raw = |f: &dyn Fn(&mut pb::GroupPost)| {
            let mut p = pb::GroupPost {
                group_id: vec![7; 16],
                announces: vec![1; 16],
                size: 100,
                ..Default::default()
            };
            f(&mut p);
            GroupGossip::decode(&p.encode_to_vec())
        };
        assert!(raw(&|_| {}).is_ok());
        assert!(raw(&|p| p.announces = vec![1; 15]).is_err());
        assert!(raw(&|p| p.group_id = vec![7; 17]).is_err());
        assert!(raw(&|p| p.mls = vec![1]).is_err());
        assert!(raw(&|p| p.size = 0).is_err());
        assert!(raw(&|p| p.size = MAX_GROUP_POST_BYTES as u32 + 1).is_err());
    }
}
