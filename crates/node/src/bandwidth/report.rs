//! What `peercomm stats bandwidth` and `GET /v1/bandwidth` show: bytes on
//! the wire by peer, by protocol and by priority class, the state of each
//! peer link, and what the adaptation mechanisms did.

use libp2p::PeerId;
use peercomm_wire::Priority;
use serde::Serialize;

use super::meter::MeterSnapshot;
use crate::config::BandwidthConfig;

/// Bytes of one priority class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassBytes {
    /// `control`, `interactive`, `group`, `bulk` or `ephemeral`.
    pub class: &'static str,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
}

/// One peer's queue and congestion state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerLinkState {
    /// The peer.
    #[serde(serialize_with = "crate::bandwidth::report::peer_str")]
    pub peer: PeerId,
    /// Messages queued for it.
    pub queued: usize,
    /// Requests in flight.
    pub in_flight: usize,
    /// Requests allowed in flight (the congestion window).
    pub window: usize,
    /// Smoothed round trip, milliseconds.
    pub rtt_ms: Option<f64>,
    /// `clear`, or why the link is congested (`queue_delay`, `rtt_growth`, `failures`).
    pub state: String,
}

pub(crate) fn peer_str<S: serde::Serializer>(peer: &PeerId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&peer.to_base58())
}

/// Bandwidth use and adaptation state of a node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BandwidthReport {
    /// The mechanisms in force.
    pub config: BandwidthConfig,
    /// Bytes by peer and by protocol, counted at the transport.
    pub meter: MeterSnapshot,
    /// The same bytes attributed to priority classes: protocol control
    /// (DHT, identify, ping, records, transport overhead) is `control`,
    /// gossip is `group`, mailbox traffic is `bulk`, and message traffic
    /// is split by the bytes the per-peer queues sent of each class.
    pub classes: Vec<ClassBytes>,
    /// Peers with a queue.
    pub links: Vec<PeerLinkState>,
    /// Bodies sealed with the dictionary, with plain zstd, uncompressed.
    pub sealed_dictionary: u64,
    /// See `sealed_dictionary`.
    pub sealed_zstd: u64,
    /// See `sealed_dictionary`.
    pub sealed_uncompressed: u64,
    /// Batch requests sent.
    pub batches_sent: u64,
    /// Ephemeral messages dropped (congestion, staleness).
    pub ephemeral_shed: u64,
}

/// The class a protocol's bytes count in, or `None` for message
/// protocols (split by what the queues sent).
pub(crate) fn class_of_protocol(protocol: &str) -> Option<Priority> {
    if protocol.starts_with("/peercomm/msg")
        || protocol.starts_with("/peercomm/route")
        || protocol.starts_with("/peercomm/onion")
    {
        None
    } else if protocol.starts_with("/meshsub") {
        Some(Priority::Group)
    } else if protocol.starts_with("/peercomm/mailbox") {
        Some(Priority::Bulk)
    } else {
        Some(Priority::Control)
    }
}

/// Attributes `meter` to classes; `sent` is what the per-peer queues
/// sent of each class (bytes), used to split message protocols.
pub(crate) fn classes(meter: &MeterSnapshot, sent: &[(Priority, u64)]) -> Vec<ClassBytes> {
    let mut by: Vec<(Priority, u64, u64)> = Priority::ALL.iter().map(|c| (*c, 0, 0)).collect();
    let add = |by: &mut Vec<(Priority, u64, u64)>, c: Priority, i: u64, o: u64| {
        if let Some(row) = by.iter_mut().find(|r| r.0 == c) {
            row.1 = row.1.saturating_add(i);
            row.2 = row.2.saturating_add(o);
        }
    };
    add(
        &mut by,
        Priority::Control,
        meter.overhead_in,
        meter.overhead_out,
    );
    let total_sent: u64 = sent.iter().map(|(_, b)| *b).sum();
    for p in &meter.protocols {
        match class_of_protocol(&p.protocol) {
            Some(c) => add(&mut by, c, p.bytes_in, p.bytes_out),
            None if total_sent == 0 => add(&mut by, Priority::Interactive, p.bytes_in, p.bytes_out),
            None => {
                for (c, b) in sent {
                    let share = |x: u64| ((x as u128 * *b as u128) / total_sent as u128) as u64;
                    add(&mut by, *c, share(p.bytes_in), share(p.bytes_out));
                }
            }
        }
    }
    by.into_iter()
        .map(|(c, i, o)| ClassBytes {
            class: c.as_str(),
            bytes_in: i,
            bytes_out: o,
        })
        .collect()
}

/// Peers listed one by one in the Prometheus output (most bytes first);
/// the rest are summed under `peer="other"`.
pub const PROMETHEUS_PEERS: usize = 32;

/// Escapes a label value (OpenMetrics: backslash, quote, newline).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Appends the bandwidth counters in the OpenMetrics text format: bytes by
/// protocol (transport overhead as `protocol="overhead"`), by priority
/// class and by peer (the [`PROMETHEUS_PEERS`] busiest, then `other`).
pub(crate) fn encode_prometheus(meter: &MeterSnapshot, classes: &[ClassBytes], out: &mut String) {
    use std::fmt::Write;
    let mut family = |name: &str, help: &str, label_name: &str, rows: &[(String, u64, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (value, bytes_in, bytes_out) in rows {
            for (direction, n) in [("in", bytes_in), ("out", bytes_out)] {
                let _ = writeln!(
                    out,
                    "{name}_total{{{label_name}=\"{}\",direction=\"{direction}\"}} {n}",
                    label(value)
                );
            }
        }
    };
    let mut protocols: Vec<(String, u64, u64)> = meter
        .protocols
        .iter()
        .map(|p| (p.protocol.clone(), p.bytes_in, p.bytes_out))
        .collect();
    protocols.push(("overhead".into(), meter.overhead_in, meter.overhead_out));
    family(
        "peercomm_bandwidth_protocol_bytes",
        "Bytes on the wire by protocol (substream payload; overhead is Noise, Yamux, handshakes).",
        "protocol",
        &protocols,
    );
    let classes: Vec<(String, u64, u64)> = classes
        .iter()
        .map(|c| (c.class.to_string(), c.bytes_in, c.bytes_out))
        .collect();
    family(
        "peercomm_bandwidth_class_bytes",
        "Bytes on the wire by priority class.",
        "class",
        &classes,
    );
    let mut peers: Vec<(String, u64, u64)> = meter
        .peers
        .iter()
        .take(PROMETHEUS_PEERS)
        .map(|p| (p.peer.to_base58(), p.bytes_in, p.bytes_out))
        .collect();
    let (mut rest_in, mut rest_out) = (meter.other_peers_in, meter.other_peers_out);
    for p in meter.peers.iter().skip(PROMETHEUS_PEERS) {
        rest_in = rest_in.saturating_add(p.bytes_in);
        rest_out = rest_out.saturating_add(p.bytes_out);
    }
    peers.push(("other".into(), rest_in, rest_out));
    family(
        "peercomm_bandwidth_peer_bytes",
        "Bytes on the wire by peer (the busiest one by one, the rest as other).",
        "peer",
        &peers,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bandwidth::meter::ProtocolBytes;

    fn meter(protocols: &[(&str, u64, u64)]) -> MeterSnapshot {
        MeterSnapshot {
            total_in: 0,
            total_out: 0,
            peers: Vec::new(),
            other_peers_in: 0,
            other_peers_out: 0,
            unauthenticated_in: 0,
            unauthenticated_out: 0,
            protocols: protocols
                .iter()
                .map(|(p, i, o)| ProtocolBytes {
                    protocol: p.to_string(),
                    bytes_in: *i,
                    bytes_out: *o,
                })
                .collect(),
            overhead_in: 10,
            overhead_out: 20,
        }
    }

    fn get(rows: &[ClassBytes], class: &str) -> (u64, u64) {
        rows.iter()
            .find(|r| r.class == class)
            .map(|r| (r.bytes_in, r.bytes_out))
            .unwrap_or_default()
    }

    #[test]
    fn protocols_map_to_classes_and_messages_split_by_what_was_sent() {
        let m = meter(&[
            ("/ipfs/kad/1.0.0", 100, 200),
            ("/meshsub/1.2.0", 1000, 2000),
            ("/peercomm/mailbox/1.0.0", 5, 7),
            ("/peercomm/msg/1.0.0", 400, 800),
        ]);
        let rows = classes(&m, &[(Priority::Interactive, 3), (Priority::Bulk, 1)]);
        assert_eq!(get(&rows, "control"), (110, 220));
        assert_eq!(get(&rows, "group"), (1000, 2000));
        assert_eq!(get(&rows, "interactive"), (300, 600));
        assert_eq!(get(&rows, "bulk"), (105, 207));
        assert_eq!(get(&rows, "ephemeral"), (0, 0));
    }

    #[test]
    fn prometheus_lists_protocols_classes_and_peers_with_escaped_labels() {
        let mut m = meter(&[("/x\"y/1.0.0", 1, 2), ("/meshsub/1.2.0", 3, 4)]);
        let peer = PeerId::random();
        m.peers.push(crate::bandwidth::meter::PeerBytes {
            peer,
            bytes_in: 5,
            bytes_out: 6,
        });
        let rows = classes(&m, &[]);
        let mut out = String::new();
        encode_prometheus(&m, &rows, &mut out);
        for line in [
            "peercomm_bandwidth_protocol_bytes_total{protocol=\"/x\\\"y/1.0.0\",direction=\"out\"} 2",
            "peercomm_bandwidth_protocol_bytes_total{protocol=\"overhead\",direction=\"in\"} 10",
            "peercomm_bandwidth_class_bytes_total{class=\"group\",direction=\"out\"} 4",
            "peercomm_bandwidth_class_bytes_total{class=\"control\",direction=\"out\"} 22",
        ] {
            assert!(out.lines().any(|l| l == line), "no {line} in\n{out}");
        }
        let peer_line =
            format!("peercomm_bandwidth_peer_bytes_total{{peer=\"{peer}\",direction=\"in\"}} 5");
        assert!(out.lines().any(|l| l == peer_line), "{out}");
        assert_eq!(out.matches("# TYPE").count(), 3);
    }

    #[test]
    fn with_nothing_queued_message_bytes_count_as_interactive() {
        let m = meter(&[("/peercomm/msg-batch/1.0.0", 4, 8)]);
        let rows = classes(&m, &[]);
        assert_eq!(get(&rows, "interactive"), (4, 8));
    }
}
