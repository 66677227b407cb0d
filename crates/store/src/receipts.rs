//! Delivery receipts: the recipient's signed proof that a message arrived.
//!
//! A receipt is written only by [`Store::mark_delivered`], in the same transaction that moves
//! the message to `delivered`, and is deleted with its outbox row.

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{sql, StoreError};
use crate::Store;

/// A stored delivery receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptRow {
    /// The delivered message's id.
    pub message_id: [u8; 16],
    /// The peer that signed the receipt (base58).
    pub recipient: String,
    /// When the recipient received the message, ms (as it claims).
    pub received_ms: u64,
    /// The signed receipt bytes, as received.
    pub signed: Vec<u8>,
}

/// Inserts a receipt inside the caller's transaction; an existing one is kept.
pub(crate) fn insert(conn: &Connection, r: &ReceiptRow) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "INSERT INTO receipts (message_id, recipient, received_ms, signed) \
         VALUES (?1, ?2, ?3, ?4) ON CONFLICT (message_id) DO NOTHING",
    )?
    .execute(params![r.message_id, r.recipient, r.received_ms, r.signed])
}

impl Store {
    /// The receipt for this message id, if one was stored.
    pub fn get_receipt(&self, message_id: &[u8; 16]) -> Result<Option<ReceiptRow>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT message_id, recipient, received_ms, signed FROM receipts \
                 WHERE message_id = ?1",
            )
            .and_then(|mut s| {
                s.query_row([message_id], |r| {
                    Ok(ReceiptRow {
                        message_id: r.get(0)?,
                        recipient: r.get(1)?,
                        received_ms: r.get(2)?,
                        signed: r.get(3)?,
                    })
                })
                .optional()
            })
            .map_err(sql("get_receipt"))
    }
}
