//! Server-sent events (`GET /v1/events`) and the event log behind them.
//!
//! A task subscribes to the node's [`NodeEvent`]s, numbers each with an
//! increasing id, keeps the last [`EVENT_LOG_CAPACITY`] in a ring buffer and
//! re-broadcasts them. A client that reconnects with `Last-Event-ID` gets
//! the buffered events after that id, then the live ones.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Extension;
use futures::{Stream, StreamExt};
use peercomm_node::{MessageId, NodeEvent, NodeHandle};
use serde::Serialize;
use tokio::sync::{broadcast, watch};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::groups::GroupStateView;
use crate::messages::OutgoingState;
use crate::AppState;

/// Events kept for replay to reconnecting clients.
pub(crate) const EVENT_LOG_CAPACITY: usize = 4096;

/// Events a live subscriber may fall behind by before it is caught up from
/// the ring buffer.
const LIVE_CHANNEL_CAPACITY: usize = 1024;

/// Interval of keep-alive comments on an idle stream.
pub(crate) const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// Set by `serve` when the server shuts down; ends every event stream.
#[derive(Clone)]
pub(crate) struct Closing(pub(crate) watch::Receiver<bool>);

/// One numbered event, ready to send.
#[derive(Debug)]
pub(crate) struct LoggedEvent {
    id: u64,
    name: &'static str,
    data: String,
}

/// Data of `message_received`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MessageReceivedEvent {
    /// The message id.
    pub(crate) id: String,
    /// The sender's peer id.
    pub(crate) from: String,
}

/// Data of `message_state`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MessageStateEvent {
    /// The message id.
    pub(crate) id: String,
    /// Its new delivery state.
    pub(crate) state: OutgoingState,
}

/// Data of `peer_connected`, `peer_disconnected` and `peer_record`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PeerEvent {
    /// The peer id.
    pub(crate) peer: String,
}

/// Data of `listening`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ListeningEvent {
    /// The new listen address.
    pub(crate) address: String,
}

/// Data of `group_message`: a message from a member was decrypted and
/// added to a group's history.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GroupMessageEvent {
    /// The group id.
    pub(crate) group: String,
    /// The message's position in the group's history
    /// (`GET /v1/groups/{group}/messages?after=<seq - 1>&limit=1` reads it).
    pub(crate) seq: i64,
    /// Its author's peer id.
    pub(crate) from: String,
}

/// Data of `group_changed`: a group's epoch, members, name or admins, or
/// this node's standing in it, changed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GroupChangedEvent {
    /// The group id.
    pub(crate) group: String,
    /// The epoch this node is now in.
    pub(crate) epoch: u64,
    /// This node's standing.
    pub(crate) state: GroupStateView,
}

/// Data of `group_invited`: this node was invited to a group
/// (`POST /v1/groups/{group}/join` accepts).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GroupInvitedEvent {
    /// The group id.
    pub(crate) group: String,
    /// Who invited (peer id).
    pub(crate) from: String,
}

/// The SSE name and JSON data of a node event.
fn describe(event: &NodeEvent) -> (&'static str, Result<String, serde_json::Error>) {
    let id = |id: &MessageId| id.to_string();
    match event {
        NodeEvent::MessageReceived { id: m, from } => (
            "message_received",
            serde_json::to_string(&MessageReceivedEvent {
                id: id(m),
                from: from.to_base58(),
            }),
        ),
        NodeEvent::MessageState { id: m, state } => (
            "message_state",
            serde_json::to_string(&MessageStateEvent {
                id: id(m),
                state: (*state).into(),
            }),
        ),
        NodeEvent::PeerConnected { peer } => ("peer_connected", peer_data(peer)),
        NodeEvent::PeerDisconnected { peer } => ("peer_disconnected", peer_data(peer)),
        NodeEvent::PeerRecord { peer } => ("peer_record", peer_data(peer)),
        NodeEvent::Listening { address } => (
            "listening",
            serde_json::to_string(&ListeningEvent {
                address: address.to_string(),
            }),
        ),
        NodeEvent::GroupMessage { group, seq, from } => (
            "group_message",
            serde_json::to_string(&GroupMessageEvent {
                group: group.to_string(),
                seq: *seq,
                from: from.to_base58(),
            }),
        ),
        NodeEvent::GroupChanged {
            group,
            epoch,
            state,
        } => (
            "group_changed",
            serde_json::to_string(&GroupChangedEvent {
                group: group.to_string(),
                epoch: *epoch,
                state: (*state).into(),
            }),
        ),
        NodeEvent::GroupInvited { group, from } => (
            "group_invited",
            serde_json::to_string(&GroupInvitedEvent {
                group: group.to_string(),
                from: from.to_base58(),
            }),
        ),
    }
}

fn peer_data(peer: &peercomm_node::PeerId) -> Result<String, serde_json::Error> {
    serde_json::to_string(&PeerEvent {
        peer: peer.to_base58(),
    })
}

/// The numbered, bounded event log.
pub(crate) struct EventLog {
    state: Mutex<LogState>,
    live: broadcast::Sender<Arc<LoggedEvent>>,
}

struct LogState {
    /// Id of the next event.
    next_id: u64,
    /// The last events, ids contiguous and increasing.
    ring: VecDeque<Arc<LoggedEvent>>,
}

impl EventLog {
    /// A log fed by `node`'s events (when a Tokio runtime is running).
    pub(crate) fn start(node: &NodeHandle) -> Arc<Self> {
        let log = Self::new(LIVE_CHANNEL_CAPACITY);
        let rx = node.subscribe();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(feed(rx, Arc::downgrade(&log)));
            }
            Err(_) => tracing::error!(
                "peercomm_api::router called outside a Tokio runtime: /v1/events stays silent"
            ),
        }
        log
    }

    /// An empty log whose live subscribers may lag by `live_capacity` events.
    fn new(live_capacity: usize) -> Arc<Self> {
        // Implementation notes: ids start at the current time in
        // microseconds, so they keep increasing across restarts of the
        // daemon and a `Last-Event-ID` from before a restart replays what
        // the new process buffered instead of skipping it. (They stay below
        // 2^53, so JavaScript reads them exactly.)
        let first_id = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(1))
            .unwrap_or(1)
            .max(1);
        Arc::new(Self {
            state: Mutex::new(LogState {
                next_id: first_id,
                ring: VecDeque::with_capacity(EVENT_LOG_CAPACITY),
            }),
            live: broadcast::channel(live_capacity).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers, buffers and broadcasts one event.
    fn push(&self, name: &'static str, data: String) {
        let mut state = self.lock();
        let event = Arc::new(LoggedEvent {
            id: state.next_id,
            name,
            data,
        });
        state.next_id += 1;
        if state.ring.len() == EVENT_LOG_CAPACITY {
            state.ring.pop_front();
        }
        state.ring.push_back(event.clone());
        // Sent under the lock, so a subscriber taken under the lock sees
        // every event after its snapshot exactly once.
        let _ = self.live.send(event);
    }

    /// Buffered events with an id above `after`.
    fn since(state: &LogState, after: u64) -> Vec<Arc<LoggedEvent>> {
        let start = state.ring.partition_point(|e| e.id <= after);
        state.ring.range(start..).cloned().collect()
    }

    /// A live subscription, the buffered events after `after` (none when
    /// `None`) and the id of the last event logged so far.
    fn subscribe(
        &self,
        after: Option<u64>,
    ) -> (
        broadcast::Receiver<Arc<LoggedEvent>>,
        Vec<Arc<LoggedEvent>>,
        u64,
    ) {
        let state = self.lock();
        let rx = self.live.subscribe();
        let replay = after.map(|a| Self::since(&state, a)).unwrap_or_default();
        (rx, replay, state.next_id - 1)
    }
}

/// Moves node events into the log until the node stops or the log is dropped.
async fn feed(mut rx: broadcast::Receiver<NodeEvent>, log: Weak<EventLog>) {
    loop {
        match rx.recv().await {
            Ok(event) => {
                let Some(log) = log.upgrade() else { return };
                let (name, data) = describe(&event);
                match data {
                    Ok(data) => log.push(name, data),
                    Err(e) => tracing::warn!("cannot encode event {name}: {e}"),
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!("event log fell behind the node by {n} events; they are lost");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// One client's position in the log.
struct Cursor {
    rx: broadcast::Receiver<Arc<LoggedEvent>>,
    pending: VecDeque<Arc<LoggedEvent>>,
    last_sent: u64,
    log: Arc<EventLog>,
}

impl Cursor {
    /// A position after `after` (buffered events after it are replayed),
    /// or after the last event logged when `None`.
    fn new(log: &Arc<EventLog>, after: Option<u64>) -> Self {
        let (rx, replay, last_logged) = log.subscribe(after);
        Self {
            rx,
            pending: replay.into(),
            // An id above the last one logged is not ours: send everything new.
            last_sent: after.map_or(last_logged, |a| a.min(last_logged)),
            log: log.clone(),
        }
    }

    async fn next(&mut self) -> Option<Arc<LoggedEvent>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                if event.id > self.last_sent {
                    self.last_sent = event.id;
                    return Some(event);
                }
                continue;
            }
            match self.rx.recv().await {
                Ok(event) => self.pending.push_back(event),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Catch up from the ring buffer; what it no longer
                    // holds is lost to this client.
                    let state = self.log.lock();
                    self.pending.extend(EventLog::since(&state, self.last_sent));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// The `Last-Event-ID` header, if present.
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::invalid_field(
                "the `Last-Event-ID` header must be the numeric `id:` of an event this API \
                 sent; omit it to receive only new events",
            )
        })
}

/// Node events as server-sent events.
///
/// Event names and data: `message_received` (`{"id","from"}`),
/// `message_state` (`{"id","state"}`), `peer_connected`, `peer_disconnected`
/// and `peer_record` (`{"peer"}`), `listening` (`{"address"}`),
/// `group_message` (`{"group","seq","from"}`), `group_changed`
/// (`{"group","epoch","state"}`) and `group_invited` (`{"group","from"}`). Each event
/// carries a numeric `id:`; reconnect with `Last-Event-ID` to replay the
/// buffered events after it (the last 4096 are kept). Keep-alive comments
/// come every 15 s.
#[utoipa::path(
    get,
    path = "/v1/events",
    operation_id = "stream_events",
    tag = "events",
    params(("Last-Event-ID" = Option<u64>, Header,
            description = "Replay buffered events with a larger id before the live ones")),
    responses(
        (status = 200, description = "An endless `text/event-stream`; event data is one of \
            MessageReceivedEvent, MessageStateEvent, PeerEvent, ListeningEvent, \
            GroupMessageEvent, GroupChangedEvent, GroupInvitedEvent",
         content_type = "text/event-stream", body = String),
        (status = 400, description = "`Last-Event-ID` is not a number (`invalid_field`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    )
)]
pub(crate) async fn stream(
    State(state): State<AppState>,
    closing: Option<Extension<Closing>>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let after = last_event_id(&headers)?;
    let cursor = Cursor::new(&state.events, after);
    let events = futures::stream::unfold(cursor, |mut cursor| async move {
        let event = cursor.next().await?;
        let sse = Event::default()
            .id(event.id.to_string())
            .event(event.name)
            .data(event.data.as_str());
        Some((Ok(sse), cursor))
    });
    let closed = async move {
        match closing {
            Some(Extension(Closing(mut rx))) => {
                let _ = rx.wait_for(|closing| *closing).await;
            }
            None => std::future::pending().await,
        }
    };
    Ok(Sse::new(events.take_until(closed))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE_INTERVAL)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_n(log: &EventLog, n: usize) {
        for i in 0..n {
            log.push("listening", format!("{{\"address\":\"{i}\"}}"));
        }
    }

    #[test]
    fn group_events_have_their_names_and_data() {
        let group: peercomm_node::GroupId = "0f1e2d3c4b5a69788796a5b4c3d2e1f0".parse().unwrap();
        let from = peercomm_node::PeerId::random();
        let cases = [
            (
                NodeEvent::GroupMessage {
                    group,
                    seq: 9,
                    from,
                },
                "group_message",
                serde_json::json!({"group": group.to_string(), "seq": 9, "from": from.to_base58()}),
            ),
            (
                NodeEvent::GroupChanged {
                    group,
                    epoch: 3,
                    state: peercomm_node::GroupState::Removed,
                },
                "group_changed",
                serde_json::json!({"group": group.to_string(), "epoch": 3, "state": "removed"}),
            ),
            (
                NodeEvent::GroupInvited { group, from },
                "group_invited",
                serde_json::json!({"group": group.to_string(), "from": from.to_base58()}),
            ),
        ];
        for (event, name, data) in cases {
            let (got_name, got_data) = describe(&event);
            assert_eq!(got_name, name);
            let got: serde_json::Value = serde_json::from_str(&got_data.unwrap()).unwrap();
            assert_eq!(got, data);
        }
    }

    #[tokio::test]
    async fn replays_after_last_event_id_then_streams_live() {
        let log = EventLog::new(16);
        push_n(&log, 5);
        let first = log.lock().ring[0].id;
        let mut cursor = Cursor::new(&log, Some(first + 2));
        push_n(&log, 1);
        let ids: Vec<u64> = [
            cursor.next().await.unwrap().id,
            cursor.next().await.unwrap().id,
            cursor.next().await.unwrap().id,
        ]
        .into();
        assert_eq!(ids, vec![first + 3, first + 4, first + 5]);

        // Without Last-Event-ID: only new events.
        let mut live = Cursor::new(&log, None);
        push_n(&log, 1);
        assert_eq!(live.next().await.unwrap().id, first + 6);
        // A foreign id above ours: everything new.
        let mut foreign = Cursor::new(&log, Some(u64::MAX));
        push_n(&log, 1);
        assert_eq!(foreign.next().await.unwrap().id, first + 7);
    }

    #[tokio::test]
    async fn ring_is_bounded_and_a_lagging_client_catches_up() {
        let log = EventLog::new(4);
        let mut cursor = Cursor::new(&log, None);
        let start = log.lock().next_id;
        // Far more than the live channel holds, less than the ring.
        push_n(&log, 100);
        let mut got = Vec::new();
        for _ in 0..100 {
            got.push(cursor.next().await.unwrap().id);
        }
        assert_eq!(got, (start..start + 100).collect::<Vec<_>>());

        // Beyond the ring: the oldest are gone, the rest arrive in order.
        let mut behind = Cursor::new(&log, None);
        push_n(&log, EVENT_LOG_CAPACITY + 10);
        assert_eq!(log.lock().ring.len(), EVENT_LOG_CAPACITY);
        let first = behind.next().await.unwrap().id;
        assert_eq!(first, start + 100 + 10);
        let second = behind.next().await.unwrap().id;
        assert_eq!(second, first + 1);
    }
}
