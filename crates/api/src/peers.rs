//! Peers: `GET /v1/peers` (connected peers) and `POST /v1/peers` (dial an address).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use peercomm_node::Multiaddr;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::AppState;

/// `GET /v1/peers`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PeerList {
    /// Connected peers.
    pub(crate) peers: Vec<PeerView>,
}

/// A connected peer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PeerView {
    /// Its peer id (base58).
    pub(crate) peer_id: String,
    /// Addresses of its open connections.
    pub(crate) addresses: Vec<String>,
    /// Whether the node holds its signed record (and so can seal messages to it).
    pub(crate) has_record: bool,
}

/// `POST /v1/peers` request and response.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DialRequest {
    /// A multiaddr, with or without `/p2p/<peer-id>`.
    #[schema(
        example = "/ip4/192.0.2.7/tcp/4001/p2p/12D3KooWLtmqXKzwzG8RYQS7Nk8y4UvYdxDtczwhHsE2PNYU4Pad"
    )]
    pub(crate) addr: String,
}

/// The peers the node is connected to.
#[utoipa::path(
    get,
    operation_id = "list_peers",
    path = "/v1/peers",
    tag = "peers",
    responses(
        (status = 200, description = "Connected peers", body = PeerList),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 500, description = "A background task failed", body = ErrorBody),
        (status = 503, description = "The node is not running", body = ErrorBody),
    )
)]
pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<PeerList>, ApiError> {
    let peers = state.node.peers().await?;
    Ok(Json(PeerList {
        peers: peers
            .into_iter()
            .map(|p| PeerView {
                peer_id: p.peer_id.to_base58(),
                addresses: p.addresses.iter().map(ToString::to_string).collect(),
                has_record: p.has_record,
            })
            .collect(),
    }))
}

/// Dials an address. 202 means the node started the dial; the connection
/// shows in `GET /v1/peers` and as a `peer_connected` event once it is up.
#[utoipa::path(
    post,
    operation_id = "dial_peer",
    path = "/v1/peers",
    tag = "peers",
    request_body(content = DialRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "The dial was started", body = DialRequest),
        (status = 400, description = "Malformed JSON (`invalid_json`) or an invalid `addr` (`invalid_field`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 413, description = "The request body is over the API's limit", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 422, description = "The node refused to dial the address", body = ErrorBody),
        (status = 503, description = "The node is not running", body = ErrorBody),
    )
)]
pub(crate) async fn dial(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<DialRequest>,
) -> Result<(StatusCode, Json<DialRequest>), ApiError> {
    let addr: Multiaddr = request.addr.parse().map_err(|e| {
        ApiError::invalid_field(format!(
            "`addr` is not a valid multiaddr ({e}): got {:?}; send e.g. \
             \"/ip4/192.0.2.7/tcp/4001/p2p/<peer-id>\"",
            request.addr
        ))
    })?;
    state.node.dial(addr.clone()).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(DialRequest {
            addr: addr.to_string(),
        }),
    ))
}
