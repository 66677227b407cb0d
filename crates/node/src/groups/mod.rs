//! Group messaging: MLS (RFC 9420) groups with an owner that sequences
//! commits, multicast over gossipsub, and catch-up from the group's
//! mailboxes.
//!
//! - [`mls`]: the MLS engine over OpenMLS 0.9 with its state in the node's
//!   SQLite database (`openmls_sqlite_storage`).
//! - [`post`]: what travels on a group's topic and sits in its mailboxes.
//! - [`order`]: the order in which a member applies posts (epoch order).
//!
//! The public face is on [`crate::NodeHandle`]: `group_create`,
//! `group_invite`, `group_join`, `group_leave`, `group_remove`,
//! `group_set_admin`, `group_rename`, `group_send`, `groups`, `group`,
//! `group_members`, `group_history`.

use std::fmt;
use std::str::FromStr;

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

/// Bytes in a group id.
pub const GROUP_ID_BYTES: usize = 16;
/// Longest group name, in bytes.
pub const MAX_GROUP_NAME_BYTES: usize = 128;
/// Longest group description, in bytes.
pub const MAX_GROUP_DESCRIPTION_BYTES: usize = 1024;
/// Largest group message body, in bytes.
pub const MAX_GROUP_BODY_BYTES: usize = 16 * 1024;
/// Most members a group may have.
pub const MAX_GROUP_MEMBERS: usize = 5_000;

/// A group's id: 16 random bytes, written as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId([u8; GROUP_ID_BYTES]);

impl GroupId {
    /// A fresh random id.
    pub fn random(rng: &mut impl rand::RngCore) -> Self {
        let mut id = [0u8; GROUP_ID_BYTES];
        rng.fill_bytes(&mut id);
        Self(id)
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; GROUP_ID_BYTES] {
        &self.0
    }

    /// The id from bytes, if there are exactly 16.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; GROUP_ID_BYTES]>::try_from(bytes).ok().map(Self)
    }

    /// The gossipsub topic of the group: `peercomm/group/<hex id>`.
    pub fn topic(&self) -> String {
        format!("peercomm/group/{self}")
    }
}

impl From<[u8; GROUP_ID_BYTES]> for GroupId {
    fn from(b: [u8; GROUP_ID_BYTES]) -> Self {
        Self(b)
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A group id that does not parse.
#[derive(Debug, Clone, thiserror::Error)]
#[error("a group id is 32 hex digits (16 bytes), e.g. 0f1e2d3c4b5a69788796a5b4c3d2e1f0; got {0:?}")]
pub struct ParseGroupIdError(pub String);

impl FromStr for GroupId {
    type Err = ParseGroupIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(s).map_err(|_| ParseGroupIdError(s.to_string()))?;
        Self::from_slice(&bytes).ok_or_else(|| ParseGroupIdError(s.to_string()))
    }
}

impl Serialize for GroupId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for GroupId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where this node stands in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupState {
    /// Invited (a Welcome is held); `group_join` accepts it.
    Invited,
    /// A member.
    Active,
    /// This node asked to leave; the owner's commit removing it may still
    /// be on its way.
    Left,
    /// The owner removed this node (or accepted its leave).
    Removed,
}

impl GroupState {
    /// The state's name as stored and shown (`invited`, `active`, `left`, `removed`).
    pub fn as_str(&self) -> &'static str {
        match self {
            GroupState::Invited => "invited",
            GroupState::Active => "active",
            GroupState::Left => "left",
            GroupState::Removed => "removed",
        }
    }
}

impl FromStr for GroupState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "invited" => GroupState::Invited,
            "active" => GroupState::Active,
            "left" => GroupState::Left,
            "removed" => GroupState::Removed,
            other => return Err(format!("unknown group state {other:?}")),
        })
    }
}

/// A group as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupInfo {
    /// The group's id.
    pub id: GroupId,
    /// Its name.
    pub name: String,
    /// Its description.
    pub description: String,
    /// The member that sequences commits.
    #[serde(serialize_with = "ser_peer")]
    pub owner: PeerId,
    /// Members allowed to invite, remove, rename and (owner only) promote.
    #[serde(serialize_with = "ser_peers")]
    pub admins: Vec<PeerId>,
    /// Members in the current epoch.
    pub members: usize,
    /// The MLS epoch this node is in.
    pub epoch: u64,
    /// This node's standing.
    pub state: GroupState,
    /// Who invited this node (for a group it did not create).
    #[serde(serialize_with = "ser_opt_peer")]
    pub invited_by: Option<PeerId>,
    /// When this node created, joined or was invited to it (Unix ms).
    pub joined_ms: u64,
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupMember {
    /// The member's PeerId (its MLS credential).
    #[serde(serialize_with = "ser_peer")]
    pub peer: PeerId,
    /// Whether it is an admin.
    pub admin: bool,
    /// Whether it owns the group.
    pub owner: bool,
}

/// One message of a group's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupMessage {
    /// Local position in the history (the paging cursor).
    pub seq: i64,
    /// The message id (32 hex digits), the same on every member.
    pub id: String,
    /// The group.
    pub group: GroupId,
    /// Its author.
    #[serde(serialize_with = "ser_peer")]
    pub sender: PeerId,
    /// The content.
    #[serde(skip)]
    pub body: Vec<u8>,
    /// The MLS epoch it was sent in.
    pub epoch: u64,
    /// When its author sent it (Unix ms, the author's clock).
    pub created_ms: u64,
    /// When this node got it (Unix ms).
    pub received_ms: u64,
    /// Size of the post that carried it (MLS ciphertext in its `GroupPost`),
    /// bytes; known to its sender only (0 otherwise).
    #[serde(skip)]
    pub post_bytes: usize,
}

fn ser_peer<S: serde::Serializer>(p: &PeerId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_base58())
}

fn ser_opt_peer<S: serde::Serializer>(p: &Option<PeerId>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_some(&p.to_base58()),
        None => s.serialize_none(),
    }
}

fn ser_peers<S: serde::Serializer>(p: &[PeerId], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(p.iter().map(|p| p.to_base58()))
}

/// Why a group operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GroupError {
    /// No such group on this node.
    #[error("no group {0} on this node (see `peercomm group list`)")]
    NotFound(GroupId),
    /// The operation needs admin rights this node lacks.
    #[error("only an admin of group {0} may do that (ask its owner for admin rights)")]
    NotAdmin(GroupId),
    /// The operation needs the owner.
    #[error("only the owner of group {0} may do that")]
    NotOwner(GroupId),
    /// This node is not an active member.
    #[error("this node is not an active member of group {group} (it is {state})")]
    NotMember {
        /// The group.
        group: GroupId,
        /// This node's standing.
        state: &'static str,
    },
    /// The peer is in the group already.
    #[error("{peer} is already a member of group {group}")]
    AlreadyMember {
        /// The group.
        group: GroupId,
        /// The peer.
        peer: PeerId,
    },
    /// The peer is not in the group.
    #[error("{peer} is not a member of group {group}")]
    NoSuchMember {
        /// The group.
        group: GroupId,
        /// The peer.
        peer: PeerId,
    },
    /// No usable key package for the peer in the DHT.
    #[error("no key package for {0} in the DHT (it must run peercomm and have joined the DHT; try again later)")]
    NoKeyPackage(PeerId),
    /// The owner cannot leave its own group.
    #[error("the owner cannot leave group {0}; remove the other members first")]
    OwnerCannotLeave(GroupId),
    /// A value given by the caller is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The group is full.
    #[error("group {0} has the most members a group may have ({MAX_GROUP_MEMBERS})")]
    Full(GroupId),
    /// The store or MLS failed; nothing changed.
    #[error("group operation failed: {0}")]
    Internal(String),
    /// The node is shutting down or gone.
    #[error("the node is not running")]
    NodeStopped,
}

pub(crate) mod engine;
mod handle;
pub(crate) mod keep_alive;
pub mod mailbox;
pub(crate) mod mls;
pub(crate) mod pull;
pub(crate) mod store;

pub(crate) use handle::GroupCommand;
pub use handle::{GroupChange, MAX_HISTORY_PAGE};

/// Checks a group name and description given by a user.
pub(crate) fn check_name(name: &str, description: &str) -> Result<(), GroupError> {
    if name.trim().is_empty() {
        return Err(GroupError::Invalid("a group name cannot be empty".into()));
    }
    if name.len() > MAX_GROUP_NAME_BYTES {
        return Err(GroupError::Invalid(format!(
            "a group name is at most {MAX_GROUP_NAME_BYTES} bytes; this one is {}",
            name.len()
        )));
    }
    if description.len() > MAX_GROUP_DESCRIPTION_BYTES {
        return Err(GroupError::Invalid(format!(
            "a group description is at most {MAX_GROUP_DESCRIPTION_BYTES} bytes; this one is {}",
            description.len()
        )));
    }
    Ok(())
}
