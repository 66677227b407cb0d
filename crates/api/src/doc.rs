//! The OpenAPI document: generated from the handlers' `#[utoipa::path]`
//! attributes and the request and response types, served at
//! `/v1/openapi.json`.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorDetail};
use crate::events::{
    GroupChangedEvent, GroupInvitedEvent, GroupMessageEvent, ListeningEvent, MessageReceivedEvent,
    MessageStateEvent, PeerEvent,
};
use crate::groups::{
    CreateGroupRequest, GroupChangeView, GroupHistory, GroupList, GroupMessageView,
    GroupSendRequest, GroupStateView, GroupView, InviteRequest, MemberList, MemberView,
    RenameGroupRequest,
};
use crate::messages::{
    Direction, IncomingState, IncomingView, MessageList, MessageView, OutgoingState, OutgoingView,
    PriorityClass, RoutePreference, SendRequest, SendResponse,
};
use crate::peers::{DialRequest, PeerList, PeerView};
use crate::status::{Health, Stats, StatusBody};
use crate::AppState;

/// Name of the bearer security scheme in the document.
const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "peercomm node API",
        description = "The local HTTP API of a peercomm node. Every route except \
            `/v1/health` needs `Authorization: Bearer <token>` (the token is in \
            `<data-dir>/api.token`). Every error is `{\"error\": {\"code\", \"message\"}}`; \
            unknown routes answer 404 `not_found` and known routes asked with another \
            method 405 `method_not_allowed`."
    ),
    paths(
        crate::status::health,
        crate::status::status,
        crate::peers::list,
        crate::peers::dial,
        crate::messages::send,
        crate::messages::get,
        crate::messages::list,
        crate::groups::list,
        crate::groups::create,
        crate::groups::get,
        crate::groups::rename,
        crate::groups::members,
        crate::groups::invite,
        crate::groups::remove,
        crate::groups::promote,
        crate::groups::revoke,
        crate::groups::join,
        crate::groups::leave,
        crate::groups::send,
        crate::groups::history,
        crate::events::stream,
        crate::metrics::metrics,
        crate::dht::find,
        crate::dht::stats,
        crate::dht::mailbox_stats,
        crate::bandwidth::bandwidth,
        document,
    ),
    components(schemas(
        ErrorBody, ErrorDetail, Health, StatusBody, Stats, PeerList, PeerView, DialRequest,
        SendRequest, SendResponse, PriorityClass, RoutePreference, Direction, OutgoingState,
        IncomingState,
        OutgoingView, IncomingView, MessageView, MessageList, MessageReceivedEvent,
        MessageStateEvent, PeerEvent, ListeningEvent,
        GroupStateView, GroupView, GroupList, MemberView, MemberList, GroupChangeView,
        GroupMessageView, GroupHistory, CreateGroupRequest, RenameGroupRequest, InviteRequest,
        GroupSendRequest, GroupMessageEvent, GroupChangedEvent, GroupInvitedEvent,
        crate::dht::PeerRecordView, crate::dht::DhtStatsView, crate::dht::MailboxStatsView,
        crate::bandwidth::BandwidthView, crate::bandwidth::BytesView,
        crate::bandwidth::LinkView, crate::bandwidth::BandwidthConfigView,
    )),
    modifiers(&BearerScheme),
    security(("bearer" = [])),
    tags(
        (name = "node", description = "Health, status and metrics"),
        (name = "peers", description = "Connected peers and dialling"),
        (name = "messages", description = "Sending and reading messages"),
        (name = "groups", description = "Group conversations: membership, admins, messages"),
        (name = "events", description = "Server-sent events"),
        (name = "dht", description = "Peer discovery through the DHT"),
        (name = "mailbox", description = "Messages held for peers that are offline"),
    )
)]
struct ApiDoc;

/// Adds the bearer-token security scheme.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("token from <data-dir>/api.token")
                    .description(Some("The token in `<data-dir>/api.token`"))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document of the API, as `/v1/openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// This document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "get_openapi",
    tag = "node",
    responses(
        (status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    )
)]
pub(crate) async fn document(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi_json.to_string(),
    )
}
