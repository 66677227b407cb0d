//! Known peers: each peer's latest signed record, its addresses and its sealing key.
//!
//! A record replaces the stored one only if its sequence number is higher, so a replayed or
//! reordered old record can never roll a peer back. Addresses live in a child table, one row
//! per address in the record's order.

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::error::{sql, StoreError};
use crate::{page, Store};

/// A peer as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRow {
    /// Peer id (base58).
    pub peer_id: String,
    /// The signed peer record, as received.
    pub record: Vec<u8>,
    /// The record's sequence number.
    pub seq: u64,
    /// Addresses from the record (multiaddr text), in order.
    pub addrs: Vec<String>,
    /// The peer's X25519 key for sealing messages to it.
    pub box_key: [u8; 32],
    /// When this node first saw the peer, ms.
    pub first_seen_ms: u64,
    /// When this node last saw the peer, ms.
    pub last_seen_ms: u64,
}

/// What [`Store::upsert_peer`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpsertOutcome {
    /// The peer was new and was stored.
    Inserted,
    /// The record had a higher sequence number and replaced the stored one.
    Updated,
    /// Same sequence number: only `last_seen_ms` moved forward.
    Unchanged,
    /// Lower sequence number than stored: nothing was written.
    Stale,
}

// Implementation notes: a record's `seq` comes from the network and may exceed `i64::MAX`,
// so it is stored bit-for-bit as an i64 and compared in Rust, never in SQL.
fn seq_to_sql(seq: u64) -> i64 {
    i64::from_be_bytes(seq.to_be_bytes())
}

fn seq_from_sql(seq: i64) -> u64 {
    u64::from_be_bytes(seq.to_be_bytes())
}

fn peer_from_row(r: &Row<'_>) -> rusqlite::Result<PeerRow> {
    Ok(PeerRow {
        peer_id: r.get(0)?,
        record: r.get(1)?,
        seq: seq_from_sql(r.get(2)?),
        addrs: Vec::new(),
        box_key: r.get(3)?,
        first_seen_ms: r.get(4)?,
        last_seen_ms: r.get(5)?,
    })
}

fn load_addrs(conn: &Connection, peer: &mut PeerRow) -> rusqlite::Result<()> {
    let mut stmt =
        conn.prepare_cached("SELECT addr FROM peer_addrs WHERE peer_id = ?1 ORDER BY pos")?;
    peer.addrs = stmt
        .query_map([&peer.peer_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(())
}

fn replace_addrs(conn: &Connection, peer: &PeerRow) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM peer_addrs WHERE peer_id = ?1")?
        .execute([&peer.peer_id])?;
    let mut insert =
        conn.prepare_cached("INSERT INTO peer_addrs (peer_id, pos, addr) VALUES (?1, ?2, ?3)")?;
    for (pos, addr) in peer.addrs.iter().enumerate() {
        insert.execute(params![peer.peer_id, pos, addr])?;
    }
    Ok(())
}

impl Store {
    /// Stores a peer's record if it is new or has a higher `seq` than the stored one; an equal
    /// `seq` only moves `last_seen_ms` forward; a lower one is ignored.
    pub fn upsert_peer(&mut self, peer: &PeerRow) -> Result<UpsertOutcome, StoreError> {
        const OP: &str = "upsert_peer";
        let tx = self.write_tx(OP)?;
        let stored: Option<i64> = tx
            .prepare_cached("SELECT seq FROM peers WHERE peer_id = ?1")
            .and_then(|mut s| s.query_row([&peer.peer_id], |r| r.get(0)).optional())
            .map_err(sql(OP))?;
        let outcome = match stored.map(seq_from_sql) {
            None => {
                tx.prepare_cached(
                    "INSERT INTO peers (peer_id, record, seq, box_key, first_seen_ms, \
                     last_seen_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        peer.peer_id,
                        peer.record,
                        seq_to_sql(peer.seq),
                        peer.box_key,
                        peer.first_seen_ms,
                        peer.last_seen_ms,
                    ])
                })
                .and_then(|_| replace_addrs(&tx, peer))
                .map_err(sql(OP))?;
                UpsertOutcome::Inserted
            }
            Some(stored) if peer.seq > stored => {
                tx.prepare_cached(
                    "UPDATE peers SET record = ?2, seq = ?3, box_key = ?4, \
                     first_seen_ms = min(first_seen_ms, ?5), \
                     last_seen_ms = max(last_seen_ms, ?6) WHERE peer_id = ?1",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        peer.peer_id,
                        peer.record,
                        seq_to_sql(peer.seq),
                        peer.box_key,
                        peer.first_seen_ms,
                        peer.last_seen_ms,
                    ])
                })
                .and_then(|_| replace_addrs(&tx, peer))
                .map_err(sql(OP))?;
                UpsertOutcome::Updated
            }
            Some(stored) if peer.seq == stored => {
                tx.prepare_cached(
                    "UPDATE peers SET last_seen_ms = max(last_seen_ms, ?2) WHERE peer_id = ?1",
                )
                .and_then(|mut s| s.execute(params![peer.peer_id, peer.last_seen_ms]))
                .map_err(sql(OP))?;
                UpsertOutcome::Unchanged
            }
            Some(_) => return Ok(UpsertOutcome::Stale),
        };
        tx.commit().map_err(sql(OP))?;
        Ok(outcome)
    }

    /// The stored peer with this id, if any.
    pub fn get_peer(&self, peer_id: &str) -> Result<Option<PeerRow>, StoreError> {
        const OP: &str = "get_peer";
        let peer = self
            .conn
            .prepare_cached(
                "SELECT peer_id, record, seq, box_key, first_seen_ms, last_seen_ms FROM peers \
                 WHERE peer_id = ?1",
            )
            .and_then(|mut s| s.query_row([peer_id], peer_from_row).optional())
            .map_err(sql(OP))?;
        match peer {
            Some(mut peer) => {
                load_addrs(&self.conn, &mut peer).map_err(sql(OP))?;
                Ok(Some(peer))
            }
            None => Ok(None),
        }
    }

    /// Known peers, most recently seen first; at most `min(limit, MAX_PAGE)` rows.
    pub fn peers(&self, limit: u32) -> Result<Vec<PeerRow>, StoreError> {
        const OP: &str = "peers";
        let mut peers: Vec<PeerRow> = self
            .conn
            .prepare_cached(
                "SELECT peer_id, record, seq, box_key, first_seen_ms, last_seen_ms FROM peers \
                 ORDER BY last_seen_ms DESC, peer_id ASC LIMIT ?1",
            )
            .and_then(|mut s| {
                s.query_map([page(limit)], peer_from_row)?
                    .collect::<Result<_, _>>()
            })
            .map_err(sql(OP))?;
        for peer in &mut peers {
            load_addrs(&self.conn, peer).map_err(sql(OP))?;
        }
        Ok(peers)
    }

    /// Notes that the peer was seen at `now_ms` (never moves `last_seen_ms` back). Returns
    /// `false` if the peer is unknown.
    pub fn touch_peer(&mut self, peer_id: &str, now_ms: u64) -> Result<bool, StoreError> {
        const OP: &str = "touch_peer";
        let tx = self.write_tx(OP)?;
        let n = tx
            .prepare_cached(
                "UPDATE peers SET last_seen_ms = max(last_seen_ms, ?2) WHERE peer_id = ?1",
            )
            .and_then(|mut s| s.execute(params![peer_id, now_ms]))
            .map_err(sql(OP))?;
        tx.commit().map_err(sql(OP))?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str, seq: u64, seen: u64) -> PeerRow {
        PeerRow {
            peer_id: id.to_owned(),
            record: vec![seq as u8; 4],
            seq,
            addrs: vec![
                format!("/ip4/10.0.0.1/tcp/{seq}"),
                "/ip6/::1/udp/9/quic-v1".into(),
            ],
            box_key: [seq as u8; 32],
            first_seen_ms: seen,
            last_seen_ms: seen,
        }
    }

    #[test]
    fn upsert_follows_sequence_numbers() {
        let mut store = Store::open_in_memory().unwrap();
        assert_eq!(
            store.upsert_peer(&peer("p", 5, 100)).unwrap(),
            UpsertOutcome::Inserted
        );
        assert_eq!(store.get_peer("p").unwrap(), Some(peer("p", 5, 100)));

        // Equal seq: only last_seen moves, and only forward.
        let mut same = peer("p", 5, 200);
        same.addrs = vec!["/dns/evil".into()];
        assert_eq!(store.upsert_peer(&same).unwrap(), UpsertOutcome::Unchanged);
        let got = store.get_peer("p").unwrap().unwrap();
        assert_eq!((got.addrs, got.last_seen_ms), (peer("p", 5, 0).addrs, 200));
        assert_eq!(
            store.upsert_peer(&peer("p", 5, 150)).unwrap(),
            UpsertOutcome::Unchanged
        );
        assert_eq!(store.get_peer("p").unwrap().unwrap().last_seen_ms, 200);

        // Lower seq: nothing written.
        assert_eq!(
            store.upsert_peer(&peer("p", 4, 900)).unwrap(),
            UpsertOutcome::Stale
        );
        let got = store.get_peer("p").unwrap().unwrap();
        assert_eq!((got.seq, got.last_seen_ms), (5, 200));

        // Higher seq: replaced, first_seen kept.
        let mut newer = peer("p", 6, 300);
        newer.addrs = vec!["/ip4/1.2.3.4/tcp/1".into()];
        assert_eq!(store.upsert_peer(&newer).unwrap(), UpsertOutcome::Updated);
        let got = store.get_peer("p").unwrap().unwrap();
        assert_eq!(got.seq, 6);
        assert_eq!(got.addrs, newer.addrs);
        assert_eq!((got.box_key, got.record), (newer.box_key, newer.record));
        assert_eq!((got.first_seen_ms, got.last_seen_ms), (100, 300));
    }

    #[test]
    fn sequence_numbers_above_i64_max_compare_correctly() {
        let mut store = Store::open_in_memory().unwrap();
        let big = u64::MAX - 1;
        store.upsert_peer(&peer("p", big, 1)).unwrap();
        assert_eq!(store.get_peer("p").unwrap().unwrap().seq, big);
        assert_eq!(
            store.upsert_peer(&peer("p", 7, 2)).unwrap(),
            UpsertOutcome::Stale
        );
        assert_eq!(
            store.upsert_peer(&peer("p", u64::MAX, 3)).unwrap(),
            UpsertOutcome::Updated
        );
    }

    #[test]
    fn peers_are_listed_most_recent_first_and_touch_moves_forward() {
        let mut store = Store::open_in_memory().unwrap();
        store.upsert_peer(&peer("a", 1, 100)).unwrap();
        store.upsert_peer(&peer("b", 1, 300)).unwrap();
        store.upsert_peer(&peer("c", 1, 200)).unwrap();
        let order = |s: &Store| -> Vec<String> {
            s.peers(10)
                .unwrap()
                .into_iter()
                .map(|p| p.peer_id)
                .collect()
        };
        assert_eq!(order(&store), ["b", "c", "a"]);
        assert!(store.touch_peer("a", 400).unwrap());
        assert!(store.touch_peer("b", 50).unwrap()); // never moves back
        assert!(!store.touch_peer("nobody", 400).unwrap());
        assert_eq!(order(&store), ["a", "b", "c"]);
        assert_eq!(store.peers(1).unwrap().len(), 1);
        assert_eq!(store.peers(10).unwrap()[0].addrs, peer("a", 1, 0).addrs);
        assert_eq!(store.get_peer("nobody").unwrap(), None);
    }
}
