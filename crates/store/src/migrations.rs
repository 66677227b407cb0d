//! Versioned schema migrations.
//!
//! Each migration has a version (applied in ascending order) and a timestamped name. A
//! migration runs in its own `BEGIN IMMEDIATE` transaction together with the row that records
//! it in `schema_migrations`, so a crash leaves the schema at a whole version. A database whose
//! recorded version is newer than [`LATEST_VERSION`] is refused rather than guessed at.

use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use crate::error::OpenError;

/// One schema change.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    /// Strictly increasing, starting at 1.
    pub(crate) version: u32,
    /// `YYYYMMDDhhmmss_what`, recorded next to the version.
    pub(crate) name: &'static str,
    /// Statements run as one batch.
    pub(crate) sql: &'static str,
}

// Implementation notes: never edit a released migration; add a new one. The state list in the
// CHECK constraint must match `DeliveryState::ALL`, and the route list `Route::ALL`; tests check
// that every state and every route round-trips.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "20250601120000_outbox_and_receipts",
        sql: "
CREATE TABLE outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              BLOB    NOT NULL UNIQUE CHECK (length(id) = 16),
    recipient       TEXT    NOT NULL,
    body            BLOB    NOT NULL,
    priority        INTEGER NOT NULL CHECK (priority BETWEEN 0 AND 255),
    kind            INTEGER NOT NULL CHECK (kind BETWEEN 0 AND 255),
    created_ms      INTEGER NOT NULL,
    expires_ms      INTEGER NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN
                        ('queued','sent','routed','onion','stored','delivered','expired','failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_attempt_ms INTEGER,
    next_attempt_ms INTEGER NOT NULL,
    last_error      TEXT,
    envelope        BLOB,
    delivered_ms    INTEGER,
    updated_ms      INTEGER NOT NULL,
    hops            INTEGER,
    replicas        INTEGER
);
CREATE INDEX outbox_pending_next ON outbox (next_attempt_ms)
    WHERE state NOT IN ('delivered','expired','failed');
CREATE INDEX outbox_pending_expiry ON outbox (expires_ms)
    WHERE state NOT IN ('delivered','expired','failed');
CREATE INDEX outbox_recipient ON outbox (recipient, seq);

CREATE TABLE receipts (
    message_id  BLOB    PRIMARY KEY REFERENCES outbox (id) ON DELETE CASCADE,
    recipient   TEXT    NOT NULL,
    received_ms INTEGER NOT NULL,
    signed      BLOB    NOT NULL
);
",
    },
    Migration {
        version: 2,
        name: "20250601120100_inbox",
        sql: "
CREATE TABLE inbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          BLOB    NOT NULL CHECK (length(id) = 16),
    sender      TEXT    NOT NULL,
    body        BLOB    NOT NULL,
    priority    INTEGER NOT NULL CHECK (priority BETWEEN 0 AND 255),
    kind        INTEGER NOT NULL CHECK (kind BETWEEN 0 AND 255),
    created_ms  INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    envelope    BLOB    NOT NULL,
    UNIQUE (sender, id)
);
CREATE INDEX inbox_id ON inbox (id);
CREATE INDEX inbox_sender ON inbox (sender, seq);
",
    },
    Migration {
        version: 3,
        name: "20250601120200_peers",
        sql: "
CREATE TABLE peers (
    peer_id       TEXT    PRIMARY KEY,
    record        BLOB    NOT NULL,
    seq           INTEGER NOT NULL,
    box_key       BLOB    NOT NULL CHECK (length(box_key) = 32),
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms  INTEGER NOT NULL
);
CREATE INDEX peers_last_seen ON peers (last_seen_ms);
CREATE TABLE peer_addrs (
    peer_id TEXT    NOT NULL REFERENCES peers (peer_id) ON DELETE CASCADE,
    pos     INTEGER NOT NULL,
    addr    TEXT    NOT NULL,
    PRIMARY KEY (peer_id, pos)
) WITHOUT ROWID;
",
    },
    Migration {
        version: 4,
        name: "20261125190000_dht_records",
        sql: "
CREATE TABLE dht_records (
    key        BLOB    PRIMARY KEY,
    value      BLOB    NOT NULL,
    publisher  BLOB,
    expires_ms INTEGER,
    stored_ms  INTEGER NOT NULL
);
CREATE INDEX dht_records_expiry ON dht_records (expires_ms) WHERE expires_ms IS NOT NULL;
CREATE TABLE dht_peers (
    peer_id    TEXT    PRIMARY KEY,
    addrs      TEXT    NOT NULL,
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
",
    },
    Migration {
        version: 5,
        name: "20261126030000_outbox_route",
        sql: "
ALTER TABLE outbox ADD COLUMN route TEXT NOT NULL DEFAULT 'auto'
    CHECK (route IN ('auto','direct','multihop'));
",
    },
    Migration {
        version: 6,
        name: "20261126060000_outbox_route_onion",
        // SQLite cannot change a CHECK constraint in place: a new column
        // takes the values, the old one goes, the new one takes its name.
        sql: "
ALTER TABLE outbox ADD COLUMN route_v6 TEXT NOT NULL DEFAULT 'auto'
    CHECK (route_v6 IN ('auto','direct','multihop','onion'));
UPDATE outbox SET route_v6 = route;
ALTER TABLE outbox DROP COLUMN route;
ALTER TABLE outbox RENAME COLUMN route_v6 TO route;
",
    },
    Migration {
        version: 7,
        name: "20261126100000_mailbox",
        sql: "
CREATE TABLE mailbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         BLOB    NOT NULL CHECK (length(id) = 16),
    kind       TEXT    NOT NULL CHECK (kind IN ('envelope','receipt')),
    recipient  TEXT    NOT NULL,
    depositor  TEXT    NOT NULL,
    item       BLOB    NOT NULL,
    expires_ms INTEGER NOT NULL,
    stored_ms  INTEGER NOT NULL,
    UNIQUE (recipient, id, kind)
);
CREATE INDEX mailbox_recipient ON mailbox (recipient, seq);
CREATE INDEX mailbox_depositor ON mailbox (depositor);
CREATE INDEX mailbox_expiry ON mailbox (expires_ms);
CREATE TABLE mailbox_acked (
    recipient  TEXT    NOT NULL,
    id         BLOB    NOT NULL CHECK (length(id) = 16),
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (recipient, id)
) WITHOUT ROWID;
CREATE INDEX mailbox_acked_expiry ON mailbox_acked (expires_ms);
",
    },
    Migration {
        version: 8,
        name: "20261127090000_own_mailboxes",
        sql: "
CREATE TABLE own_mailboxes (
    peer_id    TEXT    PRIMARY KEY,
    rank       INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
",
    },
    Migration {
        version: 9,
        name: "20261126150000_groups",
        sql: "
CREATE TABLE groups (
    group_id    BLOB    PRIMARY KEY CHECK (length(group_id) = 16),
    name        TEXT    NOT NULL,
    description TEXT    NOT NULL,
    owner       TEXT    NOT NULL,
    admins      TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    epoch       INTEGER NOT NULL,
    members     INTEGER NOT NULL,
    invited_by  TEXT,
    joined_ms   INTEGER NOT NULL,
    welcome     BLOB
) WITHOUT ROWID;
CREATE TABLE group_members (
    group_id BLOB NOT NULL,
    peer_id  TEXT NOT NULL,
    PRIMARY KEY (group_id, peer_id)
) WITHOUT ROWID;
CREATE TABLE group_posts (
    post_id     BLOB    PRIMARY KEY CHECK (length(post_id) = 16),
    group_id    BLOB    NOT NULL,
    epoch       INTEGER NOT NULL,
    is_commit   INTEGER NOT NULL,
    created_ms  INTEGER NOT NULL,
    post        BLOB    NOT NULL,
    state       TEXT    NOT NULL,
    received_ms INTEGER NOT NULL,
    deposited   INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX group_posts_order ON group_posts (group_id, state, epoch, is_commit, created_ms, post_id);
CREATE TABLE group_messages (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id    BLOB    NOT NULL,
    msg_id      BLOB    NOT NULL UNIQUE,
    sender      TEXT    NOT NULL,
    body        BLOB    NOT NULL,
    epoch       INTEGER NOT NULL,
    created_ms  INTEGER NOT NULL,
    received_ms INTEGER NOT NULL
);
CREATE INDEX group_messages_group ON group_messages (group_id, seq);
CREATE TABLE group_welcome_parts (
    welcome_id  BLOB    NOT NULL,
    part        INTEGER NOT NULL,
    parts       INTEGER NOT NULL,
    sender      TEXT    NOT NULL,
    bytes       BLOB    NOT NULL,
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (welcome_id, part)
) WITHOUT ROWID;
CREATE TABLE group_key_packages (
    hash_ref    BLOB    PRIMARY KEY,
    key_package BLOB    NOT NULL,
    last_resort INTEGER NOT NULL,
    created_ms  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE group_mailbox (
    group_id   BLOB    NOT NULL,
    epoch      INTEGER NOT NULL,
    is_commit  INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    post_id    BLOB    NOT NULL,
    post       BLOB    NOT NULL,
    depositor  TEXT    NOT NULL,
    stored_ms  INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (group_id, epoch, is_commit, created_ms, post_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX group_mailbox_id ON group_mailbox (group_id, post_id);
CREATE INDEX inbox_kind ON inbox (kind, seq);
CREATE TABLE group_control_done (
    id BLOB PRIMARY KEY
) WITHOUT ROWID;
CREATE INDEX group_mailbox_expiry ON group_mailbox (expires_ms);
",
    },
];

/// The highest schema version this build knows.
pub const LATEST_VERSION: u32 = 9;

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    applied_ms INTEGER NOT NULL
)";

/// Brings the schema up to [`LATEST_VERSION`]; returns the version the database is at.
pub(crate) fn migrate(conn: &mut Connection) -> Result<u32, OpenError> {
    migrate_to(conn, MIGRATIONS)
}

fn migrate_to(conn: &mut Connection, migrations: &[Migration]) -> Result<u32, OpenError> {
    let supported = migrations.last().map_or(0, |m| m.version);
    conn.execute(CREATE_TABLE, [])
        .map_err(|source| OpenError::ReadMigrations { source })?;
    check_recorded(conn, migrations, supported)?;
    for m in migrations {
        let migrate_err = |source| OpenError::Migrate {
            version: m.version,
            name: m.name,
            source,
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(migrate_err)?;
        // Re-checked under the write lock: another process may have migrated meanwhile.
        let done: Option<i64> = tx
            .query_row(
                "SELECT 1 FROM schema_migrations WHERE version = ?1",
                [m.version],
                |r| r.get(0),
            )
            .optional()
            .map_err(migrate_err)?;
        if done.is_some() {
            continue;
        }
        tx.execute_batch(m.sql).map_err(migrate_err)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_ms) VALUES (?1, ?2, ?3)",
            rusqlite::params![m.version, m.name, now_ms()],
        )
        .map_err(migrate_err)?;
        tx.commit().map_err(migrate_err)?;
    }
    recorded_version(conn)
}

/// Refuses databases from newer or diverging builds before anything is written.
fn check_recorded(
    conn: &Connection,
    migrations: &[Migration],
    supported: u32,
) -> Result<(), OpenError> {
    let found = recorded_version(conn)?;
    if found > supported {
        return Err(OpenError::TooNew { found, supported });
    }
    let read_err = |source| OpenError::ReadMigrations { source };
    let mut stmt = conn
        .prepare("SELECT version, name FROM schema_migrations ORDER BY version")
        .map_err(read_err)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, String>(1)?)))
        .map_err(read_err)?;
    for row in rows {
        let (version, found) = row.map_err(read_err)?;
        if let Some(m) = migrations.iter().find(|m| m.version == version) {
            if m.name != found {
                return Err(OpenError::MigrationMismatch {
                    version,
                    found,
                    expected: m.name,
                });
            }
        }
    }
    Ok(())
}

/// The highest version recorded in `schema_migrations` (0 if none).
pub(crate) fn recorded_version(conn: &Connection) -> Result<u32, OpenError> {
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get::<_, u32>(0),
    )
    .map_err(|source| OpenError::ReadMigrations { source })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(conn: &Connection) -> Vec<(u32, String, i64)> {
        let mut stmt = conn
            .prepare("SELECT version, name, applied_ms FROM schema_migrations ORDER BY version")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn versions_are_increasing_and_names_timestamped() {
        let mut last = 0;
        for m in MIGRATIONS {
            assert!(m.version > last, "migration {} out of order", m.version);
            last = m.version;
            let (stamp, rest) = m.name.split_at(14);
            assert!(stamp.bytes().all(|b| b.is_ascii_digit()), "{}", m.name);
            assert!(rest.starts_with('_') && rest.len() > 1, "{}", m.name);
        }
        assert_eq!(last, LATEST_VERSION);
    }

    #[test]
    fn applies_all_once_and_records_them() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), LATEST_VERSION);
        let first = history(&conn);
        assert_eq!(first.len(), MIGRATIONS.len());
        for ((v, name, applied), m) in first.iter().zip(MIGRATIONS) {
            assert_eq!((*v, name.as_str()), (m.version, m.name));
            assert!(*applied > 0);
        }
        // A second run finds everything applied and changes nothing.
        assert_eq!(migrate(&mut conn).unwrap(), LATEST_VERSION);
        assert_eq!(history(&conn), first);
    }

    #[test]
    fn partial_history_is_completed() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate_to(&mut conn, &MIGRATIONS[..1]).unwrap(), 1);
        assert_eq!(migrate(&mut conn).unwrap(), LATEST_VERSION);
        assert_eq!(history(&conn).len(), MIGRATIONS.len());
    }

    #[test]
    fn outbox_route_applies_to_a_version_4_database_with_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        let before = MIGRATIONS
            .iter()
            .position(|m| m.name.ends_with("_outbox_route"))
            .unwrap();
        assert_eq!(MIGRATIONS[before].version, 5);
        {
            let mut conn = Connection::open(&path).unwrap();
            assert_eq!(migrate_to(&mut conn, &MIGRATIONS[..before]).unwrap(), 4);
            conn.execute(
                "INSERT INTO outbox (id, recipient, body, priority, kind, created_ms, expires_ms, \
                 state, next_attempt_ms, updated_ms, hops) \
                 VALUES (?1, 'bob', x'00', 1, 1, 10, 20, 'routed', 10, 10, 3)",
                [[7u8; 16]],
            )
            .unwrap();
        }
        // Opening with this build migrates; the old row reads back as `auto`.
        let mut store = crate::Store::open(&path).unwrap();
        assert_eq!(store.schema_version(), LATEST_VERSION);
        let old = store.get_outgoing(&[7; 16]).unwrap().unwrap();
        assert_eq!(
            (old.route, old.hops, old.state),
            (crate::Route::Auto, Some(3), crate::DeliveryState::Routed)
        );
        assert_eq!(history(&store.conn).len(), MIGRATIONS.len());
        // The CHECK constraint holds on the new column.
        let bad = store
            .conn
            .execute("UPDATE outbox SET route = 'sideways'", [])
            .map(|_| ());
        assert!(bad.is_err(), "route 'sideways' passed the CHECK constraint");
        store.set_hops(&[7; 16], 4, 30).unwrap();
        assert_eq!(store.get_outgoing(&[7; 16]).unwrap().unwrap().hops, Some(4));
    }

    #[test]
    fn outbox_route_onion_keeps_every_route_of_a_version_5_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        let before = MIGRATIONS
            .iter()
            .position(|m| m.name.ends_with("_outbox_route_onion"))
            .unwrap();
        assert_eq!(MIGRATIONS[before].version, 6);
        {
            let mut conn = Connection::open(&path).unwrap();
            assert_eq!(migrate_to(&mut conn, &MIGRATIONS[..before]).unwrap(), 5);
            for (i, route) in ["auto", "direct", "multihop"].into_iter().enumerate() {
                conn.execute(
                    "INSERT INTO outbox (id, recipient, body, priority, kind, created_ms, \
                     expires_ms, state, next_attempt_ms, updated_ms, route) \
                     VALUES (?1, 'bob', x'00', 1, 1, 10, 20, 'queued', 10, 10, ?2)",
                    rusqlite::params![[i as u8; 16], route],
                )
                .unwrap();
            }
        }
        let store = crate::Store::open(&path).unwrap();
        assert_eq!(store.schema_version(), LATEST_VERSION);
        for (i, route) in [
            crate::Route::Auto,
            crate::Route::Direct,
            crate::Route::Multihop,
        ]
        .into_iter()
        .enumerate()
        {
            let row = store.get_outgoing(&[i as u8; 16]).unwrap().unwrap();
            assert_eq!(row.route, route);
        }
        store
            .conn
            .execute(
                "UPDATE outbox SET route = 'onion' WHERE id = ?1",
                [[0u8; 16]],
            )
            .unwrap();
        assert_eq!(
            store.get_outgoing(&[0; 16]).unwrap().unwrap().route,
            crate::Route::Onion
        );
        let bad = store
            .conn
            .execute("UPDATE outbox SET route = 'sideways'", [])
            .map(|_| ());
        assert!(bad.is_err(), "route 'sideways' passed the CHECK constraint");
    }

    #[test]
    fn newer_version_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        conn.execute(
            "INSERT INTO schema_migrations VALUES (?1, 'future', 0)",
            [LATEST_VERSION + 1],
        )
        .unwrap();
        match migrate(&mut conn) {
            Err(OpenError::TooNew { found, supported }) => {
                assert_eq!((found, supported), (LATEST_VERSION + 1, LATEST_VERSION));
            }
            other => panic!("expected TooNew, got {other:?}"),
        }
    }

    #[test]
    fn renamed_migration_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        conn.execute(
            "UPDATE schema_migrations SET name = 'other' WHERE version = 1",
            [],
        )
        .unwrap();
        assert!(matches!(
            migrate(&mut conn),
            Err(OpenError::MigrationMismatch { version: 1, .. })
        ));
    }

    #[test]
    fn failed_migration_rolls_back_whole() {
        let broken = [
            MIGRATIONS[0],
            Migration {
                version: 2,
                name: "20250601130000_broken",
                sql: "CREATE TABLE half (x INTEGER); THIS IS NOT SQL;",
            },
        ];
        let mut conn = Connection::open_in_memory().unwrap();
        assert!(matches!(
            migrate_to(&mut conn, &broken),
            Err(OpenError::Migrate { version: 2, .. })
        ));
        assert_eq!(recorded_version(&conn).unwrap(), 1);
        let half: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'half'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(half, 0);
    }
}
