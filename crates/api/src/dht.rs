//! DHT: `GET /v1/dht/peers/{id}` (find a peer's verified record) and
//! `GET /v1/dht/stats` (routing table, records held, lookups).

use axum::extract::State;
use axum::Json;
use peercomm_node::{FindError, PeerId};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiPath;
use crate::AppState;

/// A peer's verified record, as found in the DHT.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PeerRecordView {
    /// The peer id (base58).
    pub(crate) peer_id: String,
    /// Its addresses, as it signed them.
    pub(crate) addrs: Vec<String>,
    /// Its X25519 box key, hex.
    pub(crate) box_key: String,
    /// The record's sequence number (higher replaces lower).
    pub(crate) seq: u64,
    /// When the record expires, ms since the Unix epoch.
    pub(crate) expires_ms: u64,
    /// Protocol version the peer speaks.
    pub(crate) protocol_version: u32,
}

/// `GET /v1/dht/stats`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DhtStatsView {
    /// Peers in the routing table.
    pub(crate) routing_table_peers: usize,
    /// Non-empty buckets: `[bucket index (log2 distance), peers]`.
    pub(crate) buckets: Vec<(u32, usize)>,
    /// Records this node holds for the network.
    pub(crate) records_held: usize,
    /// Whether a bootstrap has completed.
    pub(crate) joined: bool,
    /// Lookups finished since start.
    pub(crate) lookups: u64,
    /// Lookups that found a valid record.
    pub(crate) lookups_succeeded: u64,
    /// Requests per lookup, median and 95th percentile (last 4,096 lookups).
    pub(crate) requests_p50: f64,
    /// Requests per lookup, 95th percentile.
    pub(crate) requests_p95: f64,
    /// Lookup latency in ms, median.
    pub(crate) latency_ms_p50: f64,
    /// Lookup latency in ms, 99th percentile.
    pub(crate) latency_ms_p99: f64,
}

/// Finds a peer's signed record through the DHT (verified before it is
/// returned; cached for `dht.cache_ttl`).
#[utoipa::path(
    get,
    operation_id = "find_peer",
    path = "/v1/dht/peers/{id}",
    tag = "dht",
    params(("id" = String, Path, description = "The peer id (base58)")),
    responses(
        (status = 200, description = "The verified record", body = PeerRecordView),
        (status = 400, description = "Not a peer id (`invalid_peer_id`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No valid record in the DHT", body = ErrorBody),
        (status = 422, description = "The id is this node's own", body = ErrorBody),
        (status = 503, description = "The node is not running or has not joined the DHT", body = ErrorBody),
    )
)]
pub(crate) async fn find(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<PeerRecordView>, ApiError> {
    let peer: PeerId = id
        .parse()
        .map_err(|e| ApiError::invalid_peer_id("id", &id, e))?;
    match state.node.find_peer(peer).await {
        Ok(r) => Ok(Json(PeerRecordView {
            peer_id: r.peer_id.to_base58(),
            addrs: r.addrs.iter().map(ToString::to_string).collect(),
            box_key: hex_of(&r.box_key),
            seq: r.seq,
            expires_ms: r.expires_ms,
            protocol_version: r.protocol_version,
        })),
        Err(e @ FindError::NotFound(_)) => Err(ApiError::not_found(e.to_string())),
        Err(e @ FindError::Itself(_)) => Err(ApiError::unprocessable(e.to_string())),
        Err(e @ (FindError::NotJoined | FindError::NodeStopped)) => Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "node_unavailable",
            e.to_string(),
        )),
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Routing table fill, records held and lookup figures.
#[utoipa::path(
    get,
    operation_id = "dht_stats",
    path = "/v1/dht/stats",
    tag = "dht",
    responses(
        (status = 200, description = "DHT figures", body = DhtStatsView),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 500, description = "A background task failed", body = ErrorBody),
        (status = 503, description = "The node is not running", body = ErrorBody),
    )
)]
pub(crate) async fn stats(State(state): State<AppState>) -> Result<Json<DhtStatsView>, ApiError> {
    let s = state.node.dht_stats().await?;
    Ok(Json(DhtStatsView {
        routing_table_peers: s.routing_table_peers,
        buckets: s.buckets,
        records_held: s.records_held,
        joined: s.joined,
        lookups: s.lookups.lookups,
        lookups_succeeded: s.lookups.succeeded,
        requests_p50: s.lookups.requests_p50,
        requests_p95: s.lookups.requests_p95,
        latency_ms_p50: s.lookups.latency_ms_p50,
        latency_ms_p99: s.lookups.latency_ms_p99,
    }))
}

/// `GET /v1/mailbox/stats`: what this node's mailbox holds for others.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MailboxStatsView {
    /// Items held (envelopes and receipts) for peers that were offline.
    pub(crate) items: u64,
    /// Bytes those items take.
    pub(crate) bytes: u64,
    /// Recipients with items waiting.
    pub(crate) recipients: u64,
    /// Senders whose items are held.
    pub(crate) senders: u64,
    /// Acknowledged ids remembered so late replicas are not stored again.
    pub(crate) tombstones: u64,
}

/// What this node's mailbox holds, for its operator.
#[utoipa::path(
    get,
    operation_id = "mailbox_stats",
    path = "/v1/mailbox/stats",
    tag = "mailbox",
    responses(
        (status = 200, description = "Mailbox figures", body = MailboxStatsView),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 500, description = "The store could not be read", body = ErrorBody),
        (status = 503, description = "The node is not running", body = ErrorBody),
    )
)]
pub(crate) async fn mailbox_stats(
    State(state): State<AppState>,
) -> Result<Json<MailboxStatsView>, ApiError> {
    let s = state.node.mailbox_stats().await?;
    Ok(Json(MailboxStatsView {
        items: s.items,
        bytes: s.bytes,
        recipients: s.recipients,
        senders: s.depositors,
        tombstones: s.tombstones,
    }))
}
