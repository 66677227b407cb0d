//! The event loop's side of bandwidth adaptation: direct messages go
//! through a per-peer priority queue ([`Scheduler`]) paced by a per-peer
//! congestion controller ([`Controller`]), leave in batches when the peer
//! speaks `/peercomm/msg-batch/1.0.0`, and their answers feed the
//! controller and the retry planner ([`Presence`]).
//!
//! Implementation notes: batching is ack-clocked, like Nagle's algorithm:
//! what is queued for a peer when a request slot frees up leaves together,
//! so an idle link sends each message at once and a busy one coalesces.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::{Multiaddr, PeerId};
use peercomm_wire::{MessageId, Priority};

use super::{
    accept_batch, encode_answers, reject_uncommitted, send_events, EventLoop, InFlight, Internal,
};
use crate::bandwidth::budget::Budget;
use crate::bandwidth::congestion::{CongestionConfig, Controller, State};
use crate::bandwidth::report::{self, BandwidthReport, PeerLinkState};
use crate::bandwidth::scheduler::{Scheduler, SchedulerConfig};
use crate::delivery::Presence;
use crate::stats::bump;
use crate::NodeEvent;
use peercomm_store::DeliveryState;

/// Links listed in a report, at most (most queued first).
const MAX_REPORTED_LINKS: usize = 256;
/// Peers with a queue, at most (an idle, empty queue is dropped first).
const MAX_LINKS: usize = 4096;
/// Requests up to this size give round-trip samples (bigger ones mostly
/// measure transmission time).
const RTT_SAMPLE_MAX_BYTES: usize = 4 * 1024;
/// Bulk bytes in flight to one peer, at most (at least one request): more
/// would sit in the connection's buffers ahead of anything more urgent.
const BULK_IN_FLIGHT_BYTES: usize = 32 * 1024;
/// A batch request stays under this many bytes (a frame holds 128 KiB).
const MAX_BATCH_BYTES: usize = 96 * 1024;

/// One queued direct message.
#[derive(Debug)]
pub(super) struct Queued {
    flight: InFlight,
    addrs: Vec<Multiaddr>,
}

/// A request in flight.
struct Sent {
    peer: PeerId,
    at: Instant,
    /// Envelope bytes in it.
    bytes: usize,
    /// Of which bulk.
    bulk: usize,
}

/// A peer's queue, controller and requests in flight.
struct Link {
    queue: Scheduler<Queued>,
    control: Controller,
    in_flight: usize,
    /// Bulk bytes in requests in flight.
    bulk_in_flight: usize,
    last_used: Instant,
}

/// The loop's bandwidth state.
pub(super) struct BandwidthState {
    links: HashMap<PeerId, Link>,
    /// Batch requests awaiting their answers.
    batches: HashMap<OutboundRequestId, Vec<InFlight>>,
    /// When each request (single or batch) left, and to whom.
    sent: HashMap<OutboundRequestId, Sent>,
    /// Presence history of peers, shared with the due rounds.
    pub(super) presence: Arc<Mutex<Presence>>,
    /// Peers that speak the batch protocol (from identify).
    pub(super) batch_peers: std::collections::HashSet<PeerId>,
    /// The upload budget, when one is configured (created on first use).
    budget: Option<Budget>,
}

impl BandwidthState {
    pub(super) fn new() -> Self {
        Self {
            links: HashMap::new(),
            batches: HashMap::new(),
            sent: HashMap::new(),
            presence: Arc::new(Mutex::new(Presence::new())),
            batch_peers: std::collections::HashSet::new(),
            budget: None,
        }
    }
}

impl EventLoop {
    /// Whether direct messages go through the per-peer queues.
    pub(super) fn queues_on(&self) -> bool {
        let b = &self.shared.config.bandwidth;
        b.priorities_on() || b.batching_on() || b.budget_on()
    }

    /// Whether the upload budget (if any) is spent: deferrable traffic
    /// (bulk, ephemeral) waits. Refreshes the bucket from the meter.
    fn over_budget(&mut self, now: Instant) -> bool {
        let rate = self.shared.config.bandwidth.budget_bytes_per_sec;
        if !self.shared.config.bandwidth.budget_on() {
            return false;
        }
        let metered = self.shared.meter.total_out();
        let budget = self
            .bw
            .budget
            .get_or_insert_with(|| Budget::new(rate, now, metered));
        budget.observe(now, metered);
        !budget.allows_deferrable()
    }

    /// Queues a sealed direct message for `peer`.
    pub(super) fn bw_enqueue(
        &mut self,
        peer: PeerId,
        class: Priority,
        flight: InFlight,
        addrs: Vec<Multiaddr>,
    ) {
        let now = Instant::now();
        let priorities = self.shared.config.bandwidth.priorities_on();
        let over_budget = self.over_budget(now);
        // Without priorities (and no budget) every message is in one class
        // (FIFO).
        let class = if priorities || self.shared.config.bandwidth.budget_on() {
            class
        } else {
            Priority::Interactive
        };
        if self.bw.links.len() >= MAX_LINKS && !self.bw.links.contains_key(&peer) {
            if let Some(idle) = self
                .bw
                .links
                .iter()
                .filter(|(_, l)| l.queue.is_empty() && l.in_flight == 0)
                .min_by_key(|(_, l)| l.last_used)
                .map(|(p, _)| *p)
            {
                self.bw.links.remove(&idle);
            }
        }
        let link = self.bw.links.entry(peer).or_insert_with(|| Link {
            queue: Scheduler::new(SchedulerConfig::default()),
            control: Controller::new(CongestionConfig::default()),
            in_flight: 0,
            bulk_in_flight: 0,
            last_used: now,
        });
        link.last_used = now;
        let id = flight.id;
        let bytes = flight.envelope.len();
        if priorities && class == Priority::Ephemeral && link.control.actions(now).shed_ephemeral {
            self.shed(vec![id], "dropped: the link to the peer is congested");
            return;
        }
        if over_budget && class == Priority::Ephemeral {
            self.shed(vec![id], "dropped: the node's upload budget is spent");
            return;
        }
        if let Err(rejected) = link.queue.push(class, Queued { flight, addrs }, bytes, now) {
            // A full queue: the message stays in the outbox for its next round.
            let id = rejected.into_item().flight.id;
            self.in_flight_ids.remove(&id);
            bump(&self.shared.stats.queue_full);
            return;
        }
        self.bw_pump(peer);
    }

    /// Sends what `peer`'s window allows, most urgent first, batched when
    /// the peer speaks the batch protocol.
    pub(super) fn bw_pump(&mut self, peer: PeerId) {
        let now = Instant::now();
        let config = self.shared.config.bandwidth.clone();
        let batch_ok = config.batching_on() && self.bw.batch_peers.contains(&peer);
        let max_batch = if batch_ok { config.max_batch } else { 1 };
        let over_budget = self.over_budget(now);
        let Some(link) = self.bw.links.get_mut(&peer) else {
            return;
        };
        let wait = link.queue.oldest_wait(now).unwrap_or(Duration::ZERO);
        link.control.on_queue_delay(now, wait);
        let actions = link.control.actions(now);
        let mut shed = Vec::new();
        if config.priorities_on() {
            // Congested: bulk waits while anything else is queued or in
            // flight, then goes one request at a time (deferred, never
            // starved).
            let others = link.queue.len() > link.queue.len_of(Priority::Bulk);
            let hold = actions.defer_bulk && (others || link.in_flight > 0);
            link.queue.set_hold(
                Priority::Bulk,
                hold || link.bulk_in_flight >= BULK_IN_FLIGHT_BYTES,
            );
            if actions.shed_ephemeral {
                shed.extend(link.queue.shed_ephemeral().into_iter().map(|q| q.flight.id));
            }
        }
        if config.budget_on() {
            // The budget spent: bulk waits and typing/presence is dropped
            // (stale by the time the budget allows it).
            let fits = |b: &Option<Budget>, bytes: Option<usize>| {
                b.as_ref().is_none_or(|b| b.allows(bytes.unwrap_or(0)))
            };
            if over_budget || !fits(&self.bw.budget, link.queue.head_bytes(Priority::Bulk)) {
                link.queue.set_hold(Priority::Bulk, true);
            } else if !config.priorities_on() {
                link.queue.set_hold(Priority::Bulk, false);
            }
            if over_budget {
                shed.extend(link.queue.shed_ephemeral().into_iter().map(|q| q.flight.id));
            }
        }
        shed.extend(link.queue.take_dropped().into_iter().map(|q| q.flight.id));
        let window = if config.priorities_on() {
            link.control.window()
        } else {
            usize::MAX
        };
        let mut requests = Vec::new();
        while link.in_flight < window {
            let mut batch: Vec<Queued> = Vec::new();
            let mut bytes = 0;
            let mut bulk = 0;
            while batch.len() < max_batch {
                // The next item must fit too (one alone always goes): a
                // batch over a frame's 128 KiB would fail whole.
                if !batch.is_empty() && bytes + link.queue.max_head_bytes() > MAX_BATCH_BYTES {
                    break;
                }
                let Some(next) = link.queue.pop(now) else {
                    break;
                };
                self.shared
                    .stats
                    .add_class_bytes(next.class, next.bytes as u64);
                bytes += next.bytes;
                if let Some(budget) = self.bw.budget.as_mut() {
                    budget.charge(next.bytes);
                    if !budget.allows(link.queue.head_bytes(Priority::Bulk).unwrap_or(0)) {
                        link.queue.set_hold(Priority::Bulk, true);
                    }
                }
                if next.class == Priority::Bulk && config.priorities_on() {
                    // Bulk fills the link's buffers only so far: what is
                    // queued later and more urgent must not wait behind it.
                    bulk += next.bytes;
                    if link.bulk_in_flight + bulk >= BULK_IN_FLIGHT_BYTES {
                        link.queue.set_hold(Priority::Bulk, true);
                    }
                }
                batch.push(next.item);
                if bytes >= MAX_BATCH_BYTES / 2 {
                    break;
                }
            }
            shed.extend(link.queue.take_dropped().into_iter().map(|q| q.flight.id));
            if batch.is_empty() {
                break;
            }
            link.in_flight += 1;
            link.bulk_in_flight += bulk;
            link.control.on_sent(now, bytes);
            requests.push((batch, bulk));
        }
        if !shed.is_empty() {
            self.shed(shed, "dropped: the link to the peer is congested or the typing/presence signal went stale");
        }
        for (batch, bulk) in requests {
            self.bw_send(peer, batch, bulk, now);
        }
    }

    fn bw_send(&mut self, peer: PeerId, mut batch: Vec<Queued>, bulk: usize, now: Instant) {
        let bytes = batch.iter().map(|q| q.flight.envelope.len()).sum();
        let request_id = if batch.len() == 1 {
            let Some(q) = batch.pop() else { return };
            let request_id = self.swarm.behaviour_mut().msg.send_request_with_addresses(
                &peer,
                q.flight.envelope.clone(),
                q.addrs,
            );
            self.in_flight.insert(request_id, q.flight);
            request_id
        } else {
            let mut addrs: Vec<Multiaddr> = Vec::new();
            let mut body = Vec::new();
            let mut flights = Vec::with_capacity(batch.len());
            for q in batch {
                if let Ok(frame) = peercomm_wire::encode_frame(&q.flight.envelope) {
                    body.extend(frame);
                }
                for a in q.addrs {
                    if !addrs.contains(&a) {
                        addrs.push(a);
                    }
                }
                flights.push(q.flight);
            }
            bump(&self.shared.stats.batches_sent);
            let request_id = self
                .swarm
                .behaviour_mut()
                .msg_batch
                .send_request_with_addresses(&peer, body, addrs);
            self.bw.batches.insert(request_id, flights);
            request_id
        };
        self.bw.sent.insert(
            request_id,
            Sent {
                peer,
                at: now,
                bytes,
                bulk,
            },
        );
    }

    /// Whether a message of class `priority` is dropped, not relayed or
    /// left at mailboxes, when its recipient cannot be reached: ephemeral
    /// ones (typing, presence) with priorities on.
    pub(super) fn sheds_when_unreachable(&self, priority: Priority) -> bool {
        priority == Priority::Ephemeral && self.shared.config.bandwidth.priorities_on()
    }

    /// Messages dropped before they were sent (ephemeral only): they end
    /// as expired, with why.
    pub(super) fn shed(&mut self, ids: Vec<MessageId>, why: &'static str) {
        let now = self.now_ms();
        let events = self.shared.events.clone();
        for id in &ids {
            self.in_flight_ids.remove(id);
            bump(&self.shared.stats.ephemeral_shed);
        }
        self.background(move |store| {
            for id in ids {
                let _ = store.note_error(id.as_bytes(), why, now);
                if let Ok(true) = store.set_state(id.as_bytes(), DeliveryState::Expired, now) {
                    let _ = events.send(NodeEvent::MessageState {
                        id,
                        state: DeliveryState::Expired,
                    });
                }
            }
            None
        });
    }

    /// A request to `peer` was answered (`ok`) or failed: the controller
    /// learns from it and the window may let more out.
    pub(super) fn bw_answered(&mut self, request: OutboundRequestId, ok: bool) {
        let Some(Sent {
            peer,
            at,
            bytes,
            bulk,
        }) = self.bw.sent.remove(&request)
        else {
            return;
        };
        let now = Instant::now();
        let rtt = now.saturating_duration_since(at);
        if ok && bytes <= RTT_SAMPLE_MAX_BYTES {
            self.bw
                .presence
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .on_rtt(peer, rtt, now);
        }
        if let Some(link) = self.bw.links.get_mut(&peer) {
            link.in_flight = link.in_flight.saturating_sub(1);
            link.bulk_in_flight = link.bulk_in_flight.saturating_sub(bulk);
            if ok {
                // A big request's time is mostly transmission, not delay:
                // it counts as an answer but not as a round-trip sample.
                let sample = if bytes <= RTT_SAMPLE_MAX_BYTES {
                    rtt
                } else {
                    link.control.smoothed_rtt().unwrap_or(rtt).min(rtt)
                };
                link.control.on_acked(now, sample, bytes);
            } else {
                link.control.on_failure(now);
            }
        }
        self.bw_pump(peer);
    }

    /// Every tick: queues held back (deferred bulk, a closed window) get
    /// another chance, and idle links are forgotten.
    pub(super) fn bw_tick(&mut self) {
        let peers: Vec<PeerId> = self
            .bw
            .links
            .iter()
            .filter(|(_, l)| !l.queue.is_empty())
            .map(|(p, _)| *p)
            .collect();
        for peer in peers {
            self.bw_pump(peer);
        }
        let now = Instant::now();
        self.bw.links.retain(|_, l| {
            !l.queue.is_empty()
                || l.in_flight > 0
                || now.saturating_duration_since(l.last_used) < Duration::from_secs(300)
        });
    }

    /// Bandwidth use and the state of each peer link.
    pub(super) fn bw_report(&self) -> BandwidthReport {
        let now = Instant::now();
        let meter = self.shared.meter.snapshot();
        let stats = self.shared.stats.snapshot(&self.shared.wire);
        let mut links: Vec<PeerLinkState> = self
            .bw
            .links
            .iter()
            .map(|(peer, l)| PeerLinkState {
                peer: *peer,
                queued: l.queue.len(),
                in_flight: l.in_flight,
                window: l.control.window(),
                rtt_ms: l.control.smoothed_rtt().map(|d| d.as_secs_f64() * 1000.0),
                state: match l.control.state(now) {
                    State::Clear => "clear".to_string(),
                    State::Congested { reason, .. } => reason.as_str().to_string(),
                },
            })
            .collect();
        links.sort_by_key(|l| std::cmp::Reverse(l.queued));
        links.truncate(MAX_REPORTED_LINKS);
        BandwidthReport {
            config: self.shared.config.bandwidth.clone(),
            classes: report::classes(&meter, &self.shared.stats.class_bytes()),
            meter,
            links,
            sealed_dictionary: stats.sealed_dictionary,
            sealed_zstd: stats.sealed_zstd,
            sealed_uncompressed: stats.sealed_uncompressed,
            batches_sent: stats.batches_sent,
            ephemeral_shed: stats.ephemeral_shed,
        }
    }

    // ---- the batch protocol ------------------------------------------------

    pub(super) fn on_msg_batch_event(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.on_msg_batch_request(peer, request, channel),
                request_response::Message::Response {
                    request_id,
                    response,
                } => self.on_msg_batch_response(peer, request_id, response),
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                self.bw_answered(request_id, false);
                let unreachable = matches!(error, request_response::OutboundFailure::DialFailure);
                if matches!(
                    error,
                    request_response::OutboundFailure::UnsupportedProtocols
                ) {
                    self.bw.batch_peers.remove(&peer);
                }
                if let Some(flights) = self.bw.batches.remove(&request_id) {
                    for flight in flights {
                        self.attempt_failed(peer, flight, &error.to_string(), unreachable);
                    }
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                bump(&self.shared.stats.inbound_stream_failures);
                tracing::debug!(%peer, "inbound batch stream failed: {error}");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_msg_batch_request(
        &mut self,
        peer: PeerId,
        request: Vec<u8>,
        channel: ResponseChannel<Vec<u8>>,
    ) {
        if self.shutdown.is_some() {
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        self.batch_responses.insert(token, channel);
        let now = self.now_ms();
        let identity = self.identity.clone();
        let stats = self.shared.stats.clone();
        let events = self.shared.events.clone();
        self.committed(
            move |store| {
                let mut gathered = Vec::new();
                let answers =
                    accept_batch(store, &identity, &stats, &mut gathered, peer, &request, now);
                (answers, gathered)
            },
            move |(mut answers, gathered), durable| {
                match durable {
                    Ok(()) => send_events(&events, gathered),
                    // The receipts promised storage that was rolled back.
                    Err(_) => answers.iter_mut().for_each(|a| *a = reject_uncommitted()),
                }
                let response = encode_answers(&answers);
                Some(Internal::RespondBatch { token, response })
            },
        );
    }

    fn on_msg_batch_response(
        &mut self,
        peer: PeerId,
        request_id: OutboundRequestId,
        response: Vec<u8>,
    ) {
        self.bw_answered(request_id, true);
        let Some(flights) = self.bw.batches.remove(&request_id) else {
            return;
        };
        let mut answers = split_frames(&response, flights.len()).into_iter();
        for flight in flights {
            let answer = match answers.next() {
                Some(bytes) => {
                    <peercomm_wire::pb::MsgResponse as prost::Message>::decode(bytes.as_slice())
                        .map_err(|e| e.to_string())
                }
                None => Err("the batch answer has fewer answers than messages".to_string()),
            };
            self.settle(peer, flight.id, answer, None);
        }
    }
}

/// Splits concatenated frames, at most `max` of them; stops at the first
/// malformed one.
pub(crate) fn split_frames(mut bytes: &[u8], max: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !bytes.is_empty() && out.len() < max {
        match peercomm_wire::decode_frame(bytes) {
            Ok(Some((frame, used))) if used > 0 => {
                out.push(frame.to_vec());
                bytes = &bytes[used..];
            }
            _ => break,
        }
    }
    out
}
