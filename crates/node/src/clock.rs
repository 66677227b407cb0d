//! Time as the node sees it: a [`Clock`] that tests can move.
//!
//! Every protocol decision (expiry, retry schedules, record expiry) reads the
//! time from a `Clock`, never from `SystemTime` directly, so a test can jump
//! "25 hours later" without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// The current time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that starts at the real time and then only moves when told to
/// (plus an optional offset), shared by every node of a simulated network.
#[derive(Debug, Clone)]
pub struct TestClock {
    offset_ms: Arc<AtomicU64>,
}

impl TestClock {
    /// A clock that follows real time until [`TestClock::advance`] is called.
    pub fn new() -> Self {
        Self {
            offset_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Moves the clock forward by `by` for everyone sharing it.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.offset_ms.fetch_add(by, Ordering::SeqCst);
    }
}

impl Default for TestClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        SystemClock
            .now_ms()
            .saturating_add(self.offset_ms.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_clock_moves_only_forward_by_what_it_is_told() {
        let clock = TestClock::new();
        let before = clock.now_ms();
        clock.advance(Duration::from_secs(25 * 3600));
        let after = clock.now_ms();
        assert!(after >= before + 25 * 3600 * 1000);
        assert!(after < before + 25 * 3600 * 1000 + 60_000);
    }
}
