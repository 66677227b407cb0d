//! Delivery: when to try an outgoing message again.
//!
//! The outbox itself lives in the store (`peercomm-store`); this module holds
//! the sans-IO decisions about it: the retry schedule (exponential backoff
//! with jitter, capped) and what a failed attempt means for the message.

mod backoff;

pub use backoff::Backoff;
