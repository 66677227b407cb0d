//! The event loop's side of groups: MLS work on blocking threads (see
//! `groups::engine`), posts on gossipsub and in the group mailboxes, key
//! packages in the DHT, control messages through the outbox.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::kad::{self, store::RecordStore as _, QueryId};
use libp2p::request_response::OutboundRequestId;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::PeerId;
use peercomm_store::Store;
use peercomm_wire::group::{
    key_packages_key, sign_key_packages, verify_key_packages, GroupGossip, GroupPost, KeyPackages,
    PostAnnounce, PostKey,
};
use peercomm_wire::pb::MailDepositCode;
use peercomm_wire::{MailboxRequest, MailboxResponse};
use tokio::sync::oneshot;

use super::{EventLoop, Internal};
use crate::groups::engine::{self, Change, Cx, Effects};
use crate::groups::mailbox::group_mailbox_key;
use crate::groups::mls::Mls;
use crate::groups::pull::{on_announce, OnAnnounce, PostCache, Pull, PULL_FROM_BYTES};
use crate::groups::store as gstore;
use crate::groups::{GroupChange, GroupCommand, GroupError, GroupId, GroupState};
use crate::mailbox::by_distance;
use crate::stats::bump;

/// How long a group's mailbox set is reused before it is looked up again.
const MAILBOXES_FOR: Duration = Duration::from_secs(300);
/// How often own posts not yet deposited are looked at again.
const DEPOSIT_RETRY: Duration = Duration::from_secs(5);
/// How often members are dialled to keep each group's mesh.
const CONNECT_EVERY: Duration = Duration::from_secs(5);
/// How often the key-package record is published again.
const KEY_PACKAGES_EVERY: Duration = Duration::from_secs(30 * 60);
/// Lifetime of the published key-package record.
const KEY_PACKAGES_TTL: Duration = Duration::from_secs(2 * 3600);
/// Own posts deposited per pass, at most.
const DEPOSIT_BATCH: u32 = 32;
/// A group's mailbox candidates are the nearest `MAILBOX_SPREAD × R`
/// peers: a deposit that a mailbox refuses (offline, full) goes to the next
/// one, and a catch-up asks them all.
const MAILBOX_SPREAD: usize = 3;
/// With idle tuning, a member in its group's mesh polls the group's
/// mailboxes only every this many catch-up intervals.
const IN_MESH_CATCH_UP_EVERY: u32 = 8;

/// Who waits for a key-package lookup.
#[derive(Debug)]
struct KeyPackageWait {
    batch: u64,
    peer: PeerId,
}

/// Invites waiting for their key packages, committed together.
#[derive(Debug)]
struct InviteBatch {
    group: GroupId,
    pending: usize,
    found: Vec<(PeerId, openmls::prelude::KeyPackage)>,
    missing: Vec<PeerId>,
    reply: Option<oneshot::Sender<Result<GroupChange, GroupError>>>,
}

/// A post on its way to R group mailboxes.
#[derive(Debug)]
struct Deposit {
    post: Vec<u8>,
    /// Answers awaited.
    pending: usize,
    /// Mailboxes that hold it.
    accepted: usize,
    /// Candidates not asked yet, nearest first.
    spare: Vec<PeerId>,
}

/// What a group mailbox lookup is for.
#[derive(Debug, Clone, Copy)]
enum Placement {
    Deposit,
    CatchUp,
}

/// An outbound group mailbox request.
#[derive(Debug)]
enum Outbound {
    Deposit {
        post: [u8; 16],
    },
    Fetch {
        group: GroupId,
        /// Where every mailbox's fetch starts.
        start: PostKey,
        /// Mailboxes still to ask after this one.
        rest: Vec<PeerId>,
    },
    /// An announced post, from a member.
    Pull {
        post: [u8; 16],
    },
}

/// Group state kept by the event loop.
pub(super) struct GroupsState {
    mls: Arc<Mls>,
    subscribed: HashSet<GroupId>,
    /// Active groups with their members, as last read.
    members: HashMap<GroupId, Vec<PeerId>>,
    key_package_gets: HashMap<QueryId, KeyPackageWait>,
    batches: HashMap<u64, InviteBatch>,
    next_batch: u64,
    key_package_put: Option<QueryId>,
    key_packages_dirty: bool,
    key_packages_at: Option<Instant>,
    key_package_seq: u64,
    /// Mailbox sets by group, with when they were found.
    mailboxes: HashMap<GroupId, (Vec<PeerId>, Instant)>,
    lookups: HashMap<QueryId, (GroupId, Placement)>,
    outbound: HashMap<OutboundRequestId, Outbound>,
    /// Own posts being deposited: (answers awaited, accepted).
    depositing: HashMap<[u8; 16], Deposit>,
    /// Own posts waiting for their group's mailbox set.
    waiting_deposit: HashMap<GroupId, Vec<Vec<u8>>>,
    /// Groups with a catch-up under way.
    catching_up: HashSet<GroupId>,
    caught_up_at: Option<Instant>,
    /// Periodic catch-up rounds so far.
    catch_up_rounds: u32,
    /// When this run of the node started (node clock, ms).
    started_ms: u64,
    /// Groups for which a mailbox has answered a catch-up since start, or
    /// joined since start.
    resumed: HashSet<GroupId>,
    /// Whether the groups were read once since start.
    members_read: bool,
    connected_at: Option<Instant>,
    deposited_at: Option<Instant>,
    /// Inbox position of the last control message handled.
    control_seq: i64,
    control_received: u64,
    control_running: bool,
    started: bool,
    /// Large posts we can serve to members that heard their announcement.
    cache: PostCache,
    /// Announced posts being fetched, by post id.
    pulls: HashMap<[u8; 16], Pull>,
}

impl GroupsState {
    pub(super) fn new(mls: Arc<Mls>) -> Self {
        Self {
            mls,
            subscribed: HashSet::new(),
            members: HashMap::new(),
            key_package_gets: HashMap::new(),
            batches: HashMap::new(),
            next_batch: 0,
            key_package_put: None,
            key_packages_dirty: true,
            key_packages_at: None,
            key_package_seq: 0,
            mailboxes: HashMap::new(),
            lookups: HashMap::new(),
            outbound: HashMap::new(),
            depositing: HashMap::new(),
            waiting_deposit: HashMap::new(),
            catching_up: HashSet::new(),
            caught_up_at: None,
            catch_up_rounds: 0,
            started_ms: 0,
            resumed: HashSet::new(),
            members_read: false,
            connected_at: None,
            deposited_at: None,
            control_seq: 0,
            control_received: u64::MAX,
            control_running: false,
            started: false,
            cache: PostCache::default(),
            pulls: HashMap::new(),
        }
    }

    /// Whether a DHT query is ours.
    pub(super) fn owns_query(&self, query: &QueryId) -> bool {
        self.lookups.contains_key(query)
            || self.key_package_gets.contains_key(query)
            || self.key_package_put == Some(*query)
    }

    /// Whether a mailbox request is ours.
    pub(super) fn owns_request(&self, request: &OutboundRequestId) -> bool {
        self.outbound.contains_key(request)
    }
}

/// Results of group work, back to the loop.
#[derive(Debug)]
pub(super) enum GroupDone {
    Effects(Effects),
    /// Active groups and their members, read at start and after changes.
    Members(HashMap<GroupId, Vec<PeerId>>),
    /// Our key packages, to publish.
    KeyPackages(Vec<(Vec<u8>, bool)>),
    /// Own posts to deposit.
    Undeposited(Vec<(GroupId, Vec<u8>)>),
    /// The catch-up cursor of a group.
    Cursor(GroupId, PostKey, Vec<PeerId>),
    /// Control messages were handled.
    Control(Effects),
    /// A fetched page was stored.
    Page {
        group: GroupId,
        start: PostKey,
        next: Option<(PostKey, PeerId)>,
        rest: Vec<PeerId>,
    },
}

impl EventLoop {
    fn cx_parts(
        &self,
    ) -> (
        Arc<Mls>,
        tokio::sync::broadcast::Sender<crate::NodeEvent>,
        bool,
        u64,
        usize,
    ) {
        let c = &self.shared.config;
        (
            self.groups.mls.clone(),
            self.shared.events.clone(),
            c.groups.auto_join,
            u64::try_from(c.delivery.default_ttl.as_millis()).unwrap_or(u64::MAX),
            c.groups.key_packages,
        )
    }

    /// Runs `work` on a blocking thread with what group work needs.
    fn group_background(
        &mut self,
        work: impl FnOnce(&mut Store, &Cx<'_>) -> Option<Internal> + Send + 'static,
    ) {
        let (mls, events, auto_join, control_ttl_ms, key_packages) = self.cx_parts();
        let now_ms = self.now_ms();
        self.background(move |store| {
            let cx = Cx {
                mls: &mls,
                events: &events,
                now_ms,
                auto_join,
                control_ttl_ms,
                key_packages,
            };
            work(store, &cx)
        });
    }

    /// Runs group work on a blocking thread; its effects come back as
    /// `Internal::Group`, its result goes to `reply`.
    fn group_work<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut Store, &Cx<'_>) -> Result<(T, Effects), GroupError> + Send + 'static,
        reply: impl FnOnce(Result<T, GroupError>) + Send + 'static,
    ) {
        self.group_background(move |store, cx| match work(store, cx) {
            Ok((value, effects)) => {
                reply(Ok(value));
                Some(Internal::Group(GroupDone::Effects(effects)))
            }
            Err(e) => {
                reply(Err(e));
                None
            }
        });
    }

    pub(super) fn on_group_command(&mut self, command: GroupCommand) {
        match command {
            GroupCommand::Create {
                name,
                description,
                reply,
            } => self.group_work(
                move |s, cx| engine::create(s, cx, name, description),
                move |r| {
                    let _ = reply.send(r);
                },
            ),
            GroupCommand::Invite {
                group,
                peers,
                reply,
            } => {
                // The owner fetches the key package first; the reply waits.
                self.group_background(move |store, cx| {
                    match engine::invite(store, cx, group, &peers) {
                        Ok(None) => Some(Internal::GroupInvite {
                            group,
                            peers,
                            reply,
                        }),
                        Ok(Some((change, effects))) => {
                            let _ = reply.send(Ok(change));
                            Some(Internal::Group(GroupDone::Effects(effects)))
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                            None
                        }
                    }
                });
            }
            GroupCommand::Join { group, reply } => self.group_work(
                move |s, cx| engine::join(s, cx, group),
                move |r| {
                    let _ = reply.send(r);
                },
            ),
            GroupCommand::Leave { group, reply } => self.group_work(
                move |s, cx| engine::leave(s, cx, group),
                move |r| {
                    let _ = reply.send(r);
                },
            ),
            GroupCommand::Remove { group, peer, reply } => self.group_work(
                move |s, cx| engine::remove(s, cx, group, peer),
                move |r| {
                    let _ = reply.send(r);
                },
            ),
            GroupCommand::SetAdmin {
                group,
                peer,
                admin,
                reply,
            } => self.group_work(
                move |s, cx| engine::set_admin(s, cx, group, peer, admin),
                move |r| {
                    let _ = reply.send(r);
                },
            ),
            GroupCommand::Rename {
                group,
                name,
                description,
                reply,
            } => self.group_work(
                move |s, cx| engine::rename(s, cx, group, name, description),
                move |r| {
                    let _ = reply.send(r);
                },
            ),
            GroupCommand::Send { group, body, reply } => self.group_work(
                move |s, cx| engine::send(s, cx, group, body),
                move |r| {
                    let _ = reply.send(r);
                },
            ),
        }
    }

    /// The owner invites `peers`: their key-package records from the DHT,
    /// then one commit adding every peer whose key package was found.
    pub(super) fn group_fetch_key_packages(
        &mut self,
        group: GroupId,
        peers: Vec<PeerId>,
        reply: Option<oneshot::Sender<Result<GroupChange, GroupError>>>,
    ) {
        let batch = self.groups.next_batch;
        self.groups.next_batch += 1;
        self.groups.batches.insert(
            batch,
            InviteBatch {
                group,
                pending: peers.len(),
                found: Vec::new(),
                missing: Vec::new(),
                reply,
            },
        );
        for peer in peers {
            let query = self
                .swarm
                .behaviour_mut()
                .kad
                .get_record(kad::RecordKey::new(&key_packages_key(&peer)));
            self.groups
                .key_package_gets
                .insert(query, KeyPackageWait { batch, peer });
        }
    }

    fn on_key_package_record(&mut self, query: QueryId, record: kad::Record) {
        let now = self.now_ms();
        let Some(wait) = self.groups.key_package_gets.get(&query) else {
            return;
        };
        let Ok(kps) = verify_key_packages(&record.value, now) else {
            bump(&self.shared.stats.records_rejected);
            return;
        };
        if kps.peer != wait.peer {
            bump(&self.shared.stats.records_rejected);
            return;
        }
        // A fresh one at random, else the last-resort one.
        let mls = self.groups.mls.clone();
        let peer = wait.peer;
        let mut candidates: Vec<Vec<u8>> = kps.fresh;
        use rand::seq::SliceRandom;
        candidates.shuffle(&mut self.rng);
        candidates.push(kps.last_resort);
        let Some(kp) = candidates
            .iter()
            .find_map(|b| mls.check_key_package(b, peer).ok())
        else {
            return;
        };
        if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&query) {
            q.finish();
        }
        self.key_package_settled(query, Some(kp));
    }

    /// One peer of a batch is settled (its key package, or none).
    fn key_package_settled(&mut self, query: QueryId, kp: Option<openmls::prelude::KeyPackage>) {
        let Some(wait) = self.groups.key_package_gets.remove(&query) else {
            return;
        };
        let Some(batch) = self.groups.batches.get_mut(&wait.batch) else {
            return;
        };
        match kp {
            Some(kp) => batch.found.push((wait.peer, kp)),
            None => batch.missing.push(wait.peer),
        }
        batch.pending -= 1;
        if batch.pending > 0 {
            return;
        }
        let Some(batch) = self.groups.batches.remove(&wait.batch) else {
            return;
        };
        if batch.found.is_empty() {
            if let (Some(reply), Some(peer)) = (batch.reply, batch.missing.first()) {
                let _ = reply.send(Err(GroupError::NoKeyPackage(*peer)));
            }
            return;
        }
        if !batch.missing.is_empty() {
            tracing::info!(missing = ?batch.missing, "invited without them: no key package in the DHT");
        }
        let group = batch.group;
        let reply = batch.reply;
        let found = batch.found;
        self.group_work(
            move |s, cx| engine::commit(s, cx, group, Change::Add(found)),
            move |r| {
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
            },
        );
    }

    fn on_key_package_lookup_done(&mut self, query: QueryId) {
        if self.groups.key_package_gets.contains_key(&query) {
            self.key_package_settled(query, None);
        }
    }

    /// A DHT event for one of our queries.
    pub(super) fn on_group_query(&mut self, query: QueryId, result: kad::QueryResult, last: bool) {
        match result {
            kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(found))) => {
                self.on_key_package_record(query, found.record);
                if last {
                    self.on_key_package_lookup_done(query);
                }
            }
            kad::QueryResult::GetRecord(_) if last => self.on_key_package_lookup_done(query),
            kad::QueryResult::PutRecord(r) if last => {
                self.groups.key_package_put = None;
                if r.is_err() {
                    tracing::debug!("key-package record publish reached nobody; retrying later");
                    self.groups.key_packages_dirty = true;
                    // Not out: a restart must not take it for published.
                    let key = kad::RecordKey::new(&key_packages_key(&self.shared.peer_id));
                    self.swarm.behaviour_mut().kad.store_mut().remove(&key);
                }
            }
            kad::QueryResult::GetClosestPeers(result) => {
                let peers = match result {
                    Ok(ok) => ok.peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                let Some((group, placement)) = self.groups.lookups.remove(&query) else {
                    return;
                };
                let me = self.shared.peer_id;
                let r = self.shared.config.mailbox.replicas;
                let key = group_mailbox_key(&group);
                let mut set: Vec<PeerId> = peers.into_iter().map(|p| p.peer_id).collect();
                // We are a candidate too when we are among the nearest.
                set.push(me);
                let set: Vec<PeerId> = by_distance(&key, set)
                    .into_iter()
                    .take(r * MAILBOX_SPREAD)
                    .collect();
                self.groups.mailboxes.insert(group, (set, Instant::now()));
                match placement {
                    Placement::Deposit => {
                        for post in self
                            .groups
                            .waiting_deposit
                            .remove(&group)
                            .unwrap_or_default()
                        {
                            self.group_deposit(group, post);
                        }
                    }
                    Placement::CatchUp => self.group_catch_up(group),
                }
            }
            _ => {}
        }
    }

    fn group_mailboxes(&mut self, group: GroupId, placement: Placement) -> Option<Vec<PeerId>> {
        if let Some((set, at)) = self.groups.mailboxes.get(&group) {
            if at.elapsed() < MAILBOXES_FOR && !set.is_empty() {
                return Some(set.clone());
            }
        }
        if !self.groups.lookups.values().any(|(g, p)| {
            *g == group
                && matches!(
                    (p, placement),
                    (Placement::Deposit, Placement::Deposit)
                        | (Placement::CatchUp, Placement::CatchUp)
                )
        }) {
            let query = self
                .swarm
                .behaviour_mut()
                .kad
                .get_closest_peers(group_mailbox_key(&group));
            self.groups.lookups.insert(query, (group, placement));
        }
        None
    }

    /// Publishes a post on its topic and deposits it with the group's
    /// mailboxes. With gossip tuning a large post is announced on the topic
    /// and served from our cache to the members that ask (`groups::pull`).
    fn group_publish(&mut self, group: GroupId, post: Vec<u8>) {
        let topic = IdentTopic::new(group.topic());
        let announced = (self.shared.config.bandwidth.gossip_tuning_on()
            && post.len() >= PULL_FROM_BYTES)
            .then(|| GroupPost::decode(&post).ok())
            .flatten()
            .map(|p| {
                let announce = PostAnnounce::of(&p);
                self.groups
                    .cache
                    .insert(p.group_id, p.key.post_id, p.encoded, Instant::now());
                announce.encode()
            });
        let is_announcement = announced.is_some();
        let gossip = announced.unwrap_or_else(|| post.clone());
        match self.swarm.behaviour_mut().gossipsub.publish(topic, gossip) {
            Ok(_) => {
                bump(&self.shared.stats.group_posts_published);
                if is_announcement {
                    bump(&self.shared.stats.group_posts_announced);
                }
            }
            Err(e) => tracing::debug!(%group, "not published on the topic: {e}"),
        }
        self.group_deposit(group, post);
    }

    /// A member asks for an announced post: ours or one we pulled.
    pub(super) fn group_serve_pull(&self, group_id: &[u8; 16], post_id: &[u8; 16]) -> Vec<Vec<u8>> {
        self.groups
            .cache
            .get(group_id, post_id)
            .map(|p| vec![p.to_vec()])
            .unwrap_or_default()
    }

    /// Heard an announcement: serve it on at once if we hold the post, or
    /// fetch the post from `source` first. `None` while the fetch runs.
    fn on_post_announce(
        &mut self,
        announce: PostAnnounce,
        message_id: gossipsub::MessageId,
        source: PeerId,
        author: Option<PeerId>,
    ) -> Option<MessageAcceptance> {
        let post = announce.key.post_id;
        match on_announce(
            self.groups.cache.get(&announce.group_id, &post).is_some(),
            self.groups.pulls.contains_key(&post),
            self.groups.pulls.len(),
        ) {
            OnAnnounce::Accept => return Some(MessageAcceptance::Accept),
            OnAnnounce::AlreadyPulling => return Some(MessageAcceptance::Ignore),
            OnAnnounce::Busy => {
                // Too many at once: the group's mailboxes have it too.
                bump(&self.shared.stats.group_pulls_failed);
                self.group_catch_up_soon(GroupId::from(announce.group_id));
                return Some(MessageAcceptance::Ignore);
            }
            OnAnnounce::Pull => {}
        }
        let pull = Pull {
            announce,
            message_id,
            source,
            fallback: author.filter(|a| *a != source && *a != self.shared.peer_id),
        };
        self.group_pull_from(source, pull);
        None
    }

    fn group_pull_from(&mut self, peer: PeerId, pull: Pull) {
        let post = pull.announce.key.post_id;
        let request = MailboxRequest::GroupGet {
            group_id: pull.announce.group_id,
            post_id: post,
        };
        let request_id = self
            .swarm
            .behaviour_mut()
            .mailbox
            .send_request(&peer, request.encode());
        self.groups
            .outbound
            .insert(request_id, Outbound::Pull { post });
        self.groups.pulls.insert(post, pull);
    }

    /// The answer to a pull: the post (applied, kept to serve, and its
    /// announcement passed on), or the next peer to ask, or catch-up.
    fn on_pulled(&mut self, post: [u8; 16], peer: PeerId, response: MailboxResponse) {
        let Some(mut pull) = self.groups.pulls.remove(&post) else {
            return;
        };
        let found = match response {
            MailboxResponse::GroupPage { posts, .. } => posts
                .iter()
                .filter_map(|p| GroupPost::decode(p).ok())
                .find(|p| pull.announce.matches(p)),
            _ => None,
        };
        let accept = match found {
            Some(p) => {
                bump(&self.shared.stats.group_posts_received);
                bump(&self.shared.stats.group_posts_pulled);
                self.groups
                    .cache
                    .insert(p.group_id, post, p.encoded.clone(), Instant::now());
                self.group_receive(vec![p]);
                MessageAcceptance::Accept
            }
            None => {
                tracing::debug!(%peer, "a member did not serve an announced post");
                if let Some(next) = pull.fallback.take() {
                    self.group_pull_from(next, pull);
                    return;
                }
                bump(&self.shared.stats.group_pulls_failed);
                self.group_catch_up_soon(GroupId::from(pull.announce.group_id));
                MessageAcceptance::Ignore
            }
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&pull.message_id, &pull.source, accept);
    }

    /// Catches up from the group's mailboxes unless a catch-up is already
    /// under way (e.g. an announced post could not be fetched: the author
    /// deposited it with them).
    fn group_catch_up_soon(&mut self, group: GroupId) {
        if !self.groups.catching_up.contains(&group) {
            self.group_catch_up(group);
        }
    }

    fn group_deposit(&mut self, group: GroupId, post: Vec<u8>) {
        let Ok(decoded) = GroupPost::decode(&post) else {
            return;
        };
        let id = decoded.key.post_id;
        if self.groups.depositing.contains_key(&id) {
            return;
        }
        let Some(set) = self.group_mailboxes(group, Placement::Deposit) else {
            self.groups
                .waiting_deposit
                .entry(group)
                .or_default()
                .push(post);
            return;
        };
        let me = self.shared.peer_id;
        let r = self.shared.config.mailbox.replicas;
        let mut asked = 0;
        let mut held_here = 0;
        let mut spare = set;
        spare.reverse();
        while asked + held_here < r {
            let Some(mailbox) = spare.pop() else { break };
            if mailbox == me {
                held_here += 1;
                continue;
            }
            self.group_deposit_at(mailbox, id, &post);
            asked += 1;
        }
        if held_here > 0 && self.shared.config.has_role(crate::config::Role::Mailbox) {
            // We are one of the group's mailboxes: keep it here too.
            let groups = self.shared.config.groups.clone();
            let now = self.now_ms();
            self.background(move |store| {
                let expires = now.saturating_add(
                    u64::try_from(groups.retention.as_millis()).unwrap_or(u64::MAX),
                );
                let _ = gstore::mailbox_put(
                    store.connection(),
                    &crate::groups::mailbox::row(&decoded),
                    me,
                    now,
                    expires,
                    groups.max_posts_per_group,
                );
                None
            });
        }
        if asked == 0 {
            self.group_deposited(id);
            return;
        }
        self.groups.depositing.insert(
            id,
            Deposit {
                post,
                pending: asked,
                accepted: held_here,
                spare,
            },
        );
    }

    fn group_deposit_at(&mut self, mailbox: PeerId, id: [u8; 16], post: &[u8]) {
        let request_id = self.swarm.behaviour_mut().mailbox.send_request(
            &mailbox,
            MailboxRequest::GroupDeposit(post.to_vec()).encode(),
        );
        self.groups
            .outbound
            .insert(request_id, Outbound::Deposit { post: id });
    }

    fn group_deposited(&mut self, post: [u8; 16]) {
        self.background(move |store| {
            let _ = gstore::mark_deposited(store.connection(), &post);
            None
        });
    }

    /// Fetches a group's posts after our cursor from its mailboxes.
    fn group_catch_up(&mut self, group: GroupId) {
        let Some(set) = self.group_mailboxes(group, Placement::CatchUp) else {
            return;
        };
        self.groups.catching_up.insert(group);
        // Until a catch-up since start completes, resume from what the node
        // had before it started.
        let before = (!self.groups.resumed.contains(&group)).then_some(self.groups.started_ms);
        self.background(move |store| {
            let c = store.connection();
            let Ok(g) = gstore::info(c, group) else {
                return Some(Internal::Group(GroupDone::Cursor(
                    group,
                    PostKey {
                        epoch: u64::MAX,
                        ..PostKey::default()
                    },
                    Vec::new(),
                )));
            };
            let cursor = gstore::cursor(c, group, before).ok().flatten();
            // The member may have applied a commit live (by gossip) before
            // this catch-up, so the posts it missed can be in the epochs
            // before its current one: resume from the cursor, or with none
            // (a member that joined and left before any post reached it)
            // from the oldest epoch whose messages it can still open. Posts
            // it cannot open (from before it joined) are marked failed, and
            // the cursor moves past them.
            let open_from = g
                .epoch
                .saturating_sub(crate::groups::mls::MAX_PAST_EPOCHS as u64);
            let key = match cursor {
                Some(k) if k.epoch >= open_from => PostKey {
                    epoch: k.epoch,
                    commit: k.is_commit,
                    created_ms: k.created_ms,
                    post_id: k.post_id,
                },
                _ => PostKey {
                    epoch: open_from,
                    ..PostKey::default()
                },
            };
            Some(Internal::Group(GroupDone::Cursor(group, key, set)))
        });
    }

    /// Asks the first of `mailboxes` for the group's posts after `after`;
    /// the others are asked in turn from `start` (each mailbox holds what
    /// reached it). Posts are stored as they come and applied, in order,
    /// once every mailbox was asked.
    fn group_fetch(
        &mut self,
        group: GroupId,
        start: PostKey,
        after: PostKey,
        mut mailboxes: Vec<PeerId>,
    ) {
        let me = self.shared.peer_id;
        mailboxes.retain(|p| *p != me);
        if mailboxes.is_empty() {
            self.group_catch_up_done(group);
            return;
        }
        let mailbox = mailboxes.remove(0);
        let request = MailboxRequest::GroupFetch {
            group_id: *group.as_bytes(),
            after,
            limit: self.shared.config.groups.catch_up_page,
        };
        let request_id = self
            .swarm
            .behaviour_mut()
            .mailbox
            .send_request(&mailbox, request.encode());
        self.groups.outbound.insert(
            request_id,
            Outbound::Fetch {
                group,
                start,
                rest: mailboxes,
            },
        );
    }

    /// Every mailbox was asked: apply what came, in order.
    fn group_catch_up_done(&mut self, group: GroupId) {
        self.groups.catching_up.remove(&group);
        self.group_background(move |store, cx| {
            let mut effects = engine::apply(store, cx, group).unwrap_or_else(|e| {
                tracing::warn!("group catch-up: {e}");
                Effects::default()
            });
            // A gap left after asking every mailbox waits for the next round.
            effects.catch_up.retain(|g| *g != group);
            Some(Internal::Group(GroupDone::Effects(effects)))
        });
    }

    /// The answer to one of our group mailbox requests.
    pub(super) fn on_group_mailbox_response(
        &mut self,
        request: OutboundRequestId,
        peer: PeerId,
        response: MailboxResponse,
    ) {
        let Some(outbound) = self.groups.outbound.remove(&request) else {
            return;
        };
        match outbound {
            Outbound::Pull { post } => self.on_pulled(post, peer, response),
            Outbound::Deposit { post } => {
                let took = matches!(
                    response,
                    MailboxResponse::Deposited {
                        code: MailDepositCode::MailDepositStored
                            | MailDepositCode::MailDepositDuplicate,
                        ..
                    }
                );
                let me = self.shared.peer_id;
                let Some(d) = self.groups.depositing.get_mut(&post) else {
                    return;
                };
                if took {
                    d.accepted += 1;
                } else {
                    tracing::debug!(%peer, ?response, "group mailbox did not take a post");
                    // The next candidate in its place.
                    d.spare.retain(|p| *p != me);
                    if let Some(next) = d.spare.pop() {
                        let bytes = d.post.clone();
                        self.group_deposit_at(next, post, &bytes);
                        return;
                    }
                }
                let Some(d) = self.groups.depositing.get_mut(&post) else {
                    return;
                };
                d.pending -= 1;
                if d.pending == 0 {
                    let accepted = d.accepted;
                    self.groups.depositing.remove(&post);
                    if accepted > 0 {
                        self.group_deposited(post);
                    }
                }
            }
            Outbound::Fetch { group, start, rest } => match response {
                MailboxResponse::GroupPage { posts, more } => {
                    let posts: Vec<GroupPost> = posts
                        .iter()
                        .filter_map(|p| GroupPost::decode(p).ok())
                        .filter(|p| p.group_id == *group.as_bytes())
                        .collect();
                    let last = posts.iter().map(|p| p.key).max();
                    let next = match (more, last) {
                        (true, Some(k)) => Some((k, peer)),
                        _ => None,
                    };
                    bump(&self.shared.stats.group_pages_fetched);
                    // A mailbox answered: later rounds go on from what
                    // was applied.
                    self.groups.resumed.insert(group);
                    self.group_background(move |store, cx| {
                        if let Err(e) = engine::store_posts(store, cx, posts) {
                            tracing::warn!("group catch-up: {e}");
                        }
                        Some(Internal::Group(GroupDone::Page {
                            group,
                            start,
                            next,
                            rest,
                        }))
                    });
                }
                other => {
                    tracing::debug!(%peer, ?other, "group fetch refused; trying the next mailbox");
                    self.group_fetch(group, start, start, rest);
                }
            },
        }
    }

    /// A gossipsub event.
    pub(super) fn on_gossipsub_event(&mut self, event: gossipsub::Event) {
        let gossipsub::Event::Message {
            propagation_source,
            message_id,
            message,
        } = event
        else {
            return;
        };
        let ours = |this: &Self, group_id: [u8; 16]| {
            let group = GroupId::from(group_id);
            this.groups.subscribed.contains(&group)
                && message.topic == IdentTopic::new(group.topic()).hash()
        };
        let accept = match GroupGossip::decode(&message.data) {
            Ok(GroupGossip::Post(post)) if ours(self, post.group_id) => {
                bump(&self.shared.stats.group_posts_received);
                self.group_receive(vec![post]);
                MessageAcceptance::Accept
            }
            Ok(GroupGossip::Announce(announce)) if ours(self, announce.group_id) => {
                match self.on_post_announce(
                    announce,
                    message_id.clone(),
                    propagation_source,
                    message.source,
                ) {
                    Some(accept) => accept,
                    // Validated once the post is here.
                    None => return,
                }
            }
            Ok(_) => MessageAcceptance::Ignore,
            Err(_) => {
                bump(&self.shared.stats.group_posts_rejected);
                MessageAcceptance::Reject
            }
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&message_id, &propagation_source, accept);
    }

    fn group_receive(&mut self, posts: Vec<GroupPost>) {
        // During a catch-up the posts wait with the fetched ones, and all
        // are applied in order when it ends.
        let deferred = posts
            .iter()
            .all(|p| self.groups.catching_up.contains(&GroupId::from(p.group_id)));
        if deferred {
            self.group_work(
                move |s, cx| engine::store_posts(s, cx, posts).map(|()| ((), Effects::default())),
                |_| {},
            );
            return;
        }
        self.group_work(
            move |s, cx| engine::receive(s, cx, posts).map(|e| ((), e)),
            |_| {},
        );
    }

    /// Results of group work.
    pub(super) fn on_group_done(&mut self, done: GroupDone) {
        match done {
            GroupDone::Effects(effects) => self.group_effects(effects),
            GroupDone::Members(members) => {
                for id in members.keys() {
                    self.group_subscribe(*id);
                }
                if self.groups.members_read {
                    // Joined during this run: nothing from before the
                    // start to resume, so no forced first catch-up.
                    for id in members.keys() {
                        if !self.groups.members.contains_key(id) {
                            self.groups.resumed.insert(*id);
                        }
                    }
                }
                self.groups.members_read = true;
                self.groups.members = members;
            }
            GroupDone::Control(effects) => {
                self.groups.control_running = false;
                if effects.control_seq.is_some() {
                    // There may be more: look again at the next tick.
                    self.groups.control_received = u64::MAX;
                }
                self.group_effects(effects);
            }
            GroupDone::KeyPackages(kps) => self.group_put_key_packages(kps),
            GroupDone::Undeposited(posts) => {
                for (group, post) in posts {
                    self.group_deposit(group, post);
                }
            }
            GroupDone::Cursor(group, key, mailboxes) => {
                if key.epoch == u64::MAX {
                    self.groups.catching_up.remove(&group);
                } else {
                    self.group_fetch(group, key, key, mailboxes);
                }
            }
            GroupDone::Page {
                group,
                start,
                next,
                rest,
            } => match next {
                Some((key, peer)) => {
                    let mut mailboxes = vec![peer];
                    mailboxes.extend(rest);
                    self.group_fetch(group, start, key, mailboxes);
                }
                None => self.group_fetch(group, start, start, rest),
            },
        }
    }

    fn group_effects(&mut self, effects: Effects) {
        let changed = !effects.subscribe.is_empty()
            || !effects.unsubscribe.is_empty()
            || !effects.publish.is_empty();
        for id in effects.subscribe {
            self.group_subscribe(id);
            self.groups.mailboxes.remove(&id);
        }
        for id in effects.unsubscribe {
            let _ = self
                .swarm
                .behaviour_mut()
                .gossipsub
                .unsubscribe(&IdentTopic::new(id.topic()));
            self.groups.subscribed.remove(&id);
            self.groups.members.remove(&id);
        }
        for (group, post) in effects.publish {
            self.group_publish(group, post);
        }
        for group in effects.catch_up {
            self.group_catch_up_soon(group);
        }
        for (group, peer) in effects.invite {
            self.group_fetch_key_packages(group, vec![peer], None);
        }
        if effects.outbox {
            self.due_dirty = true;
        }
        if effects.key_packages {
            self.groups.key_packages_dirty = true;
        }
        if let Some(seq) = effects.control_seq {
            self.groups.control_seq = self.groups.control_seq.max(seq);
        }
        if changed {
            self.group_read_members();
        }
    }

    fn group_subscribe(&mut self, id: GroupId) {
        if self.groups.subscribed.insert(id) {
            if let Err(e) = self
                .swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&IdentTopic::new(id.topic()))
            {
                tracing::warn!(%id, "cannot subscribe to the group's topic: {e}");
            }
        }
    }

    fn group_read_members(&mut self) {
        self.background(|store| {
            let c = store.connection();
            let mut out = HashMap::new();
            for g in gstore::list(c).unwrap_or_default() {
                if g.state == GroupState::Active {
                    out.insert(g.id, gstore::member_ids(c, g.id).unwrap_or_default());
                }
            }
            Some(Internal::Group(GroupDone::Members(out)))
        });
    }

    fn group_put_key_packages(&mut self, kps: Vec<(Vec<u8>, bool)>) {
        let now = self.now_ms();
        let (fresh, last): (Vec<_>, Vec<_>) = kps.into_iter().partition(|(_, lr)| !lr);
        let Some((last_resort, _)) = last.into_iter().next() else {
            return;
        };
        if self.groups.key_packages_at.is_none() && self.shared.config.bandwidth.dht_tuning_on() {
            let fresh: Vec<&[u8]> = fresh.iter().map(|(b, _)| b.as_slice()).collect();
            if let Some(age) = self.key_packages_still_out(&fresh, &last_resort, now) {
                // Republished on the schedule of the run that put it.
                self.groups.key_packages_at =
                    Some(Instant::now().checked_sub(age).unwrap_or_else(Instant::now));
                bump(&self.shared.stats.key_packages_kept);
                return;
            }
        }
        self.groups.key_package_seq = now.max(self.groups.key_package_seq + 1);
        let record = KeyPackages {
            peer: self.shared.peer_id,
            seq: self.groups.key_package_seq,
            expires_ms: now + KEY_PACKAGES_TTL.as_millis() as u64,
            fresh: fresh
                .into_iter()
                .map(|(b, _)| b)
                .take(peercomm_wire::group::MAX_KEY_PACKAGES)
                .collect(),
            last_resort,
        };
        let value = match sign_key_packages(self.identity.keypair(), &record) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("cannot sign our key packages: {e}");
                return;
            }
        };
        let mut rec = kad::Record::new(
            kad::RecordKey::new(&key_packages_key(&self.shared.peer_id)),
            value,
        );
        rec.expires = Some(Instant::now() + KEY_PACKAGES_TTL);
        match self
            .swarm
            .behaviour_mut()
            .kad
            .put_record(rec, kad::Quorum::One)
        {
            Ok(q) => {
                self.groups.key_package_put = Some(q);
                self.groups.key_packages_at = Some(Instant::now());
            }
            Err(e) => {
                tracing::debug!("cannot publish key packages: {e}");
                self.groups.key_packages_dirty = true;
            }
        }
    }

    /// At start: whether the key-package record an earlier run put is still
    /// out, listing exactly these key packages, put less than
    /// `KEY_PACKAGES_EVERY` ago; returns its age. Our own record is in our
    /// (SQLite) record store only while a put of it is under way or after
    /// one succeeded: a failed put removes it.
    fn key_packages_still_out(
        &mut self,
        fresh: &[&[u8]],
        last_resort: &[u8],
        now_ms: u64,
    ) -> Option<Duration> {
        let key = kad::RecordKey::new(&key_packages_key(&self.shared.peer_id));
        let held = self.swarm.behaviour_mut().kad.store_mut().get(&key)?;
        let kp = verify_key_packages(&held.value, now_ms).ok()?;
        let put_ms = kp
            .expires_ms
            .checked_sub(KEY_PACKAGES_TTL.as_millis() as u64)?;
        let age = Duration::from_millis(now_ms.checked_sub(put_ms)?);
        let same = kp.peer == self.shared.peer_id
            && kp.last_resort == last_resort
            && kp.fresh.len() == fresh.len().min(peercomm_wire::group::MAX_KEY_PACKAGES)
            && kp.fresh.iter().zip(fresh).all(|(a, b)| a.as_slice() == *b);
        self.groups.key_package_seq = self.groups.key_package_seq.max(kp.seq);
        (same && age < KEY_PACKAGES_EVERY).then_some(age)
    }

    /// A key-package record another node stores on us: valid, signed by
    /// the peer its key names, not older than what we hold.
    pub(super) fn on_inbound_key_packages(&mut self, source: PeerId, record: kad::Record) {
        let now = self.now_ms();
        let Ok(kps) = verify_key_packages(&record.value, now) else {
            bump(&self.shared.stats.records_rejected);
            tracing::debug!(%source, "key-package record refused");
            return;
        };
        if record.key.as_ref() != key_packages_key(&kps.peer).as_slice() {
            bump(&self.shared.stats.records_rejected);
            return;
        }
        let kad = &mut self.swarm.behaviour_mut().kad;
        let held = kad
            .store_mut()
            .get(&record.key)
            .and_then(|r| verify_key_packages(&r.value, 0).ok())
            .map(|k| k.seq);
        if held.is_some_and(|h| kps.seq < h) {
            return;
        }
        let mut record = record;
        let ttl = Duration::from_millis(kps.expires_ms.saturating_sub(now));
        record.expires = Some(Instant::now() + ttl.min(KEY_PACKAGES_TTL));
        if let Err(e) = kad.store_mut().put(record) {
            tracing::debug!(%source, "key-package record not stored: {e}");
        }
    }

    /// Periodic group work.
    pub(super) fn groups_tick(&mut self) {
        if !self.groups.started {
            self.groups.started = true;
            self.groups.started_ms = self.now_ms();
            self.group_read_members();
            // Key packages are made (or topped up) once at start.
            self.group_work(
                |s, cx| engine::refresh_key_packages(s, cx).map(|e| ((), e)),
                |_| {},
            );
        }
        let now = Instant::now();
        // Control messages that arrived (Welcomes, requests to the owner).
        let received = self
            .shared
            .stats
            .received
            .load(std::sync::atomic::Ordering::Relaxed);
        if received != self.groups.control_received && !self.groups.control_running {
            self.groups.control_received = received;
            self.groups.control_running = true;
            let after = self.groups.control_seq;
            self.group_background(move |store, cx| {
                let effects = engine::control(store, cx, after).unwrap_or_else(|e| {
                    tracing::warn!("group control messages: {e}");
                    Effects::default()
                });
                Some(Internal::Group(GroupDone::Control(effects)))
            });
        }
        // Key packages to the DHT, once joined.
        let due = self
            .groups
            .key_packages_at
            .is_none_or(|at| at.elapsed() >= KEY_PACKAGES_EVERY);
        if (self.groups.key_packages_dirty || due)
            && self.dht.joined
            && self.groups.key_package_put.is_none()
        {
            self.groups.key_packages_dirty = false;
            self.background(|store| {
                let kps = gstore::key_packages(store.connection()).unwrap_or_default();
                Some(Internal::Group(GroupDone::KeyPackages(
                    kps.into_iter().map(|(_, kp, lr)| (kp, lr)).collect(),
                )))
            });
        }
        // Catch up every group now and then.
        let interval = self.shared.config.groups.catch_up_interval;
        if self.dht.joined
            && self
                .groups
                .caught_up_at
                .is_none_or(|at| at.elapsed() >= interval)
        {
            self.groups.caught_up_at = Some(now);
            self.groups.catch_up_rounds = self.groups.catch_up_rounds.wrapping_add(1);
            let idle_tuning = self.shared.config.bandwidth.idle_tuning_on();
            let mesh_low = self.shared.config.groups.mesh_n_low;
            let safety_net = self
                .groups
                .catch_up_rounds
                .is_multiple_of(IN_MESH_CATCH_UP_EVERY);
            let groups: Vec<GroupId> = self.groups.members.keys().copied().collect();
            for g in groups {
                if self.groups.catching_up.contains(&g) {
                    continue;
                }
                // A member in the group's mesh gets posts as they are sent
                // and a gap triggers a catch-up at once: polling is only a
                // safety net for it.
                let topic = IdentTopic::new(g.topic()).hash();
                let in_mesh =
                    self.swarm.behaviour().gossipsub.mesh_peers(&topic).count() >= mesh_low;
                // The first round after start always asks: what was sent
                // while the node was away is only in the mailboxes.
                let resumed = self.groups.resumed.contains(&g);
                if idle_tuning && in_mesh && !safety_net && resumed {
                    continue;
                }
                self.group_catch_up(g);
            }
        }
        // Own posts not yet deposited: looked for once after start, then
        // while the node belongs to a group (a node in none posts nothing).
        if (self.groups.deposited_at.is_none() || !self.groups.members.is_empty())
            && self
                .groups
                .deposited_at
                .is_none_or(|at| at.elapsed() >= DEPOSIT_RETRY)
        {
            self.groups.deposited_at = Some(now);
            self.background(|store| {
                let posts =
                    gstore::undeposited(store.connection(), DEPOSIT_BATCH).unwrap_or_default();
                if posts.is_empty() {
                    return None;
                }
                Some(Internal::Group(GroupDone::Undeposited(
                    posts.into_iter().map(|p| (p.group, p.post)).collect(),
                )))
            });
        }
        // Stay connected to enough members of each group for its mesh.
        if self
            .groups
            .connected_at
            .is_none_or(|at| at.elapsed() >= CONNECT_EVERY)
        {
            self.groups.connected_at = Some(now);
            self.group_connect_members();
        }
    }

    fn group_connect_members(&mut self) {
        let want = self
            .shared
            .config
            .groups
            .connect_members
            .max(self.shared.config.groups.mesh_n);
        let me = self.shared.peer_id;
        let mut dial = Vec::new();
        for members in self.groups.members.values() {
            let connected = members
                .iter()
                .filter(|p| **p != me && self.swarm.is_connected(p))
                .count();
            if connected >= want {
                continue;
            }
            let mut others: Vec<PeerId> = members
                .iter()
                .filter(|p| **p != me && !self.swarm.is_connected(p))
                .copied()
                .collect();
            use rand::seq::SliceRandom;
            others.shuffle(&mut self.rng);
            dial.extend(others.into_iter().take(want - connected));
        }
        for peer in dial {
            let _ = self.swarm.dial(
                DialOpts::peer_id(peer)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build(),
            );
        }
    }
}
