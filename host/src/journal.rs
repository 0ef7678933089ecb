//! The decision journal: a durable, append-only record of every tick.
//!
//! Every tick of every scaler leaves one [`TickRecord`]. The journal keeps
//! them in a SQLite database (one file plus its `-wal` and `-shm`
//! companions), queryable by scaler and time range, and rebuilds a scaler's
//! state after a restart ([`Journal::recover`]).
//!
//! # Durability
//!
//! The database runs in WAL mode with `synchronous = FULL`. An
//! [`append`](Journal::append) resolves only after the transaction holding its
//! record has committed, and under `FULL` a commit returns only after the
//! write-ahead log has been fsync'd. An acknowledged record therefore survives
//! `kill -9`, an OS crash and a power cut. `NORMAL` would survive `kill -9`
//! as well (the log is written, though not synced, before the commit
//! returns), but an OS crash or power cut could take the last transactions
//! with it, and that is exactly the window append-before-actuate must close:
//! the control loop calls an actuator only once the tick's `pending` record
//! is on disk, so after any crash a change that may have been made is visible
//! in the journal.
//!
//! `FULL` costs one fsync per commit, not per record: a dedicated writer
//! thread owns the only write connection and commits everything queued at
//! once in one transaction (group commit). More load makes bigger
//! transactions, not more fsyncs, and no write ever blocks the async runtime.
//!
//! Measured by `cargo bench -p scalewise --bench journal` (release, on a
//! shared 2-core VM, 2026-12-05; records built from the NASA trace: 6.1 KB
//! of JSON each): 10,000 scalers ticking every 15 s (667 appends/s for 60 s)
//! cost the writer thread 14% of one core, with append latency p50 0.6 ms
//! and p99 7 ms; the slowest take up to 0.23 s, few enough that the 60 s run
//! keeps them above p99 while the 20 s `--quick` run's p99 is 0.2 s (when in
//! the run they come is not measured). Flat out the journal takes 12,000–15,700
//! appends/s under `FULL` and 11,100–12,200 under `NORMAL` (within the
//! noise), about twenty times that need; SQLite's default 2 MiB page cache
//! took ~10 % more, and the writer keeps 512 KiB (`schema.rs`).
//!
//! # Append before actuate
//!
//! The control loop appends the tick with [`ActuationRecord::Pending`], calls
//! the actuator, then [`update_actuation`](Journal::update_actuation)s the
//! record. The actuation is the only part of a record that ever changes; it
//! lives in its own column so the update is small.
//!
//! # Storage
//!
//! One row per tick: the fields queries and recovery need as indexed columns
//! (id, time, scaler, mode, current, desired, recommendation, ...), the
//! actuation as JSON, and the whole record as zstd-compressed JSON: a
//! quarter of the plain JSON's size for 18 µs per record, so a typical
//! record fits in one page. With indexes a record takes about 2.1 KB on
//! disk: 10,000 scalers at 15 s write about 113 GiB a day, so size the
//! retention to the disk (a week at that scale is about 0.8 TB).
//! Record ids are never reused, even after retention emptied the table.
//! The schema is versioned with `PRAGMA user_version`; a file written by a
//! newer Scalewise is refused rather than misread, and a version 1 file is
//! upgraded (it gains the outbox) when opened for writing.
//!
//! Besides the ticks, the journal keeps the outbox of notifications owed
//! (see [`crate::notify`]): a change's announcement is written with its
//! outcome ([`update_actuation`](Journal::update_actuation) with `owe`) and
//! deleted once delivered ([`settle_notification`](Journal::settle_notification)).
//! What a crash left there is read back at start
//! ([`owed_notifications`](Journal::owed_notifications)).
//!
//! Records older than the retention are deleted at open and then every
//! minute, a thousand rows per transaction, with queued appends served
//! between the batches.

mod explain;
mod record;
mod schema;
mod store;
mod writer;

use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::actuators::Announcement;
use crate::clock::Clock;
use crate::config::Mode;

pub use explain::explain;
pub use record::*;

use store::ReaderPool;
use writer::Command;

/// How durable an acknowledged append is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous = FULL`: the log is fsync'd at every commit, so an
    /// acknowledged record survives power loss. The default.
    #[default]
    Full,
    /// `synchronous = NORMAL`: an acknowledged record survives the process
    /// being killed, but an OS crash or power cut may lose the last commits.
    Normal,
}

/// How a journal is opened.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// Records older than this (by their `time_ms`) are deleted.
    pub retention: Duration,
    /// The clock retention is measured against (the host's, which the demo
    /// runs faster than real time).
    pub clock: Clock,
    /// How often (real time) the retention sweep runs after the one at open.
    pub sweep_interval: Duration,
    /// What an acknowledged append survives.
    pub durability: Durability,
    /// How long the writer lets writes gather after the first one arrives,
    /// so that they share one transaction and one fsync (group commit with
    /// a delay, like PostgreSQL's `commit_delay`). Zero commits at once.
    pub commit_delay: Duration,
}

impl JournalOptions {
    /// The defaults: the wall clock, a sweep a minute, [`Durability::Full`],
    /// no commit delay.
    pub fn new(retention: Duration) -> Self {
        JournalOptions {
            retention,
            clock: Clock::system(),
            sweep_interval: Duration::from_secs(60),
            durability: Durability::Full,
            commit_delay: Duration::ZERO,
        }
    }
}

/// Which records a [`Journal::query`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Only this scaler's records; `None` = every scaler.
    pub scaler: Option<String>,
    /// Only records with `time_ms >= since_ms`.
    pub since_ms: Option<i64>,
    /// Only records with `time_ms < until_ms`.
    pub until_ms: Option<i64>,
    /// At most this many records (the newest).
    pub limit: usize,
}

impl Query {
    /// The newest `limit` records of every scaler.
    pub fn latest(limit: usize) -> Self {
        Query {
            scaler: None,
            since_ms: None,
            until_ms: None,
            limit,
        }
    }

    /// The newest `limit` records of one scaler.
    pub fn scaler(scaler: impl Into<String>, limit: usize) -> Self {
        Query {
            scaler: Some(scaler.into()),
            ..Query::latest(limit)
        }
    }
}

/// The indexed columns of one tick: what recovery needs, read without
/// decoding the record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TickSummary {
    /// The record's id.
    pub id: i64,
    /// When the tick ran (ms since the Unix epoch).
    pub time_ms: i64,
    /// Enforce or dry-run at the time.
    pub mode: Mode,
    /// Replicas at the start of the tick.
    pub current: u32,
    /// The replica count the host settled on.
    pub desired: u32,
    /// The recommendation kept for stabilisation windows, if the tick kept
    /// one.
    pub recommendation: Option<u32>,
    /// What the actuator did (as last updated).
    pub actuation: ActuationRecord,
}

impl TickSummary {
    /// Whether this tick changed (or, in dry-run, would have changed) the
    /// target.
    pub fn is_scale(&self) -> bool {
        self.desired != self.current
    }
}

/// A policy's opaque state as the last tick that evaluated it left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyState {
    /// The policy's position in the scaler's config at that tick.
    pub index: usize,
    /// The module's name.
    pub module: String,
    /// The module's digest at that tick, if it was loaded.
    pub digest: Option<Arc<str>>,
    /// The state to hand the policy next time.
    pub state: Option<Vec<u8>>,
    /// The tick's time.
    pub time_ms: i64,
}

/// A target's keys as the journal's rows hold them: the one written now,
/// and the one an earlier version wrote for the same target (the same key
/// twice when they agree). A row of either is of this target.
pub type TargetKeys = [i64; 2];

/// What the control loop needs to resume a scaler after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovery {
    /// The pause flag operators last set; `None` = never set (use config).
    pub paused: Option<bool>,
    /// The scaler's newest tick, however old (an in-flight or pending
    /// actuation shows here).
    pub last: Option<TickSummary>,
    /// Ticks since the requested time, oldest first: recommendations for the
    /// stabilisation windows, scale events for cooldowns and rate limits.
    pub ticks: Vec<TickSummary>,
    /// Whether `ticks` begins the scaler's history (the journal has no
    /// older tick of it): its first tick is where the envelope seeded the
    /// initial recommendation, which a restart must seed again.
    pub begins_history: bool,
    /// The time of the newest tick since `since_ms` of another target than
    /// the one asked about ([`Journal::recover_on`]): the scaler was moved
    /// since, and `ticks` begin after it.
    pub moved_ms: Option<i64>,
    /// Each policy's state after the newest tick that evaluated policies, in
    /// that tick's config order. Match them to the current config by index
    /// and module name.
    pub policy_states: Vec<PolicyState>,
    /// The change the scaler's actuator had in flight, as it last saved it
    /// ([`Journal::save_in_flight`]).
    pub in_flight: Option<SavedChange>,
}

/// A change in flight as an actuator saved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedChange {
    /// The actuator's own JSON.
    pub change: String,
    /// When it was saved (ms since the Unix epoch).
    pub updated_ms: i64,
}

/// The state each policy of `record` holds after that tick: what it
/// answered when it decided, and what it was given (unchanged) when it failed.
pub fn policy_states(record: &TickRecord) -> Vec<PolicyState> {
    record
        .evaluations
        .iter()
        .enumerate()
        .map(|(index, evaluation)| PolicyState {
            index,
            module: evaluation.module.clone(),
            digest: evaluation.digest.clone(),
            state: match &evaluation.outcome {
                EvaluationOutcome::Decided { decision } => decision.state.clone(),
                EvaluationOutcome::Failed { .. } => evaluation.context.state.clone(),
            },
            time_ms: record.time_ms,
        })
        .collect()
}

/// Everything that can go wrong with the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The database file could not be opened or set up.
    #[error("cannot open the journal {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The journal's folder could not be created.
    #[error("cannot create the folder of the journal {path}: {source}")]
    CreateDir {
        /// The database file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The journal's folder does not take new files (the lock file,
    /// SQLite's write-ahead log).
    #[error("cannot write in the folder of the journal {path}: {source}")]
    Folder {
        /// The database file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The journal's file cannot be written.
    #[error("cannot write to the journal {path}: {source}")]
    NotWritable {
        /// The database file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// Another process (another daemon) writes to this journal.
    #[error(
        "the journal {path} is in use by another Scalewise daemon{}: two daemons writing one \
         journal would interleave their records and restore each other's history; stop the \
         other one or give this one its own [journal] path",
        holder.map(|pid| format!(" (pid {pid}, in {})", lock.display())).unwrap_or_default()
    )]
    InUse {
        /// The database file.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// The process holding it, as it wrote in the lock file.
        holder: Option<u32>,
    },
    /// The lock file next to the journal could not be opened.
    #[error("cannot open the journal's lock file {lock}: {source}")]
    Lock {
        /// The lock file.
        lock: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The file is not a SQLite database, or is damaged.
    #[error("the journal {path} is corrupt or not a SQLite database: {source}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The file is a SQLite database but not a Scalewise journal.
    #[error("{path} is not a Scalewise journal: {reason}")]
    NotAJournal {
        /// The database file.
        path: PathBuf,
        /// What gave it away.
        reason: String,
    },
    /// The file was written by a newer Scalewise.
    #[error(
        "the journal {path} has schema version {found}, newer than the {supported} this \
         Scalewise understands; run a newer Scalewise or point it at another file"
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// The file's schema version.
        found: i64,
        /// The newest version this build understands.
        supported: i64,
    },
    /// The journal was opened read-only.
    #[error("the journal {path} is open read-only")]
    ReadOnly {
        /// The database file.
        path: PathBuf,
    },
    /// A write transaction failed; nothing in it was recorded.
    #[error("writing the journal {path} failed: {source}")]
    Write {
        /// The database file.
        path: PathBuf,
        /// What SQLite said (shared by every write of the failed transaction).
        #[source]
        source: Arc<rusqlite::Error>,
    },
    /// A query failed.
    #[error("reading the journal {path} failed: {source}")]
    Read {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The writer thread could not be started.
    #[error("cannot start the journal's writer thread: {0}")]
    Spawn(#[source] io::Error),
    /// A record could not be serialised.
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: String,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// A stored record could not be read back.
    #[error("journal record {id} in {path} cannot be decoded: {source}")]
    Decode {
        /// The database file.
        path: PathBuf,
        /// The record's id.
        id: i64,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// No record has this id.
    #[error("no journal record has id {id}")]
    NotFound {
        /// The id asked for.
        id: i64,
    },
    /// The journal was closed (or its writer stopped).
    #[error("the journal is closed")]
    Closed,
    /// Writing an export failed.
    #[error("cannot write the journal export: {0}")]
    Export(#[source] io::Error),
    /// A line of an export is not a tick record.
    #[error("line {line} is not a journal record: {source}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What serde said.
        #[source]
        source: io::Error,
    },
}

impl JournalError {
    /// A fixed label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            JournalError::Open { .. }
            | JournalError::CreateDir { .. }
            | JournalError::Folder { .. }
            | JournalError::NotWritable { .. }
            | JournalError::Lock { .. }
            | JournalError::Spawn(_) => "open",
            JournalError::InUse { .. } => "in_use",
            JournalError::Corrupt { .. } => "corrupt",
            JournalError::NotAJournal { .. } => "not_a_journal",
            JournalError::NewerSchema { .. } => "newer_schema",
            JournalError::ReadOnly { .. } => "read_only",
            JournalError::Write { .. } => "write",
            JournalError::Read { .. } => "read",
            JournalError::Encode { .. } => "encode",
            JournalError::Decode { .. } => "decode",
            JournalError::NotFound { .. } => "not_found",
            JournalError::Closed => "closed",
            JournalError::Export(_) => "export",
            JournalError::Parse { .. } => "parse",
        }
    }
}

/// A handle to the decision journal. Cheap to clone; every clone talks to
/// the same writer thread and reader pool.
#[derive(Debug, Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// `None` when opened read-only.
    commands: Option<mpsc::Sender<Command>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: ReaderPool,
    /// Transactions the writer has committed.
    commits: Arc<AtomicU64>,
}

/// Takes the exclusive lock on `<journal>.lock` (next to the file the path
/// resolves to, through symlinks) that a writing process
/// holds for as long as its writer runs (the lock goes with the file
/// handle, so also when the process dies), and writes this process's id
/// in it for the message another daemon gets.
fn lock_for_writing(path: &Path) -> Result<std::fs::File, JournalError> {
    use std::io::{Read as _, Seek as _, Write as _};
    // Next to the file the path resolves to, so that a symlink or another
    // spelling of the same journal finds the same lock.
    let resolved = std::fs::canonicalize(path).or_else(|_| {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        let name = path.file_name().unwrap_or(path.as_os_str());
        std::fs::canonicalize(parent.unwrap_or(Path::new("."))).map(|dir| dir.join(name))
    });
    let mut name = resolved
        .unwrap_or_else(|_| path.to_owned())
        .into_os_string();
    name.push(".lock");
    let lock = PathBuf::from(name);
    let open_error = |source| JournalError::Lock {
        lock: lock.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .map_err(open_error)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(JournalError::InUse {
                path: path.to_owned(),
                holder: text.trim().parse().ok(),
                lock,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(open_error(e)),
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(open_error)?;
    Ok(file)
}

impl Journal {
    /// Opens (creating if needed) the journal at `path` with the default
    /// options and the given retention.
    pub fn open(path: &Path, retention: Duration) -> Result<Journal, JournalError> {
        Self::open_with(path, JournalOptions::new(retention))
    }

    /// Opens (creating if needed) the journal at `path`. Starts the writer
    /// thread; the first retention sweep runs in the background.
    pub fn open_with(path: &Path, options: JournalOptions) -> Result<Journal, JournalError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| JournalError::CreateDir {
                path: path.to_owned(),
                source,
            })?;
        }
        let lock = lock_for_writing(path)?;
        let conn = schema::open_writer(path, options.durability)?;
        let commits = Arc::new(AtomicU64::new(0));
        let (commands, handle) =
            writer::spawn(conn, lock, path.to_owned(), options, Arc::clone(&commits))?;
        Ok(Journal {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                commands: Some(commands),
                writer: Mutex::new(Some(handle)),
                readers: ReaderPool::new(path.to_owned()),
                commits,
            }),
        })
    }

    /// Whether a daemon could open the journal at `path` (what `check
    /// --config` asks), changing nothing: the file, when there, is a
    /// journal this version reads; the folder takes new files (the lock,
    /// SQLite's write-ahead log), or the nearest folder there does (the
    /// daemon creates the rest). A daemon already writing to it is not a
    /// problem here.
    pub fn check_openable(path: &Path) -> Result<(), JournalError> {
        let folder_error = |source| JournalError::Folder {
            path: path.to_owned(),
            source,
        };
        let folder = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if folder.exists() {
            // An unnamed file where the OS can (O_TMPFILE): nothing is left.
            tempfile::tempfile_in(folder).map_err(folder_error)?;
        } else {
            // Created by the daemon where it runs (a check in CI need not
            // have `/var/lib/scalewise`): only a file where a folder must
            // be is wrong everywhere.
            let mut nearest = folder;
            while !nearest.exists() {
                match nearest.parent().filter(|p| !p.as_os_str().is_empty()) {
                    Some(parent) => nearest = parent,
                    // Up to a relative path's start (the working folder
                    // itself gone): nothing more to tell.
                    None => return Ok(()),
                }
            }
            if !nearest.is_dir() {
                return Err(folder_error(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} is not a folder", nearest.display()),
                )));
            }
        }
        if path.exists() {
            // An empty file the daemon sets up; anything else must be a
            // journal this version reads, and writable.
            if std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) > 0 {
                Journal::open_read_only(path)?;
            }
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|source| JournalError::NotWritable {
                    path: path.to_owned(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Opens an existing journal for reading only (the CLI's export and
    /// eval, possibly while a daemon writes to it). Writes fail with
    /// [`JournalError::ReadOnly`]; nothing is deleted.
    pub fn open_read_only(path: &Path) -> Result<Journal, JournalError> {
        let readers = ReaderPool::new(path.to_owned());
        // Checks now that the file exists and is a journal we understand.
        readers.with(|reader| reader.check_schema())?;
        Ok(Journal {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                commands: None,
                writer: Mutex::new(None),
                readers,
                commits: Arc::default(),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// How many transactions of appends and updates (each one fsync with
    /// the default durability) the writer has committed since the journal
    /// was opened. Retention sweeps are not counted.
    pub fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    /// Appends one tick's record and returns its id once the record is
    /// durable. The record's own `id` is ignored. Cancelling the future does
    /// not cancel the write.
    pub async fn append(&self, record: TickRecord) -> Result<i64, JournalError> {
        self.append_on(record, None).await
    }

    /// [`Journal::append`] of a tick of the target `target` (the scaler's
    /// `target_key`), which [`Journal::recover_on`] tells apart.
    pub async fn append_on(
        &self,
        record: TickRecord,
        target: Option<i64>,
    ) -> Result<i64, JournalError> {
        self.command(|reply| Command::Append {
            record: Box::new(record),
            target,
            reply,
        })
        .await?
    }

    /// Replaces the actuation of record `id` (append-before-actuate),
    /// durably. With `owe`, the change's announcement goes into the outbox
    /// in the same transaction, so that the webhooks are told even if the
    /// process dies before it is delivered: returns its outbox id, to
    /// [`settle`](Journal::settle_notification) once it is.
    pub async fn update_actuation(
        &self,
        id: i64,
        actuation: ActuationRecord,
        owe: Option<&Announcement>,
    ) -> Result<Option<i64>, JournalError> {
        let owe = owe
            .map(|a| {
                serde_json::to_string(a).map_err(|err| JournalError::Encode {
                    what: format!("the announcement of record {id}"),
                    source: err.into(),
                })
            })
            .transpose()?;
        let owed = self
            .command(|reply| Command::UpdateActuation {
                id,
                actuation,
                owe,
                reply,
            })
            .await??;
        Ok((owed > 0).then_some(owed))
    }

    /// Takes a notification out of the outbox: every webhook that wanted it
    /// was told, or given up on.
    pub async fn settle_notification(&self, id: i64) -> Result<(), JournalError> {
        self.command(|reply| Command::Settle { id, reply }).await?
    }

    /// The notifications still owed (a crash or a stop came before their
    /// delivery), oldest first, with their outbox ids. A row that no longer
    /// reads as an announcement is settled and left out.
    pub async fn owed_notifications(&self) -> Result<Vec<(i64, Announcement)>, JournalError> {
        let rows = self
            .read(|journal| journal.inner.readers.with(|reader| reader.owed()))
            .await?;
        let mut owed = Vec::with_capacity(rows.len());
        for (id, text) in rows {
            match serde_json::from_str(&text) {
                Ok(announcement) => owed.push((id, announcement)),
                Err(err) => {
                    tracing::warn!(id, error = %err, "A notification owed in the journal does not read as one; dropped.");
                    self.settle_notification(id).await?;
                }
            }
        }
        Ok(owed)
    }

    /// Records (durably) whether an operator paused the scaler.
    pub async fn set_paused(&self, scaler: &str, paused: bool) -> Result<(), JournalError> {
        let scaler = scaler.to_owned();
        self.command(|reply| Command::SetPaused {
            scaler,
            paused,
            reply,
        })
        .await?
    }

    /// Keeps (durably) what `scaler`'s actuator needs to carry on its change
    /// in flight after a restart, replacing what was kept before; `None`
    /// forgets it (the change ended). [`Journal::recover`] gives it back.
    pub async fn save_in_flight(
        &self,
        scaler: &str,
        change: Option<&str>,
    ) -> Result<(), JournalError> {
        let scaler = scaler.to_owned();
        let change = change.map(str::to_owned);
        self.command(|reply| Command::SaveInFlight {
            scaler,
            change,
            reply,
        })
        .await?
    }

    /// Deletes every record older than the retention now, and returns how
    /// many were deleted (also those of a sweep already under way).
    pub async fn sweep_now(&self) -> Result<u64, JournalError> {
        self.command(|reply| Command::Sweep { reply }).await?
    }

    /// Flushes every append queued so far, stops the writer and waits for
    /// it. Other clones of this handle see [`JournalError::Closed`] after.
    pub async fn close(self) -> Result<(), JournalError> {
        if let Some(commands) = &self.inner.commands {
            let (reply, done) = oneshot::channel();
            if commands
                .send(Command::Shutdown { reply: Some(reply) })
                .is_ok()
            {
                // An error here means the writer already stopped: nothing left to flush.
                let _ = done.await;
            }
        }
        let handle = self.inner.writer.lock().expect("writer lock").take();
        if let Some(handle) = handle {
            // The writer exits right after replying; joining is quick but blocking.
            if let Ok(Err(panic)) = tokio::task::spawn_blocking(move || handle.join()).await {
                std::panic::resume_unwind(panic);
            }
        }
        Ok(())
    }

    /// The newest records matching `filter`, newest first.
    pub async fn query(&self, filter: Query) -> Result<Vec<TickRecord>, JournalError> {
        self.read(move |journal| journal.query_blocking(&filter))
            .await
    }

    /// Blocking [`query`](Self::query), for the CLI.
    pub fn query_blocking(&self, filter: &Query) -> Result<Vec<TickRecord>, JournalError> {
        self.inner.readers.with(|reader| reader.query(filter))
    }

    /// The record with this id.
    pub async fn get(&self, id: i64) -> Result<Option<TickRecord>, JournalError> {
        self.read(move |journal| journal.get_blocking(id)).await
    }

    /// When the newest tick of any scaler ran; `None` for an empty journal.
    /// Blocking, for the CLI.
    pub fn newest_time_ms_blocking(&self) -> Result<Option<i64>, JournalError> {
        self.inner.readers.with(|reader| reader.newest_time_ms())
    }

    /// Blocking [`get`](Self::get), for the CLI.
    pub fn get_blocking(&self, id: i64) -> Result<Option<TickRecord>, JournalError> {
        self.inner.readers.with(|reader| reader.get(id))
    }

    /// The scaler's records since `since_ms`, oldest first.
    pub async fn recent(
        &self,
        scaler: &str,
        since_ms: i64,
    ) -> Result<Vec<TickRecord>, JournalError> {
        let scaler = scaler.to_owned();
        self.read(move |journal| {
            journal
                .inner
                .readers
                .with(|reader| reader.recent(&scaler, since_ms))
        })
        .await
    }

    /// The scaler's newest `limit` ticks as summaries (the indexed columns
    /// alone, no record decoded), oldest first: a chart's data, cheap at
    /// any fleet size.
    pub async fn summaries(
        &self,
        scaler: &str,
        limit: usize,
    ) -> Result<Vec<TickSummary>, JournalError> {
        let scaler = scaler.to_owned();
        self.read(move |journal| {
            journal
                .inner
                .readers
                .with(|reader| reader.summaries(&scaler, limit))
        })
        .await
    }

    /// Everything needed to resume `scaler` after a restart, from one
    /// consistent snapshot; `ticks` starts at `since_ms`. Decodes at most one
    /// record, so recovering thousands of scalers stays cheap.
    pub async fn recover(&self, scaler: &str, since_ms: i64) -> Result<Recovery, JournalError> {
        self.recover_on(scaler, since_ms, None).await
    }

    /// [`Journal::recover`] of a scaler whose target is `target` now (its
    /// keys): ticks up to the newest one of another target are left out, as
    /// that target's (the scaler was moved), and `moved_ms` says when it
    /// was.
    pub async fn recover_on(
        &self,
        scaler: &str,
        since_ms: i64,
        target: Option<TargetKeys>,
    ) -> Result<Recovery, JournalError> {
        let scaler = scaler.to_owned();
        self.read(move |journal| {
            journal
                .inner
                .readers
                .with(|reader| reader.recover(&scaler, since_ms, target))
        })
        .await
    }

    /// The time of `scaler`'s newest tick since `since_ms` of another target
    /// than `target` (its keys), if any: what it has of `target` is after
    /// it.
    pub async fn moved_since(
        &self,
        scaler: &str,
        since_ms: i64,
        target: TargetKeys,
    ) -> Result<Option<i64>, JournalError> {
        let scaler = scaler.to_owned();
        self.read(move |journal| {
            journal
                .inner
                .readers
                .with(|reader| reader.moved(&scaler, since_ms, target))
        })
        .await
    }

    /// The pause flag operators last set for `scaler`; `None` if never set.
    pub async fn paused(&self, scaler: &str) -> Result<Option<bool>, JournalError> {
        let scaler = scaler.to_owned();
        self.read(move |journal| journal.inner.readers.with(|reader| reader.paused(&scaler)))
            .await
    }

    /// Every scaler's change saved as in flight ([`Journal::save_in_flight`]),
    /// by scaler name.
    pub async fn all_in_flight(&self) -> Result<Vec<(String, SavedChange)>, JournalError> {
        self.read(move |journal| journal.inner.readers.with(|reader| reader.all_in_flight()))
            .await
    }

    /// Writes the matching records to `out` as JSON lines, oldest first, and
    /// returns how many. Blocking; pages through the table so a long export
    /// never holds one read snapshot (which would stop WAL checkpoints).
    pub fn export_jsonl<W: Write>(
        &self,
        out: W,
        scaler: Option<&str>,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
    ) -> Result<u64, JournalError> {
        let mut out = io::BufWriter::new(out);
        let mut count = 0;
        let mut after = None;
        loop {
            let page = self.inner.readers.with(|reader| {
                reader.export_page(scaler, since_ms, until_ms, after, EXPORT_PAGE)
            })?;
            for record in &page {
                // Safe for a terminal, as `journal export` prints it.
                let line = serde_json::to_string(record)
                    .map(crate::runtime::json_safe)
                    .map_err(|err| JournalError::Export(err.into()))?;
                out.write_all(line.as_bytes())
                    .and_then(|()| out.write_all(b"\n"))
                    .map_err(JournalError::Export)?;
                count += 1;
            }
            match page.last() {
                Some(last) if page.len() == EXPORT_PAGE => {
                    after = Some((last.time_ms, last.id.unwrap_or_default()));
                }
                _ => break,
            }
        }
        out.flush().map_err(JournalError::Export)?;
        Ok(count)
    }

    async fn command<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, JournalError> {
        let commands = self
            .inner
            .commands
            .as_ref()
            .ok_or_else(|| JournalError::ReadOnly {
                path: self.inner.path.clone(),
            })?;
        let (reply, answer) = oneshot::channel();
        commands
            .send(make(reply))
            .map_err(|_| JournalError::Closed)?;
        answer.await.map_err(|_| JournalError::Closed)
    }

    /// Runs a blocking read on tokio's blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Journal) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        let journal = self.clone();
        match tokio::task::spawn_blocking(move || f(&journal)).await {
            Ok(result) => result,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            // Only when the runtime shuts down under us.
            Err(_) => Err(JournalError::Closed),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Best effort: flush what is queued and wait for the writer, as
        // `close` does (this may block the dropping thread briefly).
        if let Some(commands) = &self.commands {
            let _ = commands.send(Command::Shutdown { reply: None });
        }
        let handle = self.writer.get_mut().ok().and_then(Option::take);
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// Records per page of an export.
const EXPORT_PAGE: usize = 500;

/// Reads one record as exported (a line of `export_jsonl`, or the same JSON
/// pretty-printed).
pub fn parse_record(json: &str) -> Result<TickRecord, JournalError> {
    serde_json::from_str(json).map_err(|err| JournalError::Parse {
        line: 1,
        source: err.into(),
    })
}

/// Reads an export back, one record per non-empty line.
pub fn read_jsonl<R: BufRead>(input: R) -> impl Iterator<Item = Result<TickRecord, JournalError>> {
    input
        .lines()
        .enumerate()
        .filter(|(_, line)| line.as_ref().map_or(true, |l| !l.trim().is_empty()))
        .map(|(index, line)| {
            let line = line.map_err(|source| JournalError::Parse {
                line: index + 1,
                source,
            })?;
            serde_json::from_str(&line).map_err(|err| JournalError::Parse {
                line: index + 1,
                source: err.into(),
            })
        })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::policy::{Context, Decision, Target};

    fn target() -> Target {
        Target {
            kind: "simulator".into(),
            name: "web".into(),
            current: 3,
            ready: 3,
            min: 1,
            max: 10,
        }
    }

    fn evaluation(module: &str, given: Option<&[u8]>, outcome: EvaluationOutcome) -> Evaluation {
        Evaluation {
            module: module.into(),
            digest: Some(format!("digest-{module}").into()),
            context: Context {
                now_ms: 1_000,
                scaler: "web".into(),
                target: target(),
                metrics: vec![],
                events: vec![],
                parameters: serde_json::json!({}),
                state: given.map(<[u8]>::to_vec),
            },
            outcome,
            duration_us: 3,
            load_error: None,
            limits: None,
            abstained: false,
        }
    }

    fn decided(state: Option<&[u8]>) -> EvaluationOutcome {
        EvaluationOutcome::Decided {
            decision: Decision {
                desired: Some(4),
                reason: "busy".into(),
                state: state.map(<[u8]>::to_vec),
            },
        }
    }

    fn failed() -> EvaluationOutcome {
        EvaluationOutcome::Failed {
            kind: "trap".into(),
            error: "unreachable".into(),
        }
    }

    #[test]
    fn policy_state_after_a_tick() {
        type Case = (
            &'static str,
            Option<&'static [u8]>,
            EvaluationOutcome,
            Option<&'static [u8]>,
        );
        let cases: Vec<Case> = vec![
            // (what happened, state given, outcome, state after)
            (
                "decided with new state",
                Some(b"old"),
                decided(Some(b"new")),
                Some(b"new"),
            ),
            (
                "decided and dropped its state",
                Some(b"old"),
                decided(None),
                None,
            ),
            (
                "decided from nothing",
                None,
                decided(Some(b"first")),
                Some(b"first"),
            ),
            (
                "failed keeps what it was given",
                Some(b"old"),
                failed(),
                Some(b"old"),
            ),
            ("failed with no state", None, failed(), None),
        ];
        for (what, given, outcome, after) in cases {
            let record = TickRecord {
                id: Some(7),
                time_ms: 1_000,
                scaler: "web".into(),
                mode: Mode::Enforce,
                target: target(),
                facts: BTreeMap::new(),
                metric_errors: vec![],
                evaluations: vec![
                    evaluation("first", Some(b"x"), decided(Some(b"y"))),
                    evaluation("second", given, outcome),
                ],
                proposal: Some(4),
                envelope: vec![],
                desired: 4,
                recommendation: Some(4),
                actuation: ActuationRecord::Pending,
            };
            let states = policy_states(&record);
            assert_eq!(states.len(), 2, "{what}");
            assert_eq!(states[0].state.as_deref(), Some(&b"y"[..]), "{what}");
            assert_eq!(states[1].index, 1, "{what}");
            assert_eq!(states[1].module, "second", "{what}");
            assert_eq!(states[1].digest.as_deref(), Some("digest-second"), "{what}");
            assert_eq!(states[1].state.as_deref(), after, "{what}");
            assert_eq!(states[1].time_ms, 1_000, "{what}");
        }
    }

    fn tick(scaler: &str, time_ms: i64) -> TickRecord {
        TickRecord {
            id: None,
            time_ms,
            scaler: scaler.into(),
            mode: Mode::Enforce,
            target: target(),
            facts: BTreeMap::new(),
            metric_errors: vec![],
            evaluations: vec![evaluation("first", None, decided(None))],
            proposal: Some(4),
            envelope: vec![],
            desired: 4,
            recommendation: Some(4),
            actuation: ActuationRecord::Pending,
        }
    }

    fn open(dir: &tempfile::TempDir, commit_delay: Duration) -> Journal {
        let options = JournalOptions {
            commit_delay,
            ..JournalOptions::new(Duration::from_secs(3600))
        };
        Journal::open_with(&dir.path().join("j.db"), options).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commit_delay_lets_writes_share_a_transaction() {
        // Stamped now: the writer's retention sweep deletes old records.
        let now = || Clock::system().now_ms();
        // Spawned tasks reach the writer one by one; with a delay they
        // gather behind the first.
        let dir = tempfile::tempdir().unwrap();
        let journal = open(&dir, Duration::from_millis(200));
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let (journal, record) = (journal.clone(), tick(&format!("s{i}"), now()));
                tokio::spawn(async move { journal.append(record).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().expect("every append is committed");
        }
        let records = journal.query(Query::latest(1_000)).await.unwrap();
        assert_eq!(records.len(), 50, "every record is there");
        let delayed = journal.commits();
        assert!(
            delayed <= 3,
            "50 appends within the 200 ms delay took {delayed} commits"
        );
        journal.close().await.unwrap();

        let dir = tempfile::tempdir().unwrap();
        let journal = open(&dir, Duration::ZERO);
        for _ in 0..5 {
            journal.append(tick("web", now())).await.unwrap();
        }
        assert_eq!(
            journal.commits(),
            5,
            "no delay: one commit per awaited append"
        );
        journal.close().await.unwrap();
    }

    /// A scaler's ticks up to the newest one of another target are left out
    /// of its recovery (it was moved since); ticks written with no target
    /// count as of any.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recovery_starts_after_the_last_tick_of_another_target() {
        let now = Clock::system().now_ms();
        let dir = tempfile::tempdir().unwrap();
        let journal = open(&dir, Duration::ZERO);
        let times = [now - 40_000, now - 30_000, now - 20_000, now - 10_000];
        journal.append(tick("web", times[0])).await.unwrap();
        for (time, target) in [(times[1], 1), (times[2], 2), (times[3], 2)] {
            journal
                .append_on(tick("web", time), Some(target))
                .await
                .unwrap();
        }
        let since = now - 60_000;
        let on_b = journal
            .recover_on("web", since, Some([2, 2]))
            .await
            .unwrap();
        let kept: Vec<i64> = on_b.ticks.iter().map(|t| t.time_ms).collect();
        assert_eq!(kept, &times[2..]);
        assert_eq!(on_b.moved_ms, Some(times[1]));
        assert!(on_b.begins_history, "the move begins b's history");
        let on_a = journal
            .recover_on("web", since, Some([1, 1]))
            .await
            .unwrap();
        assert!(on_a.ticks.is_empty(), "{:?}", on_a.ticks);
        assert_eq!(on_a.moved_ms, Some(times[3]));
        let on_c = journal
            .recover_on("web", since, Some([3, 3]))
            .await
            .unwrap();
        // A target whose key an older version wrote otherwise: one target.
        let on_b_too = journal
            .recover_on("web", since, Some([1, 2]))
            .await
            .unwrap();
        assert_eq!((on_b_too.ticks.len(), on_b_too.moved_ms), (4, None));
        assert_eq!(on_c.moved_ms, Some(times[3]));
        // Not asked about a target, or only ticks of this one in the window.
        let any = journal.recover("web", since).await.unwrap();
        assert_eq!((any.ticks.len(), any.moved_ms), (4, None));
        let recent = journal
            .recover_on("web", times[2], Some([2, 2]))
            .await
            .unwrap();
        assert_eq!((recent.ticks.len(), recent.moved_ms), (2, None));
        assert!(!recent.begins_history, "older ticks are there");
        // The same cut over any stretch (a target metric's longer window).
        assert_eq!(
            journal.moved_since("web", since, [2, 2]).await.unwrap(),
            Some(times[1])
        );
        assert_eq!(
            journal.moved_since("web", times[2], [2, 2]).await.unwrap(),
            None
        );
        assert_eq!(
            journal.moved_since("web", since, [2, 1]).await.unwrap(),
            None
        );
        journal.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tick_that_kept_no_recommendation_reads_back_as_none() {
        let now = Clock::system().now_ms();
        let dir = tempfile::tempdir().unwrap();
        let journal = open(&dir, Duration::ZERO);
        let kept_none = TickRecord {
            recommendation: None,
            ..tick("web", now - 15_000)
        };
        let id = journal.append(kept_none).await.unwrap();
        journal.append(tick("web", now)).await.unwrap();
        let recovered = journal.recover("web", now - 60_000).await.unwrap();
        let kept: Vec<Option<u32>> = recovered.ticks.iter().map(|t| t.recommendation).collect();
        assert_eq!(kept, [None, Some(4)]);
        let record = journal.get(id).await.unwrap().unwrap();
        assert_eq!(record.recommendation, None);
        journal.close().await.unwrap();
    }

    /// The retention sweep keeps each scaler's newest evaluating tick: a
    /// target that could not be read for longer than the retention (ticks
    /// that evaluate nothing) would otherwise take the policies' state
    /// with the tick a restart reads it from.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sweep_keeps_the_tick_the_policies_state_comes_from() {
        let now = Clock::system().now_ms();
        let hour = 3_600_000;
        let dir = tempfile::tempdir().unwrap();
        let journal = open(&dir, Duration::ZERO);
        // The sweep at open is over before the records come (run between
        // two appends, it would delete some of them before the count).
        assert_eq!(journal.sweep_now().await.unwrap(), 0);
        let with_state = |scaler: &str, time_ms, state: &[u8]| TickRecord {
            evaluations: vec![evaluation("first", None, decided(Some(state)))],
            ..tick(scaler, time_ms)
        };
        let not_observed = |time_ms| TickRecord {
            evaluations: vec![],
            actuation: ActuationRecord::ObserveFailed {
                error: "the target API is down".into(),
            },
            ..tick("web", time_ms)
        };
        for record in [
            with_state("web", now - 4 * hour, b"s0"),
            with_state("api", now - 3 * hour, b"a0"),
            with_state("web", now - 3 * hour, b"s1"),
            not_observed(now - 2 * hour),
            with_state("api", now - 60_000, b"a1"),
            not_observed(now - 60_000),
        ] {
            journal.append(record).await.unwrap();
        }
        assert_eq!(
            journal.sweep_now().await.unwrap(),
            3,
            "web's s0 and 2h, api's a0"
        );
        let web = journal.recover("web", now - hour).await.unwrap();
        assert_eq!(web.policy_states.len(), 1);
        assert_eq!(web.policy_states[0].state.as_deref(), Some(&b"s1"[..]));
        let api = journal.recover("api", now - hour).await.unwrap();
        assert_eq!(api.policy_states[0].state.as_deref(), Some(&b"a1"[..]));
        assert_eq!(journal.sweep_now().await.unwrap(), 0, "nothing more");
        journal.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_recovery_says_whether_it_begins_the_scalers_history() {
        let now = Clock::system().now_ms();
        let dir = tempfile::tempdir().unwrap();
        let journal = open(&dir, Duration::ZERO);
        let empty = journal.recover("web", now - 60_000).await.unwrap();
        assert!(!empty.begins_history, "no ticks, no history");
        journal.append(tick("web", now - 30_000)).await.unwrap();
        journal.append(tick("web", now - 15_000)).await.unwrap();
        let all = journal.recover("web", now - 60_000).await.unwrap();
        assert_eq!(all.ticks.len(), 2);
        assert!(all.begins_history);
        let part = journal.recover("web", now - 20_000).await.unwrap();
        assert_eq!(part.ticks.len(), 1);
        assert!(!part.begins_history, "an older tick exists");
        let other = journal.recover("api", now - 60_000).await.unwrap();
        assert!(other.ticks.is_empty() && !other.begins_history);
        journal.close().await.unwrap();
    }

    /// A record that cannot be read (a mode a newer build wrote, a broken
    /// body) is left out of a recovery, which goes on with the rest: one
    /// row used to keep the scaler, and the daemon with it, from starting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_record_is_left_out_of_a_recovery() {
        let now = Clock::system().now_ms();
        let dir = tempfile::tempdir().unwrap();
        let journal = open(&dir, Duration::ZERO);
        for ago in [30_000, 20_000, 10_000] {
            journal.append(tick("web", now - ago)).await.unwrap();
        }
        journal.close().await.unwrap();
        let damage = |sql: &str, ago: i64| {
            let conn = rusqlite::Connection::open(dir.path().join("j.db")).unwrap();
            assert_eq!(conn.execute(sql, [now - ago]).unwrap(), 1, "{sql}");
        };

        damage("UPDATE ticks SET mode = 'warp' WHERE time_ms = ?1", 20_000);
        let journal = open(&dir, Duration::ZERO);
        let web = journal.recover("web", now - 60_000).await.unwrap();
        let times: Vec<i64> = web.ticks.iter().map(|t| now - t.time_ms).collect();
        assert_eq!(times, [30_000, 10_000]);
        assert_eq!(web.policy_states.len(), 1, "from the newest record");
        journal.close().await.unwrap();

        damage("UPDATE ticks SET record = x'00' WHERE time_ms = ?1", 10_000);
        let journal = open(&dir, Duration::ZERO);
        let web = journal.recover("web", now - 60_000).await.unwrap();
        assert_eq!(web.ticks.len(), 2);
        assert!(web.policy_states.is_empty(), "{:?}", web.policy_states);
        journal.close().await.unwrap();
    }

    /// A change in flight is kept per scaler across a restart: replaced
    /// when saved again, gone once forgotten, and never another scaler's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_in_flight_outlasts_a_restart_until_it_is_forgotten() {
        let now = Clock::system().now_ms();
        let dir = tempfile::tempdir().unwrap();
        let journal = open(&dir, Duration::ZERO);
        journal
            .save_in_flight("web", Some(r#"{"victims":["i-1"]}"#))
            .await
            .unwrap();
        journal
            .save_in_flight("web", Some(r#"{"victims":["i-2"]}"#))
            .await
            .unwrap();
        journal.save_in_flight("api", Some("{}")).await.unwrap();
        journal.close().await.unwrap();

        let journal = open(&dir, Duration::ZERO);
        let web = journal.recover("web", now - 60_000).await.unwrap();
        let saved = web.in_flight.expect("kept across the restart");
        assert_eq!(saved.change, r#"{"victims":["i-2"]}"#, "the last one saved");
        assert!(saved.updated_ms >= now, "{saved:?}");
        journal.save_in_flight("web", None).await.unwrap();
        let web = journal.recover("web", now - 60_000).await.unwrap();
        assert_eq!(web.in_flight, None, "forgotten");
        let api = journal.recover("api", now - 60_000).await.unwrap();
        assert_eq!(api.in_flight.map(|s| s.change).as_deref(), Some("{}"));
        journal.close().await.unwrap();
    }

    fn announcement(record: Option<i64>) -> Announcement {
        Announcement {
            time_ms: 1_000,
            scaler: "web".into(),
            target_kind: "simulator".into(),
            target_name: "web".into(),
            from: 3,
            to: 4,
            reason: "target-tracking: cpu 80 > 50".into(),
            error: None,
            record,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_notification_owed_outlasts_a_restart_until_it_is_settled() {
        let now = Clock::system().now_ms();
        let dir = tempfile::tempdir().unwrap();
        let journal = open(&dir, Duration::ZERO);
        let a = journal.append(tick("web", now)).await.unwrap();
        let b = journal.append(tick("web", now)).await.unwrap();
        let done = ActuationRecord::Done {
            detail: "4 replicas".into(),
        };
        let owed_a = journal
            .update_actuation(a, done.clone(), Some(&announcement(Some(a))))
            .await
            .unwrap();
        let owed_b = journal
            .update_actuation(b, done.clone(), Some(&announcement(Some(b))))
            .await
            .unwrap();
        assert!(owed_a.is_some() && owed_b.is_some() && owed_a != owed_b);
        // Without `owe` nothing is kept.
        let c = journal.append(tick("web", now)).await.unwrap();
        assert_eq!(journal.update_actuation(c, done, None).await.unwrap(), None);
        journal.settle_notification(owed_a.unwrap()).await.unwrap();
        journal.close().await.unwrap();
        // As after a crash or a stop: what was not settled is still owed.
        let journal = open(&dir, Duration::ZERO);
        let owed = journal.owed_notifications().await.unwrap();
        assert_eq!(owed, vec![(owed_b.unwrap(), announcement(Some(b)))]);
        journal.settle_notification(owed_b.unwrap()).await.unwrap();
        assert!(journal.owed_notifications().await.unwrap().is_empty());
        journal.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_update_of_a_missing_record_owes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(&dir, Duration::ZERO);
        let err = journal
            .update_actuation(
                42,
                ActuationRecord::Done {
                    detail: "4 replicas".into(),
                },
                Some(&announcement(Some(42))),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "not_found", "{err}");
        assert!(journal.owed_notifications().await.unwrap().is_empty());
        journal.close().await.unwrap();
    }

    #[test]
    fn read_jsonl_names_the_bad_line() {
        let input = "\n{\"not\": \"a record\"}\n";
        let results: Vec<_> = read_jsonl(input.as_bytes()).collect();
        assert_eq!(results.len(), 1);
        let err = results.into_iter().next().unwrap().unwrap_err();
        assert_eq!(err.kind(), "parse");
        assert!(err.to_string().starts_with("line 2 "), "{err}");
    }
}
