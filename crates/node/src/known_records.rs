//! Peer records this node has already verified and stored, so that a peer
//! reconnecting with the record it sent last time costs no signature check
//! and no database write.
//!
//! Every new connection exchanges peer records (see PROTOCOL.md, "Peer
//! records"). In a busy network most connections are re-connections (an
//! idle connection closes after `network.idle_connection_timeout` and a
//! later lookup dials again) and carry a record byte-for-byte equal to the
//! one stored. Such a record needs neither a new Ed25519 verification nor a
//! write. The store's `last_seen_ms` is still refreshed once per
//! [`REFRESH_AFTER`].
//!
//! Records are compared by SHA-256 of their bytes, so a peer cannot make a
//! different record pass as the verified one.

use std::collections::HashMap;

use libp2p::{Multiaddr, PeerId};
use sha2::{Digest, Sha256};

/// How long a verified record is trusted without touching the store again
/// (`last_seen_ms` is at most this stale).
pub(crate) const REFRESH_AFTER_MS: u64 = 10 * 60 * 1000;

/// Records remembered at most (each about 100 bytes plus its addresses).
pub(crate) const MAX_KNOWN_RECORDS: usize = 1024;

#[derive(Debug)]
struct Known {
    digest: [u8; 32],
    expires_ms: u64,
    stored_ms: u64,
    addrs: Vec<Multiaddr>,
}

/// Records verified and stored recently, by peer.
#[derive(Debug)]
pub(crate) struct KnownRecords {
    entries: HashMap<PeerId, Known>,
    cap: usize,
}

impl Default for KnownRecords {
    fn default() -> Self {
        Self::with_capacity(MAX_KNOWN_RECORDS)
    }
}

impl KnownRecords {
    /// Remembers at most `cap` records.
    pub(crate) fn with_capacity(cap: usize) -> Self {
        Self {
            entries: HashMap::new(),
            cap: cap.max(1),
        }
    }

    /// The addresses of `bytes` when they are exactly the record of `peer`
    /// verified and stored less than [`REFRESH_AFTER_MS`] ago, and it has
    /// not expired at `now_ms`. `None`: verify and store it.
    pub(crate) fn addrs_if_known(
        &self,
        peer: &PeerId,
        digest: &RecordDigest,
        now_ms: u64,
    ) -> Option<Vec<Multiaddr>> {
        let known = self.entries.get(peer)?;
        let fresh = now_ms < known.expires_ms
            && now_ms.saturating_sub(known.stored_ms) < REFRESH_AFTER_MS
            && known.stored_ms <= now_ms;
        (fresh && known.digest == digest.0).then(|| known.addrs.clone())
    }

    /// The record of `peer` with this digest, expiring at `expires_ms` and
    /// announcing `addrs`, was verified and stored at `now_ms`.
    pub(crate) fn remember(
        &mut self,
        peer: PeerId,
        digest: RecordDigest,
        expires_ms: u64,
        addrs: Vec<Multiaddr>,
        now_ms: u64,
    ) {
        if self.entries.len() >= self.cap && !self.entries.contains_key(&peer) {
            self.entries.retain(|_, k| {
                now_ms < k.expires_ms && now_ms.saturating_sub(k.stored_ms) < REFRESH_AFTER_MS
            });
            if self.entries.len() >= self.cap {
                // Still full of fresh records: drop the oldest.
                if let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, k)| k.stored_ms)
                    .map(|(p, _)| *p)
                {
                    self.entries.remove(&oldest);
                }
            }
        }
        self.entries.insert(
            peer,
            Known {
                digest: digest.0,
                expires_ms,
                stored_ms: now_ms,
                addrs,
            },
        );
    }

    /// Records remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// SHA-256 of a record's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordDigest([u8; 32]);

impl RecordDigest {
    /// The digest of `bytes`.
    pub(crate) fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(bytes: &[u8]) -> RecordDigest {
        RecordDigest::of(bytes)
    }

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
    }

    #[test]
    fn the_same_bytes_within_the_refresh_window_are_known() {
        let mut known = KnownRecords::default();
        let peer = PeerId::random();
        assert_eq!(known.addrs_if_known(&peer, &d(b"record"), 1_000), None);
        known.remember(peer, d(b"record"), 1_000_000, vec![addr(1)], 1_000);
        assert_eq!(
            known.addrs_if_known(&peer, &d(b"record"), 2_000),
            Some(vec![addr(1)])
        );
        // Other bytes (a new record, or a forged one) are checked in full.
        assert_eq!(known.addrs_if_known(&peer, &d(b"recorD"), 2_000), None);
        // So is the same record from another peer.
        assert_eq!(
            known.addrs_if_known(&PeerId::random(), &d(b"record"), 2_000),
            None
        );
    }

    #[test]
    fn expired_or_stale_entries_are_checked_again() {
        let mut known = KnownRecords::default();
        let peer = PeerId::random();
        known.remember(peer, d(b"r"), 50_000, vec![], 1_000);
        // The record itself expired.
        assert_eq!(known.addrs_if_known(&peer, &d(b"r"), 50_000), None);
        let later = PeerId::random();
        known.remember(later, d(b"r"), u64::MAX, vec![], 1_000);
        // Stored too long ago: store it again (last seen moves on).
        assert!(known
            .addrs_if_known(&later, &d(b"r"), 1_000 + REFRESH_AFTER_MS - 1)
            .is_some());
        assert_eq!(
            known.addrs_if_known(&later, &d(b"r"), 1_000 + REFRESH_AFTER_MS),
            None
        );
        // A clock that went back does not trust an entry from "the future".
        assert_eq!(known.addrs_if_known(&later, &d(b"r"), 999), None);
    }

    #[test]
    fn it_never_holds_more_than_its_capacity() {
        let mut known = KnownRecords::with_capacity(3);
        let peers: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        for (i, peer) in peers.iter().enumerate() {
            known.remember(*peer, d(b"r"), u64::MAX, vec![], 1_000 + i as u64);
            assert!(known.len() <= 3);
        }
        // The oldest went first; the newest three stay.
        assert_eq!(known.addrs_if_known(&peers[0], &d(b"r"), 2_000), None);
        assert_eq!(known.addrs_if_known(&peers[1], &d(b"r"), 2_000), None);
        for peer in &peers[2..] {
            assert!(known.addrs_if_known(peer, &d(b"r"), 2_000).is_some());
        }
        // Expired entries make room before any fresh one is dropped.
        let mut known = KnownRecords::with_capacity(2);
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        known.remember(a, d(b"r"), 1_500, vec![], 1_000);
        known.remember(b, d(b"r"), u64::MAX, vec![], 900);
        known.remember(c, d(b"r"), u64::MAX, vec![], 2_000);
        assert!(known.addrs_if_known(&b, &d(b"r"), 2_000).is_some());
        assert!(known.addrs_if_known(&c, &d(b"r"), 2_000).is_some());
    }
}
