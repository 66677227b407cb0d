//! The outbox: messages this node sends, their delivery state and retry schedule.
//!
//! A message enters as [`DeliveryState::Queued`] and moves through the non-terminal states
//! (`sent`, `routed`, `onion`, `stored`) in any order the delivery logic decides, until it
//! reaches a terminal state (`delivered`, `expired`, `failed`), which it never leaves. The
//! store keeps the retry schedule (`next_attempt_ms`) but does not compute it: the caller's
//! backoff policy passes it to [`Store::record_attempt`].

use std::fmt;
use std::str::FromStr;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{params, OptionalExtension, Row, ToSql};

use crate::error::{sql, StoreError};
use crate::receipts::ReceiptRow;
use crate::{page, Route, Store};

/// Where an outgoing message is on its way to the recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeliveryState {
    /// Accepted and durable; not sent yet (or waiting for a retry).
    Queued,
    /// Sent directly to the recipient; waiting for a receipt.
    Sent,
    /// Handed to a relay route; waiting for a receipt.
    Routed,
    /// Sent along an onion path; waiting for a receipt.
    Onion,
    /// Deposited in the recipient's mailboxes; waiting for a receipt.
    Stored,
    /// The recipient's signed receipt arrived (terminal).
    Delivered,
    /// The message's expiry passed before delivery (terminal).
    Expired,
    /// Delivery was given up (terminal; the reason is in `last_error`).
    Failed,
}

impl DeliveryState {
    /// Every state, in lifecycle order.
    pub const ALL: [DeliveryState; 8] = [
        DeliveryState::Queued,
        DeliveryState::Sent,
        DeliveryState::Routed,
        DeliveryState::Onion,
        DeliveryState::Stored,
        DeliveryState::Delivered,
        DeliveryState::Expired,
        DeliveryState::Failed,
    ];

    /// The lowercase name stored in the database and shown in the API (`"queued"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Queued => "queued",
            DeliveryState::Sent => "sent",
            DeliveryState::Routed => "routed",
            DeliveryState::Onion => "onion",
            DeliveryState::Stored => "stored",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Expired => "expired",
            DeliveryState::Failed => "failed",
        }
    }

    /// Whether the state is final (delivered, expired or failed).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            DeliveryState::Delivered | DeliveryState::Expired | DeliveryState::Failed
        )
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`DeliveryState`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown delivery state {0:?}")]
pub struct ParseStateError(pub String);

impl FromStr for DeliveryState {
    type Err = ParseStateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeliveryState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| ParseStateError(s.to_owned()))
    }
}

impl ToSql for DeliveryState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for DeliveryState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

/// A message to put in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOutgoing {
    /// Message id (unique in the outbox).
    pub id: [u8; 16],
    /// Recipient peer id (base58).
    pub recipient: String,
    /// Plaintext body (sealed later, see [`Store::set_envelope`]).
    pub body: Vec<u8>,
    /// Priority class; lower is more urgent.
    pub priority: u8,
    /// Message kind.
    pub kind: u8,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
    /// Expiry time, ms since the Unix epoch.
    pub expires_ms: u64,
    /// How the sender wants it routed.
    pub route: Route,
}

/// A message in the outbox with its delivery progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// Message id.
    pub id: [u8; 16],
    /// Recipient peer id (base58).
    pub recipient: String,
    /// Plaintext body.
    pub body: Vec<u8>,
    /// Priority class; lower is more urgent.
    pub priority: u8,
    /// Message kind.
    pub kind: u8,
    /// Creation time, ms.
    pub created_ms: u64,
    /// Expiry time, ms.
    pub expires_ms: u64,
    /// Delivery state.
    pub state: DeliveryState,
    /// Send attempts so far.
    pub attempts: u32,
    /// When the last attempt was made, ms.
    pub last_attempt_ms: Option<u64>,
    /// When the next attempt is due, ms.
    pub next_attempt_ms: u64,
    /// Why the last attempt (or the message) failed.
    pub last_error: Option<String>,
    /// The sealed envelope, once built, so retries resend the same bytes.
    pub envelope: Option<Vec<u8>>,
    /// When the receipt arrived, ms.
    pub delivered_ms: Option<u64>,
    /// When the row last changed, ms.
    pub updated_ms: u64,
    /// Hops of the route or onion path used, if any.
    pub hops: Option<u32>,
    /// Mailboxes holding a replica, if deposited.
    pub replicas: Option<u32>,
    /// How the sender wants it routed.
    pub route: Route,
}

impl OutgoingMessage {
    /// Whether at least `r` of the recipient's mailboxes hold it (state `stored`).
    pub fn held_by(&self, r: u32) -> bool {
        self.state == DeliveryState::Stored && self.replicas.unwrap_or(0) >= r.max(1)
    }
}

macro_rules! select_outgoing {
    () => {
        "SELECT seq, id, recipient, body, priority, kind, created_ms, expires_ms, state, \
         attempts, last_attempt_ms, next_attempt_ms, last_error, envelope, delivered_ms, \
         updated_ms, hops, replicas, route FROM outbox "
    };
}

/// Reads a row of `select_outgoing!()` as `(seq, message)`.
fn outgoing_from_row(r: &Row<'_>) -> rusqlite::Result<(i64, OutgoingMessage)> {
    Ok((
        r.get(0)?,
        OutgoingMessage {
            id: r.get(1)?,
            recipient: r.get(2)?,
            body: r.get(3)?,
            priority: r.get(4)?,
            kind: r.get(5)?,
            created_ms: r.get(6)?,
            expires_ms: r.get(7)?,
            state: r.get(8)?,
            attempts: r.get(9)?,
            last_attempt_ms: r.get(10)?,
            next_attempt_ms: r.get(11)?,
            last_error: r.get(12)?,
            envelope: r.get(13)?,
            delivered_ms: r.get(14)?,
            updated_ms: r.get(15)?,
            hops: r.get(16)?,
            replicas: r.get(17)?,
            route: r.get(18)?,
        },
    ))
}

impl Store {
    /// Adds a message to the outbox as `queued`, due at once (`next_attempt_ms = created_ms`).
    /// Fails with [`StoreError::Duplicate`] if the id is already there. Times must fit in
    /// `i64` (as all times in the store).
    pub fn insert_outgoing(&mut self, m: &NewOutgoing) -> Result<(), StoreError> {
        const OP: &str = "insert_outgoing";
        let tx = self.write_tx(OP)?;
        let inserted = tx
            .prepare_cached(
                "INSERT INTO outbox (id, recipient, body, priority, kind, created_ms, expires_ms, \
                 state, attempts, next_attempt_ms, updated_ms, route) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?6, ?6, ?9) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(params![
                    m.id,
                    m.recipient,
                    m.body,
                    m.priority,
                    m.kind,
                    m.created_ms,
                    m.expires_ms,
                    DeliveryState::Queued,
                    m.route,
                ])
            })
            .map_err(sql(OP))?;
        if inserted == 0 {
            return Err(StoreError::Duplicate { id: m.id });
        }
        tx.commit().map_err(sql(OP))
    }

    /// The outgoing message with this id, if any.
    pub fn get_outgoing(&self, id: &[u8; 16]) -> Result<Option<OutgoingMessage>, StoreError> {
        const OP: &str = "get_outgoing";
        self.conn
            .prepare_cached(concat!(select_outgoing!(), "WHERE id = ?1"))
            .and_then(|mut s| s.query_row([id], outgoing_from_row).optional())
            .map(|row| row.map(|(_, m)| m))
            .map_err(sql(OP))
    }

    /// Stores the sealed envelope so every retry resends the same bytes.
    pub fn set_envelope(&mut self, id: &[u8; 16], envelope: &[u8]) -> Result<(), StoreError> {
        self.update_one(
            "set_envelope",
            id,
            "UPDATE outbox SET envelope = ?2 WHERE id = ?1",
            &[&envelope],
        )
    }

    /// Records the hop count of the route or onion path used.
    pub fn set_hops(&mut self, id: &[u8; 16], hops: u32, now_ms: u64) -> Result<(), StoreError> {
        self.update_one(
            "set_hops",
            id,
            "UPDATE outbox SET hops = ?2, updated_ms = ?3 WHERE id = ?1",
            &[&hops, &now_ms],
        )
    }

    /// Records how many mailboxes hold a replica.
    pub fn set_replicas(
        &mut self,
        id: &[u8; 16],
        replicas: u32,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.update_one(
            "set_replicas",
            id,
            "UPDATE outbox SET replicas = ?2, updated_ms = ?3 WHERE id = ?1",
            &[&replicas, &now_ms],
        )
    }

    /// Messages due for an attempt: non-terminal, `next_attempt_ms <= now_ms`, not expired;
    /// most urgent priority first, then earliest due. At most `min(limit, MAX_PAGE)` rows.
    pub fn due_outgoing(
        &self,
        now_ms: u64,
        limit: u32,
    ) -> Result<Vec<OutgoingMessage>, StoreError> {
        const OP: &str = "due_outgoing";
        let mut stmt = self
            .conn
            .prepare_cached(concat!(
                select_outgoing!(),
                "WHERE state NOT IN ('delivered','expired','failed') \
                 AND next_attempt_ms <= ?1 AND expires_ms > ?1 \
                 ORDER BY priority ASC, next_attempt_ms ASC, seq ASC LIMIT ?2"
            ))
            .map_err(sql(OP))?;
        let rows = stmt
            .query_map(params![now_ms, page(limit)], outgoing_from_row)
            .map_err(sql(OP))?;
        rows.map(|r| r.map(|(_, m)| m))
            .collect::<Result<_, _>>()
            .map_err(sql(OP))
    }

    /// The recipient's non-terminal messages, most urgent first then oldest first; at most
    /// `min(limit, MAX_PAGE)` rows.
    pub fn pending_for_recipient(
        &self,
        recipient: &str,
        limit: u32,
    ) -> Result<Vec<OutgoingMessage>, StoreError> {
        const OP: &str = "pending_for_recipient";
        let mut stmt = self
            .conn
            .prepare_cached(concat!(
                select_outgoing!(),
                "WHERE recipient = ?1 AND state NOT IN ('delivered','expired','failed') \
                 ORDER BY priority ASC, seq ASC LIMIT ?2"
            ))
            .map_err(sql(OP))?;
        let rows = stmt
            .query_map(params![recipient, page(limit)], outgoing_from_row)
            .map_err(sql(OP))?;
        rows.map(|r| r.map(|(_, m)| m))
            .collect::<Result<_, _>>()
            .map_err(sql(OP))
    }

    /// Records a send attempt: one more attempt, when it happened, when the next is due, and
    /// the error if it failed (`None` clears it).
    pub fn record_attempt(
        &mut self,
        id: &[u8; 16],
        now_ms: u64,
        next_attempt_ms: u64,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.update_one(
            "record_attempt",
            id,
            "UPDATE outbox SET attempts = attempts + 1, last_attempt_ms = ?2, \
             next_attempt_ms = ?3, last_error = ?4, updated_ms = ?2 WHERE id = ?1",
            &[&now_ms, &next_attempt_ms, &error],
        )
    }

    /// Records several attempts in one transaction (one fsync for a whole
    /// scheduling round): for each, the sealed envelope if it was just made,
    /// attempts + 1, the next attempt time and the note. Unknown ids are
    /// skipped. Returns how many rows were updated.
    pub fn record_attempts(
        &mut self,
        now_ms: u64,
        attempts: &[AttemptUpdate],
    ) -> Result<usize, StoreError> {
        const OP: &str = "record_attempts";
        let tx = self.write_tx(OP)?;
        let mut updated = 0;
        {
            let mut attempt = tx
                .prepare_cached(
                    "UPDATE outbox SET attempts = attempts + 1, last_attempt_ms = ?2, \
                     next_attempt_ms = ?3, last_error = ?4, updated_ms = ?2 WHERE id = ?1",
                )
                .map_err(sql(OP))?;
            let mut envelope = tx
                .prepare_cached("UPDATE outbox SET envelope = ?2 WHERE id = ?1")
                .map_err(sql(OP))?;
            for a in attempts {
                if let Some(sealed) = &a.envelope {
                    envelope.execute(params![a.id, sealed]).map_err(sql(OP))?;
                }
                updated += attempt
                    .execute(params![a.id, now_ms, a.next_attempt_ms, a.error])
                    .map_err(sql(OP))?;
            }
        }
        tx.commit().map_err(sql(OP))?;
        Ok(updated)
    }

    /// Notes why the last attempt failed, without touching the schedule.
    pub fn note_error(
        &mut self,
        id: &[u8; 16],
        error: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.update_one(
            "note_error",
            id,
            "UPDATE outbox SET last_error = ?3, updated_ms = ?2 WHERE id = ?1",
            &[&now_ms, &error],
        )
    }

    /// The recipient became reachable: makes its pending messages due now. Returns how many
    /// were moved forward (those already due are left alone).
    pub fn reschedule_recipient(
        &mut self,
        recipient: &str,
        now_ms: u64,
    ) -> Result<usize, StoreError> {
        const OP: &str = "reschedule_recipient";
        let tx = self.write_tx(OP)?;
        let n = tx
            .prepare_cached(
                "UPDATE outbox SET next_attempt_ms = ?2, updated_ms = ?2 \
                 WHERE recipient = ?1 AND state NOT IN ('delivered','expired','failed') \
                 AND next_attempt_ms > ?2",
            )
            .and_then(|mut s| s.execute(params![recipient, now_ms]))
            .map_err(sql(OP))?;
        tx.commit().map_err(sql(OP))?;
        Ok(n)
    }

    /// Moves a message to `state`. Returns `false` (and writes nothing) if it is already in a
    /// terminal state, which is never left. Moving to `delivered` sets `delivered_ms`.
    pub fn set_state(
        &mut self,
        id: &[u8; 16],
        state: DeliveryState,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        const OP: &str = "set_state";
        let tx = self.write_tx(OP)?;
        if current_state(&tx, OP, id)?.is_terminal() {
            return Ok(false);
        }
        tx.prepare_cached(
            "UPDATE outbox SET state = ?2, updated_ms = ?3, \
             delivered_ms = CASE WHEN ?2 = 'delivered' THEN ?3 ELSE delivered_ms END \
             WHERE id = ?1",
        )
        .and_then(|mut s| s.execute(params![id, state, now_ms]))
        .map_err(sql(OP))?;
        tx.commit().map_err(sql(OP))?;
        Ok(true)
    }

    /// Deletes outgoing messages that reached a terminal state (delivered, expired, failed)
    /// at or before `before_ms`, with their receipts. Returns how many.
    pub fn compact_outbox(&mut self, before_ms: u64) -> Result<u64, StoreError> {
        self.conn
            .execute(
                "DELETE FROM outbox WHERE state IN ('delivered','expired','failed') \
                 AND updated_ms <= ?1",
                [before_ms],
            )
            .map(|n| n as u64)
            .map_err(sql("compact_outbox"))
    }

    /// Moves a message to an in-transit state (`sent`, `routed`, `onion`) after an attempt
    /// went out, unless it is terminal or already `stored` in mailboxes (a later attempt does
    /// not make the copies held there go away). Returns whether the state changed.
    pub fn set_in_transit(
        &mut self,
        id: &[u8; 16],
        state: DeliveryState,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE outbox SET state = ?2, updated_ms = ?3 WHERE id = ?1 \
                 AND state NOT IN ('stored','delivered','expired','failed') AND state != ?2",
            )
            .and_then(|mut s| s.execute(params![id, state, now_ms]))
            .map_err(sql("set_in_transit"))?;
        Ok(n == 1)
    }

    /// Marks a message delivered and stores its receipt, in one transaction. Returns `false`
    /// (and writes nothing) if the message is already terminal (e.g. delivered before).
    pub fn mark_delivered(
        &mut self,
        id: &[u8; 16],
        receipt: &ReceiptRow,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        const OP: &str = "mark_delivered";
        if receipt.message_id != *id {
            return Err(StoreError::ReceiptMismatch {
                id: *id,
                receipt_for: receipt.message_id,
            });
        }
        let tx = self.write_tx(OP)?;
        if current_state(&tx, OP, id)?.is_terminal() {
            return Ok(false);
        }
        tx.prepare_cached(
            "UPDATE outbox SET state = 'delivered', delivered_ms = ?2, updated_ms = ?2 \
             WHERE id = ?1",
        )
        .and_then(|mut s| s.execute(params![id, now_ms]))
        .map_err(sql(OP))?;
        crate::receipts::insert(&tx, receipt).map_err(sql(OP))?;
        tx.commit().map_err(sql(OP))?;
        Ok(true)
    }

    /// Marks every non-terminal message with `expires_ms <= now_ms` as expired; returns their
    /// ids.
    pub fn expire_due(&mut self, now_ms: u64) -> Result<Vec<[u8; 16]>, StoreError> {
        const OP: &str = "expire_due";
        let tx = self.write_tx(OP)?;
        let ids = {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE outbox SET state = 'expired', updated_ms = ?1 \
                     WHERE state NOT IN ('delivered','expired','failed') AND expires_ms <= ?1 \
                     RETURNING id",
                )
                .map_err(sql(OP))?;
            let rows = stmt.query_map([now_ms], |r| r.get(0)).map_err(sql(OP))?;
            rows.collect::<Result<Vec<[u8; 16]>, _>>()
                .map_err(sql(OP))?
        };
        tx.commit().map_err(sql(OP))?;
        Ok(ids)
    }

    /// When the caller should next wake: the earliest `next_attempt_ms` or `expires_ms` over
    /// non-terminal messages, or `None` if there are none.
    pub fn next_due_ms(&self) -> Result<Option<u64>, StoreError> {
        const OP: &str = "next_due_ms";
        self.conn
            .prepare_cached(
                "SELECT min(min(next_attempt_ms), min(expires_ms)) FROM outbox \
                 WHERE state NOT IN ('delivered','expired','failed')",
            )
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(sql(OP))
    }

    /// Outgoing messages (all states), optionally only to `peer`, with `seq > after_seq`,
    /// ascending by `seq`; at most `min(limit, MAX_PAGE)` rows. Pass the last `seq` returned as
    /// `after_seq` to read the next page.
    pub fn list_outgoing(
        &self,
        peer: Option<&str>,
        after_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<(i64, OutgoingMessage)>, StoreError> {
        const OP: &str = "list_outgoing";
        let mut stmt = self
            .conn
            .prepare_cached(concat!(
                select_outgoing!(),
                "WHERE (?1 IS NULL OR recipient = ?1) AND seq > ?2 ORDER BY seq ASC LIMIT ?3"
            ))
            .map_err(sql(OP))?;
        let rows = stmt
            .query_map(
                params![peer, after_seq.unwrap_or(i64::MIN), page(limit)],
                outgoing_from_row,
            )
            .map_err(sql(OP))?;
        rows.collect::<Result<_, _>>().map_err(sql(OP))
    }

    /// Runs an UPDATE of one outbox row (`?1` is the id, `rest` binds `?2`...) in a
    /// transaction; [`StoreError::NotFound`] if no row has that id.
    fn update_one(
        &mut self,
        op: &'static str,
        id: &[u8; 16],
        update: &str,
        rest: &[&dyn ToSql],
    ) -> Result<(), StoreError> {
        let tx = self.write_tx(op)?;
        let mut bind: Vec<&dyn ToSql> = Vec::with_capacity(rest.len() + 1);
        bind.push(id);
        bind.extend_from_slice(rest);
        let n = tx
            .prepare_cached(update)
            .and_then(|mut s| s.execute(bind.as_slice()))
            .map_err(sql(op))?;
        if n == 0 {
            return Err(StoreError::NotFound { id: *id });
        }
        tx.commit().map_err(sql(op))
    }
}

/// One attempt for [`Store::record_attempts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptUpdate {
    /// The message.
    pub id: [u8; 16],
    /// When to try again if no receipt comes.
    pub next_attempt_ms: u64,
    /// Why this attempt cannot go out yet, if so.
    pub error: Option<String>,
    /// The envelope sealed for this attempt, to be kept for every retry.
    pub envelope: Option<Vec<u8>>,
}

/// The state of an outbox row, or [`StoreError::NotFound`].
fn current_state(
    conn: &rusqlite::Connection,
    op: &'static str,
    id: &[u8; 16],
) -> Result<DeliveryState, StoreError> {
    conn.prepare_cached("SELECT state FROM outbox WHERE id = ?1")
        .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
        .map_err(sql(op))?
        .ok_or(StoreError::NotFound { id: *id })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u8, recipient: &str, priority: u8, created_ms: u64) -> NewOutgoing {
        NewOutgoing {
            id: [n; 16],
            recipient: recipient.to_owned(),
            body: vec![n; 3],
            priority,
            kind: 1,
            created_ms,
            expires_ms: created_ms + 1_000,
            route: Route::Auto,
        }
    }

    fn receipt(id: [u8; 16]) -> ReceiptRow {
        ReceiptRow {
            message_id: id,
            recipient: "bob".into(),
            received_ms: 55,
            signed: vec![9; 64],
        }
    }

    #[test]
    fn state_names_round_trip() {
        for s in DeliveryState::ALL {
            assert_eq!(s.as_str().parse::<DeliveryState>(), Ok(s));
            assert_eq!(s.to_string(), s.as_str());
        }
        assert!("Queued".parse::<DeliveryState>().is_err());
        let terminal: Vec<_> = DeliveryState::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [
                DeliveryState::Delivered,
                DeliveryState::Expired,
                DeliveryState::Failed
            ]
        );
    }

    #[test]
    fn every_state_passes_the_check_constraint() {
        let mut store = Store::open_in_memory().unwrap();
        for (n, s) in DeliveryState::ALL.into_iter().enumerate() {
            let m = msg(n as u8, "bob", 0, 10);
            store.insert_outgoing(&m).unwrap();
            assert!(store.set_state(&m.id, s, 11).unwrap());
            assert_eq!(store.get_outgoing(&m.id).unwrap().unwrap().state, s);
        }
        let bad = store.conn.execute("UPDATE outbox SET state = 'lost'", []);
        assert!(bad.is_err());
    }

    #[test]
    fn every_route_round_trips_through_insert_and_every_read() {
        let mut store = Store::open_in_memory().unwrap();
        for (n, route) in Route::ALL.into_iter().enumerate() {
            let mut m = msg(n as u8, "bob", 0, 10);
            m.route = route;
            store.insert_outgoing(&m).unwrap();
            assert_eq!(store.get_outgoing(&m.id).unwrap().unwrap().route, route);
        }
        let routes = |v: Vec<OutgoingMessage>| v.into_iter().map(|m| m.route).collect::<Vec<_>>();
        assert_eq!(routes(store.due_outgoing(10, 10).unwrap()), Route::ALL);
        assert_eq!(
            routes(store.pending_for_recipient("bob", 10).unwrap()),
            Route::ALL
        );
        let listed = store.list_outgoing(None, None, 10).unwrap();
        assert_eq!(
            routes(listed.into_iter().map(|(_, m)| m).collect()),
            Route::ALL
        );
        let bad = store.conn.execute("UPDATE outbox SET route = 'Direct'", []);
        assert!(bad.is_err());
    }

    #[test]
    fn set_hops_records_the_hop_count_and_refuses_unknown_ids() {
        let mut store = Store::open_in_memory().unwrap();
        let m = msg(1, "bob", 0, 100);
        store.insert_outgoing(&m).unwrap();
        assert_eq!(store.get_outgoing(&m.id).unwrap().unwrap().hops, None);
        store.set_hops(&m.id, 2, 120).unwrap();
        let got = store.get_outgoing(&m.id).unwrap().unwrap();
        assert_eq!((got.hops, got.updated_ms), (Some(2), 120));
        store.set_hops(&m.id, 5, 130).unwrap();
        assert_eq!(store.get_outgoing(&m.id).unwrap().unwrap().hops, Some(5));
        assert!(matches!(
            store.set_hops(&[9; 16], 1, 140),
            Err(StoreError::NotFound { id }) if id == [9; 16]
        ));
    }

    #[test]
    fn insert_sets_defaults_and_refuses_duplicates() {
        let mut store = Store::open_in_memory().unwrap();
        let m = msg(1, "bob", 2, 100);
        store.insert_outgoing(&m).unwrap();
        let got = store.get_outgoing(&m.id).unwrap().unwrap();
        assert_eq!(got.state, DeliveryState::Queued);
        assert_eq!(
            (got.attempts, got.next_attempt_ms, got.updated_ms),
            (0, 100, 100)
        );
        assert_eq!((got.body, got.priority, got.kind), (m.body.clone(), 2, 1));
        assert_eq!(got.envelope, None);
        assert!(matches!(
            store.insert_outgoing(&m),
            Err(StoreError::Duplicate { id }) if id == m.id
        ));
        assert_eq!(store.get_outgoing(&[7; 16]).unwrap(), None);
    }

    #[test]
    fn envelope_attempts_hops_and_replicas_are_recorded() {
        let mut store = Store::open_in_memory().unwrap();
        let m = msg(1, "bob", 0, 100);
        store.insert_outgoing(&m).unwrap();
        store.set_envelope(&m.id, b"sealed").unwrap();
        store
            .record_attempt(&m.id, 110, 150, Some("unreachable"))
            .unwrap();
        store.record_attempt(&m.id, 150, 250, None).unwrap();
        store.set_hops(&m.id, 3, 151).unwrap();
        store.set_replicas(&m.id, 4, 152).unwrap();
        let got = store.get_outgoing(&m.id).unwrap().unwrap();
        assert_eq!(got.envelope.as_deref(), Some(&b"sealed"[..]));
        assert_eq!(got.attempts, 2);
        assert_eq!(got.last_attempt_ms, Some(150));
        assert_eq!(got.next_attempt_ms, 250);
        assert_eq!(got.last_error, None);
        assert_eq!(
            (got.hops, got.replicas, got.updated_ms),
            (Some(3), Some(4), 152)
        );
        // Replicas alone do not make it held: the state must be `stored`.
        assert!(!got.held_by(4));
        store.set_state(&m.id, DeliveryState::Stored, 153).unwrap();
        let got = store.get_outgoing(&m.id).unwrap().unwrap();
        assert!(got.held_by(4) && got.held_by(3) && !got.held_by(5));
        assert!(matches!(
            store.record_attempt(&[9; 16], 1, 2, None),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            store.set_envelope(&[9; 16], b"x"),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn reschedule_moves_only_that_recipients_pending_rows() {
        let mut store = Store::open_in_memory().unwrap();
        for (n, to) in [(1, "bob"), (2, "bob"), (3, "carol"), (4, "bob")] {
            store.insert_outgoing(&msg(n, to, 0, 100)).unwrap();
            store.record_attempt(&[n; 16], 100, 900, None).unwrap();
        }
        store
            .set_state(&[4; 16], DeliveryState::Failed, 101)
            .unwrap();
        assert_eq!(store.reschedule_recipient("bob", 200).unwrap(), 2);
        assert_eq!(store.reschedule_recipient("bob", 200).unwrap(), 0);
        let due: Vec<_> = store.due_outgoing(200, 10).unwrap();
        assert_eq!(due.iter().map(|m| m.id[0]).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(
            store
                .get_outgoing(&[4; 16])
                .unwrap()
                .unwrap()
                .next_attempt_ms,
            900
        );
    }

    #[test]
    fn terminal_states_are_never_left() {
        let mut store = Store::open_in_memory().unwrap();
        for (n, terminal) in [
            (1, DeliveryState::Delivered),
            (2, DeliveryState::Expired),
            (3, DeliveryState::Failed),
        ] {
            let m = msg(n, "bob", 0, 100);
            store.insert_outgoing(&m).unwrap();
            assert!(store.set_state(&m.id, DeliveryState::Sent, 101).unwrap());
            // In transit again after being stored in mailboxes: it stays stored.
            assert!(store.set_state(&m.id, DeliveryState::Stored, 101).unwrap());
            assert!(!store
                .set_in_transit(&m.id, DeliveryState::Routed, 102)
                .unwrap());
            assert_eq!(
                store.get_outgoing(&m.id).unwrap().unwrap().state,
                DeliveryState::Stored
            );
            assert!(store.set_state(&m.id, terminal, 102).unwrap());
            for next in DeliveryState::ALL {
                assert!(!store.set_state(&m.id, next, 103).unwrap());
            }
            assert!(!store.mark_delivered(&m.id, &receipt(m.id), 104).unwrap());
            let got = store.get_outgoing(&m.id).unwrap().unwrap();
            assert_eq!((got.state, got.updated_ms), (terminal, 102));
        }
        assert!(matches!(
            store.set_state(&[9; 16], DeliveryState::Sent, 1),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn mark_delivered_is_idempotent_and_stores_the_receipt() {
        let mut store = Store::open_in_memory().unwrap();
        let m = msg(1, "bob", 0, 100);
        store.insert_outgoing(&m).unwrap();
        store.set_state(&m.id, DeliveryState::Stored, 110).unwrap();
        assert!(store.mark_delivered(&m.id, &receipt(m.id), 120).unwrap());
        let mut second = receipt(m.id);
        second.signed = vec![1];
        assert!(!store.mark_delivered(&m.id, &second, 130).unwrap());
        let got = store.get_outgoing(&m.id).unwrap().unwrap();
        assert_eq!(got.state, DeliveryState::Delivered);
        assert_eq!((got.delivered_ms, got.updated_ms), (Some(120), 120));
        assert_eq!(store.get_receipt(&m.id).unwrap(), Some(receipt(m.id)));
        assert!(matches!(
            store.mark_delivered(&m.id, &receipt([2; 16]), 140),
            Err(StoreError::ReceiptMismatch { .. })
        ));
        assert!(matches!(
            store.mark_delivered(&[3; 16], &receipt([3; 16]), 140),
            Err(StoreError::NotFound { .. })
        ));
        assert_eq!(store.get_receipt(&[3; 16]).unwrap(), None);
    }

    #[test]
    fn expire_due_and_next_due() {
        let mut store = Store::open_in_memory().unwrap();
        assert_eq!(store.next_due_ms().unwrap(), None);
        // expires at 1100, 1200, 1300; #3 already delivered.
        for n in 1..=3u8 {
            store
                .insert_outgoing(&msg(n, "bob", 0, 100 * u64::from(n)))
                .unwrap();
            store.record_attempt(&[n; 16], 100, 5_000, None).unwrap();
        }
        store
            .mark_delivered(&[3; 16], &receipt([3; 16]), 150)
            .unwrap();
        assert_eq!(store.next_due_ms().unwrap(), Some(1_100));
        assert_eq!(store.expire_due(1_099).unwrap(), Vec::<[u8; 16]>::new());
        assert_eq!(store.expire_due(1_100).unwrap(), vec![[1; 16]]);
        assert_eq!(store.next_due_ms().unwrap(), Some(1_200));
        assert_eq!(store.expire_due(10_000).unwrap(), vec![[2; 16]]);
        assert_eq!(store.next_due_ms().unwrap(), None);
        let states: Vec<_> = (1..=3u8)
            .map(|n| store.get_outgoing(&[n; 16]).unwrap().unwrap().state)
            .collect();
        assert_eq!(
            states,
            [
                DeliveryState::Expired,
                DeliveryState::Expired,
                DeliveryState::Delivered
            ]
        );
        // A due retry earlier than any expiry wins.
        store.insert_outgoing(&msg(4, "bob", 0, 20_000)).unwrap();
        assert_eq!(store.next_due_ms().unwrap(), Some(20_000));

        // Compaction: finished rows (and the receipt) go once old enough;
        // the pending one stays whatever its age.
        assert_eq!(store.compact_outbox(149).unwrap(), 0);
        assert_eq!(store.compact_outbox(1_100).unwrap(), 2);
        assert!(store.get_outgoing(&[3; 16]).unwrap().is_none());
        assert!(store.get_receipt(&[3; 16]).unwrap().is_none());
        assert!(store.get_outgoing(&[2; 16]).unwrap().is_some());
        assert_eq!(store.compact_outbox(u64::MAX / 2).unwrap(), 1);
        assert!(store.get_outgoing(&[4; 16]).unwrap().is_some());
    }

    #[test]
    fn due_outgoing_skips_future_expired_and_terminal_rows() {
        let mut store = Store::open_in_memory().unwrap();
        store.insert_outgoing(&msg(1, "bob", 0, 100)).unwrap(); // due
        store.insert_outgoing(&msg(2, "bob", 0, 500)).unwrap(); // not yet due
        store.insert_outgoing(&msg(3, "bob", 0, 100)).unwrap();
        store
            .set_state(&[3; 16], DeliveryState::Failed, 100)
            .unwrap();
        let mut old = msg(4, "bob", 0, 100);
        old.expires_ms = 200; // expired by time, not yet by expire_due
        store.insert_outgoing(&old).unwrap();
        let due = store.due_outgoing(200, 10).unwrap();
        assert_eq!(due.iter().map(|m| m.id[0]).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn pending_for_recipient_and_list_filter_by_peer() {
        let mut store = Store::open_in_memory().unwrap();
        store.insert_outgoing(&msg(1, "bob", 5, 100)).unwrap();
        store.insert_outgoing(&msg(2, "carol", 0, 100)).unwrap();
        store.insert_outgoing(&msg(3, "bob", 1, 100)).unwrap();
        store.insert_outgoing(&msg(4, "bob", 1, 100)).unwrap();
        store
            .set_state(&[4; 16], DeliveryState::Expired, 100)
            .unwrap();
        let pending = store.pending_for_recipient("bob", 10).unwrap();
        assert_eq!(
            pending.iter().map(|m| m.id[0]).collect::<Vec<_>>(),
            vec![3, 1]
        );
        let listed = store.list_outgoing(Some("bob"), None, 10).unwrap();
        assert_eq!(
            listed.iter().map(|(_, m)| m.id[0]).collect::<Vec<_>>(),
            vec![1, 3, 4]
        );
        let after = store.list_outgoing(None, Some(listed[0].0), 2).unwrap();
        assert_eq!(
            after.iter().map(|(_, m)| m.id[0]).collect::<Vec<_>>(),
            vec![2, 3]
        );
    }
}
