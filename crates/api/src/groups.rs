//! Groups: create and list groups (`/v1/groups`), read one and change its
//! name (`/v1/groups/{id}`), manage members and admins
//! (`/v1/groups/{id}/members`, `/v1/groups/{id}/admins/{peer}`), accept an
//! invitation or leave (`/join`, `/leave`), and send and page through the
//! group's messages (`/v1/groups/{id}/messages`).
//!
//! Membership and metadata changes answer 202 with what happened: either
//! `committed` (this node owns the group; the new epoch) or `requested`
//! (the request went, durably, to the owner, which commits it).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::Json;
use peercomm_node::groups::{ParseGroupIdError, MAX_HISTORY_PAGE};
use peercomm_node::{
    GroupChange, GroupError, GroupId, GroupInfo, GroupMember, GroupMessage, GroupState, PeerId,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::messages::{parse_peer, DEFAULT_LIMIT};
use crate::AppState;

/// Where this node stands in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum GroupStateView {
    /// Invited (an invitation is held); `POST /v1/groups/{id}/join` accepts it.
    Invited,
    /// A member.
    Active,
    /// This node asked to leave; the owner may not have committed it yet.
    Left,
    /// The owner removed this node (or accepted its leave).
    Removed,
}

impl From<GroupState> for GroupStateView {
    fn from(s: GroupState) -> Self {
        match s {
            GroupState::Invited => Self::Invited,
            GroupState::Active => Self::Active,
            GroupState::Left => Self::Left,
            GroupState::Removed => Self::Removed,
        }
    }
}

/// A group as this node sees it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GroupView {
    /// The group id (32 lowercase hex characters).
    #[schema(example = "0f1e2d3c4b5a69788796a5b4c3d2e1f0")]
    pub(crate) id: String,
    /// Its name.
    pub(crate) name: String,
    /// Its description (may be empty).
    pub(crate) description: String,
    /// The member that sequences commits (peer id).
    pub(crate) owner: String,
    /// Members allowed to invite, remove and rename (peer ids).
    pub(crate) admins: Vec<String>,
    /// How many members the group has in this node's epoch.
    pub(crate) members: u64,
    /// The MLS epoch this node is in.
    pub(crate) epoch: u64,
    /// This node's standing.
    pub(crate) state: GroupStateView,
    /// Who invited this node; `null` for a group it created.
    pub(crate) invited_by: Option<String>,
    /// When this node created, joined or was invited to it (ms since the Unix epoch).
    pub(crate) joined_ms: u64,
}

// Implementation notes: the node's types are destructured without `..`, so
// a field added in the node fails to compile here until the API shows it.

impl From<GroupInfo> for GroupView {
    fn from(g: GroupInfo) -> Self {
        let GroupInfo {
            id,
            name,
            description,
            owner,
            admins,
            members,
            epoch,
            state,
            invited_by,
            joined_ms,
        } = g;
        Self {
            id: id.to_string(),
            name,
            description,
            owner: owner.to_base58(),
            admins: admins.iter().map(|p| p.to_base58()).collect(),
            members: u64::try_from(members).unwrap_or(u64::MAX),
            epoch,
            state: state.into(),
            invited_by: invited_by.map(|p| p.to_base58()),
            joined_ms,
        }
    }
}

/// `GET /v1/groups`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GroupList {
    /// Every group this node knows (invited, active, left, removed), most
    /// recently joined first.
    pub(crate) groups: Vec<GroupView>,
}

/// One member of a group.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MemberView {
    /// The member's peer id.
    pub(crate) peer: String,
    /// Whether it is an admin.
    pub(crate) admin: bool,
    /// Whether it owns the group.
    pub(crate) owner: bool,
}

impl From<GroupMember> for MemberView {
    fn from(m: GroupMember) -> Self {
        let GroupMember { peer, admin, owner } = m;
        Self {
            peer: peer.to_base58(),
            admin,
            owner,
        }
    }
}

/// `GET /v1/groups/{id}/members`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MemberList {
    /// The members in this node's current epoch.
    pub(crate) members: Vec<MemberView>,
}

/// What a membership or metadata change did.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub(crate) enum GroupChangeView {
    /// This node owns the group: the change is committed and the group is
    /// in a new epoch.
    Committed {
        /// The new epoch.
        epoch: u64,
    },
    /// The request is queued (durably) for the owner, which commits it.
    Requested {
        /// The owner's peer id.
        owner: String,
    },
}

impl From<GroupChange> for GroupChangeView {
    fn from(c: GroupChange) -> Self {
        match c {
            GroupChange::Committed { epoch } => Self::Committed { epoch },
            GroupChange::Requested { owner } => Self::Requested {
                owner: owner.to_base58(),
            },
        }
    }
}

/// One message of a group's history.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GroupMessageView {
    /// Local position in the history (the paging cursor).
    pub(crate) seq: i64,
    /// The message id (32 hex characters), the same on every member.
    pub(crate) id: String,
    /// The group id.
    pub(crate) group: String,
    /// Its author's peer id.
    pub(crate) sender: String,
    /// The text (invalid UTF-8 replaced by U+FFFD).
    pub(crate) body: String,
    /// The MLS epoch it was sent in.
    pub(crate) epoch: u64,
    /// When its author sent it (ms since the Unix epoch, the author's clock).
    pub(crate) created_ms: u64,
    /// When this node got it (ms since the Unix epoch).
    pub(crate) received_ms: u64,
}

impl From<GroupMessage> for GroupMessageView {
    fn from(m: GroupMessage) -> Self {
        let GroupMessage {
            seq,
            id,
            group,
            sender,
            body,
            epoch,
            created_ms,
            received_ms,
            post_bytes: _,
        } = m;
        Self {
            seq,
            id,
            group: group.to_string(),
            sender: sender.to_base58(),
            body: String::from_utf8_lossy(&body).into_owned(),
            epoch,
            created_ms,
            received_ms,
        }
    }
}

/// `GET /v1/groups/{id}/messages`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GroupHistory {
    /// The page, oldest first.
    pub(crate) messages: Vec<GroupMessageView>,
    /// Pass as `after` for the next page; `null` when the page is empty.
    pub(crate) next_after: Option<i64>,
}

/// `POST /v1/groups`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateGroupRequest {
    /// The group's name (not blank; at most 128 bytes).
    #[schema(example = "climbing")]
    pub(crate) name: String,
    /// What the group is for (at most 1024 bytes); empty when absent.
    #[serde(default)]
    #[schema(example = "Saturday trips")]
    pub(crate) description: Option<String>,
}

/// `PATCH /v1/groups/{id}`: a new name, a new description, or both.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RenameGroupRequest {
    /// The new name (not blank; at most 128 bytes); unchanged when absent.
    #[serde(default)]
    pub(crate) name: Option<String>,
    /// The new description (at most 1024 bytes); unchanged when absent.
    #[serde(default)]
    pub(crate) description: Option<String>,
}

/// `POST /v1/groups/{id}/members`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct InviteRequest {
    /// The peer id (base58) of the peer to invite.
    #[schema(example = "12D3KooWLtmqXKzwzG8RYQS7Nk8y4UvYdxDtczwhHsE2PNYU4Pad")]
    pub(crate) peer: String,
}

/// `POST /v1/groups/{id}/messages`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupSendRequest {
    /// The message text (UTF-8; not empty; at most 16 KiB once encoded).
    #[schema(example = "hello, everyone")]
    pub(crate) body: String,
}

/// `GET /v1/groups/{id}/messages` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistoryParams {
    /// Only messages after this position (`next_after` of the previous
    /// page); from the start when absent.
    pub(crate) after: Option<i64>,
    /// Page size, 1..=500; 100 when absent.
    #[param(minimum = 1, maximum = 500)]
    pub(crate) limit: Option<u32>,
}

impl From<GroupError> for ApiError {
    fn from(e: GroupError) -> Self {
        let (status, code) = match &e {
            GroupError::NotFound(_) => (StatusCode::NOT_FOUND, "group_not_found"),
            GroupError::NotAdmin(_) => (StatusCode::FORBIDDEN, "not_admin"),
            GroupError::NotOwner(_) => (StatusCode::FORBIDDEN, "not_owner"),
            GroupError::NotMember { .. } => (StatusCode::CONFLICT, "not_member"),
            GroupError::AlreadyMember { .. } => (StatusCode::CONFLICT, "already_member"),
            GroupError::NoSuchMember { .. } => (StatusCode::NOT_FOUND, "no_such_member"),
            GroupError::NoKeyPackage(_) => (StatusCode::UNPROCESSABLE_ENTITY, "no_key_package"),
            GroupError::OwnerCannotLeave(_) => (StatusCode::CONFLICT, "owner_cannot_leave"),
            GroupError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_field"),
            GroupError::Full(_) => (StatusCode::CONFLICT, "group_full"),
            GroupError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            GroupError::NodeStopped => {
                return Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "node_unavailable",
                    "the node is not running (shutting down or stopped); retry once it is up",
                )
            }
        };
        Self::new(status, code, e.to_string())
    }
}

/// The group id of a path.
fn parse_group(value: &str) -> Result<GroupId, ApiError> {
    value.parse().map_err(|e: ParseGroupIdError| {
        ApiError::bad_request(
            "invalid_group_id",
            format!("{e}; the ids are listed by `GET /v1/groups`"),
        )
    })
}

/// `(group, peer)` of a `…/{id}/…/{peer}` path.
fn parse_group_peer((group, peer): &(String, String)) -> Result<(GroupId, PeerId), ApiError> {
    Ok((parse_group(group)?, parse_peer("peer", peer)?))
}

/// Every group this node knows: invited to, member of, left or removed from.
#[utoipa::path(
    get,
    operation_id = "list_groups",
    path = "/v1/groups",
    tag = "groups",
    responses(
        (status = 200, description = "The groups", body = GroupList),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
        (status = 503, description = "The node is not running", body = ErrorBody),
    )
)]
pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<GroupList>, ApiError> {
    let groups = state.node.groups().await?;
    Ok(Json(GroupList {
        groups: groups.into_iter().map(GroupView::from).collect(),
    }))
}

/// Creates a group owned by this node, with this node its only member.
#[utoipa::path(
    post,
    operation_id = "create_group",
    path = "/v1/groups",
    tag = "groups",
    request_body(content = CreateGroupRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = GroupView,
         headers(("Location" = String, description = "`/v1/groups/{id}` of the new group"))),
        (status = 400, description = "Malformed JSON (`invalid_json`) or a wrong field (`invalid_field`: e.g. a blank or too long name)", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 413, description = "The request body is over the API's limit", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 500, description = "The store or MLS failed; no group was created", body = ErrorBody),
        (status = 503, description = "The node is not running", body = ErrorBody),
    )
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateGroupRequest>,
) -> Result<
    (
        StatusCode,
        [(header::HeaderName, String); 1],
        Json<GroupView>,
    ),
    ApiError,
> {
    let description = request.description.unwrap_or_default();
    let group = state.node.group_create(&request.name, &description).await?;
    let location = format!("/v1/groups/{}", group.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(group.into()),
    ))
}

/// One group.
#[utoipa::path(
    get,
    operation_id = "get_group",
    path = "/v1/groups/{id}",
    tag = "groups",
    params(("id" = String, Path, description = "Group id, 32 hex characters")),
    responses(
        (status = 200, description = "The group", body = GroupView),
        (status = 400, description = "The id is not 32 hex characters (`invalid_group_id`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such group on this node (`group_not_found`)", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
        (status = 503, description = "The node is not running", body = ErrorBody),
    )
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<GroupView>, ApiError> {
    let group = parse_group(&id)?;
    Ok(Json(state.node.group(group).await?.into()))
}

/// Changes the group's name, its description, or both (admins only).
#[utoipa::path(
    patch,
    operation_id = "rename_group",
    path = "/v1/groups/{id}",
    tag = "groups",
    params(("id" = String, Path, description = "Group id, 32 hex characters")),
    request_body(content = RenameGroupRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Committed, or requested from the owner", body = GroupChangeView),
        (status = 400, description = "A bad id (`invalid_group_id`), malformed JSON (`invalid_json`) or a wrong field (`invalid_field`: neither `name` nor `description`, a blank or too long name)", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "This node is not an admin (`not_admin`)", body = ErrorBody),
        (status = 404, description = "No such group on this node (`group_not_found`)", body = ErrorBody),
        (status = 409, description = "This node is not an active member (`not_member`)", body = ErrorBody),
        (status = 413, description = "The request body is over the API's limit", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 500, description = "The store or MLS failed; nothing changed", body = ErrorBody),
        (status = 503, description = "The node is not running", body = ErrorBody),
    )
)]
pub(crate) async fn rename(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<RenameGroupRequest>,
) -> Result<(StatusCode, Json<GroupChangeView>), ApiError> {
    let group = parse_group(&id)?;
    if request.name.is_none() && request.description.is_none() {
        return Err(ApiError::invalid_field(
            "send `name`, `description` or both: there is nothing to change",
        ));
    }
    let change = state
        .node
        .group_rename(group, request.name, request.description)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(change.into())))
}

/// The members of a group in this node's current epoch.
#[utoipa::path(
    get,
    operation_id = "list_group_members",
    path = "/v1/groups/{id}/members",
    tag = "groups",
    params(("id" = String, Path, description = "Group id, 32 hex characters")),
    responses(
        (status = 200, description = "The members", body = MemberList),
        (status = 400, description = "The id is not 32 hex characters (`invalid_group_id`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such group on this node (`group_not_found`)", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
        (status = 503, description = "The node is not running", body = ErrorBody),
    )
)]
pub(crate) async fn members(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<MemberList>, ApiError> {
    let group = parse_group(&id)?;
    let members = state.node.group_members(group).await?;
    Ok(Json(MemberList {
        members: members.into_iter().map(MemberView::from).collect(),
    }))
}

/// Invites a peer (admins only). Its key package comes from the DHT; the
/// owner commits the add and sends the peer an invitation, which it
/// accepts with `POST /v1/groups/{id}/join`.
#[utoipa::path(
    post,
    operation_id = "invite_group_member",
    path = "/v1/groups/{id}/members",
    tag = "groups",
    params(("id" = String, Path, description = "Group id, 32 hex characters")),
    request_body(content = InviteRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Committed, or requested from the owner", body = GroupChangeView),
        (status = 400, description = "A bad id (`invalid_group_id`), malformed JSON (`invalid_json`), a wrong field (`invalid_field`) or peer id (`invalid_peer_id`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "This node is not an admin (`not_admin`)", body = ErrorBody),
        (status = 404, description = "No such group on this node (`group_not_found`)", body = ErrorBody),
        (status = 409, description = "This node is not an active member (`not_member`), the peer is a member already (`already_member`) or the group is full (`group_full`)", body = ErrorBody),
        (status = 413, description = "The request body is over the API's limit", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 422, description = "No key package for the peer in the DHT (`no_key_package`); retry later", body = ErrorBody),
        (status = 500, description = "The store or MLS failed; nothing changed", body = ErrorBody),
        (status = 503, description = "The node is not running", body = ErrorBody),
    )
)]
pub(crate) async fn invite(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<InviteRequest>,
) -> Result<(StatusCode, Json<GroupChangeView>), ApiError> {
    let group = parse_group(&id)?;
    let peer = parse_peer("peer", &request.peer)?;
    let change = state.node.group_invite(group, peer).await?;
    Ok((StatusCode::ACCEPTED, Json(change.into())))
}

/// Removes a member (admins only).
#[utoipa::path(
    delete,
    operation_id = "remove_group_member",
    path = "/v1/groups/{id}/members/{peer}",
    tag = "groups",
    params(
        ("id" = String, Path, description = "Group id, 32 hex characters"),
        ("peer" = String, Path, description = "The member's peer id (base58)"),
    ),
    responses(
        (status = 202, description = "Committed, or requested from the owner", body = GroupChangeView),
        (status = 400, description = "A bad group id (`invalid_group_id`) or peer id (`invalid_peer_id`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "This node is not an admin (`not_admin`), or only the owner may do this (`not_owner`)", body = ErrorBody),
        (status = 404, description = "No such group (`group_not_found`) or member (`no_such_member`)", body = ErrorBody),
        (status = 409, description = "This node is not an active member (`not_member`)", body = ErrorBody),
        (status = 500, description = "The store or MLS failed; nothing changed", body = ErrorBody),
        (status = 503, description = "The node is not running", body = ErrorBody),
    )
)]
pub(crate) async fn remove(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<(String, String)>,
) -> Result<(StatusCode, Json<GroupChangeView>), ApiError> {
    let (group, peer) = parse_group_peer(&path)?;
    let change = state.node.group_remove(group, peer).await?;
    Ok((StatusCode::ACCEPTED, Json(change.into())))
}

/// Makes a member an admin. Only the owner decides; an admin's request
/// goes to the owner.
#[utoipa::path(
    put,
    operation_id = "promote_group_admin",
    path = "/v1/groups/{id}/admins/{peer}",
    tag = "groups",
    params(
        ("id" = String, Path, description = "Group id, 32 hex characters"),
        ("peer" = String, Path, description = "The member's peer id (base58)"),
    ),
    responses(
        (status = 202, description = "Committed, or requested from the owner", body = GroupChangeView),
        (status = 400, description = "A bad group id (`invalid_group_id`) or peer id (`invalid_peer_id`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "This node is neither the owner nor an admin (`not_owner`, `not_admin`)", body = ErrorBody),
        (status = 404, description = "No such group (`group_not_found`) or member (`no_such_member`)", body = ErrorBody),
        (status = 409, description = "This node is not an active member (`not_member`)", body = ErrorBody),
        (status = 500, description = "The store or MLS failed; nothing changed", body = ErrorBody),
        (status = 503, description = "The node is not running", body = ErrorBody),
    )
)]
pub(crate) async fn promote(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<(String, String)>,
) -> Result<(StatusCode, Json<GroupChangeView>), ApiError> {
    set_admin(state, &path, true).await
}

/// Takes a member's admin right away. Only the owner decides; an admin's
/// request goes to the owner.
#[utoipa::path(
    delete,
    operation_id = "revoke_group_admin",
    path = "/v1/groups/{id}/admins/{peer}",
    tag = "groups",
    params(
        ("id" = String, Path, description = "Group id, 32 hex characters"),
        ("peer" = String, Path, description = "The member's peer id (base58)"),
    ),
    responses(
        (status = 202, description = "Committed, or requested from the owner", body = GroupChangeView),
        (status = 400, description = "A bad group id (`invalid_group_id`) or peer id (`invalid_peer_id`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "This node is neither the owner nor an admin (`not_owner`, `not_admin`)", body = ErrorBody),
        (status = 404, description = "No such group (`group_not_found`) or member (`no_such_member`)", body = ErrorBody),
        (status = 409, description = "This node is not an active member (`not_member`)", body = ErrorBody),
        (status = 500, description = "The store or MLS failed; nothing changed", body = ErrorBody),
        (status = 503, description = "The node is not running", body = ErrorBody),
    )
)]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<(String, String)>,
) -> Result<(StatusCode, Json<GroupChangeView>), ApiError> {
    set_admin(state, &path, false).await
}

async fn set_admin(
    state: AppState,
    path: &(String, String),
    admin: bool,
) -> Result<(StatusCode, Json<GroupChangeView>), ApiError> {
    let (group, peer) = parse_group_peer(path)?;
    let change = state.node.group_set_admin(group, peer, admin).await?;
    Ok((StatusCode::ACCEPTED, Json(change.into())))
}

/// Accepts an invitation: joins the group from it and catches up.
#[utoipa::path(
    post,
    operation_id = "join_group",
    path = "/v1/groups/{id}/join",
    tag = "groups",
    params(("id" = String, Path, description = "Group id, 32 hex characters")),
    responses(
        (status = 200, description = "Joined: the group", body = GroupView),
        (status = 400, description = "The id is not 32 hex characters (`invalid_group_id`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such group or invitation on this node (`group_not_found`)", body = ErrorBody),
        (status = 409, description = "No invitation this node can accept (`not_member`, `already_member`), or the group is full (`group_full`)", body = ErrorBody),
        (status = 500, description = "The store or MLS failed; nothing changed", body = ErrorBody),
        (status = 503, description = "The node is not running", body = ErrorBody),
    )
)]
pub(crate) async fn join(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<GroupView>, ApiError> {
    let group = parse_group(&id)?;
    Ok(Json(state.node.group_join(group).await?.into()))
}

/// Leaves a group: a request to the owner, which commits it.
#[utoipa::path(
    post,
    operation_id = "leave_group",
    path = "/v1/groups/{id}/leave",
    tag = "groups",
    params(("id" = String, Path, description = "Group id, 32 hex characters")),
    responses(
        (status = 202, description = "Requested from the owner (or committed)", body = GroupChangeView),
        (status = 400, description = "The id is not 32 hex characters (`invalid_group_id`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such group on this node (`group_not_found`)", body = ErrorBody),
        (status = 409, description = "This node is not an active member (`not_member`), or owns the group (`owner_cannot_leave`)", body = ErrorBody),
        (status = 500, description = "The store or MLS failed; nothing changed", body = ErrorBody),
        (status = 503, description = "The node is not running", body = ErrorBody),
    )
)]
pub(crate) async fn leave(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<GroupChangeView>), ApiError> {
    let group = parse_group(&id)?;
    let change = state.node.group_leave(group).await?;
    Ok((StatusCode::ACCEPTED, Json(change.into())))
}

/// Sends a text message to every member. 202 means it is committed to this
/// node's history; it goes to the members (and the group's mailboxes) from
/// there.
#[utoipa::path(
    post,
    operation_id = "send_group_message",
    path = "/v1/groups/{id}/messages",
    tag = "groups",
    params(("id" = String, Path, description = "Group id, 32 hex characters")),
    request_body(content = GroupSendRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted and durable", body = GroupMessageView),
        (status = 400, description = "A bad id (`invalid_group_id`), malformed JSON (`invalid_json`) or a wrong field (`invalid_field`: e.g. an empty body or one over 16 KiB)", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such group on this node (`group_not_found`)", body = ErrorBody),
        (status = 409, description = "This node is not an active member (`not_member`)", body = ErrorBody),
        (status = 413, description = "The request body is over the API's limit", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 500, description = "The store or MLS failed; the message was not accepted", body = ErrorBody),
        (status = 503, description = "The node is not running", body = ErrorBody),
    )
)]
pub(crate) async fn send(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<GroupSendRequest>,
) -> Result<(StatusCode, Json<GroupMessageView>), ApiError> {
    let group = parse_group(&id)?;
    let message = state
        .node
        .group_send(group, request.body.into_bytes())
        .await?;
    Ok((StatusCode::ACCEPTED, Json(message.into())))
}

/// A page of a group's history (sent and received), oldest first.
#[utoipa::path(
    get,
    operation_id = "group_history",
    path = "/v1/groups/{id}/messages",
    tag = "groups",
    params(("id" = String, Path, description = "Group id, 32 hex characters"), HistoryParams),
    responses(
        (status = 200, description = "A page of messages", body = GroupHistory),
        (status = 400, description = "A bad id (`invalid_group_id`) or parameter (`invalid_query`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such group on this node (`group_not_found`)", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
        (status = 503, description = "The node is not running", body = ErrorBody),
    )
)]
pub(crate) async fn history(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<HistoryParams>,
) -> Result<Json<GroupHistory>, ApiError> {
    let group = parse_group(&id)?;
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_HISTORY_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!(
                "`limit` must be between 1 and {MAX_HISTORY_PAGE} (got {limit}); \
                 omit it for {DEFAULT_LIMIT}"
            ),
        ));
    }
    let page = state
        .node
        .group_history(group, params.after.unwrap_or(0), Some(limit))
        .await?;
    let next_after = page.last().map(|m| m.seq);
    Ok(Json(GroupHistory {
        messages: page.into_iter().map(GroupMessageView::from).collect(),
        next_after,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_errors_map_to_documented_statuses() {
        let g: GroupId = "0f1e2d3c4b5a69788796a5b4c3d2e1f0".parse().unwrap();
        let p = PeerId::random();
        let cases = [
            (GroupError::NotFound(g), 404, "group_not_found"),
            (GroupError::NotAdmin(g), 403, "not_admin"),
            (GroupError::NotOwner(g), 403, "not_owner"),
            (
                GroupError::NotMember {
                    group: g,
                    state: "left",
                },
                409,
                "not_member",
            ),
            (
                GroupError::AlreadyMember { group: g, peer: p },
                409,
                "already_member",
            ),
            (
                GroupError::NoSuchMember { group: g, peer: p },
                404,
                "no_such_member",
            ),
            (GroupError::NoKeyPackage(p), 422, "no_key_package"),
            (GroupError::OwnerCannotLeave(g), 409, "owner_cannot_leave"),
            (GroupError::Invalid("x".into()), 400, "invalid_field"),
            (GroupError::Full(g), 409, "group_full"),
            (GroupError::Internal("x".into()), 500, "internal"),
            (GroupError::NodeStopped, 503, "node_unavailable"),
        ];
        for (error, status, code) in cases {
            let e = ApiError::from(error);
            assert_eq!((e.status().as_u16(), e.code()), (status, code), "{e:?}");
        }
    }

    #[test]
    fn a_change_serializes_like_the_node_does() {
        let owner = PeerId::random();
        for change in [
            GroupChange::Committed { epoch: 7 },
            GroupChange::Requested { owner },
        ] {
            let node = serde_json::to_value(&change).unwrap();
            let api = serde_json::to_value(GroupChangeView::from(change)).unwrap();
            assert_eq!(node, api);
        }
    }
}
