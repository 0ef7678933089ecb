//! The named set of loaded policy modules: every `*.wasm` in the policy folder,
//! hot-reloaded when the folder changes.
//!
//! Readers take an [`Arc<Snapshot>`] and never wait: the set is swapped
//! whole (an `ArcSwap`). A reload builds the next snapshot from the current
//! one and stores it; a tick that already took a module keeps evaluating
//! with it (a [`PolicyModule`] is its own `Arc`), so ticks in progress finish
//! on the version they started with.
//!
//! A module that fails to load is recorded in [`Snapshot::failures`] and
//! never replaces the version that is serving, nor stops the others from
//! loading. A module whose file is deleted leaves the snapshot and is noted
//! in [`Snapshot::removed`] (scalers that use it hold and say so) until it
//! comes back. [`Registry::watch`] keeps the snapshot in step with the
//! folder (see [`crate::watch`] for when a changed file counts as settled).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use crate::clock::wall_clock_ms;
use crate::config::WatchConfig;
use crate::policy::{Context, PolicyInfo};
use crate::runtime::{CodeOrigin, LoadError, PolicyModule, Runtime, Samples, log_safe};
use crate::watch::{FileStamp, FolderWatch, WatchError, Watched};

/// The loaded modules at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Modules that loaded, by name (file stem).
    pub modules: BTreeMap<String, PolicyModule>,
    /// Modules whose latest file did not load, by name, with why. When the
    /// name is also in `modules`, the previous version is still serving.
    pub failures: BTreeMap<String, LoadFailure>,
    /// Modules whose file was deleted while loaded, by name, until a file
    /// of that name loads again.
    pub removed: BTreeMap<String, Removal>,
    /// Counts the snapshots stored; 0 for the first.
    pub generation: u64,
}

impl Snapshot {
    /// What each module the daemon knows says about itself: the loaded ones
    /// and, for a deleted one, its last loaded version (a deleted module is
    /// expected back; the config that names it stays valid meanwhile).
    pub fn catalog(&self) -> BTreeMap<String, PolicyInfo> {
        let mut catalog: BTreeMap<String, PolicyInfo> = self
            .removed
            .iter()
            .map(|(name, r)| (name.clone(), r.info.clone()))
            .collect();
        catalog.extend(
            self.modules
                .iter()
                .map(|(name, m)| (name.clone(), m.info().clone())),
        );
        catalog
    }
}

impl Snapshot {
    /// [`Snapshot::catalog`] with the versions the [`Gate`] refused in place
    /// of those serving: what the modules will say about themselves once a
    /// config that fits the refused versions is applied (and
    /// [`Registry::recheck_refused`] loads them). A config change that
    /// renames a parameter is checked against this when it does not fit the
    /// versions serving, so the module and the config can change in either
    /// order.
    pub fn pending_catalog(&self) -> BTreeMap<String, PolicyInfo> {
        let mut catalog = self.catalog();
        for (name, failure) in &self.failures {
            if let Some(info) = &failure.refused_info {
                catalog.insert(name.clone(), (**info).clone());
            }
        }
        catalog
    }
}

impl crate::config::PolicyCatalog for Snapshot {
    fn describe(&self, module: &str) -> Option<PolicyInfo> {
        self.modules
            .get(module)
            .map(|m| m.info().clone())
            .or_else(|| self.removed.get(module).map(|r| r.info.clone()))
    }

    fn modules(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .modules
            .keys()
            .chain(self.removed.keys())
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        names
    }

    fn failure(&self, module: &str) -> Option<String> {
        self.failures.get(module).map(|f| f.error.clone())
    }
}

/// The [`LoadFailure::kind`]s tried again when the same bytes are written
/// again or touched.
const RETRIED_ON_TOUCH: [&str; 4] = [FAILS_ON_LIVE_CONTEXT, "io", "compile", "describe_failed"];

/// The [`LoadFailure::kind`] of a version the [`Gate`] refused.
pub const INCOMPATIBLE_WITH_CONFIG: &str = "incompatible_with_config";

/// The [`LoadFailure::kind`] of a version that failed on a context the
/// version serving decided (the trial of a new version).
pub const FAILS_ON_LIVE_CONTEXT: &str = "fails_on_live_context";

/// Tries `module`, a new version, on `samples`, contexts earlier versions
/// decided ([`Samples`]): a version that traps, runs past a limit or
/// answers what the contract forbids there would make its scalers hold on
/// every tick, so it does not replace one that works. An error the policy
/// returns itself is its own business (a new version may mean to refuse
/// what the old accepted). The call is an ordinary evaluation: a fresh
/// instance under the runtime's limits, nothing kept.
/// The error says whether the refusal is worth remembering across restarts
/// (`true`): a trap, a memory or stack overflow, fuel run out or a decision
/// the contract forbids are the version's own, while a wall-clock timeout
/// or an instance the pool could not give may be the host's load at the
/// time, and a restart tries again.
fn trial(module: &PolicyModule, samples: &[Arc<Context>]) -> Result<(), (String, bool)> {
    for sample in samples {
        // Kept with the parameters as configured: this version's defaults
        // filled in, as the daemon would hand them to it.
        let mut sample = (**sample).clone();
        sample.parameters = crate::scaler::with_defaults(&sample.parameters, module.info());
        let sample = &sample;
        match module.evaluate(sample) {
            Err(err) if err.kind.is_fault() => {
                let lasting = !matches!(
                    err.kind,
                    crate::runtime::EvalErrorKind::Timeout
                        | crate::runtime::EvalErrorKind::Instantiate
                );
                return Err((
                    format!(
                        "this version fails ({}) on a context an earlier version decided (scaler \
                     {:?} at {}), so it is not loaded: {}",
                        err.kind.as_str(),
                        sample.scaler,
                        crate::clock::format_ms(sample.now_ms),
                        err.message
                    ),
                    lasting,
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Forgets a refusal of `digest` once a version with those bytes has
/// passed a trial.
fn forget_refusal(runtime: &Runtime, digest: &str) {
    if let Some(Err(error)) = runtime.forget_refusal(digest) {
        tracing::warn!(%error, "Could not forget a refusal of a module version that now passed its trial.");
    }
}

/// Remembers that the version with `digest` failed its trial, so a restart
/// does not serve it untried (a restarted daemon has no contexts to try it
/// on), in the runtime's code cache (private to this user; nothing is
/// remembered without one). Best effort: a write that fails is logged.
fn remember_refusal(runtime: &Runtime, digest: &str, failure: &LoadFailure) {
    let text = format!(
        "{}\n{LIMITS}{}\n{}\n",
        crate::clock::format_ms(failure.at_ms),
        limits_key(runtime.limits()),
        failure.error
    );
    if let Some(Err(error)) = runtime.remember_refusal(digest, &text) {
        tracing::warn!(%error, "Could not remember a refused module version; a restart would load it untried.");
    }
}

/// How a remembered refusal's marker names the limits it was made under.
const LIMITS: &str = "limits: ";

/// The runtime limits a trial's lasting failure can depend on (memory,
/// fuel, stack, and what a decision may say), as a refusal's marker keeps
/// them.
fn limits_key(limits: &crate::config::RuntimeLimits) -> String {
    format!(
        "max_memory={} fuel={} max_wasm_stack={} max_replicas={} max_state_bytes={} \
         max_reason_bytes={}",
        limits.max_memory.as_u64(),
        limits.fuel,
        limits.max_wasm_stack.as_u64(),
        limits.max_replicas,
        limits.max_state_bytes.as_u64(),
        limits.max_reason_bytes
    )
}

/// A refusal remembered for `digest` ([`remember_refusal`]), as the failure
/// a restarted daemon reports for the version.
fn remembered_refusal(runtime: &Runtime, path: &Path, digest: &str) -> Option<LoadFailure> {
    let (marker, text) = runtime.remembered_refusal(digest)?;
    let (when, why) = text.split_once('\n').unwrap_or((&text, ""));
    // Refused under other limits (more memory, fuel or stack since, or a
    // higher max_replicas): it may pass under these, and loads as a
    // version never tried does. (A marker of an earlier release has no
    // limits line, and stands.)
    let why = match why.split_once('\n') {
        Some((limits, why)) if limits.starts_with(LIMITS) => {
            if limits[LIMITS.len()..] != limits_key(runtime.limits()) {
                tracing::info!(
                    digest,
                    marker = %marker.display(),
                    "A refusal remembered for this module version was under other runtime \
                     limits; it is loaded as a version never tried."
                );
                return None;
            }
            why
        }
        _ => why,
    };
    Some(LoadFailure {
        path: path.to_path_buf(),
        kind: FAILS_ON_LIVE_CONTEXT,
        error: format!(
            "refused at {when} by an earlier run of the daemon, and not loaded untried: {}; \
             write another version (or delete {} and touch the module's file to load this \
             one anyway)",
            why.trim_end(),
            marker.display()
        ),
        at_ms: wall_clock_ms(),
        digest: Some(digest.to_owned()),
        refused_info: None,
    })
}

/// Why a module file did not load.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadFailure {
    /// The module file.
    pub path: PathBuf,
    /// A fixed label ([`LoadError::kind`], [`INCOMPATIBLE_WITH_CONFIG`] or
    /// [`FAILS_ON_LIVE_CONTEXT`]).
    pub kind: &'static str,
    /// The full error.
    pub error: String,
    /// When the load was tried (wall clock, ms since the Unix epoch).
    pub at_ms: i64,
    /// sha256 of the bytes that failed, when they could be read.
    pub digest: Option<String>,
    /// What a version the [`Gate`] refused says about itself: it loaded,
    /// and may serve once the config fits it ([`Snapshot::pending_catalog`]).
    pub refused_info: Option<Box<PolicyInfo>>,
}

impl LoadFailure {
    fn new(path: &Path, err: &LoadError, digest: Option<String>) -> Self {
        LoadFailure {
            path: path.to_path_buf(),
            kind: err.kind(),
            error: err.to_string(),
            at_ms: wall_clock_ms(),
            digest,
            refused_info: None,
        }
    }
}

/// A loaded module whose file was deleted.
#[derive(Debug, Clone, PartialEq)]
pub struct Removal {
    /// The file that was deleted.
    pub path: PathBuf,
    /// The digest of the version that was serving.
    pub digest: String,
    /// What that version said about itself.
    pub info: PolicyInfo,
    /// When the deletion was seen (wall clock, ms since the Unix epoch).
    pub at_ms: i64,
}

/// A module version that loaded during a reload.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The module's name.
    pub name: String,
    /// Its digest.
    pub digest: String,
    /// The digest it replaced, if a version was serving.
    pub previous: Option<String>,
    /// Compiled, or from the cache.
    pub origin: CodeOrigin,
    /// How long loading took.
    pub load_time: Duration,
}

/// What one reload did.
#[derive(Debug, Clone, Default)]
pub struct ReloadReport {
    /// Module versions now serving.
    pub loaded: Vec<Loaded>,
    /// Files that failed to load (a previous version, if any, still serves).
    pub failed: Vec<(String, LoadFailure)>,
    /// Modules deleted from the folder.
    pub removed: Vec<String>,
    /// Every name whose file left the folder, serving or failing (its
    /// metrics go with it).
    pub gone: Vec<String>,
    /// Files found changing while they were read; retried once settled.
    pub unsettled: Vec<String>,
    /// The snapshot generation after the reload.
    pub generation: u64,
}

impl ReloadReport {
    /// Whether the reload changed the snapshot.
    pub fn changed_anything(&self) -> bool {
        !self.loaded.is_empty() || !self.failed.is_empty() || !self.gone.is_empty()
    }
}

/// A check a new module version must pass before it serves, given what
/// every module would then say about itself (e.g. that the running config's
/// parameters suit it). The error says why not.
pub type Gate = dyn Fn(&str, &BTreeMap<String, PolicyInfo>) -> Result<(), String> + Send + Sync;

/// Why the policy folder could not be read or watched.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The folder does not exist.
    #[error("the policy folder {} does not exist", .0.display())]
    MissingDir(PathBuf),
    /// The folder could not be listed.
    #[error("cannot list the policy folder {}: {source}", path.display())]
    ReadDir {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The folder could not be watched.
    #[error("{0}")]
    Watch(#[from] WatchError),
}

impl RegistryError {
    /// A fixed label for this kind of error.
    pub fn kind(&self) -> &'static str {
        match self {
            RegistryError::MissingDir(_) => "missing_dir",
            RegistryError::ReadDir { .. } => "read_dir",
            RegistryError::Watch(_) => "watch",
        }
    }
}

/// The policy modules of one folder, loaded by one runtime.
pub struct Registry {
    runtime: Runtime,
    dir: PathBuf,
    current: ArcSwap<Snapshot>,
    /// The stamp of each module file as last read. Also the writers' lock:
    /// one reload at a time.
    files: Mutex<BTreeMap<String, FileStamp>>,
    generation: watch::Sender<u64>,
    gate: RwLock<Option<Arc<Gate>>>,
    /// Held while the [`Gate`] has its last word on new versions and the
    /// snapshot is stored, and by whoever changes what the gate checks
    /// (a config reload, [`Registry::lock_swaps`]): neither side can then
    /// swap in what the other checked only against the old.
    swap: Mutex<()>,
    /// Each module's [`Samples`], by name, kept across its versions and
    /// while its file is away.
    samples: Mutex<BTreeMap<String, Arc<Samples>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("dir", &self.dir)
            .field("runtime", &self.runtime)
            .field("generation", &*self.generation.borrow())
            .finish_non_exhaustive()
    }
}

/// A module file read for loading.
struct Candidate {
    name: String,
    path: PathBuf,
    stamp: FileStamp,
    bytes: Vec<u8>,
    digest: String,
}

impl Registry {
    /// Loads every `*.wasm` file in `dir` (not recursively), compiling in
    /// parallel. A module that fails goes to [`Snapshot::failures`].
    pub fn load_dir(runtime: Runtime, dir: &Path) -> Result<Registry, RegistryError> {
        let files = module_files(dir)?;
        let registry = Registry {
            runtime,
            dir: dir.to_path_buf(),
            current: ArcSwap::from_pointee(Snapshot::default()),
            files: Mutex::new(BTreeMap::new()),
            generation: watch::Sender::new(0),
            gate: RwLock::new(None),
            swap: Mutex::new(()),
            samples: Mutex::new(BTreeMap::new()),
        };
        let mut stamps = registry.lock_files();
        let mut snapshot = Snapshot::default();
        let (candidates, failures) = read_all_settled(files);
        for (name, path, failure) in failures {
            // A file that kept changing gets a stamp no file has, so the
            // watcher takes it as changed whatever it holds (stamped as it
            // was now, a copy that ended just before looked unchanged to
            // it, and stayed failed), and as removed if it goes.
            match path {
                Some(path) => {
                    if let Ok(stamp) = FileStamp::of(&path) {
                        stamps.insert(name.clone(), stamp);
                    }
                }
                None => {
                    stamps.insert(name.clone(), FileStamp::UNREAD);
                }
            }
            snapshot.failures.insert(name, failure);
        }
        for (candidate, result) in load_all(&registry.runtime, candidates) {
            stamps.insert(candidate.name.clone(), candidate.stamp.clone());
            match result {
                Ok(module) => {
                    let (name, path) = (&candidate.name, &candidate.path);
                    match registry.try_version(name, path, &candidate.digest, module) {
                        Ok(module) => {
                            snapshot.modules.insert(candidate.name, module);
                        }
                        Err(failure) => {
                            snapshot.failures.insert(candidate.name, failure);
                        }
                    }
                }
                Err(err) => {
                    let failure = LoadFailure::new(&candidate.path, &err, Some(candidate.digest));
                    snapshot.failures.insert(candidate.name, failure);
                }
            }
        }
        for (name, failure) in &snapshot.failures {
            tracing::warn!(
                module = %name,
                path = %failure.path.display(),
                kind = failure.kind,
                error = %log_safe(&failure.error),
                "A policy module failed to load; scalers that use it will hold."
            );
        }
        let from_cache = snapshot
            .modules
            .values()
            .filter(|m| m.origin() == CodeOrigin::Cache)
            .count();
        tracing::info!(
            dir = %dir.display(),
            loaded = snapshot.modules.len(),
            from_cache,
            failed = snapshot.failures.len(),
            "Loaded the policy folder."
        );
        registry.current.store(Arc::new(snapshot));
        drop(stamps);
        Ok(registry)
    }

    /// The modules as they are now. Cheap; never blocks.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The module named `name`, if it is loaded.
    pub fn get(&self, name: &str) -> Option<PolicyModule> {
        self.current.load().modules.get(name).cloned()
    }

    /// The runtime the modules run on.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The policy folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Notified with the new [`Snapshot::generation`] after every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The last step of loading a version of module `name`: its trial on
    /// the module's [`Samples`] ([`trial`]), remembered when it fails; with
    /// nothing to try it on (at start, or a module new to this run), a
    /// refusal an earlier run remembered for these bytes stands. A version
    /// that passes shares the module's samples from then on.
    fn try_version(
        &self,
        name: &str,
        path: &Path,
        digest: &str,
        module: PolicyModule,
    ) -> Result<PolicyModule, LoadFailure> {
        let samples = self.samples(name);
        let contexts = samples.contexts();
        if contexts.is_empty() {
            if let Some(failure) = remembered_refusal(&self.runtime, path, digest) {
                return Err(failure);
            }
        } else {
            match trial(&module, &contexts) {
                Ok(_) => forget_refusal(&self.runtime, digest),
                Err((error, lasting)) => {
                    let failure = LoadFailure {
                        path: path.to_path_buf(),
                        kind: FAILS_ON_LIVE_CONTEXT,
                        error,
                        at_ms: wall_clock_ms(),
                        digest: Some(digest.to_owned()),
                        refused_info: None,
                    };
                    if lasting {
                        remember_refusal(&self.runtime, digest, &failure);
                    }
                    return Err(failure);
                }
            }
        }
        module.share_samples(samples);
        Ok(module)
    }

    /// The [`Samples`] of module `name`.
    fn samples(&self, name: &str) -> Arc<Samples> {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Sets the check new module versions must pass ([`Gate`]); replaces
    /// any previous one.
    pub fn set_gate(&self, gate: Arc<Gate>) {
        *self.gate.write().unwrap_or_else(PoisonError::into_inner) = Some(gate);
    }

    /// The `*.wasm` files in the folder now, by module name, with stamps.
    /// Files that vanish while listed are left out.
    pub fn scan(&self) -> Result<BTreeMap<String, FileStamp>, RegistryError> {
        let known = self.known();
        Ok(module_files(&self.dir)?
            .into_iter()
            .filter_map(|path| {
                let name = module_name(&path);
                match FileStamp::of(&path) {
                    Ok(stamp) => Some((name, stamp)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    // Cannot tell (an I/O error, a mount that errors): the
                    // file is taken to be as it was, not deleted.
                    Err(_) => known.get(&name).map(|stamp| (name, stamp.clone())),
                }
            })
            .collect())
    }

    /// The stamps of the module files as last read.
    pub fn known(&self) -> BTreeMap<String, FileStamp> {
        self.lock_files().clone()
    }

    /// Reloads the modules named in `changed` from their files and drops
    /// those in `removed`, then swaps the new snapshot in. A file that fails
    /// to load (or fails the [`Gate`]) is recorded in
    /// [`Snapshot::failures`] and the version serving, if any, stays.
    /// Blocks while compiling: call it off the async runtime.
    pub fn reload(&self, changed: &[String], removed: &[String]) -> ReloadReport {
        self.reload_files(changed, removed, false)
    }

    /// Takes the loaded module `name` out of service as a version the
    /// config does not fit ([`INCOMPATIBLE_WITH_CONFIG`], saying `error`):
    /// what a start does with a version that replaced, while the daemon
    /// was down, the one its scalers ran. Its scalers hold; a config
    /// reload it fits ([`Registry::recheck_refused`]) or a new file loads
    /// it.
    pub fn refuse_loaded(&self, name: &str, error: String) {
        let _files = self.lock_files();
        let _swap = self.lock_swaps();
        let current = self.current.load_full();
        let mut next = (*current).clone();
        let Some(module) = next.modules.remove(name) else {
            return;
        };
        let failure = LoadFailure {
            path: self.dir.join(format!("{name}.wasm")),
            kind: INCOMPATIBLE_WITH_CONFIG,
            error,
            at_ms: wall_clock_ms(),
            digest: Some(module.digest().to_owned()),
            refused_info: Some(Box::new(module.info().clone())),
        };
        warn_refused(name, None, &failure);
        next.failures.insert(name.to_owned(), failure);
        next.generation = current.generation + 1;
        let generation = next.generation;
        self.current.store(Arc::new(next));
        self.generation.send_replace(generation);
    }

    /// Tries again the versions the [`Gate`] refused: after the config
    /// they did not fit has changed they may fit now (a version refused
    /// for a parameter the config gave loads once a reload drops it),
    /// without their files being written again. Blocks while loading
    /// (from the compiled-code cache, usually): call it off the async
    /// runtime.
    pub fn recheck_refused(&self) -> ReloadReport {
        self.reload_files(&[], &[], true)
    }

    /// [`Registry::reload`]; with `retry_failed`, the versions the gate
    /// refused are loaded again too, as the snapshot has them once this
    /// reload has the writers' lock (a reload under way may be refusing
    /// one against the config just replaced), and bytes that failed before
    /// are not skipped.
    fn reload_files(
        &self,
        changed: &[String],
        removed: &[String],
        retry_failed: bool,
    ) -> ReloadReport {
        let mut stamps = self.lock_files();
        let current = self.current.load_full();
        let refused: Vec<String> = if retry_failed {
            current
                .failures
                .iter()
                .filter(|(_, failure)| failure.kind == INCOMPATIBLE_WITH_CONFIG)
                .map(|(name, _)| name.clone())
                .collect()
        } else {
            Vec::new()
        };
        let changed = changed.iter().chain(&refused);
        let mut next = (*current).clone();
        let mut report = ReloadReport::default();
        let now_ms = wall_clock_ms();
        // Whether `next` differs from `current`.
        let mut dirty = false;

        for name in removed {
            stamps.remove(name);
            let failed = next.failures.remove(name).is_some();
            dirty |= failed;
            let module = next.modules.remove(name);
            if failed || module.is_some() {
                report.gone.push(name.clone());
            }
            if let Some(module) = module {
                dirty = true;
                tracing::warn!(
                    module = %name,
                    digest = %module.digest(),
                    "A policy module was deleted from the policy folder; scalers that use it hold until it comes back."
                );
                next.removed.insert(
                    name.clone(),
                    Removal {
                        path: self.dir.join(format!("{name}.wasm")),
                        digest: module.digest().to_owned(),
                        info: module.info().clone(),
                        at_ms: now_ms,
                    },
                );
                report.removed.push(name.clone());
            }
        }

        let mut candidates = Vec::new();
        for name in changed {
            let path = self.dir.join(format!("{name}.wasm"));
            let candidate = match read_settled(name, &path) {
                Ok(candidate) => candidate,
                Err(Some(failure)) => {
                    // Unreadable: recorded once, until the file changes.
                    if let Ok(stamp) = FileStamp::of(&path) {
                        stamps.insert(name.clone(), stamp);
                    }
                    report.failed.push((name.clone(), failure.clone()));
                    next.failures.insert(name.clone(), failure);
                    dirty = true;
                    continue;
                }
                Err(None) => {
                    report.unsettled.push(name.clone());
                    continue;
                }
            };
            // Same bytes as the version serving, or as the last failure:
            // nothing to load (a touch, or a flip back before it settled).
            let serving = next.modules.get(name).map(|m| m.digest().to_owned());
            if serving.as_deref() == Some(candidate.digest.as_str()) {
                stamps.insert(name.clone(), candidate.stamp);
                if next.failures.remove(name).is_some() {
                    dirty = true;
                    tracing::info!(module = %name, digest = %candidate.digest, "A policy module's file is back to the version serving.");
                }
                continue;
            }
            // A failure of these bytes that may not be theirs alone (a
            // compiler killed, a read or a trial cut short, a remembered
            // refusal since deleted) is tried again when the file is
            // written or touched; one the bytes decide (not a component,
            // another contract) is not, and a version the config did not
            // fit waits for a config reload ([`Registry::recheck_refused`]).
            let failed = next.failures.get(name);
            if !retry_failed
                && failed.is_some_and(|f| !RETRIED_ON_TOUCH.contains(&f.kind))
                && failed.and_then(|f| f.digest.as_deref()) == Some(candidate.digest.as_str())
            {
                stamps.insert(name.clone(), candidate.stamp);
                continue;
            }
            candidates.push(candidate);
        }

        let gate = self
            .gate
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        // Versions that passed, for the gate's last word below.
        let mut accepted = Vec::new();
        for (candidate, result) in load_all(&self.runtime, candidates) {
            dirty = true;
            let Candidate {
                name,
                path,
                stamp,
                digest,
                ..
            } = candidate;
            stamps.insert(name.clone(), stamp);
            let previous = next.modules.get(&name).map(|m| m.digest().to_owned());
            let outcome = result
                .map_err(|err| LoadFailure::new(&path, &err, Some(digest.clone())))
                .and_then(|module| {
                    let Some(gate) = &gate else {
                        return Ok(module);
                    };
                    let mut catalog = next.catalog();
                    catalog.insert(name.clone(), module.info().clone());
                    gate(&name, &catalog)
                        .map_err(|error| LoadFailure {
                            path: path.clone(),
                            kind: INCOMPATIBLE_WITH_CONFIG,
                            error,
                            at_ms: wall_clock_ms(),
                            digest: Some(digest.clone()),
                            refused_info: Some(Box::new(module.info().clone())),
                        })
                        .map(|()| module)
                })
                .and_then(|module| self.try_version(&name, &path, &digest, module));
            match outcome {
                Ok(module) => {
                    next.failures.remove(&name);
                    next.removed.remove(&name);
                    next.modules.insert(name.clone(), module);
                    accepted.push((name, path, digest, previous));
                }
                Err(failure) => {
                    warn_refused(&name, previous.as_deref(), &failure);
                    report.failed.push((name.clone(), failure.clone()));
                    next.failures.insert(name, failure);
                }
            }
        }

        // The gate's last word, with swaps held off until the snapshot is
        // stored: a config reload applied while these versions loaded was
        // checked against the versions serving then, and the gate above
        // may have read the config before it.
        let _swap = self.lock_swaps();
        for (name, path, digest, previous) in accepted {
            let refusal = gate
                .as_ref()
                .and_then(|gate| gate(&name, &next.catalog()).err());
            let Some(error) = refusal else {
                let module = &next.modules[&name];
                tracing::info!(
                    module = %name,
                    digest = %module.digest(),
                    previous = previous.as_deref().unwrap_or("none"),
                    origin = module.origin().as_str(),
                    load_ms = module.load_time().as_secs_f64() * 1e3,
                    "Loaded a new version of a policy module; new ticks use it."
                );
                report.loaded.push(Loaded {
                    name,
                    digest: module.digest().to_owned(),
                    previous,
                    origin: module.origin(),
                    load_time: module.load_time(),
                });
                continue;
            };
            // Back to what served (or was known removed) before it.
            let refused = next.modules.remove(&name);
            if let Some(serving) = current.modules.get(&name) {
                next.modules.insert(name.clone(), serving.clone());
            }
            if let Some(removal) = current.removed.get(&name) {
                next.removed.insert(name.clone(), removal.clone());
            }
            let failure = LoadFailure {
                path,
                kind: INCOMPATIBLE_WITH_CONFIG,
                error,
                at_ms: wall_clock_ms(),
                digest: Some(digest),
                refused_info: refused.map(|m| Box::new(m.info().clone())),
            };
            warn_refused(&name, previous.as_deref(), &failure);
            report.failed.push((name.clone(), failure.clone()));
            next.failures.insert(name, failure);
        }

        if dirty {
            next.generation = current.generation + 1;
            report.generation = next.generation;
            self.current.store(Arc::new(next));
            self.generation.send_replace(report.generation);
        } else {
            report.generation = current.generation;
        }
        report
    }

    /// Watches the policy folder and reloads what changes, on a thread of
    /// its own, until the returned watch is dropped. `on_reload` hears of
    /// every reload that changed something (for metrics).
    pub fn watch(
        self: &Arc<Self>,
        config: &WatchConfig,
        on_reload: impl Fn(&ReloadReport) + Send + 'static,
    ) -> Result<FolderWatch, RegistryError> {
        let watched = WatchedFolder {
            registry: Arc::clone(self),
            on_reload: Box::new(on_reload),
            unreadable: false,
        };
        Ok(FolderWatch::start(&self.dir, config, watched)?)
    }

    /// Holds off the swap of a new snapshot (and the [`Gate`]'s last
    /// word on its new versions) while held. A config reload holds it from
    /// its last check of the modules serving until the config is applied,
    /// so a version loaded meanwhile is gated against the new config.
    /// Never held across an `.await`.
    pub fn lock_swaps(&self) -> std::sync::MutexGuard<'_, ()> {
        self.swap.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_files(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, FileStamp>> {
        self.files.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Logs that `name`'s new version was refused, and what decides instead.
fn warn_refused(name: &str, serving: Option<&str>, failure: &LoadFailure) {
    match serving {
        Some(serving) => tracing::warn!(
            module = %name,
            kind = failure.kind,
            error = %log_safe(&failure.error),
            serving = %serving,
            "A new version of a policy module failed to load; the previous version keeps deciding."
        ),
        None => tracing::warn!(
            module = %name,
            kind = failure.kind,
            error = %log_safe(&failure.error),
            "A policy module failed to load; scalers that use it hold."
        ),
    }
}

/// The policy folder as [`FolderWatch`] sees it.
struct WatchedFolder {
    registry: Arc<Registry>,
    on_reload: Box<dyn Fn(&ReloadReport) + Send>,
    /// Whether the folder could not be listed at the last scan.
    unreadable: bool,
}

impl Watched for WatchedFolder {
    fn relevant(&self, name: &OsStr) -> bool {
        // Module files, and the hidden `..data` entries a Kubernetes
        // ConfigMap mount swaps.
        Path::new(name).extension().is_some_and(|e| e == "wasm")
            || name.to_string_lossy().starts_with("..")
    }

    fn key(&self, name: &OsStr) -> Option<String> {
        let path = Path::new(name);
        path.extension()
            .is_some_and(|e| e == "wasm")
            .then(|| module_name(path))
    }

    fn scan(&mut self) -> BTreeMap<String, FileStamp> {
        match self.registry.scan() {
            Ok(files) => {
                if std::mem::take(&mut self.unreadable) {
                    tracing::info!(dir = %self.registry.dir.display(), "The policy folder is back.");
                }
                files
            }
            Err(err) => {
                // A folder that is gone (being replaced, a mount hiccup) says
                // nothing about its modules: keep serving them as they are.
                if !std::mem::replace(&mut self.unreadable, true) {
                    tracing::warn!(
                        error = %err,
                        "The policy folder cannot be listed; its modules keep serving as they are."
                    );
                }
                self.registry.known()
            }
        }
    }

    fn known(&self) -> BTreeMap<String, FileStamp> {
        self.registry.known()
    }

    fn apply(&mut self, changed: &[String], removed: &[String]) -> Vec<String> {
        let report = self.registry.reload(changed, removed);
        if report.changed_anything() {
            (self.on_reload)(&report);
        }
        report.unsettled
    }
}

/// The module name of a file: its stem.
fn module_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// [`read_settled`] for every file at start, when a file being written (a
/// deploy under way) cannot be left for later silently: config naming its
/// module would be refused as naming an unknown one, and a read between
/// two writes can look settled. Files changed within [`START_QUIET`] must
/// stay as read for that long (one wait for all of them); they are read
/// again for a few seconds, then each is a failure that says so (its
/// scalers hold until the watcher loads it once it holds still; its stamp
/// is one no file has, so it counts as changed). The failures come with their names and
/// paths (none for a file that kept changing: its stamp is not to be
/// kept, see [`FileStamp::UNREAD`]); a file that vanished is no module.
#[allow(clippy::type_complexity)]
fn read_all_settled(
    files: Vec<PathBuf>,
) -> (Vec<Candidate>, Vec<(String, Option<PathBuf>, LoadFailure)>) {
    let (mut candidates, mut failures) = (Vec::new(), Vec::new());
    let mut pending = files;
    for _ in 0..START_SETTLE_TRIES {
        let (mut fresh, mut again) = (Vec::new(), Vec::new());
        for path in pending {
            let name = module_name(&path);
            match read_settled(&name, &path) {
                Ok(candidate) if changed_lately(&candidate.stamp) => fresh.push(candidate),
                Ok(candidate) => candidates.push(candidate),
                Err(Some(failure)) => failures.push((name, Some(path), failure)),
                Err(None) if path.exists() => again.push(path),
                Err(None) => {}
            }
        }
        if fresh.is_empty() && again.is_empty() {
            return (candidates, failures);
        }
        std::thread::sleep(START_QUIET);
        for candidate in fresh {
            if FileStamp::of(&candidate.path).is_ok_and(|now| now == candidate.stamp) {
                candidates.push(candidate);
            } else {
                again.push(candidate.path);
            }
        }
        pending = again;
    }
    for path in pending {
        let err = LoadError::Io {
            path: path.clone(),
            source: std::io::Error::other(
                "the file kept changing while the daemon started (still being written?); it \
                 is loaded once it holds still",
            ),
        };
        let failure = LoadFailure::new(&path, &err, None);
        failures.push((module_name(&path), None, failure));
    }
    (candidates, failures)
}

/// How often [`read_settled_at_start`] reads a file that is changing, and
/// how long one changed lately must hold still.
const START_SETTLE_TRIES: u32 = 20;
const START_QUIET: Duration = Duration::from_millis(100);

/// Whether the file was written within [`START_QUIET`] (by its status
/// change time where there is one: a writer cannot set it).
fn changed_lately(stamp: &FileStamp) -> bool {
    let changed = match stamp.changed {
        Some((secs, nanos)) => u64::try_from(secs)
            .ok()
            .map(|s| std::time::UNIX_EPOCH + Duration::new(s, nanos.clamp(0, 999_999_999) as u32)),
        None => stamp.modified,
    };
    // A time ahead of the clock (a clock set back, a file server ahead)
    // is not taken for "lately": it would stay so.
    changed.is_some_and(|at| {
        std::time::SystemTime::now()
            .duration_since(at)
            .is_ok_and(|age| age < START_QUIET)
    })
}

/// Reads a module file, checking it did not change while being read (its
/// stamp before and after). `Err(None)`: it vanished or is changing, try
/// again later; `Err(Some(_))`: it cannot be read.
fn read_settled(name: &str, path: &Path) -> Result<Candidate, Option<LoadFailure>> {
    let io_failure = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::NotFound {
            return None;
        }
        let err = LoadError::Io {
            path: path.to_path_buf(),
            source,
        };
        Some(LoadFailure::new(path, &err, None))
    };
    let before = FileStamp::of(path).map_err(io_failure)?;
    let bytes = std::fs::read(path).map_err(io_failure)?;
    let after = FileStamp::of(path).map_err(io_failure)?;
    if before != after || bytes.len() as u64 != after.len {
        return Err(None);
    }
    Ok(Candidate {
        name: name.to_owned(),
        path: path.to_path_buf(),
        stamp: after,
        digest: hex::encode(Sha256::digest(&bytes)),
        bytes,
    })
}

/// The `*.wasm` files directly in `dir`, sorted by name, and the folders
/// named so (a mistake worth a failure that says so, rather than a module
/// silently missing). Hidden names (a leading `.`) are not modules: deploy
/// tools write their temporary files so.
fn module_files(dir: &Path) -> Result<Vec<PathBuf>, RegistryError> {
    if !dir.is_dir() {
        return Err(RegistryError::MissingDir(dir.to_path_buf()));
    }
    let read_err = |source| RegistryError::ReadDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        // `is_file` follows symlinks, as the Kubernetes ConfigMap layout
        // needs; a link to nothing (mid-swap) is left for the next scan.
        let hidden = path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with('.'));
        // A file whose status cannot be read for another reason than its
        // absence (an I/O error on the mount a link leads to) is listed:
        // its module is not dropped for it.
        let present = match std::fs::metadata(&path) {
            Ok(meta) => meta.is_file() || meta.is_dir(),
            Err(e) => e.kind() != std::io::ErrorKind::NotFound,
        };
        if !hidden && path.extension().is_some_and(|e| e == "wasm") && present {
            // A module is named in config by its file name: one that is not
            // UTF-8 could be neither named nor found again by its name.
            if path.file_stem().is_some_and(|s| s.to_str().is_none()) {
                warn_once_unnamed(&path);
                continue;
            }
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Says once per file that a module file's name is not UTF-8 (every scan
/// meets it again).
fn warn_once_unnamed(path: &Path) {
    static WARNED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
    if WARNED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(path.to_path_buf())
    {
        tracing::warn!(
            path = %path.display(),
            "A module file's name is not UTF-8, so config cannot name it; it is not loaded. Rename it."
        );
    }
}

/// Loads `candidates` on up to as many threads as there are cores.
fn load_all(
    runtime: &Runtime,
    candidates: Vec<Candidate>,
) -> Vec<(Candidate, Result<PolicyModule, LoadError>)> {
    if candidates.len() <= 1 {
        return candidates
            .into_iter()
            .map(|c| {
                let result = runtime.load(&c.name, &c.bytes);
                (c, result)
            })
            .collect();
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(candidates.len());
    let chunk = candidates.len().div_ceil(threads);
    let mut parts: Vec<Vec<Candidate>> = Vec::new();
    let mut rest = candidates.into_iter().peekable();
    while rest.peek().is_some() {
        parts.push(rest.by_ref().take(chunk).collect());
    }
    let load_part = |part: Vec<Candidate>| {
        part.into_iter()
            .map(|c| {
                let result = runtime.load(&c.name, &c.bytes);
                (c, result)
            })
            .collect::<Vec<_>>()
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| {
                // describe() runs the policy: on a stack with room for it.
                std::thread::Builder::new()
                    .stack_size(crate::runtime::THREAD_STACK)
                    .spawn_scoped(s, move || load_part(part))
                    .expect("a module loader thread starts")
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RuntimeLimits;

    #[test]
    fn missing_dir_is_named() {
        let rt = Runtime::new(RuntimeLimits::default()).unwrap();
        let err = Registry::load_dir(rt, Path::new("/no/such/policies")).unwrap_err();
        assert_eq!(err.kind(), "missing_dir");
        assert!(err.to_string().contains("/no/such/policies"), "{err}");
    }

    #[test]
    fn bad_files_fail_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("junk.wasm"), b"not wasm").unwrap();
        std::fs::write(dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
        std::fs::create_dir(dir.path().join("folder.wasm")).unwrap();
        std::fs::write(dir.path().join(".tmp-upload.wasm"), b"half a module").unwrap();
        let rt = Runtime::new(RuntimeLimits::default()).unwrap();
        let reg = Registry::load_dir(rt, dir.path()).unwrap();
        let snap = reg.snapshot();
        assert!(snap.modules.is_empty());
        assert_eq!(
            snap.failures.keys().collect::<Vec<_>>(),
            ["core", "folder", "junk"],
            "txt files and hidden ones are not modules"
        );
        let folder = &snap.failures["folder"].error;
        assert!(
            folder.contains("folder.wasm") && folder.contains("directory"),
            "a folder named like a module says what it is: {folder}"
        );
        assert_eq!(snap.failures["junk"].kind, "not_a_component");
        assert!(snap.failures["junk"].digest.is_some());
        assert!(reg.get("junk").is_none());
        assert_eq!(reg.known().len(), 3, "failed files are known too");
    }

    #[test]
    fn reload_of_unchanged_bytes_swaps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("junk.wasm"), b"not wasm").unwrap();
        let rt = Runtime::new(RuntimeLimits::default()).unwrap();
        let reg = Registry::load_dir(rt, dir.path()).unwrap();
        let first = reg.snapshot().failures["junk"].clone();
        // Rewritten with the same bytes: not retried, not re-reported.
        std::fs::write(dir.path().join("junk.wasm"), b"not wasm").unwrap();
        let report = reg.reload(&["junk".into()], &[]);
        assert!(!report.changed_anything(), "{report:?}");
        assert_eq!(report.generation, 0);
        assert_eq!(reg.snapshot().failures["junk"], first);
        assert_eq!(reg.snapshot().generation, 0);
        // Other bytes: a new failure, a new generation.
        std::fs::write(dir.path().join("junk.wasm"), b"still not wasm").unwrap();
        let report = reg.reload(&["junk".into()], &[]);
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.generation, 1);
        // Deleted: the failure goes, nothing was serving.
        std::fs::remove_file(dir.path().join("junk.wasm")).unwrap();
        let report = reg.reload(&[], &["junk".into()]);
        assert_eq!(report.generation, 2, "the failure's removal is a change");
        let snap = reg.snapshot();
        assert!(snap.failures.is_empty() && snap.removed.is_empty());
        assert!(reg.known().is_empty());
    }
}
