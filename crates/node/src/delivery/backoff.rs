//! Exponential backoff with jitter.

use std::time::Duration;

use rand::Rng;

use crate::config::DeliveryConfig;

/// The retry schedule of one message: `base * factor^(attempts-1)`, capped at
/// `cap`, then spread by ±`jitter` (a fraction) so that many senders that
/// failed together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay after the first failed attempt.
    pub base: Duration,
    /// Growth per further attempt (≥ 1).
    pub factor: f64,
    /// Largest delay, before jitter.
    pub cap: Duration,
    /// Spread as a fraction of the delay, in `0.0..=1.0`.
    pub jitter: f64,
}

impl Backoff {
    /// The schedule configured for outgoing messages.
    pub fn from_config(config: &DeliveryConfig) -> Self {
        Self {
            base: config.retry_base,
            factor: config.retry_factor,
            cap: config.retry_cap,
            jitter: config.retry_jitter,
        }
    }

    /// The delay before the next attempt, after `attempts` attempts have
    /// been made (`attempts >= 1`).
    pub fn delay(&self, attempts: u32, rng: &mut impl Rng) -> Duration {
        let exponent = attempts.saturating_sub(1).min(64);
        let base_ms = self.base.as_millis() as f64;
        let cap_ms = self.cap.as_millis() as f64;
        let raw_ms = (base_ms * self.factor.max(1.0).powi(exponent as i32)).min(cap_ms);
        let jitter = self.jitter.clamp(0.0, 1.0);
        let spread = if jitter > 0.0 {
            rng.gen_range(-jitter..=jitter)
        } else {
            0.0
        };
        let ms = (raw_ms * (1.0 + spread)).max(0.0);
        Duration::from_millis(ms as u64)
    }

    /// [`Backoff::delay`], except that a message its recipient's mailboxes
    /// hold (`held`) waits the longest delay at once: the mailboxes will
    /// hand it over when the recipient returns, and a connection from the
    /// recipient makes it due again anyway.
    pub fn delay_held(&self, attempts: u32, held: bool, rng: &mut impl Rng) -> Duration {
        self.delay(if held { u32::MAX } else { attempts }, rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn schedule() -> Backoff {
        Backoff {
            base: Duration::from_secs(1),
            factor: 2.0,
            cap: Duration::from_secs(60),
            jitter: 0.2,
        }
    }

    #[test]
    fn delays_grow_exponentially_within_jitter_and_stop_at_the_cap() {
        let seed = 7;
        println!("seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let b = schedule();
        for attempts in 1..=12u32 {
            let expected = (1000.0 * 2f64.powi(attempts as i32 - 1)).min(60_000.0);
            for _ in 0..50 {
                let d = b.delay(attempts, &mut rng).as_millis() as f64;
                assert!(
                    d >= expected * 0.8 - 1.0,
                    "attempt {attempts}: {d} < {expected}*0.8"
                );
                assert!(
                    d <= expected * 1.2 + 1.0,
                    "attempt {attempts}: {d} > {expected}*1.2"
                );
            }
        }
    }

    #[test]
    fn jitter_spreads_retries_of_messages_that_failed_together() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let b = schedule();
        let delays: std::collections::HashSet<u128> =
            (0..100).map(|_| b.delay(3, &mut rng).as_millis()).collect();
        assert!(delays.len() > 50, "only {} distinct delays", delays.len());
    }

    #[test]
    fn a_message_held_by_mailboxes_waits_the_longest_delay_at_once() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let b = Backoff {
            jitter: 0.0,
            ..schedule()
        };
        assert_eq!(b.delay_held(1, true, &mut rng), Duration::from_secs(60));
        assert_eq!(b.delay_held(1, false, &mut rng), Duration::from_secs(1));
        assert_eq!(b.delay_held(3, false, &mut rng), Duration::from_secs(4));
    }

    #[test]
    fn no_jitter_gives_the_exact_schedule() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let b = Backoff {
            jitter: 0.0,
            ..schedule()
        };
        assert_eq!(b.delay(1, &mut rng), Duration::from_secs(1));
        assert_eq!(b.delay(4, &mut rng), Duration::from_secs(8));
        assert_eq!(b.delay(1000, &mut rng), Duration::from_secs(60));
    }
}
