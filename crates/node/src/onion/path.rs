//! Onion paths: which relays a packet goes through, checked before use,
//! rotated on a timer and repaired when a hop fails. Sans-IO: the event
//! loop feeds it the relays it knows, what answered and what failed, and
//! `now_ms`; it answers with paths to use or to check.
//!
//! Choice: `hops` distinct relay-role peers, never the sender or the
//! recipient, none that failed lately; each hop prefers a relay whose /16
//! (IPv6: /32) is not yet on the path, and among those one that answered
//! recently. All randomness comes from the caller's RNG (seeded in tests).

use std::collections::HashMap;
use std::net::IpAddr;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use rand::seq::SliceRandom;
use rand::RngCore;

use super::keys::ONION_KEY_BYTES;

/// Paths kept at once (one general path, plus the few built because the
/// general one ran through a recipient).
const MAX_PATHS: usize = 8;
/// Repairs one path may take before it is dropped.
const MAX_REPAIRS: u32 = 3;
/// Peers whose last answer is remembered.
const MAX_ANSWERED: usize = 10_000;
/// Peers remembered as failed.
const MAX_FAILED: usize = 10_000;

/// A relay a path can use: what its signed record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Relay {
    pub(crate) peer: PeerId,
    /// Its Ed25519 public key: its Sphinx node address.
    pub(crate) node: [u8; 32],
    /// Its current onion key and epoch.
    pub(crate) onion_key: [u8; ONION_KEY_BYTES],
    pub(crate) epoch: u64,
    /// Its network prefix (IPv4 /16, IPv6 /32), if its record has a
    /// routable address.
    pub(crate) prefix: Option<[u8; 5]>,
}

/// The prefix diversity is judged by: the first IP address's /16 (IPv4) or
/// /32 (IPv6). Loopback and private addresses count too (a test network
/// has one prefix, and path choice falls back to repeating it).
pub(crate) fn prefix_of(addrs: &[Multiaddr]) -> Option<[u8; 5]> {
    addrs
        .iter()
        .find_map(|addr| {
            addr.iter().find_map(|p| match p {
                Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
                Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
                _ => None,
            })
        })
        .map(|ip| match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                [4, o[0], o[1], 0, 0]
            }
            IpAddr::V6(v6) => {
                let o = v6.octets();
                [6, o[0], o[1], o[2], o[3]]
            }
        })
}

/// Why no path could be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChooseError {
    /// Fewer usable relays are known than the path needs.
    #[error(
        "not enough onion relays: {usable} usable of {known} known, {needed} needed \
         (relays are learned from peer records; wait for the DHT or lower onion.hops)"
    )]
    TooFewRelays {
        usable: usize,
        known: usize,
        needed: usize,
    },
}

/// Chooses `hops` relays from `candidates`, none in `exclude` or `avoid`.
pub(crate) fn choose(
    candidates: &[Relay],
    hops: usize,
    exclude: &[PeerId],
    avoid: &dyn Fn(&PeerId) -> bool,
    answered_recently: &dyn Fn(&PeerId) -> bool,
    rng: &mut dyn RngCore,
) -> Result<Vec<Relay>, ChooseError> {
    let mut pool: Vec<&Relay> = candidates
        .iter()
        .filter(|r| !exclude.contains(&r.peer) && !avoid(&r.peer))
        .collect();
    pool.sort_by_key(|r| r.peer);
    pool.dedup_by_key(|r| r.peer);
    if pool.len() < hops {
        return Err(ChooseError::TooFewRelays {
            usable: pool.len(),
            known: candidates.len(),
            needed: hops,
        });
    }
    pool.shuffle(rng);
    let mut path: Vec<Relay> = Vec::with_capacity(hops);
    for _ in 0..hops {
        let new_prefix = |r: &&Relay| {
            r.prefix
                .is_none_or(|p| !path.iter().any(|h| h.prefix == Some(p)))
        };
        // Best first: a new prefix and a recent answer; then a new prefix;
        // then a recent answer; then anyone left.
        let pick = pool
            .iter()
            .position(|r| new_prefix(r) && answered_recently(&r.peer))
            .or_else(|| pool.iter().position(new_prefix))
            .or_else(|| pool.iter().position(|r| answered_recently(&r.peer)))
            .unwrap_or(0);
        path.push(pool.swap_remove(pick).clone());
    }
    Ok(path)
}

/// Whether a path may be used yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathState {
    /// A check is on its way round the path.
    Checking { since_ms: u64 },
    /// Checked; usable until it is rotated.
    Ready,
}

/// One path.
#[derive(Debug, Clone)]
pub(crate) struct Path {
    pub(crate) id: u64,
    pub(crate) relays: Vec<Relay>,
    pub(crate) built_ms: u64,
    pub(crate) state: PathState,
    repairs: u32,
}

impl Path {
    fn runs_through(&self, peer: &PeerId) -> bool {
        self.relays.iter().any(|r| &r.peer == peer)
    }
}

/// What [`Paths::path_for`] says to do with a packet for a recipient.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PathChoice {
    /// Use this checked path.
    Ready { id: u64, relays: Vec<Relay> },
    /// A path is being checked: wait for it.
    Wait { id: u64 },
    /// A new path: check it (and wait for it).
    Check { id: u64, relays: Vec<Relay> },
}

/// What happens to a path after one of its hops failed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Repair {
    /// The failed hop was replaced: check the path again.
    Check { id: u64, relays: Vec<Relay> },
    /// The path was dropped (no replacement, or too many repairs).
    Dropped { id: u64 },
}

/// Settings of [`Paths`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct PathSettings {
    pub(crate) hops: usize,
    /// A path is replaced after this long.
    pub(crate) rotate_ms: u64,
    /// A check that took longer than this failed.
    pub(crate) check_timeout_ms: u64,
    /// A relay that failed is not chosen again for this long.
    pub(crate) failed_for_ms: u64,
    /// An answer this recent makes a relay preferred.
    pub(crate) recent_ms: u64,
}

/// The paths a node uses.
pub(crate) struct Paths {
    settings: PathSettings,
    paths: Vec<Path>,
    next_id: u64,
    failed: HashMap<PeerId, u64>,
    answered: HashMap<PeerId, u64>,
}

impl Paths {
    pub(crate) fn new(settings: PathSettings) -> Self {
        Self {
            settings,
            paths: Vec::new(),
            next_id: 1,
            failed: HashMap::new(),
            answered: HashMap::new(),
        }
    }

    /// Relays per path.
    pub(crate) fn hops(&self) -> usize {
        self.settings.hops
    }

    /// The paths held now.
    pub(crate) fn paths(&self) -> &[Path] {
        &self.paths
    }

    /// The path with `id`, if it is still held.
    pub(crate) fn get(&self, id: u64) -> Option<&Path> {
        self.paths.iter().find(|p| p.id == id)
    }

    /// Notes that `peer` answered (an ack, a probe back, a receipt).
    pub(crate) fn answered(&mut self, peer: PeerId, now_ms: u64) {
        if self.answered.len() >= MAX_ANSWERED && !self.answered.contains_key(&peer) {
            let recent = self.settings.recent_ms;
            self.answered
                .retain(|_, at| now_ms.saturating_sub(*at) < recent);
            if self.answered.len() >= MAX_ANSWERED {
                self.answered.clear();
            }
        }
        self.answered.insert(peer, now_ms);
    }

    fn is_failed(&self, peer: &PeerId, now_ms: u64) -> bool {
        self.failed.get(peer).is_some_and(|until| now_ms < *until)
    }

    /// A path for a packet from `me` to `recipient`: a checked one if there
    /// is one that avoids the recipient, else one being checked, else a new
    /// one to check.
    pub(crate) fn path_for(
        &mut self,
        me: PeerId,
        recipient: PeerId,
        candidates: &[Relay],
        now_ms: u64,
        rng: &mut dyn RngCore,
    ) -> Result<PathChoice, ChooseError> {
        self.expire(now_ms);
        let usable = |p: &&Path| !p.runs_through(&recipient) && !p.runs_through(&me);
        if let Some(p) = self
            .paths
            .iter()
            .filter(usable)
            .find(|p| p.state == PathState::Ready)
        {
            return Ok(PathChoice::Ready {
                id: p.id,
                relays: p.relays.clone(),
            });
        }
        if let Some(p) = self.paths.iter().find(usable) {
            return Ok(PathChoice::Wait { id: p.id });
        }
        let relays = self.choose(candidates, &[me, recipient], now_ms, rng)?;
        if self.paths.len() >= MAX_PATHS {
            // The oldest goes.
            self.paths.remove(0);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.paths.push(Path {
            id,
            relays: relays.clone(),
            built_ms: now_ms,
            state: PathState::Checking { since_ms: now_ms },
            repairs: 0,
        });
        Ok(PathChoice::Check { id, relays })
    }

    fn choose(
        &self,
        candidates: &[Relay],
        exclude: &[PeerId],
        now_ms: u64,
        rng: &mut dyn RngCore,
    ) -> Result<Vec<Relay>, ChooseError> {
        let recent = self.settings.recent_ms;
        choose(
            candidates,
            self.settings.hops,
            exclude,
            &|p| self.is_failed(p, now_ms),
            &|p| {
                self.answered
                    .get(p)
                    .is_some_and(|at| now_ms.saturating_sub(*at) < recent)
            },
            rng,
        )
    }

    /// The check of path `id` came back: it is ready.
    pub(crate) fn checked(&mut self, id: u64, now_ms: u64) -> bool {
        let Some(path) = self.paths.iter_mut().find(|p| p.id == id) else {
            return false;
        };
        path.state = PathState::Ready;
        let peers: Vec<PeerId> = path.relays.iter().map(|r| r.peer).collect();
        for peer in peers {
            self.answered(peer, now_ms);
        }
        true
    }

    /// Hop `failed` (a relay) of path `id` failed: it is avoided for a
    /// while, and the path gets a replacement for it (keeping its other
    /// hops, and never one in `exclude`: the sender and the recipients
    /// waiting on the path) or is dropped. `failed: None` means the path
    /// failed somewhere unknown: it is dropped.
    pub(crate) fn hop_failed(
        &mut self,
        id: u64,
        failed: Option<PeerId>,
        exclude: &[PeerId],
        candidates: &[Relay],
        now_ms: u64,
        rng: &mut dyn RngCore,
    ) -> Repair {
        if let Some(peer) = failed {
            self.mark_failed(peer, now_ms);
        }
        let Some(at) = self.paths.iter().position(|p| p.id == id) else {
            return Repair::Dropped { id };
        };
        let Some(peer) = failed else {
            self.paths.remove(at);
            return Repair::Dropped { id };
        };
        let path = &self.paths[at];
        let Some(hop) = path.relays.iter().position(|r| r.peer == peer) else {
            self.paths.remove(at);
            return Repair::Dropped { id };
        };
        if path.repairs >= MAX_REPAIRS {
            self.paths.remove(at);
            return Repair::Dropped { id };
        }
        // One new relay, distinct from the hops kept.
        let mut exclude: Vec<PeerId> = exclude.to_vec();
        exclude.extend(path.relays.iter().map(|r| r.peer));
        let recent = self.settings.recent_ms;
        let replacement = choose(
            candidates,
            1,
            &exclude,
            &|p| self.is_failed(p, now_ms),
            &|p| {
                self.answered
                    .get(p)
                    .is_some_and(|a| now_ms.saturating_sub(*a) < recent)
            },
            rng,
        );
        let Ok(mut replacement) = replacement else {
            self.paths.remove(at);
            return Repair::Dropped { id };
        };
        let path = &mut self.paths[at];
        path.relays[hop] = replacement.remove(0);
        path.repairs += 1;
        path.state = PathState::Checking { since_ms: now_ms };
        Repair::Check {
            id,
            relays: path.relays.clone(),
        }
    }

    /// Drops path `id` (a message sent on it got no answer in time).
    pub(crate) fn drop_path(&mut self, id: u64) {
        self.paths.retain(|p| p.id != id);
    }

    fn mark_failed(&mut self, peer: PeerId, now_ms: u64) {
        if self.failed.len() >= MAX_FAILED && !self.failed.contains_key(&peer) {
            self.failed.retain(|_, until| now_ms < *until);
            if self.failed.len() >= MAX_FAILED {
                self.failed.clear();
            }
        }
        self.failed
            .insert(peer, now_ms.saturating_add(self.settings.failed_for_ms));
    }

    /// Drops paths past their rotation time; returns the ids of paths whose
    /// check timed out (the caller treats them as failed somewhere).
    pub(crate) fn expire(&mut self, now_ms: u64) -> Vec<u64> {
        let rotate = self.settings.rotate_ms;
        self.paths
            .retain(|p| now_ms.saturating_sub(p.built_ms) < rotate);
        let timeout = self.settings.check_timeout_ms;
        self.paths
            .iter()
            .filter(|p| {
                matches!(p.state, PathState::Checking { since_ms }
                    if now_ms.saturating_sub(since_ms) >= timeout)
            })
            .map(|p| p.id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    const MIN: u64 = 60_000;

    fn relay(prefix: Option<[u8; 5]>) -> Relay {
        Relay {
            peer: PeerId::random(),
            node: [0; 32],
            onion_key: [0; 32],
            epoch: 1,
            prefix,
        }
    }

    fn settings() -> PathSettings {
        PathSettings {
            hops: 3,
            rotate_ms: 10 * MIN,
            check_timeout_ms: 10_000,
            failed_for_ms: 10 * MIN,
            recent_ms: 10 * MIN,
        }
    }

    #[test]
    fn prefixes_are_slash_16_and_slash_32() {
        let v4: Multiaddr = "/ip4/203.0.113.7/tcp/1".parse().expect("addr");
        let v4b: Multiaddr = "/ip4/203.0.200.1/tcp/1".parse().expect("addr");
        let v6: Multiaddr = "/ip6/2001:db8:1::1/tcp/1".parse().expect("addr");
        let dns: Multiaddr = "/dns4/example.org/tcp/1".parse().expect("addr");
        assert_eq!(prefix_of(std::slice::from_ref(&v4)), prefix_of(&[v4b]));
        assert_eq!(prefix_of(&[v4]), Some([4, 203, 0, 0, 0]));
        assert_eq!(prefix_of(&[v6]), Some([6, 0x20, 0x01, 0x0d, 0xb8]));
        assert_eq!(prefix_of(&[dns]), None);
    }

    #[test]
    fn paths_are_distinct_and_skip_sender_recipient_and_failed_relays() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let relays: Vec<Relay> = (0..6).map(|_| relay(None)).collect();
        let (me, to, bad) = (relays[0].peer, relays[1].peer, relays[2].peer);
        for _ in 0..50 {
            let path =
                choose(&relays, 3, &[me, to], &|p| *p == bad, &|_| false, &mut rng).expect("path");
            let mut peers: Vec<PeerId> = path.iter().map(|r| r.peer).collect();
            assert!(!peers.contains(&me) && !peers.contains(&to) && !peers.contains(&bad));
            peers.sort();
            peers.dedup();
            assert_eq!(peers.len(), 3);
        }
        let err = choose(&relays, 4, &[me, to], &|p| *p == bad, &|_| false, &mut rng);
        assert_eq!(
            err,
            Err(ChooseError::TooFewRelays {
                usable: 3,
                known: 6,
                needed: 4
            })
        );
    }

    #[test]
    fn distinct_prefixes_and_recent_answers_are_preferred() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        // Ten relays in one /16, three in /16s of their own.
        let mut relays: Vec<Relay> = (0..10).map(|_| relay(Some([4, 10, 0, 0, 0]))).collect();
        relays.push(relay(Some([4, 11, 0, 0, 0])));
        relays.push(relay(Some([4, 12, 0, 0, 0])));
        for _ in 0..50 {
            let path = choose(&relays, 3, &[], &|_| false, &|_| false, &mut rng).expect("path");
            let mut prefixes: Vec<_> = path.iter().map(|r| r.prefix).collect();
            prefixes.sort();
            prefixes.dedup();
            assert_eq!(prefixes.len(), 3, "three hops in three /16s");
        }
        // Among relays of the same prefix, the one that answered wins.
        let same: Vec<Relay> = (0..10).map(|_| relay(None)).collect();
        let fresh = [same[3].peer, same[7].peer, same[9].peer];
        for _ in 0..20 {
            let path =
                choose(&same, 3, &[], &|_| false, &|p| fresh.contains(p), &mut rng).expect("path");
            assert!(path.iter().all(|r| fresh.contains(&r.peer)));
        }
    }

    #[test]
    fn the_same_seed_chooses_the_same_path() {
        let relays: Vec<Relay> = (0..20).map(|_| relay(None)).collect();
        let pick = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            choose(&relays, 3, &[], &|_| false, &|_| false, &mut rng).expect("path")
        };
        assert_eq!(pick(7), pick(7));
        assert_ne!(pick(7), pick(8));
    }

    #[test]
    fn a_path_is_checked_then_used_then_rotated() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let relays: Vec<Relay> = (0..8).map(|_| relay(None)).collect();
        let (me, to) = (PeerId::random(), PeerId::random());
        let mut paths = Paths::new(settings());
        let PathChoice::Check { id, relays: hops } =
            paths.path_for(me, to, &relays, 0, &mut rng).expect("path")
        else {
            panic!("a new path must be checked first");
        };
        assert_eq!(hops.len(), 3);
        assert_eq!(
            paths.path_for(me, to, &relays, 1, &mut rng),
            Ok(PathChoice::Wait { id })
        );
        assert!(paths.checked(id, 2));
        assert_eq!(
            paths.path_for(me, to, &relays, 3, &mut rng),
            Ok(PathChoice::Ready { id, relays: hops })
        );
        // Ten minutes later it is replaced by a new one.
        match paths.path_for(me, to, &relays, 10 * MIN, &mut rng) {
            Ok(PathChoice::Check { id: new, .. }) => assert_ne!(new, id),
            other => panic!("expected a fresh path, got {other:?}"),
        }
    }

    #[test]
    fn a_path_through_the_recipient_is_not_used_for_it() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let relays: Vec<Relay> = (0..8).map(|_| relay(None)).collect();
        let me = PeerId::random();
        let mut paths = Paths::new(settings());
        let Ok(PathChoice::Check { id, relays: hops }) =
            paths.path_for(me, PeerId::random(), &relays, 0, &mut rng)
        else {
            panic!("expected a path to check");
        };
        paths.checked(id, 1);
        let inside = hops[1].peer;
        match paths.path_for(me, inside, &relays, 2, &mut rng) {
            Ok(PathChoice::Check { relays, .. }) => {
                assert!(relays.iter().all(|r| r.peer != inside));
            }
            other => panic!("expected a separate path, got {other:?}"),
        }
    }

    #[test]
    fn a_failed_hop_is_replaced_a_few_times_then_the_path_is_dropped() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let relays: Vec<Relay> = (0..12).map(|_| relay(None)).collect();
        let (me, to) = (PeerId::random(), PeerId::random());
        let mut paths = Paths::new(settings());
        let Ok(PathChoice::Check {
            id,
            relays: mut hops,
        }) = paths.path_for(me, to, &relays, 0, &mut rng)
        else {
            panic!("expected a path to check");
        };
        let mut failed = Vec::new();
        for round in 0..MAX_REPAIRS {
            let bad = hops[1].peer;
            failed.push(bad);
            let exclude = [me, to, relays[round as usize].peer];
            match paths.hop_failed(id, Some(bad), &exclude, &relays, u64::from(round), &mut rng) {
                Repair::Check { id: same, relays } => {
                    assert_eq!(same, id);
                    assert_eq!(relays[0], hops[0], "good hops are kept");
                    assert_eq!(relays[2], hops[2], "good hops are kept");
                    assert!(
                        !failed.contains(&relays[1].peer),
                        "a failed relay came back"
                    );
                    assert!(
                        !exclude.contains(&relays[1].peer),
                        "an excluded peer was chosen"
                    );
                    hops = relays;
                }
                Repair::Dropped { .. } => panic!("dropped after {round} repairs"),
            }
        }
        let bad = hops[0].peer;
        assert_eq!(
            paths.hop_failed(id, Some(bad), &[me], &relays, 10, &mut rng),
            Repair::Dropped { id }
        );
        assert!(paths.get(id).is_none());
        // The failed relays stay out of new paths for a while.
        let Ok(PathChoice::Check { relays: fresh, .. }) =
            paths.path_for(me, to, &relays, 20, &mut rng)
        else {
            panic!("expected a path to check");
        };
        assert!(fresh
            .iter()
            .all(|r| !failed.contains(&r.peer) && r.peer != bad));
    }

    #[test]
    fn a_check_that_never_returns_times_out() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let relays: Vec<Relay> = (0..8).map(|_| relay(None)).collect();
        let mut paths = Paths::new(settings());
        let Ok(PathChoice::Check { id, .. }) =
            paths.path_for(PeerId::random(), PeerId::random(), &relays, 0, &mut rng)
        else {
            panic!("expected a path to check");
        };
        assert!(paths.expire(9_999).is_empty());
        assert_eq!(paths.expire(10_000), vec![id]);
    }
}
