//! The journal's tables, and opening connections to them.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

use super::{Durability, JournalError};

/// The schema version this build writes (`PRAGMA user_version`). It also
/// reads versions 1 to 3 (ticks are the same) and upgrades them when it
/// opens them for writing.
pub(super) const VERSION: i64 = 4;

/// The oldest version this build reads.
const OLDEST_READ: i64 = 1;

/// Version 1. `ticks.record` is the whole record as zstd-compressed JSON, as
/// appended; `ticks.actuation` (JSON) is the only column ever updated and
/// overrides the record's own. AUTOINCREMENT keeps ids unique for good, even
/// after retention emptied the table.
const SCHEMA_V1: &str = "
CREATE TABLE ticks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms INTEGER NOT NULL,
    scaler TEXT NOT NULL,
    mode TEXT NOT NULL,
    current INTEGER NOT NULL,
    desired INTEGER NOT NULL,
    recommendation INTEGER NOT NULL, -- -1: the tick kept none
    proposal INTEGER,
    is_scale INTEGER NOT NULL,
    evaluations INTEGER NOT NULL,
    actuation TEXT NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX ticks_scaler_time ON ticks (scaler, time_ms);
CREATE INDEX ticks_time ON ticks (time_ms);
CREATE TABLE scaler_control (
    scaler TEXT PRIMARY KEY,
    paused INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Version 2 adds the notifications owed: a change's announcement (JSON),
/// written in the transaction that records the change's outcome and deleted
/// once every webhook that wanted it was told (or given up on), so that a
/// crash does not lose it.
const SCHEMA_V2: &str = "
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_ms INTEGER NOT NULL,
    announcement TEXT NOT NULL
);
";

/// Version 4 adds the changes in flight: what an actuator needs to carry on
/// a change that takes several ticks (an Auto Scaling group's victims
/// draining) after a restart, one row a scaler, written when it changes and
/// deleted when the change ends. Builds of version 3 would leave a row
/// behind that a later build resumed; the version tells them to refuse the
/// file.
const SCHEMA_V4: &str = "
CREATE TABLE in_flight (
    scaler TEXT PRIMARY KEY,
    change TEXT NOT NULL, -- the actuator's own JSON
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
";

// Version 3 changes no table: a tick that kept no recommendation (see
// `envelope::Verdict`) is written with `ticks.recommendation` -1 and a null
// in its record, which builds of version 2 cannot read. The version tells
// them to refuse the file rather than fail on such a row.

/// How long a connection waits for another's lock (another process on the
/// same file, or a checkpoint) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The WAL is truncated back to this size after a checkpoint.
const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// The writer's page cache, in KiB (SQLite's `cache_size` takes a negative
/// number as KiB). The writer appends, updates recent rows and deletes the
/// oldest: what it reuses is the top of the table's and the indexes' trees
/// and their two edges, a few dozen pages. The per-scaler index has one
/// insertion point per scaler, more leaves than either size holds. SQLite's
/// default, 2 MiB, kept a fleet of 10,000 scalers 1.5 MiB higher in resident
/// memory with no difference in CPU at its 667 appends/s
/// (tests/benches/fleet.rs); what it costs is ~10 % of the saturation
/// throughput (`cargo bench -p scalewise --bench journal -- --quick`, the
/// two builds alternated: 11,400–13,400 appends/s instead of 13,000–14,800),
/// still 17 times that fleet's need.
const WRITER_CACHE_KIB: i64 = 512;

/// Opens the one write connection: WAL mode, the durability's synchronous
/// level, and the schema created or checked.
pub(super) fn open_writer(path: &Path, durability: Durability) -> Result<Connection, JournalError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    // SQLite takes an empty file for a new database. A journal emptied
    // (truncated by hand, a backup that restored nothing) would then start
    // over in silence: no history restored, ids from 1 again. Said loudly.
    if std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0)
        && !Path::new(&format!("{}-wal", path.display())).exists()
    {
        tracing::warn!(
            path = %path.display(),
            "The journal file is empty (0 bytes): a new journal starts in it, with no history to restore. If it held records, restore it from a backup before the daemon writes."
        );
    }
    let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| open_error(path, e))?;
    // The first statement that reads the file: one that is not SQLite fails here.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(|e| open_error(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(JournalError::NotAJournal {
            path: path.to_owned(),
            reason: format!("SQLite kept journal_mode {mode} instead of switching to WAL"),
        });
    }
    if conn
        .is_readonly(rusqlite::MAIN_DB)
        .map_err(|e| open_error(path, e))?
    {
        return Err(open_error(
            path,
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
                Some("the file or its folder is not writable".into()),
            ),
        ));
    }
    let synchronous = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)
        .and_then(|()| conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT))
        .and_then(|()| conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB))
        .map_err(|e| open_error(path, e))?;
    let conn = migrate(conn, path)?;
    add_target_column(&conn).map_err(|e| open_error(path, e))?;
    Ok(conn)
}

/// `ticks.target`: what the tick's target was (64 bits of a digest of its
/// kind, object and name, see `TargetConfig::target_key`), so that a restart rebuilds a
/// scaler's envelope from the ticks of the target it has now only. Added
/// to a file that lacks it, without a new schema version: builds without it
/// read and write the file as before (their rows have none, and count as
/// of any target). Adding a column rewrites nothing.
fn add_target_column(conn: &Connection) -> rusqlite::Result<()> {
    let has: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('ticks') WHERE name = 'target')",
        [],
        |row| row.get(0),
    )?;
    if !has {
        conn.execute_batch("ALTER TABLE ticks ADD COLUMN target INTEGER")?;
    }
    Ok(())
}

/// Creates the schema in an empty file, accepts the current version, and
/// refuses anything else.
fn migrate(mut conn: Connection, path: &Path) -> Result<Connection, JournalError> {
    // IMMEDIATE: two processes opening one new file must not both create it.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| open_error(path, e))?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|e| open_error(path, e))?;
    match version {
        0 => {
            let tables: i64 = tx
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                    [],
                    |row| row.get(0),
                )
                .map_err(|e| open_error(path, e))?;
            if tables > 0 {
                return Err(JournalError::NotAJournal {
                    path: path.to_owned(),
                    reason: format!("it has {tables} tables but no Scalewise schema version"),
                });
            }
            tx.execute_batch(SCHEMA_V1)
                .and_then(|()| tx.execute_batch(SCHEMA_V2))
                .and_then(|()| tx.execute_batch(SCHEMA_V4))
                .and_then(|()| tx.pragma_update(None, "user_version", VERSION))
                .and_then(|()| tx.commit())
                .map_err(|e| open_error(path, e))?;
            tracing::info!(path = %path.display(), version = VERSION, "Created a new journal.");
        }
        1..=3 => {
            let added = match version {
                1 => [SCHEMA_V2, SCHEMA_V4].concat(),
                _ => SCHEMA_V4.to_owned(),
            };
            tx.execute_batch(&added)
                .and_then(|()| tx.pragma_update(None, "user_version", VERSION))
                .and_then(|()| tx.commit())
                .map_err(|e| open_error(path, e))?;
            tracing::info!(
                path = %path.display(), from = version, to = VERSION,
                "Upgraded the journal's schema (older builds of Scalewise no longer open it)."
            );
        }
        _ => {
            check_version(path, version)?;
            tx.commit().map_err(|e| open_error(path, e))?;
        }
    }
    Ok(conn)
}

/// Accepts only the version this build understands.
pub(super) fn check_version(path: &Path, version: i64) -> Result<(), JournalError> {
    match version {
        OLDEST_READ..=VERSION => Ok(()),
        0 => Err(JournalError::NotAJournal {
            path: path.to_owned(),
            reason: "it has no Scalewise schema version (empty or another program's database)"
                .into(),
        }),
        v if v > VERSION => Err(JournalError::NewerSchema {
            path: path.to_owned(),
            found: v,
            supported: VERSION,
        }),
        v => Err(JournalError::NotAJournal {
            path: path.to_owned(),
            reason: format!("unknown schema version {v}"),
        }),
    }
}

/// Opens a read connection to an existing journal. It may not write
/// (`query_only`), but it is opened read-write so that it can use the WAL
/// index like any other connection.
pub(super) fn open_reader(path: &Path) -> Result<Connection, JournalError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .and_then(|()| conn.pragma_update(None, "query_only", true))
        .map_err(|e| open_error(path, e))?;
    Ok(conn)
}

/// Names the path, and tells a damaged file from one that cannot be opened.
pub(super) fn open_error(path: &Path, source: rusqlite::Error) -> JournalError {
    let path = path.to_owned();
    match source.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            JournalError::Corrupt { path, source }
        }
        _ => JournalError::Open { path, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer's page cache is bounded below SQLite's default (2 MiB):
    /// it is resident memory for as long as the daemon runs.
    #[test]
    fn the_writer_keeps_a_small_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_writer(&dir.path().join("journal.db"), Durability::Full).unwrap();
        let cache: i64 = conn
            .pragma_query_value(None, "cache_size", |row| row.get(0))
            .unwrap();
        assert_eq!(cache, -WRITER_CACHE_KIB);
    }

    /// A journal written by a build of schema version 1 keeps its records,
    /// is read as it is, and gains the outbox and the changes in flight
    /// when opened for writing.
    #[test]
    fn a_version_1_journal_is_read_and_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA_V1).unwrap();
            conn.execute(
                "INSERT INTO scaler_control (scaler, paused, updated_ms) VALUES ('web', 1, 5)",
                [],
            )
            .unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
        }
        let version = |conn: &Connection| -> i64 {
            conn.pragma_query_value(None, "user_version", |row| row.get(0))
                .unwrap()
        };
        let reader = open_reader(&path).unwrap();
        check_version(&path, version(&reader)).expect("version 1 reads");
        drop(reader);
        let writer = open_writer(&path, Durability::Full).unwrap();
        assert_eq!(version(&writer), VERSION);
        let paused: bool = writer
            .query_row("SELECT paused FROM scaler_control", [], |row| row.get(0))
            .unwrap();
        assert!(paused, "what version 1 wrote is still there");
        let targets: i64 = writer
            .query_row("SELECT count(target) FROM ticks", [], |row| row.get(0))
            .expect("ticks.target was added");
        assert_eq!(targets, 0);
        writer
            .execute(
                "INSERT INTO outbox (created_ms, announcement) VALUES (1, '{}')",
                [],
            )
            .unwrap();
        writer
            .execute(
                "INSERT INTO in_flight (scaler, change, updated_ms) VALUES ('web', '{}', 1)",
                [],
            )
            .unwrap();
        drop(writer);
        // Opened again it is simply the current version.
        let writer = open_writer(&path, Durability::Full).unwrap();
        assert_eq!(version(&writer), VERSION);
        let newer = check_version(&path, VERSION + 1).unwrap_err();
        assert!(matches!(newer, JournalError::NewerSchema { .. }), "{newer}");
    }
}
