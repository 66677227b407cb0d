//! Counters a node keeps about what it did and what it refused.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Live counters, shared between the event loop and handles.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Envelopes accepted and stored (first copy of each id).
    pub(crate) received: AtomicU64,
    /// Envelopes whose id was already stored (replays, retries): not stored
    /// again, but receipted again.
    pub(crate) duplicates: AtomicU64,
    /// Frames that were not a decodable envelope.
    pub(crate) rejected_malformed: AtomicU64,
    /// Envelopes or frames over a size limit.
    pub(crate) rejected_too_large: AtomicU64,
    /// Envelopes whose signature did not verify.
    pub(crate) rejected_bad_signature: AtomicU64,
    /// Envelopes for another node.
    pub(crate) rejected_wrong_recipient: AtomicU64,
    /// Envelopes already expired (or dated in the future).
    pub(crate) rejected_expired: AtomicU64,
    /// Envelopes of a protocol version we do not speak.
    pub(crate) rejected_unsupported_version: AtomicU64,
    /// Envelopes we could not decrypt or decompress.
    pub(crate) rejected_undecryptable: AtomicU64,
    /// Inbound streams that failed before a whole frame was read.
    pub(crate) inbound_stream_failures: AtomicU64,
    /// Delivery attempts made (requests sent).
    pub(crate) attempts: AtomicU64,
    /// Attempts that failed (dial failure, timeout, reject).
    pub(crate) attempt_failures: AtomicU64,
    /// Outgoing messages confirmed by a valid receipt.
    pub(crate) delivered: AtomicU64,
    /// Receipts that did not verify.
    pub(crate) bad_receipts: AtomicU64,
    /// Peer records accepted.
    pub(crate) records_accepted: AtomicU64,
    /// Peer records refused (bad signature, expired, stale).
    pub(crate) records_rejected: AtomicU64,
    /// Peer records equal to the one verified and stored in the last 10
    /// minutes (a reconnecting peer): not verified or written again.
    pub(crate) records_unchanged: AtomicU64,
    /// DHT records refused: not signed by the peer they name.
    pub(crate) dht_rejected_forged: AtomicU64,
    /// DHT records refused: older than the one held.
    pub(crate) dht_rejected_stale: AtomicU64,
    /// DHT records refused: expired.
    pub(crate) dht_rejected_expired: AtomicU64,
    /// DHT records refused: too large.
    pub(crate) dht_rejected_too_large: AtomicU64,
    /// DHT records refused: malformed.
    pub(crate) dht_rejected_malformed: AtomicU64,
    /// DHT record stores refused because a peer exceeded its rate.
    pub(crate) dht_rate_limited: AtomicU64,
    /// Publications of our own record that reached at least one peer.
    pub(crate) dht_publish_ok: AtomicU64,
    /// Publications of our own record that reached nobody.
    pub(crate) dht_publish_failed: AtomicU64,
    /// DHT lookups asked a second time after the first query failed.
    pub(crate) dht_lookup_retries: AtomicU64,
    /// DHT lookups finished.
    pub(crate) dht_lookups: AtomicU64,
    /// DHT lookups that found a valid record.
    pub(crate) dht_lookups_found: AtomicU64,
    /// Requests sent by finished DHT lookups, summed (divide by lookups
    /// for the mean work of a lookup).
    pub(crate) dht_lookup_requests: AtomicU64,
    /// Inbound DHT requests dropped because a peer exceeded its rate.
    pub(crate) dht_inbound_rate_limited: AtomicU64,
    /// Records handed to peers new to the routing table that are among the k closest to them.
    pub(crate) dht_handoffs: AtomicU64,
    /// Hand-offs skipped: the new peer was routed within the republish interval and kept its record store (DHT tuning).
    pub(crate) dht_handoffs_skipped: AtomicU64,
    /// Starts that kept the key-package record already in the DHT instead of putting it again (DHT tuning).
    pub(crate) key_packages_kept: AtomicU64,
    /// Bootstraps that skipped their bucket refreshes, coming soon after a
    /// complete one (DHT tuning).
    pub(crate) dht_refreshes_cut: AtomicU64,
    /// Bucket refreshes run as lean lookups for a few peers instead of full
    /// ones (DHT tuning).
    pub(crate) dht_lean_refreshes: AtomicU64,
    /// Kademlia requests sent to fill the routing table: bootstrap
    /// self-lookups and bucket refreshes.
    pub(crate) dht_refresh_requests: AtomicU64,
    /// Messages this node sent into the routed network (as the sender).
    pub(crate) routed_sent: AtomicU64,
    /// Routed messages this node passed on as a relay.
    pub(crate) routed_forwarded: AtomicU64,
    /// Routed messages that reached this node as their destination.
    pub(crate) routed_delivered: AtomicU64,
    /// Routed messages dropped because their TTL ran out.
    pub(crate) routed_dropped_ttl: AtomicU64,
    /// Routed messages dropped as already seen (duplicates, loops).
    pub(crate) routed_dropped_duplicate: AtomicU64,
    /// Routed messages refused by relay policy (role off, over quota).
    pub(crate) routed_refused_policy: AtomicU64,
    /// Routed messages with no next hop left to try.
    pub(crate) routed_no_route: AtomicU64,
    /// Routed messages that were malformed or did not match their envelope.
    pub(crate) routed_malformed: AtomicU64,
    /// Next hops that failed or refused (each is replaced by the next-best).
    pub(crate) routed_hop_failures: AtomicU64,
    /// Messages this node sent along an onion path (as the sender).
    pub(crate) onion_sent: AtomicU64,
    /// Onion packets this node peeled and passed on as a relay.
    pub(crate) onion_relayed: AtomicU64,
    /// Onion messages that reached this node as their recipient.
    pub(crate) onion_delivered: AtomicU64,
    /// Answers (receipts) that came back to this node through its SURBs.
    pub(crate) onion_answers: AtomicU64,
    /// Onion packets dropped as replays (tag seen under the same key).
    pub(crate) onion_dropped_replay: AtomicU64,
    /// Onion packets no onion key of this node opened.
    pub(crate) onion_dropped_unknown_key: AtomicU64,
    /// Onion packets or payloads that were malformed.
    pub(crate) onion_dropped_malformed: AtomicU64,
    /// Onion packets refused by relay policy (role off, quota, busy).
    pub(crate) onion_refused_policy: AtomicU64,
    /// Next hops of onion packets this node could not reach.
    pub(crate) onion_unreachable: AtomicU64,
    /// Path checks this node sent round an onion path.
    pub(crate) onion_path_checks: AtomicU64,
    /// Relays of this node's onion paths that failed (each is replaced).
    pub(crate) onion_hop_failures: AtomicU64,
    /// Items this node's mailbox stored for others (deposits and replicas).
    pub(crate) mailbox_stored: AtomicU64,
    /// Deposits this node's mailbox refused (quota, rate, TTL, invalid).
    pub(crate) mailbox_refused: AtomicU64,
    /// Fetches this node's mailbox answered.
    pub(crate) mailbox_fetches: AtomicU64,
    /// Signed acknowledgements this node's mailbox applied.
    pub(crate) mailbox_acks: AtomicU64,
    /// Items this node's mailbox purged unacknowledged at expiry.
    pub(crate) mailbox_expired: AtomicU64,
    /// Replicas of this node's messages that mailboxes accepted.
    pub(crate) mailbox_deposited: AtomicU64,
    /// DHT lookups of a recipient's mailboxes made to deposit there.
    pub(crate) mailbox_lookups: AtomicU64,
    /// Messages this node received from its mailboxes (first copies).
    pub(crate) mailbox_drained: AtomicU64,
    /// Receipts for this node's messages that came by the mailbox protocol.
    pub(crate) mailbox_receipts: AtomicU64,
    /// Held items this node's mailbox copied to other members of a
    /// recipient's mailbox set (re-replication).
    pub(crate) mailbox_replicated: AtomicU64,
    /// Held items this node's mailbox dropped after R nearer mailboxes held them.
    pub(crate) mailbox_released: AtomicU64,
    /// Group posts this node published on a group topic.
    pub(crate) group_posts_published: AtomicU64,
    /// Group posts received on a group topic (valid, for a group we are in).
    pub(crate) group_posts_received: AtomicU64,
    /// Messages on group topics that are not group posts (dropped, the sender penalised).
    pub(crate) group_posts_rejected: AtomicU64,
    /// Pages of group posts fetched from group mailboxes (catch-up).
    pub(crate) group_pages_fetched: AtomicU64,
    /// Large group posts this node announced on a topic instead of pushing them (served on request).
    pub(crate) group_posts_announced: AtomicU64,
    /// Announced group posts this node fetched from the member that forwarded the announcement.
    pub(crate) group_posts_pulled: AtomicU64,
    /// Announced group posts no member served (left to catch-up from the group's mailboxes).
    pub(crate) group_pulls_failed: AtomicU64,
    /// Batch requests sent (several messages to one peer in one request).
    pub(crate) batches_sent: AtomicU64,
    /// Messages left for a later round because their peer's queue was full.
    pub(crate) queue_full: AtomicU64,
    /// Ephemeral messages (typing, presence) dropped: congested link or stale.
    pub(crate) ephemeral_shed: AtomicU64,
    /// Envelope bytes the per-peer queues sent, by class (in
    /// `Priority::ALL` order).
    pub(crate) queued_bytes_by_class: [AtomicU64; 5],
    /// Bodies sealed compressed with the shipped dictionary.
    pub(crate) sealed_dictionary: AtomicU64,
    /// Bodies sealed compressed with plain zstd.
    pub(crate) sealed_zstd: AtomicU64,
    /// Bodies sealed uncompressed (short, incompressible, or compression off).
    pub(crate) sealed_uncompressed: AtomicU64,
    /// Commits the group committer made (one per round when grouped, one
    /// per write when not).
    pub(crate) store_commit_rounds: AtomicU64,
    /// Writes the group committer ran (messages accepted, envelopes stored,
    /// receipts recorded).
    pub(crate) store_commit_jobs: AtomicU64,
    /// Shared commits that failed (every write in them was told so).
    pub(crate) store_commit_failures: AtomicU64,
}

/// A point-in-time copy of [`Stats`], for status output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[allow(missing_docs)]
pub struct StatsSnapshot {
    pub received: u64,
    pub duplicates: u64,
    pub rejected_malformed: u64,
    pub rejected_too_large: u64,
    pub rejected_bad_signature: u64,
    pub rejected_wrong_recipient: u64,
    pub rejected_expired: u64,
    pub rejected_unsupported_version: u64,
    pub rejected_undecryptable: u64,
    pub inbound_stream_failures: u64,
    pub attempts: u64,
    pub attempt_failures: u64,
    pub delivered: u64,
    pub bad_receipts: u64,
    pub records_accepted: u64,
    pub records_rejected: u64,
    pub records_unchanged: u64,
    pub dht_rejected_forged: u64,
    pub dht_rejected_stale: u64,
    pub dht_rejected_expired: u64,
    pub dht_rejected_too_large: u64,
    pub dht_rejected_malformed: u64,
    pub dht_rate_limited: u64,
    pub dht_publish_ok: u64,
    pub dht_publish_failed: u64,
    pub dht_lookup_retries: u64,
    pub dht_lookups: u64,
    pub dht_lookups_found: u64,
    pub dht_lookup_requests: u64,
    pub dht_inbound_rate_limited: u64,
    pub dht_handoffs: u64,
    pub dht_handoffs_skipped: u64,
    pub key_packages_kept: u64,
    pub dht_refreshes_cut: u64,
    pub dht_lean_refreshes: u64,
    pub dht_refresh_requests: u64,
    pub routed_sent: u64,
    pub routed_forwarded: u64,
    pub routed_delivered: u64,
    pub routed_dropped_ttl: u64,
    pub routed_dropped_duplicate: u64,
    pub routed_refused_policy: u64,
    pub routed_no_route: u64,
    pub routed_malformed: u64,
    pub routed_hop_failures: u64,
    pub onion_sent: u64,
    pub onion_relayed: u64,
    pub onion_delivered: u64,
    pub onion_answers: u64,
    pub onion_dropped_replay: u64,
    pub onion_dropped_unknown_key: u64,
    pub onion_dropped_malformed: u64,
    pub onion_refused_policy: u64,
    pub onion_unreachable: u64,
    pub onion_path_checks: u64,
    pub onion_hop_failures: u64,
    pub mailbox_stored: u64,
    pub mailbox_refused: u64,
    pub mailbox_fetches: u64,
    pub mailbox_acks: u64,
    pub mailbox_expired: u64,
    pub mailbox_deposited: u64,
    pub mailbox_lookups: u64,
    pub mailbox_drained: u64,
    pub mailbox_receipts: u64,
    pub mailbox_replicated: u64,
    pub mailbox_released: u64,
    pub group_posts_published: u64,
    pub group_posts_received: u64,
    pub group_posts_rejected: u64,
    pub group_pages_fetched: u64,
    pub group_posts_announced: u64,
    pub group_posts_pulled: u64,
    pub group_pulls_failed: u64,
    pub batches_sent: u64,
    pub queue_full: u64,
    pub ephemeral_shed: u64,
    pub sealed_dictionary: u64,
    pub sealed_zstd: u64,
    pub sealed_uncompressed: u64,
    pub store_commit_rounds: u64,
    pub store_commit_jobs: u64,
    pub store_commit_failures: u64,
    /// Bytes read from TCP sockets.
    pub wire_bytes_in: u64,
    /// Bytes written to TCP sockets.
    pub wire_bytes_out: u64,
}

impl StatsSnapshot {
    /// Every inbound envelope or frame that was dropped, whatever the reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected_malformed
            + self.rejected_too_large
            + self.rejected_bad_signature
            + self.rejected_wrong_recipient
            + self.rejected_expired
            + self.rejected_unsupported_version
            + self.rejected_undecryptable
            + self.inbound_stream_failures
    }
}

impl StatsSnapshot {
    /// Appends the counters in the Prometheus/OpenMetrics text format.
    pub fn encode_prometheus(&self, out: &mut String) {
        use std::fmt::Write;
        let rejected = [
            ("malformed", self.rejected_malformed),
            ("too_large", self.rejected_too_large),
            ("bad_signature", self.rejected_bad_signature),
            ("wrong_recipient", self.rejected_wrong_recipient),
            ("expired", self.rejected_expired),
            ("unsupported_version", self.rejected_unsupported_version),
            ("undecryptable", self.rejected_undecryptable),
            ("stream_failure", self.inbound_stream_failures),
        ];
        let _ = writeln!(
            out,
            "# HELP peercomm_inbound_rejected Inbound envelopes or frames dropped, by reason."
        );
        let _ = writeln!(out, "# TYPE peercomm_inbound_rejected counter");
        for (reason, n) in rejected {
            let _ = writeln!(
                out,
                "peercomm_inbound_rejected_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let counters = [
            (
                "peercomm_messages_received",
                "Envelopes accepted and stored (first copy).",
                self.received,
            ),
            (
                "peercomm_messages_duplicate",
                "Envelopes already stored (replays, retries).",
                self.duplicates,
            ),
            (
                "peercomm_delivery_attempts",
                "Delivery attempts made.",
                self.attempts,
            ),
            (
                "peercomm_delivery_attempt_failures",
                "Delivery attempts that failed.",
                self.attempt_failures,
            ),
            (
                "peercomm_messages_delivered",
                "Outgoing messages confirmed by a valid receipt.",
                self.delivered,
            ),
            (
                "peercomm_receipts_bad",
                "Receipts that did not verify.",
                self.bad_receipts,
            ),
            (
                "peercomm_records_accepted",
                "Peer records accepted.",
                self.records_accepted,
            ),
            (
                "peercomm_records_rejected",
                "Peer records refused.",
                self.records_rejected,
            ),
            (
                "peercomm_records_unchanged",
                "Peer records equal to the one verified and stored recently: not checked or written again.",
                self.records_unchanged,
            ),
            (
                "peercomm_dht_publish_ok",
                "Publications of our record that reached at least one peer.",
                self.dht_publish_ok,
            ),
            (
                "peercomm_dht_publish_failed",
                "Publications of our record that reached nobody (retried with backoff).",
                self.dht_publish_failed,
            ),
            (
                "peercomm_dht_lookups",
                "DHT record lookups finished.",
                self.dht_lookups,
            ),
            (
                "peercomm_dht_lookups_found",
                "DHT record lookups that found a valid record.",
                self.dht_lookups_found,
            ),
            (
                "peercomm_dht_lookup_requests",
                "Requests sent by finished DHT lookups (the hops they took), summed.",
                self.dht_lookup_requests,
            ),
            (
                "peercomm_dht_lookup_retries",
                "DHT lookups asked again after their first query failed.",
                self.dht_lookup_retries,
            ),
            (
                "peercomm_dht_inbound_rate_limited",
                "Inbound DHT requests dropped because the peer exceeded its rate.",
                self.dht_inbound_rate_limited,
            ),
            (
                "peercomm_dht_handoffs",
                "Records handed to peers new to the routing table that are among the k closest to them.",
                self.dht_handoffs,
            ),
            (
                "peercomm_dht_handoffs_skipped",
                "Hand-offs skipped: the new peer was routed within the republish interval and kept its record store (DHT tuning).",
                self.dht_handoffs_skipped,
            ),
            (
                "peercomm_key_packages_kept",
                "Starts that kept the key-package record already in the DHT instead of putting it again (DHT tuning).",
                self.key_packages_kept,
            ),
            (
                "peercomm_dht_refreshes_cut",
                "Bootstraps that skipped their bucket refreshes, coming soon after a complete one (DHT tuning).",
                self.dht_refreshes_cut,
            ),
            (
                "peercomm_dht_lean_refreshes",
                "Bucket refreshes run as lean lookups for a few peers instead of full ones (DHT tuning).",
                self.dht_lean_refreshes,
            ),
            (
                "peercomm_dht_refresh_requests",
                "Kademlia requests sent to fill the routing table: bootstrap self-lookups and bucket refreshes.",
                self.dht_refresh_requests,
            ),
            (
                "peercomm_routed_sent",
                "Messages this node sent into the routed network (as the sender).",
                self.routed_sent,
            ),
            (
                "peercomm_routed_forwarded",
                "Routed messages this node passed on as a relay.",
                self.routed_forwarded,
            ),
            (
                "peercomm_routed_delivered",
                "Routed messages that reached this node as their destination.",
                self.routed_delivered,
            ),
            (
                "peercomm_routed_dropped_ttl",
                "Routed messages dropped because their TTL ran out.",
                self.routed_dropped_ttl,
            ),
            (
                "peercomm_routed_dropped_duplicate",
                "Routed messages dropped as already seen (duplicates, loops).",
                self.routed_dropped_duplicate,
            ),
            (
                "peercomm_routed_refused_policy",
                "Routed messages refused by relay policy (role off, over quota).",
                self.routed_refused_policy,
            ),
            (
                "peercomm_routed_no_route",
                "Routed messages with no next hop left to try.",
                self.routed_no_route,
            ),
            (
                "peercomm_routed_malformed",
                "Routed messages that were malformed or did not match their envelope.",
                self.routed_malformed,
            ),
            (
                "peercomm_routed_hop_failures",
                "Next hops that failed or refused (each is replaced by the next-best).",
                self.routed_hop_failures,
            ),
            (
                "peercomm_onion_sent",
                "Messages this node sent along an onion path (as the sender).",
                self.onion_sent,
            ),
            (
                "peercomm_onion_relayed",
                "Onion packets this node peeled and passed on as a relay.",
                self.onion_relayed,
            ),
            (
                "peercomm_onion_delivered",
                "Onion messages that reached this node as their recipient.",
                self.onion_delivered,
            ),
            (
                "peercomm_onion_answers",
                "Answers (receipts) that came back to this node through its SURBs.",
                self.onion_answers,
            ),
            (
                "peercomm_onion_dropped_replay",
                "Onion packets dropped as replays (tag seen under the same key).",
                self.onion_dropped_replay,
            ),
            (
                "peercomm_onion_dropped_unknown_key",
                "Onion packets no onion key of this node opened.",
                self.onion_dropped_unknown_key,
            ),
            (
                "peercomm_onion_dropped_malformed",
                "Onion packets or payloads that were malformed.",
                self.onion_dropped_malformed,
            ),
            (
                "peercomm_onion_refused_policy",
                "Onion packets refused by relay policy (role off, quota, busy).",
                self.onion_refused_policy,
            ),
            (
                "peercomm_onion_unreachable",
                "Next hops of onion packets this node could not reach.",
                self.onion_unreachable,
            ),
            (
                "peercomm_onion_path_checks",
                "Path checks this node sent round an onion path.",
                self.onion_path_checks,
            ),
            (
                "peercomm_onion_hop_failures",
                "Relays of this node's onion paths that failed (each is replaced).",
                self.onion_hop_failures,
            ),
            (
                "peercomm_mailbox_stored",
                "Items this node's mailbox stored for others (deposits and replicas).",
                self.mailbox_stored,
            ),
            (
                "peercomm_mailbox_refused",
                "Deposits this node's mailbox refused (quota, rate, TTL, invalid).",
                self.mailbox_refused,
            ),
            (
                "peercomm_mailbox_fetches",
                "Fetches this node's mailbox answered.",
                self.mailbox_fetches,
            ),
            (
                "peercomm_mailbox_acks",
                "Signed acknowledgements this node's mailbox applied.",
                self.mailbox_acks,
            ),
            (
                "peercomm_mailbox_expired",
                "Items this node's mailbox purged unacknowledged at expiry.",
                self.mailbox_expired,
            ),
            (
                "peercomm_mailbox_deposited",
                "Replicas of this node's messages that mailboxes accepted.",
                self.mailbox_deposited,
            ),
            (
                "peercomm_mailbox_lookups",
                "DHT lookups of a recipient's mailboxes made to deposit there.",
                self.mailbox_lookups,
            ),
            (
                "peercomm_mailbox_drained",
                "Messages this node received from its mailboxes (first copies).",
                self.mailbox_drained,
            ),
            (
                "peercomm_mailbox_receipts",
                "Receipts for this node's messages that came by the mailbox protocol.",
                self.mailbox_receipts,
            ),
            (
                "peercomm_mailbox_replicated",
                "Held items copied to other members of a recipient's mailbox set.",
                self.mailbox_replicated,
            ),
            (
                "peercomm_mailbox_released",
                "Held items dropped after R nearer mailboxes held them.",
                self.mailbox_released,
            ),
            (
                "peercomm_group_posts_published",
                "Group posts this node published on a group topic.",
                self.group_posts_published,
            ),
            (
                "peercomm_group_posts_received",
                "Group posts received on a group topic (valid, for a group we are in).",
                self.group_posts_received,
            ),
            (
                "peercomm_group_posts_rejected",
                "Messages on group topics that are not group posts (dropped, the sender penalised).",
                self.group_posts_rejected,
            ),
            (
                "peercomm_group_pages_fetched",
                "Pages of group posts fetched from group mailboxes (catch-up).",
                self.group_pages_fetched,
            ),
            (
                "peercomm_group_posts_announced",
                "Large group posts this node announced on a topic instead of pushing them (served on request).",
                self.group_posts_announced,
            ),
            (
                "peercomm_group_posts_pulled",
                "Announced group posts this node fetched from the member that forwarded the announcement.",
                self.group_posts_pulled,
            ),
            (
                "peercomm_group_pulls_failed",
                "Announced group posts no member served (left to catch-up from the group's mailboxes).",
                self.group_pulls_failed,
            ),
            (
                "peercomm_batches_sent",
                "Batch requests sent (several messages to one peer in one request).",
                self.batches_sent,
            ),
            (
                "peercomm_queue_full",
                "Messages left for a later round because their peer's queue was full.",
                self.queue_full,
            ),
            (
                "peercomm_ephemeral_shed",
                "Ephemeral messages (typing, presence) dropped: congested link or stale.",
                self.ephemeral_shed,
            ),
            (
                "peercomm_sealed_dictionary",
                "Bodies sealed compressed with the shipped dictionary.",
                self.sealed_dictionary,
            ),
            (
                "peercomm_sealed_zstd",
                "Bodies sealed compressed with plain zstd.",
                self.sealed_zstd,
            ),
            (
                "peercomm_sealed_uncompressed",
                "Bodies sealed uncompressed (short, incompressible, or compression off).",
                self.sealed_uncompressed,
            ),
            (
                "peercomm_store_commit_rounds",
                "Commits the group committer made (one per write with group commit off).",
                self.store_commit_rounds,
            ),
            (
                "peercomm_store_commit_jobs",
                "Writes run by the group committer (messages accepted, envelopes stored, \
                 receipts recorded); divided by the rounds, the writes per commit.",
                self.store_commit_jobs,
            ),
            (
                "peercomm_store_commit_failures",
                "Shared commits that failed; every write in them was reported failed.",
                self.store_commit_failures,
            ),
            (
                "peercomm_wire_bytes_in",
                "Bytes read from TCP sockets.",
                self.wire_bytes_in,
            ),
            (
                "peercomm_wire_bytes_out",
                "Bytes written to TCP sockets.",
                self.wire_bytes_out,
            ),
        ];
        let _ = writeln!(out, "# HELP peercomm_dht_records_rejected DHT records refused before storing or believing them, by reason.");
        let _ = writeln!(out, "# TYPE peercomm_dht_records_rejected counter");
        for (reason, n) in [
            ("forged", self.dht_rejected_forged),
            ("stale", self.dht_rejected_stale),
            ("expired", self.dht_rejected_expired),
            ("too_large", self.dht_rejected_too_large),
            ("malformed", self.dht_rejected_malformed),
            ("rate_limited", self.dht_rate_limited),
        ] {
            let _ = writeln!(
                out,
                "peercomm_dht_records_rejected_total{{reason=\"{reason}\"}} {n}"
            );
        }
        for (name, help, n) in counters {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name}_total {n}");
        }
    }
}

impl Stats {
    /// Counts envelope bytes a per-peer queue sent in `class`.
    pub(crate) fn add_class_bytes(&self, class: peercomm_wire::Priority, bytes: u64) {
        if let Some(i) = peercomm_wire::Priority::ALL
            .iter()
            .position(|c| *c == class)
        {
            self.queued_bytes_by_class[i].fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Envelope bytes the per-peer queues sent, per class.
    pub(crate) fn class_bytes(&self) -> Vec<(peercomm_wire::Priority, u64)> {
        peercomm_wire::Priority::ALL
            .iter()
            .zip(&self.queued_bytes_by_class)
            .map(|(c, n)| (*c, n.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Stats {
    /// Copies the counters.
    pub(crate) fn snapshot(&self, wire: &crate::transport::WireCounters) -> StatsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            received: g(&self.received),
            duplicates: g(&self.duplicates),
            rejected_malformed: g(&self.rejected_malformed),
            rejected_too_large: g(&self.rejected_too_large),
            rejected_bad_signature: g(&self.rejected_bad_signature),
            rejected_wrong_recipient: g(&self.rejected_wrong_recipient),
            rejected_expired: g(&self.rejected_expired),
            rejected_unsupported_version: g(&self.rejected_unsupported_version),
            rejected_undecryptable: g(&self.rejected_undecryptable),
            inbound_stream_failures: g(&self.inbound_stream_failures),
            attempts: g(&self.attempts),
            attempt_failures: g(&self.attempt_failures),
            delivered: g(&self.delivered),
            bad_receipts: g(&self.bad_receipts),
            records_accepted: g(&self.records_accepted),
            records_rejected: g(&self.records_rejected),
            records_unchanged: g(&self.records_unchanged),
            dht_rejected_forged: g(&self.dht_rejected_forged),
            dht_rejected_stale: g(&self.dht_rejected_stale),
            dht_rejected_expired: g(&self.dht_rejected_expired),
            dht_rejected_too_large: g(&self.dht_rejected_too_large),
            dht_rejected_malformed: g(&self.dht_rejected_malformed),
            dht_rate_limited: g(&self.dht_rate_limited),
            dht_publish_ok: g(&self.dht_publish_ok),
            dht_publish_failed: g(&self.dht_publish_failed),
            dht_lookup_retries: g(&self.dht_lookup_retries),
            dht_lookups: g(&self.dht_lookups),
            dht_lookups_found: g(&self.dht_lookups_found),
            dht_lookup_requests: g(&self.dht_lookup_requests),
            dht_inbound_rate_limited: g(&self.dht_inbound_rate_limited),
            dht_handoffs: g(&self.dht_handoffs),
            dht_handoffs_skipped: g(&self.dht_handoffs_skipped),
            key_packages_kept: g(&self.key_packages_kept),
            dht_refreshes_cut: g(&self.dht_refreshes_cut),
            dht_lean_refreshes: g(&self.dht_lean_refreshes),
            dht_refresh_requests: g(&self.dht_refresh_requests),
            routed_sent: g(&self.routed_sent),
            routed_forwarded: g(&self.routed_forwarded),
            routed_delivered: g(&self.routed_delivered),
            routed_dropped_ttl: g(&self.routed_dropped_ttl),
            routed_dropped_duplicate: g(&self.routed_dropped_duplicate),
            routed_refused_policy: g(&self.routed_refused_policy),
            routed_no_route: g(&self.routed_no_route),
            routed_malformed: g(&self.routed_malformed),
            routed_hop_failures: g(&self.routed_hop_failures),
            onion_sent: g(&self.onion_sent),
            onion_relayed: g(&self.onion_relayed),
            onion_delivered: g(&self.onion_delivered),
            onion_answers: g(&self.onion_answers),
            onion_dropped_replay: g(&self.onion_dropped_replay),
            onion_dropped_unknown_key: g(&self.onion_dropped_unknown_key),
            onion_dropped_malformed: g(&self.onion_dropped_malformed),
            onion_refused_policy: g(&self.onion_refused_policy),
            onion_unreachable: g(&self.onion_unreachable),
            onion_path_checks: g(&self.onion_path_checks),
            onion_hop_failures: g(&self.onion_hop_failures),
            mailbox_stored: g(&self.mailbox_stored),
            mailbox_refused: g(&self.mailbox_refused),
            mailbox_fetches: g(&self.mailbox_fetches),
            mailbox_acks: g(&self.mailbox_acks),
            mailbox_expired: g(&self.mailbox_expired),
            mailbox_deposited: g(&self.mailbox_deposited),
            mailbox_lookups: g(&self.mailbox_lookups),
            mailbox_drained: g(&self.mailbox_drained),
            mailbox_receipts: g(&self.mailbox_receipts),
            mailbox_replicated: g(&self.mailbox_replicated),
            mailbox_released: g(&self.mailbox_released),
            group_posts_published: g(&self.group_posts_published),
            group_posts_received: g(&self.group_posts_received),
            group_posts_rejected: g(&self.group_posts_rejected),
            group_pages_fetched: g(&self.group_pages_fetched),
            group_posts_announced: g(&self.group_posts_announced),
            group_posts_pulled: g(&self.group_posts_pulled),
            group_pulls_failed: g(&self.group_pulls_failed),
            batches_sent: g(&self.batches_sent),
            queue_full: g(&self.queue_full),
            ephemeral_shed: g(&self.ephemeral_shed),
            sealed_dictionary: g(&self.sealed_dictionary),
            sealed_zstd: g(&self.sealed_zstd),
            sealed_uncompressed: g(&self.sealed_uncompressed),
            store_commit_rounds: g(&self.store_commit_rounds),
            store_commit_jobs: g(&self.store_commit_jobs),
            store_commit_failures: g(&self.store_commit_failures),
            wire_bytes_in: g(&wire.bytes_in),
            wire_bytes_out: g(&wire.bytes_out),
        }
    }
}
