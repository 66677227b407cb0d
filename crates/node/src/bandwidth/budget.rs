//! The node's upload budget (`bandwidth.budget_bytes_per_sec`): a token
//! bucket, sans-IO (every call takes `now`), charged with what really
//! left the node.
//!
//! The bucket holds at most one second of budget. Messages the per-peer
//! queues send are charged as they leave ([`Budget::charge`]); everything
//! else the transport counted (gossip, DHT, receipts, handshakes,
//! Noise and Yamux framing) is charged when [`Budget::observe`] sees the
//! meter's total move past what was already charged. While the bucket is
//! empty the node defers bulk messages and sheds ephemeral ones; control,
//! interactive and group traffic always go (a user's chat is never held
//! back by a budget), and their bytes put the bucket in debt, so deferrable
//! traffic waits longer. A deferrable message goes only when the bucket
//! holds its size ([`Budget::allows`]). The debt is bounded, so a long burst of urgent
//! traffic cannot starve bulk for more than [`MAX_DEBT_SECONDS`].

use std::time::Instant;

/// The bucket's depth, in seconds of budget.
const BURST_SECONDS: f64 = 1.0;
/// The deepest debt, in seconds of budget.
pub const MAX_DEBT_SECONDS: f64 = 4.0;

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Budget {
    rate: f64,
    tokens: f64,
    last: Instant,
    /// The meter's total when last observed.
    metered: u64,
    /// Bytes charged by [`Budget::charge`] that the meter has not yet seen.
    charged: u64,
}

impl Budget {
    /// A full bucket for `bytes_per_sec`; `metered_out` is the meter's
    /// total sent so far (what was sent before does not count).
    pub fn new(bytes_per_sec: u64, now: Instant, metered_out: u64) -> Self {
        let rate = bytes_per_sec.max(1) as f64;
        Self {
            rate,
            tokens: rate * BURST_SECONDS,
            last: now,
            metered: metered_out,
            charged: 0,
        }
    }

    /// Bytes about to be sent by the queues.
    pub fn charge(&mut self, bytes: usize) {
        self.tokens -= bytes as f64;
        self.charged = self.charged.saturating_add(bytes as u64);
        self.floor();
    }

    /// Refills for the time since the last call and charges what the
    /// meter counted beyond what was charged already.
    pub fn observe(&mut self, now: Instant, metered_out: u64) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate * BURST_SECONDS);
        let moved = metered_out.saturating_sub(self.metered);
        self.metered = self.metered.max(metered_out);
        let unseen = moved.saturating_sub(self.charged);
        self.charged = self.charged.saturating_sub(moved);
        self.tokens -= unseen as f64;
        self.floor();
    }

    /// Whether deferrable traffic (bulk, ephemeral) may go now.
    pub fn allows_deferrable(&self) -> bool {
        self.tokens > 0.0
    }

    /// Whether a deferrable message of `bytes` may go now: the bucket
    /// holds its bytes (or is full, for a message bigger than the bucket),
    /// so over any span the node sends at most the rate times the span
    /// plus one bucket, and the urgent traffic of that span.
    pub fn allows(&self, bytes: usize) -> bool {
        self.tokens >= (bytes as f64).min(self.rate * BURST_SECONDS)
    }

    /// Tokens left (negative: in debt), bytes.
    pub fn tokens(&self) -> f64 {
        self.tokens
    }

    fn floor(&mut self) {
        self.tokens = self.tokens.max(-self.rate * MAX_DEBT_SECONDS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_full_bucket_allows_one_second_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = Budget::new(10_000, t0, 0);
        assert!(b.allows_deferrable());
        b.charge(10_000);
        assert!(!b.allows_deferrable(), "one second of budget spent");
        b.observe(t0 + Duration::from_millis(100), 10_000);
        assert!(b.allows_deferrable(), "100 ms refills 1,000 bytes");
        assert!((b.tokens() - 1_000.0).abs() < 1.0, "{}", b.tokens());
        // Idle for long: never more than one second's worth.
        b.observe(t0 + Duration::from_secs(60), 10_000);
        assert!((b.tokens() - 10_000.0).abs() < 1.0, "{}", b.tokens());
    }

    #[test]
    fn a_message_goes_when_the_bucket_holds_it_or_is_full() {
        let t0 = Instant::now();
        let mut b = Budget::new(10_000, t0, 0);
        assert!(b.allows(10_000) && b.allows(50_000), "a full bucket");
        b.charge(6_000);
        assert!(b.allows(4_000));
        assert!(!b.allows(4_001));
        assert!(!b.allows(50_000), "bigger than the bucket: only when full");
        b.observe(t0 + Duration::from_millis(600), 6_000);
        assert!(b.allows(50_000));
    }

    #[test]
    fn bytes_the_meter_saw_are_charged_once() {
        let t0 = Instant::now();
        let mut b = Budget::new(10_000, t0, 500);
        b.charge(4_000);
        // The meter saw the 4,000 queued bytes plus 1,000 of gossip.
        b.observe(t0, 500 + 5_000);
        assert!((b.tokens() - 5_000.0).abs() < 1.0, "{}", b.tokens());
        // Bytes charged but not yet written stay charged, not twice.
        b.charge(2_000);
        b.observe(t0, 500 + 5_500);
        assert!((b.tokens() - 3_000.0).abs() < 1.0, "{}", b.tokens());
        b.observe(t0, 500 + 7_000);
        assert!((b.tokens() - 3_000.0).abs() < 1.0, "{}", b.tokens());
    }

    #[test]
    fn urgent_traffic_puts_the_bucket_in_bounded_debt() {
        let t0 = Instant::now();
        let mut b = Budget::new(1_000, t0, 0);
        b.observe(t0, 1_000_000);
        assert!(!b.allows_deferrable());
        assert!((b.tokens() + 4_000.0).abs() < 1.0, "{}", b.tokens());
        // The debt is paid back at the rate: 4 s, then deferrable goes.
        b.observe(t0 + Duration::from_millis(3_900), 1_000_000);
        assert!(!b.allows_deferrable());
        b.observe(t0 + Duration::from_millis(4_100), 1_000_000);
        assert!(b.allows_deferrable());
    }
}
