//! `GET /v1/bandwidth`: bytes on the wire by peer, protocol and priority
//! class, each peer link's queue and congestion state, and what the
//! adaptation mechanisms did.

use axum::extract::State;
use axum::Json;
use peercomm_node::bandwidth::BandwidthReport;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::AppState;

/// Bytes one way and the other.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BytesView {
    /// What the row stands for: a peer id, a protocol name or a class.
    pub(crate) name: String,
    /// Bytes received.
    pub(crate) bytes_in: u64,
    /// Bytes sent.
    pub(crate) bytes_out: u64,
}

/// One peer link's queue and congestion state.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LinkView {
    /// The peer id (base58).
    pub(crate) peer: String,
    /// Messages queued for it.
    pub(crate) queued: usize,
    /// Requests in flight.
    pub(crate) in_flight: usize,
    /// Requests allowed in flight (the congestion window).
    pub(crate) window: usize,
    /// Smoothed round trip, ms (none before the first answer).
    pub(crate) rtt_ms: Option<f64>,
    /// `clear`, or why the link is congested: `queue_delay`, `rtt_growth`
    /// or `failures`.
    pub(crate) state: String,
}

/// The `[bandwidth]` configuration in force.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BandwidthConfigView {
    /// Master switch of the mechanisms below.
    pub(crate) adaptive: bool,
    /// zstd with the shipped dictionary before sealing.
    pub(crate) compression: bool,
    /// Priority queues and congestion control.
    pub(crate) priorities: bool,
    /// Several messages per request.
    pub(crate) batching: bool,
    /// Retry by what is known of the peer.
    pub(crate) adaptive_retry: bool,
    /// IHAVE to D_lazy peers only, IDONTWANT.
    pub(crate) gossip_tuning: bool,
    /// Stretched keepalives and catch-up polls when idle.
    pub(crate) idle_tuning: bool,
    /// Mailbox lookups reused rather than repeated per message.
    pub(crate) dht_tuning: bool,
    /// Upload budget, bytes per second (0: none).
    pub(crate) budget_bytes_per_sec: u64,
    /// Messages per request, at most.
    pub(crate) max_batch: usize,
}

/// `GET /v1/bandwidth`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BandwidthView {
    /// The configuration in force.
    pub(crate) config: BandwidthConfigView,
    /// Every byte received (raw socket bytes for TCP; substream bytes for
    /// QUIC).
    pub(crate) total_in: u64,
    /// Every byte sent, likewise.
    pub(crate) total_out: u64,
    /// By peer, most bytes first (peers beyond the tracked ones are summed
    /// in a row named `other`; failed handshakes in `unauthenticated`).
    pub(crate) peers: Vec<BytesView>,
    /// By protocol, substream payload; `overhead` is everything else
    /// (Noise, Yamux, multistream-select, handshakes).
    pub(crate) protocols: Vec<BytesView>,
    /// By priority class: `control`, `interactive`, `group`, `bulk`,
    /// `ephemeral`.
    pub(crate) classes: Vec<BytesView>,
    /// Peer links with a queue, most queued first.
    pub(crate) links: Vec<LinkView>,
    /// Bodies sealed compressed with the shipped dictionary.
    pub(crate) sealed_dictionary: u64,
    /// Bodies sealed compressed with plain zstd.
    pub(crate) sealed_zstd: u64,
    /// Bodies sealed uncompressed (short, incompressible, or compression off).
    pub(crate) sealed_uncompressed: u64,
    /// Batch requests sent.
    pub(crate) batches_sent: u64,
    /// Ephemeral messages dropped (congestion, budget, staleness).
    pub(crate) ephemeral_shed: u64,
}

impl From<BandwidthReport> for BandwidthView {
    fn from(r: BandwidthReport) -> Self {
        let row = |name: String, bytes_in: u64, bytes_out: u64| BytesView {
            name,
            bytes_in,
            bytes_out,
        };
        let m = r.meter;
        let mut peers: Vec<BytesView> = m
            .peers
            .into_iter()
            .map(|p| row(p.peer.to_base58(), p.bytes_in, p.bytes_out))
            .collect();
        if m.other_peers_in + m.other_peers_out > 0 {
            peers.push(row("other".into(), m.other_peers_in, m.other_peers_out));
        }
        if m.unauthenticated_in + m.unauthenticated_out > 0 {
            peers.push(row(
                "unauthenticated".into(),
                m.unauthenticated_in,
                m.unauthenticated_out,
            ));
        }
        let mut protocols: Vec<BytesView> = m
            .protocols
            .into_iter()
            .map(|p| row(p.protocol, p.bytes_in, p.bytes_out))
            .collect();
        protocols.push(row("overhead".into(), m.overhead_in, m.overhead_out));
        let c = r.config;
        Self {
            config: BandwidthConfigView {
                adaptive: c.adaptive,
                compression: c.compression,
                priorities: c.priorities,
                batching: c.batching,
                adaptive_retry: c.adaptive_retry,
                gossip_tuning: c.gossip_tuning,
                idle_tuning: c.idle_tuning,
                dht_tuning: c.dht_tuning,
                budget_bytes_per_sec: c.budget_bytes_per_sec,
                max_batch: c.max_batch,
            },
            total_in: m.total_in,
            total_out: m.total_out,
            peers,
            protocols,
            classes: r
                .classes
                .into_iter()
                .map(|c| row(c.class.to_string(), c.bytes_in, c.bytes_out))
                .collect(),
            links: r
                .links
                .into_iter()
                .map(|l| LinkView {
                    peer: l.peer.to_base58(),
                    queued: l.queued,
                    in_flight: l.in_flight,
                    window: l.window,
                    rtt_ms: l.rtt_ms,
                    state: l.state,
                })
                .collect(),
            sealed_dictionary: r.sealed_dictionary,
            sealed_zstd: r.sealed_zstd,
            sealed_uncompressed: r.sealed_uncompressed,
            batches_sent: r.batches_sent,
            ephemeral_shed: r.ephemeral_shed,
        }
    }
}

/// Bytes on the wire (counted at the transport) by peer, protocol and
/// priority class, each peer link's state, and what adaptation did.
#[utoipa::path(
    get,
    operation_id = "bandwidth",
    path = "/v1/bandwidth",
    tag = "node",
    responses(
        (status = 200, description = "Bandwidth use and adaptation state", body = BandwidthView),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 503, description = "The node is not running", body = ErrorBody),
    )
)]
pub(crate) async fn bandwidth(
    State(state): State<AppState>,
) -> Result<Json<BandwidthView>, ApiError> {
    Ok(Json(state.node.bandwidth().await?.into()))
}
