//! Onion routing: a sender hides who talks to whom by sending fixed-size
//! Sphinx packets (sphinx-packet 0.8) through 1 to 4 relays, the recipient
//! being the last Sphinx hop. Each relay peels one layer and learns only
//! its previous and next hop; the recipient's signed receipt comes back
//! through a single-use reply block (SURB) the sender put in the packet.
//!
//! - [`keys`]: the X25519 onion key by epoch, rotation with a grace window,
//!   replay tags per epoch (bounded).
//! - [`path`]: relay choice (distinct, diverse, recently answering), path
//!   checks, rotation and repair.
//! - [`packet`]: building and peeling packets and SURBs.
//!
//! The event loop's side (streams, timers, the outbox) is in
//! `node/onion.rs`; the wire format is in `docs/PROTOCOL.md`.

pub(crate) mod keys;
pub(crate) mod packet;
pub(crate) mod path;

use libp2p::{PeerId, StreamProtocol};
use serde::Serialize;

/// The onion protocol name.
pub const ONION_PROTOCOL: StreamProtocol = StreamProtocol::new("/peercomm/onion/1.0.0");

/// Hop records kept when `onion.keep_hop_log` is on.
pub(crate) const HOP_LOG_LEN: usize = 1024;

/// What this node saw of one onion packet it handled: the hop it came from,
/// and the hop it went to (`None` when this node was its last hop). Kept
/// only with `onion.keep_hop_log`, to show what each relay learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HopSeen {
    /// The peer that handed this node the packet.
    pub from: PeerId,
    /// The peer this node passed it to, if it was not the last hop.
    pub to: Option<PeerId>,
}
