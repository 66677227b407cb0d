//! The event loop's side of onion routing: sending our messages along a
//! checked path, peeling and passing on others' packets, delivering the
//! ones that end here, answering through SURBs, and the timers (key
//! rotation, path rotation, answers that never came). Decisions come from
//! the sans-IO [`crate::onion`] modules; this is the I/O.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::PeerId;
use peercomm_store::DeliveryState;
use peercomm_wire::pb::OnionAckCode;
use peercomm_wire::{
    decode_onion_packet, encode_onion_packet, MessageId, MsgResponse, OnionAck, OnionContent,
    OnionKey, PROBE_NONCE_BYTES,
};
use rand::rngs::OsRng;
use rand::RngCore;

use super::{accept_envelope_now, EventLoop, Internal};
use crate::config::{OnionConfig, Role};
use crate::handle::OnionStatus;
use crate::onion::keys::{OnionKeys, PeelError};
use crate::onion::packet::{self, Hop, Peeled, SurbKey};
use crate::onion::path::{prefix_of, PathChoice, PathSettings, Paths, Relay, Repair};
use crate::onion::{HopSeen, HOP_LOG_LEN};
use crate::routing::quota::ForwardQuota;
use crate::stats::bump;
use crate::NodeEvent;

/// Our messages waiting for a path check, at most (over all paths).
const MAX_WAITING: usize = 1024;
/// Our messages waiting for their answer through a SURB, at most.
const MAX_SENT: usize = 4096;
/// How often the relays we know are read again from the store (dropping
/// expired records); in between, each record stored updates the set.
const RELAYS_EVERY_MS: u64 = 600_000;
/// Records of routing-table peers fetched at once when relays are few.
const DISCOVER_AT_ONCE: usize = 8;
/// The least time between two such fetches.
const DISCOVER_EVERY_MS: u64 = 30_000;
/// Peer records read when looking for relays.
const RELAYS_READ: u32 = 2000;

/// One of our messages, ready to go along a path.
#[derive(Debug, Clone)]
pub(super) struct OnionSend {
    pub(super) id: MessageId,
    pub(super) recipient: PeerId,
    pub(super) onion_key: OnionKey,
    pub(super) envelope: Vec<u8>,
}

/// An outbound onion request of ours, or one we relay.
enum Outbound {
    /// Our message's first hop; its answer comes back through `surb`.
    Message { surb: [u8; 16], path: u64 },
    /// Our path check.
    Probe { nonce: [u8; 16], path: u64 },
    /// Our answer through someone's SURB.
    Answer,
    /// A packet we relay; the previous hop waits on `token`.
    Relayed { token: u64 },
}

/// Our message on its way, waiting for the answer through its SURB.
struct Sent {
    send: OnionSend,
    key: SurbKey,
    path: u64,
    relays: Vec<PeerId>,
    sent_ms: u64,
}

/// Onion state kept by the event loop.
pub(super) struct OnionState {
    keys: OnionKeys,
    paths: Paths,
    /// Relay-role peers with an onion key, from the records we hold.
    relays: Vec<Relay>,
    relays_read_ms: Option<u64>,
    reading_relays: bool,
    discovered_ms: Option<u64>,
    waiting: HashMap<u64, Vec<OnionSend>>,
    probes: HashMap<[u8; PROBE_NONCE_BYTES], u64>,
    outbound: HashMap<OutboundRequestId, Outbound>,
    channels: HashMap<u64, ResponseChannel<Vec<u8>>>,
    next_token: u64,
    sent: HashMap<[u8; 16], Sent>,
    quota: ForwardQuota,
    log: Option<VecDeque<HopSeen>>,
}

impl OnionState {
    /// Keys come from the OS RNG, never from a (possibly seeded) node RNG.
    pub(super) fn new(config: &OnionConfig, now_ms: u64) -> Self {
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            keys: OnionKeys::new(
                now_ms,
                ms(config.key_rotation),
                ms(config.key_grace),
                config.max_replay_tags,
                &mut OsRng,
            ),
            paths: Paths::new(PathSettings {
                hops: config.hops,
                rotate_ms: ms(config.path_rotation),
                check_timeout_ms: ms(config.check_timeout),
                failed_for_ms: ms(config.failed_relay_for),
                recent_ms: ms(config.path_rotation),
            }),
            relays: Vec::new(),
            relays_read_ms: None,
            reading_relays: false,
            discovered_ms: None,
            waiting: HashMap::new(),
            probes: HashMap::new(),
            outbound: HashMap::new(),
            channels: HashMap::new(),
            next_token: 0,
            sent: HashMap::new(),
            quota: ForwardQuota::new(config.forward_per_peer_per_minute, 0),
            log: config.keep_hop_log.then(VecDeque::new),
        }
    }

    /// Our current onion key, for the peer record.
    pub(super) fn record_key(&self) -> OnionKey {
        let (epoch, key) = self.keys.current();
        OnionKey { key, epoch }
    }

    /// Paths, relays known, key epoch and the hop log, for status output.
    pub(super) fn status(&self) -> OnionStatus {
        OnionStatus {
            paths: self
                .paths
                .paths()
                .iter()
                .map(|p| p.relays.iter().map(|r| r.peer).collect())
                .collect(),
            relays_known: self.relays.len(),
            epoch: self.keys.current().0,
            live_epochs: self.keys.live_epochs(),
            replay_tags: self.keys.tags_held(),
            hops_seen: self
                .log
                .as_ref()
                .map(|l| l.iter().copied().collect())
                .unwrap_or_default(),
        }
    }

    fn see(&mut self, from: PeerId, to: Option<PeerId>) {
        if let Some(log) = &mut self.log {
            if log.len() == HOP_LOG_LEN {
                log.pop_front();
            }
            log.push_back(HopSeen { from, to });
        }
    }

    /// Whether we know too few relays to choose paths freely: new records
    /// are worth reading at once.
    pub(super) fn relays_wanted(&self) -> bool {
        self.relays.len() < 2 * self.paths.hops() + 2
    }

    /// A peer record was stored: `relay` is what it says of the peer as
    /// a relay (`None`: not one, or no longer).
    pub(super) fn learn_relay(&mut self, peer: PeerId, relay: Option<Relay>) {
        self.relays.retain(|r| r.peer != peer);
        if let Some(relay) = relay {
            if self.relays.len() < RELAYS_READ as usize {
                self.relays.push(relay);
            }
        }
    }

    fn waiting_len(&self) -> usize {
        self.waiting.values().map(Vec::len).sum()
    }
}

/// The relays among stored peer records: relay role, an onion key, valid.
fn relays_in_store(store: &peercomm_store::Store, now_ms: u64) -> Vec<Relay> {
    let rows = match store.peers(RELAYS_READ) {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!("cannot read peer records for relays: {e}");
            return Vec::new();
        }
    };
    rows.iter()
        .filter_map(|row| relay_of(&peercomm_wire::verify_record(&row.record, now_ms).ok()?))
        .collect()
}

/// What a verified peer record says of its peer as a relay: `None` unless
/// it has the relay role and an onion key.
pub(super) fn relay_of(record: &peercomm_wire::PeerRecord) -> Option<Relay> {
    if !record.roles.iter().any(|r| r == Role::Relay.as_str()) {
        return None;
    }
    let onion = record.onion?;
    Some(Relay {
        peer: record.peer_id,
        node: peercomm_wire::node_address(&record.peer_id)?,
        onion_key: onion.key,
        epoch: onion.epoch,
        prefix: prefix_of(&record.addrs),
    })
}

impl EventLoop {
    /// Reads the relays we know again, if it is time (or `now` is true).
    /// Too few relays known: asks the DHT for more now and then.
    pub(super) fn refresh_relays(&mut self, now: bool) {
        let now_ms = self.now_ms();
        let since =
            |at: Option<u64>, every: u64| at.is_none_or(|at| now_ms.saturating_sub(at) >= every);
        if self.onion.relays_wanted() && since(self.onion.discovered_ms, DISCOVER_EVERY_MS) {
            self.onion.discovered_ms = Some(now_ms);
            self.discover_relays();
        }
        if self.onion.reading_relays || !(now || since(self.onion.relays_read_ms, RELAYS_EVERY_MS))
        {
            return;
        }
        self.onion.reading_relays = true;
        self.onion.relays_read_ms = Some(now_ms);
        self.background(move |store| {
            Some(Internal::OnionRelays {
                relays: relays_in_store(store, now_ms),
            })
        });
    }

    /// Too few relays known: fetch the records of routing-table peers we
    /// hold none of from the DHT (their arrival triggers another read).
    fn discover_relays(&mut self) {
        let known: Vec<PeerId> = self.onion.relays.iter().map(|r| r.peer).collect();
        let mut unknown = Vec::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            for entry in bucket.iter() {
                let peer = *entry.node.key.preimage();
                if !known.contains(&peer) {
                    unknown.push(peer);
                }
            }
        }
        for peer in unknown.into_iter().take(DISCOVER_AT_ONCE) {
            self.lookup_unreachable(peer);
        }
    }

    pub(super) fn on_onion_relays(&mut self, relays: Vec<Relay>) {
        self.onion.reading_relays = false;
        let me = self.shared.peer_id;
        self.onion.relays = relays.into_iter().filter(|r| r.peer != me).collect();
    }

    /// Once a second: key rotation, path checks that never came back,
    /// answers that never came.
    pub(super) fn onion_tick(&mut self) {
        let now_ms = self.now_ms();
        if self.onion.keys.poll_rotate(now_ms, &mut OsRng) {
            tracing::info!(epoch = self.onion.keys.current().0, "new onion key");
            self.sign_record();
        }
        for id in self.onion.paths.expire(now_ms) {
            tracing::debug!(path = id, "onion path check timed out");
            self.path_failed(id, None);
        }
        // Paths rotated away while messages waited on them.
        let gone: Vec<u64> = self
            .onion
            .waiting
            .keys()
            .copied()
            .filter(|id| self.onion.paths.get(*id).is_none())
            .collect();
        for id in gone {
            self.path_failed(id, None);
        }
        let timeout =
            u64::try_from(self.shared.config.onion.answer_timeout.as_millis()).unwrap_or(u64::MAX);
        let late: Vec<[u8; 16]> = self
            .onion
            .sent
            .iter()
            .filter(|(_, s)| now_ms.saturating_sub(s.sent_ms) >= timeout)
            .map(|(k, _)| *k)
            .collect();
        for surb in late {
            if let Some(sent) = self.onion.sent.remove(&surb) {
                // Somewhere on the path (or at the recipient) it was lost:
                // the path is not trusted again, and the outbox retries.
                self.onion.paths.drop_path(sent.path);
                self.origin_failed(sent.send.id, "no answer through the onion path in time");
            }
        }
        self.refresh_relays(false);
    }

    /// Sends one of our messages along an onion path (checking a new path
    /// first). Its id is in `in_flight_ids` until it is answered or failed.
    pub(super) fn send_onion(&mut self, send: OnionSend) {
        let now_ms = self.now_ms();
        let me = self.shared.peer_id;
        let choice = self.onion.paths.path_for(
            me,
            send.recipient,
            &self.onion.relays,
            now_ms,
            &mut self.rng,
        );
        match choice {
            Ok(PathChoice::Ready { id, relays }) => self.transmit(send, id, relays),
            Ok(PathChoice::Wait { id }) => self.wait_for_path(id, send),
            Ok(PathChoice::Check { id, relays }) => {
                self.wait_for_path(id, send);
                self.send_probe(id, &relays);
            }
            Err(e) => {
                self.refresh_relays(true);
                self.origin_failed(send.id, &e.to_string());
            }
        }
    }

    fn wait_for_path(&mut self, path: u64, send: OnionSend) {
        if self.onion.waiting_len() >= MAX_WAITING {
            self.origin_failed(send.id, "too many onion messages waiting for a path");
            return;
        }
        self.onion.waiting.entry(path).or_default().push(send);
    }

    /// Our message along checked path `path`, with a SURB back along the
    /// same relays reversed.
    fn transmit(&mut self, send: OnionSend, path: u64, relays: Vec<Relay>) {
        let me = self.shared.peer_id;
        if relays.iter().any(|r| r.peer == send.recipient) {
            // The path changed under the message (a repair): another one.
            self.send_onion_again(send);
            return;
        }
        let Some(first) = relays.first().map(|r| r.peer) else {
            self.origin_failed(send.id, "empty onion path");
            return;
        };
        let Some(recipient) = packet::hop_of(&send.recipient, send.onion_key.key) else {
            self.origin_failed(send.id, "the recipient's PeerId has no Ed25519 key");
            return;
        };
        let Some(own) = packet::hop_of(&me, self.onion.keys.current().1) else {
            self.origin_failed(send.id, "our PeerId has no Ed25519 key");
            return;
        };
        let forward: Vec<Hop> = relays.iter().map(Hop::from).chain([recipient]).collect();
        let back: Vec<Hop> = relays.iter().rev().map(Hop::from).chain([own]).collect();
        let built = packet::surb(&back, &mut self.rng).and_then(|(surb, key)| {
            let payload = OnionContent::Message {
                envelope: send.envelope.clone(),
                surb,
            }
            .encode()
            .map_err(|e| packet::PacketError::Sphinx(e.to_string()))?;
            Ok((packet::build(&forward, &payload, &mut self.rng)?, key))
        });
        let (bytes, key) = match built {
            Ok(b) => b,
            Err(e) => {
                self.origin_failed(send.id, &format!("cannot build the onion packet: {e}"));
                return;
            }
        };
        if self.onion.sent.len() >= MAX_SENT {
            self.origin_failed(send.id, "too many onion messages awaiting answers");
            return;
        }
        let request = self
            .swarm
            .behaviour_mut()
            .onion
            .send_request(&first, encode_onion_packet(&bytes));
        let surb = key.id;
        self.onion
            .outbound
            .insert(request, Outbound::Message { surb, path });
        let id = send.id;
        self.onion.sent.insert(
            surb,
            Sent {
                send,
                key,
                path,
                relays: relays.iter().map(|r| r.peer).collect(),
                sent_ms: self.now_ms(),
            },
        );
        bump(&self.shared.stats.onion_sent);
        bump(&self.shared.stats.attempts);
        let now_ms = self.now_ms();
        let events = self.shared.events.clone();
        self.background(move |store| {
            if let Ok(true) = store.set_in_transit(id.as_bytes(), DeliveryState::Onion, now_ms) {
                let _ = events.send(NodeEvent::MessageState {
                    id,
                    state: DeliveryState::Onion,
                });
            }
            None
        });
    }

    /// A path check: a packet whose last hop is the path's last relay.
    /// Every hop answers once the next has, so an accepted check means
    /// every relay took it. It does not loop back to us: the last relay
    /// would learn who built the path.
    fn send_probe(&mut self, path: u64, relays: &[Relay]) {
        let Some(first) = relays.first().map(|r| r.peer) else {
            return;
        };
        let mut nonce = [0u8; PROBE_NONCE_BYTES];
        self.rng.fill_bytes(&mut nonce);
        let hops: Vec<Hop> = relays.iter().map(Hop::from).collect();
        let built = OnionContent::Probe(nonce)
            .encode()
            .map_err(|e| packet::PacketError::Sphinx(e.to_string()))
            .and_then(|payload| packet::build(&hops, &payload, &mut self.rng));
        let bytes = match built {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("cannot build a path check: {e}");
                self.path_failed(path, None);
                return;
            }
        };
        bump(&self.shared.stats.onion_path_checks);
        let request = self
            .swarm
            .behaviour_mut()
            .onion
            .send_request(&first, encode_onion_packet(&bytes));
        self.onion
            .outbound
            .insert(request, Outbound::Probe { nonce, path });
        self.onion.probes.insert(nonce, path);
    }

    /// Path `path` failed at `relay` (or somewhere unknown): repair it and
    /// check it again, or drop it and let its waiting messages go back to
    /// the outbox.
    fn path_failed(&mut self, path: u64, relay: Option<PeerId>) {
        if relay.is_some() {
            bump(&self.shared.stats.onion_hop_failures);
        }
        self.onion.probes.retain(|_, p| *p != path);
        // Never the sender or a recipient waiting on the path.
        let mut exclude = vec![self.shared.peer_id];
        exclude.extend(
            self.onion
                .waiting
                .get(&path)
                .into_iter()
                .flatten()
                .map(|w| w.recipient),
        );
        let now_ms = self.now_ms();
        let repair = self.onion.paths.hop_failed(
            path,
            relay,
            &exclude,
            &self.onion.relays,
            now_ms,
            &mut self.rng,
        );
        match repair {
            Repair::Check { id, relays } => {
                tracing::debug!(
                    path = id,
                    ?relay,
                    "onion hop replaced; checking the path again"
                );
                self.send_probe(id, &relays);
            }
            Repair::Dropped { id } => {
                let waiting = self.onion.waiting.remove(&id).unwrap_or_default();
                for send in waiting {
                    // A fresh path for each, at once.
                    self.send_onion_again(send);
                }
            }
        }
    }

    /// Tries a message whose path failed on another path; if that cannot
    /// be had now, the outbox retries later.
    fn send_onion_again(&mut self, send: OnionSend) {
        let now_ms = self.now_ms();
        let me = self.shared.peer_id;
        match self.onion.paths.path_for(
            me,
            send.recipient,
            &self.onion.relays,
            now_ms,
            &mut self.rng,
        ) {
            Ok(PathChoice::Ready { id, relays }) => self.transmit(send, id, relays),
            Ok(PathChoice::Wait { id }) => self.wait_for_path(id, send),
            Ok(PathChoice::Check { id, relays }) => {
                self.wait_for_path(id, send);
                self.send_probe(id, &relays);
            }
            Err(e) => self.origin_failed(send.id, &format!("onion path failed; {e}")),
        }
    }

    pub(super) fn on_onion_event(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.on_onion_request(peer, request, channel),
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    let ack = OnionAck::decode(&response).unwrap_or_else(|e| {
                        OnionAck::failed(OnionAckCode::OnionAckMalformed, 0, e.to_string())
                    });
                    self.on_onion_ack(request_id, ack);
                }
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                // The peer we sent to could not be reached or did not answer:
                // to the one waiting on us, that is one hop beyond us.
                let ack = OnionAck::failed(OnionAckCode::OnionAckUnreachable, 0, error.to_string());
                self.on_onion_ack(request_id, ack);
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                bump(&self.shared.stats.inbound_stream_failures);
                tracing::debug!(%peer, "inbound onion stream failed: {error}");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// The answer of the peer we sent a packet to. `ack.distance` counts
    /// from that peer (0: the peer itself failed or refused).
    fn on_onion_ack(&mut self, request: OutboundRequestId, ack: OnionAck) {
        let Some(outbound) = self.onion.outbound.remove(&request) else {
            return;
        };
        let accepted = ack.code == OnionAckCode::OnionAckAccepted;
        match outbound {
            Outbound::Relayed { token } => {
                if !accepted && ack.code == OnionAckCode::OnionAckUnreachable && ack.distance == 0 {
                    bump(&self.shared.stats.onion_unreachable);
                }
                // Seen from the hop before us, it happened one hop further.
                let back = ack.passed_back();
                self.onion_respond(token, back);
            }
            Outbound::Answer => {
                if !accepted {
                    tracing::debug!(code = ?ack.code, "our answer through a SURB failed: {}", ack.reason);
                }
            }
            Outbound::Probe { nonce, path } => {
                if self.onion.probes.remove(&nonce).is_none() {
                    // A check of a path since repaired or dropped.
                    return;
                }
                if accepted {
                    self.path_ready(path);
                    return;
                }
                let relays: Vec<PeerId> = self
                    .onion
                    .paths
                    .get(path)
                    .map(|p| p.relays.iter().map(|r| r.peer).collect())
                    .unwrap_or_default();
                // Distance counts from the first relay.
                let at = (ack.distance as usize).min(relays.len().saturating_sub(1));
                tracing::debug!(path, code = ?ack.code, at, "onion path check failed: {}", ack.reason);
                self.path_failed(path, relays.get(at).copied());
            }
            Outbound::Message { surb, path } => {
                if accepted {
                    return;
                }
                let Some(sent) = self.onion.sent.remove(&surb) else {
                    return;
                };
                let at = ack.distance as usize;
                tracing::debug!(id = %sent.send.id, code = ?ack.code, at, "onion message failed: {}", ack.reason);
                if let Some(relay) = sent.relays.get(at).copied() {
                    // A relay failed: repair the path and send again on it.
                    self.onion.waiting.entry(path).or_default().push(sent.send);
                    self.path_failed(path, Some(relay));
                } else {
                    // The recipient could not be reached or refused: the
                    // path is fine, the outbox retries later.
                    self.origin_failed(
                        sent.send.id,
                        &format!(
                            "the recipient was not reached through the onion path ({:?}: {})",
                            ack.code, ack.reason
                        ),
                    );
                }
            }
        }
    }

    fn onion_respond(&mut self, token: u64, ack: OnionAck) {
        if let Some(channel) = self.onion.channels.remove(&token) {
            let _ = self
                .swarm
                .behaviour_mut()
                .onion
                .send_response(channel, ack.encode());
        }
    }

    fn onion_refuse(&mut self, channel: ResponseChannel<Vec<u8>>, ack: OnionAck) {
        let _ = self
            .swarm
            .behaviour_mut()
            .onion
            .send_response(channel, ack.encode());
    }

    fn on_onion_request(
        &mut self,
        from: PeerId,
        bytes: Vec<u8>,
        channel: ResponseChannel<Vec<u8>>,
    ) {
        if self.shutdown.is_some() {
            return;
        }
        let stats = self.shared.stats.clone();
        let parsed = decode_onion_packet(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|b| packet::parse(&b).map_err(|e| e.to_string()));
        let sphinx = match parsed {
            Ok(p) => p,
            Err(e) => {
                bump(&stats.onion_dropped_malformed);
                tracing::debug!(%from, "malformed onion packet: {e}");
                self.onion_refuse(
                    channel,
                    OnionAck::failed(OnionAckCode::OnionAckMalformed, 0, e),
                );
                return;
            }
        };
        let peeled = match self.onion.keys.peel(sphinx) {
            Ok(p) => {
                tracing::trace!(%from, epoch = p.epoch, "onion packet peeled");
                packet::peeled(p.processed)
                    .map_err(|e| (OnionAckCode::OnionAckMalformed, e.to_string()))
            }
            Err(e) => Err((
                match e {
                    PeelError::UnknownKey => OnionAckCode::OnionAckUnknownKey,
                    PeelError::Replayed => OnionAckCode::OnionAckReplayed,
                    PeelError::EpochFull => OnionAckCode::OnionAckPolicy,
                    PeelError::Malformed(_) => OnionAckCode::OnionAckMalformed,
                },
                e.to_string(),
            )),
        };
        match peeled {
            Err((code, reason)) => {
                bump(match code {
                    OnionAckCode::OnionAckUnknownKey => &stats.onion_dropped_unknown_key,
                    OnionAckCode::OnionAckReplayed => &stats.onion_dropped_replay,
                    OnionAckCode::OnionAckPolicy => &stats.onion_refused_policy,
                    _ => &stats.onion_dropped_malformed,
                });
                tracing::debug!(%from, ?code, "onion packet refused: {reason}");
                self.onion_refuse(channel, OnionAck::failed(code, 0, reason));
            }
            Ok(Peeled::Forward { next, packet }) => self.relay(from, next, packet, channel),
            Ok(Peeled::Final {
                identifier,
                payload,
            }) => {
                self.onion.see(from, None);
                let key = self.onion.sent.get(&identifier).map(|s| &s.key);
                let content = packet::open_final(identifier, payload, key)
                    .map_err(|e| e.to_string())
                    .and_then(|plain| OnionContent::decode(&plain).map_err(|e| e.to_string()));
                match content {
                    Ok(content) => {
                        self.onion_refuse(channel, OnionAck::accepted());
                        self.on_onion_content(from, identifier, content);
                    }
                    Err(e) => {
                        bump(&stats.onion_dropped_malformed);
                        tracing::debug!(%from, "onion payload refused: {e}");
                        self.onion_refuse(
                            channel,
                            OnionAck::failed(OnionAckCode::OnionAckMalformed, 0, e),
                        );
                    }
                }
            }
        }
    }

    /// Passes a peeled packet on to `next`; the previous hop hears back
    /// once `next` has answered.
    fn relay(
        &mut self,
        from: PeerId,
        next: PeerId,
        packet: Vec<u8>,
        channel: ResponseChannel<Vec<u8>>,
    ) {
        let stats = self.shared.stats.clone();
        let refusal = if !self.shared.config.has_role(Role::Relay) {
            Some("this node does not relay (role off)")
        } else if next == self.shared.peer_id || next == from {
            Some("a path through this node twice in a row")
        } else if self.onion.channels.len() >= self.shared.config.onion.max_pending {
            Some("too many packets in flight here")
        } else if !self.onion.quota.allow(from, 0, Instant::now()) {
            Some("over the per-peer relay quota")
        } else {
            None
        };
        if let Some(reason) = refusal {
            bump(&stats.onion_refused_policy);
            self.onion_refuse(
                channel,
                OnionAck::failed(OnionAckCode::OnionAckPolicy, 0, reason),
            );
            return;
        }
        self.onion.see(from, Some(next));
        bump(&stats.onion_relayed);
        let token = self.onion.next_token;
        self.onion.next_token += 1;
        self.onion.channels.insert(token, channel);
        let addrs = self.told_addrs.get(&next).cloned().unwrap_or_default();
        let request = self
            .swarm
            .behaviour_mut()
            .onion
            .send_request_with_addresses(&next, encode_onion_packet(&packet), addrs);
        self.onion
            .outbound
            .insert(request, Outbound::Relayed { token });
        if !self.swarm.is_connected(&next) {
            // If the dial fails, the next packet for it may find it.
            self.lookup_unreachable(next);
        }
    }

    /// Path `path` was checked: what waited on it goes out.
    fn path_ready(&mut self, path: u64) {
        let now_ms = self.now_ms();
        if !self.onion.paths.checked(path, now_ms) {
            return;
        }
        let relays = self
            .onion
            .paths
            .get(path)
            .map(|p| p.relays.clone())
            .unwrap_or_default();
        for send in self.onion.waiting.remove(&path).unwrap_or_default() {
            self.transmit(send, path, relays.clone());
        }
    }

    /// A packet that ended here.
    fn on_onion_content(&mut self, from: PeerId, identifier: [u8; 16], content: OnionContent) {
        let now_ms = self.now_ms();
        match content {
            // Someone's path check ended here (we are the last relay of
            // their path): the ack already told them.
            OnionContent::Probe(_) => {}
            OnionContent::Answer(answer) => {
                let Some(sent) = self.onion.sent.remove(&identifier) else {
                    return;
                };
                bump(&self.shared.stats.onion_answers);
                for relay in &sent.relays {
                    self.onion.paths.answered(*relay, now_ms);
                }
                let hops = u32::try_from(sent.relays.len() + 1).unwrap_or(u32::MAX);
                self.settle(
                    sent.send.recipient,
                    sent.send.id,
                    Ok(answer.to_pb()),
                    Some(hops),
                );
            }
            OnionContent::Message { envelope, surb } => {
                let identity = self.identity.clone();
                let stats = self.shared.stats.clone();
                let events = self.shared.events.clone();
                self.background(move |store| {
                    // The sender's address is unknown here (that is the
                    // point); `from` is the last relay.
                    let answer = accept_envelope_now(
                        store, &identity, &stats, &events, from, &envelope, now_ms,
                    );
                    bump(&stats.onion_delivered);
                    Some(Internal::OnionAnswer {
                        surb,
                        answer: MsgResponse::from_pb(answer).ok(),
                    })
                });
            }
        }
    }

    /// Sends the answer to an onion message back through its SURB.
    pub(super) fn onion_answer(&mut self, surb: Vec<u8>, answer: Option<MsgResponse>) {
        let Some(answer) = answer else {
            return;
        };
        let built = OnionContent::Answer(answer)
            .encode()
            .map_err(|e| packet::PacketError::Sphinx(e.to_string()))
            .and_then(|payload| packet::use_surb(&surb, &payload));
        match built {
            Ok((bytes, first)) => {
                let request = self
                    .swarm
                    .behaviour_mut()
                    .onion
                    .send_request(&first, encode_onion_packet(&bytes));
                self.onion.outbound.insert(request, Outbound::Answer);
            }
            Err(e) => {
                bump(&self.shared.stats.onion_dropped_malformed);
                tracing::debug!("cannot answer through the SURB: {e}");
            }
        }
    }
}
