//! peercomm-api: the node's local HTTP API.
//!
//! An [axum] router over a [`NodeHandle`]: JSON endpoints to send and read
//! messages, list and dial peers, run groups (create, invite, join, send,
//! history) and read the node's status, server-sent
//! events for what happens in the node, Prometheus metrics, and the OpenAPI
//! document describing all of it (`/v1/openapi.json`, also [`openapi`]).
//!
//! Every route except `/v1/health` needs `Authorization: Bearer <token>`.
//! Every error answers `{"error": {"code": "…", "message": "…"}}`.
//!
//! ```no_run
//! # async fn run(node: peercomm_node::NodeHandle) -> std::io::Result<()> {
//! let router = peercomm_api::router(node, peercomm_api::ApiConfig::new("secret"));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7777").await?;
//! peercomm_api::serve(listener, router, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

mod auth;
mod bandwidth;
mod dht;
mod doc;
mod error;
mod events;
mod extract;
mod groups;
mod messages;
mod metrics;
mod peers;
mod status;

use std::fmt;
use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use axum::{Extension, Router};
use peercomm_node::NodeHandle;

pub use doc::openapi;

/// Default for [`ApiConfig::max_body_bytes`]: 256 KiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;

/// How long [`serve`] waits for open requests after the shutdown signal
/// before it returns anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How the API is configured.
#[derive(Clone)]
pub struct ApiConfig {
    /// The bearer token every request (except `/v1/health`) must carry. An
    /// empty token refuses every authenticated request.
    pub token: String,
    /// The largest request body accepted; larger ones answer 413.
    pub max_body_bytes: usize,
}

impl ApiConfig {
    /// A configuration with this token and the default body limit.
    pub fn new(token: impl Into<String>) -> Self {
        Self {
            token: token.into(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiConfig")
            .field("token", &"<redacted>")
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) node: NodeHandle,
    pub(crate) events: Arc<events::EventLog>,
    pub(crate) openapi_json: Arc<str>,
}

/// Builds the API router over `node`.
///
/// Call it inside a Tokio runtime: it spawns the task that feeds the event
/// log behind `/v1/events` (without a runtime, `/v1/events` stays silent).
pub fn router(node: NodeHandle, config: ApiConfig) -> Router {
    let events = events::EventLog::start(&node);
    let openapi_json: Arc<str> = match openapi().to_json() {
        Ok(json) => json.into(),
        Err(e) => {
            tracing::error!("cannot serialize the OpenAPI document: {e}");
            "{}".into()
        }
    };
    let state = AppState {
        node,
        events,
        openapi_json,
    };
    let token = auth::Token::new(config.token);
    let protected = Router::new()
        .route("/v1/status", get(status::status))
        .route("/v1/peers", get(peers::list).post(peers::dial))
        .route("/v1/messages", get(messages::list).post(messages::send))
        .route("/v1/messages/{id}", get(messages::get))
        .route("/v1/groups", get(groups::list).post(groups::create))
        .route("/v1/groups/{id}", get(groups::get).patch(groups::rename))
        .route(
            "/v1/groups/{id}/members",
            get(groups::members).post(groups::invite),
        )
        .route(
            "/v1/groups/{id}/members/{peer}",
            axum::routing::delete(groups::remove),
        )
        .route(
            "/v1/groups/{id}/admins/{peer}",
            put(groups::promote).delete(groups::revoke),
        )
        .route("/v1/groups/{id}/join", post(groups::join))
        .route("/v1/groups/{id}/leave", post(groups::leave))
        .route(
            "/v1/groups/{id}/messages",
            get(groups::history).post(groups::send),
        )
        .route("/v1/events", get(events::stream))
        .route("/v1/dht/peers/{id}", get(dht::find))
        .route("/v1/dht/stats", get(dht::stats))
        .route("/v1/mailbox/stats", get(dht::mailbox_stats))
        .route("/v1/bandwidth", get(bandwidth::bandwidth))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/openapi.json", get(doc::document))
        .route_layer(axum::middleware::from_fn_with_state(
            token,
            auth::require_token,
        ));
    Router::new()
        .route("/v1/health", get(status::health))
        .merge(protected)
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` completes, then stops
/// taking connections, ends event streams and lets open requests finish
/// for at most [`SHUTDOWN_GRACE`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Implementation notes: event streams never end on their own, so the
    // handler watches `Closing` (added here as an extension) and ends its
    // stream when the signal fires; the grace timer is a backstop for any
    // other request that does not finish.
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    let mut fired_rx = closing_rx.clone();
    let router = router.layer(Extension(events::Closing(closing_rx)));
    let signal = async move {
        shutdown.await;
        let _ = closing_tx.send(true);
    };
    let server = axum::serve(listener, router)
        .with_graceful_shutdown(signal)
        .into_future();
    tokio::select! {
        result = server => result,
        () = async move {
            if fired_rx.wait_for(|closing| *closing).await.is_err() {
                // The signal future was dropped: the server is gone.
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!("API requests still open {SHUTDOWN_GRACE:?} after shutdown; closing them");
            Ok(())
        }
    }
}
