//! The group operations of [`NodeHandle`].

use libp2p::PeerId;
use serde::Serialize;
use tokio::sync::oneshot;

use super::{GroupError, GroupId, GroupInfo, GroupMember, GroupMessage};
use crate::handle::{Command, NodeHandle};

/// Largest page of group history one call returns.
pub const MAX_HISTORY_PAGE: u32 = 500;

/// What a membership or metadata change did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum GroupChange {
    /// This node is the owner: the change is committed, the group is in a
    /// new epoch.
    Committed {
        /// The new epoch.
        epoch: u64,
    },
    /// This node is an admin or a leaving member: the request is queued (durably) for the owner,
    /// which commits it.
    Requested {
        /// The owner it went to.
        #[serde(serialize_with = "ser_peer")]
        owner: PeerId,
    },
}

fn ser_peer<S: serde::Serializer>(p: &PeerId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_base58())
}

/// Group work for the event loop.
#[derive(Debug)]
pub(crate) enum GroupCommand {
    Create {
        name: String,
        description: String,
        reply: oneshot::Sender<Result<GroupInfo, GroupError>>,
    },
    Invite {
        group: GroupId,
        peers: Vec<PeerId>,
        reply: oneshot::Sender<Result<GroupChange, GroupError>>,
    },
    Join {
        group: GroupId,
        reply: oneshot::Sender<Result<GroupInfo, GroupError>>,
    },
    Leave {
        group: GroupId,
        reply: oneshot::Sender<Result<GroupChange, GroupError>>,
    },
    Remove {
        group: GroupId,
        peer: PeerId,
        reply: oneshot::Sender<Result<GroupChange, GroupError>>,
    },
    SetAdmin {
        group: GroupId,
        peer: PeerId,
        admin: bool,
        reply: oneshot::Sender<Result<GroupChange, GroupError>>,
    },
    Rename {
        group: GroupId,
        name: Option<String>,
        description: Option<String>,
        reply: oneshot::Sender<Result<GroupChange, GroupError>>,
    },
    Send {
        group: GroupId,
        body: Vec<u8>,
        reply: oneshot::Sender<Result<GroupMessage, GroupError>>,
    },
}

impl NodeHandle {
    async fn group_command<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, GroupError>>) -> GroupCommand,
    ) -> Result<T, GroupError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Group(make(tx)))
            .await
            .map_err(|_| GroupError::NodeStopped)?;
        rx.await.map_err(|_| GroupError::NodeStopped)?
    }

    /// Creates a group owned by this node, with this node its only member.
    pub async fn group_create(
        &self,
        name: &str,
        description: &str,
    ) -> Result<GroupInfo, GroupError> {
        super::check_name(name, description)?;
        let (name, description) = (name.to_string(), description.to_string());
        self.group_command(|reply| GroupCommand::Create {
            name,
            description,
            reply,
        })
        .await
    }

    /// Adds `peer` (admins only): its key package comes from the DHT; the
    /// owner commits the add and sends the peer a Welcome.
    pub async fn group_invite(
        &self,
        group: GroupId,
        peer: PeerId,
    ) -> Result<GroupChange, GroupError> {
        self.group_command(|reply| GroupCommand::Invite {
            group,
            peers: vec![peer],
            reply,
        })
        .await
    }

    /// Adds many peers in one commit (the owner only): each one's key
    /// package comes from the DHT; peers without one are left out (see
    /// [`NodeHandle::group_members`]); fails with
    /// [`GroupError::NoKeyPackage`] only when no peer had one.
    pub async fn group_invite_many(
        &self,
        group: GroupId,
        peers: Vec<PeerId>,
    ) -> Result<GroupChange, GroupError> {
        if peers.is_empty() {
            return Err(GroupError::Invalid("no peers to invite".into()));
        }
        if peers.len() > super::MAX_GROUP_MEMBERS {
            return Err(GroupError::Full(group));
        }
        self.group_command(|reply| GroupCommand::Invite {
            group,
            peers,
            reply,
        })
        .await
    }

    /// Accepts a held invitation: joins from its Welcome, then catches up.
    pub async fn group_join(&self, group: GroupId) -> Result<GroupInfo, GroupError> {
        self.group_command(|reply| GroupCommand::Join { group, reply })
            .await
    }

    /// Leaves a group: a self-remove proposal to the owner, which commits it.
    pub async fn group_leave(&self, group: GroupId) -> Result<GroupChange, GroupError> {
        self.group_command(|reply| GroupCommand::Leave { group, reply })
            .await
    }

    /// Removes `peer` from the group (admins only).
    pub async fn group_remove(
        &self,
        group: GroupId,
        peer: PeerId,
    ) -> Result<GroupChange, GroupError> {
        self.group_command(|reply| GroupCommand::Remove { group, peer, reply })
            .await
    }

    /// Makes `peer` an admin (`admin = true`) or takes the right away.
    /// Only the owner decides; an admin's request goes to the owner.
    pub async fn group_set_admin(
        &self,
        group: GroupId,
        peer: PeerId,
        admin: bool,
    ) -> Result<GroupChange, GroupError> {
        self.group_command(|reply| GroupCommand::SetAdmin {
            group,
            peer,
            admin,
            reply,
        })
        .await
    }

    /// Renames the group and/or changes its description (admins only).
    pub async fn group_rename(
        &self,
        group: GroupId,
        name: Option<String>,
        description: Option<String>,
    ) -> Result<GroupChange, GroupError> {
        super::check_name(
            name.as_deref().unwrap_or("x"),
            description.as_deref().unwrap_or(""),
        )?;
        self.group_command(|reply| GroupCommand::Rename {
            group,
            name,
            description,
            reply,
        })
        .await
    }

    /// Sends `body` to every member: MLS ciphertext on the group's topic
    /// and in its mailboxes. Returns once the message is committed locally.
    pub async fn group_send(
        &self,
        group: GroupId,
        body: Vec<u8>,
    ) -> Result<GroupMessage, GroupError> {
        if body.len() > super::MAX_GROUP_BODY_BYTES {
            return Err(GroupError::Invalid(format!(
                "a group message body is at most {} bytes; this one is {}",
                super::MAX_GROUP_BODY_BYTES,
                body.len()
            )));
        }
        if body.is_empty() {
            return Err(GroupError::Invalid(
                "a group message body cannot be empty".into(),
            ));
        }
        self.group_command(|reply| GroupCommand::Send { group, body, reply })
            .await
    }

    /// Every group this node knows (invited, active, left, removed).
    pub async fn groups(&self) -> Result<Vec<GroupInfo>, GroupError> {
        self.with_groups(super::store::list).await
    }

    /// One group.
    pub async fn group(&self, group: GroupId) -> Result<GroupInfo, GroupError> {
        self.with_groups(move |c| super::store::info(c, group))
            .await
    }

    /// The members of a group in this node's current epoch.
    pub async fn group_members(&self, group: GroupId) -> Result<Vec<GroupMember>, GroupError> {
        self.with_groups(move |c| super::store::members(c, group))
            .await
    }

    /// A page of a group's history, oldest first, after local position
    /// `after` (0 from the start), at most `limit` (capped at
    /// [`MAX_HISTORY_PAGE`]; 100 when `None`).
    pub async fn group_history(
        &self,
        group: GroupId,
        after: i64,
        limit: Option<u32>,
    ) -> Result<Vec<GroupMessage>, GroupError> {
        let limit = limit.unwrap_or(100).clamp(1, MAX_HISTORY_PAGE);
        self.with_groups(move |c| super::store::history(c, group, after, limit))
            .await
    }

    async fn with_groups<T: Send + 'static>(
        &self,
        f: impl FnOnce(&peercomm_store::Connection) -> Result<T, GroupError> + Send + 'static,
    ) -> Result<T, GroupError> {
        let store = self.shared.store.clone();
        tokio::task::spawn_blocking(move || {
            let guard = store.lock().unwrap_or_else(|p| p.into_inner());
            f(guard.connection())
        })
        .await
        .unwrap_or_else(|e| Err(GroupError::Internal(e.to_string())))
    }
}
