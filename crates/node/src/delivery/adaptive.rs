//! Adaptive retry: when to try a message again, from what is known of its
//! recipient rather than from one fixed schedule.
//!
//! The fixed schedule ([`Backoff`]) retries every message on its own clock,
//! whoever the recipient is. [`Presence`] remembers, per peer, whether it is
//! connected, how long its absences last and its round trip, and
//! [`Presence::delay`] uses that:
//!
//! - a message a mailbox holds waits for the recipient's return (a
//!   reconnection retries at once) with the schedule's cap as a fallback;
//! - a recipient that is connected failed transiently: retry after a few
//!   round trips, doubling, instead of seconds;
//! - a recipient that is away: no earlier than the rest of its usual
//!   absence (its reconnection retries at once anyway), never later than the
//!   fixed schedule would;
//! - a recipient just back: the messages queued for it go out spread over a
//!   window that grows with how many peers came back together, so a healed
//!   partition does not cause a retry storm.
//!
//! Sans-IO: every input takes `now`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use rand::Rng;

use super::Backoff;

/// Peers remembered, at most (least recently seen dropped first).
pub const MAX_PRESENCE_PEERS: usize = 4096;
/// Weight of the newest absence in the average absence.
const ABSENCE_WEIGHT: f64 = 0.3;
/// Shortest retry to a connected peer.
const CONNECTED_RETRY_MIN: Duration = Duration::from_millis(250);
/// Longest retry to a connected peer.
const CONNECTED_RETRY_MAX: Duration = Duration::from_secs(10);
/// Reconnections within this long of each other count as one wave.
const WAVE_WINDOW: Duration = Duration::from_secs(5);
/// Spread added per peer of a reconnection wave.
const SPREAD_PER_PEER: Duration = Duration::from_millis(50);
/// Largest spread of a reconnection wave.
const SPREAD_MAX: Duration = Duration::from_secs(5);

/// What is known of one peer.
#[derive(Debug, Clone, Default)]
struct Seen {
    connected: bool,
    /// When it last connected or disconnected.
    changed: Option<Instant>,
    /// Average absence, milliseconds (0 when none was seen end).
    absence_ms: f64,
    /// Smoothed round trip, when measured.
    rtt: Option<Duration>,
}

/// Per-peer presence history and the retry delays it suggests.
#[derive(Debug)]
pub struct Presence {
    peers: HashMap<PeerId, Seen>,
    /// Recent reconnections (the current wave).
    wave: Vec<Instant>,
}

impl Default for Presence {
    fn default() -> Self {
        Self::new()
    }
}

impl Presence {
    /// Knows nothing yet.
    pub fn new() -> Self {
        Self {
            peers: HashMap::new(),
            wave: Vec::new(),
        }
    }

    fn entry(&mut self, peer: PeerId, now: Instant) -> &mut Seen {
        if self.peers.len() >= MAX_PRESENCE_PEERS && !self.peers.contains_key(&peer) {
            // Forget the peer not heard of for longest.
            if let Some(oldest) = self
                .peers
                .iter()
                .min_by_key(|(_, s)| s.changed.unwrap_or(now))
                .map(|(p, _)| *p)
            {
                self.peers.remove(&oldest);
            }
        }
        self.peers.entry(peer).or_default()
    }

    /// `peer` connected. Returns how long to spread the retries of what is
    /// queued for it (the reconnection wave's spread).
    pub fn on_connected(&mut self, peer: PeerId, now: Instant) -> Duration {
        let seen = self.entry(peer, now);
        if !seen.connected {
            if let Some(since) = seen.changed {
                let away = now.saturating_duration_since(since).as_millis() as f64;
                seen.absence_ms = if seen.absence_ms == 0.0 {
                    away
                } else {
                    seen.absence_ms * (1.0 - ABSENCE_WEIGHT) + away * ABSENCE_WEIGHT
                };
            }
        }
        seen.connected = true;
        seen.changed = Some(now);
        self.wave
            .retain(|t| now.saturating_duration_since(*t) < WAVE_WINDOW);
        self.wave.push(now);
        let others = self.wave.len().saturating_sub(1) as u32;
        SPREAD_PER_PEER.saturating_mul(others).min(SPREAD_MAX)
    }

    /// `peer`'s last connection closed.
    pub fn on_disconnected(&mut self, peer: PeerId, now: Instant) {
        let seen = self.entry(peer, now);
        seen.connected = false;
        seen.changed = Some(now);
    }

    /// A round trip to `peer` was measured.
    pub fn on_rtt(&mut self, peer: PeerId, rtt: Duration, now: Instant) {
        let seen = self.entry(peer, now);
        seen.rtt = Some(match seen.rtt {
            Some(old) => (old * 7 + rtt) / 8,
            None => rtt,
        });
    }

    /// Whether `peer` is connected, as far as we know.
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|s| s.connected)
    }

    /// The average absence of `peer`, once one was seen to end.
    pub fn usual_absence(&self, peer: &PeerId) -> Option<Duration> {
        self.peers
            .get(peer)
            .filter(|s| s.absence_ms > 0.0)
            .map(|s| Duration::from_millis(s.absence_ms as u64))
    }

    /// Delay before attempt `attempts + 1` of a message to `peer`.
    /// `held` says a mailbox holds the message for the peer.
    pub fn delay(
        &self,
        backoff: &Backoff,
        peer: &PeerId,
        attempts: u32,
        held: bool,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Duration {
        let fixed = backoff.delay(attempts, rng);
        if held {
            // The mailbox delivers; a reconnection retries directly.
            return backoff.delay_held(attempts, true, rng);
        }
        let Some(seen) = self.peers.get(peer) else {
            return fixed;
        };
        if seen.connected {
            let rtt = seen.rtt.unwrap_or(Duration::from_millis(100));
            let exponent = attempts.saturating_sub(1).min(16);
            let d = rtt
                .saturating_mul(4)
                .saturating_mul(1 << exponent)
                .clamp(CONNECTED_RETRY_MIN, CONNECTED_RETRY_MAX);
            return jitter(d, backoff.jitter, rng);
        }
        // Away: wait out the rest of its usual absence, at most the fixed
        // schedule's cap; at least the fixed delay.
        let away = seen
            .changed
            .map(|t| now.saturating_duration_since(t))
            .unwrap_or_default();
        let rest = Duration::from_millis(seen.absence_ms as u64).saturating_sub(away);
        fixed.max(jitter(rest, backoff.jitter, rng).min(backoff.cap))
    }
}

fn jitter(d: Duration, jitter: f64, rng: &mut impl Rng) -> Duration {
    let j = jitter.clamp(0.0, 1.0);
    if j == 0.0 || d.is_zero() {
        return d;
    }
    d.mul_f64(1.0 + rng.gen_range(-j..=j))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn backoff() -> Backoff {
        Backoff {
            base: Duration::from_secs(1),
            factor: 2.0,
            cap: Duration::from_secs(60),
            jitter: 0.0,
        }
    }

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(3)
    }

    #[test]
    fn an_unknown_peer_gets_the_fixed_schedule() {
        let p = Presence::new();
        let peer = PeerId::random();
        let now = Instant::now();
        for attempts in 1..8 {
            assert_eq!(
                p.delay(&backoff(), &peer, attempts, false, now, &mut rng()),
                backoff().delay(attempts, &mut rng())
            );
        }
    }

    #[test]
    fn a_connected_peer_is_retried_after_a_few_round_trips() {
        let mut p = Presence::new();
        let peer = PeerId::random();
        let now = Instant::now();
        p.on_connected(peer, now);
        p.on_rtt(peer, Duration::from_millis(100), now);
        let first = p.delay(&backoff(), &peer, 1, false, now, &mut rng());
        assert_eq!(first, Duration::from_millis(400));
        let third = p.delay(&backoff(), &peer, 3, false, now, &mut rng());
        assert_eq!(third, Duration::from_millis(1600));
        // Bounded even after many attempts.
        let many = p.delay(&backoff(), &peer, 30, false, now, &mut rng());
        assert_eq!(many, CONNECTED_RETRY_MAX);
    }

    #[test]
    fn an_absent_peer_is_retried_after_its_usual_absence_not_before() {
        let mut p = Presence::new();
        let peer = PeerId::random();
        let t0 = Instant::now();
        // Two absences of 30 s each.
        p.on_connected(peer, t0);
        p.on_disconnected(peer, t0 + Duration::from_secs(1));
        p.on_connected(peer, t0 + Duration::from_secs(31));
        p.on_disconnected(peer, t0 + Duration::from_secs(32));
        p.on_connected(peer, t0 + Duration::from_secs(62));
        assert_eq!(p.usual_absence(&peer), Some(Duration::from_secs(30)));
        p.on_disconnected(peer, t0 + Duration::from_secs(63));
        // 5 s into the absence: the fixed schedule says 1 s, the history
        // says the peer is back in about 25 s.
        let now = t0 + Duration::from_secs(68);
        let d = p.delay(&backoff(), &peer, 1, false, now, &mut rng());
        assert_eq!(d, Duration::from_secs(25));
        // Past its usual absence: the fixed schedule again.
        let late = t0 + Duration::from_secs(200);
        let d = p.delay(&backoff(), &peer, 2, false, late, &mut rng());
        assert_eq!(d, Duration::from_secs(2));
    }

    #[test]
    fn a_message_held_by_a_mailbox_waits_for_the_cap() {
        let p = Presence::new();
        let d = p.delay(
            &backoff(),
            &PeerId::random(),
            1,
            true,
            Instant::now(),
            &mut rng(),
        );
        assert_eq!(d, Duration::from_secs(60));
    }

    #[test]
    fn a_reconnection_wave_spreads_its_retries() {
        let mut p = Presence::new();
        let now = Instant::now();
        let spreads: Vec<Duration> = (0..200)
            .map(|i| p.on_connected(PeerId::random(), now + Duration::from_millis(i)))
            .collect();
        assert_eq!(spreads[0], Duration::ZERO);
        assert_eq!(spreads[10], Duration::from_millis(500));
        assert_eq!(spreads[199], SPREAD_MAX);
        // A later, lone reconnection is not spread.
        let later = now + Duration::from_secs(60);
        assert_eq!(p.on_connected(PeerId::random(), later), Duration::ZERO);
    }

    #[test]
    fn memory_is_bounded() {
        let mut p = Presence::new();
        let now = Instant::now();
        for i in 0..(MAX_PRESENCE_PEERS + 100) {
            p.on_disconnected(PeerId::random(), now + Duration::from_millis(i as u64));
        }
        assert_eq!(p.peers.len(), MAX_PRESENCE_PEERS);
    }
}
