//! Messages: send (`POST /v1/messages`), read one (`GET /v1/messages/{id}`)
//! and page through the inbox or outbox (`GET /v1/messages`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use peercomm_node::{
    DeliveryState, InboxQuery, IncomingMessage, MessageId, OutgoingMessage, PeerId, Priority,
    Route, SendOptions, MAX_PAGE,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::AppState;

/// Page size when `limit` is not given.
pub(crate) const DEFAULT_LIMIT: u32 = 100;

/// `POST /v1/messages`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendRequest {
    /// The recipient's peer id (base58).
    #[schema(example = "12D3KooWLtmqXKzwzG8RYQS7Nk8y4UvYdxDtczwhHsE2PNYU4Pad")]
    pub(crate) to: String,
    /// The message text (UTF-8; at most 64 KiB once encoded).
    #[schema(example = "hello")]
    pub(crate) body: String,
    /// Lifetime, humantime format (`30m`, `12h`, `1d`); the node's default
    /// (`delivery.default_ttl`) when absent.
    #[serde(default)]
    #[schema(example = "1d")]
    pub(crate) ttl: Option<String>,
    /// Priority class; `interactive` when absent.
    #[serde(default)]
    pub(crate) priority: Option<PriorityClass>,
    /// Route preference; `auto` (the node chooses) when absent or `null`. Any
    /// other value answers 400 `invalid_route`.
    // Implementation notes: read as any JSON value, not as the enum, so that
    // every wrong value (unknown name or wrong type) answers `invalid_route`
    // from `parse_route` rather than serde's generic `invalid_field`.
    #[serde(default)]
    #[schema(value_type = Option<RoutePreference>)]
    pub(crate) route: Option<Value>,
}

/// A priority class, from the most to the least urgent.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PriorityClass {
    /// Protocol control traffic.
    Control,
    /// One-to-one conversation.
    Interactive,
    /// Group conversation.
    Group,
    /// Bulk transfers.
    Bulk,
    /// Typing, presence: dropped first.
    Ephemeral,
}

impl From<PriorityClass> for Priority {
    fn from(p: PriorityClass) -> Self {
        match p {
            PriorityClass::Control => Priority::Control,
            PriorityClass::Interactive => Priority::Interactive,
            PriorityClass::Group => Priority::Group,
            PriorityClass::Bulk => Priority::Bulk,
            PriorityClass::Ephemeral => Priority::Ephemeral,
        }
    }
}

/// How the sender wants a message routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RoutePreference {
    /// The node chooses.
    Auto,
    /// Only over a direct connection to the recipient.
    Direct,
    /// Hop by hop through other peers.
    Multihop,
    /// Through onion relays, so no relay sees both ends (bodies up to
    /// 1,303 bytes).
    Onion,
}

impl From<Route> for RoutePreference {
    fn from(r: Route) -> Self {
        match r {
            Route::Auto => Self::Auto,
            Route::Direct => Self::Direct,
            Route::Multihop => Self::Multihop,
            Route::Onion => Self::Onion,
        }
    }
}

/// Reads the optional `route` of a send request: absent or `null` is `None`
/// (the node's default, `auto`); a string must name a [`Route`].
fn parse_route(value: Option<&Value>) -> Result<Option<Route>, ApiError> {
    let got = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(name)) => match name.parse::<Route>() {
            Ok(route) => return Ok(Some(route)),
            Err(_) => format!("{name:?}"),
        },
        Some(other) => other.to_string(),
    };
    let accepted: Vec<String> = Route::ALL.iter().map(|r| format!("\"{r}\"")).collect();
    Err(ApiError::bad_request(
        "invalid_route",
        format!(
            "`route` must be one of {} (got {got}); omit it for \"auto\", the node's choice",
            accepted.join(", ")
        ),
    ))
}

/// `POST /v1/messages` answer: the message is durable in the outbox.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SendResponse {
    /// The message id (32 lowercase hex characters).
    #[schema(example = "0123456789abcdef0123456789abcdef")]
    pub(crate) id: String,
    /// Always `queued`.
    pub(crate) state: OutgoingState,
}

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Direction {
    /// Received by this node.
    In,
    /// Sent by this node.
    Out,
}

/// Where an outgoing message is on its way.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OutgoingState {
    /// Accepted and durable; not sent yet, or waiting for a retry.
    Queued,
    /// Sent directly; waiting for a receipt.
    Sent,
    /// Handed to a relay route; waiting for a receipt.
    Routed,
    /// Sent along an onion path; waiting for a receipt.
    Onion,
    /// Deposited in mailboxes; waiting for a receipt.
    Stored,
    /// The recipient's signed receipt arrived (final).
    Delivered,
    /// Expired before delivery (final).
    Expired,
    /// Given up (final; see `last_error`).
    Failed,
}

impl From<DeliveryState> for OutgoingState {
    fn from(s: DeliveryState) -> Self {
        match s {
            DeliveryState::Queued => Self::Queued,
            DeliveryState::Sent => Self::Sent,
            DeliveryState::Routed => Self::Routed,
            DeliveryState::Onion => Self::Onion,
            DeliveryState::Stored => Self::Stored,
            DeliveryState::Delivered => Self::Delivered,
            DeliveryState::Expired => Self::Expired,
            DeliveryState::Failed => Self::Failed,
        }
    }
}

/// The state of a received message.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum IncomingState {
    /// Stored in the inbox.
    Received,
}

/// A message this node sent.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OutgoingView {
    /// Message id (32 lowercase hex characters).
    pub(crate) id: String,
    /// Always `out`.
    pub(crate) direction: Direction,
    /// The recipient's peer id.
    pub(crate) peer: String,
    /// Delivery state.
    pub(crate) state: OutgoingState,
    /// Delivery attempts made.
    pub(crate) attempts: u32,
    /// When it was accepted (ms since the Unix epoch).
    pub(crate) created_ms: u64,
    /// When it expires (ms since the Unix epoch).
    pub(crate) expires_ms: u64,
    /// The last attempt, if any (ms since the Unix epoch).
    pub(crate) last_attempt_ms: Option<u64>,
    /// The next scheduled attempt (ms since the Unix epoch).
    pub(crate) next_attempt_ms: u64,
    /// When its receipt arrived, if it did (ms since the Unix epoch).
    pub(crate) delivered_ms: Option<u64>,
    /// Why the last attempt failed, if it did.
    pub(crate) last_error: Option<String>,
    /// The sender's route preference.
    pub(crate) route: RoutePreference,
    /// Hops of the route or onion path it went along; `null` until known
    /// (e.g. not sent yet).
    pub(crate) hops: Option<u32>,
    /// Mailboxes that accepted a copy while the recipient was unreachable;
    /// `null` if it was never deposited.
    pub(crate) replicas: Option<u32>,
    /// The text (invalid UTF-8 replaced by U+FFFD).
    pub(crate) body: String,
}

/// A message this node received.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct IncomingView {
    /// Message id (32 lowercase hex characters).
    pub(crate) id: String,
    /// Always `in`.
    pub(crate) direction: Direction,
    /// The sender's peer id.
    pub(crate) peer: String,
    /// Always `received`.
    pub(crate) state: IncomingState,
    /// Local sequence number (the paging cursor).
    pub(crate) seq: i64,
    /// When the sender created it (ms since the Unix epoch).
    pub(crate) created_ms: u64,
    /// When it expires (ms since the Unix epoch).
    pub(crate) expires_ms: u64,
    /// When this node stored it (ms since the Unix epoch).
    pub(crate) received_ms: u64,
    /// The text (invalid UTF-8 replaced by U+FFFD).
    pub(crate) body: String,
}

/// A sent or received message.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum MessageView {
    /// Sent by this node.
    Out(OutgoingView),
    /// Received by this node.
    In(IncomingView),
}

/// `GET /v1/messages`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MessageList {
    /// The page, oldest first.
    pub(crate) messages: Vec<MessageView>,
    /// Pass as `after` for the next page; `null` when the page is empty.
    pub(crate) next_after: Option<i64>,
}

/// `GET /v1/messages` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    /// `in` (received, the default) or `out` (sent).
    pub(crate) direction: Option<Direction>,
    /// Only messages from (`in`) or to (`out`) this peer id.
    pub(crate) peer: Option<String>,
    /// Only messages after this sequence number (`next_after` of the previous page).
    pub(crate) after: Option<i64>,
    /// Page size, 1..=500; 100 when absent.
    #[param(minimum = 1, maximum = 500)]
    pub(crate) limit: Option<u32>,
}

fn outgoing_view(m: OutgoingMessage) -> OutgoingView {
    OutgoingView {
        id: MessageId::from(m.id).to_string(),
        direction: Direction::Out,
        peer: m.recipient,
        state: m.state.into(),
        attempts: m.attempts,
        created_ms: m.created_ms,
        expires_ms: m.expires_ms,
        last_attempt_ms: m.last_attempt_ms,
        next_attempt_ms: m.next_attempt_ms,
        delivered_ms: m.delivered_ms,
        last_error: m.last_error,
        route: m.route.into(),
        hops: m.hops,
        replicas: m.replicas,
        body: String::from_utf8_lossy(&m.body).into_owned(),
    }
}

fn incoming_view(m: IncomingMessage) -> IncomingView {
    IncomingView {
        id: MessageId::from(m.id).to_string(),
        direction: Direction::In,
        peer: m.sender,
        state: IncomingState::Received,
        seq: m.seq,
        created_ms: m.created_ms,
        expires_ms: m.expires_ms,
        received_ms: m.received_ms,
        body: String::from_utf8_lossy(&m.body).into_owned(),
    }
}

/// A peer id given in field `field`, or 400 `invalid_peer_id`.
pub(crate) fn parse_peer(field: &str, value: &str) -> Result<PeerId, ApiError> {
    value
        .parse()
        .map_err(|e| ApiError::invalid_peer_id(field, value, e))
}

/// Queues a message. 202 means it is committed to the outbox: it will be
/// delivered, retried or expired even if the node crashes right after.
#[utoipa::path(
    post,
    operation_id = "send_message",
    path = "/v1/messages",
    tag = "messages",
    request_body(content = SendRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted and durable", body = SendResponse),
        (status = 400, description = "Malformed JSON (`invalid_json`), a wrong field (`invalid_field`), peer id (`invalid_peer_id`) or route (`invalid_route`: not \"auto\", \"direct\", \"multihop\" or \"onion\")", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 413, description = "The request body is over the API's limit", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 422, description = "Body too large for a message, ttl zero or over the maximum, or sent to this node itself", body = ErrorBody),
        (status = 500, description = "The store failed; the message was not accepted", body = ErrorBody),
        (status = 503, description = "The node is not running", body = ErrorBody),
    )
)]
pub(crate) async fn send(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<SendRequest>,
) -> Result<(StatusCode, Json<SendResponse>), ApiError> {
    let to = parse_peer("to", &request.to)?;
    let ttl = request
        .ttl
        .as_deref()
        .map(|t| {
            humantime::parse_duration(t).map_err(|e| {
                ApiError::invalid_field(format!(
                    "`ttl` is not a duration ({e}): got {t:?}; send e.g. \"30m\", \"12h\" or \"1d\""
                ))
            })
        })
        .transpose()?;
    let options = SendOptions {
        ttl,
        priority: request.priority.map(Priority::from),
        route: parse_route(request.route.as_ref())?,
    };
    let id = state
        .node
        .send(to, request.body.into_bytes(), options)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(SendResponse {
            id: id.to_string(),
            state: OutgoingState::Queued,
        }),
    ))
}

/// A message by id: a sent one (with its delivery state) or a received one.
#[utoipa::path(
    get,
    path = "/v1/messages/{id}",
    operation_id = "get_message",
    tag = "messages",
    params(("id" = String, Path, description = "Message id, 32 hex characters")),
    responses(
        (status = 200, description = "The message", body = MessageView),
        (status = 400, description = "The id is not 32 hex characters (`invalid_id`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No message with this id", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
        (status = 503, description = "The node is not running", body = ErrorBody),
    )
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<MessageView>, ApiError> {
    let parsed: MessageId = id.parse().map_err(|e| {
        ApiError::bad_request(
            "invalid_id",
            format!(
                "message id {id:?} is invalid ({e}); an id is 32 hex characters, \
                 as `POST /v1/messages` returns it"
            ),
        )
    })?;
    if let Some(m) = state.node.message_state(parsed).await? {
        return Ok(Json(MessageView::Out(outgoing_view(m))));
    }
    if let Some(m) = state.node.incoming(parsed).await? {
        return Ok(Json(MessageView::In(incoming_view(m))));
    }
    Err(ApiError::not_found(format!(
        "no sent or received message has id {parsed}"
    )))
}

/// A page of received (`direction=in`) or sent (`direction=out`) messages,
/// oldest first.
#[utoipa::path(
    get,
    operation_id = "list_messages",
    path = "/v1/messages",
    tag = "messages",
    params(ListParams),
    responses(
        (status = 200, description = "A page of messages", body = MessageList),
        (status = 400, description = "A bad parameter (`invalid_query`) or peer id (`invalid_peer_id`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
        (status = 503, description = "The node is not running", body = ErrorBody),
    )
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<MessageList>, ApiError> {
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("`limit` must be between 1 and {MAX_PAGE} (got {limit}); omit it for {DEFAULT_LIMIT}"),
        ));
    }
    let peer = match params.peer.as_deref() {
        None | Some("") => None,
        Some(p) => Some(parse_peer("peer", p)?),
    };
    let query = InboxQuery {
        peer,
        after: params.after,
        limit: Some(limit),
    };
    let (messages, next_after) = match params.direction.unwrap_or(Direction::In) {
        Direction::In => {
            let page = state.node.inbox(query).await?;
            let next = page.last().map(|m| m.seq);
            (
                page.into_iter()
                    .map(|m| MessageView::In(incoming_view(m)))
                    .collect(),
                next,
            )
        }
        Direction::Out => {
            let page = state.node.outbox(query).await?;
            let next = page.last().map(|(seq, _)| *seq);
            (
                page.into_iter()
                    .map(|(_, m)| MessageView::Out(outgoing_view(m)))
                    .collect(),
                next,
            )
        }
    };
    Ok(Json(MessageList {
        messages,
        next_after,
    }))
}
