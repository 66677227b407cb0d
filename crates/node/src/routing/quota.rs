//! What a relay forwards for each previous hop: messages and bytes per
//! minute, as token buckets (bursts of a quarter minute's worth). Sans-IO.

use std::collections::HashMap;
use std::time::Instant;

use libp2p::PeerId;

/// Previous hops tracked at most; past this, full buckets are forgotten.
const MAX_TRACKED: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    messages: f64,
    bytes: f64,
    last: Instant,
}

#[derive(Debug)]
pub(crate) struct ForwardQuota {
    per_minute: u32,
    bytes_per_minute: u64,
    buckets: HashMap<PeerId, Bucket>,
}

impl ForwardQuota {
    /// 0 in either figure means no limit on it.
    pub(crate) fn new(per_minute: u32, bytes_per_minute: u64) -> Self {
        Self {
            per_minute,
            bytes_per_minute,
            buckets: HashMap::new(),
        }
    }

    fn capacity(&self) -> (f64, f64) {
        (
            (f64::from(self.per_minute) / 4.0).max(4.0),
            (self.bytes_per_minute as f64 / 4.0).max(128.0 * 1024.0),
        )
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let (cap_m, cap_b) = self.capacity();
        let minutes = now.saturating_duration_since(b.last).as_secs_f64() / 60.0;
        b.messages = (b.messages + minutes * f64::from(self.per_minute)).min(cap_m);
        b.bytes = (b.bytes + minutes * self.bytes_per_minute as f64).min(cap_b);
        b.last = now;
    }

    /// Whether one more message of `bytes` from `peer` may be forwarded now;
    /// if so, it is charged.
    pub(crate) fn allow(&mut self, peer: PeerId, bytes: u64, now: Instant) -> bool {
        let (cap_m, cap_b) = self.capacity();
        if self.buckets.len() >= MAX_TRACKED && !self.buckets.contains_key(&peer) {
            let mut buckets = std::mem::take(&mut self.buckets);
            buckets.retain(|_, b| {
                self.refill(b, now);
                b.messages < cap_m || b.bytes < cap_b
            });
            self.buckets = buckets;
            if self.buckets.len() >= MAX_TRACKED {
                return false;
            }
        }
        let mut bucket = self.buckets.get(&peer).copied().unwrap_or(Bucket {
            messages: cap_m,
            bytes: cap_b,
            last: now,
        });
        self.refill(&mut bucket, now);
        let messages_ok = self.per_minute == 0 || bucket.messages >= 1.0;
        let bytes_ok = self.bytes_per_minute == 0 || bucket.bytes >= bytes as f64;
        let ok = messages_ok && bytes_ok;
        if ok {
            bucket.messages -= 1.0;
            bucket.bytes -= bytes as f64;
        }
        self.buckets.insert(peer, bucket);
        ok
    }

    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.buckets.remove(peer);
    }
}
