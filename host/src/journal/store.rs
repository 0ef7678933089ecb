//! How a record is stored (columns + compressed JSON) and every read.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};

use super::{
    ActuationRecord, JournalError, Query, Recovery, SavedChange, TickRecord, TickSummary,
    policy_states, schema,
};
use crate::config::Mode;

/// zstd level for stored records. On records built from real load (see
/// `benches/journal.rs`) level 1 already makes them 4× smaller; levels 3 and 9
/// gain under 3% for 1.7× and 8× the compression time.
const ZSTD_LEVEL: i32 = 1;

/// A decoded record larger than this is refused as damaged.
const MAX_RECORD_BYTES: u64 = 64 * 1024 * 1024;

/// Idle read connections kept for reuse.
const MAX_IDLE_READERS: usize = 4;

/// One record, ready to insert.
#[derive(Debug)]
pub(super) struct Encoded {
    pub time_ms: i64,
    pub scaler: String,
    pub mode: &'static str,
    pub current: u32,
    pub desired: u32,
    /// The column holds -1 for a tick that kept none (the column predates
    /// that case and is `NOT NULL`).
    pub recommendation: i64,
    pub proposal: Option<u32>,
    pub is_scale: bool,
    pub evaluations: i64,
    pub actuation: String,
    pub body: Vec<u8>,
    pub target: Option<i64>,
}

/// Turns records into rows; owns a reusable zstd context.
pub(super) struct Encoder {
    compressor: zstd::bulk::Compressor<'static>,
    json: Vec<u8>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").finish_non_exhaustive()
    }
}

impl Encoder {
    pub(super) fn new() -> Self {
        Encoder {
            // Fails only when zstd cannot allocate its context.
            compressor: zstd::bulk::Compressor::new(ZSTD_LEVEL)
                .expect("a zstd compression context"),
            json: Vec::with_capacity(16 * 1024),
        }
    }

    /// The row for `record`; the id is left out (the row's id is the truth).
    pub(super) fn encode(
        &mut self,
        mut record: TickRecord,
        target: Option<i64>,
    ) -> Result<Encoded, JournalError> {
        let failed = |scaler: &str, source: io::Error| JournalError::Encode {
            what: format!("a tick record of scaler {scaler:?}"),
            source,
        };
        record.id = None;
        self.json.clear();
        serde_json::to_writer(&mut self.json, &record)
            .map_err(|e| failed(&record.scaler, e.into()))?;
        let body = self
            .compressor
            .compress(&self.json)
            .map_err(|e| failed(&record.scaler, e))?;
        let actuation = serde_json::to_string(&record.actuation)
            .map_err(|e| failed(&record.scaler, e.into()))?;
        Ok(Encoded {
            time_ms: record.time_ms,
            mode: mode_label(record.mode),
            current: record.target.current,
            desired: record.desired,
            recommendation: record.recommendation.map_or(-1, i64::from),
            proposal: record.proposal,
            is_scale: record.is_scale(),
            evaluations: record.evaluations.len() as i64,
            actuation,
            body,
            scaler: record.scaler,
            target,
        })
    }
}

fn mode_label(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "enforce",
        Mode::DryRun => "dry-run",
    }
}

fn parse_mode(label: &str) -> Option<Mode> {
    match label {
        "enforce" => Some(Mode::Enforce),
        "dry-run" => Some(Mode::DryRun),
        _ => None,
    }
}

/// Columns selected to rebuild a whole record.
const RECORD_COLUMNS: &str = "id, actuation, record";

/// Columns selected for a [`TickSummary`].
const SUMMARY_COLUMNS: &str = "id, time_ms, mode, current, desired, recommendation, actuation";

/// A read connection with its own zstd context.
pub(super) struct Reader {
    path: PathBuf,
    conn: Connection,
    decompressor: zstd::bulk::Decompressor<'static>,
}

impl Reader {
    fn open(path: &Path) -> Result<Reader, JournalError> {
        Ok(Reader {
            path: path.to_owned(),
            conn: schema::open_reader(path)?,
            // Fails only when zstd cannot allocate its context.
            decompressor: zstd::bulk::Decompressor::new().expect("a zstd decompression context"),
        })
    }

    fn read_error(&self, source: rusqlite::Error) -> JournalError {
        JournalError::Read {
            path: self.path.clone(),
            source,
        }
    }

    /// Refuses a file that is not a journal this build understands.
    pub(super) fn check_schema(&mut self) -> Result<(), JournalError> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|e| schema::open_error(&self.path, e))?;
        schema::check_version(&self.path, version)
    }

    /// Rows of `sql` (which selects [`RECORD_COLUMNS`]) as records.
    fn records(
        &mut self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<TickRecord>, JournalError> {
        let rows: Vec<(i64, String, Vec<u8>)> = {
            let mut stmt = self
                .conn
                .prepare_cached(sql)
                .map_err(|e| self.read_error(e))?;
            stmt.query_map(params, |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                .and_then(|rows| rows.collect())
                .map_err(|e| self.read_error(e))?
        };
        rows.into_iter()
            .map(|(id, actuation, body)| self.decode(id, &actuation, &body))
            .collect()
    }

    fn decode(
        &mut self,
        id: i64,
        actuation: &str,
        body: &[u8],
    ) -> Result<TickRecord, JournalError> {
        let failed = |source: io::Error| JournalError::Decode {
            path: self.path.clone(),
            id,
            source,
        };
        let size = zstd::zstd_safe::get_frame_content_size(body)
            .ok()
            .flatten()
            .filter(|&size| size <= MAX_RECORD_BYTES)
            .ok_or_else(|| failed(io::Error::other("not a zstd frame of known size")))?;
        let json = self
            .decompressor
            .decompress(body, size as usize)
            .map_err(failed)?;
        let mut record: TickRecord = serde_json::from_slice(&json).map_err(|e| failed(e.into()))?;
        record.actuation = serde_json::from_str(actuation).map_err(|e| failed(e.into()))?;
        record.id = Some(id);
        Ok(record)
    }

    pub(super) fn query(&mut self, filter: &Query) -> Result<Vec<TickRecord>, JournalError> {
        let (conditions, mut values) =
            conditions(filter.scaler.as_deref(), filter.since_ms, filter.until_ms);
        values.push(Value::Integer(
            i64::try_from(filter.limit).unwrap_or(i64::MAX),
        ));
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM ticks WHERE {conditions} \
             ORDER BY time_ms DESC, id DESC LIMIT ?"
        );
        self.records(&sql, params_from_iter(values))
    }

    pub(super) fn get(&mut self, id: i64) -> Result<Option<TickRecord>, JournalError> {
        let sql = format!("SELECT {RECORD_COLUMNS} FROM ticks WHERE id = ?1");
        Ok(self.records(&sql, [id])?.pop())
    }

    pub(super) fn recent(
        &mut self,
        scaler: &str,
        since_ms: i64,
    ) -> Result<Vec<TickRecord>, JournalError> {
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM ticks WHERE scaler = ?1 AND time_ms >= ?2 \
             ORDER BY time_ms, id"
        );
        self.records(&sql, params![scaler, since_ms])
    }

    /// One page of an export: records after `after` (time, id), oldest first.
    pub(super) fn export_page(
        &mut self,
        scaler: Option<&str>,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        after: Option<(i64, i64)>,
        limit: usize,
    ) -> Result<Vec<TickRecord>, JournalError> {
        let (mut conditions, mut values) = conditions(scaler, since_ms, until_ms);
        if let Some((time_ms, id)) = after {
            conditions.push_str(" AND (time_ms, id) > (?, ?)");
            values.extend([Value::Integer(time_ms), Value::Integer(id)]);
        }
        values.push(Value::Integer(limit as i64));
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM ticks WHERE {conditions} ORDER BY time_ms, id LIMIT ?"
        );
        self.records(&sql, params_from_iter(values))
    }

    pub(super) fn paused(&mut self, scaler: &str) -> Result<Option<bool>, JournalError> {
        self.conn
            .prepare_cached("SELECT paused FROM scaler_control WHERE scaler = ?1")
            .and_then(|mut stmt| stmt.query_row([scaler], |row| row.get(0)).optional())
            .map_err(|e| self.read_error(e))
    }

    /// The change `scaler`'s actuator saved as in flight. A journal of an
    /// older schema, opened only to be read, has none.
    pub(super) fn in_flight(&mut self, scaler: &str) -> Result<Option<SavedChange>, JournalError> {
        let row = self
            .conn
            .prepare_cached("SELECT change, updated_ms FROM in_flight WHERE scaler = ?1")
            .and_then(|mut stmt| {
                stmt.query_row([scaler], |row| {
                    Ok(SavedChange {
                        change: row.get(0)?,
                        updated_ms: row.get(1)?,
                    })
                })
                .optional()
            });
        match row {
            Err(rusqlite::Error::SqliteFailure(_, Some(message)))
                if message.starts_with("no such table") =>
            {
                Ok(None)
            }
            row => row.map_err(|e| self.read_error(e)),
        }
    }

    /// Every scaler's change saved as in flight, by scaler name.
    pub(super) fn all_in_flight(&mut self) -> Result<Vec<(String, SavedChange)>, JournalError> {
        let rows = self
            .conn
            .prepare_cached("SELECT scaler, change, updated_ms FROM in_flight ORDER BY scaler")
            .and_then(|mut stmt| {
                stmt.query_map([], |row| {
                    Ok((
                        row.get(0)?,
                        SavedChange {
                            change: row.get(1)?,
                            updated_ms: row.get(2)?,
                        },
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()
            });
        match rows {
            Err(rusqlite::Error::SqliteFailure(_, Some(message)))
                if message.starts_with("no such table") =>
            {
                Ok(Vec::new())
            }
            rows => rows.map_err(|e| self.read_error(e)),
        }
    }

    /// The outbox: (id, announcement JSON), oldest first.
    pub(super) fn owed(&mut self) -> Result<Vec<(i64, String)>, JournalError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, announcement FROM outbox ORDER BY id")
            .map_err(|e| JournalError::Read {
                path: self.path.clone(),
                source: e,
            })?;
        let rows = stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .and_then(|rows| rows.collect());
        rows.map_err(|e| JournalError::Read {
            path: self.path.clone(),
            source: e,
        })
    }

    /// The time of the newest tick of any scaler.
    pub(super) fn newest_time_ms(&mut self) -> Result<Option<i64>, JournalError> {
        self.conn
            .prepare_cached("SELECT MAX(time_ms) FROM ticks")
            .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
            .map_err(|e| self.read_error(e))
    }

    /// Everything recovery needs, from one read transaction (one snapshot).
    /// The scaler's newest `limit` ticks as summaries (no record decoded),
    /// oldest first.
    pub(super) fn summaries(
        &mut self,
        scaler: &str,
        limit: usize,
    ) -> Result<Vec<TickSummary>, JournalError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {SUMMARY_COLUMNS} FROM ticks WHERE scaler = ?1 \
                 ORDER BY time_ms DESC, id DESC LIMIT ?2"
            ))
            .map_err(|e| self.read_error(e))?;
        let rows: Vec<Result<TickSummary, (i64, String)>> = stmt
            .query_map(rusqlite::params![scaler, limit], summary)
            .and_then(|rows| rows.collect())
            .map_err(|e| self.read_error(e))?;
        drop(stmt);
        let mut summaries = rows
            .into_iter()
            .map(|row| {
                row.map_err(|(id, reason)| JournalError::Decode {
                    path: self.path.clone(),
                    id,
                    source: io::Error::other(reason),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        summaries.reverse();
        Ok(summaries)
    }

    pub(super) fn recover(
        &mut self,
        scaler: &str,
        since_ms: i64,
        target: Option<super::TargetKeys>,
    ) -> Result<Recovery, JournalError> {
        self.conn
            .execute_batch("BEGIN")
            .map_err(|e| self.read_error(e))?;
        let result = self.recover_in_snapshot(scaler, since_ms, target);
        // A read transaction has nothing to lose; ending it frees the snapshot.
        let ended = self
            .conn
            .execute_batch("COMMIT")
            .map_err(|e| self.read_error(e));
        let recovery = result?;
        ended?;
        Ok(recovery)
    }

    /// The time of `scaler`'s newest tick since `since_ms` of another target
    /// than `target` (either of its keys: see [`super::TargetKeys`]; rows
    /// written without a target count as of any).
    pub(super) fn moved(
        &mut self,
        scaler: &str,
        since_ms: i64,
        target: super::TargetKeys,
    ) -> Result<Option<i64>, JournalError> {
        self.conn
            .prepare_cached(
                "SELECT MAX(time_ms) FROM ticks WHERE scaler = ?1 AND time_ms >= ?2 \
                 AND target IS NOT NULL AND target <> ?3 AND target <> ?4",
            )
            .and_then(|mut stmt| {
                stmt.query_row((scaler, since_ms, target[0], target[1]), |row| row.get(0))
            })
            .map_err(|e| self.read_error(e))
    }

    fn recover_in_snapshot(
        &mut self,
        scaler: &str,
        since_ms: i64,
        target: Option<super::TargetKeys>,
    ) -> Result<Recovery, JournalError> {
        let paused = self.paused(scaler)?;
        // The ticks up to the newest one of another target in the window
        // read are that target's.
        let moved_ms = match target {
            Some(target) => self.moved(scaler, since_ms, target)?,
            None => None,
        };
        let summaries = |reader: &mut Reader, sql: &str, params: &[&dyn rusqlite::ToSql]| {
            let mut stmt = reader
                .conn
                .prepare_cached(sql)
                .map_err(|e| reader.read_error(e))?;
            let rows: Vec<Result<TickSummary, (i64, String)>> = stmt
                .query_map(params, summary)
                .and_then(|rows| rows.collect())
                .map_err(|e| reader.read_error(e))?;
            drop(stmt);
            // A damaged row (a mode a newer build wrote, a broken value)
            // is left out, with a warning: one record must not keep the
            // scaler, and the daemon with it, from starting.
            Ok(rows
                .into_iter()
                .filter_map(|row| match row {
                    Ok(summary) => Some(summary),
                    Err((id, reason)) => {
                        tracing::warn!(
                            %scaler,
                            id,
                            journal = %reader.path.display(),
                            "A journal record that cannot be read ({reason}) is left out of the scaler's restored history."
                        );
                        None
                    }
                })
                .collect::<Vec<_>>())
        };
        let last = summaries(
            self,
            &format!(
                "SELECT {SUMMARY_COLUMNS} FROM ticks WHERE scaler = ?1 \
                 ORDER BY time_ms DESC, id DESC LIMIT 1"
            ),
            &[&scaler],
        )?
        .pop();
        // The move is within the window read (`moved` looks no further back).
        let after = moved_ms.map_or(since_ms, |moved| moved + 1);
        let ticks = summaries(
            self,
            &format!(
                "SELECT {SUMMARY_COLUMNS} FROM ticks WHERE scaler = ?1 AND time_ms >= ?2 \
                 ORDER BY time_ms, id"
            ),
            &[&scaler, &after],
        )?;
        // Ticks that could not observe the target evaluated nothing; the
        // states stand as the last evaluating tick left them.
        let evaluated = match self.records(
            &format!(
                "SELECT {RECORD_COLUMNS} FROM ticks WHERE scaler = ?1 AND evaluations > 0 \
                 ORDER BY time_ms DESC, id DESC LIMIT 1"
            ),
            [scaler],
        ) {
            Ok(records) => records,
            Err(JournalError::Decode { id, source, .. }) => {
                tracing::warn!(
                    %scaler,
                    id,
                    journal = %self.path.display(),
                    "The journal record the policies' state comes from cannot be read ({source}); the policies start without state."
                );
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        let older: bool = self
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM ticks WHERE scaler = ?1 AND time_ms < ?2)",
            )
            .and_then(|mut stmt| stmt.query_row((scaler, since_ms), |row| row.get(0)))
            .map_err(|e| self.read_error(e))?;
        let in_flight = self.in_flight(scaler)?;
        Ok(Recovery {
            paused,
            last,
            // On this target, the ticks after the move begin its history.
            begins_history: !ticks.is_empty() && (!older || moved_ms.is_some()),
            moved_ms,
            ticks,
            policy_states: evaluated.first().map(policy_states).unwrap_or_default(),
            in_flight,
        })
    }
}

/// Reads a [`SUMMARY_COLUMNS`] row; a damaged row is `Err((id, why))`.
fn summary(row: &Row<'_>) -> rusqlite::Result<Result<TickSummary, (i64, String)>> {
    let id: i64 = row.get(0)?;
    let mode: String = row.get(2)?;
    let actuation: String = row.get(6)?;
    let Some(mode) = parse_mode(&mode) else {
        return Ok(Err((id, format!("unknown mode {mode:?}"))));
    };
    let actuation: ActuationRecord = match serde_json::from_str(&actuation) {
        Ok(actuation) => actuation,
        Err(err) => return Ok(Err((id, format!("bad actuation: {err}")))),
    };
    Ok(Ok(TickSummary {
        id,
        time_ms: row.get(1)?,
        mode,
        current: row.get(3)?,
        desired: row.get(4)?,
        recommendation: u32::try_from(row.get::<_, i64>(5)?).ok(),
        actuation,
    }))
}

/// The WHERE clause (never empty) and its parameters for the usual filters.
fn conditions(
    scaler: Option<&str>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
) -> (String, Vec<Value>) {
    let mut sql = String::from("1 = 1");
    let mut values = Vec::new();
    if let Some(scaler) = scaler {
        sql.push_str(" AND scaler = ?");
        values.push(Value::Text(scaler.to_owned()));
    }
    if let Some(since_ms) = since_ms {
        sql.push_str(" AND time_ms >= ?");
        values.push(Value::Integer(since_ms));
    }
    if let Some(until_ms) = until_ms {
        sql.push_str(" AND time_ms < ?");
        values.push(Value::Integer(until_ms));
    }
    (sql, values)
}

/// Read connections, opened on demand and kept for reuse. WAL lets them read
/// while the writer writes.
#[derive(Debug)]
pub(super) struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Reader>>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ReaderPool {
    pub(super) fn new(path: PathBuf) -> Self {
        ReaderPool {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on an idle reader (or a new one). Blocking.
    pub(super) fn with<T>(
        &self,
        f: impl FnOnce(&mut Reader) -> Result<T, JournalError>,
    ) -> Result<T, JournalError> {
        let idle = self.idle.lock().expect("reader pool lock").pop();
        let mut reader = match idle {
            Some(reader) => reader,
            None => Reader::open(&self.path)?,
        };
        let result = f(&mut reader);
        let mut idle = self.idle.lock().expect("reader pool lock");
        if idle.len() < MAX_IDLE_READERS {
            idle.push(reader);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every query shape must be served by an index in the requested order,
    /// never by scanning or sorting the whole table.
    #[test]
    fn queries_use_the_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.db");
        drop(schema::open_writer(&path, super::super::Durability::Full).unwrap());
        let conn = schema::open_reader(&path).unwrap();
        let cases = [
            (None, None, None, "ticks_time"),
            (Some("web"), Some(1), Some(2), "ticks_scaler_time"),
            (Some("web"), None, None, "ticks_scaler_time"),
            (None, Some(1), None, "ticks_time"),
            (None, None, Some(2), "ticks_time"),
        ];
        for (scaler, since, until, index) in cases {
            let (conditions, values) = conditions(scaler, since, until);
            for order in ["time_ms DESC, id DESC", "time_ms, id"] {
                let sql = format!(
                    "EXPLAIN QUERY PLAN SELECT {RECORD_COLUMNS} FROM ticks \
                     WHERE {conditions} ORDER BY {order} LIMIT 10"
                );
                let plan: Vec<String> = conn
                    .prepare(&sql)
                    .unwrap()
                    .query_map(params_from_iter(values.clone()), |row| row.get(3))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                let plan = plan.join("; ");
                assert!(plan.contains(index), "{sql}: {plan}");
                assert!(!plan.contains("TEMP B-TREE"), "{sql}: {plan}");
            }
        }
    }
}
