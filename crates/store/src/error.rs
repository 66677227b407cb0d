//! Errors returned by the store: one enum for opening a database, one for everything after.

use std::path::PathBuf;

/// Opening (or migrating) a database failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// SQLite could not open or create the database file.
    #[error("cannot open database {path}: {source}")]
    Open {
        /// The file that was being opened.
        path: PathBuf,
        /// The underlying SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// Setting a connection pragma (journal mode, synchronous, ...) failed.
    #[error("cannot set pragma {pragma}: {source}")]
    Pragma {
        /// The pragma that failed.
        pragma: &'static str,
        /// The underlying SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database did not switch to write-ahead logging (e.g. an unsupported filesystem).
    #[error("database refused journal_mode=WAL (it reports {mode:?})")]
    WalUnavailable {
        /// The journal mode SQLite reported instead.
        mode: String,
    },
    /// The database was written by a newer peercomm; opening it could corrupt it.
    #[error(
        "database schema version {found} is newer than this build supports ({supported}); \
         upgrade peercomm or use another data directory"
    )]
    TooNew {
        /// The highest migration version recorded in the database.
        found: u32,
        /// The highest migration version this build knows.
        supported: u32,
    },
    /// A migration recorded in the database has a different name than this build's migration
    /// of the same version: the database came from a diverging build.
    #[error("database migration {version} is named {found:?}, this build expects {expected:?}")]
    MigrationMismatch {
        /// The migration version.
        version: u32,
        /// The name recorded in the database.
        found: String,
        /// The name this build uses.
        expected: &'static str,
    },
    /// Reading the migration history failed.
    #[error("cannot read schema_migrations: {source}")]
    ReadMigrations {
        /// The underlying SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// Applying a migration failed; it was rolled back and the schema is at the previous version.
    #[error("migration {version} ({name}) failed: {source}")]
    Migrate {
        /// The migration version.
        version: u32,
        /// The migration name.
        name: &'static str,
        /// The underlying SQLite error.
        #[source]
        source: rusqlite::Error,
    },
}

/// A store operation on an open database failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite reported an error while running `op`.
    #[error("{op}: {source}")]
    Sqlite {
        /// The store operation, e.g. `"insert_outgoing"`.
        op: &'static str,
        /// The underlying SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A message with this id is already in the outbox; nothing was written.
    #[error("message {} is already in the outbox", hex16(id))]
    Duplicate {
        /// The message id.
        id: [u8; 16],
    },
    /// A receipt was offered for a different message than the one being marked delivered.
    #[error("receipt is for message {}, not {}", hex16(receipt_for), hex16(id))]
    ReceiptMismatch {
        /// The message being marked delivered.
        id: [u8; 16],
        /// The message the receipt names.
        receipt_for: [u8; 16],
    },
    /// The commit this call's writes shared with others failed
    /// ([`Store::in_one_commit`](crate::Store::in_one_commit)); none of them was kept.
    #[error("the shared commit failed and nothing of this call was kept: {reason}")]
    CommitFailed {
        /// The database's message.
        reason: String,
    },
    /// No outgoing message has this id.
    #[error("no outgoing message {}", hex16(id))]
    NotFound {
        /// The message id.
        id: [u8; 16],
    },
}

impl StoreError {
    /// Whether retrying the same call later may succeed (the database was busy or locked).
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Sqlite {
                source: rusqlite::Error::SqliteFailure(e, _),
                ..
            } => matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            _ => false,
        }
    }
}

/// Wraps a rusqlite error with the name of the operation that hit it.
pub(crate) fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { op, source }
}

fn hex16(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_operation_and_id() {
        let e = StoreError::Duplicate { id: [0xab; 16] };
        assert_eq!(
            e.to_string(),
            "message abababababababababababababababab is already in the outbox"
        );
        let e = StoreError::Sqlite {
            op: "get_outgoing",
            source: rusqlite::Error::QueryReturnedNoRows,
        };
        assert!(e.to_string().starts_with("get_outgoing: "));
        assert!(!e.is_retryable());
        let busy = StoreError::Sqlite {
            op: "x",
            source: rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                None,
            ),
        };
        assert!(busy.is_retryable());
        let e = OpenError::TooNew {
            found: 9,
            supported: 3,
        };
        assert!(e.to_string().contains("9 is newer"));
    }
}
