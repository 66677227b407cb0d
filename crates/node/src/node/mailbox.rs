//! The event loop's side of mailboxes: serving requests (through the
//! sans-IO [`crate::mailbox::serve`]), depositing our messages for offline
//! recipients at their mailboxes, draining our own mailboxes, acknowledging
//! what we stored, and passing receipts back to senders (directly, or into
//! their mailboxes).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use libp2p::kad::QueryId;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::PeerId;
use peercomm_store::DeliveryState;
use peercomm_wire::pb::{MailDepositCode, MailRefusalCode};
use peercomm_wire::{MailPayload, MailboxRequest, MailboxResponse, MessageId};

use super::{accept_envelope_seen, send_events, EventLoop, Internal};
use crate::config::{MailboxConfig, Role};
use crate::mailbox::{mailbox_key, serve, take_receipt, Context, Effect, OwnReceipt};
use crate::routing::quota::ForwardQuota;
use crate::stats::bump;
use crate::NodeEvent;

mod handoff;
use handoff::Handoff;
pub(super) use handoff::HandoffPage;

/// Deposit rounds (our messages and receipts we pass on) at once, at most.
const MAX_ROUNDS: usize = 1024;
/// Candidates beyond R a round may fall back to when mailboxes refuse.
const SPARE_CANDIDATES: usize = 4;
/// With DHT tuning, how long a recipient's looked-up mailboxes are reused
/// for further deposits (the set moves only as nodes join or leave near
/// its key; a mailbox that refuses or fails drops the entry at once).
const PLACEMENT_REUSE: std::time::Duration = std::time::Duration::from_secs(300);
/// Recipients whose mailboxes are remembered, at most.
const MAX_PLACEMENTS: usize = 1024;

/// Where a mailbox lookup's answer goes.
#[derive(Debug, Clone, Copy)]
enum Placement {
    /// Deposit round `0`.
    Deposit(u64),
    /// Where to deposit for this recipient: every round in
    /// `MailboxState::placing` waits on it (DHT tuning).
    Deposits(PeerId),
    /// Our own mailboxes, to drain.
    Drain,
    /// A recipient's mailbox set, for handoff `0`.
    Handoff(u64),
}

/// An outbound mailbox request of ours.
#[derive(Debug)]
enum Outbound {
    Deposit {
        round: u64,
    },
    Fetch {
        mailbox: PeerId,
    },
    /// A receipt handed to the sender itself; on failure it goes to the
    /// sender's mailboxes. Message `id` is acknowledged at our mailboxes
    /// once the receipt is placed.
    ReceiptDirect {
        sender: PeerId,
        receipt: Vec<u8>,
        ack: (MessageId, PeerId),
    },
    /// An offer of held items (handoff `job`).
    Offer {
        job: u64,
    },
    /// A copy of a held item (handoff `job`).
    Copy {
        job: u64,
    },
    /// Acks and notifications: the answer changes nothing.
    Quiet,
}

/// One item on its way to R mailboxes.
#[derive(Debug)]
struct Round {
    /// Our message, whose outbox row records the replicas; `None` for a
    /// receipt we pass on.
    own: Option<MessageId>,
    /// For a receipt: the message to acknowledge at our mailboxes (and the
    /// one it came from) once a mailbox of the sender took it.
    then_ack: Option<(MessageId, PeerId)>,
    /// Whose mailboxes.
    recipient: PeerId,
    payload: MailPayload,
    candidates: VecDeque<PeerId>,
    pending: usize,
    accepted: u32,
    /// Why the last mailbox that refused did so.
    refusal: Option<String>,
}

/// Whether a deposit's answer means the mailbox holds the item (stored now,
/// held already, or acknowledged by its recipient): it counts as a replica.
fn holds_it(response: &MailboxResponse) -> bool {
    matches!(
        response,
        MailboxResponse::Deposited {
            code: MailDepositCode::MailDepositStored
                | MailDepositCode::MailDepositDuplicate
                | MailDepositCode::MailDepositAcknowledged,
            ..
        }
    )
}

/// Mailbox state kept by the event loop.
pub(super) struct MailboxState {
    quota: ForwardQuota,
    channels: HashMap<u64, ResponseChannel<Vec<u8>>>,
    next_token: u64,
    lookups: HashMap<QueryId, Placement>,
    outbound: HashMap<OutboundRequestId, Outbound>,
    rounds: HashMap<u64, Round>,
    next_round: u64,
    /// Our messages with a deposit round under way (or being read).
    depositing: HashSet<MessageId>,
    /// Mailboxes we are fetching from.
    draining: HashSet<PeerId>,
    /// Our mailbox set as last found.
    ours: Vec<PeerId>,
    drain_lookup: bool,
    drained_at: Option<Instant>,
    cleaned_at: Option<Instant>,
    /// Re-replication: the handoffs of the current page, by job.
    handoffs: HashMap<u64, Handoff>,
    next_handoff: u64,
    /// When the last pass started; whether one is running; where its next
    /// page starts.
    replicated_at: Option<Instant>,
    passing: bool,
    pass_next: Option<String>,
    /// Our messages handed to relays, to deposit if still undelivered at
    /// the time given (in order).
    deposit_due: VecDeque<(Instant, MessageId)>,
    /// DHT tuning: each recipient's mailbox candidates (nearest first) and
    /// when they were looked up.
    placements: HashMap<PeerId, (Vec<PeerId>, Instant)>,
    /// DHT tuning: rounds waiting on the one lookup of their recipient.
    placing: HashMap<PeerId, Vec<u64>>,
    /// Drained messages whose receipts are placed: acknowledged together
    /// at the next tick.
    acks_due: Vec<(MessageId, PeerId)>,
}

impl MailboxState {
    pub(super) fn new(config: &MailboxConfig) -> Self {
        Self {
            quota: ForwardQuota::new(config.requests_per_peer_per_minute, 0),
            channels: HashMap::new(),
            next_token: 0,
            lookups: HashMap::new(),
            outbound: HashMap::new(),
            rounds: HashMap::new(),
            next_round: 0,
            depositing: HashSet::new(),
            draining: HashSet::new(),
            ours: Vec::new(),
            drain_lookup: false,
            drained_at: None,
            cleaned_at: None,
            handoffs: HashMap::new(),
            next_handoff: 0,
            replicated_at: None,
            passing: false,
            pass_next: None,
            deposit_due: VecDeque::new(),
            acks_due: Vec::new(),
            placements: HashMap::new(),
            placing: HashMap::new(),
        }
    }

    /// `recipient`'s mailbox candidates, if looked up recently enough.
    fn placement(&self, recipient: &PeerId) -> Option<Vec<PeerId>> {
        self.placements
            .get(recipient)
            .filter(|(peers, at)| !peers.is_empty() && at.elapsed() < PLACEMENT_REUSE)
            .map(|(peers, _)| peers.clone())
    }

    fn remember_placement(&mut self, recipient: PeerId, peers: &[PeerId]) {
        if self.placements.len() >= MAX_PLACEMENTS {
            self.placements
                .retain(|_, (_, at)| at.elapsed() < PLACEMENT_REUSE);
            if self.placements.len() >= MAX_PLACEMENTS {
                self.placements.clear();
            }
        }
        self.placements
            .insert(recipient, (peers.to_vec(), Instant::now()));
    }

    /// Whether `query` is one of our mailbox lookups.
    pub(super) fn owns(&self, query: &QueryId) -> bool {
        self.lookups.contains_key(query)
    }
}

/// What a drained page left to do.
#[derive(Debug)]
pub(super) struct Drained {
    pub(super) mailbox: PeerId,
    /// Ids to acknowledge (stored, or never deliverable here).
    pub(super) acks: Vec<MessageId>,
    /// Receipts for the senders of what we stored: (sender, signed
    /// receipt, message id). Each message is acknowledged once its receipt
    /// is placed, so a crash before that leaves it in the mailboxes to be
    /// fetched (and its receipt made) again.
    pub(super) receipts: Vec<(PeerId, Vec<u8>, MessageId)>,
    /// The cursor of the next page, if there is one.
    pub(super) next: Option<u64>,
}

impl EventLoop {
    // ---- serving -------------------------------------------------------------

    pub(super) fn on_mailbox_event(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.on_mailbox_request(peer, request, channel),
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    let response = MailboxResponse::decode(&response).unwrap_or_else(|e| {
                        MailboxResponse::refused(
                            MailRefusalCode::MailRefusalMalformed,
                            e.to_string(),
                        )
                    });
                    if self.groups.owns_request(&request_id) {
                        self.on_group_mailbox_response(request_id, peer, response);
                        return;
                    }
                    self.on_mailbox_response(request_id, peer, response);
                }
            },
            request_response::Event::OutboundFailure {
                request_id,
                peer,
                error,
                ..
            } => {
                tracing::debug!(%peer, "mailbox request failed: {error}");
                let response = MailboxResponse::refused(
                    MailRefusalCode::MailRefusalUnspecified,
                    error.to_string(),
                );
                if self.groups.owns_request(&request_id) {
                    self.on_group_mailbox_response(request_id, peer, response);
                    return;
                }
                self.on_mailbox_response(request_id, peer, response);
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                bump(&self.shared.stats.inbound_stream_failures);
                tracing::debug!(%peer, "inbound mailbox stream failed: {error}");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_mailbox_request(
        &mut self,
        peer: PeerId,
        request: Vec<u8>,
        channel: ResponseChannel<Vec<u8>>,
    ) {
        let respond = |this: &mut Self, channel, response: MailboxResponse| {
            let _ = this
                .swarm
                .behaviour_mut()
                .mailbox
                .send_response(channel, response.encode());
        };
        if self.shutdown.is_some() {
            return;
        }
        if !self
            .mailbox
            .quota
            .allow(peer, request.len() as u64, Instant::now())
        {
            bump(&self.shared.stats.mailbox_refused);
            let refusal = MailboxResponse::refused(
                MailRefusalCode::MailRefusalRateLimited,
                "too many mailbox requests; slow down",
            );
            respond(self, channel, refusal);
            return;
        }
        let request = match MailboxRequest::decode(&request) {
            Ok(r) => r,
            Err(e) => {
                bump(&self.shared.stats.rejected_malformed);
                respond(
                    self,
                    channel,
                    MailboxResponse::refused(MailRefusalCode::MailRefusalMalformed, e.to_string()),
                );
                return;
            }
        };
        if let MailboxRequest::GroupGet { group_id, post_id } = &request {
            // From our cache of large posts, whatever our roles.
            let posts = self.group_serve_pull(group_id, post_id);
            respond(
                self,
                channel,
                MailboxResponse::GroupPage { posts, more: false },
            );
            return;
        }
        let token = self.mailbox.next_token;
        self.mailbox.next_token += 1;
        self.mailbox.channels.insert(token, channel);
        let me = self.shared.peer_id;
        let is_mailbox = self.shared.config.has_role(Role::Mailbox);
        let config = self.shared.config.mailbox.clone();
        let groups = self.shared.config.groups.clone();
        let now_ms = self.now_ms();
        self.background(move |store| {
            let cx = Context {
                me,
                from: peer,
                is_mailbox,
                config: &config,
                now_ms,
                groups: &groups,
            };
            let served = serve(store, &cx, request);
            Some(Internal::MailboxServed {
                token,
                from: peer,
                response: served.response.encode(),
                effect: served.effect,
            })
        });
    }

    pub(super) fn on_mailbox_served(
        &mut self,
        token: u64,
        from: PeerId,
        response: Vec<u8>,
        effect: Effect,
    ) {
        if let Some(channel) = self.mailbox.channels.remove(&token) {
            let _ = self
                .swarm
                .behaviour_mut()
                .mailbox
                .send_response(channel, response);
        }
        let stats = &self.shared.stats;
        match effect {
            Effect::None => {}
            Effect::StoredFor(recipient) => {
                bump(&stats.mailbox_stored);
                if recipient != from {
                    self.notify_recipient(recipient);
                }
            }
            Effect::Delivered(id) => {
                bump(&stats.mailbox_receipts);
                bump(&stats.delivered);
                self.emit(NodeEvent::MessageState {
                    id,
                    state: DeliveryState::Delivered,
                });
            }
            Effect::Drain => self.drain_from(from),
            Effect::Refused => bump(&stats.mailbox_refused),
            Effect::Acked => bump(&stats.mailbox_acks),
            Effect::Fetched => bump(&stats.mailbox_fetches),
        }
    }

    /// Tells `recipient`, if it is connected, that items wait for it here.
    pub(super) fn notify_recipient(&mut self, recipient: PeerId) {
        if self.swarm.is_connected(&recipient) && self.shutdown.is_none() {
            let notify = MailboxRequest::Notify { items: 1 };
            self.mailbox_request(recipient, notify, Outbound::Quiet);
        }
    }

    /// A peer connected: if this mailbox holds items for it, say so.
    pub(super) fn mailbox_on_connected(&mut self, peer: PeerId) {
        if !self.shared.config.has_role(Role::Mailbox) {
            return;
        }
        let now = self.now_ms();
        self.background(move |store| {
            let holds = store
                .mailbox_ids(&peer.to_base58(), now, 1)
                .is_ok_and(|ids| !ids.is_empty());
            holds.then_some(Internal::MailboxHolds(peer))
        });
    }

    /// Sends `request` to `peer`; its answer goes where `outbound` says.
    fn mailbox_request(&mut self, peer: PeerId, request: MailboxRequest, outbound: Outbound) {
        let id = self
            .swarm
            .behaviour_mut()
            .mailbox
            .send_request(&peer, request.encode());
        self.mailbox.outbound.insert(id, outbound);
    }

    // ---- depositing -----------------------------------------------------------

    /// Our message `id` could not be delivered: unless enough mailboxes hold
    /// it already, deposit it at the recipient's.
    pub(super) fn mailbox_deposit(&mut self, id: MessageId) {
        if self.shutdown.is_some()
            || self.mailbox.depositing.len() >= MAX_ROUNDS
            || !self.mailbox.depositing.insert(id)
        {
            return;
        }
        let replicas = self.shared.config.mailbox.replicas as u32;
        self.background(move |store| {
            let found = store
                .get_outgoing(id.as_bytes())
                .ok()
                .flatten()
                .and_then(|m| {
                    // An onion message is never left at mailboxes: they would
                    // see its sender and recipient side by side in the header.
                    let wanted = !m.state.is_terminal()
                        && m.replicas.unwrap_or(0) < replicas
                        && m.route != peercomm_store::Route::Onion;
                    let recipient = m.recipient.parse::<PeerId>().ok()?;
                    Some((recipient, m.envelope?)).filter(|_| wanted)
                });
            Some(Internal::MailboxDepositReady { id, found })
        });
    }

    /// Our message `id` went to relays because its recipient could not be
    /// dialled: deposit it too unless it is delivered by `deposit_after`.
    pub(super) fn mailbox_deposit_later(&mut self, id: MessageId) {
        if self.mailbox.deposit_due.len() < MAX_ROUNDS * 4 {
            let at = Instant::now() + self.shared.config.mailbox.deposit_after;
            self.mailbox.deposit_due.push_back((at, id));
        }
    }

    pub(super) fn on_deposit_ready(&mut self, id: MessageId, found: Option<(PeerId, Vec<u8>)>) {
        match found {
            Some((recipient, envelope)) => {
                self.start_round(Some(id), None, recipient, MailPayload::Envelope(envelope))
            }
            None => {
                self.mailbox.depositing.remove(&id);
            }
        }
    }

    /// Looks up `recipient`'s mailboxes, then deposits `payload` there.
    fn start_round(
        &mut self,
        own: Option<MessageId>,
        then_ack: Option<(MessageId, PeerId)>,
        recipient: PeerId,
        payload: MailPayload,
    ) {
        if self.mailbox.rounds.len() >= MAX_ROUNDS {
            if let Some(id) = own {
                self.mailbox.depositing.remove(&id);
            }
            return;
        }
        let round = self.mailbox.next_round;
        self.mailbox.next_round += 1;
        self.mailbox.rounds.insert(
            round,
            Round {
                own,
                then_ack,
                recipient,
                payload,
                candidates: VecDeque::new(),
                pending: 0,
                accepted: 0,
                refusal: None,
            },
        );
        if !self.shared.config.bandwidth.dht_tuning_on() {
            self.deposit_lookup(recipient, Placement::Deposit(round));
            return;
        }
        if let Some(peers) = self.mailbox.placement(&recipient) {
            self.place_round(round, peers);
            return;
        }
        if let Some(waiting) = self.mailbox.placing.get_mut(&recipient) {
            waiting.push(round);
            return;
        }
        self.mailbox.placing.insert(recipient, vec![round]);
        self.deposit_lookup(recipient, Placement::Deposits(recipient));
    }

    /// Looks `recipient`'s mailboxes up in the DHT, to deposit there.
    fn deposit_lookup(&mut self, recipient: PeerId, placement: Placement) {
        bump(&self.shared.stats.mailbox_lookups);
        let query = self
            .swarm
            .behaviour_mut()
            .kad
            .get_closest_peers(mailbox_key(&recipient));
        self.mailbox.lookups.insert(query, placement);
    }

    /// Round `round_id` deposits at the first of `peers` (nearest first)
    /// that take it.
    fn place_round(&mut self, round_id: u64, peers: Vec<PeerId>) {
        let me = self.shared.peer_id;
        let r = self.shared.config.mailbox.replicas;
        let Some(round) = self.mailbox.rounds.get_mut(&round_id) else {
            return;
        };
        let recipient = round.recipient;
        round.candidates = peers
            .into_iter()
            .filter(|p| *p != me && *p != recipient)
            .take(r + SPARE_CANDIDATES)
            .collect();
        for _ in 0..r {
            self.deposit_next(round_id);
        }
        self.finish_round_if_done(round_id);
    }

    /// The peers closest to a mailbox key, nearest first.
    pub(super) fn on_mailbox_placement(&mut self, query: QueryId, peers: Vec<PeerId>) {
        let Some(placement) = self.mailbox.lookups.remove(&query) else {
            return;
        };
        let me = self.shared.peer_id;
        let r = self.shared.config.mailbox.replicas;
        match placement {
            Placement::Deposit(round_id) => self.place_round(round_id, peers),
            Placement::Deposits(recipient) => {
                let rounds = self.mailbox.placing.remove(&recipient).unwrap_or_default();
                if !peers.is_empty() {
                    self.mailbox.remember_placement(recipient, &peers);
                }
                for round_id in rounds {
                    self.place_round(round_id, peers.clone());
                }
            }
            Placement::Drain => {
                self.mailbox.drain_lookup = false;
                self.mailbox.ours = peers.into_iter().filter(|p| *p != me).take(r + 1).collect();
                let remember: Vec<String> =
                    self.mailbox.ours.iter().map(|p| p.to_base58()).collect();
                let now = self.now_ms();
                if !remember.is_empty() {
                    self.background(move |store| {
                        if let Err(e) = store.save_own_mailboxes(&remember, now) {
                            tracing::warn!("cannot remember our mailboxes: {e}");
                        }
                        None
                    });
                }
                for mailbox in self.mailbox.ours.clone() {
                    self.drain_from(mailbox);
                }
            }
            Placement::Handoff(job) => self.on_handoff_placement(job, peers),
        }
    }

    /// Sends round `round_id`'s item to its next candidate, if any.
    fn deposit_next(&mut self, round_id: u64) {
        let Some(round) = self.mailbox.rounds.get_mut(&round_id) else {
            return;
        };
        let Some(mailbox) = round.candidates.pop_front() else {
            return;
        };
        round.pending += 1;
        let request = MailboxRequest::Deposit(round.payload.clone());
        self.mailbox_request(mailbox, request, Outbound::Deposit { round: round_id });
    }

    fn finish_round_if_done(&mut self, round_id: u64) {
        let r = self.shared.config.mailbox.replicas as u32;
        let Some(round) = self.mailbox.rounds.get(&round_id) else {
            return;
        };
        if round.pending > 0 || (round.accepted < r && !round.candidates.is_empty()) {
            return;
        }
        let Some(round) = self.mailbox.rounds.remove(&round_id) else {
            return;
        };
        let Some(id) = round.own else {
            match round.then_ack {
                Some(ack) if round.accepted > 0 => self.mailbox.acks_due.push(ack),
                _ => tracing::debug!(
                    sender = %round.recipient,
                    "no mailbox took a receipt; the message stays in ours until the next drain"
                ),
            }
            return;
        };
        self.mailbox.depositing.remove(&id);
        if round.accepted == 0 {
            tracing::debug!(%id, "no mailbox accepted the message; retrying later");
            let note = format!(
                "the recipient is unreachable and no mailbox took the message ({}); retrying",
                round.refusal.as_deref().unwrap_or("none found")
            );
            let now = self.now_ms();
            self.background(move |store| {
                let _ = store.note_error(id.as_bytes(), &note, now);
                None
            });
            return;
        }
        let accepted = round.accepted;
        let now = self.now_ms();
        let events = self.shared.events.clone();
        self.background(move |store| {
            if let Err(e) = store.set_replicas(id.as_bytes(), accepted, now) {
                tracing::warn!(%id, "cannot record replicas: {e}");
            }
            if let Ok(true) = store.set_state(id.as_bytes(), DeliveryState::Stored, now) {
                let _ = events.send(NodeEvent::MessageState {
                    id,
                    state: DeliveryState::Stored,
                });
            }
            None
        });
    }

    fn on_mailbox_response(
        &mut self,
        request_id: OutboundRequestId,
        peer: PeerId,
        response: MailboxResponse,
    ) {
        let Some(outbound) = self.mailbox.outbound.remove(&request_id) else {
            return;
        };
        match outbound {
            Outbound::Deposit { round } => {
                let took = holds_it(&response);
                let Some(r) = self.mailbox.rounds.get_mut(&round) else {
                    return;
                };
                if !took {
                    tracing::debug!(%peer, ?response, "mailbox did not take the item");
                    // Look the set up afresh next time.
                    self.mailbox.placements.remove(&r.recipient);
                }
                r.pending = r.pending.saturating_sub(1);
                match &response {
                    MailboxResponse::Deposited { reason, .. }
                    | MailboxResponse::Refused { reason, .. }
                        if !took =>
                    {
                        r.refusal = Some(format!("{peer}: {reason}"));
                    }
                    _ => {}
                }
                if took {
                    r.accepted += 1;
                    if r.own.is_some() {
                        bump(&self.shared.stats.mailbox_deposited);
                    }
                } else {
                    self.deposit_next(round);
                }
                self.finish_round_if_done(round);
            }
            Outbound::Fetch { mailbox } => match response {
                MailboxResponse::Page { items, more } => self.on_page(mailbox, items, more),
                other => {
                    tracing::debug!(%mailbox, ?other, "fetch refused");
                    self.mailbox.draining.remove(&mailbox);
                }
            },
            Outbound::ReceiptDirect {
                sender,
                receipt,
                ack,
            } => {
                let took = matches!(
                    response,
                    MailboxResponse::Deposited {
                        code: MailDepositCode::MailDepositStored,
                        ..
                    }
                );
                if took {
                    self.mailbox.acks_due.push(ack);
                } else {
                    // The sender is offline: its mailboxes keep the receipt.
                    self.start_round(None, Some(ack), sender, MailPayload::Receipt(receipt));
                }
            }
            Outbound::Offer { job } => self.on_offer_answer(job, peer, response),
            Outbound::Copy { job } => {
                let took = holds_it(&response);
                self.on_copy_answer(job, peer, took);
            }
            Outbound::Quiet => {}
        }
    }

    // ---- draining ---------------------------------------------------------------

    /// Finds our mailboxes and fetches from each.
    pub(super) fn mailbox_drain(&mut self) {
        if self.mailbox.drain_lookup || self.shutdown.is_some() {
            return;
        }
        self.mailbox.drained_at = Some(Instant::now());
        self.mailbox.drain_lookup = true;
        let me = self.shared.peer_id;
        let query = self
            .swarm
            .behaviour_mut()
            .kad
            .get_closest_peers(mailbox_key(&me));
        self.mailbox.lookups.insert(query, Placement::Drain);
    }

    /// At start: fetch at once from the mailboxes we had last time (no
    /// lookup needed), and look up the current set.
    pub(super) fn mailbox_on_start(&mut self, remembered: Vec<PeerId>) {
        let me = self.shared.peer_id;
        self.mailbox.ours = remembered.into_iter().filter(|p| *p != me).collect();
        for mailbox in self.mailbox.ours.clone() {
            self.drain_from(mailbox);
        }
        self.mailbox_first_drain();
    }

    /// The first drain after start, as soon as the routing table has peers.
    pub(super) fn mailbox_first_drain(&mut self) {
        if self.mailbox.drained_at.is_none() && self.routing_table_len() > 0 {
            self.mailbox_drain();
        }
    }

    /// Fetches our items from `mailbox`, page by page.
    fn drain_from(&mut self, mailbox: PeerId) {
        if self.shutdown.is_some() || !self.mailbox.draining.insert(mailbox) {
            return;
        }
        self.fetch_page(mailbox, 0);
    }

    fn fetch_page(&mut self, mailbox: PeerId, after: u64) {
        let limit = self.shared.config.mailbox.fetch_page;
        let request = MailboxRequest::Fetch { after, limit };
        self.mailbox_request(mailbox, request, Outbound::Fetch { mailbox });
    }

    fn on_page(&mut self, mailbox: PeerId, items: Vec<peercomm_wire::PagedItem>, more: bool) {
        let next = if more {
            items.last().map(|i| i.seq)
        } else {
            None
        };
        let identity = self.identity.clone();
        let stats = self.shared.stats.clone();
        let events = self.shared.events.clone();
        let now = self.now_ms();
        self.background(move |store| {
            // One commit for the page: its acks and receipts go out only
            // once every message in it is stored.
            let ((acks, receipts, gathered), durable) = store.in_one_commit(|store| {
                let mut acks = Vec::new();
                let mut receipts = Vec::new();
                let mut gathered = Vec::new();
                for item in items {
                    match item.payload {
                        MailPayload::Envelope(bytes) => {
                            let mut seen = None;
                            let answer = accept_envelope_seen(
                                store,
                                &identity,
                                &stats,
                                &mut gathered,
                                mailbox,
                                &bytes,
                                now,
                                &mut seen,
                            );
                            let Some((header, fresh)) = seen else {
                                // Unreadable: nothing to acknowledge it by.
                                continue;
                            };
                            if fresh {
                                bump(&stats.mailbox_drained);
                            }
                            match answer.result {
                                Some(peercomm_wire::pb::msg_response::Result::Receipt(receipt)) => {
                                    receipts.push((
                                        header.sender,
                                        prost::Message::encode_to_vec(&receipt),
                                        header.id,
                                    ));
                                }
                                Some(peercomm_wire::pb::msg_response::Result::Reject(reject))
                                    if reject.code
                                        != peercomm_wire::pb::RejectCode::RejectInternal as i32 =>
                                {
                                    // Never deliverable here: the mailbox may drop it.
                                    acks.push(header.id);
                                }
                                _ => {}
                            }
                        }
                        MailPayload::Receipt(bytes) => {
                            let Ok(info) = peercomm_wire::open_receipt(&bytes) else {
                                continue;
                            };
                            match take_receipt(store, &info, bytes, now) {
                                OwnReceipt::Delivered { id, fresh } => {
                                    if fresh {
                                        bump(&stats.mailbox_receipts);
                                        bump(&stats.delivered);
                                        gathered.push(NodeEvent::MessageState {
                                            id,
                                            state: DeliveryState::Delivered,
                                        });
                                    }
                                    acks.push(id);
                                }
                                // Not ours: drop it from the mailbox.
                                OwnReceipt::NotOurs(_) => acks.push(info.id),
                                OwnReceipt::Failed => {}
                            }
                        }
                    }
                }
                (acks, receipts, gathered)
            });
            if let Err(e) = durable {
                // Nothing of the page was kept: acknowledge nothing, stop
                // here; the next drain fetches it again.
                tracing::warn!(%mailbox, "cannot store a mailbox page: {e}");
                return Some(Internal::MailboxDrained(Drained {
                    mailbox,
                    acks: Vec::new(),
                    receipts: Vec::new(),
                    next: None,
                }));
            }
            send_events(&events, gathered);
            Some(Internal::MailboxDrained(Drained {
                mailbox,
                acks,
                receipts,
                next,
            }))
        });
    }

    pub(super) fn on_drained(&mut self, drained: Drained) {
        let Drained {
            mailbox,
            acks,
            receipts,
            next,
        } = drained;
        self.send_acks(&acks, Some(mailbox));
        for (sender, receipt, id) in receipts {
            let request = MailboxRequest::Deposit(MailPayload::Receipt(receipt.clone()));
            let outbound = Outbound::ReceiptDirect {
                sender,
                receipt,
                ack: (id, mailbox),
            };
            self.mailbox_request(sender, request, outbound);
        }
        match next {
            Some(after) if self.shutdown.is_none() => self.fetch_page(mailbox, after),
            _ => {
                self.mailbox.draining.remove(&mailbox);
            }
        }
    }

    /// Signed acknowledgements of `ids` to every mailbox of ours that may
    /// hold a copy (and `also`, the one they came from).
    fn send_acks(&mut self, ids: &[MessageId], also: Option<PeerId>) {
        if ids.is_empty() {
            return;
        }
        let mut to: Vec<PeerId> = self.mailbox.ours.clone();
        if let Some(also) = also.filter(|p| !to.contains(p)) {
            to.push(also);
        }
        let now = self.now_ms();
        for chunk in ids.chunks(peercomm_wire::MAX_MAIL_IDS) {
            match peercomm_wire::sign_mail_ack(self.identity.keypair(), chunk, now) {
                Ok(signed) => {
                    for peer in &to {
                        let request = MailboxRequest::Ack(signed.clone());
                        self.mailbox_request(*peer, request, Outbound::Quiet);
                    }
                }
                Err(e) => tracing::warn!("cannot sign a mailbox ack: {e}"),
            }
        }
    }

    // ---- timers ----------------------------------------------------------------

    /// Once a second: drain our mailboxes when due, purge expired items.
    pub(super) fn mailbox_tick(&mut self) {
        let (drain_every, clean_every) = {
            let config = &self.shared.config.mailbox;
            (config.drain_interval, config.cleanup_interval)
        };
        let due = |at: Option<Instant>, every| at.is_none_or(|at: Instant| at.elapsed() >= every);
        if self.dht.joined && due(self.mailbox.drained_at, drain_every) {
            self.mailbox_drain();
        }
        self.handoff_tick();
        let mut acks: HashMap<PeerId, Vec<MessageId>> = HashMap::new();
        for (id, from) in std::mem::take(&mut self.mailbox.acks_due) {
            acks.entry(from).or_default().push(id);
        }
        for (from, ids) in acks {
            self.send_acks(&ids, Some(from));
        }
        let now = Instant::now();
        while let Some(&(at, id)) = self.mailbox.deposit_due.front() {
            if at > now {
                break;
            }
            self.mailbox.deposit_due.pop_front();
            self.mailbox_deposit(id);
        }
        if due(self.mailbox.cleaned_at, clean_every) {
            self.mailbox.cleaned_at = Some(Instant::now());
            let now = self.now_ms();
            let retention = u64::try_from(self.shared.config.delivery.retention.as_millis())
                .unwrap_or(u64::MAX);
            let stats = self.shared.stats.clone();
            self.background(move |store| {
                cleanup(store, now, retention, &stats);
                None
            });
        }
    }
}

/// The cleanup job: expired mailbox items and tombstones, expired inbox
/// messages, and outgoing messages finished more than `retention_ms` ago.
/// (Outgoing messages that expire unsent become `expired` in the outbox
/// round, which also tells the sender.)
fn cleanup(
    store: &mut peercomm_store::Store,
    now: u64,
    retention_ms: u64,
    stats: &crate::stats::Stats,
) {
    match store.mailbox_purge_expired(now) {
        Ok(purged) => {
            stats
                .mailbox_expired
                .fetch_add(purged.items, std::sync::atomic::Ordering::Relaxed);
        }
        Err(e) => tracing::warn!("cannot purge expired mailbox items: {e}"),
    }
    if let Err(e) = store.purge_inbox_expired(now) {
        tracing::warn!("cannot purge expired inbox messages: {e}");
    }
    if let Err(e) = store.compact_outbox(now.saturating_sub(retention_ms)) {
        tracing::warn!("cannot compact the outbox: {e}");
    }
    if let Err(e) = crate::groups::store::purge(store.connection(), now, retention_ms) {
        tracing::warn!("cannot purge group posts: {e}");
    }
}
