//! Delivery: when to try an outgoing message again.
//!
//! The outbox itself lives in the store (`peercomm-store`); this module holds
//! the sans-IO decisions about it: the retry schedule (exponential backoff
//! with jitter, capped), its adaptive variant from each recipient's presence
//! history, and what a failed attempt means for the message.

mod adaptive;
mod backoff;

pub use adaptive::{Presence, MAX_PRESENCE_PEERS};
pub use backoff::Backoff;
