//! The duplicate filter: (message id, destination, attempt) seen recently.
//! Bounded in count (the oldest entry goes first) and in time.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use peercomm_wire::MessageId;

/// What identifies one transmission of a routed message.
pub(crate) type SeenKey = (MessageId, PeerId, u32);

#[derive(Debug)]
pub(crate) struct SeenCache {
    capacity: usize,
    ttl: Duration,
    at: HashMap<SeenKey, Instant>,
    order: VecDeque<(SeenKey, Instant)>,
}

impl SeenCache {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            capacity: capacity.max(1),
            ttl,
            at: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Records `key` at `now`; false if it was already there (a duplicate).
    pub(crate) fn insert(&mut self, key: SeenKey, now: Instant) -> bool {
        self.expire(now);
        if self.at.contains_key(&key) {
            return false;
        }
        while self.at.len() >= self.capacity {
            let Some((old, at)) = self.order.pop_front() else {
                break;
            };
            if self.at.get(&old) == Some(&at) {
                self.at.remove(&old);
            }
        }
        self.at.insert(key, now);
        self.order.push_back((key, now));
        true
    }

    fn expire(&mut self, now: Instant) {
        while let Some((key, at)) = self.order.front().copied() {
            if now.saturating_duration_since(at) < self.ttl {
                break;
            }
            self.order.pop_front();
            if self.at.get(&key) == Some(&at) {
                self.at.remove(&key);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.at.len()
    }
}
