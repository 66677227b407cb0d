//! Node status: `GET /v1/health` (no token) and `GET /v1/status`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use peercomm_node::StatsSnapshot;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::AppState;

/// `GET /v1/health`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Health {
    /// Always `ok` while the API answers.
    #[schema(example = "ok")]
    pub(crate) status: String,
}

/// `GET /v1/status`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StatusBody {
    /// This node's peer id (base58).
    pub(crate) peer_id: String,
    /// Where the node listens (multiaddrs, without `/p2p/`).
    pub(crate) listen_addrs: Vec<String>,
    /// Peers with an open connection.
    pub(crate) connected_peers: u64,
    /// Seconds since the node started.
    pub(crate) uptime_secs: u64,
    /// Outgoing messages per delivery state (every state is present).
    pub(crate) outgoing: BTreeMap<String, u64>,
    /// Messages in the inbox.
    pub(crate) incoming: u64,
    /// Peers whose signed record the node holds.
    pub(crate) known_peers: u64,
    /// Live counters.
    pub(crate) stats: Stats,
}

/// The node's live counters.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Stats {
    /// Envelopes accepted and stored (first copy of each id).
    pub(crate) received: u64,
    /// Envelopes already stored (replays, retries).
    pub(crate) duplicates: u64,
    /// Frames that were not a decodable envelope.
    pub(crate) rejected_malformed: u64,
    /// Envelopes or frames over a size limit.
    pub(crate) rejected_too_large: u64,
    /// Envelopes whose signature did not verify.
    pub(crate) rejected_bad_signature: u64,
    /// Envelopes for another node.
    pub(crate) rejected_wrong_recipient: u64,
    /// Envelopes already expired or dated in the future.
    pub(crate) rejected_expired: u64,
    /// Envelopes of a protocol version the node does not speak.
    pub(crate) rejected_unsupported_version: u64,
    /// Envelopes the node could not decrypt or decompress.
    pub(crate) rejected_undecryptable: u64,
    /// Inbound streams that failed before a whole frame was read.
    pub(crate) inbound_stream_failures: u64,
    /// Delivery attempts made.
    pub(crate) attempts: u64,
    /// Delivery attempts that failed.
    pub(crate) attempt_failures: u64,
    /// Outgoing messages confirmed by a valid receipt.
    pub(crate) delivered: u64,
    /// Receipts that did not verify.
    pub(crate) bad_receipts: u64,
    /// Peer records accepted.
    pub(crate) records_accepted: u64,
    /// Peer records refused.
    pub(crate) records_rejected: u64,
    /// Peer records equal to the one verified and stored in the last 10
    /// minutes (a reconnecting peer): not checked or written again.
    pub(crate) records_unchanged: u64,
    /// DHT records refused: not signed by the peer they name.
    pub(crate) dht_rejected_forged: u64,
    /// DHT records refused: older than the one held.
    pub(crate) dht_rejected_stale: u64,
    /// DHT records refused: expired.
    pub(crate) dht_rejected_expired: u64,
    /// DHT records refused: too large.
    pub(crate) dht_rejected_too_large: u64,
    /// DHT records refused: malformed.
    pub(crate) dht_rejected_malformed: u64,
    /// DHT record stores refused for exceeding a peer's rate.
    pub(crate) dht_rate_limited: u64,
    /// Publications of our record that reached a peer.
    pub(crate) dht_publish_ok: u64,
    /// Publications of our record that reached nobody.
    pub(crate) dht_publish_failed: u64,
    /// DHT lookups asked again after the first query failed.
    pub(crate) dht_lookup_retries: u64,
    /// DHT lookups finished.
    pub(crate) dht_lookups: u64,
    /// DHT lookups that found a valid record.
    pub(crate) dht_lookups_found: u64,
    /// Requests sent by finished DHT lookups, summed.
    pub(crate) dht_lookup_requests: u64,
    /// Inbound DHT requests dropped for exceeding a peer's rate.
    pub(crate) dht_inbound_rate_limited: u64,
    /// Records handed to new close peers (Kademlia hand-off).
    pub(crate) dht_handoffs: u64,
    /// Hand-offs skipped: the new peer was routed within the republish interval and kept its record store (DHT tuning).
    pub(crate) dht_handoffs_skipped: u64,
    /// Starts that kept the key-package record already in the DHT instead of putting it again (DHT tuning).
    pub(crate) key_packages_kept: u64,
    /// Bootstraps that skipped their bucket refreshes (DHT tuning).
    pub(crate) dht_refreshes_cut: u64,
    /// Bucket refreshes run as lean lookups for a few peers instead of full ones (DHT tuning).
    pub(crate) dht_lean_refreshes: u64,
    /// Kademlia requests sent to fill the routing table: bootstrap self-lookups and bucket refreshes.
    pub(crate) dht_refresh_requests: u64,
    /// Messages sent into the routed network as the sender.
    pub(crate) routed_sent: u64,
    /// Routed messages passed on as a relay.
    pub(crate) routed_forwarded: u64,
    /// Routed messages that reached this node as their destination.
    pub(crate) routed_delivered: u64,
    /// Routed messages dropped because their TTL ran out.
    pub(crate) routed_dropped_ttl: u64,
    /// Routed messages dropped as already seen.
    pub(crate) routed_dropped_duplicate: u64,
    /// Routed messages refused by relay policy.
    pub(crate) routed_refused_policy: u64,
    /// Routed messages with no next hop left.
    pub(crate) routed_no_route: u64,
    /// Routed messages malformed or not matching their envelope.
    pub(crate) routed_malformed: u64,
    /// Next hops that failed or refused.
    pub(crate) routed_hop_failures: u64,
    /// Messages this node sent along an onion path (as the sender).
    pub(crate) onion_sent: u64,
    /// Onion packets this node peeled and passed on as a relay.
    pub(crate) onion_relayed: u64,
    /// Onion messages that reached this node as their recipient.
    pub(crate) onion_delivered: u64,
    /// Answers (receipts) that came back to this node through its SURBs.
    pub(crate) onion_answers: u64,
    /// Onion packets dropped as replays (tag seen under the same key).
    pub(crate) onion_dropped_replay: u64,
    /// Onion packets no onion key of this node opened.
    pub(crate) onion_dropped_unknown_key: u64,
    /// Onion packets or payloads that were malformed.
    pub(crate) onion_dropped_malformed: u64,
    /// Onion packets refused by relay policy (role off, quota, busy).
    pub(crate) onion_refused_policy: u64,
    /// Next hops of onion packets this node could not reach.
    pub(crate) onion_unreachable: u64,
    /// Path checks this node sent round an onion path.
    pub(crate) onion_path_checks: u64,
    /// Relays of this node's onion paths that failed (each is replaced).
    pub(crate) onion_hop_failures: u64,
    /// Items this node's mailbox stored for others (deposits and replicas).
    pub(crate) mailbox_stored: u64,
    /// Deposits this node's mailbox refused (quota, rate, TTL, invalid).
    pub(crate) mailbox_refused: u64,
    /// Fetches this node's mailbox answered.
    pub(crate) mailbox_fetches: u64,
    /// Signed acknowledgements this node's mailbox applied.
    pub(crate) mailbox_acks: u64,
    /// Items this node's mailbox purged unacknowledged at expiry.
    pub(crate) mailbox_expired: u64,
    /// Replicas of this node's messages that mailboxes accepted.
    pub(crate) mailbox_deposited: u64,
    /// DHT lookups of a recipient's mailboxes made to deposit there.
    pub(crate) mailbox_lookups: u64,
    /// Messages this node received from its mailboxes (first copies).
    pub(crate) mailbox_drained: u64,
    /// Receipts for this node's messages that came by the mailbox protocol.
    pub(crate) mailbox_receipts: u64,
    /// Held items copied to other members of a recipient's mailbox set.
    pub(crate) mailbox_replicated: u64,
    /// Held items dropped after R nearer mailboxes held them.
    pub(crate) mailbox_released: u64,
    /// Group posts this node published on a group topic.
    pub(crate) group_posts_published: u64,
    /// Group posts received on a group topic (valid, for a group this node is in).
    pub(crate) group_posts_received: u64,
    /// Messages on group topics that are not group posts (dropped, the sender penalised).
    pub(crate) group_posts_rejected: u64,
    /// Pages of group posts fetched from group mailboxes (catch-up).
    pub(crate) group_pages_fetched: u64,
    /// Large group posts this node announced on a topic instead of pushing them (served on request).
    pub(crate) group_posts_announced: u64,
    /// Announced group posts this node fetched from the member that forwarded the announcement.
    pub(crate) group_posts_pulled: u64,
    /// Announced group posts no member served (left to catch-up from the group's mailboxes).
    pub(crate) group_pulls_failed: u64,
    /// Batch requests sent (several messages to one peer in one request).
    pub(crate) batches_sent: u64,
    /// Messages left for a later round because their peer's queue was full.
    pub(crate) queue_full: u64,
    /// Ephemeral messages (typing, presence) dropped: congested link or stale.
    pub(crate) ephemeral_shed: u64,
    /// Bodies sealed compressed with the shipped dictionary.
    pub(crate) sealed_dictionary: u64,
    /// Bodies sealed compressed with plain zstd.
    pub(crate) sealed_zstd: u64,
    /// Bodies sealed uncompressed (short, incompressible, or compression off).
    pub(crate) sealed_uncompressed: u64,
    /// Commits of the group committer (`delivery.group_commit`).
    pub(crate) store_commit_rounds: u64,
    /// Acknowledging writes those commits carried (messages accepted,
    /// envelopes stored, receipts recorded).
    pub(crate) store_commit_jobs: u64,
    /// Shared commits that failed; every write in them was reported failed.
    pub(crate) store_commit_failures: u64,
    /// Bytes read from TCP sockets.
    pub(crate) wire_bytes_in: u64,
    /// Bytes written to TCP sockets.
    pub(crate) wire_bytes_out: u64,
}

impl From<StatsSnapshot> for Stats {
    fn from(s: StatsSnapshot) -> Self {
        // Destructured without `..`: a new counter in the node fails to
        // compile here until the API shows it too.
        let StatsSnapshot {
            received,
            duplicates,
            rejected_malformed,
            rejected_too_large,
            rejected_bad_signature,
            rejected_wrong_recipient,
            rejected_expired,
            rejected_unsupported_version,
            rejected_undecryptable,
            inbound_stream_failures,
            attempts,
            attempt_failures,
            delivered,
            bad_receipts,
            records_accepted,
            records_rejected,
            records_unchanged,
            dht_rejected_forged,
            dht_rejected_stale,
            dht_rejected_expired,
            dht_rejected_too_large,
            dht_rejected_malformed,
            dht_rate_limited,
            dht_publish_ok,
            dht_publish_failed,
            dht_lookup_retries,
            dht_lookups,
            dht_lookups_found,
            dht_lookup_requests,
            dht_inbound_rate_limited,
            dht_handoffs,
            dht_handoffs_skipped,
            key_packages_kept,
            dht_refreshes_cut,
            dht_lean_refreshes,
            dht_refresh_requests,
            routed_sent,
            routed_forwarded,
            routed_delivered,
            routed_dropped_ttl,
            routed_dropped_duplicate,
            routed_refused_policy,
            routed_no_route,
            routed_malformed,
            routed_hop_failures,
            onion_sent,
            onion_relayed,
            onion_delivered,
            onion_answers,
            onion_dropped_replay,
            onion_dropped_unknown_key,
            onion_dropped_malformed,
            onion_refused_policy,
            onion_unreachable,
            onion_path_checks,
            onion_hop_failures,
            mailbox_stored,
            mailbox_refused,
            mailbox_fetches,
            mailbox_acks,
            mailbox_expired,
            mailbox_deposited,
            mailbox_lookups,
            mailbox_drained,
            mailbox_receipts,
            mailbox_replicated,
            mailbox_released,
            group_posts_published,
            group_posts_received,
            group_posts_rejected,
            group_pages_fetched,
            group_posts_announced,
            group_posts_pulled,
            group_pulls_failed,
            batches_sent,
            queue_full,
            ephemeral_shed,
            sealed_dictionary,
            sealed_zstd,
            sealed_uncompressed,
            store_commit_rounds,
            store_commit_jobs,
            store_commit_failures,
            wire_bytes_in,
            wire_bytes_out,
        } = s;
        Self {
            received,
            duplicates,
            rejected_malformed,
            rejected_too_large,
            rejected_bad_signature,
            rejected_wrong_recipient,
            rejected_expired,
            rejected_unsupported_version,
            rejected_undecryptable,
            inbound_stream_failures,
            attempts,
            attempt_failures,
            delivered,
            bad_receipts,
            records_accepted,
            records_rejected,
            records_unchanged,
            dht_rejected_forged,
            dht_rejected_stale,
            dht_rejected_expired,
            dht_rejected_too_large,
            dht_rejected_malformed,
            dht_rate_limited,
            dht_publish_ok,
            dht_publish_failed,
            dht_lookup_retries,
            dht_lookups,
            dht_lookups_found,
            dht_lookup_requests,
            dht_inbound_rate_limited,
            dht_handoffs,
            dht_handoffs_skipped,
            key_packages_kept,
            dht_refreshes_cut,
            dht_lean_refreshes,
            dht_refresh_requests,
            routed_sent,
            routed_forwarded,
            routed_delivered,
            routed_dropped_ttl,
            routed_dropped_duplicate,
            routed_refused_policy,
            routed_no_route,
            routed_malformed,
            routed_hop_failures,
            onion_sent,
            onion_relayed,
            onion_delivered,
            onion_answers,
            onion_dropped_replay,
            onion_dropped_unknown_key,
            onion_dropped_malformed,
            onion_refused_policy,
            onion_unreachable,
            onion_path_checks,
            onion_hop_failures,
            mailbox_stored,
            mailbox_refused,
            mailbox_fetches,
            mailbox_acks,
            mailbox_expired,
            mailbox_deposited,
            mailbox_lookups,
            mailbox_drained,
            mailbox_receipts,
            mailbox_replicated,
            mailbox_released,
            group_posts_published,
            group_posts_received,
            group_posts_rejected,
            group_pages_fetched,
            group_posts_announced,
            group_posts_pulled,
            group_pulls_failed,
            batches_sent,
            queue_full,
            ephemeral_shed,
            sealed_dictionary,
            sealed_zstd,
            sealed_uncompressed,
            store_commit_rounds,
            store_commit_jobs,
            store_commit_failures,
            wire_bytes_in,
            wire_bytes_out,
        }
    }
}

/// Liveness probe.
#[utoipa::path(
    get,
    path = "/v1/health",
    operation_id = "health",
    tag = "node",
    security(()),
    responses((status = 200, description = "The API is up", body = Health))
)]
pub(crate) async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
    })
}

/// The node's id, addresses, uptime, message counts and counters.
#[utoipa::path(
    get,
    path = "/v1/status",
    operation_id = "get_status",
    tag = "node",
    responses(
        (status = 200, description = "The node's status", body = StatusBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
        (status = 503, description = "The node is not running", body = ErrorBody),
    )
)]
pub(crate) async fn status(State(state): State<AppState>) -> Result<Json<StatusBody>, ApiError> {
    let s = state.node.status().await?;
    Ok(Json(StatusBody {
        peer_id: s.peer_id.to_base58(),
        listen_addrs: s.listen_addrs.iter().map(ToString::to_string).collect(),
        connected_peers: u64::try_from(s.connected_peers).unwrap_or(u64::MAX),
        uptime_secs: s.uptime.as_secs(),
        outgoing: s.outgoing,
        incoming: s.incoming,
        known_peers: s.known_peers,
        stats: s.stats.into(),
    }))
}
