//! The writer thread: the only write connection, group commit, retention.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rusqlite::{Connection, Transaction, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::store::{Encoded, Encoder};
use super::{ActuationRecord, JournalError, JournalOptions, TickRecord};

/// At most this many commands share one transaction, so a burst cannot make
/// one commit (and every caller waiting on it) arbitrarily slow.
const MAX_BATCH: usize = 1_000;

/// Rows deleted per retention transaction; queued commands are served
/// between two batches.
pub(super) const SWEEP_BATCH: usize = 1_000;

/// What callers ask of the writer. Every write replies after its commit.
#[derive(Debug)]
pub(super) enum Command {
    /// Insert a record; reply with its id.
    Append {
        record: Box<TickRecord>,
        /// `ticks.target` (none: not known).
        target: Option<i64>,
        reply: oneshot::Sender<Result<i64, JournalError>>,
    },
    /// Replace a record's actuation and, with `owe`, keep the change's
    /// announcement (JSON) in the outbox in the same transaction; reply with
    /// the outbox id (0: none).
    UpdateActuation {
        id: i64,
        actuation: ActuationRecord,
        owe: Option<String>,
        reply: oneshot::Sender<Result<i64, JournalError>>,
    },
    /// Delete a notification from the outbox: it was delivered or given up on.
    Settle {
        id: i64,
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
    /// Set a scaler's pause flag.
    SetPaused {
        scaler: String,
        paused: bool,
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
    /// Keep a scaler's change in flight (the actuator's JSON), or with
    /// `None` forget it: the change ended.
    SaveInFlight {
        scaler: String,
        change: Option<String>,
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
    /// Run a retention sweep now; reply when it is complete.
    Sweep {
        reply: oneshot::Sender<Result<u64, JournalError>>,
    },
    /// Finish this batch, then stop.
    Shutdown { reply: Option<oneshot::Sender<()>> },
}

/// Starts the writer thread on `conn`. It sweeps retention first.
pub(super) fn spawn(
    conn: Connection,
    lock: std::fs::File,
    path: PathBuf,
    options: JournalOptions,
    commits: Arc<AtomicU64>,
) -> Result<(mpsc::Sender<Command>, JoinHandle<()>), JournalError> {
    let (commands, receiver) = mpsc::channel();
    let writer = Writer {
        conn,
        _lock: lock,
        path,
        encoder: Encoder::new(),
        sweep: Sweep {
            running: true,
            deleted: 0,
            waiters: Vec::new(),
            next: Instant::now() + options.sweep_interval,
        },
        options,
        commits,
    };
    let handle = thread::Builder::new()
        .name("journal-writer".into())
        .spawn(move || writer.run(receiver))
        .map_err(JournalError::Spawn)?;
    Ok((commands, handle))
}

struct Writer {
    conn: Connection,
    /// The journal's lock file, locked: released when the writer stops.
    _lock: std::fs::File,
    path: PathBuf,
    encoder: Encoder,
    options: JournalOptions,
    sweep: Sweep,
    commits: Arc<AtomicU64>,
}

/// The state of the retention sweep.
struct Sweep {
    /// A sweep is under way (one batch runs whenever no command waits).
    running: bool,
    /// Rows deleted by the sweep under way.
    deleted: u64,
    /// Callers of `sweep_now` waiting for it to finish.
    waiters: Vec<oneshot::Sender<Result<u64, JournalError>>>,
    /// When the next periodic sweep starts.
    next: Instant,
}

/// A command's answer, sent once its transaction is settled.
enum Reply {
    Id(
        oneshot::Sender<Result<i64, JournalError>>,
        Result<i64, JournalError>,
    ),
    Unit(
        oneshot::Sender<Result<(), JournalError>>,
        Result<(), JournalError>,
    ),
}

impl Writer {
    fn run(mut self, commands: Receiver<Command>) {
        let mut shutdown_replies = Vec::new();
        loop {
            let wait = if self.sweep.running {
                Duration::ZERO
            } else {
                self.sweep.next.saturating_duration_since(Instant::now())
            };
            match commands.recv_timeout(wait) {
                Ok(first) => {
                    // Group commit: everything queued by now shares one
                    // transaction. Sleeping (rather than waiting on the
                    // channel) lets writers queue without waking this thread.
                    if !self.options.commit_delay.is_zero()
                        && !matches!(first, Command::Shutdown { .. })
                    {
                        thread::sleep(self.options.commit_delay);
                    }
                    let mut batch = vec![first];
                    batch.extend(commands.try_iter().take(MAX_BATCH - 1));
                    if self.apply(batch, &mut shutdown_replies) {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.sweep_step(),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        for waiter in self.sweep.waiters.drain(..) {
            let _ = waiter.send(Err(JournalError::Closed));
        }
        // Closing the last connection checkpoints the WAL into the database.
        if let Err((_, err)) = self.conn.close() {
            tracing::warn!(path = %self.path.display(), error = %err, "Closing the journal failed.");
        }
        tracing::debug!(path = %self.path.display(), "The journal writer stopped.");
        for reply in shutdown_replies.into_iter().flatten() {
            let _: Result<(), ()> = reply.send(());
        }
    }

    /// Applies a batch in one transaction, then replies. Returns whether a
    /// shutdown was asked for.
    fn apply(
        &mut self,
        batch: Vec<Command>,
        shutdown_replies: &mut Vec<Option<oneshot::Sender<()>>>,
    ) -> bool {
        let mut stop = false;
        let mut replies = Vec::with_capacity(batch.len());
        let mut failure = None;
        let writes = batch.len();
        let mut tx = match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(tx) => Some(tx),
            Err(err) => {
                failure = Some(err);
                None
            }
        };
        for command in batch {
            // After a failure nothing more runs; every write gets the error.
            let tx = tx.as_mut().filter(|_| failure.is_none());
            match command {
                Command::Append {
                    record,
                    target,
                    reply,
                } => {
                    let result = match (tx, self.encoder.encode(*record, target)) {
                        (_, Err(err)) => Err(err),
                        (None, Ok(_)) => Ok(0),
                        (Some(tx), Ok(row)) => insert(tx, &row).or_else(|err| {
                            failure = Some(err);
                            Ok(0)
                        }),
                    };
                    replies.push(Reply::Id(reply, result));
                }
                Command::UpdateActuation {
                    id,
                    actuation,
                    owe,
                    reply,
                } => {
                    let now_ms = self.options.clock.now_ms();
                    let result = match tx {
                        None => Ok(0),
                        Some(tx) => update_actuation(tx, id, &actuation)
                            .and_then(|()| match &owe {
                                None => Ok(0),
                                Some(announcement) => owe_notification(tx, announcement, now_ms)
                                    .map_err(Failure::Sqlite),
                            })
                            .or_else(|err| match err {
                                Failure::Sqlite(err) => {
                                    failure = Some(err);
                                    Ok(0)
                                }
                                Failure::Journal(err) => Err(err),
                            }),
                    };
                    replies.push(Reply::Id(reply, result));
                }
                Command::Settle { id, reply } => {
                    if let Some(tx) = tx
                        && let Err(err) = tx
                            .prepare_cached("DELETE FROM outbox WHERE id = ?1")
                            .and_then(|mut stmt| stmt.execute([id]))
                    {
                        failure = Some(err);
                    }
                    replies.push(Reply::Unit(reply, Ok(())));
                }
                Command::SetPaused {
                    scaler,
                    paused,
                    reply,
                } => {
                    if let Some(tx) = tx
                        && let Err(err) =
                            set_paused(tx, &scaler, paused, self.options.clock.now_ms())
                    {
                        failure = Some(err);
                    }
                    replies.push(Reply::Unit(reply, Ok(())));
                }
                Command::SaveInFlight {
                    scaler,
                    change,
                    reply,
                } => {
                    if let Some(tx) = tx
                        && let Err(err) = save_in_flight(
                            tx,
                            &scaler,
                            change.as_deref(),
                            self.options.clock.now_ms(),
                        )
                    {
                        failure = Some(err);
                    }
                    replies.push(Reply::Unit(reply, Ok(())));
                }
                Command::Sweep { reply } => {
                    self.sweep.waiters.push(reply);
                    self.sweep.running = true;
                }
                Command::Shutdown { reply } => {
                    shutdown_replies.push(reply);
                    stop = true;
                }
            }
        }
        let settled = match (tx, failure) {
            (Some(tx), None) => tx
                .commit()
                .inspect(|()| _ = self.commits.fetch_add(1, Ordering::Relaxed)),
            // Dropping the transaction rolls it back.
            (_, Some(err)) => Err(err),
            (None, None) => unreachable!("a transaction exists unless beginning it failed"),
        };
        let failed = settled.err().map(|err| {
            tracing::error!(
                path = %self.path.display(), error = %err, writes,
                "A journal transaction failed and was rolled back."
            );
            Arc::new(err)
        });
        for reply in replies {
            let fail = |path: &PathBuf, source: &Arc<rusqlite::Error>| JournalError::Write {
                path: path.clone(),
                source: source.clone(),
            };
            // A caller that gave up waiting is no error.
            match (reply, &failed) {
                (Reply::Id(reply, Ok(_)), Some(source)) => {
                    let _ = reply.send(Err(fail(&self.path, source)));
                }
                (Reply::Id(reply, result), _) => {
                    let _ = reply.send(result);
                }
                (Reply::Unit(reply, Ok(())), Some(source)) => {
                    let _ = reply.send(Err(fail(&self.path, source)));
                }
                (Reply::Unit(reply, result), _) => {
                    let _ = reply.send(result);
                }
            }
        }
        stop
    }

    /// Deletes one batch of expired records; finishes the sweep when fewer
    /// than a batch were left.
    fn sweep_step(&mut self) {
        if !self.sweep.running {
            self.sweep.running = true;
            self.sweep.deleted = 0;
        }
        let retention_ms = i64::try_from(self.options.retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff_ms = self.options.clock.now_ms().saturating_sub(retention_ms);
        let deleted = self
            .conn
            // Each scaler's newest evaluating tick stays, however old: a
            // restart takes the policies' state from it (ticks that could
            // not read the target evaluate nothing), and a target down for
            // longer than the retention would otherwise take the state
            // along with it.
            .prepare_cached(
                "DELETE FROM ticks WHERE id IN \
                 (SELECT id FROM ticks AS t WHERE time_ms < ?1 \
                  AND (evaluations = 0 OR EXISTS (SELECT 1 FROM ticks AS n \
                   WHERE n.scaler = t.scaler AND n.evaluations > 0 \
                   AND (n.time_ms > t.time_ms OR (n.time_ms = t.time_ms AND n.id > t.id)))) \
                  ORDER BY time_ms LIMIT ?2)",
            )
            .and_then(|mut stmt| stmt.execute(params![cutoff_ms, SWEEP_BATCH as i64]));
        // Notifications owed that long (the webhooks gave up or the daemon
        // was down) go with the records they tell of.
        let deleted = deleted.and_then(|deleted| {
            self.conn
                .prepare_cached("DELETE FROM outbox WHERE created_ms < ?1")
                .and_then(|mut stmt| stmt.execute([cutoff_ms]))
                .map(|_| deleted)
        });
        let result = match deleted {
            Ok(deleted) => {
                self.sweep.deleted += deleted as u64;
                if deleted == SWEEP_BATCH {
                    return;
                }
                if self.sweep.deleted > 0 {
                    tracing::info!(
                        path = %self.path.display(), deleted = self.sweep.deleted, cutoff_ms,
                        "Deleted journal records older than the retention."
                    );
                }
                Ok(self.sweep.deleted)
            }
            Err(err) => {
                tracing::error!(
                    path = %self.path.display(), error = %err,
                    "Deleting expired journal records failed; will retry at the next sweep."
                );
                Err(Arc::new(err))
            }
        };
        for waiter in self.sweep.waiters.drain(..) {
            let _ = waiter.send(result.clone().map_err(|source| JournalError::Write {
                path: self.path.clone(),
                source,
            }));
        }
        self.sweep.running = false;
        self.sweep.deleted = 0;
        self.sweep.next = Instant::now() + self.options.sweep_interval;
    }
}

/// An update's failure: SQLite's (fails the whole batch) or the journal's
/// (this command only).
enum Failure {
    Sqlite(rusqlite::Error),
    Journal(JournalError),
}

fn insert(tx: &Transaction<'_>, row: &Encoded) -> rusqlite::Result<i64> {
    tx.prepare_cached(
        "INSERT INTO ticks (time_ms, scaler, mode, current, desired, recommendation, proposal, \
         is_scale, evaluations, actuation, record, target) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        row.time_ms,
        row.scaler,
        row.mode,
        row.current,
        row.desired,
        row.recommendation,
        row.proposal,
        row.is_scale,
        row.evaluations,
        row.actuation,
        row.body,
        row.target,
    ])?;
    Ok(tx.last_insert_rowid())
}

fn update_actuation(
    tx: &Transaction<'_>,
    id: i64,
    actuation: &ActuationRecord,
) -> Result<(), Failure> {
    let json = serde_json::to_string(actuation).map_err(|err| {
        Failure::Journal(JournalError::Encode {
            what: format!("the actuation of record {id}"),
            source: err.into(),
        })
    })?;
    let changed = tx
        .prepare_cached("UPDATE ticks SET actuation = ?2 WHERE id = ?1")
        .and_then(|mut stmt| stmt.execute(params![id, json]))
        .map_err(Failure::Sqlite)?;
    if changed == 0 {
        return Err(Failure::Journal(JournalError::NotFound { id }));
    }
    Ok(())
}

fn owe_notification(
    tx: &Transaction<'_>,
    announcement: &str,
    now_ms: i64,
) -> rusqlite::Result<i64> {
    tx.prepare_cached("INSERT INTO outbox (created_ms, announcement) VALUES (?1, ?2)")?
        .execute(params![now_ms, announcement])?;
    Ok(tx.last_insert_rowid())
}

fn set_paused(
    tx: &Transaction<'_>,
    scaler: &str,
    paused: bool,
    now_ms: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO scaler_control (scaler, paused, updated_ms) VALUES (?1, ?2, ?3) \
         ON CONFLICT (scaler) DO UPDATE SET paused = excluded.paused, \
         updated_ms = excluded.updated_ms",
    )?
    .execute(params![scaler, paused, now_ms])?;
    Ok(())
}

fn save_in_flight(
    tx: &Transaction<'_>,
    scaler: &str,
    change: Option<&str>,
    now_ms: i64,
) -> rusqlite::Result<()> {
    match change {
        Some(change) => tx
            .prepare_cached(
                "INSERT INTO in_flight (scaler, change, updated_ms) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (scaler) DO UPDATE SET change = excluded.change, \
                 updated_ms = excluded.updated_ms",
            )?
            .execute(params![scaler, change, now_ms]),
        None => tx
            .prepare_cached("DELETE FROM in_flight WHERE scaler = ?1")?
            .execute([scaler]),
    }
    .map(drop)
}
