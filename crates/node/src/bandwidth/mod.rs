//! Bandwidth adaptation: what the node sends, when, and how compactly.
//!
//! - [`scheduler`]: per-peer queues by priority class, higher classes first
//!   without starving lower ones; ephemeral traffic is droppable.
//! - [`congestion`]: a sans-IO per-peer congestion controller fed with
//!   queueing delay, round-trip times and failures.
//! - [`budget`]: the node's optional upload budget, a token bucket charged
//!   with what really left (measured at the transport).
//! - [`meter`]: bytes by peer and protocol, counted at the transport.
//! - [`report`]: what `GET /v1/bandwidth` and `peercomm stats bandwidth`
//!   show.

pub mod budget;
pub mod congestion;
pub mod meter;
pub mod report;
pub mod scheduler;

pub use report::{BandwidthReport, ClassBytes, PeerLinkState};
