//! API errors: one JSON shape, `{"error": {"code", "message"}}`, for every
//! failure, including axum's own extractor rejections and unknown routes.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use peercomm_node::{DialError, QueryError, SendError};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// What went wrong.
    pub(crate) error: ErrorDetail,
}

/// What went wrong, for programs (`code`) and people (`message`).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// Stable machine-readable code: `invalid_json`, `invalid_field`,
    /// `invalid_peer_id`, `invalid_route`, `invalid_id`, `invalid_group_id`,
    /// `invalid_query`, `unauthorized`, `not_found`, `method_not_allowed`,
    /// `payload_too_large`, `unsupported_media_type`, `unprocessable`,
    /// `internal`, `node_unavailable`; for groups also `group_not_found`,
    /// `not_admin`, `not_owner`, `not_member`, `already_member`,
    /// `no_such_member`, `no_key_package`, `owner_cannot_leave`, `group_full`.
    #[schema(example = "invalid_field")]
    pub(crate) code: String,
    /// What was wrong and how to fix it.
    pub(crate) message: String,
}

/// An error answer: status, code and message.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// An error with this status, code and message.
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// The HTTP status.
    #[cfg(test)]
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// The error code.
    #[cfg(test)]
    pub(crate) fn code(&self) -> &'static str {
        self.code
    }

    /// 400 with a code naming what kind of input was wrong.
    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 400 `invalid_field`.
    pub(crate) fn invalid_field(message: impl Into<String>) -> Self {
        Self::bad_request("invalid_field", message)
    }

    /// 400 `invalid_peer_id` for field `field` holding `value`.
    pub(crate) fn invalid_peer_id(
        field: &str,
        value: &str,
        reason: impl std::fmt::Display,
    ) -> Self {
        Self::bad_request(
            "invalid_peer_id",
            format!(
                "`{field}` is not a valid peer id ({reason}): got {value:?}; \
                 send a base58 libp2p peer id such as the `peer_id` of `GET /v1/status`"
            ),
        )
    }

    /// 404 `not_found`.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 422 `unprocessable`.
    pub(crate) fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", message)
    }

    /// 401 `unauthorized`.
    pub(crate) fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token: send `Authorization: Bearer <token>` with the \
             token from <data-dir>/api.token",
        )
    }

    fn node_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "node_unavailable",
            "the node is not running (shutting down or stopped); retry once it is up",
        )
    }

    fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, "API error: {}", self.message);
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::NodeStopped => Self::node_unavailable(),
            QueryError::Store(_) | QueryError::Internal(_) => Self::internal(e.to_string()),
        }
    }
}

impl From<SendError> for ApiError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::BodyTooLarge { .. }
            | SendError::TooLargeForOnion { .. }
            | SendError::TtlTooLong { .. }
            | SendError::TtlZero
            | SendError::ToSelf(_) => Self::unprocessable(e.to_string()),
            SendError::NodeStopped => Self::node_unavailable(),
            SendError::Store(_) | SendError::Internal(_) => Self::internal(e.to_string()),
        }
    }
}

impl From<DialError> for ApiError {
    fn from(e: DialError) -> Self {
        match e {
            DialError::Refused(_) => Self::unprocessable(e.to_string()),
            DialError::NodeStopped => Self::node_unavailable(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => Self::invalid_field(format!(
                "{}; see the request schema in /v1/openapi.json",
                e.body_text()
            )),
            JsonRejection::JsonSyntaxError(e) => Self::bad_request(
                "invalid_json",
                format!("{}; send a JSON object", e.body_text()),
            ),
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the request body must be JSON: send `Content-Type: application/json`",
            ),
            JsonRejection::BytesRejection(e) => body_rejection(e.status(), e.body_text()),
            other => body_rejection(other.status(), other.body_text()),
        }
    }
}

/// A failure to read the request body: too large, or cut off.
fn body_rejection(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            status,
            "payload_too_large",
            "the request body is larger than the API accepts (api max_body_bytes); send less",
        )
    } else if status.is_server_error() {
        ApiError::internal(text)
    } else {
        ApiError::bad_request(
            "invalid_json",
            format!("cannot read the request body: {text}"),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request(
            "invalid_query",
            format!(
                "{}; see the query parameters in /v1/openapi.json",
                rejection.body_text()
            ),
        )
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        if rejection.status().is_server_error() {
            Self::internal(rejection.body_text())
        } else {
            Self::bad_request("invalid_id", rejection.body_text())
        }
    }
}

/// Answers requests to unknown routes.
pub(crate) async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route for {method} {}; the routes are listed in /v1/openapi.json",
        uri.path()
    ))
}

/// Answers a known route asked with a method it does not serve.
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} does not answer {method}; the methods are listed in /v1/openapi.json",
            uri.path()
        ),
    )
}
