//! Byte accounting by peer and by protocol, fed by the transport.
//!
//! A [`Meter`] is shared (one `Arc` per node) by every connection of the
//! node. It records
//! - **totals**: every byte the transport sees (raw socket bytes for TCP and
//!   in-memory links; substream bytes for QUIC, whose UDP packets are out of
//!   sight);
//! - **per peer**: the same bytes, attributed to the remote once it is
//!   authenticated. Bytes a connection carried before that are added to the
//!   peer when it becomes known, or to the *unauthenticated* bucket if the
//!   handshake fails;
//! - **per protocol**: substream payload by negotiated protocol name
//!   (multistream-select sniffed by [`Sniffer`]), plus the derived
//!   *transport overhead*: totals minus all payload (Noise, Yamux,
//!   multistream-select, handshakes).
//!
//! Everything is bounded: at most `max_peers` peers (disconnected peers,
//! least recently active first, are folded into an *other peers*
//! aggregate) and `max_protocols` names (later names count as
//! [`OTHER_PROTOCOLS`]).
//!
//! The hot path (every read and write) touches atomics only; a short mutex
//! is taken when a connection learns its peer and when a substream learns
//! its protocol.

// Implementation notes: a connection holds its peer's slot (`Arc<PeerSlot>`)
// and a connection count on it. Slots are only handed out and evicted under
// the `peers` lock, and only when their count is zero, so no byte is ever
// added to an evicted slot.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use libp2p::PeerId;
use serde::Serialize;

/// Peers tracked one by one; more are folded into the *other peers* row.
pub const MAX_METERED_PEERS: usize = 4096;
/// Protocol names tracked one by one; more count as [`OTHER_PROTOCOLS`].
pub const MAX_METERED_PROTOCOLS: usize = 64;
/// The protocol row for substream bytes whose protocol was never learned.
pub const UNKNOWN_PROTOCOL: &str = "unknown";
/// The protocol row for names beyond [`MAX_METERED_PROTOCOLS`].
pub const OTHER_PROTOCOLS: &str = "other";
/// The multistream-select sniffer looks at most at this many bytes of each
/// direction of a substream.
pub const SNIFF_WINDOW_BYTES: usize = 256;

const MULTISTREAM_HEADER: &[u8] = b"/multistream/1.0.0";

/// Which way bytes went, seen from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Received.
    In,
    /// Sent.
    Out,
}

/// A pair of byte counters.
#[derive(Debug, Default)]
pub(crate) struct ByteCounter {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl ByteCounter {
    pub(crate) fn add(&self, direction: Direction, bytes: u64) {
        if bytes == 0 {
            return;
        }
        match direction {
            Direction::In => self.bytes_in.fetch_add(bytes, Ordering::Relaxed),
            Direction::Out => self.bytes_out.fetch_add(bytes, Ordering::Relaxed),
        };
    }

    fn add_pair(&self, (bytes_in, bytes_out): (u64, u64)) {
        self.add(Direction::In, bytes_in);
        self.add(Direction::Out, bytes_out);
    }

    fn get(&self) -> (u64, u64) {
        (
            self.bytes_in.load(Ordering::Relaxed),
            self.bytes_out.load(Ordering::Relaxed),
        )
    }

    fn take(&self) -> (u64, u64) {
        (
            self.bytes_in.swap(0, Ordering::Relaxed),
            self.bytes_out.swap(0, Ordering::Relaxed),
        )
    }
}

#[derive(Debug, Default)]
struct PeerSlot {
    bytes: ByteCounter,
    /// Live connections holding this slot.
    connections: AtomicUsize,
    /// Meter tick at which the last connection closed.
    last_active: AtomicU64,
}

#[derive(Debug, Default)]
struct Peers {
    by_id: HashMap<PeerId, Arc<PeerSlot>>,
    /// Evicted peers' bytes and peers that found no free slot.
    other: Arc<PeerSlot>,
}

#[derive(Debug, Default)]
struct Protocols {
    by_name: HashMap<String, Arc<ByteCounter>>,
    other: Arc<ByteCounter>,
    unknown: Arc<ByteCounter>,
}

/// Bytes by peer and by protocol; see the module docs.
#[derive(Debug)]
pub struct Meter {
    max_peers: usize,
    max_protocols: usize,
    total: ByteCounter,
    unauthenticated: ByteCounter,
    /// A logical clock ordering disconnections, for eviction.
    clock: AtomicU64,
    peers: Mutex<Peers>,
    protocols: Mutex<Protocols>,
}

impl Default for Meter {
    fn default() -> Self {
        Self::new()
    }
}

/// One peer's bytes in a [`MeterSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerBytes {
    /// The peer.
    pub peer: PeerId,
    /// Bytes received from it.
    pub bytes_in: u64,
    /// Bytes sent to it.
    pub bytes_out: u64,
}

/// One protocol's payload in a [`MeterSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProtocolBytes {
    /// The negotiated name, [`UNKNOWN_PROTOCOL`] or [`OTHER_PROTOCOLS`].
    pub protocol: String,
    /// Payload received.
    pub bytes_in: u64,
    /// Payload sent.
    pub bytes_out: u64,
}

/// What a [`Meter`] has counted so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeterSnapshot {
    /// Every byte received (raw for TCP and memory links, substream bytes
    /// for QUIC).
    pub total_in: u64,
    /// Every byte sent, likewise.
    pub total_out: u64,
    /// Tracked peers, most bytes first.
    pub peers: Vec<PeerBytes>,
    /// Received from peers no longer tracked one by one.
    pub other_peers_in: u64,
    /// Sent to peers no longer tracked one by one.
    pub other_peers_out: u64,
    /// Received on connections whose handshake failed.
    pub unauthenticated_in: u64,
    /// Sent on connections whose handshake failed.
    pub unauthenticated_out: u64,
    /// Substream payload by protocol, most bytes first.
    pub protocols: Vec<ProtocolBytes>,
    /// Received bytes that are no protocol's payload.
    pub overhead_in: u64,
    /// Sent bytes that are no protocol's payload.
    pub overhead_out: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data under these locks stays consistent at every step.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Meter {
    /// A meter with the default bounds ([`MAX_METERED_PEERS`],
    /// [`MAX_METERED_PROTOCOLS`]).
    pub fn new() -> Self {
        Self::with_bounds(MAX_METERED_PEERS, MAX_METERED_PROTOCOLS)
    }

    /// A meter tracking at most `max_peers` peers and `max_protocols`
    /// protocol names one by one.
    pub fn with_bounds(max_peers: usize, max_protocols: usize) -> Self {
        Self {
            max_peers,
            max_protocols,
            total: ByteCounter::default(),
            unauthenticated: ByteCounter::default(),
            clock: AtomicU64::new(0),
            peers: Mutex::default(),
            protocols: Mutex::default(),
        }
    }

    /// Every byte sent so far (cheap: one atomic load).
    pub fn total_out(&self) -> u64 {
        self.total.get().1
    }

    /// Bytes received from and sent to `peer`, if it is tracked.
    pub fn peer(&self, peer: &PeerId) -> Option<(u64, u64)> {
        lock(&self.peers)
            .by_id
            .get(peer)
            .map(|slot| slot.bytes.get())
    }

    /// Everything counted so far.
    pub fn snapshot(&self) -> MeterSnapshot {
        let (total_in, total_out) = self.total.get();
        let (unauthenticated_in, unauthenticated_out) = self.unauthenticated.get();
        let (mut peers, (other_peers_in, other_peers_out)) = {
            let peers = lock(&self.peers);
            let rows: Vec<PeerBytes> = peers
                .by_id
                .iter()
                .map(|(peer, slot)| {
                    let (bytes_in, bytes_out) = slot.bytes.get();
                    PeerBytes {
                        peer: *peer,
                        bytes_in,
                        bytes_out,
                    }
                })
                .collect();
            (rows, peers.other.bytes.get())
        };
        peers.sort_by_key(|row| std::cmp::Reverse(row.bytes_in.saturating_add(row.bytes_out)));
        let mut protocols: Vec<ProtocolBytes> = {
            let protocols = lock(&self.protocols);
            let named = protocols
                .by_name
                .iter()
                .map(|(name, counter)| (name.as_str(), counter.get()));
            let extra = [
                (UNKNOWN_PROTOCOL, protocols.unknown.get()),
                (OTHER_PROTOCOLS, protocols.other.get()),
            ];
            named
                .chain(extra.into_iter().filter(|(_, bytes)| *bytes != (0, 0)))
                .map(|(name, (bytes_in, bytes_out))| ProtocolBytes {
                    protocol: name.to_owned(),
                    bytes_in,
                    bytes_out,
                })
                .collect()
        };
        protocols.sort_by(|a, b| {
            let size = |row: &ProtocolBytes| row.bytes_in.saturating_add(row.bytes_out);
            size(b)
                .cmp(&size(a))
                .then_with(|| a.protocol.cmp(&b.protocol))
        });
        let payload_in = protocols.iter().map(|row| row.bytes_in).sum::<u64>();
        let payload_out = protocols.iter().map(|row| row.bytes_out).sum::<u64>();
        MeterSnapshot {
            total_in,
            total_out,
            peers,
            other_peers_in,
            other_peers_out,
            unauthenticated_in,
            unauthenticated_out,
            protocols,
            overhead_in: total_in.saturating_sub(payload_in),
            overhead_out: total_out.saturating_sub(payload_out),
        }
    }

    /// Starts counting one connection: its bytes count in the totals at
    /// once and for its peer once [`ConnectionMeter::authenticated`].
    pub(crate) fn connection(self: &Arc<Self>) -> ConnectionMeter {
        ConnectionMeter {
            meter: self.clone(),
            peer: OnceLock::new(),
            pending: ByteCounter::default(),
        }
    }

    /// The payload counter of `protocol` (the shared [`OTHER_PROTOCOLS`]
    /// counter once the bound is reached).
    pub(crate) fn protocol(&self, protocol: &str) -> Arc<ByteCounter> {
        let mut protocols = lock(&self.protocols);
        if let Some(counter) = protocols.by_name.get(protocol) {
            return counter.clone();
        }
        if protocols.by_name.len() >= self.max_protocols {
            return protocols.other.clone();
        }
        let counter = Arc::new(ByteCounter::default());
        protocols
            .by_name
            .insert(protocol.to_owned(), counter.clone());
        counter
    }

    /// The payload counter of substreams whose protocol was never learned.
    pub(crate) fn unknown_protocol(&self) -> Arc<ByteCounter> {
        lock(&self.protocols).unknown.clone()
    }

    /// A slot for `peer`, with one more connection on it.
    fn attach(&self, peer: PeerId) -> Arc<PeerSlot> {
        let mut peers = lock(&self.peers);
        let known = peers.by_id.get(&peer).cloned();
        let slot = match known {
            Some(slot) => slot,
            None if peers.by_id.len() < self.max_peers || Self::evict(&mut peers) => {
                let slot = Arc::new(PeerSlot::default());
                peers.by_id.insert(peer, slot.clone());
                slot
            }
            None => peers.other.clone(),
        };
        slot.connections.fetch_add(1, Ordering::AcqRel);
        slot
    }

    /// Folds the least recently active disconnected peer into the *other
    /// peers* row. False if every tracked peer is connected.
    fn evict(peers: &mut Peers) -> bool {
        let victim = peers
            .by_id
            .iter()
            .filter(|(_, slot)| slot.connections.load(Ordering::Acquire) == 0)
            .min_by_key(|(_, slot)| slot.last_active.load(Ordering::Relaxed))
            .map(|(peer, _)| *peer);
        let Some(slot) = victim.and_then(|peer| peers.by_id.remove(&peer)) else {
            return false;
        };
        peers.other.bytes.add_pair(slot.bytes.get());
        true
    }
}

/// The meter's view of one connection (shared by its raw stream and, for
/// QUIC, its substreams). Dropping it closes the connection's account.
#[derive(Debug)]
pub(crate) struct ConnectionMeter {
    meter: Arc<Meter>,
    peer: OnceLock<Arc<PeerSlot>>,
    /// Bytes seen before the peer was known.
    pending: ByteCounter,
}

impl ConnectionMeter {
    /// Counts `bytes` that crossed this connection.
    pub(crate) fn record(&self, direction: Direction, bytes: u64) {
        self.meter.total.add(direction, bytes);
        match self.peer.get() {
            Some(slot) => slot.bytes.add(direction, bytes),
            None => self.pending.add(direction, bytes),
        }
    }

    /// The remote is `peer`: its earlier and later bytes go to it. Only
    /// the first call counts.
    pub(crate) fn authenticated(&self, peer: PeerId) {
        if self.peer.get().is_some() {
            return;
        }
        let slot = self.meter.attach(peer);
        match self.peer.set(slot) {
            Ok(()) => {
                if let Some(slot) = self.peer.get() {
                    slot.bytes.add_pair(self.pending.take());
                }
            }
            // A racing call won: give back the extra connection count.
            Err(extra) => self.release(&extra),
        }
    }

    fn release(&self, slot: &PeerSlot) {
        let tick = self.meter.clock.fetch_add(1, Ordering::Relaxed);
        slot.last_active.store(tick, Ordering::Relaxed);
        slot.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for ConnectionMeter {
    fn drop(&mut self) {
        // `record` may have raced with `authenticated`: whatever is still
        // pending belongs to the peer if there is one.
        let pending = self.pending.take();
        match self.peer.take() {
            Some(slot) => {
                slot.bytes.add_pair(pending);
                self.release(&slot);
            }
            None => self.meter.unauthenticated.add_pair(pending),
        }
    }
}

/// Our multistream-select role on a substream: the dialer opened it and
/// proposes protocols, the listener accepts one (echoes it) or answers `na`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// We opened the substream.
    Dialer,
    /// The remote opened it.
    Listener,
}

/// What a [`Sniffer`] concluded about a substream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settled {
    /// The negotiated protocol; `None` if it cannot be learned.
    pub(crate) protocol: Option<String>,
    /// Payload received so far (negotiation excluded).
    pub(crate) payload_in: u64,
    /// Payload sent so far (negotiation excluded).
    pub(crate) payload_out: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Header,
    NotAvailable,
    Protocol,
}

#[derive(Debug)]
struct Message {
    kind: Kind,
    /// The message without its length prefix and newline, within `buf`.
    body: Range<usize>,
    /// Offset just past the message in the direction's byte stream.
    end: usize,
}

/// The multistream-select messages at the start of one direction.
#[derive(Debug, Default)]
struct Lines {
    /// The first bytes, at most [`SNIFF_WINDOW_BYTES`].
    buf: Vec<u8>,
    /// All bytes that went this way.
    seen: u64,
    /// Bytes of `buf` that form complete messages.
    parsed: usize,
    messages: Vec<Message>,
    /// Nothing more can be parsed: not a message, or past the window.
    broken: bool,
}

impl Lines {
    fn push(&mut self, bytes: &[u8]) {
        self.seen = self.seen.saturating_add(bytes.len() as u64);
        if self.broken {
            return;
        }
        let room = SNIFF_WINDOW_BYTES.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.parse();
        let stuck = self.buf.len() == SNIFF_WINDOW_BYTES && self.seen > self.parsed as u64;
        if stuck {
            self.broken = true;
        }
    }

    fn parse(&mut self) {
        while !self.broken && self.parsed < self.buf.len() {
            let rest = &self.buf[self.parsed..];
            // An unsigned varint; two bytes cover every length that fits.
            let (len, prefix) = match rest {
                [b0, ..] if *b0 < 0x80 => (usize::from(*b0), 1),
                [b0, b1, ..] if *b1 < 0x80 => (usize::from(b0 & 0x7f) | usize::from(*b1) << 7, 2),
                [_] => return,
                _ => {
                    self.broken = true;
                    return;
                }
            };
            let end = self.parsed + prefix + len;
            if len < 2 || end > SNIFF_WINDOW_BYTES {
                self.broken = true;
                return;
            }
            if end > self.buf.len() {
                return;
            }
            let body = self.parsed + prefix..end - 1;
            let kind = match (&self.buf[body.clone()], self.buf[end - 1]) {
                (_, b'\n') if self.buf[body.clone()].contains(&b'\n') => None,
                (MULTISTREAM_HEADER, b'\n') => Some(Kind::Header),
                (b"na", b'\n') => Some(Kind::NotAvailable),
                ([b'/', name @ ..], b'\n') if name.iter().all(|b| b.is_ascii_graphic()) => {
                    Some(Kind::Protocol)
                }
                _ => None,
            };
            let Some(kind) = kind else {
                self.broken = true;
                return;
            };
            self.messages.push(Message { kind, body, end });
            self.parsed = end;
        }
    }

    /// Bytes not in well-formed messages.
    fn unparsed(&self) -> u64 {
        self.seen.saturating_sub(self.parsed as u64)
    }
}

/// Learns a substream's protocol from its multistream-select exchange
/// (sans-IO: fed the bytes as they are read and written).
///
/// The listener's direction carries the header, zero or more `na`, then
/// the accepted protocol echoed; the dialer's carries the header and its
/// proposals, the accepted one last. Once both are seen, the negotiation
/// bytes are known and everything else in either direction is payload.
/// Garbage, or no answer within [`SNIFF_WINDOW_BYTES`], settles on an
/// unknown protocol.
#[derive(Debug)]
pub(crate) struct Sniffer {
    role: Role,
    read: Lines,
    written: Lines,
}

impl Sniffer {
    pub(crate) fn new(role: Role) -> Self {
        Self {
            role,
            read: Lines::default(),
            written: Lines::default(),
        }
    }

    /// Feeds bytes read (`In`) or written (`Out`); `Some` once the
    /// protocol is settled, after which the sniffer is done.
    pub(crate) fn observe(&mut self, direction: Direction, bytes: &[u8]) -> Option<Settled> {
        match direction {
            Direction::In => self.read.push(bytes),
            Direction::Out => self.written.push(bytes),
        }
        self.settle()
    }

    /// Bytes that cannot be attributed if the substream ends now, as (in,
    /// out): everything that is not a well-formed negotiation message.
    pub(crate) fn unattributed(&self) -> (u64, u64) {
        (self.read.unparsed(), self.written.unparsed())
    }

    fn settle(&self) -> Option<Settled> {
        let (dialer, listener) = match self.role {
            Role::Dialer => (&self.written, &self.read),
            Role::Listener => (&self.read, &self.written),
        };
        let mut answers = listener.messages.iter();
        match answers.next() {
            Some(first) if first.kind == Kind::Header => {}
            Some(_) => return Some(self.unknown()),
            None if listener.broken => return Some(self.unknown()),
            None => return None,
        }
        for answer in answers {
            match answer.kind {
                Kind::NotAvailable => continue,
                Kind::Header => return Some(self.unknown()),
                Kind::Protocol => {
                    let name = &listener.buf[answer.body.clone()];
                    let proposal = dialer.messages.iter().find(|proposal| {
                        proposal.kind == Kind::Protocol
                            && dialer.buf[proposal.body.clone()] == *name
                    });
                    return match proposal {
                        Some(proposal) => Some(self.known(name, proposal.end, answer.end)),
                        None if dialer.broken => Some(self.unknown()),
                        // The proposal must come (it precedes the echo).
                        None => None,
                    };
                }
            }
        }
        listener.broken.then(|| self.unknown())
    }

    fn known(&self, name: &[u8], dialer_end: usize, listener_end: usize) -> Settled {
        let (read_end, written_end) = match self.role {
            Role::Dialer => (listener_end, dialer_end),
            Role::Listener => (dialer_end, listener_end),
        };
        Settled {
            protocol: Some(String::from_utf8_lossy(name).into_owned()),
            payload_in: self.read.seen.saturating_sub(read_end as u64),
            payload_out: self.written.seen.saturating_sub(written_end as u64),
        }
    }

    fn unknown(&self) -> Settled {
        let (payload_in, payload_out) = self.unattributed();
        Settled {
            protocol: None,
            payload_in,
            payload_out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One multistream-select message.
    fn msg(body: &str) -> Vec<u8> {
        let mut out = vec![u8::try_from(body.len() + 1).unwrap()];
        out.extend_from_slice(body.as_bytes());
        out.push(b'\n');
        out
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    const HEADER: &str = "/multistream/1.0.0";

    #[test]
    fn sniffer_learns_protocol_from_reads_split_byte_by_byte() {
        // We listen: the dialer's header + proposal + payload arrive one byte at a time.
        let incoming = cat(&[&msg(HEADER), &msg("/test/1.0.0"), b"hello"]);
        let mut sniffer = Sniffer::new(Role::Listener);
        for byte in &incoming {
            assert_eq!(
                sniffer.observe(Direction::In, std::slice::from_ref(byte)),
                None
            );
        }
        // Our echo settles it.
        let echo = cat(&[&msg(HEADER), &msg("/test/1.0.0")]);
        let (first, second) = echo.split_at(7);
        assert_eq!(sniffer.observe(Direction::Out, first), None);
        let settled = sniffer.observe(Direction::Out, second).unwrap();
        assert_eq!(
            settled,
            Settled {
                protocol: Some("/test/1.0.0".into()),
                payload_in: 5,
                payload_out: 0,
            }
        );
    }

    #[test]
    fn sniffer_follows_na_then_second_proposal() {
        // We dial: gossipsub-style, the first proposal is rejected.
        let mut sniffer = Sniffer::new(Role::Dialer);
        let first = cat(&[&msg(HEADER), &msg("/meshsub/1.2.0")]);
        assert_eq!(sniffer.observe(Direction::Out, &first), None);
        let answer = cat(&[&msg(HEADER), &msg("na")]);
        assert_eq!(sniffer.observe(Direction::In, &answer), None);
        let second = cat(&[&msg("/meshsub/1.1.0"), b"payload!"]);
        assert_eq!(sniffer.observe(Direction::Out, &second), None);
        let echo = cat(&[&msg("/meshsub/1.1.0"), b"reply"]);
        assert_eq!(
            sniffer.observe(Direction::In, &echo),
            Some(Settled {
                protocol: Some("/meshsub/1.1.0".into()),
                payload_in: 5,
                payload_out: 8,
            })
        );
    }

    #[test]
    fn sniffer_ignores_an_echo_that_was_never_proposed() {
        let mut sniffer = Sniffer::new(Role::Dialer);
        let proposal = cat(&[&msg(HEADER), &msg("/a/1"), b"xyz"]);
        assert_eq!(sniffer.observe(Direction::Out, &proposal), None);
        // A hostile remote "accepts" a name we did not propose: we wait for a
        // proposal that never comes, and the bytes stay unattributed.
        assert_eq!(
            sniffer.observe(Direction::In, &cat(&[&msg(HEADER), &msg("/evil/1")])),
            None
        );
        assert_eq!(sniffer.unattributed(), (0, 3));
    }

    #[test]
    fn sniffer_settles_garbage_as_unknown() {
        let mut sniffer = Sniffer::new(Role::Listener);
        let garbage = [0x7f_u8; 100];
        let settled = sniffer.observe(Direction::In, &garbage);
        assert_eq!(settled, None, "the listener side has said nothing yet");
        // Our side answers garbage too (not a header): unknown.
        let settled = sniffer.observe(Direction::Out, b"\x03ok\n").unwrap();
        assert_eq!(settled.protocol, None);
        assert_eq!((settled.payload_in, settled.payload_out), (100, 4));
    }

    #[test]
    fn sniffer_is_bounded_by_its_window() {
        // An endless run of `na` never settles a protocol: past the window
        // the sniffer gives up and keeps no more than the window.
        let mut sniffer = Sniffer::new(Role::Dialer);
        sniffer.observe(Direction::Out, &cat(&[&msg(HEADER), &msg("/x/1")]));
        assert_eq!(sniffer.observe(Direction::In, &msg(HEADER)), None);
        let mut settled = None;
        for _ in 0..1000 {
            settled = sniffer.observe(Direction::In, &msg("na"));
            assert!(sniffer.read.buf.len() <= SNIFF_WINDOW_BYTES);
            if settled.is_some() {
                break;
            }
        }
        let settled = settled.unwrap();
        assert_eq!(settled.protocol, None);
        assert!(sniffer.read.seen <= SNIFF_WINDOW_BYTES as u64 + 4);
        // An oversized length prefix breaks the parse at once.
        let mut sniffer = Sniffer::new(Role::Listener);
        sniffer.observe(Direction::Out, &[0xff, 0x7f]);
        assert!(sniffer.written.broken);
        assert_eq!(sniffer.settle().unwrap().protocol, None);
    }

    #[test]
    fn sniffer_counts_failed_negotiation_as_overhead() {
        let mut sniffer = Sniffer::new(Role::Dialer);
        sniffer.observe(Direction::Out, &cat(&[&msg(HEADER), &msg("/x/1")]));
        sniffer.observe(Direction::In, &cat(&[&msg(HEADER), &msg("na")]));
        // The substream ends here: nothing is payload.
        assert_eq!(sniffer.unattributed(), (0, 0));
    }

    fn peer() -> PeerId {
        PeerId::random()
    }

    #[test]
    fn bytes_before_authentication_go_to_the_peer() {
        let meter = Arc::new(Meter::new());
        let alice = peer();
        let conn = meter.connection();
        conn.record(Direction::Out, 100);
        conn.record(Direction::In, 40);
        conn.authenticated(alice);
        conn.record(Direction::In, 2);
        assert_eq!(meter.peer(&alice), Some((42, 100)));
        drop(conn);
        assert_eq!(meter.peer(&alice), Some((42, 100)));
        let snapshot = meter.snapshot();
        assert_eq!((snapshot.total_in, snapshot.total_out), (42, 100));
        assert_eq!(
            (snapshot.unauthenticated_in, snapshot.unauthenticated_out),
            (0, 0)
        );
        // No payload: all of it is overhead.
        assert_eq!((snapshot.overhead_in, snapshot.overhead_out), (42, 100));
    }

    #[test]
    fn failed_handshakes_go_to_unauthenticated() {
        let meter = Arc::new(Meter::new());
        let conn = meter.connection();
        conn.record(Direction::In, 7);
        drop(conn);
        let snapshot = meter.snapshot();
        assert_eq!(
            (snapshot.unauthenticated_in, snapshot.unauthenticated_out),
            (7, 0)
        );
        assert!(snapshot.peers.is_empty());
    }

    #[test]
    fn peers_are_bounded_and_evict_disconnected_least_recent() {
        let meter = Arc::new(Meter::with_bounds(2, 4));
        let (a, b, c, d) = (peer(), peer(), peer(), peer());
        let conn_a = meter.connection();
        conn_a.authenticated(a);
        conn_a.record(Direction::In, 1);
        let conn_b = meter.connection();
        conn_b.authenticated(b);
        conn_b.record(Direction::In, 10);
        drop(conn_a); // a disconnects first
        drop(conn_b);
        let conn_c = meter.connection();
        conn_c.authenticated(c);
        conn_c.record(Direction::In, 100);
        assert_eq!(meter.peer(&a), None, "a was the least recently active");
        assert_eq!(meter.peer(&b), Some((10, 0)));
        // b is evicted next; then d finds only connected peers (c and the
        // new slot), so the one after goes to "other peers".
        let conn_d = meter.connection();
        conn_d.authenticated(d);
        let conn_e = meter.connection();
        conn_e.authenticated(peer());
        conn_e.record(Direction::Out, 1000);
        let snapshot = meter.snapshot();
        assert_eq!(snapshot.peers.len(), 2);
        assert_eq!(snapshot.peers[0].peer, c);
        assert_eq!(
            (snapshot.other_peers_in, snapshot.other_peers_out),
            (11, 1000)
        );
        assert_eq!(snapshot.total_in, 111);
    }

    #[test]
    fn protocols_are_bounded() {
        let meter = Meter::with_bounds(8, 2);
        meter.protocol("/a/1").add(Direction::In, 1);
        meter.protocol("/b/1").add(Direction::In, 2);
        meter.protocol("/c/1").add(Direction::Out, 4);
        meter.protocol("/a/1").add(Direction::Out, 8);
        meter.unknown_protocol().add(Direction::In, 16);
        let names: Vec<_> = meter
            .snapshot()
            .protocols
            .into_iter()
            .map(|row| (row.protocol, row.bytes_in, row.bytes_out))
            .collect();
        assert_eq!(
            names,
            vec![
                (UNKNOWN_PROTOCOL.to_owned(), 16, 0),
                ("/a/1".to_owned(), 1, 8),
                (OTHER_PROTOCOLS.to_owned(), 0, 4),
                ("/b/1".to_owned(), 2, 0),
            ]
        );
    }
}
