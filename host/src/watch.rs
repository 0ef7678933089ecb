//! Watching a folder for files that changed and have settled: the policy
//! folder (hot reload of modules) and the config file's folder (config
//! reload).
//!
//! Events come from `notify`: native ones (inotify on Linux) or, where those
//! cannot be set up or do not work (network file systems), its
//! `PollWatcher`. Events only say *that* something happened; what changed is
//! decided by comparing each file's [`FileStamp`] (size, mtime, inode, all
//! through symlinks) with what was last read. That is what makes the
//! Kubernetes ConfigMap layout work: there the visible files are symlinks
//! into a hidden `..data` folder, an update renames `..data` to point at a
//! new folder, and no event ever names the visible files.
//!
//! A changed file is handed over only once it has settled: no event for it
//! for the debounce window, its stamp unchanged for as long (for a whole poll
//! interval when polling), and (native events only) not held open by a
//! writer that is still writing (`close` is reported by inotify; a writer
//! that holds the file open without writing is waited for ten debounce
//! windows, at least 2 s, after its last write; an empty file, a write whose
//! events have not arrived yet, as long). So `cp`, an editor's several
//! writes, or a writer pausing between chunks do not produce a half-written
//! load; with polling, a writer that pauses longer than the poll interval can
//! (the version serving stays, and the complete file loads when it settles):
//! write elsewhere and rename into the folder. The folder itself is watched through
//! its parent too, and re-watched when it is replaced (a new inode, or a
//! symlink pointing elsewhere); a periodic rescan catches anything a lost
//! event would miss.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};
use notify::{PollWatcher, RecommendedWatcher, RecursiveMode, Watcher as _};
use serde::Serialize;

use crate::config::{WatchConfig, WatchMode};

/// With native events, how often the folder is rescanned anyway (in case an
/// event was lost, e.g. an inotify queue overflow on a busy node).
const NATIVE_RESYNC: Duration = Duration::from_secs(30);
/// While the watched folder is gone, how often to look for it again.
const DETACHED_RESYNC: Duration = Duration::from_secs(1);
/// A file held open without a write for longer than this is loaded anyway
/// (a writer that never closes), at least.
const MIN_WRITER_WAIT: Duration = Duration::from_secs(2);

/// A file's identity and version as far as the file system tells, through
/// symlinks: two equal stamps mean the file was not touched in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    /// Size in bytes.
    pub len: u64,
    /// Last modification time.
    pub modified: Option<SystemTime>,
    /// Device and inode (Unix); a replaced file gets a new inode.
    pub inode: Option<(u64, u64)>,
    /// Last status change (Unix ctime, seconds and nanoseconds): moves with
    /// every write and cannot be set by the writer, so a file rewritten in
    /// place with the same size and its old modification time (`cp -p`,
    /// `rsync -a --inplace`, builds with fixed timestamps) still reads as
    /// changed.
    pub changed: Option<(i64, i64)>,
}

impl FileStamp {
    /// A stamp no file on disk has: what is known of a file that could not
    /// be read as it stood (it kept changing), so that the file counts as
    /// changed at the next look whatever it holds then, and as removed if
    /// it is gone.
    pub const UNREAD: FileStamp = FileStamp {
        len: u64::MAX,
        modified: None,
        inode: None,
        changed: None,
    };

    /// The stamp of the file at `path` (following symlinks).
    pub fn of(path: &Path) -> std::io::Result<FileStamp> {
        let meta = std::fs::metadata(path)?;
        #[cfg(unix)]
        let (inode, changed) = {
            use std::os::unix::fs::MetadataExt as _;
            (
                Some((meta.dev(), meta.ino())),
                Some((meta.ctime(), meta.ctime_nsec())),
            )
        };
        #[cfg(not(unix))]
        let (inode, changed) = (None, None);
        Ok(FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
            changed,
        })
    }
}

/// Where events are coming from, once the watcher runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActiveMode {
    /// Native file system events.
    Native,
    /// Polling.
    Poll,
}

impl ActiveMode {
    /// The fixed label.
    pub fn as_str(self) -> &'static str {
        match self {
            ActiveMode::Native => "native",
            ActiveMode::Poll => "poll",
        }
    }
}

/// Why a watch could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// `mode = "native"` and native events are unavailable.
    #[error("cannot watch {} with native file events: {message}", path.display())]
    Native {
        /// The folder.
        path: PathBuf,
        /// What notify said.
        message: String,
    },
    /// Polling could not be set up either.
    #[error("cannot watch {} by polling: {message}", path.display())]
    Poll {
        /// The folder.
        path: PathBuf,
        /// What notify said.
        message: String,
    },
    /// The watcher's thread could not start.
    #[error("cannot start the thread watching {}: {source}", path.display())]
    Thread {
        /// The folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl WatchError {
    /// A fixed label for this kind of error.
    pub fn kind(&self) -> &'static str {
        match self {
            WatchError::Native { .. } => "native",
            WatchError::Poll { .. } => "poll",
            WatchError::Thread { .. } => "thread",
        }
    }
}

/// What a watched folder holds and what to do when its files change.
pub trait Watched: Send + 'static {
    /// Whether an entry of the folder with this name can matter (events for
    /// other names, e.g. a journal next to the config file, are ignored).
    fn relevant(&self, name: &OsStr) -> bool;
    /// The name [`Watched::scan`] gives the file with this entry name, if
    /// it is one of the files scanned (and not, say, a `..data` link).
    fn key(&self, name: &OsStr) -> Option<String> {
        Some(name.to_string_lossy().into_owned())
    }
    /// The files that matter now, by key, with their stamps.
    fn scan(&mut self) -> BTreeMap<String, FileStamp>;
    /// The stamps of the files as last read (what is in use).
    fn known(&self) -> BTreeMap<String, FileStamp>;
    /// Files whose changes have settled: `changed` are to be (re)read,
    /// `removed` are gone. Returns the names found still changing while
    /// being read, to be retried once they settle.
    fn apply(&mut self, changed: &[String], removed: &[String]) -> Vec<String>;
}

/// A running watch; stops (and joins its thread) when dropped.
#[derive(Debug)]
pub struct FolderWatch {
    dir: PathBuf,
    mode: ActiveMode,
    stop: Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl FolderWatch {
    /// Starts watching `dir` for `watched` on a thread of its own (loading
    /// happens there, off the async runtime).
    pub fn start(
        dir: &Path,
        config: &WatchConfig,
        watched: impl Watched,
    ) -> Result<FolderWatch, WatchError> {
        let (tx, rx) = mpsc::channel();
        let source = EventSource::start(dir, config, tx.clone())?;
        let mode = source.mode;
        let settle = Settle {
            // Polling sees no writes between its scans: a file must look
            // the same for a whole poll interval, or a writer pausing
            // between two scans would hand over half a file.
            debounce: match mode {
                ActiveMode::Native => config.debounce,
                ActiveMode::Poll => config.debounce.max(config.poll_interval),
            },
            writer_wait: (config.debounce * 10).max(MIN_WRITER_WAIT),
            resync: match mode {
                ActiveMode::Native => NATIVE_RESYNC,
                ActiveMode::Poll => config.poll_interval,
            },
        };
        // It loads modules and runs their trial evaluations: the stack every
        // thread that runs policies gets.
        let thread = std::thread::Builder::new()
            .name("scalewise-watch".into())
            .stack_size(crate::runtime::THREAD_STACK)
            .spawn(move || watch_loop(source, rx, watched, settle))
            .map_err(|source| WatchError::Thread {
                path: dir.to_path_buf(),
                source,
            })?;
        tracing::info!(
            dir = %dir.display(),
            mode = mode.as_str(),
            debounce_ms = config.debounce.as_millis() as u64,
            "Watching a folder for changes."
        );
        Ok(FolderWatch {
            dir: dir.to_path_buf(),
            mode,
            stop: tx,
            thread: Some(thread),
        })
    }

    /// Native events or polling.
    pub fn mode(&self) -> ActiveMode {
        self.mode
    }

    /// The folder watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for FolderWatch {
    fn drop(&mut self) {
        let _ = self.stop.send(Msg::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

enum Msg {
    Fs(notify::Result<notify::Event>),
    Stop,
}

enum Backend {
    Native(RecommendedWatcher),
    Poll(PollWatcher),
}

impl Backend {
    fn watch(&mut self, path: &Path) -> notify::Result<()> {
        match self {
            Backend::Native(w) => w.watch(path, RecursiveMode::NonRecursive),
            Backend::Poll(w) => w.watch(path, RecursiveMode::NonRecursive),
        }
    }

    fn unwatch(&mut self, path: &Path) -> notify::Result<()> {
        match self {
            Backend::Native(w) => w.unwatch(path),
            Backend::Poll(w) => w.unwatch(path),
        }
    }
}

/// The notify watcher of one folder, re-attached when the folder is replaced.
struct EventSource {
    dir: PathBuf,
    mode: ActiveMode,
    backend: Backend,
    /// The folder's device and inode when the watch was set up.
    identity: Option<(u64, u64)>,
    /// Whether the folder is being watched (false while it is gone).
    attached: bool,
}

impl EventSource {
    fn start(dir: &Path, config: &WatchConfig, tx: Sender<Msg>) -> Result<EventSource, WatchError> {
        // Events name absolute paths (notify makes a relative watch
        // absolute), and are compared with this: a relative folder (the
        // demo's `policies/dist`, `--policy-dir`) saw every event as
        // another folder's, and changes waited for the 30 s rescan.
        let absolute = std::path::absolute(dir);
        let dir = absolute.as_deref().unwrap_or(dir);
        let identity = folder_identity(dir);
        let native = || -> notify::Result<Backend> {
            let tx = tx.clone();
            let mut watcher = RecommendedWatcher::new(
                move |event| {
                    let _ = tx.send(Msg::Fs(event));
                },
                notify::Config::default(),
            )?;
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
            // The parent too, to see the folder itself being replaced; not
            // essential (the periodic rescan also notices).
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                let _ = watcher.watch(parent, RecursiveMode::NonRecursive);
            }
            Ok(Backend::Native(watcher))
        };
        let poll = || -> Result<Backend, WatchError> {
            let tx = tx.clone();
            let mut watcher = PollWatcher::new(
                move |event| {
                    let _ = tx.send(Msg::Fs(event));
                },
                notify::Config::default()
                    .with_poll_interval(config.poll_interval)
                    .with_follow_symlinks(true),
            )
            .map_err(|e| WatchError::Poll {
                path: dir.to_path_buf(),
                message: e.to_string(),
            })?;
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|e| WatchError::Poll {
                    path: dir.to_path_buf(),
                    message: e.to_string(),
                })?;
            Ok(Backend::Poll(watcher))
        };
        let (backend, mode) = match config.mode {
            WatchMode::Poll => (poll()?, ActiveMode::Poll),
            WatchMode::Native => (
                native().map_err(|e| WatchError::Native {
                    path: dir.to_path_buf(),
                    message: e.to_string(),
                })?,
                ActiveMode::Native,
            ),
            WatchMode::Auto => match native() {
                Ok(backend) => (backend, ActiveMode::Native),
                Err(err) => {
                    tracing::warn!(
                        dir = %dir.display(),
                        error = %err,
                        poll_interval_ms = config.poll_interval.as_millis() as u64,
                        "Native file events are unavailable; polling the folder instead."
                    );
                    (poll()?, ActiveMode::Poll)
                }
            },
        };
        Ok(EventSource {
            dir: dir.to_path_buf(),
            mode,
            backend,
            identity,
            attached: true,
        })
    }

    /// Re-attaches the watch when the folder was replaced (its inode changed,
    /// or the symlink it is now points elsewhere) or the last attempt
    /// failed. True when the folder changed.
    fn rewatch_if_replaced(&mut self) -> bool {
        let now = folder_identity(&self.dir);
        if now == self.identity && self.attached {
            return false;
        }
        let replaced = now != self.identity;
        self.identity = now;
        if replaced {
            let _ = self.backend.unwatch(&self.dir);
        }
        if now.is_none() {
            if self.attached {
                tracing::warn!(dir = %self.dir.display(), "The watched folder is gone; watching for it to come back.");
            }
            self.attached = false;
            return replaced;
        }
        match self.backend.watch(&self.dir) {
            Ok(()) => {
                tracing::info!(
                    dir = %self.dir.display(),
                    "The watched folder was replaced; watching the new one."
                );
                self.attached = true;
            }
            Err(err) => {
                if self.attached {
                    tracing::warn!(
                        dir = %self.dir.display(),
                        error = %err,
                        "The watched folder was replaced and cannot be watched again yet; will retry."
                    );
                }
                self.attached = false;
            }
        }
        replaced
    }
}

fn folder_identity(dir: &Path) -> Option<(u64, u64)> {
    FileStamp::of(dir).ok().and_then(|s| s.inode)
}

/// Timing of the settle rule.
#[derive(Debug, Clone, Copy)]
struct Settle {
    debounce: Duration,
    writer_wait: Duration,
    resync: Duration,
}

fn watch_loop(mut source: EventSource, rx: Receiver<Msg>, mut watched: impl Watched, s: Settle) {
    let mut tracker = Tracker::default();
    // The last relevant event not yet followed by a scan.
    let mut last_event: Option<Instant> = None;
    // A first look at once: what changed between the files' first reading
    // and the watch starting has no event to announce it.
    let mut recheck = Some(Instant::now());
    let mut next_resync = Instant::now() + s.resync;
    loop {
        let now = Instant::now();
        let quiet_at = last_event.map(|t| t + s.debounce);
        let deadline = [quiet_at, recheck, Some(next_resync)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_resync);
        match rx.recv_timeout(deadline.saturating_duration_since(now)) {
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Msg::Fs(event)) => {
                let mut next = Some(event);
                while let Some(event) = next.take() {
                    if let Some(at) = note_event(&mut source, &mut tracker, &watched, event) {
                        last_event = Some(at);
                    }
                    match rx.try_recv() {
                        Ok(Msg::Fs(event)) => next = Some(event),
                        Ok(Msg::Stop) => return,
                        Err(_) => {}
                    }
                }
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }

        let now = Instant::now();
        // With native events, a change found after events dates from the
        // last event (nothing was written since, or there would be another).
        // A change found by polling or a rescan alone must stay put for a
        // window before it counts.
        let mut settled_since = None;
        let mut scan = false;
        if quiet_at.is_some_and(|t| now >= t) {
            let at = last_event.take();
            if source.mode == ActiveMode::Native {
                settled_since = at;
            }
            scan = true;
        }
        if recheck.is_some_and(|t| now >= t) {
            recheck = None;
            scan = true;
        }
        if now >= next_resync {
            source.rewatch_if_replaced();
            // While the folder is gone, look for it often.
            next_resync = now
                + if source.attached {
                    s.resync
                } else {
                    DETACHED_RESYNC
                };
            scan = true;
        }
        if !scan {
            continue;
        }
        let known = watched.known();
        let files = watched.scan();
        tracker.scanning_at(SystemTime::now());
        let plan = tracker.plan(&known, &files, now, settled_since.unwrap_or(now), s);
        if !plan.changed.is_empty() || !plan.removed.is_empty() {
            // A bug that panics while loading must not end the watch for
            // good (modules would serve on, never reloaded, unnoticed): it
            // is logged, and the files are looked at again at the resync.
            let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                watched.apply(&plan.changed, &plan.removed)
            }));
            match applied {
                Ok(unsettled) => {
                    for name in unsettled {
                        tracker.unsettled(&name, Instant::now());
                    }
                }
                Err(panic) => {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(a panic without a message)".to_owned());
                    tracing::error!(
                        dir = %source.dir.display(),
                        changed = ?plan.changed,
                        removed = ?plan.removed,
                        %message,
                        "Following a change in the watched folder panicked (a bug); the files are looked at again at the next rescan."
                    );
                }
            }
        }
        // Whatever is still pending (or was found changing while read) is
        // looked at again once it may have settled; never in a busy loop.
        let floor = now + (s.debounce / 2).max(Duration::from_millis(10));
        recheck = tracker.next_check(s).map(|t| t.max(floor));
    }
}

/// Records one event; returns when it happened if it can matter.
fn note_event(
    source: &mut EventSource,
    tracker: &mut Tracker,
    watched: &impl Watched,
    event: notify::Result<notify::Event>,
) -> Option<Instant> {
    let now = Instant::now();
    let event = match event {
        Ok(event) => event,
        Err(err) => {
            tracing::debug!(dir = %source.dir.display(), error = %err, "A file watcher error; rescanning.");
            return Some(now);
        }
    };
    // Reads (ours included) are not changes.
    if matches!(
        event.kind,
        EventKind::Access(AccessKind::Open(_) | AccessKind::Close(AccessMode::Read))
    ) {
        return None;
    }
    let mut relevant = event.need_rescan();
    for path in &event.paths {
        if path == &source.dir {
            // The folder itself was renamed, removed or replaced.
            source.rewatch_if_replaced();
            relevant = true;
            continue;
        }
        if path.parent() != Some(source.dir.as_path()) {
            // Another entry of the parent folder: it may be what the folder
            // (a symlink) points to, coming or going. One stat tells. A
            // write to a file there (the journal beside the policy folder,
            // at every tick) changes no entry and is not looked at (native
            // events only: a poller reports a swapped link as modified).
            let entry_changed = matches!(source.mode, ActiveMode::Poll)
                || matches!(
                    event.kind,
                    EventKind::Create(_)
                        | EventKind::Remove(_)
                        | EventKind::Modify(ModifyKind::Name(_))
                        | EventKind::Any
                        | EventKind::Other
                );
            if entry_changed && source.rewatch_if_replaced() {
                relevant = true;
            }
            continue;
        }
        let Some(name) = path.file_name() else {
            continue;
        };
        if !watched.relevant(name) {
            continue;
        }
        relevant = true;
        let Some(name) = watched.key(name) else {
            continue;
        };
        match event.kind {
            EventKind::Modify(ModifyKind::Data(_)) => tracker.writing(&name, now),
            // A file just created is open until its writer closes it, even
            // before its first write: a writer descheduled between the two
            // must not have its empty file loaded. (Native events only: a
            // poller sees no closes. Not a symlink or a hard link: nothing
            // writes through them, and no close would come.)
            EventKind::Create(CreateKind::File)
                if matches!(source.mode, ActiveMode::Native) && created_by_a_writer(path) =>
            {
                tracker.writing(&name, now)
            }
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Name(_)) => tracker.closed(&name),
            _ => {}
        }
    }
    relevant.then_some(now)
}

/// Whether the entry just created at `path` is a new file a writer holds
/// open: not a symlink, nor a second name (hard link) of a file that
/// exists already.
fn created_by_a_writer(path: &Path) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    #[cfg(unix)]
    let second_name = {
        use std::os::unix::fs::MetadataExt as _;
        meta.nlink() > 1
    };
    #[cfg(not(unix))]
    let second_name = false;
    !meta.is_symlink() && !second_name
}

/// What a scan found ready.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Files changed and settled: to be read.
    changed: Vec<String>,
    /// Files gone (for a whole window): to be dropped.
    removed: Vec<String>,
}

/// Changes seen but not yet settled, and files held open by writers.
#[derive(Debug, Default)]
struct Tracker {
    /// Per file: the stamp last seen (`None`: absent) and since when.
    seen: BTreeMap<String, (Option<FileStamp>, Instant)>,
    /// Files written to (data events) without a close yet: the last write.
    open: BTreeMap<String, Instant>,
    /// The wall-clock time of the scan being planned ([`Tracker::scanning_at`]).
    scan_wall: Option<SystemTime>,
}

impl Tracker {
    /// A write to `name`: a writer holding it open is waited for as long
    /// as it keeps writing, and `writer_wait` after its last write.
    fn writing(&mut self, name: &str, now: Instant) {
        self.open.insert(name.to_owned(), now);
    }

    fn closed(&mut self, name: &str) {
        self.open.remove(name);
    }

    /// The next [`plan`](Self::plan) is for a scan at wall-clock time `at`.
    fn scanning_at(&mut self, at: SystemTime) {
        self.scan_wall = Some(at);
    }

    /// Whether `stamp` says the file was modified within the last window
    /// before the scan. Its event may still be on its way (the watcher's
    /// threads were slow to get it), so the change cannot be dated from
    /// the events received. An ordinary write is not: the scan comes a
    /// window after its last event, and the kernel's file clock is at or
    /// behind the wall clock.
    fn modified_recently(&self, stamp: Option<&FileStamp>, window: Duration) -> bool {
        let (Some(scan), Some(modified)) = (self.scan_wall, stamp.and_then(|stamp| stamp.modified))
        else {
            return false;
        };
        modified + window > scan
    }

    /// A file found changing while it was read: it must settle again.
    fn unsettled(&mut self, name: &str, now: Instant) {
        if let Some(seen) = self.seen.get_mut(name) {
            seen.1 = now;
        }
    }

    /// Compares the files on disk with the ones in use; returns those whose
    /// difference has lasted a debounce window and that no writer holds.
    /// `settled_since` is when a change first seen now is known to date
    /// from (the last event; or `now` when found without one).
    fn plan(
        &mut self,
        known: &BTreeMap<String, FileStamp>,
        files: &BTreeMap<String, FileStamp>,
        now: Instant,
        settled_since: Instant,
        s: Settle,
    ) -> Plan {
        let names: BTreeSet<&String> = known.keys().chain(files.keys()).collect();
        let mut plan = Plan::default();
        let mut pending = BTreeMap::new();
        for name in names {
            let on_disk = files.get(name);
            if on_disk == known.get(name) {
                continue; // in use as it is
            }
            // Seen as it is now before: stable since then, or since the
            // last event if that is earlier (no event since means no write).
            let since = match self.seen.get(name.as_str()) {
                Some((stamp, since)) if stamp.as_ref() == on_disk => (*since).min(settled_since),
                // Modified within the window by its own clock: first seen now.
                _ if self.modified_recently(on_disk, s.debounce) => now,
                _ => settled_since,
            };
            pending.insert(name.clone(), (on_disk.cloned(), since));
            if now.saturating_duration_since(since) < s.debounce {
                continue;
            }
            if let Some(opened) = self.open.get(name.as_str())
                && on_disk.is_some()
                && now.saturating_duration_since(*opened) < s.writer_wait
            {
                continue;
            }
            // An empty file is nearly always a write under way (created or
            // truncated, not yet written) whose events have not arrived:
            // their reader thread may be starved on a busy machine while
            // the scan runs. Waited for as a writer holding it open is.
            if on_disk.is_some_and(|f| f.len == 0)
                && now.saturating_duration_since(since) < s.writer_wait
            {
                continue;
            }
            match on_disk {
                Some(_) => plan.changed.push(name.clone()),
                None => plan.removed.push(name.clone()),
            }
        }
        // Files no longer different from what is in use need no tracking.
        self.open.retain(|name, _| pending.contains_key(name));
        self.seen = pending;
        plan
    }

    /// When a pending change may next be ready.
    fn next_check(&self, s: Settle) -> Option<Instant> {
        self.seen
            .iter()
            .map(|(name, (stamp, since))| {
                let mut settled = *since + s.debounce;
                if stamp.as_ref().is_some_and(|f| f.len == 0) {
                    settled = settled.max(*since + s.writer_wait);
                }
                match self.open.get(name) {
                    Some(opened) => settled.max(*opened + s.writer_wait),
                    None => settled,
                }
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `*.txt` files of a folder; `apply` panics on its first call.
    struct Panicky {
        dir: PathBuf,
        known: BTreeMap<String, FileStamp>,
        calls: std::sync::Arc<std::sync::Mutex<Vec<Vec<String>>>>,
    }

    impl Watched for Panicky {
        fn relevant(&self, name: &OsStr) -> bool {
            name.to_string_lossy().ends_with(".txt")
        }
        fn scan(&mut self) -> BTreeMap<String, FileStamp> {
            Self::scan_txt(&self.dir)
        }
        fn known(&self) -> BTreeMap<String, FileStamp> {
            self.known.clone()
        }
        fn apply(&mut self, changed: &[String], _removed: &[String]) -> Vec<String> {
            let first = {
                let mut calls = self.calls.lock().unwrap();
                calls.push(changed.to_vec());
                calls.len() == 1
            };
            assert!(!first, "a bug in following a change");
            self.known = self.scan();
            Vec::new()
        }
    }

    impl Panicky {
        fn scan_txt(dir: &Path) -> BTreeMap<String, FileStamp> {
            std::fs::read_dir(dir)
                .unwrap()
                .filter_map(|e| {
                    let path = e.ok()?.path();
                    let name = path.file_name()?.to_string_lossy().into_owned();
                    (name.ends_with(".txt")).then(|| Some((name, FileStamp::of(&path).ok()?)))?
                })
                .collect()
        }
    }

    /// A panic while following a change is logged and the change followed
    /// at a later scan, not the end of the watch.
    #[test]
    fn a_panic_in_apply_does_not_end_the_watch() {
        let dir = tempfile::tempdir().unwrap();
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let config = WatchConfig {
            enabled: true,
            debounce: Duration::from_millis(20),
            mode: crate::config::WatchMode::Poll,
            poll_interval: Duration::from_millis(30),
        };
        let watched = Panicky {
            dir: dir.path().to_path_buf(),
            known: BTreeMap::new(),
            calls: calls.clone(),
        };
        let _watch = FolderWatch::start(dir.path(), &config, watched).unwrap();
        std::fs::write(dir.path().join("a.txt"), "x").unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while calls.lock().unwrap().len() < 2 {
            assert!(Instant::now() < deadline, "{:?}", calls.lock().unwrap());
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(calls.lock().unwrap()[1], ["a.txt"]);
    }

    /// The `*.txt` files of a folder; every change followed is recorded.
    struct Recorder {
        dir: PathBuf,
        known: BTreeMap<String, FileStamp>,
        calls: std::sync::Arc<std::sync::Mutex<Vec<Vec<String>>>>,
    }

    impl Watched for Recorder {
        fn relevant(&self, name: &OsStr) -> bool {
            name.to_string_lossy().ends_with(".txt")
        }
        fn scan(&mut self) -> BTreeMap<String, FileStamp> {
            Panicky::scan_txt(&self.dir)
        }
        fn known(&self) -> BTreeMap<String, FileStamp> {
            self.known.clone()
        }
        fn apply(&mut self, changed: &[String], _removed: &[String]) -> Vec<String> {
            self.calls.lock().unwrap().push(changed.to_vec());
            self.known = self.scan();
            Vec::new()
        }
    }

    /// A folder named relative to the working directory is followed by its
    /// native events, well within the 30 s rescan (they name absolute
    /// paths: all of them were taken for another folder's).
    #[test]
    fn a_relative_folder_follows_native_events() {
        // Under the working directory, named relative to it.
        let dir = tempfile::tempdir_in(".").unwrap();
        let relative = PathBuf::from(dir.path().file_name().unwrap());
        assert!(relative.is_relative() && relative.is_dir());
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let config = WatchConfig {
            enabled: true,
            debounce: Duration::from_millis(20),
            mode: crate::config::WatchMode::Native,
            poll_interval: Duration::from_secs(60),
        };
        let watched = Recorder {
            dir: relative.clone(),
            known: BTreeMap::new(),
            calls: calls.clone(),
        };
        let _watch = FolderWatch::start(&relative, &config, watched).unwrap();
        // After the first look the watch takes at once.
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(dir.path().join("a.txt"), "x").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while calls.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "not followed within 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(calls.lock().unwrap()[0], ["a.txt"]);
    }

    const S: Settle = Settle {
        debounce: Duration::from_millis(100),
        writer_wait: Duration::from_secs(2),
        resync: Duration::from_secs(30),
    };

    fn stamp(len: u64) -> FileStamp {
        FileStamp {
            len,
            modified: None,
            inode: Some((1, len)),
            changed: None,
        }
    }

    #[test]
    fn a_rewrite_in_place_keeping_size_and_time_changes_the_stamp() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counter.wasm");
        std::fs::write(&path, b"version one").unwrap();
        let before = FileStamp::of(&path).unwrap();
        // Past the coarse clock the kernel stamps status changes with.
        std::thread::sleep(Duration::from_millis(50));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.write_all(b"version two").unwrap();
        file.set_modified(before.modified.unwrap()).unwrap();
        drop(file);
        let after = FileStamp::of(&path).unwrap();
        assert_eq!(
            (after.len, after.modified, after.inode),
            (before.len, before.modified, before.inode),
            "what cp -p keeps"
        );
        assert_ne!(after, before, "the status change time tells them apart");
    }

    fn map(entries: &[(&str, u64)]) -> BTreeMap<String, FileStamp> {
        entries
            .iter()
            .map(|(n, l)| (n.to_string(), stamp(*l)))
            .collect()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Files as (name, size) pairs.
    type Files = &'static [(&'static str, u64)];
    /// Expected (changed, removed) names.
    type Expected = (&'static [&'static str], &'static [&'static str]);
    /// One scan: ms since start, files on disk, ms since start the changes
    /// date from, what is expected ready.
    type Scan = (u64, Files, u64, Expected);

    #[test]
    fn settle_rules() {
        struct Case {
            name: &'static str,
            known: Files,
            scans: &'static [Scan],
            /// Files a writer holds open from time 0.
            open: &'static [&'static str],
        }
        let cases = [
            Case {
                name: "unchanged files are not reloaded",
                known: &[("a", 1)],
                scans: &[(500, &[("a", 1)], 400, (&[], &[]))],
                open: &[],
            },
            Case {
                name: "a change quiet for a window after events loads at once",
                known: &[("a", 1)],
                scans: &[(500, &[("a", 2)], 400, (&["a"], &[]))],
                open: &[],
            },
            Case {
                name: "a change found by a rescan alone waits a window",
                known: &[("a", 1)],
                scans: &[
                    (500, &[("a", 2)], 500, (&[], &[])),
                    (550, &[("a", 2)], 550, (&[], &[])),
                    (600, &[("a", 2)], 600, (&["a"], &[])),
                ],
                open: &[],
            },
            Case {
                name: "a rescan just before the events' own scan does not delay it",
                known: &[("a", 1)],
                scans: &[
                    (500, &[("a", 2)], 500, (&[], &[])),
                    (510, &[("a", 2)], 400, (&["a"], &[])),
                ],
                open: &[],
            },
            Case {
                name: "a file still growing restarts the window",
                known: &[],
                scans: &[
                    (500, &[("a", 2)], 500, (&[], &[])),
                    (600, &[("a", 3)], 600, (&[], &[])),
                    (700, &[("a", 3)], 700, (&["a"], &[])),
                ],
                open: &[],
            },
            Case {
                name: "a new file and a deleted one",
                known: &[("gone", 1)],
                scans: &[(500, &[("new", 5)], 300, (&["new"], &["gone"]))],
                open: &[],
            },
            Case {
                name: "a file held open by its writer waits for the close",
                known: &[("a", 1)],
                scans: &[
                    (500, &[("a", 2)], 300, (&[], &[])),
                    (1500, &[("a", 2)], 1500, (&[], &[])),
                ],
                open: &["a"],
            },
            Case {
                name: "an empty file is waited for as a writer's, from when it was seen",
                known: &[("a", 1)],
                scans: &[
                    (500, &[("a", 0)], 300, (&[], &[])),
                    (2200, &[("a", 0)], 2200, (&[], &[])),
                    (2300, &[("a", 0)], 2300, (&["a"], &[])),
                ],
                open: &[],
            },
            Case {
                name: "an empty file written before the wait ends loads a window later",
                known: &[("a", 1)],
                scans: &[
                    (500, &[("a", 0)], 300, (&[], &[])),
                    (700, &[("a", 5)], 600, (&["a"], &[])),
                ],
                open: &[],
            },
            Case {
                name: "a writer that never closes is waited for only so long",
                known: &[("a", 1)],
                scans: &[(2100, &[("a", 2)], 300, (&["a"], &[]))],
                open: &["a"],
            },
            Case {
                name: "a deleted file being written is still deleted",
                known: &[("a", 1)],
                scans: &[(500, &[], 300, (&[], &["a"]))],
                open: &["a"],
            },
        ];
        for case in cases {
            let start = Instant::now();
            let mut tracker = Tracker::default();
            for name in case.open {
                tracker.writing(name, start);
            }
            let known = map(case.known);
            for (at, files, since, (changed, removed)) in case.scans {
                let plan =
                    tracker.plan(&known, &map(files), start + ms(*at), start + ms(*since), S);
                assert_eq!(
                    (plan.changed.as_slice(), plan.removed.as_slice()),
                    (
                        &changed.iter().map(|s| s.to_string()).collect::<Vec<_>>()[..],
                        &removed.iter().map(|s| s.to_string()).collect::<Vec<_>>()[..]
                    ),
                    "{} (scan at {at} ms)",
                    case.name
                );
            }
        }
    }

    #[test]
    fn a_change_modified_within_the_window_waits_a_window_from_when_it_is_seen() {
        // The old file's events came in long ago; the file was rewritten
        // 20 ms before the scan, and its event is still on its way.
        let start = Instant::now();
        let scan = SystemTime::now();
        let with_mtime = |len, modified| {
            let mut files = map(&[("a", len)]);
            files.get_mut("a").unwrap().modified = Some(modified);
            files
        };
        let known = map(&[("a", 1)]);
        let mut tracker = Tracker::default();
        tracker.scanning_at(scan);
        let rewritten = with_mtime(7, scan - ms(20));
        let last_event = start;
        let plan = tracker.plan(&known, &rewritten, start + ms(500), last_event, S);
        assert_eq!(plan, Plan::default(), "dated from when it was seen");
        tracker.scanning_at(scan + ms(100));
        let plan = tracker.plan(&known, &rewritten, start + ms(600), last_event, S);
        assert_eq!(plan.changed, ["a"], "settled a window later");

        // Truncated and not yet written: waited for as a writer's.
        let mut tracker = Tracker::default();
        tracker.scanning_at(scan);
        let truncated = with_mtime(0, scan - ms(20));
        let plan = tracker.plan(&known, &truncated, start + ms(500), last_event, S);
        assert_eq!(plan, Plan::default());
        tracker.scanning_at(scan + ms(100));
        let plan = tracker.plan(&known, &truncated, start + ms(600), last_event, S);
        assert_eq!(plan, Plan::default(), "a window is not enough");
        let plan = tracker.plan(
            &known,
            &truncated,
            start + ms(500) + S.writer_wait,
            last_event,
            S,
        );
        assert_eq!(plan.changed, ["a"], "nor is it waited for for ever");

        // Written a window before the scan (the events' own write):
        // dated from the events, no delay.
        let mut tracker = Tracker::default();
        tracker.scanning_at(scan);
        let written = with_mtime(2, scan - S.debounce);
        let plan = tracker.plan(&known, &written, start + ms(500), last_event, S);
        assert_eq!(plan.changed, ["a"]);

        // A date in the future (`touch -d`): one window from when it is
        // seen, not for ever.
        let mut tracker = Tracker::default();
        tracker.scanning_at(scan);
        let future = with_mtime(3, scan + Duration::from_secs(3600));
        let plan = tracker.plan(&known, &future, start + ms(500), last_event, S);
        assert_eq!(plan, Plan::default());
        let plan = tracker.plan(&known, &future, start + ms(600), last_event, S);
        assert_eq!(plan.changed, ["a"]);
    }

    #[test]
    fn the_next_check_waits_for_the_window_and_the_writer() {
        let start = Instant::now();
        let mut tracker = Tracker::default();
        let plan = tracker.plan(&map(&[]), &map(&[("a", 1)]), start, start, S);
        assert_eq!(plan, Plan::default());
        assert_eq!(tracker.next_check(S), Some(start + S.debounce));
        tracker.writing("a", start);
        assert_eq!(tracker.next_check(S), Some(start + S.writer_wait));
        tracker.closed("a");
        assert_eq!(tracker.next_check(S), Some(start + S.debounce));
        // Once in use, nothing is pending.
        tracker.plan(&map(&[("a", 1)]), &map(&[("a", 1)]), start, start, S);
        assert_eq!(tracker.next_check(S), None);
        // Emptied: looked at again once a writer would have been waited for.
        tracker.plan(&map(&[("a", 1)]), &map(&[("a", 0)]), start, start, S);
        assert_eq!(tracker.next_check(S), Some(start + S.writer_wait));
    }

    #[test]
    fn a_writer_that_keeps_writing_is_waited_for_until_it_stops() {
        let start = Instant::now();
        let mut tracker = Tracker::default();
        let (known, on_disk) = (map(&[("a", 1)]), map(&[("a", 2)]));
        // Writes every 300 ms for 3 s, the file held open all along.
        for i in 0..10 {
            let at = start + ms(300 * i);
            tracker.writing("a", at);
            let plan = tracker.plan(&known, &on_disk, at + ms(150), at, S);
            assert_eq!(plan, Plan::default(), "write {i}");
        }
        // Past writer_wait from the first write, but not from the last.
        let last = start + ms(2700);
        assert_eq!(tracker.next_check(S), Some(last + S.writer_wait));
        let plan = tracker.plan(&known, &on_disk, last + ms(1000), last, S);
        assert_eq!(plan, Plan::default());
        // Idle for writer_wait while still open: loaded anyway.
        let plan = tracker.plan(&known, &on_disk, last + S.writer_wait, last, S);
        assert_eq!(plan.changed, ["a"]);
    }

    #[test]
    fn stamps_follow_symlinks_and_see_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, b"one").unwrap();
        let first = FileStamp::of(&a).unwrap();
        assert_eq!(first.len, 3);
        // Same size and (possibly) the same mtime, but a new inode.
        let b = dir.path().join("b");
        std::fs::write(&b, b"two").unwrap();
        std::fs::rename(&b, &a).unwrap();
        assert_ne!(FileStamp::of(&a).unwrap(), first);
        #[cfg(unix)]
        {
            let link = dir.path().join("link");
            std::os::unix::fs::symlink(&a, &link).unwrap();
            assert_eq!(FileStamp::of(&link).unwrap(), FileStamp::of(&a).unwrap());
        }
    }
}
