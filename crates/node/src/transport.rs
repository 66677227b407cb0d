//! The node's transports, and what they count: TCP and in-memory links
//! (Noise + Yamux) with byte counting at the socket, plus QUIC.
//!
//! - [`tcp`], [`memory`] and [`quic`] build the transports the swarm uses.
//! - [`Counted`] wraps the raw stream of a TCP or in-memory connection,
//!   below Noise and Yamux, so its figures are what really crosses the wire
//!   (handshakes, framing and padding included). It adds them to the
//!   node-wide [`WireCounters`] and to the connection's account in the
//!   [`Meter`] (per peer, once Noise has authenticated the remote).
//! - [`MeteredMuxer`] wraps the stream muxer; its substreams sniff the
//!   multistream-select exchange ([`Sniffer`]) and count their payload per
//!   negotiated protocol.
//! - [`Throttle`] is a token bucket modelling the node's access link (a
//!   congested phone link in simulations); [`Throttled`] delays reads and
//!   writes of every raw stream that shares it.
//!
//! What is counted where:
//!
//! | | TCP, memory | QUIC |
//! |---|---|---|
//! | `WireCounters` | raw socket bytes | nothing |
//! | meter totals, per peer | raw socket bytes | substream bytes (UDP, QUIC and TLS overhead unseen) |
//! | per protocol | substream payload | substream payload |
//! | transport overhead | Noise, Yamux, multistream-select, handshakes | multistream-select only |
//! | throttled | yes | no |

// Implementation notes: the raw stream and the upgraded connection are
// built by different layers of the libp2p upgrade chain, and the upgraded
// output (yamux over noise over the raw stream) does not give the raw
// stream back. Every layer in between (`Map`, `AndThen`, the timeout)
// calls `dial` and maps `Incoming` events synchronously, so the bottom
// layer ([`Raw`]) hands the new connection's account to the top layer
// ([`Attributed`]) through a one-item slot during the same call. The top
// layer tells the account its peer once the upgrade completes (Noise and
// the muxer negotiation; earlier bytes wait in the account meanwhile).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures::future::{MapOk, TryFutureExt};
use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerBox, StreamMuxerEvent};
use libp2p::core::transport::{
    Boxed, DialOpts, ListenerId, MemoryTransport, TransportError, TransportEvent,
};
use libp2p::core::upgrade::Version;
use libp2p::core::Transport;
use libp2p::identity::Keypair;
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId};
use tokio::time::{Instant, Sleep};

use crate::bandwidth::meter::{
    ByteCounter, ConnectionMeter, Direction, Meter, Role, Settled, Sniffer,
};

/// Longest a new connection may take to become authenticated and
/// multiplexed.
pub(crate) const UPGRADE_TIMEOUT: Duration = Duration::from_secs(20);
/// A throttle's burst is at least this many bytes…
pub(crate) const MIN_BURST_BYTES: u64 = 16 * 1024;
/// …or this long at its rate, whichever is more.
pub(crate) const BURST_DURATION: Duration = Duration::from_millis(100);
/// A throttled read or write waits for at least this share of the burst
/// (or the whole request if smaller), so a slow link wakes its streams a
/// bounded number of times per second.
const GRAINS_PER_BURST: u64 = 16;

/// Bytes that crossed the node's TCP sockets (and in-memory links), both
/// directions.
#[derive(Debug, Default)]
pub struct WireCounters {
    /// Bytes read from sockets.
    pub bytes_in: AtomicU64,
    /// Bytes written to sockets.
    pub bytes_out: AtomicU64,
}

/// An authenticated, multiplexed transport as the swarm takes it.
pub(crate) type SwarmTransport = Boxed<(PeerId, StreamMuxerBox)>;

/// TCP (with `TCP_NODELAY`), Noise, Yamux, counted into `wire` and `meter`
/// and throttled by `throttle` if any.
pub(crate) fn tcp(
    key: &Keypair,
    wire: Arc<WireCounters>,
    meter: Arc<Meter>,
    throttle: Option<Arc<Throttle>>,
) -> Result<SwarmTransport, noise::Error> {
    let base = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    upgraded(base, key, wire, meter, throttle)
}

/// In-process links (`/memory/<port>`), for simulations of thousands of
/// nodes: otherwise as [`tcp`].
pub(crate) fn memory(
    key: &Keypair,
    wire: Arc<WireCounters>,
    meter: Arc<Meter>,
    throttle: Option<Arc<Throttle>>,
) -> Result<SwarmTransport, noise::Error> {
    upgraded(MemoryTransport::default(), key, wire, meter, throttle)
}

/// QUIC, with its substreams counted into `meter` (per peer and per
/// protocol). Its UDP packets are out of sight: neither [`WireCounters`]
/// nor throttling apply.
pub(crate) fn quic(key: &Keypair, meter: Arc<Meter>) -> SwarmTransport {
    libp2p::quic::tokio::Transport::new(libp2p::quic::Config::new(key))
        .map(move |(peer, connection), _| {
            let account = Arc::new(meter.connection());
            account.authenticated(peer);
            let muxer = MeteredMuxer::new(connection, meter.clone(), Some(account));
            (peer, StreamMuxerBox::new(muxer))
        })
        .boxed()
}

fn upgraded<T>(
    base: T,
    key: &Keypair,
    wire: Arc<WireCounters>,
    meter: Arc<Meter>,
    throttle: Option<Arc<Throttle>>,
) -> Result<SwarmTransport, noise::Error>
where
    T: Transport + Send + Unpin + 'static,
    T::Output: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    T::Error: Send + Sync + 'static,
    T::Dial: Send + 'static,
    T::ListenerUpgrade: Send + 'static,
{
    let noise = noise::Config::new(key)?;
    let handoff = Handoff::default();
    let raw = Raw {
        inner: base,
        wire,
        meter: meter.clone(),
        throttle,
        handoff: handoff.clone(),
    };
    let upgraded = raw
        .upgrade(Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .timeout(UPGRADE_TIMEOUT);
    Ok(Attributed {
        inner: upgraded,
        meter,
        handoff,
    }
    .boxed())
}

/// The account of the connection being set up, from [`Raw`] to
/// [`Attributed`] (see the implementation notes).
type Handoff = Arc<Mutex<Option<Arc<ConnectionMeter>>>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data under these locks stays consistent at every step.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

type WrapRaw<S> = Box<dyn FnOnce(S) -> Counted<Throttled<S>> + Send>;

/// The bottom layer: opens an account for each new connection and wraps
/// its raw stream.
struct Raw<T> {
    inner: T,
    wire: Arc<WireCounters>,
    meter: Arc<Meter>,
    throttle: Option<Arc<Throttle>>,
    handoff: Handoff,
}

impl<T: Transport> Raw<T> {
    fn wrap(&self) -> WrapRaw<T::Output> {
        let account = Arc::new(self.meter.connection());
        *lock(&self.handoff) = Some(account.clone());
        let wire = self.wire.clone();
        let throttle = self.throttle.clone();
        Box::new(move |stream| {
            Counted::new(Throttled::new(stream, throttle), wire).with_account(account)
        })
    }
}

impl<T> Transport for Raw<T>
where
    T: Transport + Unpin,
    T::Output: AsyncRead + AsyncWrite + Unpin,
{
    type Output = Counted<Throttled<T::Output>>;
    type Error = T::Error;
    type ListenerUpgrade = MapOk<T::ListenerUpgrade, WrapRaw<T::Output>>;
    type Dial = MapOk<T::Dial, WrapRaw<T::Output>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let dial = self.inner.dial(addr, opts)?;
        Ok(dial.map_ok(self.wrap()))
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        let this = self.get_mut();
        let event = ready!(Pin::new(&mut this.inner).poll(cx));
        Poll::Ready(event.map_upgrade(|upgrade| upgrade.map_ok(this.wrap())))
    }
}

type Attribute<M> = Box<dyn FnOnce((PeerId, M)) -> (PeerId, StreamMuxerBox) + Send>;

/// The top layer: tells the connection's account its peer and meters the
/// muxer's substreams.
struct Attributed<T> {
    inner: T,
    meter: Arc<Meter>,
    handoff: Handoff,
}

impl<T> Attributed<T> {
    fn attribute<M>(&self) -> Attribute<M>
    where
        M: StreamMuxer + Send + Unpin + 'static,
        M::Substream: Send + Unpin + 'static,
        M::Error: Send + Sync + 'static,
    {
        let account = lock(&self.handoff).take();
        if account.is_none() {
            tracing::debug!("connection without an account: its bytes count as unauthenticated");
        }
        let meter = self.meter.clone();
        Box::new(move |(peer, muxer)| {
            if let Some(account) = account {
                account.authenticated(peer);
            }
            (
                peer,
                StreamMuxerBox::new(MeteredMuxer::new(muxer, meter, None)),
            )
        })
    }
}

impl<T, M> Transport for Attributed<T>
where
    T: Transport<Output = (PeerId, M)> + Unpin,
    M: StreamMuxer + Send + Unpin + 'static,
    M::Substream: Send + Unpin + 'static,
    M::Error: Send + Sync + 'static,
{
    type Output = (PeerId, StreamMuxerBox);
    type Error = T::Error;
    type ListenerUpgrade = MapOk<T::ListenerUpgrade, Attribute<M>>;
    type Dial = MapOk<T::Dial, Attribute<M>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        lock(&self.handoff).take();
        let dial = self.inner.dial(addr, opts)?;
        Ok(dial.map_ok(self.attribute()))
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        let this = self.get_mut();
        lock(&this.handoff).take();
        let event = ready!(Pin::new(&mut this.inner).poll(cx));
        Poll::Ready(event.map_upgrade(|upgrade| upgrade.map_ok(this.attribute())))
    }
}

/// A stream that adds what it reads and writes to [`WireCounters`] and,
/// with an account, to the [`Meter`].
#[derive(Debug)]
pub(crate) struct Counted<S> {
    inner: S,
    counters: Arc<WireCounters>,
    account: Option<Arc<ConnectionMeter>>,
}

impl<S> Counted<S> {
    pub(crate) fn new(inner: S, counters: Arc<WireCounters>) -> Self {
        Self {
            inner,
            counters,
            account: None,
        }
    }

    /// Also counts into the connection's account.
    pub(crate) fn with_account(mut self, account: Arc<ConnectionMeter>) -> Self {
        self.account = Some(account);
        self
    }

    fn count(&self, direction: Direction, bytes: usize) {
        let bytes = bytes as u64;
        let counter = match direction {
            Direction::In => &self.counters.bytes_in,
            Direction::Out => &self.counters.bytes_out,
        };
        counter.fetch_add(bytes, Ordering::Relaxed);
        if let Some(account) = &self.account {
            account.record(direction, bytes);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            self.count(Direction::In, *n);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            self.count(Direction::Out, *n);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// A stream muxer whose substreams count their payload per protocol (and,
/// with an account, all their bytes for the connection: QUIC).
pub(crate) struct MeteredMuxer<M> {
    inner: M,
    meter: Arc<Meter>,
    account: Option<Arc<ConnectionMeter>>,
}

impl<M> MeteredMuxer<M> {
    /// `account` is for connections whose raw bytes are not counted
    /// otherwise: their substream bytes then stand for the connection's.
    pub(crate) fn new(inner: M, meter: Arc<Meter>, account: Option<Arc<ConnectionMeter>>) -> Self {
        Self {
            inner,
            meter,
            account,
        }
    }

    fn substream<S>(&self, inner: S, role: Role) -> MeteredStream<S> {
        MeteredStream {
            inner,
            meter: self.meter.clone(),
            sniffer: Some(Box::new(Sniffer::new(role))),
            payload: None,
            account: self.account.clone(),
        }
    }
}

impl<M> StreamMuxer for MeteredMuxer<M>
where
    M: StreamMuxer + Unpin,
    M::Substream: Unpin,
{
    type Substream = MeteredStream<M::Substream>;
    type Error = M::Error;

    fn poll_inbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        let inner = ready!(Pin::new(&mut this.inner).poll_inbound(cx))?;
        Poll::Ready(Ok(this.substream(inner, Role::Listener)))
    }

    fn poll_outbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        let inner = ready!(Pin::new(&mut this.inner).poll_outbound(cx))?;
        Poll::Ready(Ok(this.substream(inner, Role::Dialer)))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll(cx)
    }
}

/// A substream that learns its protocol and counts its payload under it.
pub(crate) struct MeteredStream<S> {
    inner: S,
    meter: Arc<Meter>,
    /// Until the protocol is settled.
    sniffer: Option<Box<Sniffer>>,
    /// Once it is.
    payload: Option<Arc<ByteCounter>>,
    account: Option<Arc<ConnectionMeter>>,
}

impl<S> MeteredStream<S> {
    fn observe(&mut self, direction: Direction, bytes: &[u8]) {
        if let Some(account) = &self.account {
            account.record(direction, bytes.len() as u64);
        }
        if let Some(payload) = &self.payload {
            payload.add(direction, bytes.len() as u64);
            return;
        }
        let Some(sniffer) = &mut self.sniffer else {
            return;
        };
        let Some(Settled {
            protocol,
            payload_in,
            payload_out,
        }) = sniffer.observe(direction, bytes)
        else {
            return;
        };
        let payload = match protocol {
            Some(name) => self.meter.protocol(&name),
            None => self.meter.unknown_protocol(),
        };
        payload.add(Direction::In, payload_in);
        payload.add(Direction::Out, payload_out);
        self.payload = Some(payload);
        self.sniffer = None;
    }
}

impl<S> Drop for MeteredStream<S> {
    fn drop(&mut self) {
        if let Some(sniffer) = self.sniffer.take() {
            let (bytes_in, bytes_out) = sniffer.unattributed();
            let unknown = self.meter.unknown_protocol();
            unknown.add(Direction::In, bytes_in);
            unknown.add(Direction::Out, bytes_out);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for MeteredStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.observe(Direction::In, &buf[..n.min(buf.len())]);
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MeteredStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.observe(Direction::Out, &buf[..n.min(buf.len())]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

/// A node's access link: a token bucket each way, shared by all the raw
/// streams of the node (wrap each in [`Throttled`]).
#[derive(Debug)]
pub(crate) struct Throttle {
    up: Mutex<Bucket>,
    down: Mutex<Bucket>,
}

impl Throttle {
    /// A link of `rate_bytes_per_sec` each way (at least 1), with a burst
    /// of [`MIN_BURST_BYTES`] or [`BURST_DURATION`] at that rate,
    /// whichever is more.
    pub(crate) fn new(rate_bytes_per_sec: u64) -> Self {
        let rate = rate_bytes_per_sec.max(1);
        let burst_at_rate =
            u64::try_from(u128::from(rate) * BURST_DURATION.as_millis() / 1000).unwrap_or(u64::MAX);
        let burst = burst_at_rate.max(MIN_BURST_BYTES);
        Self {
            up: Mutex::new(Bucket::new(rate, burst)),
            down: Mutex::new(Bucket::new(rate, burst)),
        }
    }

    /// The throttle for `network.link_rate_bytes_per_sec`: none for 0.
    pub(crate) fn for_link(rate_bytes_per_sec: u64) -> Option<Arc<Self>> {
        (rate_bytes_per_sec > 0).then(|| Arc::new(Self::new(rate_bytes_per_sec)))
    }
}

/// A token bucket (sans-IO: it is told the time). Tokens may go negative
/// (bytes moved beyond the allowance are a debt paid by waiting).
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    grain: f64,
    tokens: f64,
    /// When `tokens` was last brought up to date; `None` before first use.
    updated: Option<Instant>,
}

impl Bucket {
    fn new(rate_bytes_per_sec: u64, burst_bytes: u64) -> Self {
        let burst = burst_bytes.max(1) as f64;
        Self {
            rate: rate_bytes_per_sec.max(1) as f64,
            burst,
            grain: (burst_bytes / GRAINS_PER_BURST).max(1) as f64,
            tokens: burst,
            updated: None,
        }
    }

    /// How many of `want` bytes may move now, or how long to wait before
    /// asking again.
    fn allowance(&mut self, want: usize, now: Instant) -> Result<usize, Duration> {
        if let Some(updated) = self.updated {
            let elapsed = now.saturating_duration_since(updated).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        }
        self.updated = Some(now);
        let want = want.max(1);
        let needed = self.grain.min(want as f64);
        if self.tokens >= needed {
            Ok((self.tokens as usize).clamp(1, want))
        } else {
            Err(Duration::from_secs_f64((needed - self.tokens) / self.rate))
        }
    }

    /// `bytes` moved.
    fn charge(&mut self, bytes: usize) {
        self.tokens -= bytes as f64;
    }
}

/// Waits for one direction's allowance, with its own timer.
#[derive(Debug, Default)]
struct Gate {
    timer: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl Gate {
    fn poll_allowance(
        &mut self,
        cx: &mut Context<'_>,
        bucket: &Mutex<Bucket>,
        want: usize,
    ) -> Poll<usize> {
        loop {
            if self.waiting {
                if let Some(timer) = &mut self.timer {
                    ready!(timer.as_mut().poll(cx));
                }
                self.waiting = false;
            }
            let now = Instant::now();
            let allowance = lock(bucket).allowance(want, now);
            match allowance {
                Ok(bytes) => return Poll::Ready(bytes),
                Err(wait) => {
                    let deadline = now + wait;
                    match &mut self.timer {
                        Some(timer) => timer.as_mut().reset(deadline),
                        None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                    self.waiting = true;
                }
            }
        }
    }
}

/// A raw stream whose reads and writes wait for a [`Throttle`]'s
/// allowance (no throttle: passes through). Needs a tokio runtime.
#[derive(Debug)]
pub(crate) struct Throttled<S> {
    inner: S,
    throttle: Option<Arc<Throttle>>,
    read_gate: Gate,
    write_gate: Gate,
}

impl<S> Throttled<S> {
    pub(crate) fn new(inner: S, throttle: Option<Arc<Throttle>>) -> Self {
        Self {
            inner,
            throttle,
            read_gate: Gate::default(),
            write_gate: Gate::default(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Throttled<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(throttle) = &this.throttle else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        if buf.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let allowed = ready!(this.read_gate.poll_allowance(cx, &throttle.down, buf.len()));
        let poll = Pin::new(&mut this.inner).poll_read(cx, &mut buf[..allowed]);
        if let Poll::Ready(Ok(n)) = &poll {
            lock(&throttle.down).charge(*n);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Throttled<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(throttle) = &this.throttle else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        if buf.is_empty() {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        let allowed = ready!(this.write_gate.poll_allowance(cx, &throttle.up, buf.len()));
        let poll = Pin::new(&mut this.inner).poll_write(cx, &buf[..allowed]);
        if let Poll::Ready(Ok(n)) = &poll {
            lock(&throttle.up).charge(*n);
        }
        poll
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
    use libp2p::core::transport::PortUse;
    use libp2p::core::Endpoint;
    use libp2p::request_response::{self, ProtocolSupport};
    use libp2p::swarm::SwarmEvent;
    use libp2p::{StreamProtocol, Swarm};

    use super::*;
    use crate::msg::FrameCodec;

    const TEST_PROTOCOL: StreamProtocol = StreamProtocol::new("/test/1.0.0");

    #[derive(Debug, Clone, Copy)]
    enum Link {
        Memory,
        Quic,
    }

    struct Node {
        swarm: Swarm<request_response::Behaviour<FrameCodec>>,
        meter: Arc<Meter>,
        wire: Arc<WireCounters>,
    }

    fn node(link: Link, throttle: Option<Arc<Throttle>>) -> Node {
        let meter = Arc::new(Meter::new());
        let wire = Arc::new(WireCounters::default());
        let transport = |key: &Keypair| -> Result<SwarmTransport, Box<dyn Error + Send + Sync>> {
            Ok(match link {
                Link::Memory => memory(key, wire.clone(), meter.clone(), throttle)?,
                Link::Quic => quic(key, meter.clone()),
            })
        };
        let swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_other_transport(transport)
            .unwrap()
            .with_behaviour(|_| {
                request_response::Behaviour::with_codec(
                    FrameCodec::default(),
                    [(TEST_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default(),
                )
            })
            .unwrap()
            .with_swarm_config(|config| {
                config.with_idle_connection_timeout(Duration::from_secs(60))
            })
            .build();
        Node { swarm, meter, wire }
    }

    /// `a` sends `n` bytes on [`TEST_PROTOCOL`] to `b`, which answers with
    /// `n` bytes.
    async fn exchange(link: Link, throttle: Option<Arc<Throttle>>, n: usize) -> (Node, Node) {
        let mut a = node(link, throttle);
        let mut b = node(link, None);
        let listen: Multiaddr = match link {
            Link::Memory => "/memory/0",
            Link::Quic => "/ip4/127.0.0.1/udp/0/quic-v1",
        }
        .parse()
        .unwrap();
        b.swarm.listen_on(listen).unwrap();
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = b.swarm.select_next_some().await {
                break address;
            }
        };
        let b_id = *b.swarm.local_peer_id();
        a.swarm.add_peer_address(b_id, addr);
        a.swarm.behaviour_mut().send_request(&b_id, vec![7; n]);
        let exchanged = async {
            loop {
                tokio::select! {
                    event = a.swarm.select_next_some() => match event {
                        SwarmEvent::Behaviour(request_response::Event::Message {
                            message: request_response::Message::Response { response, .. },
                            ..
                        }) => {
                            assert_eq!(response.len(), n);
                            break;
                        }
                        SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                            error, ..
                        }) => panic!("request failed: {error}"),
                        _ => {}
                    },
                    event = b.swarm.select_next_some() => {
                        if let SwarmEvent::Behaviour(request_response::Event::Message {
                            message: request_response::Message::Request { request, channel, .. },
                            ..
                        }) = event {
                            assert_eq!(request.len(), n);
                            b.swarm.behaviour_mut().send_response(channel, vec![9; n]).unwrap();
                        }
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), exchanged)
            .await
            .expect("exchange timed out");
        (a, b)
    }

    fn assert_metered(node: &Node, remote: &PeerId, n: u64) {
        let snapshot = node.meter.snapshot();
        let row = snapshot
            .protocols
            .iter()
            .find(|row| row.protocol == TEST_PROTOCOL.as_ref())
            .unwrap_or_else(|| panic!("no {TEST_PROTOCOL} row: {snapshot:#?}"));
        assert!(row.bytes_in >= n && row.bytes_out >= n, "{snapshot:#?}");
        let (peer_in, peer_out) = node.meter.peer(remote).expect("remote is tracked");
        assert!(
            peer_in >= row.bytes_in && peer_out >= row.bytes_out,
            "{snapshot:#?}"
        );
        assert!(
            snapshot.overhead_in > 0 && snapshot.overhead_out > 0,
            "{snapshot:#?}"
        );
        assert_eq!(
            (snapshot.unauthenticated_in, snapshot.unauthenticated_out),
            (0, 0)
        );
    }

    #[tokio::test]
    async fn memory_link_meters_protocol_peer_and_overhead() {
        let n = 64 * 1024;
        let (a, b) = exchange(Link::Memory, None, n).await;
        let (a_id, b_id) = (*a.swarm.local_peer_id(), *b.swarm.local_peer_id());
        assert_metered(&a, &b_id, n as u64);
        assert_metered(&b, &a_id, n as u64);
        for node in [&a, &b] {
            // Raw counting feeds both the node-wide counters and the meter.
            let snapshot = node.meter.snapshot();
            assert_eq!(
                snapshot.total_in,
                node.wire.bytes_in.load(Ordering::Relaxed)
            );
            assert_eq!(
                snapshot.total_out,
                node.wire.bytes_out.load(Ordering::Relaxed)
            );
            // One peer, all the bytes.
            assert_eq!(snapshot.peers.len(), 1);
            let peer = &snapshot.peers[0];
            assert_eq!(
                (peer.bytes_in, peer.bytes_out),
                (snapshot.total_in, snapshot.total_out)
            );
        }
        // What one side sent, the other received.
        let (sa, sb) = (a.meter.snapshot(), b.meter.snapshot());
        assert_eq!(sa.total_out, sb.total_in);
        assert_eq!(sa.total_in, sb.total_out);
    }

    #[tokio::test]
    async fn throttled_memory_link_still_meters() {
        let n = 32 * 1024;
        let throttle = Throttle::for_link(4 * 1024 * 1024);
        let (a, b) = exchange(Link::Memory, throttle, n).await;
        assert_metered(&a, b.swarm.local_peer_id(), n as u64);
        assert_metered(&b, a.swarm.local_peer_id(), n as u64);
    }

    #[tokio::test]
    async fn quic_link_meters_substreams() {
        let n = 64 * 1024;
        let (a, b) = exchange(Link::Quic, None, n).await;
        assert_metered(&a, b.swarm.local_peer_id(), n as u64);
        assert_metered(&b, a.swarm.local_peer_id(), n as u64);
        // QUIC's packets are not seen by the raw counters.
        assert_eq!(a.wire.bytes_out.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn failed_handshake_counts_as_unauthenticated() {
        let meter = Arc::new(Meter::new());
        let wire = Arc::new(WireCounters::default());
        let key = Keypair::generate_ed25519();
        let mut listener = memory(&key, wire.clone(), meter.clone(), None).unwrap();
        let port = rand::random::<u64>().max(1);
        let addr: Multiaddr = format!("/memory/{port}").parse().unwrap();
        listener
            .listen_on(ListenerId::next(), addr.clone())
            .unwrap();
        let opts = DialOpts {
            role: Endpoint::Dialer,
            port_use: PortUse::Reuse,
        };
        let dial = MemoryTransport::default().dial(addr, opts).unwrap();
        let client = async {
            let mut stream = dial.await.unwrap();
            // Not a multistream-select message: the listener gives up.
            stream.write_all(&[0xff; 64]).await.unwrap();
            let _ = stream.close().await;
        };
        let server = async {
            let upgrade = futures::future::poll_fn(|cx| loop {
                match Pin::new(&mut listener).poll(cx) {
                    Poll::Ready(TransportEvent::Incoming { upgrade, .. }) => {
                        return Poll::Ready(upgrade)
                    }
                    Poll::Ready(_) => continue,
                    Poll::Pending => return Poll::Pending,
                }
            })
            .await;
            upgrade.await
        };
        let ((), upgraded) = futures::join!(client, server);
        assert!(upgraded.is_err());
        let snapshot = meter.snapshot();
        assert!(snapshot.unauthenticated_in > 0, "{snapshot:#?}");
        assert_eq!(snapshot.unauthenticated_in, snapshot.total_in);
        assert_eq!(snapshot.total_in, wire.bytes_in.load(Ordering::Relaxed));
        assert!(snapshot.peers.is_empty());
    }

    #[test]
    fn bucket_grants_burst_then_rate() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(1000, 1600); // grain: 100 bytes
        assert_eq!(bucket.allowance(5000, t0), Ok(1600));
        bucket.charge(1600);
        let wait = bucket.allowance(5000, t0).unwrap_err();
        assert!(wait >= Duration::from_millis(99) && wait <= Duration::from_millis(101));
        assert_eq!(bucket.allowance(5000, t0 + wait), Ok(100));
        bucket.charge(100);
        // A small request waits only for itself.
        let wait = bucket.allowance(10, t0 + wait).unwrap_err();
        assert!(wait <= Duration::from_millis(11), "{wait:?}");
        // Bytes moved beyond the allowance are a debt.
        bucket.charge(900);
        let wait = bucket.allowance(5000, t0).unwrap_err();
        assert!(wait >= Duration::from_millis(999), "{wait:?}");
        // Idle time refills up to the burst only.
        assert_eq!(
            bucket.allowance(1 << 20, t0 + Duration::from_secs(3600)),
            Ok(1600)
        );
    }

    #[test]
    fn link_rate_zero_means_no_throttle() {
        assert!(Throttle::for_link(0).is_none());
        assert!(Throttle::for_link(1).is_some());
    }

    const RATE: u64 = 100 * 1024;
    const BYTES: usize = 200 * 1024;

    /// Seconds `BYTES` take at `RATE` after the first burst.
    fn expected_secs() -> f64 {
        (BYTES as u64 - MIN_BURST_BYTES) as f64 / RATE as f64
    }

    #[tokio::test]
    async fn throttled_stream_keeps_to_the_rate_both_ways() {
        let throttle = Arc::new(Throttle::new(RATE));
        let start = Instant::now();
        let write = async {
            let mut stream = Throttled::new(futures::io::sink(), Some(throttle.clone()));
            stream.write_all(&vec![0; BYTES]).await.unwrap();
            start.elapsed().as_secs_f64()
        };
        let read = async {
            let mut stream = Throttled::new(futures::io::repeat(1), Some(throttle.clone()));
            let mut buf = vec![0; BYTES];
            stream.read_exact(&mut buf).await.unwrap();
            start.elapsed().as_secs_f64()
        };
        let (written, read) = futures::join!(write, read);
        // Up and down are separate buckets: both take the expected time,
        // neither twice as long.
        for took in [written, read] {
            let ratio = took / expected_secs();
            assert!((0.9..2.0).contains(&ratio), "took {took:.2} s");
        }
    }

    #[tokio::test]
    async fn streams_share_a_throttle() {
        let throttle = Arc::new(Throttle::new(RATE));
        let start = Instant::now();
        let send = |bytes: usize| {
            let throttle = throttle.clone();
            async move {
                let mut stream = Throttled::new(futures::io::sink(), Some(throttle));
                stream.write_all(&vec![0; bytes]).await.unwrap();
            }
        };
        // Two connections of half the bytes each take as long as one with all.
        futures::join!(send(BYTES / 2), send(BYTES / 2));
        let ratio = start.elapsed().as_secs_f64() / expected_secs();
        assert!((0.9..2.0).contains(&ratio), "ratio {ratio:.2}");
        // Without a throttle, the same bytes go at once.
        let start = Instant::now();
        let mut free = Throttled::new(futures::io::sink(), None);
        free.write_all(&vec![0; BYTES]).await.unwrap();
        assert!(start.elapsed().as_secs_f64() < expected_secs() / 10.0);
    }
}
