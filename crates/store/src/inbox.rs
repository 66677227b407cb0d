//! The inbox: messages received for this node, deduplicated by (sender, message id).
//!
//! Each stored message gets an increasing `seq`, which readers use as a paging cursor and
//! which is never reused (`AUTOINCREMENT`), so a client that remembers its last `seq` sees
//! every later message exactly once.

use rusqlite::{params, OptionalExtension, Row};

use crate::error::{sql, StoreError};
use crate::{page, Store};

/// A received message to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIncoming {
    /// Message id (chosen by the sender).
    pub id: [u8; 16],
    /// Sender peer id (base58).
    pub sender: String,
    /// Opened (plaintext) body.
    pub body: Vec<u8>,
    /// Priority class; lower is more urgent.
    pub priority: u8,
    /// Message kind.
    pub kind: u8,
    /// Creation time claimed by the sender, ms.
    pub created_ms: u64,
    /// Expiry time, ms.
    pub expires_ms: u64,
    /// When this node received it, ms.
    pub received_ms: u64,
    /// The envelope as received (kept as evidence; not returned by reads).
    pub envelope: Vec<u8>,
}

/// A stored incoming message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingMessage {
    /// Position in the inbox; the paging cursor.
    pub seq: i64,
    /// Message id.
    pub id: [u8; 16],
    /// Sender peer id (base58).
    pub sender: String,
    /// Opened (plaintext) body.
    pub body: Vec<u8>,
    /// Priority class.
    pub priority: u8,
    /// Message kind.
    pub kind: u8,
    /// Creation time claimed by the sender, ms.
    pub created_ms: u64,
    /// Expiry time, ms.
    pub expires_ms: u64,
    /// When this node received it, ms.
    pub received_ms: u64,
}

macro_rules! select_incoming {
    () => {
        "SELECT seq, id, sender, body, priority, kind, created_ms, expires_ms, received_ms \
         FROM inbox "
    };
}

fn incoming_from_row(r: &Row<'_>) -> rusqlite::Result<IncomingMessage> {
    Ok(IncomingMessage {
        seq: r.get(0)?,
        id: r.get(1)?,
        sender: r.get(2)?,
        body: r.get(3)?,
        priority: r.get(4)?,
        kind: r.get(5)?,
        created_ms: r.get(6)?,
        expires_ms: r.get(7)?,
        received_ms: r.get(8)?,
    })
}

impl Store {
    /// Stores a received message. Returns `true` if it is new, `false` if this sender's message
    /// with this id was already stored (nothing is written then).
    pub fn insert_incoming(&mut self, m: &NewIncoming) -> Result<bool, StoreError> {
        const OP: &str = "insert_incoming";
        let tx = self.write_tx(OP)?;
        let n = tx
            .prepare_cached(
                "INSERT INTO inbox (id, sender, body, priority, kind, created_ms, expires_ms, \
                 received_ms, envelope) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                 ON CONFLICT (sender, id) DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(params![
                    m.id,
                    m.sender,
                    m.body,
                    m.priority,
                    m.kind,
                    m.created_ms,
                    m.expires_ms,
                    m.received_ms,
                    m.envelope,
                ])
            })
            .map_err(sql(OP))?;
        tx.commit().map_err(sql(OP))?;
        Ok(n == 1)
    }

    /// Deletes received messages whose expiry is at or before `now_ms`. Returns how many.
    pub fn purge_inbox_expired(&mut self, now_ms: u64) -> Result<u64, StoreError> {
        self.conn
            .execute("DELETE FROM inbox WHERE expires_ms <= ?1", [now_ms])
            .map(|n| n as u64)
            .map_err(sql("purge_inbox_expired"))
    }

    /// Incoming messages (group control messages, kind 2, are the group
    /// engine's and not listed), optionally only from `peer`, with `seq > after_seq`, ascending by
    /// `seq`; at most `min(limit, MAX_PAGE)` rows.
    pub fn inbox(
        &self,
        peer: Option<&str>,
        after_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<IncomingMessage>, StoreError> {
        const OP: &str = "inbox";
        let mut stmt = self
            .conn
            .prepare_cached(concat!(
                select_incoming!(),
                "WHERE (?1 IS NULL OR sender = ?1) AND seq > ?2 AND kind != 2 \
                 ORDER BY seq ASC LIMIT ?3"
            ))
            .map_err(sql(OP))?;
        let rows = stmt
            .query_map(
                params![peer, after_seq.unwrap_or(i64::MIN), page(limit)],
                incoming_from_row,
            )
            .map_err(sql(OP))?;
        rows.collect::<Result<_, _>>().map_err(sql(OP))
    }

    /// The incoming message with this id. Ids are unique per sender; if two senders used the
    /// same id, the one stored first is returned.
    pub fn get_incoming(&self, id: &[u8; 16]) -> Result<Option<IncomingMessage>, StoreError> {
        self.conn
            .prepare_cached(concat!(
                select_incoming!(),
                "WHERE id = ?1 ORDER BY seq ASC LIMIT 1"
            ))
            .and_then(|mut s| s.query_row([id], incoming_from_row).optional())
            .map_err(sql("get_incoming"))
    }

    /// How many incoming messages are stored.
    pub fn incoming_count(&self) -> Result<u64, StoreError> {
        self.conn
            .prepare_cached("SELECT count(*) FROM inbox")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(sql("incoming_count"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming(n: u8, sender: &str) -> NewIncoming {
        NewIncoming {
            id: [n; 16],
            sender: sender.to_owned(),
            body: vec![n],
            priority: 3,
            kind: 1,
            created_ms: 10,
            expires_ms: 20,
            received_ms: 15,
            envelope: vec![0xee; 8],
        }
    }

    #[test]
    fn dedup_is_per_sender_and_id() {
        let mut store = Store::open_in_memory().unwrap();
        assert!(store.insert_incoming(&incoming(1, "alice")).unwrap());
        let mut again = incoming(1, "alice");
        again.body = b"different".to_vec();
        assert!(!store.insert_incoming(&again).unwrap());
        // The same id from another sender is another message.
        assert!(store.insert_incoming(&incoming(1, "mallory")).unwrap());
        assert_eq!(store.incoming_count().unwrap(), 2);
        let got = store.get_incoming(&[1; 16]).unwrap().unwrap();
        assert_eq!(
            (got.sender.as_str(), got.body.as_slice()),
            ("alice", &[1u8][..])
        );
        assert_eq!(
            (
                got.priority,
                got.kind,
                got.created_ms,
                got.expires_ms,
                got.received_ms
            ),
            (3, 1, 10, 20, 15)
        );
        assert_eq!(store.get_incoming(&[2; 16]).unwrap(), None);
    }

    #[test]
    fn expired_messages_are_purged() {
        let mut store = Store::open_in_memory().unwrap();
        store.insert_incoming(&incoming(1, "alice")).unwrap(); // expires at 20
        let mut later = incoming(2, "alice");
        later.expires_ms = 50;
        store.insert_incoming(&later).unwrap();
        assert_eq!(store.purge_inbox_expired(19).unwrap(), 0);
        assert_eq!(store.purge_inbox_expired(20).unwrap(), 1);
        assert_eq!(store.get_incoming(&[1; 16]).unwrap(), None);
        assert!(store.get_incoming(&[2; 16]).unwrap().is_some());
    }

    #[test]
    fn inbox_filters_by_peer_and_pages_by_seq() {
        let mut store = Store::open_in_memory().unwrap();
        for (n, from) in [(1, "alice"), (2, "bob"), (3, "alice"), (4, "alice")] {
            store.insert_incoming(&incoming(n, from)).unwrap();
        }
        // Group control messages (kind 2) are the group engine's: not listed.
        let mut control = incoming(9, "alice");
        control.kind = 2;
        store.insert_incoming(&control).unwrap();
        assert!(store
            .inbox(None, None, 100)
            .unwrap()
            .iter()
            .all(|m| m.id[0] != 9));
        let alice = store.inbox(Some("alice"), None, 2).unwrap();
        assert_eq!(
            alice.iter().map(|m| m.id[0]).collect::<Vec<_>>(),
            vec![1, 3]
        );
        let rest = store.inbox(Some("alice"), Some(alice[1].seq), 2).unwrap();
        assert_eq!(rest.iter().map(|m| m.id[0]).collect::<Vec<_>>(), vec![4]);
        assert_eq!(store.inbox(None, None, 0).unwrap(), vec![]);
        assert_eq!(store.inbox(None, None, 100).unwrap().len(), 4);
    }
}
