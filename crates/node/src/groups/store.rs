//! The group tables (schema in `peercomm-store`, migration 9): groups and
//! their members as this node sees them, posts seen or made (in apply
//! order), the decrypted history, Welcome parts, our key packages, and the
//! posts this node holds for others as a group mailbox.
//!
//! Functions take a connection so the engine can run them in the same
//! transaction as the MLS state changes they go with.

use libp2p::PeerId;
use peercomm_store::rusqlite::{self, params, Connection, OptionalExtension};

use super::{GroupError, GroupId, GroupInfo, GroupMember, GroupMessage, GroupState};

impl From<rusqlite::Error> for GroupError {
    fn from(e: rusqlite::Error) -> Self {
        GroupError::Internal(format!("store: {e}"))
    }
}

const GROUP_COLUMNS: &str =
    "group_id, name, description, owner, admins, state, epoch, members, invited_by, joined_ms";

fn parse_peer(s: &str) -> rusqlite::Result<PeerId> {
    s.parse().map_err(|e: libp2p::identity::ParseError| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn group_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<GroupInfo> {
    let id: Vec<u8> = r.get(0)?;
    let admins: String = r.get(4)?;
    let state: String = r.get(5)?;
    let invited_by: Option<String> = r.get(8)?;
    let bad = |e: String| {
        rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, e.into())
    };
    Ok(GroupInfo {
        id: GroupId::from_slice(&id).ok_or_else(|| bad("group id is not 16 bytes".into()))?,
        name: r.get(1)?,
        description: r.get(2)?,
        owner: parse_peer(&r.get::<_, String>(3)?)?,
        admins: admins
            .split(',')
            .filter(|s| !s.is_empty())
            .map(parse_peer)
            .collect::<rusqlite::Result<_>>()?,
        state: state.parse().map_err(bad)?,
        epoch: r.get(6)?,
        members: r.get::<_, i64>(7)?.try_into().unwrap_or(0),
        invited_by: invited_by.as_deref().map(parse_peer).transpose()?,
        joined_ms: r.get(9)?,
    })
}

/// Every group, most recently joined first.
pub(crate) fn list(c: &Connection) -> Result<Vec<GroupInfo>, GroupError> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {GROUP_COLUMNS} FROM groups ORDER BY joined_ms DESC, group_id"
    ))?;
    let rows = stmt.query_map([], group_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// One group, or `None`.
pub(crate) fn find(c: &Connection, id: GroupId) -> Result<Option<GroupInfo>, GroupError> {
    Ok(c.query_row(
        &format!("SELECT {GROUP_COLUMNS} FROM groups WHERE group_id = ?1"),
        [id.as_bytes().as_slice()],
        group_from_row,
    )
    .optional()?)
}

/// One group, or [`GroupError::NotFound`].
pub(crate) fn info(c: &Connection, id: GroupId) -> Result<GroupInfo, GroupError> {
    find(c, id)?.ok_or(GroupError::NotFound(id))
}

/// Writes a group's row (insert or replace), keeping a held Welcome
/// unless `welcome` gives a new one.
pub(crate) fn save(
    c: &Connection,
    g: &GroupInfo,
    welcome: Option<&[u8]>,
) -> Result<(), GroupError> {
    let admins = g
        .admins
        .iter()
        .map(|p| p.to_base58())
        .collect::<Vec<_>>()
        .join(",");
    c.execute(
        "INSERT INTO groups (group_id, name, description, owner, admins, state, epoch, members,
                             invited_by, joined_ms, welcome)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (group_id) DO UPDATE SET
            name = excluded.name, description = excluded.description, owner = excluded.owner,
            admins = excluded.admins, state = excluded.state, epoch = excluded.epoch,
            members = excluded.members, invited_by = excluded.invited_by,
            welcome = coalesce(excluded.welcome, groups.welcome)",
        params![
            g.id.as_bytes().as_slice(),
            g.name,
            g.description,
            g.owner.to_base58(),
            admins,
            g.state.as_str(),
            g.epoch,
            i64::try_from(g.members).unwrap_or(i64::MAX),
            g.invited_by.map(|p| p.to_base58()),
            g.joined_ms,
            welcome,
        ],
    )?;
    Ok(())
}

/// The Welcome held for an invitation.
pub(crate) fn welcome(c: &Connection, id: GroupId) -> Result<Option<Vec<u8>>, GroupError> {
    Ok(c.query_row(
        "SELECT welcome FROM groups WHERE group_id = ?1",
        [id.as_bytes().as_slice()],
        |r| r.get::<_, Option<Vec<u8>>>(0),
    )
    .optional()?
    .flatten())
}

/// Forgets a held Welcome (used, or replaced by membership).
pub(crate) fn clear_welcome(c: &Connection, id: GroupId) -> Result<(), GroupError> {
    c.execute(
        "UPDATE groups SET welcome = NULL WHERE group_id = ?1",
        [id.as_bytes().as_slice()],
    )?;
    Ok(())
}

/// Replaces the member list of a group.
pub(crate) fn set_members(c: &Connection, id: GroupId, peers: &[PeerId]) -> Result<(), GroupError> {
    c.execute(
        "DELETE FROM group_members WHERE group_id = ?1",
        [id.as_bytes().as_slice()],
    )?;
    let mut stmt = c.prepare_cached(
        "INSERT OR IGNORE INTO group_members (group_id, peer_id) VALUES (?1, ?2)",
    )?;
    for p in peers {
        stmt.execute(params![id.as_bytes().as_slice(), p.to_base58()])?;
    }
    Ok(())
}

/// The members of a group, owner first, then admins, then the rest.
pub(crate) fn members(c: &Connection, id: GroupId) -> Result<Vec<GroupMember>, GroupError> {
    let g = info(c, id)?;
    let mut stmt =
        c.prepare_cached("SELECT peer_id FROM group_members WHERE group_id = ?1 ORDER BY peer_id")?;
    let peers = stmt
        .query_map([id.as_bytes().as_slice()], |r| {
            parse_peer(&r.get::<_, String>(0)?)
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut out: Vec<GroupMember> = peers
        .into_iter()
        .map(|peer| GroupMember {
            peer,
            admin: g.admins.contains(&peer),
            owner: peer == g.owner,
        })
        .collect();
    out.sort_by_key(|m| (!m.owner, !m.admin));
    Ok(out)
}

/// The member PeerIds of a group.
pub(crate) fn member_ids(c: &Connection, id: GroupId) -> Result<Vec<PeerId>, GroupError> {
    let mut stmt = c.prepare_cached("SELECT peer_id FROM group_members WHERE group_id = ?1")?;
    let peers = stmt
        .query_map([id.as_bytes().as_slice()], |r| {
            parse_peer(&r.get::<_, String>(0)?)
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(peers)
}

/// A decrypted group message to add to the history.
#[derive(Debug, Clone)]
pub(crate) struct NewGroupMessage<'a> {
    pub(crate) group: GroupId,
    pub(crate) msg_id: [u8; 16],
    pub(crate) sender: PeerId,
    pub(crate) body: &'a [u8],
    pub(crate) epoch: u64,
    pub(crate) created_ms: u64,
    pub(crate) received_ms: u64,
}

/// Adds a message to the history; `None` if its id is there already.
pub(crate) fn insert_message(
    c: &Connection,
    m: &NewGroupMessage<'_>,
) -> Result<Option<i64>, GroupError> {
    let n = c.execute(
        "INSERT OR IGNORE INTO group_messages
            (group_id, msg_id, sender, body, epoch, created_ms, received_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            m.group.as_bytes().as_slice(),
            m.msg_id.as_slice(),
            m.sender.to_base58(),
            m.body,
            m.epoch,
            m.created_ms,
            m.received_ms
        ],
    )?;
    Ok((n == 1).then(|| c.last_insert_rowid()))
}

/// A page of history after local position `after`.
pub(crate) fn history(
    c: &Connection,
    id: GroupId,
    after: i64,
    limit: u32,
) -> Result<Vec<GroupMessage>, GroupError> {
    info(c, id)?;
    let mut stmt = c.prepare_cached(
        "SELECT seq, msg_id, sender, body, epoch, created_ms, received_ms FROM group_messages
         WHERE group_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![id.as_bytes().as_slice(), after, limit], |r| {
        Ok(GroupMessage {
            seq: r.get(0)?,
            id: hex::encode(r.get::<_, Vec<u8>>(1)?),
            group: id,
            sender: parse_peer(&r.get::<_, String>(2)?)?,
            body: r.get(3)?,
            epoch: r.get(4)?,
            created_ms: r.get(5)?,
            received_ms: r.get(6)?,
            post_bytes: 0,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Where a post stands on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PostState {
    /// Waiting to be applied (its epoch is not reached yet).
    Pending,
    /// Applied (decrypted, or the commit merged).
    Applied,
    /// Could not be applied (not decryptable, from a stale epoch, forged).
    Failed,
    /// Made here.
    Own,
}

impl PostState {
    fn as_str(self) -> &'static str {
        match self {
            PostState::Pending => "pending",
            PostState::Applied => "applied",
            PostState::Failed => "failed",
            PostState::Own => "own",
        }
    }
}

/// A post with its ordering key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PostRow {
    pub(crate) post_id: [u8; 16],
    pub(crate) group: GroupId,
    pub(crate) epoch: u64,
    pub(crate) is_commit: bool,
    pub(crate) created_ms: u64,
    pub(crate) post: Vec<u8>,
}

/// Records a post; `false` if it was known already.
pub(crate) fn insert_post(
    c: &Connection,
    p: &PostRow,
    state: PostState,
    now: u64,
) -> Result<bool, GroupError> {
    let n = c.execute(
        "INSERT OR IGNORE INTO group_posts
            (post_id, group_id, epoch, is_commit, created_ms, post, state, received_ms, deposited)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            p.post_id.as_slice(),
            p.group.as_bytes().as_slice(),
            p.epoch,
            p.is_commit,
            p.created_ms,
            p.post,
            state.as_str(),
            now,
            // Only our own posts are deposited by us.
            state != PostState::Own,
        ],
    )?;
    Ok(n == 1)
}

fn post_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PostRow> {
    let id: Vec<u8> = r.get(0)?;
    let group: Vec<u8> = r.get(1)?;
    Ok(PostRow {
        post_id: <[u8; 16]>::try_from(id.as_slice()).unwrap_or([0; 16]),
        group: GroupId::from_slice(&group).unwrap_or(GroupId::from([0; 16])),
        epoch: r.get(2)?,
        is_commit: r.get(3)?,
        created_ms: r.get(4)?,
        post: r.get(5)?,
    })
}

/// The first pending posts of a group in apply order.
pub(crate) fn pending_posts(
    c: &Connection,
    id: GroupId,
    limit: u32,
) -> Result<Vec<PostRow>, GroupError> {
    let mut stmt = c.prepare_cached(
        "SELECT post_id, group_id, epoch, is_commit, created_ms, post FROM group_posts
         WHERE group_id = ?1 AND state = 'pending'
         ORDER BY epoch, is_commit, created_ms, post_id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![id.as_bytes().as_slice(), limit], post_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Moves a post to `state`.
pub(crate) fn set_post_state(
    c: &Connection,
    post_id: &[u8; 16],
    state: PostState,
) -> Result<(), GroupError> {
    c.execute(
        "UPDATE group_posts SET state = ?2 WHERE post_id = ?1",
        params![post_id.as_slice(), state.as_str()],
    )?;
    Ok(())
}

/// Our own posts not yet deposited in the group's mailboxes.
pub(crate) fn undeposited(c: &Connection, limit: u32) -> Result<Vec<PostRow>, GroupError> {
    let mut stmt = c.prepare_cached(
        "SELECT post_id, group_id, epoch, is_commit, created_ms, post FROM group_posts
         WHERE deposited = 0 ORDER BY received_ms LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit], post_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Marks our post as deposited at enough mailboxes.
pub(crate) fn mark_deposited(c: &Connection, post_id: &[u8; 16]) -> Result<(), GroupError> {
    c.execute(
        "UPDATE group_posts SET deposited = 1 WHERE post_id = ?1",
        [post_id.as_slice()],
    )?;
    Ok(())
}

/// The last applied post's ordering key in a group (the catch-up cursor),
/// among posts received before `received_before` (ms) if given: a node
/// that was away resumes from what it had before it left, so posts that
/// reached it by gossip since its return cannot hide those sent while it
/// was away.
pub(crate) fn cursor(
    c: &Connection,
    id: GroupId,
    received_before: Option<u64>,
) -> Result<Option<PostKey>, GroupError> {
    Ok(c.query_row(
        "SELECT epoch, is_commit, created_ms, post_id FROM group_posts
         WHERE group_id = ?1 AND state != 'pending' AND (?2 IS NULL OR received_ms < ?2)
         ORDER BY epoch DESC, is_commit DESC, created_ms DESC, post_id DESC LIMIT 1",
        params![id.as_bytes().as_slice(), received_before],
        |r| {
            let id: Vec<u8> = r.get(3)?;
            Ok(PostKey {
                epoch: r.get(0)?,
                is_commit: r.get(1)?,
                created_ms: r.get(2)?,
                post_id: <[u8; 16]>::try_from(id.as_slice()).unwrap_or([0; 16]),
            })
        },
    )
    .optional()?)
}

/// A post's place in the apply order: `(epoch, is_commit, created_ms, post_id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct PostKey {
    pub(crate) epoch: u64,
    pub(crate) is_commit: bool,
    pub(crate) created_ms: u64,
    pub(crate) post_id: [u8; 16],
}

/// Welcome parts: stores one, and returns the whole Welcome (parts in
/// order) once every part is here.
pub(crate) fn welcome_part(
    c: &Connection,
    welcome_id: &[u8],
    part: u32,
    parts: u32,
    sender: PeerId,
    bytes: &[u8],
    now: u64,
) -> Result<Option<Vec<u8>>, GroupError> {
    c.execute(
        "INSERT OR IGNORE INTO group_welcome_parts (welcome_id, part, parts, sender, bytes, received_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![welcome_id, part, parts, sender.to_base58(), bytes, now],
    )?;
    let mut stmt = c.prepare_cached(
        "SELECT part, bytes FROM group_welcome_parts WHERE welcome_id = ?1 AND sender = ?2 AND parts = ?3
         ORDER BY part",
    )?;
    let got = stmt
        .query_map(params![welcome_id, sender.to_base58(), parts], |r| {
            Ok((r.get::<_, u32>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if got.len() as u32 != parts || got.iter().enumerate().any(|(i, (p, _))| *p as usize != i) {
        return Ok(None);
    }
    c.execute(
        "DELETE FROM group_welcome_parts WHERE welcome_id = ?1",
        [welcome_id],
    )?;
    Ok(Some(got.into_iter().flat_map(|(_, b)| b).collect()))
}

/// Drops what outlived its use: expired group mailbox posts, Welcome parts
/// that never completed and applied posts older than `retention_ms`
/// (their messages stay in the history).
pub(crate) fn purge(c: &Connection, now: u64, retention_ms: u64) -> Result<(), GroupError> {
    let before = now.saturating_sub(retention_ms);
    c.execute("DELETE FROM group_mailbox WHERE expires_ms <= ?1", [now])?;
    c.execute(
        "DELETE FROM group_welcome_parts WHERE received_ms < ?1",
        [before],
    )?;
    c.execute(
        "DELETE FROM group_posts WHERE state != 'pending' AND deposited = 1 AND received_ms < ?1",
        [before],
    )?;
    Ok(())
}

/// What a group mailbox did with a deposit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Held {
    /// Stored now.
    Stored,
    /// Held already.
    Duplicate,
    /// The group's quota is full.
    Full,
}

/// Stores a post for a group as one of its mailboxes.
pub(crate) fn mailbox_put(
    c: &Connection,
    p: &PostRow,
    depositor: PeerId,
    now: u64,
    expires_ms: u64,
    max_per_group: u64,
) -> Result<Held, GroupError> {
    let held: u64 = c.query_row(
        "SELECT count(*) FROM group_mailbox WHERE group_id = ?1",
        [p.group.as_bytes().as_slice()],
        |r| r.get(0),
    )?;
    if held >= max_per_group {
        return Ok(Held::Full);
    }
    let n = c.execute(
        "INSERT OR IGNORE INTO group_mailbox
            (group_id, epoch, is_commit, created_ms, post_id, post, depositor, stored_ms, expires_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            p.group.as_bytes().as_slice(),
            p.epoch,
            p.is_commit,
            p.created_ms,
            p.post_id.as_slice(),
            p.post,
            depositor.to_base58(),
            now,
            expires_ms
        ],
    )?;
    Ok(if n == 1 {
        Held::Stored
    } else {
        Held::Duplicate
    })
}

/// A page of a group's posts after `after`, in apply order; and whether
/// more follow.
pub(crate) fn mailbox_page(
    c: &Connection,
    group: GroupId,
    after: &PostKey,
    limit: u32,
    now: u64,
) -> Result<(Vec<Vec<u8>>, bool), GroupError> {
    let mut stmt = c.prepare_cached(
        "SELECT post FROM group_mailbox
         WHERE group_id = ?1 AND expires_ms > ?6
           AND (epoch, is_commit, created_ms, post_id) > (?2, ?3, ?4, ?5)
         ORDER BY epoch, is_commit, created_ms, post_id LIMIT ?7",
    )?;
    let mut posts = stmt
        .query_map(
            params![
                group.as_bytes().as_slice(),
                after.epoch,
                after.is_commit,
                after.created_ms,
                after.post_id.as_slice(),
                now,
                limit + 1
            ],
            |r| r.get::<_, Vec<u8>>(0),
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let more = posts.len() > limit as usize;
    posts.truncate(limit as usize);
    Ok((posts, more))
}

/// A key package of ours: `(hash_ref, encoded, last_resort)`.
pub(crate) type KeyPackageRow = (Vec<u8>, Vec<u8>, bool);

/// A group control message in the inbox: `(seq, id, sender, body)`.
pub(crate) type ControlRow = (i64, [u8; 16], PeerId, Vec<u8>);

/// Our key packages.
pub(crate) fn key_packages(c: &Connection) -> Result<Vec<KeyPackageRow>, GroupError> {
    let mut stmt = c.prepare_cached(
        "SELECT hash_ref, key_package, last_resort FROM group_key_packages ORDER BY created_ms",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Remembers a key package we published.
pub(crate) fn add_key_package(
    c: &Connection,
    hash_ref: &[u8],
    encoded: &[u8],
    last_resort: bool,
    now: u64,
) -> Result<(), GroupError> {
    c.execute(
        "INSERT OR REPLACE INTO group_key_packages (hash_ref, key_package, last_resort, created_ms)
         VALUES (?1, ?2, ?3, ?4)",
        params![hash_ref, encoded, last_resort, now],
    )?;
    Ok(())
}

/// Forgets a key package (used by a Welcome).
pub(crate) fn remove_key_package(c: &Connection, hash_ref: &[u8]) -> Result<(), GroupError> {
    c.execute(
        "DELETE FROM group_key_packages WHERE hash_ref = ?1",
        [hash_ref],
    )?;
    Ok(())
}

/// This node's standing in a group, if it knows the group.
pub(crate) fn state(c: &Connection, id: GroupId) -> Result<Option<GroupState>, GroupError> {
    Ok(find(c, id)?.map(|g| g.state))
}

/// Group control messages in the inbox not yet handled, after inbox
/// position `after`: `(seq, id, sender, body)`.
pub(crate) fn control_messages(
    c: &Connection,
    after: i64,
    limit: u32,
) -> Result<Vec<ControlRow>, GroupError> {
    let mut stmt = c.prepare_cached(
        "SELECT seq, id, sender, body FROM inbox
         WHERE kind = 2 AND seq > ?1 AND id NOT IN (SELECT id FROM group_control_done)
         ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after, limit], |r| {
        let id: Vec<u8> = r.get(1)?;
        Ok((
            r.get(0)?,
            <[u8; 16]>::try_from(id.as_slice()).unwrap_or([0; 16]),
            parse_peer(&r.get::<_, String>(2)?)?,
            r.get(3)?,
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Marks a control message handled.
pub(crate) fn control_done(c: &Connection, id: &[u8; 16]) -> Result<(), GroupError> {
    c.execute(
        "INSERT OR IGNORE INTO group_control_done (id) VALUES (?1)",
        [id.as_slice()],
    )?;
    Ok(())
}
