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
use std::ops::Deref;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Duration;

use rusqlite::{Savepoint, Transaction, TransactionBehavior};

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
    /// never fails half-way on a lock upgrade. Inside [`Store::in_one_commit`] it is a savepoint
    /// of the shared transaction instead: committing it keeps its writes for the shared commit,
    /// dropping it undoes them alone.
    fn write_tx(&mut self, op: &'static str) -> Result<WriteTx<'_>, StoreError> {
        if self.conn.is_autocommit() {
            self.conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map(WriteTx::Own)
                .map_err(sql(op))
        } else {
            self.conn.savepoint().map(WriteTx::Nested).map_err(sql(op))
        }
    }

    /// Runs `f` with every write it makes through this store under one commit: one fsync for
    /// all of them instead of one each (group commit). Each write still runs on its own (in a
    /// savepoint), so one that fails is undone alone and the others stay.
    ///
    /// Nothing `f` wrote is durable until the second value is `Ok`; on `Err` all of it was
    /// rolled back, and whoever was waiting on those writes must be told they failed. If the
    /// shared transaction cannot be begun, `f` runs with each write committing on its own
    /// (as outside this call) and the result is `Ok`. Called inside another
    /// `in_one_commit`, it joins the outer one. If `f` panics, the shared transaction is rolled
    /// back and the panic goes on.
    pub fn in_one_commit<R>(
        &mut self,
        f: impl FnOnce(&mut Store) -> R,
    ) -> (R, Result<(), StoreError>) {
        const OP: &str = "in_one_commit";
        if !self.conn.is_autocommit() {
            return (f(self), Ok(()));
        }
        if self.conn.execute_batch("BEGIN IMMEDIATE").is_err() {
            // Each write then begins its own transaction, and reports its own error.
            return (f(self), Ok(()));
        }
        let value = match catch_unwind(AssertUnwindSafe(|| f(&mut *self))) {
            Ok(v) => v,
            Err(panic) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                resume_unwind(panic);
            }
        };
        match self.conn.execute_batch("COMMIT") {
            Ok(()) => (value, Ok(())),
            Err(source) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                (value, Err(StoreError::Sqlite { op: OP, source }))
            }
        }
    }
}

/// A write transaction of the store's own, or a savepoint of the one
/// [`Store::in_one_commit`] holds open.
pub(crate) enum WriteTx<'a> {
    /// `BEGIN IMMEDIATE … COMMIT`: durable when committed.
    Own(Transaction<'a>),
    /// `SAVEPOINT … RELEASE`: kept for the shared commit when committed.
    Nested(Savepoint<'a>),
}

impl WriteTx<'_> {
    /// Commits the transaction, or releases the savepoint into the shared one.
    pub(crate) fn commit(self) -> rusqlite::Result<()> {
        match self {
            WriteTx::Own(tx) => tx.commit(),
            WriteTx::Nested(sp) => sp.commit(),
        }
    }
}

impl Deref for WriteTx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        match self {
            WriteTx::Own(tx) => tx,
            WriteTx::Nested(sp) => sp,
        }
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

    fn outgoing(n: u8) -> NewOutgoing {
        NewOutgoing {
            id: [n; 16],
            recipient: "bob".into(),
            body: vec![n],
            priority: 3,
            kind: 1,
            created_ms: 10,
            expires_ms: 1_000,
            route: Route::Auto,
        }
    }

    fn ids(store: &Store) -> Vec<u8> {
        store
            .list_outgoing(None, None, 100)
            .unwrap()
            .iter()
            .map(|(_, m)| m.id[0])
            .collect()
    }

    #[test]
    fn one_commit_keeps_every_write_and_undoes_a_failed_one_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        let mut store = Store::open(&path).unwrap();
        let (results, committed) = store.in_one_commit(|s| {
            assert!(!s.conn.is_autocommit(), "the shared transaction is open");
            [1, 2, 1, 3]
                .into_iter()
                .map(|n| s.insert_outgoing(&outgoing(n)).is_ok())
                .collect::<Vec<_>>()
        });
        committed.unwrap();
        // The duplicate failed alone; its savepoint was undone, the rest kept.
        assert_eq!(results, vec![true, true, false, true]);
        assert!(store.conn.is_autocommit(), "no transaction is left open");
        drop(store);
        // Durable: a fresh connection sees all three.
        let store = Store::open(&path).unwrap();
        assert_eq!(ids(&store), vec![1, 2, 3]);
    }

    #[test]
    fn a_failed_shared_commit_keeps_nothing() {
        let mut store = Store::open_in_memory().unwrap();
        let ((), committed) = store.in_one_commit(|s| {
            s.insert_outgoing(&outgoing(1)).unwrap();
            // A receipt for a message that is not there, with the foreign key checked only at
            // COMMIT: the insert succeeds, the shared commit fails.
            s.conn
                .execute_batch("PRAGMA defer_foreign_keys = ON")
                .unwrap();
            s.conn
                .execute(
                    "INSERT INTO receipts (message_id, recipient, received_ms, signed) \
                     VALUES (?1, 'bob', 1, x'00')",
                    [[9u8; 16]],
                )
                .unwrap();
        });
        let err = committed.unwrap_err();
        assert!(err.to_string().starts_with("in_one_commit: "), "{err}");
        assert!(store.conn.is_autocommit());
        assert_eq!(ids(&store), Vec::<u8>::new(), "the good write went too");
        // The store works on afterwards.
        store.insert_outgoing(&outgoing(2)).unwrap();
        assert_eq!(ids(&store), vec![2]);
    }

    #[test]
    fn a_panic_inside_rolls_back_and_nested_calls_join_the_outer_commit() {
        let mut store = Store::open_in_memory().unwrap();
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            store.in_one_commit(|s| {
                s.insert_outgoing(&outgoing(1)).unwrap();
                panic!("a bug in a job");
            })
        }));
        assert!(panicked.is_err());
        assert!(store.conn.is_autocommit(), "rolled back, not left open");
        assert_eq!(ids(&store), Vec::<u8>::new());
        let ((), outer) = store.in_one_commit(|s| {
            let ((), inner) = s.in_one_commit(|s| s.insert_outgoing(&outgoing(4)).unwrap());
            inner.unwrap();
            assert!(!s.conn.is_autocommit(), "the inner call did not commit");
        });
        outer.unwrap();
        assert_eq!(ids(&store), vec![4]);
    }

    #[test]
    fn page_is_capped() {
        assert_eq!(page(7), 7);
        assert_eq!(page(u32::MAX), MAX_PAGE);
    }
}
