//! peercomm store: the node's SQLite database.
//!
//! One [`Store`] owns one connection. It holds the outbox (messages this node sends, with their
//! delivery state, retry schedule and [`Route`] preference), the inbox (messages received, deduplicated), known peers
//! (their signed records) and delivery receipts. Every write runs in a transaction that is
//! committed before the call returns, with `synchronous=FULL`, so an accepted message survives a
//! crash. Calls are synchronous; the node runs them on a blocking thread behind a mutex.
//!
//! Times are `u64` milliseconds since the Unix epoch, passed in by the caller (the store has no
//! clock of its own). Reads that return many rows are paged and capped at [`MAX_PAGE`].

mod dht;
mod error;
mod inbox;
mod mailbox;
mod migrations;
mod outbox;
mod peers;
mod receipts;
mod route;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Transaction, TransactionBehavior};

pub use dht::DhtRecordRow;
pub use error::{OpenError, StoreError};
pub use inbox::{IncomingMessage, NewIncoming};
pub use mailbox::{
    DepositOutcome, MailItem, MailKind, MailboxPurge, MailboxQuotas, MailboxStats, NewMailItem,
    QuotaExceeded,
};
pub use migrations::LATEST_VERSION;
pub use outbox::{AttemptUpdate, DeliveryState, NewOutgoing, OutgoingMessage, ParseStateError};
pub use peers::{PeerRow, UpsertOutcome};
pub use receipts::ReceiptRow;
pub use route::{ParseRouteError, Route};

use error::sql;

pub use rusqlite;
pub use rusqlite::Connection;

/// The most rows any paged read returns, whatever limit the caller asks for.
pub const MAX_PAGE: u32 = 500;

/// How long a call waits for a lock held by another connection before failing.
pub const BUSY_TIMEOUT_MS: u64 = 5_000;

/// Row counts, for metrics and status pages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Counts {
    /// Outgoing messages per delivery state ([`DeliveryState::as_str`]); every state is present.
    pub outgoing: BTreeMap<String, u64>,
    /// Stored incoming messages.
    pub incoming: u64,
    /// Known peers.
    pub peers: u64,
}

/// The node's database: outbox, inbox, peers and receipts.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    schema_version: u32,
}

impl Store {
    /// Opens (creating if needed) the database at `path`, sets WAL, `synchronous=FULL`,
    /// foreign keys and a busy timeout, and applies pending migrations.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OpenError> {
        let path = path.as_ref();
        let conn = Connection::open(path).map_err(|source| OpenError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(|source| OpenError::Pragma {
                pragma: "journal_mode",
                source,
            })?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(OpenError::WalUnavailable { mode });
        }
        Self::setup(conn)
    }

    /// Opens a fresh in-memory database (for tests); nothing survives the `Store`.
    pub fn open_in_memory() -> Result<Self, OpenError> {
        let conn = Connection::open_in_memory().map_err(|source| OpenError::Open {
            path: ":memory:".into(),
            source,
        })?;
        Self::setup(conn)
    }

    fn setup(mut conn: Connection) -> Result<Self, OpenError> {
        for (pragma, value) in [("synchronous", "FULL"), ("foreign_keys", "ON")] {
            conn.pragma_update(None, pragma, value)
                .map_err(|source| OpenError::Pragma { pragma, source })?;
        }
        conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))
            .map_err(|source| OpenError::Pragma {
                pragma: "busy_timeout",
                source,
            })?;
        let schema_version = migrations::migrate(&mut conn)?;
        Ok(Store {
            conn,
            schema_version,
        })
    }

    /// The database connection, for subsystems that keep their own tables
    /// (groups: MLS state through `openmls_sqlite_storage`).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The database connection, mutable (for a transaction).
    pub fn connection_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// The schema version the database is at (after migrations, [`LATEST_VERSION`]).
    pub fn schema_version(&self) -> u32 {
        self.schema_version
    }

    /// Row counts: outgoing per state, incoming, peers.
    pub fn counts(&self) -> Result<Counts, StoreError> {
        const OP: &str = "counts";
        let mut outgoing: BTreeMap<String, u64> = DeliveryState::ALL
            .iter()
            .map(|s| (s.as_str().to_owned(), 0))
            .collect();
        let mut stmt = self
            .conn
            .prepare_cached("SELECT state, count(*) FROM outbox GROUP BY state")
            .map_err(sql(OP))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))
            .map_err(sql(OP))?;
        for row in rows {
            let (state, n) = row.map_err(sql(OP))?;
            outgoing.insert(state, n);
        }
        let count = |table: &str| -> Result<u64, StoreError> {
            self.conn
                .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                .map_err(sql(OP))
        };
        Ok(Counts {
            outgoing,
            incoming: count("inbox")?,
            peers: count("peers")?,
        })
    }

    /// Copies the write-ahead log into the database file and truncates it (graceful shutdown).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(sql("checkpoint"))
    }

    /// Starts a write transaction that takes the write lock up front, so a read-then-write
    /// never fails half-way on a lock upgrade.
    fn write_tx(&mut self, op: &'static str) -> Result<Transaction<'_>, StoreError> {
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql(op))
    }
}

/// Caps a caller's page size at [`MAX_PAGE`].
fn page(limit: u32) -> u32 {
    limit.min(MAX_PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_store_is_migrated() {
        let store = Store::open_in_memory().unwrap();
        assert_eq!(store.schema_version(), LATEST_VERSION);
        let counts = store.counts().unwrap();
        assert_eq!(counts.outgoing.len(), DeliveryState::ALL.len());
        assert!(counts.outgoing.values().all(|n| *n == 0));
        assert_eq!((counts.incoming, counts.peers), (0, 0));
        store.checkpoint().unwrap();
    }

    #[test]
    fn file_store_uses_wal_full_sync_and_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("node.db")).unwrap();
        let get = |p: &str| -> String {
            store
                .conn
                .query_row(&format!("PRAGMA {p}"), [], |r| {
                    r.get::<_, rusqlite::types::Value>(0)
                })
                .map(|v| format!("{v:?}"))
                .unwrap()
        };
        assert!(get("journal_mode").contains("wal"));
        assert_eq!(get("synchronous"), "Integer(2)");
        assert_eq!(get("foreign_keys"), "Integer(1)");
        assert_eq!(get("busy_timeout"), "Integer(5000)");
        store.checkpoint().unwrap();
    }

    #[test]
    fn page_is_capped() {
        assert_eq!(page(7), 7);
        assert_eq!(page(u32::MAX), MAX_PAGE);
    }
}
