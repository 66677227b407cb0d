//! Group work against the store and MLS, with no network: what the owner
//! commits, what a member applies (in epoch order), what a control message
//! does. Each function returns [`Effects`] for the event loop to carry out
//! (publish on the topic, deposit, subscribe, fetch key packages, catch up).

use libp2p::PeerId;
use peercomm_store::{NewOutgoing, Route, Store};
use peercomm_wire::group::GroupPost;
use peercomm_wire::{pb, Kind, Priority};
use prost::Message as _;
use tokio::sync::broadcast;

use super::mls::{Mls, Processed};
use super::store::{self as gstore, NewGroupMessage, PostState};
use super::{GroupChange, GroupError, GroupId, GroupInfo, GroupMessage, GroupState};
use crate::NodeEvent;

/// Bytes of a Welcome per control message (an envelope body carries 64 KiB).
pub(crate) const WELCOME_PART_BYTES: usize = 48 * 1024;
/// Pending posts applied per pass, at most.
const APPLY_BATCH: u32 = 256;
/// Control messages handled per pass, at most.
const CONTROL_BATCH: u32 = 32;

/// What the event loop does after group work.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// Posts to publish on their group's topic and deposit with its mailboxes.
    pub(crate) publish: Vec<(GroupId, Vec<u8>)>,
    /// Topics to join.
    pub(crate) subscribe: Vec<GroupId>,
    /// Topics to leave.
    pub(crate) unsubscribe: Vec<GroupId>,
    /// Groups to catch up from their mailboxes.
    pub(crate) catch_up: Vec<GroupId>,
    /// Key packages to fetch from the DHT and add: `(group, peer)`.
    pub(crate) invite: Vec<(GroupId, PeerId)>,
    /// Control messages went into the outbox.
    pub(crate) outbox: bool,
    /// Our key packages changed: publish the record again.
    pub(crate) key_packages: bool,
    /// The inbox position handled up to (control messages).
    pub(crate) control_seq: Option<i64>,
}

impl Effects {
    fn merge(&mut self, other: Effects) {
        self.publish.extend(other.publish);
        self.subscribe.extend(other.subscribe);
        self.unsubscribe.extend(other.unsubscribe);
        self.catch_up.extend(other.catch_up);
        self.invite.extend(other.invite);
        self.outbox |= other.outbox;
        self.key_packages |= other.key_packages;
        if other.control_seq.is_some() {
            self.control_seq = other.control_seq;
        }
    }
}

/// What background group work needs.
pub(crate) struct Cx<'a> {
    pub(crate) mls: &'a Mls,
    pub(crate) events: &'a broadcast::Sender<NodeEvent>,
    pub(crate) now_ms: u64,
    pub(crate) auto_join: bool,
    /// Lifetime of control messages in the outbox.
    pub(crate) control_ttl_ms: u64,
    pub(crate) key_packages: usize,
}

impl Cx<'_> {
    fn me(&self) -> PeerId {
        self.mls.peer()
    }
}

fn meta_of(g: &GroupInfo) -> pb::GroupMeta {
    pb::GroupMeta {
        name: g.name.clone(),
        description: g.description.clone(),
        owner: g.owner.to_bytes(),
        admins: g.admins.iter().map(|p| p.to_bytes()).collect(),
    }
}

fn apply_meta(g: &mut GroupInfo, meta: &pb::GroupMeta) {
    if meta.name.is_empty() {
        return;
    }
    g.name = meta
        .name
        .chars()
        .take(super::MAX_GROUP_NAME_BYTES)
        .collect();
    g.description = meta.description.clone();
    if let Ok(owner) = PeerId::from_bytes(&meta.owner) {
        g.owner = owner;
    }
    g.admins = meta
        .admins
        .iter()
        .filter_map(|b| PeerId::from_bytes(b).ok())
        .collect();
}

fn active(c: &peercomm_store::Connection, id: GroupId) -> Result<GroupInfo, GroupError> {
    let g = gstore::info(c, id)?;
    if g.state != GroupState::Active {
        return Err(GroupError::NotMember {
            group: id,
            state: g.state.as_str(),
        });
    }
    Ok(g)
}

fn queue_control(
    store: &mut Store,
    cx: &Cx<'_>,
    to: PeerId,
    control: pb::GroupControl,
) -> Result<(), GroupError> {
    let row = NewOutgoing {
        id: rand::random(),
        recipient: to.to_base58(),
        body: control.encode_to_vec(),
        priority: Priority::Control as u8,
        kind: Kind::Group as u8,
        created_ms: cx.now_ms,
        expires_ms: cx.now_ms.saturating_add(cx.control_ttl_ms),
        route: Route::Auto,
    };
    store
        .insert_outgoing(&row)
        .map_err(|e| GroupError::Internal(e.to_string()))
}

/// Creates a group owned by this node.
pub(crate) fn create(
    store: &mut Store,
    cx: &Cx<'_>,
    name: String,
    description: String,
) -> Result<(GroupInfo, Effects), GroupError> {
    let id = GroupId::random(&mut rand::thread_rng());
    let c = store.connection();
    let tx = c.unchecked_transaction()?;
    let epoch = cx.mls.create(&tx, id)?;
    let info = GroupInfo {
        id,
        name,
        description,
        owner: cx.me(),
        admins: vec![cx.me()],
        members: 1,
        epoch,
        state: GroupState::Active,
        invited_by: None,
        joined_ms: cx.now_ms,
    };
    gstore::save(&tx, &info, None)?;
    gstore::set_members(&tx, id, &[cx.me()])?;
    tx.commit()?;
    let _ = cx.events.send(NodeEvent::GroupChanged {
        group: id,
        epoch,
        state: GroupState::Active,
    });
    Ok((
        info,
        Effects {
            subscribe: vec![id],
            ..Effects::default()
        },
    ))
}

/// A change the owner commits.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    /// Add peers with these (checked) key packages.
    Add(Vec<(PeerId, openmls::prelude::KeyPackage)>),
    /// Remove these peers.
    Remove(Vec<PeerId>),
    /// New admins list.
    Admins(Vec<PeerId>),
    /// New name and/or description.
    Rename(Option<String>, Option<String>),
}

/// Commits a change as the owner: MLS commit merged, post stored for
/// publication, group row updated, Welcome queued for added members.
pub(crate) fn commit(
    store: &mut Store,
    cx: &Cx<'_>,
    id: GroupId,
    change: Change,
) -> Result<(GroupChange, Effects), GroupError> {
    let c = store.connection();
    let mut g = active(c, id)?;
    if g.owner != cx.me() {
        return Err(GroupError::NotOwner(id));
    }
    let mut meta = g.clone();
    match &change {
        Change::Admins(admins) => meta.admins = admins.clone(),
        Change::Rename(name, description) => {
            if let Some(n) = name {
                meta.name = n.clone();
            }
            if let Some(d) = description {
                meta.description = d.clone();
            }
        }
        Change::Remove(peers) => meta.admins.retain(|a| !peers.contains(a)),
        _ => {}
    }
    let aad = meta_of(&meta).encode_to_vec();
    let tx = c.unchecked_transaction()?;
    let committed = match &change {
        Change::Add(added) => {
            let kps: Vec<_> = added.iter().map(|(_, kp)| kp.clone()).collect();
            cx.mls.add(&tx, id, &kps, aad)?
        }
        Change::Remove(peers) => cx.mls.remove(&tx, id, peers, aad)?,
        Change::Admins(_) | Change::Rename(..) => cx.mls.commit_pending(&tx, id, aad)?,
    };
    let post = GroupPost::new(
        *id.as_bytes(),
        committed.epoch,
        true,
        cx.now_ms,
        committed.commit,
    );
    gstore::insert_post(&tx, &super::mailbox::row(&post), PostState::Own, cx.now_ms)?;
    g.name = meta.name;
    g.description = meta.description;
    g.admins = meta.admins;
    g.epoch = committed.epoch + 1;
    g.members = committed.members.len();
    gstore::save(&tx, &g, None)?;
    gstore::set_members(&tx, id, &committed.members)?;
    tx.commit()?;
    let mut effects = Effects {
        publish: vec![(id, post.encoded)],
        ..Effects::default()
    };
    // Implementation notes: the Welcome is queued after the commit is
    // durable; a crash in between leaves the new member without it (the
    // owner can invite it again after removing it).
    if let (Change::Add(added), Some((welcome, tree))) = (&change, committed.welcome) {
        let whole = pb::GroupWelcome {
            group_id: id.as_bytes().to_vec(),
            welcome,
            ratchet_tree: tree,
            meta: Some(meta_of(&g)),
        }
        .encode_to_vec();
        let welcome_id: [u8; 16] = rand::random();
        let parts: Vec<&[u8]> = whole.chunks(WELCOME_PART_BYTES).collect();
        let n = parts.len() as u32;
        for (peer, _) in added {
            for (i, part) in parts.iter().enumerate() {
                let control = pb::GroupControl {
                    control: Some(pb::group_control::Control::Welcome(pb::GroupWelcomePart {
                        welcome_id: welcome_id.to_vec(),
                        part: i as u32,
                        parts: n,
                        bytes: part.to_vec(),
                    })),
                };
                queue_control(store, cx, *peer, control)?;
            }
        }
        effects.outbox = true;
    }
    let _ = cx.events.send(NodeEvent::GroupChanged {
        group: id,
        epoch: g.epoch,
        state: GroupState::Active,
    });
    Ok((GroupChange::Committed { epoch: g.epoch }, effects))
}

/// Checks what an invite needs before the key package is fetched; `Ok(None)`
/// when this node is the owner (fetch and commit), `Ok(Some(change))` when
/// the request went to the owner.
pub(crate) fn invite(
    store: &mut Store,
    cx: &Cx<'_>,
    id: GroupId,
    peers: &[PeerId],
) -> Result<Option<(GroupChange, Effects)>, GroupError> {
    let c = store.connection();
    let g = active(c, id)?;
    if !g.admins.contains(&cx.me()) {
        return Err(GroupError::NotAdmin(id));
    }
    let members = gstore::member_ids(c, id)?;
    for peer in peers {
        if members.contains(peer) || *peer == cx.me() {
            return Err(GroupError::AlreadyMember {
                group: id,
                peer: *peer,
            });
        }
    }
    if g.members + peers.len() > super::MAX_GROUP_MEMBERS {
        return Err(GroupError::Full(id));
    }
    if g.owner == cx.me() {
        return Ok(None);
    }
    let [peer] = peers else {
        return Err(GroupError::NotOwner(id));
    };
    request(
        store,
        cx,
        &g,
        pb::group_request::Action::Invite(peer.to_bytes()),
    )
    .map(Some)
}

fn request(
    store: &mut Store,
    cx: &Cx<'_>,
    g: &GroupInfo,
    action: pb::group_request::Action,
) -> Result<(GroupChange, Effects), GroupError> {
    let control = pb::GroupControl {
        control: Some(pb::group_control::Control::Request(pb::GroupRequest {
            group_id: g.id.as_bytes().to_vec(),
            action: Some(action),
        })),
    };
    queue_control(store, cx, g.owner, control)?;
    Ok((
        GroupChange::Requested { owner: g.owner },
        Effects {
            outbox: true,
            ..Effects::default()
        },
    ))
}

/// Removes a member (owner commits; an admin asks the owner).
pub(crate) fn remove(
    store: &mut Store,
    cx: &Cx<'_>,
    id: GroupId,
    peer: PeerId,
) -> Result<(GroupChange, Effects), GroupError> {
    let c = store.connection();
    let g = active(c, id)?;
    if !g.admins.contains(&cx.me()) {
        return Err(GroupError::NotAdmin(id));
    }
    if !gstore::member_ids(c, id)?.contains(&peer) {
        return Err(GroupError::NoSuchMember { group: id, peer });
    }
    if peer == g.owner {
        return Err(GroupError::Invalid(format!(
            "{peer} owns group {id} and cannot be removed"
        )));
    }
    if g.owner == cx.me() {
        return commit(store, cx, id, Change::Remove(vec![peer]));
    }
    request(
        store,
        cx,
        &g,
        pb::group_request::Action::Remove(peer.to_bytes()),
    )
}

/// Grants or revokes admin rights (owner only).
pub(crate) fn set_admin(
    store: &mut Store,
    cx: &Cx<'_>,
    id: GroupId,
    peer: PeerId,
    admin: bool,
) -> Result<(GroupChange, Effects), GroupError> {
    let c = store.connection();
    let g = active(c, id)?;
    if g.owner != cx.me() {
        return Err(GroupError::NotOwner(id));
    }
    if !gstore::member_ids(c, id)?.contains(&peer) {
        return Err(GroupError::NoSuchMember { group: id, peer });
    }
    if peer == g.owner && !admin {
        return Err(GroupError::Invalid("the owner is always an admin".into()));
    }
    let mut admins = g.admins.clone();
    admins.retain(|a| *a != peer);
    if admin {
        admins.push(peer);
    }
    commit(store, cx, id, Change::Admins(admins))
}

/// Renames (owner commits; an admin asks the owner).
pub(crate) fn rename(
    store: &mut Store,
    cx: &Cx<'_>,
    id: GroupId,
    name: Option<String>,
    description: Option<String>,
) -> Result<(GroupChange, Effects), GroupError> {
    let c = store.connection();
    let g = active(c, id)?;
    if !g.admins.contains(&cx.me()) {
        return Err(GroupError::NotAdmin(id));
    }
    if g.owner == cx.me() {
        return commit(store, cx, id, Change::Rename(name, description));
    }
    let meta = pb::GroupMeta {
        name: name.unwrap_or(g.name.clone()),
        description: description.unwrap_or(g.description.clone()),
        owner: Vec::new(),
        admins: Vec::new(),
    };
    request(store, cx, &g, pb::group_request::Action::Rename(meta))
}

/// Leaves: a self-remove proposal to the owner.
pub(crate) fn leave(
    store: &mut Store,
    cx: &Cx<'_>,
    id: GroupId,
) -> Result<(GroupChange, Effects), GroupError> {
    let c = store.connection();
    let mut g = active(c, id)?;
    if g.owner == cx.me() {
        return Err(GroupError::OwnerCannotLeave(id));
    }
    let proposal = cx.mls.leave_proposal(c, id)?;
    let (change, mut effects) = request(store, cx, &g, pb::group_request::Action::Leave(proposal))?;
    g.state = GroupState::Left;
    gstore::save(store.connection(), &g, None)?;
    effects.unsubscribe.push(id);
    let _ = cx.events.send(NodeEvent::GroupChanged {
        group: id,
        epoch: g.epoch,
        state: GroupState::Left,
    });
    Ok((change, effects))
}

/// Encrypts and records a message of ours.
pub(crate) fn send(
    store: &mut Store,
    cx: &Cx<'_>,
    id: GroupId,
    body: Vec<u8>,
) -> Result<(GroupMessage, Effects), GroupError> {
    let c = store.connection();
    active(c, id)?;
    let msg_id: [u8; 16] = rand::random();
    let content = pb::GroupContent {
        id: msg_id.to_vec(),
        created_ms: cx.now_ms,
        body: body.clone(),
    }
    .encode_to_vec();
    let tx = c.unchecked_transaction()?;
    let (epoch, mls) = cx.mls.encrypt(&tx, id, &content)?;
    let post = GroupPost::new(*id.as_bytes(), epoch, false, cx.now_ms, mls);
    gstore::insert_post(&tx, &super::mailbox::row(&post), PostState::Own, cx.now_ms)?;
    let seq = gstore::insert_message(
        &tx,
        &NewGroupMessage {
            group: id,
            msg_id,
            sender: cx.me(),
            body: &body,
            epoch,
            created_ms: cx.now_ms,
            received_ms: cx.now_ms,
        },
    )?
    .unwrap_or(0);
    tx.commit()?;
    let post_bytes = post.encoded.len();
    let _ = cx.events.send(NodeEvent::GroupMessage {
        group: id,
        seq,
        from: cx.me(),
    });
    Ok((
        GroupMessage {
            seq,
            id: hex::encode(msg_id),
            group: id,
            sender: cx.me(),
            body,
            epoch,
            created_ms: cx.now_ms,
            received_ms: cx.now_ms,
            post_bytes,
        },
        Effects {
            publish: vec![(id, post.encoded)],
            ..Effects::default()
        },
    ))
}

/// Stores posts fetched from a mailbox, to apply once the catch-up ends.
pub(crate) fn store_posts(
    store: &mut Store,
    cx: &Cx<'_>,
    posts: Vec<GroupPost>,
) -> Result<(), GroupError> {
    let c = store.connection();
    for post in posts {
        let id = GroupId::from(post.group_id);
        if gstore::state(c, id)? == Some(GroupState::Active) {
            gstore::insert_post(
                c,
                &super::mailbox::row(&post),
                PostState::Pending,
                cx.now_ms,
            )?;
        }
    }
    Ok(())
}

/// Stores posts that arrived on the topic and applies what can be.
pub(crate) fn receive(
    store: &mut Store,
    cx: &Cx<'_>,
    posts: Vec<GroupPost>,
) -> Result<Effects, GroupError> {
    let c = store.connection();
    let mut groups = Vec::new();
    for post in posts {
        let id = GroupId::from(post.group_id);
        if gstore::state(c, id)? != Some(GroupState::Active) {
            continue;
        }
        if gstore::insert_post(
            c,
            &super::mailbox::row(&post),
            PostState::Pending,
            cx.now_ms,
        )? && !groups.contains(&id)
        {
            groups.push(id);
        }
    }
    let mut effects = Effects::default();
    for id in groups {
        effects.merge(apply(store, cx, id)?);
    }
    Ok(effects)
}

/// Applies a group's pending posts in order while their epoch is reached.
pub(crate) fn apply(store: &mut Store, cx: &Cx<'_>, id: GroupId) -> Result<Effects, GroupError> {
    let mut effects = Effects::default();
    let c = store.connection();
    let Some(mut g) = gstore::find(c, id)? else {
        return Ok(effects);
    };
    for post in gstore::pending_posts(c, id, APPLY_BATCH)? {
        if g.state != GroupState::Active {
            break;
        }
        if post.epoch > g.epoch {
            // A gap: the commits before it are missing.
            effects.catch_up.push(id);
            break;
        }
        if post.is_commit && post.epoch < g.epoch {
            gstore::set_post_state(c, &post.post_id, PostState::Failed)?;
            continue;
        }
        let decoded = match GroupPost::decode(&post.post) {
            Ok(p) => p,
            Err(_) => {
                gstore::set_post_state(c, &post.post_id, PostState::Failed)?;
                continue;
            }
        };
        let tx = c.unchecked_transaction()?;
        match cx.mls.process(&tx, id, &decoded.mls, g.owner) {
            Ok(Processed::Application {
                sender,
                plaintext,
                epoch,
            }) => {
                let Ok(content) = pb::GroupContent::decode(plaintext.as_slice()) else {
                    drop(tx);
                    gstore::set_post_state(c, &post.post_id, PostState::Failed)?;
                    continue;
                };
                let msg_id = <[u8; 16]>::try_from(content.id.as_slice()).unwrap_or(post.post_id);
                let seq = gstore::insert_message(
                    &tx,
                    &NewGroupMessage {
                        group: id,
                        msg_id,
                        sender,
                        body: &content.body,
                        epoch,
                        created_ms: content.created_ms,
                        received_ms: cx.now_ms,
                    },
                )?;
                gstore::set_post_state(&tx, &post.post_id, PostState::Applied)?;
                tx.commit()?;
                if let Some(seq) = seq {
                    let _ = cx.events.send(NodeEvent::GroupMessage {
                        group: id,
                        seq,
                        from: sender,
                    });
                }
            }
            Ok(Processed::Commit {
                aad,
                epoch,
                removed_me,
                members,
                ..
            }) => {
                if let Ok(meta) = pb::GroupMeta::decode(aad.as_slice()) {
                    apply_meta(&mut g, &meta);
                }
                g.epoch = epoch;
                g.members = members.len();
                if removed_me {
                    g.state = GroupState::Removed;
                    effects.unsubscribe.push(id);
                }
                gstore::save(&tx, &g, None)?;
                gstore::set_members(&tx, id, &members)?;
                gstore::set_post_state(&tx, &post.post_id, PostState::Applied)?;
                tx.commit()?;
                if removed_me {
                    // Nothing after this commit is for us; its keys go.
                    cx.mls.delete(c, id)?;
                }
                let _ = cx.events.send(NodeEvent::GroupChanged {
                    group: id,
                    epoch,
                    state: g.state,
                });
            }
            Ok(Processed::Own) => {
                drop(tx);
                gstore::set_post_state(c, &post.post_id, PostState::Applied)?;
            }
            Ok(Processed::Proposal { .. }) | Err(_) => {
                drop(tx);
                gstore::set_post_state(c, &post.post_id, PostState::Failed)?;
            }
        }
    }
    Ok(effects)
}

/// Handles group control messages that arrived in the inbox.
pub(crate) fn control(store: &mut Store, cx: &Cx<'_>, after: i64) -> Result<Effects, GroupError> {
    let mut effects = Effects::default();
    let rows = gstore::control_messages(store.connection(), after, CONTROL_BATCH)?;
    for (seq, id, from, body) in rows {
        match pb::GroupControl::decode(body.as_slice()) {
            Ok(control) => match on_control(store, cx, from, control) {
                Ok(e) => effects.merge(e),
                Err(e) => tracing::debug!(%from, "group control message refused: {e}"),
            },
            Err(e) => tracing::debug!(%from, "malformed group control message: {e}"),
        }
        gstore::control_done(store.connection(), &id)?;
        effects.control_seq = Some(seq);
    }
    Ok(effects)
}

fn on_control(
    store: &mut Store,
    cx: &Cx<'_>,
    from: PeerId,
    control: pb::GroupControl,
) -> Result<Effects, GroupError> {
    match control.control {
        Some(pb::group_control::Control::Welcome(part)) => {
            if part.parts == 0 || part.parts > 64 || part.part >= part.parts {
                return Err(GroupError::Invalid("bad Welcome part numbers".into()));
            }
            let Some(whole) = gstore::welcome_part(
                store.connection(),
                &part.welcome_id,
                part.part,
                part.parts,
                from,
                &part.bytes,
                cx.now_ms,
            )?
            else {
                return Ok(Effects::default());
            };
            on_welcome(store, cx, from, &whole)
        }
        Some(pb::group_control::Control::Request(request)) => on_request(store, cx, from, request),
        None => Err(GroupError::Invalid("empty control message".into())),
    }
}

fn on_welcome(
    store: &mut Store,
    cx: &Cx<'_>,
    from: PeerId,
    whole: &[u8],
) -> Result<Effects, GroupError> {
    let welcome = pb::GroupWelcome::decode(whole)
        .map_err(|e| GroupError::Invalid(format!("malformed Welcome: {e}")))?;
    let id = GroupId::from_slice(&welcome.group_id)
        .ok_or_else(|| GroupError::Invalid("bad group id".into()))?;
    let meta = welcome.meta.clone().unwrap_or_default();
    if PeerId::from_bytes(&meta.owner).ok() != Some(from) {
        return Err(GroupError::Invalid(
            "a Welcome must come from the group's owner".into(),
        ));
    }
    let c = store.connection();
    if let Some(g) = gstore::find(c, id)? {
        if g.state == GroupState::Active {
            return Ok(Effects::default());
        }
    }
    let mut g = GroupInfo {
        id,
        name: String::new(),
        description: String::new(),
        owner: from,
        admins: vec![from],
        members: 0,
        epoch: 0,
        state: GroupState::Invited,
        invited_by: Some(from),
        joined_ms: cx.now_ms,
    };
    apply_meta(&mut g, &meta);
    gstore::save(c, &g, Some(whole))?;
    let _ = cx.events.send(NodeEvent::GroupInvited { group: id, from });
    if cx.auto_join {
        return join(store, cx, id).map(|(_, e)| e);
    }
    Ok(Effects::default())
}

/// Joins a group from its held Welcome.
pub(crate) fn join(
    store: &mut Store,
    cx: &Cx<'_>,
    id: GroupId,
) -> Result<(GroupInfo, Effects), GroupError> {
    let c = store.connection();
    let mut g = gstore::info(c, id)?;
    if g.state == GroupState::Active {
        return Ok((g, Effects::default()));
    }
    let whole = gstore::welcome(c, id)?.ok_or(GroupError::NotMember {
        group: id,
        state: g.state.as_str(),
    })?;
    let welcome = pb::GroupWelcome::decode(whole.as_slice())
        .map_err(|e| GroupError::Invalid(format!("malformed Welcome: {e}")))?;
    let tx = c.unchecked_transaction()?;
    // A group we were in before (removed, left) starts afresh.
    cx.mls.delete(&tx, id)?;
    let (joined, epoch, members) = cx.mls.join(&tx, &welcome.welcome, &welcome.ratchet_tree)?;
    if joined != id {
        return Err(GroupError::Invalid(
            "the Welcome is for another group".into(),
        ));
    }
    g.state = GroupState::Active;
    g.epoch = epoch;
    g.members = members.len();
    g.joined_ms = cx.now_ms;
    gstore::save(&tx, &g, None)?;
    gstore::clear_welcome(&tx, id)?;
    gstore::set_members(&tx, id, &members)?;
    tx.commit()?;
    let _ = cx.events.send(NodeEvent::GroupChanged {
        group: id,
        epoch,
        state: GroupState::Active,
    });
    let mut effects = Effects {
        subscribe: vec![id],
        catch_up: vec![id],
        key_packages: true,
        ..Effects::default()
    };
    effects.merge(refresh_key_packages(store, cx)?);
    Ok((g, effects))
}

fn on_request(
    store: &mut Store,
    cx: &Cx<'_>,
    from: PeerId,
    request: pb::GroupRequest,
) -> Result<Effects, GroupError> {
    let id = GroupId::from_slice(&request.group_id)
        .ok_or_else(|| GroupError::Invalid("bad group id".into()))?;
    let c = store.connection();
    let g = active(c, id)?;
    if g.owner != cx.me() {
        return Err(GroupError::NotOwner(id));
    }
    let members = gstore::member_ids(c, id)?;
    if !members.contains(&from) {
        return Err(GroupError::NoSuchMember {
            group: id,
            peer: from,
        });
    }
    let is_admin = g.admins.contains(&from);
    let peer_of =
        |b: &[u8]| PeerId::from_bytes(b).map_err(|_| GroupError::Invalid("bad peer id".into()));
    use pb::group_request::Action;
    match request.action {
        Some(Action::Invite(peer)) if is_admin => {
            let peer = peer_of(&peer)?;
            if members.contains(&peer) {
                return Ok(Effects::default());
            }
            Ok(Effects {
                invite: vec![(id, peer)],
                ..Effects::default()
            })
        }
        Some(Action::Remove(peer)) if is_admin => {
            let peer = peer_of(&peer)?;
            if !members.contains(&peer) || peer == g.owner {
                return Ok(Effects::default());
            }
            commit(store, cx, id, Change::Remove(vec![peer])).map(|(_, e)| e)
        }
        Some(Action::Rename(meta)) if is_admin => commit(
            store,
            cx,
            id,
            Change::Rename(Some(meta.name), Some(meta.description)),
        )
        .map(|(_, e)| e),
        Some(Action::Leave(proposal)) => {
            // The proposal went to the owner alone, so the other members
            // cannot resolve a commit that names it by reference
            // (ProposalNotFound): the owner checks it (when it is of this
            // epoch) and removes the sender by value. The envelope's
            // signature (the leaving member's own key) is authority enough
            // when the proposal is of an earlier epoch. Nothing of the
            // check is kept: the transaction is dropped.
            let tx = store.connection().unchecked_transaction()?;
            let checked = cx.mls.process(&tx, id, &proposal, g.owner);
            drop(tx);
            if let Ok(Processed::Proposal {
                sender,
                self_remove,
            }) = checked
            {
                if sender != from || !self_remove {
                    return Err(GroupError::Invalid(format!(
                        "a leave request from {from} carries a proposal that is not its own removal"
                    )));
                }
            }
            commit(store, cx, id, Change::Remove(vec![from])).map(|(_, e)| e)
        }
        _ => Err(GroupError::NotAdmin(id)),
    }
}

/// Keeps `cx.key_packages` fresh key packages and a last-resort one:
/// forgets those a Welcome used, makes new ones.
pub(crate) fn refresh_key_packages(store: &mut Store, cx: &Cx<'_>) -> Result<Effects, GroupError> {
    let c = store.connection();
    let held = gstore::key_packages(c)?;
    let mut changed = false;
    let (mut fresh, mut last_resort) = (0, false);
    for (hash, _, lr) in &held {
        if cx.mls.has_key_package(c, hash) {
            if *lr {
                last_resort = true;
            } else {
                fresh += 1;
            }
        } else {
            gstore::remove_key_package(c, hash)?;
            changed = true;
        }
    }
    let missing = cx.key_packages.saturating_sub(fresh);
    if missing > 0 || !last_resort {
        let tx = c.unchecked_transaction()?;
        for (hash, kp, lr) in cx.mls.make_key_packages(&tx, missing, !last_resort)? {
            gstore::add_key_package(&tx, &hash, &kp, lr, cx.now_ms)?;
        }
        tx.commit()?;
        changed = true;
    }
    Ok(Effects {
        key_packages: changed,
        ..Effects::default()
    })
}
