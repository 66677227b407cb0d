//! The mailbox: sealed items this node holds for other peers while they are offline.
//!
//! An item is an envelope for its recipient or a signed receipt for the sender of a message
//! (the receipt's "recipient" here is the one who fetches it). Items are stored until the
//! recipient acknowledges them or they expire. An acknowledged id leaves a tombstone until the
//! item would have expired, so a replica that re-replicates late cannot bring it back.
//!
//! A deposit is checked against [`MailboxQuotas`] inside the transaction that stores it, so two
//! deposits cannot both squeeze under a limit. Each item gets an increasing `seq`, the paging
//! cursor of [`Store::mailbox_fetch`], never reused.

use std::fmt;

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::error::{sql, StoreError};
use crate::{page, Store};

/// What a mailbox item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MailKind {
    /// A sealed envelope for the recipient.
    Envelope,
    /// A signed delivery receipt for the sender of a message.
    Receipt,
}

impl MailKind {
    /// The name stored in the database (`"envelope"`, `"receipt"`).
    pub fn as_str(self) -> &'static str {
        match self {
            MailKind::Envelope => "envelope",
            MailKind::Receipt => "receipt",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [MailKind::Envelope, MailKind::Receipt]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// An item to deposit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMailItem {
    /// The message id (for a receipt, the id of the message it acknowledges).
    pub id: [u8; 16],
    /// Envelope or receipt.
    pub kind: MailKind,
    /// The peer that may fetch it (base58).
    pub recipient: String,
    /// The peer that signed it (the envelope's sender, the receipt's signer), base58; quotas
    /// are counted per depositor.
    pub depositor: String,
    /// The encoded envelope or signed receipt.
    pub item: Vec<u8>,
    /// When it stops being deliverable, ms.
    pub expires_ms: u64,
    /// When this mailbox stored it, ms.
    pub stored_ms: u64,
}

/// An item held for a recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailItem {
    /// Position in this mailbox; the paging cursor.
    pub seq: i64,
    /// The message id.
    pub id: [u8; 16],
    /// Envelope or receipt.
    pub kind: MailKind,
    /// The peer that may fetch it (base58).
    pub recipient: String,
    /// The peer that signed it (base58).
    pub depositor: String,
    /// The encoded envelope or signed receipt.
    pub item: Vec<u8>,
    /// When it stops being deliverable, ms.
    pub expires_ms: u64,
    /// When this mailbox stored it, ms.
    pub stored_ms: u64,
}

/// Limits a mailbox enforces on deposits (0 = no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MailboxQuotas {
    /// Items held for one recipient.
    pub per_recipient_items: u64,
    /// Bytes held for one recipient.
    pub per_recipient_bytes: u64,
    /// Items held from one depositor (over all recipients).
    pub per_depositor_items: u64,
    /// Bytes held from one depositor (over all recipients).
    pub per_depositor_bytes: u64,
    /// Items one depositor may have here for one recipient.
    pub per_pair_items: u64,
    /// Bytes held in the whole mailbox.
    pub total_bytes: u64,
}

/// Which quota refused a deposit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaExceeded {
    /// The recipient has `limit` items here already.
    RecipientItems {
        /// The limit.
        limit: u64,
    },
    /// The recipient's items here would pass `limit` bytes.
    RecipientBytes {
        /// The limit.
        limit: u64,
    },
    /// The depositor has `limit` items here already.
    DepositorItems {
        /// The limit.
        limit: u64,
    },
    /// The depositor's items here would pass `limit` bytes.
    DepositorBytes {
        /// The limit.
        limit: u64,
    },
    /// The depositor has `limit` items here for this recipient already.
    PairItems {
        /// The limit.
        limit: u64,
    },
    /// The mailbox would pass `limit` bytes in all.
    Full {
        /// The limit.
        limit: u64,
    },
}

impl fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuotaExceeded::RecipientItems { limit } => {
                write!(f, "the recipient has {limit} items waiting here (the most)")
            }
            QuotaExceeded::RecipientBytes { limit } => {
                write!(f, "the recipient's items here would pass {limit} bytes")
            }
            QuotaExceeded::DepositorItems { limit } => {
                write!(f, "you have {limit} items waiting here (the most)")
            }
            QuotaExceeded::DepositorBytes { limit } => {
                write!(f, "your items here would pass {limit} bytes")
            }
            QuotaExceeded::PairItems { limit } => {
                write!(
                    f,
                    "you have {limit} items waiting here for this recipient (the most)"
                )
            }
            QuotaExceeded::Full { limit } => write!(f, "this mailbox is full ({limit} bytes)"),
        }
    }
}

/// What became of a deposit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepositOutcome {
    /// Stored now.
    Stored,
    /// Already held: nothing written.
    Duplicate,
    /// The recipient acknowledged this id already: nothing written.
    Acknowledged,
    /// A quota refused it: nothing written.
    Refused(QuotaExceeded),
}

/// What a mailbox holds, for its operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MailboxStats {
    /// Items held.
    pub items: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Recipients with items.
    pub recipients: u64,
    /// Depositors with items.
    pub depositors: u64,
    /// Acknowledged ids remembered.
    pub tombstones: u64,
}

/// Items and tombstones removed by [`Store::mailbox_purge_expired`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MailboxPurge {
    /// Expired items deleted.
    pub items: u64,
    /// Expired tombstones deleted.
    pub tombstones: u64,
}

macro_rules! select_item {
    () => {
        "SELECT seq, id, kind, recipient, depositor, item, expires_ms, stored_ms FROM mailbox "
    };
}

fn item_from_row(r: &Row<'_>) -> rusqlite::Result<MailItem> {
    let kind: String = r.get(2)?;
    Ok(MailItem {
        seq: r.get(0)?,
        id: r.get(1)?,
        kind: MailKind::parse(&kind).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                2,
                rusqlite::types::Type::Text,
                format!("unknown mailbox item kind {kind:?}").into(),
            )
        })?,
        recipient: r.get(3)?,
        depositor: r.get(4)?,
        item: r.get(5)?,
        expires_ms: r.get(6)?,
        stored_ms: r.get(7)?,
    })
}

/// `(items, bytes)` matching `filter` (a `WHERE` clause over one `?1`).
fn usage(tx: &Connection, filter: &str, value: &str) -> rusqlite::Result<(u64, u64)> {
    tx.prepare_cached(&format!(
        "SELECT count(*), COALESCE(SUM(length(item)), 0) FROM mailbox WHERE {filter}"
    ))?
    .query_row([value], |r| Ok((r.get(0)?, r.get(1)?)))
}

/// The first quota a new item of `bytes` bytes would break.
fn check_quotas(
    tx: &Connection,
    item: &NewMailItem,
    q: &MailboxQuotas,
) -> rusqlite::Result<Option<QuotaExceeded>> {
    let bytes = item.item.len() as u64;
    let over = |limit: u64, used: u64| limit != 0 && used > limit;
    let (n, b) = usage(tx, "recipient = ?1", &item.recipient)?;
    if over(q.per_recipient_items, n + 1) {
        return Ok(Some(QuotaExceeded::RecipientItems {
            limit: q.per_recipient_items,
        }));
    }
    if over(q.per_recipient_bytes, b + bytes) {
        return Ok(Some(QuotaExceeded::RecipientBytes {
            limit: q.per_recipient_bytes,
        }));
    }
    let (n, b) = usage(tx, "depositor = ?1", &item.depositor)?;
    if over(q.per_depositor_items, n + 1) {
        return Ok(Some(QuotaExceeded::DepositorItems {
            limit: q.per_depositor_items,
        }));
    }
    if over(q.per_depositor_bytes, b + bytes) {
        return Ok(Some(QuotaExceeded::DepositorBytes {
            limit: q.per_depositor_bytes,
        }));
    }
    if q.per_pair_items != 0 {
        let n: u64 = tx
            .prepare_cached("SELECT count(*) FROM mailbox WHERE recipient = ?1 AND depositor = ?2")?
            .query_row([&item.recipient, &item.depositor], |r| r.get(0))?;
        if n + 1 > q.per_pair_items {
            return Ok(Some(QuotaExceeded::PairItems {
                limit: q.per_pair_items,
            }));
        }
    }
    if q.total_bytes != 0 {
        let total: u64 = tx
            .prepare_cached("SELECT COALESCE(SUM(length(item)), 0) FROM mailbox")?
            .query_row([], |r| r.get(0))?;
        if total + bytes > q.total_bytes {
            return Ok(Some(QuotaExceeded::Full {
                limit: q.total_bytes,
            }));
        }
    }
    Ok(None)
}

impl Store {
    /// Stores `item` unless it is held already, was acknowledged, or breaks a quota. The item
    /// is committed before this returns [`DepositOutcome::Stored`].
    pub fn mailbox_deposit(
        &mut self,
        item: &NewMailItem,
        quotas: &MailboxQuotas,
    ) -> Result<DepositOutcome, StoreError> {
        const OP: &str = "mailbox_deposit";
        let tx = self.write_tx(OP)?;
        let acked = tx
            .prepare_cached("SELECT 1 FROM mailbox_acked WHERE recipient = ?1 AND id = ?2")
            .and_then(|mut s| {
                s.query_row(params![item.recipient, item.id], |_| Ok(()))
                    .optional()
            })
            .map_err(sql(OP))?;
        if acked.is_some() {
            return Ok(DepositOutcome::Acknowledged);
        }
        let held = tx
            .prepare_cached("SELECT 1 FROM mailbox WHERE recipient = ?1 AND id = ?2 AND kind = ?3")
            .and_then(|mut s| {
                s.query_row(params![item.recipient, item.id, item.kind.as_str()], |_| {
                    Ok(())
                })
                .optional()
            })
            .map_err(sql(OP))?;
        if held.is_some() {
            return Ok(DepositOutcome::Duplicate);
        }
        if let Some(refusal) = check_quotas(&tx, item, quotas).map_err(sql(OP))? {
            return Ok(DepositOutcome::Refused(refusal));
        }
        tx.prepare_cached(
            "INSERT INTO mailbox (id, kind, recipient, depositor, item, expires_ms, stored_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .and_then(|mut s| {
            s.execute(params![
                item.id,
                item.kind.as_str(),
                item.recipient,
                item.depositor,
                item.item,
                item.expires_ms,
                item.stored_ms,
            ])
        })
        .map_err(sql(OP))?;
        tx.commit().map_err(sql(OP))?;
        Ok(DepositOutcome::Stored)
    }

    /// Items held for `recipient` with `seq > after_seq` that have not expired at `now_ms`,
    /// ascending by `seq`; at most `min(limit, MAX_PAGE)` rows.
    pub fn mailbox_fetch(
        &self,
        recipient: &str,
        after_seq: Option<i64>,
        now_ms: u64,
        limit: u32,
    ) -> Result<Vec<MailItem>, StoreError> {
        const OP: &str = "mailbox_fetch";
        let mut stmt = self
            .conn
            .prepare_cached(concat!(
                select_item!(),
                "WHERE recipient = ?1 AND seq > ?2 AND expires_ms > ?3 ORDER BY seq LIMIT ?4"
            ))
            .map_err(sql(OP))?;
        let rows = stmt
            .query_map(
                params![recipient, after_seq.unwrap_or(0), now_ms, page(limit)],
                item_from_row,
            )
            .map_err(sql(OP))?;
        rows.collect::<Result<_, _>>().map_err(sql(OP))
    }

    /// The recipient acknowledged `ids`: deletes what is held of them (envelopes and receipts)
    /// and remembers each id until `keep_until_ms` (or the item's own expiry, if later), so a
    /// late replica cannot deposit it again. Returns how many items were deleted.
    pub fn mailbox_ack(
        &mut self,
        recipient: &str,
        ids: &[[u8; 16]],
        keep_until_ms: u64,
    ) -> Result<u64, StoreError> {
        const OP: &str = "mailbox_ack";
        let tx = self.write_tx(OP)?;
        let mut deleted = 0u64;
        for id in ids {
            let expires: Option<u64> = tx
                .prepare_cached(
                    "SELECT MAX(expires_ms) FROM mailbox WHERE recipient = ?1 AND id = ?2",
                )
                .and_then(|mut s| s.query_row(params![recipient, id], |r| r.get(0)))
                .map_err(sql(OP))?;
            deleted += tx
                .prepare_cached("DELETE FROM mailbox WHERE recipient = ?1 AND id = ?2")
                .and_then(|mut s| s.execute(params![recipient, id]))
                .map_err(sql(OP))? as u64;
            let until = expires.map_or(keep_until_ms, |e| e.max(keep_until_ms));
            tx.prepare_cached(
                "INSERT INTO mailbox_acked (recipient, id, expires_ms) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (recipient, id) DO UPDATE SET \
                 expires_ms = MAX(expires_ms, excluded.expires_ms)",
            )
            .and_then(|mut s| s.execute(params![recipient, id, until]))
            .map_err(sql(OP))?;
        }
        tx.commit().map_err(sql(OP))?;
        Ok(deleted)
    }

    /// Whether `recipient` acknowledged `id` here (and the tombstone has not expired yet).
    pub fn mailbox_acked(&self, recipient: &str, id: &[u8; 16]) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("SELECT 1 FROM mailbox_acked WHERE recipient = ?1 AND id = ?2")
            .and_then(|mut s| s.query_row(params![recipient, id], |_| Ok(())).optional())
            .map(|r| r.is_some())
            .map_err(sql("mailbox_acked"))
    }

    /// Whether an item with `id` for `recipient` is held here or was acknowledged (a replica
    /// offered it need not be sent).
    pub fn mailbox_holds(&self, recipient: &str, id: &[u8; 16]) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM mailbox WHERE recipient = ?1 AND id = ?2) \
                 OR EXISTS (SELECT 1 FROM mailbox_acked WHERE recipient = ?1 AND id = ?2)",
            )
            .and_then(|mut s| s.query_row(params![recipient, id], |r| r.get(0)))
            .map_err(sql("mailbox_holds"))
    }

    /// Ids of the unexpired items held for `recipient`, oldest first, at most
    /// `min(limit, MAX_PAGE)` (what a holder offers to the recipient's other mailboxes).
    pub fn mailbox_ids(
        &self,
        recipient: &str,
        now_ms: u64,
        limit: u32,
    ) -> Result<Vec<[u8; 16]>, StoreError> {
        const OP: &str = "mailbox_ids";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id FROM mailbox WHERE recipient = ?1 AND expires_ms > ?2 \
                 ORDER BY seq LIMIT ?3",
            )
            .map_err(sql(OP))?;
        let rows = stmt
            .query_map(params![recipient, now_ms, page(limit)], |r| r.get(0))
            .map_err(sql(OP))?;
        rows.collect::<Result<_, _>>().map_err(sql(OP))
    }

    /// The unexpired items held for `recipient` among `ids` (to copy to another mailbox).
    pub fn mailbox_items(
        &self,
        recipient: &str,
        ids: &[[u8; 16]],
        now_ms: u64,
    ) -> Result<Vec<MailItem>, StoreError> {
        const OP: &str = "mailbox_items";
        let mut stmt = self
            .conn
            .prepare_cached(concat!(
                select_item!(),
                "WHERE recipient = ?1 AND id = ?2 AND expires_ms > ?3"
            ))
            .map_err(sql(OP))?;
        let mut items = Vec::with_capacity(ids.len());
        for id in ids {
            let rows = stmt
                .query_map(params![recipient, id, now_ms], item_from_row)
                .map_err(sql(OP))?;
            for row in rows {
                items.push(row.map_err(sql(OP))?);
            }
        }
        Ok(items)
    }

    /// Deletes what is held of `ids` for `recipient` without a tombstone: the copies were
    /// handed to mailboxes closer to the recipient, and a later deposit may store them again.
    /// Returns how many items were deleted.
    pub fn mailbox_release(
        &mut self,
        recipient: &str,
        ids: &[[u8; 16]],
    ) -> Result<u64, StoreError> {
        const OP: &str = "mailbox_release";
        let tx = self.write_tx(OP)?;
        let mut deleted = 0u64;
        for id in ids {
            deleted += tx
                .prepare_cached("DELETE FROM mailbox WHERE recipient = ?1 AND id = ?2")
                .and_then(|mut s| s.execute(params![recipient, id]))
                .map_err(sql(OP))? as u64;
        }
        tx.commit().map_err(sql(OP))?;
        Ok(deleted)
    }

    /// Recipients with items held, after `after` in lexical order, at most
    /// `min(limit, MAX_PAGE)` (for re-replication, which walks them all page by page).
    pub fn mailbox_recipients(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        const OP: &str = "mailbox_recipients";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT DISTINCT recipient FROM mailbox WHERE recipient > ?1 \
                 ORDER BY recipient LIMIT ?2",
            )
            .map_err(sql(OP))?;
        let rows = stmt
            .query_map(params![after.unwrap_or(""), page(limit)], |r| r.get(0))
            .map_err(sql(OP))?;
        rows.collect::<Result<_, _>>().map_err(sql(OP))
    }

    /// Deletes items and tombstones whose expiry is at or before `now_ms`.
    pub fn mailbox_purge_expired(&mut self, now_ms: u64) -> Result<MailboxPurge, StoreError> {
        const OP: &str = "mailbox_purge_expired";
        let tx = self.write_tx(OP)?;
        let items = tx
            .execute("DELETE FROM mailbox WHERE expires_ms <= ?1", [now_ms])
            .map_err(sql(OP))? as u64;
        let tombstones = tx
            .execute("DELETE FROM mailbox_acked WHERE expires_ms <= ?1", [now_ms])
            .map_err(sql(OP))? as u64;
        tx.commit().map_err(sql(OP))?;
        Ok(MailboxPurge { items, tombstones })
    }

    /// Replaces the remembered set of this node's own mailboxes (nearest first), so a restart
    /// can fetch from them before any lookup.
    pub fn save_own_mailboxes(&mut self, peers: &[String], now_ms: u64) -> Result<(), StoreError> {
        const OP: &str = "save_own_mailboxes";
        let tx = self.write_tx(OP)?;
        tx.execute("DELETE FROM own_mailboxes", [])
            .map_err(sql(OP))?;
        for (rank, peer) in peers.iter().enumerate() {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO own_mailboxes (peer_id, rank, updated_ms) \
                 VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute(params![peer, rank as i64, now_ms]))
            .map_err(sql(OP))?;
        }
        tx.commit().map_err(sql(OP))
    }

    /// The remembered set of this node's own mailboxes, nearest first.
    pub fn own_mailboxes(&self) -> Result<Vec<String>, StoreError> {
        const OP: &str = "own_mailboxes";
        let mut stmt = self
            .conn
            .prepare_cached("SELECT peer_id FROM own_mailboxes ORDER BY rank LIMIT 64")
            .map_err(sql(OP))?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(sql(OP))?;
        rows.collect::<Result<_, _>>().map_err(sql(OP))
    }

    /// What the mailbox holds.
    pub fn mailbox_stats(&self) -> Result<MailboxStats, StoreError> {
        const OP: &str = "mailbox_stats";
        let (items, bytes, recipients, depositors) = self
            .conn
            .query_row(
                "SELECT count(*), COALESCE(SUM(length(item)), 0), count(DISTINCT recipient), \
                 count(DISTINCT depositor) FROM mailbox",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .map_err(sql(OP))?;
        let tombstones = self
            .conn
            .query_row("SELECT count(*) FROM mailbox_acked", [], |r| r.get(0))
            .map_err(sql(OP))?;
        Ok(MailboxStats {
            items,
            bytes,
            recipients,
            depositors,
            tombstones,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: u8, recipient: &str, depositor: &str, bytes: usize) -> NewMailItem {
        NewMailItem {
            id: [id; 16],
            kind: MailKind::Envelope,
            recipient: recipient.into(),
            depositor: depositor.into(),
            item: vec![id; bytes],
            expires_ms: 1_000,
            stored_ms: 10,
        }
    }

    const NO_LIMITS: MailboxQuotas = MailboxQuotas {
        per_recipient_items: 0,
        per_recipient_bytes: 0,
        per_depositor_items: 0,
        per_depositor_bytes: 0,
        per_pair_items: 0,
        total_bytes: 0,
    };

    #[test]
    fn deposit_fetch_page_and_deduplicate() {
        let mut store = Store::open_in_memory().unwrap();
        for id in 1..=5 {
            let outcome = store
                .mailbox_deposit(&item(id, "bob", "alice", 10), &NO_LIMITS)
                .unwrap();
            assert_eq!(outcome, DepositOutcome::Stored);
        }
        assert_eq!(
            store
                .mailbox_deposit(&item(3, "bob", "alice", 10), &NO_LIMITS)
                .unwrap(),
            DepositOutcome::Duplicate
        );
        // Another recipient's items are not bob's.
        store
            .mailbox_deposit(&item(9, "carol", "alice", 10), &NO_LIMITS)
            .unwrap();
        let first = store.mailbox_fetch("bob", None, 20, 2).unwrap();
        assert_eq!(
            first.iter().map(|m| m.id[0]).collect::<Vec<_>>(),
            vec![1, 2]
        );
        let rest = store
            .mailbox_fetch("bob", Some(first[1].seq), 20, 10)
            .unwrap();
        assert_eq!(
            rest.iter().map(|m| m.id[0]).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(rest[0].depositor, "alice");
        assert_eq!(rest[0].kind, MailKind::Envelope);
        assert_eq!(rest[0].item, vec![3; 10]);
        // Nothing is served once expired.
        assert!(store
            .mailbox_fetch("bob", None, 1_000, 10)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn an_acknowledged_id_is_deleted_and_never_stored_again() {
        let mut store = Store::open_in_memory().unwrap();
        store
            .mailbox_deposit(&item(1, "bob", "alice", 10), &NO_LIMITS)
            .unwrap();
        let mut receipt = item(1, "bob", "carol", 5);
        receipt.kind = MailKind::Receipt;
        store.mailbox_deposit(&receipt, &NO_LIMITS).unwrap();
        // Only the recipient's own ack counts: carol acking bob's id deletes nothing of bob's.
        assert_eq!(store.mailbox_ack("carol", &[[1; 16]], 500).unwrap(), 0);
        assert_eq!(
            store.mailbox_ack("bob", &[[1; 16], [2; 16]], 500).unwrap(),
            2
        );
        assert!(store.mailbox_fetch("bob", None, 20, 10).unwrap().is_empty());
        assert!(store.mailbox_acked("bob", &[1; 16]).unwrap());
        assert!(store.mailbox_holds("bob", &[1; 16]).unwrap());
        assert!(!store.mailbox_holds("bob", &[3; 16]).unwrap());
        // An id acked before any copy arrived is refused too (a late replica).
        assert!(store.mailbox_acked("bob", &[2; 16]).unwrap());
        for id in [1, 2] {
            assert_eq!(
                store
                    .mailbox_deposit(&item(id, "bob", "alice", 10), &NO_LIMITS)
                    .unwrap(),
                DepositOutcome::Acknowledged
            );
        }
        // A held item's tombstone lasts as long as the item would have (1,000 > 500); the
        // others (bob's id 2, carol's id 1) go at 500.
        let purged = store.mailbox_purge_expired(999).unwrap();
        assert_eq!(
            purged,
            MailboxPurge {
                items: 0,
                tombstones: 2
            }
        );
        assert!(store.mailbox_acked("bob", &[1; 16]).unwrap());
        assert!(!store.mailbox_acked("bob", &[2; 16]).unwrap());
        let purged = store.mailbox_purge_expired(1_000).unwrap();
        assert_eq!(
            purged,
            MailboxPurge {
                items: 0,
                tombstones: 1
            }
        );
        assert_eq!(store.mailbox_stats().unwrap().tombstones, 0);
    }

    #[test]
    fn a_holder_lists_reads_and_releases_what_it_hands_off() {
        let mut store = Store::open_in_memory().unwrap();
        for id in 1..=3 {
            store
                .mailbox_deposit(&item(id, "bob", "alice", 10), &NO_LIMITS)
                .unwrap();
        }
        let mut soon = item(4, "bob", "alice", 10);
        soon.expires_ms = 100;
        store.mailbox_deposit(&soon, &NO_LIMITS).unwrap();
        store
            .mailbox_deposit(&item(5, "carol", "alice", 10), &NO_LIMITS)
            .unwrap();
        // Expired items are not offered; the limit holds.
        let ids = store.mailbox_ids("bob", 100, 10).unwrap();
        assert_eq!(ids, vec![[1; 16], [2; 16], [3; 16]]);
        assert_eq!(store.mailbox_ids("bob", 100, 2).unwrap().len(), 2);
        // Only what is asked for, for that recipient, and unexpired.
        let items = store
            .mailbox_items("bob", &[[2; 16], [4; 16], [5; 16]], 100)
            .unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].id, [2; 16]);
        assert_eq!(items[0].item, vec![2; 10]);
        // Released copies leave no tombstone: the item may be deposited again.
        assert_eq!(
            store.mailbox_release("bob", &[[1; 16], [5; 16]]).unwrap(),
            1
        );
        assert!(!store.mailbox_holds("bob", &[1; 16]).unwrap());
        assert_eq!(
            store
                .mailbox_deposit(&item(1, "bob", "alice", 10), &NO_LIMITS)
                .unwrap(),
            DepositOutcome::Stored
        );
        assert_eq!(store.mailbox_ids("carol", 100, 10).unwrap(), vec![[5; 16]]);
    }

    #[test]
    fn the_own_mailbox_set_is_replaced_and_kept_in_order() {
        let mut store = Store::open_in_memory().unwrap();
        assert!(store.own_mailboxes().unwrap().is_empty());
        let first: Vec<String> = ["c", "a", "b"].map(String::from).to_vec();
        store.save_own_mailboxes(&first, 1).unwrap();
        assert_eq!(store.own_mailboxes().unwrap(), first);
        let second: Vec<String> = ["d", "c"].map(String::from).to_vec();
        store.save_own_mailboxes(&second, 2).unwrap();
        assert_eq!(store.own_mailboxes().unwrap(), second);
    }

    #[test]
    fn expired_items_are_purged() {
        let mut store = Store::open_in_memory().unwrap();
        let mut soon = item(1, "bob", "alice", 10);
        soon.expires_ms = 100;
        store.mailbox_deposit(&soon, &NO_LIMITS).unwrap();
        store
            .mailbox_deposit(&item(2, "bob", "alice", 10), &NO_LIMITS)
            .unwrap();
        let purged = store.mailbox_purge_expired(100).unwrap();
        assert_eq!(purged.items, 1);
        let left = store.mailbox_fetch("bob", None, 0, 10).unwrap();
        assert_eq!(left.iter().map(|m| m.id[0]).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn each_quota_refuses_with_its_reason_and_writes_nothing() {
        let cases = [
            (
                MailboxQuotas {
                    per_recipient_items: 2,
                    ..NO_LIMITS
                },
                QuotaExceeded::RecipientItems { limit: 2 },
            ),
            (
                MailboxQuotas {
                    per_recipient_bytes: 25,
                    ..NO_LIMITS
                },
                QuotaExceeded::RecipientBytes { limit: 25 },
            ),
            (
                MailboxQuotas {
                    per_depositor_items: 2,
                    ..NO_LIMITS
                },
                QuotaExceeded::DepositorItems { limit: 2 },
            ),
            (
                MailboxQuotas {
                    per_depositor_bytes: 25,
                    ..NO_LIMITS
                },
                QuotaExceeded::DepositorBytes { limit: 25 },
            ),
            (
                MailboxQuotas {
                    per_pair_items: 2,
                    ..NO_LIMITS
                },
                QuotaExceeded::PairItems { limit: 2 },
            ),
            (
                MailboxQuotas {
                    total_bytes: 25,
                    ..NO_LIMITS
                },
                QuotaExceeded::Full { limit: 25 },
            ),
        ];
        for (quotas, refusal) in cases {
            let mut store = Store::open_in_memory().unwrap();
            for id in 1..=2 {
                assert_eq!(
                    store
                        .mailbox_deposit(&item(id, "bob", "alice", 10), &quotas)
                        .unwrap(),
                    DepositOutcome::Stored,
                    "{refusal:?}"
                );
            }
            assert_eq!(
                store
                    .mailbox_deposit(&item(3, "bob", "alice", 10), &quotas)
                    .unwrap(),
                DepositOutcome::Refused(refusal)
            );
            assert_eq!(store.mailbox_stats().unwrap().items, 2, "{refusal:?}");
            assert!(!refusal.to_string().is_empty());
        }
    }

    #[test]
    fn a_flooding_depositor_does_not_block_others() {
        let mut store = Store::open_in_memory().unwrap();
        let quotas = MailboxQuotas {
            per_pair_items: 3,
            ..NO_LIMITS
        };
        let mut refused = 0;
        for id in 1..=10 {
            if let DepositOutcome::Refused(QuotaExceeded::PairItems { limit: 3 }) = store
                .mailbox_deposit(&item(id, "bob", "mallory", 10), &quotas)
                .unwrap()
            {
                refused += 1;
            }
        }
        assert_eq!(refused, 7);
        assert_eq!(
            store
                .mailbox_deposit(&item(50, "bob", "alice", 10), &quotas)
                .unwrap(),
            DepositOutcome::Stored
        );
    }

    #[test]
    fn recipients_are_paged_and_stats_add_up() {
        let mut store = Store::open_in_memory().unwrap();
        for (id, to) in [(1, "a"), (2, "b"), (3, "b"), (4, "c")] {
            store
                .mailbox_deposit(&item(id, to, "x", 10), &NO_LIMITS)
                .unwrap();
        }
        let first = store.mailbox_recipients(None, 2).unwrap();
        assert_eq!(first, vec!["a", "b"]);
        assert_eq!(store.mailbox_recipients(Some("b"), 2).unwrap(), vec!["c"]);
        let stats = store.mailbox_stats().unwrap();
        assert_eq!(
            stats,
            MailboxStats {
                items: 4,
                bytes: 40,
                recipients: 3,
                depositors: 1,
                tombstones: 0
            }
        );
    }

    #[test]
    fn a_deposit_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        {
            let mut store = Store::open(&path).unwrap();
            store
                .mailbox_deposit(&item(1, "bob", "alice", 10), &NO_LIMITS)
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.mailbox_fetch("bob", None, 0, 10).unwrap().len(), 1);
    }
}
