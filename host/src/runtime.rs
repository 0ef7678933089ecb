//! The sandboxed policy runtime.
//!
//! One wasmtime [`Engine`] per [`Runtime`]; each module is compiled once and
//! pre-instantiated once ([`PolicyModule`]); every evaluation gets a fresh
//! `Store` with a memory limit, a stack limit, an epoch deadline (one ticker
//! thread per runtime) and optional fuel. The guest gets the logger import and
//! an empty WASI: no files, environment, arguments or network; clocks stopped
//! at the context's `now_ms`; randomness from a fixed seed; stdout and stderr
//! captured into the host log. So the same context always gives the same
//! decision, and a trap, timeout, out-of-memory or invalid answer is an
//! [`EvalError`] for that call only.

mod bindings;
mod cache;
mod compiler;
mod errors;
mod host;
mod precompiled;
mod replay;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    WasmBacktrace,
};

use crate::config::RuntimeLimits;
use crate::journal::Evaluation;
use crate::policy::{Context, Decision, PolicyInfo};

use bindings::{EVALUATOR_INTERFACE, Policy, PolicyPre};
use cache::ModuleCache;
pub use host::EvalUsage;
use host::{HostState, MemoryLimitExceeded};

pub use bindings::WIT_VERSION;
pub use cache::CacheError;
pub use compiler::{COMPILE_TIMEOUT, Compiler, WORKER_COMMAND, worker as compile_worker};
pub use errors::{EvalError, EvalErrorKind, LoadError, RuntimeError};
pub use host::{POLICY_LOG_TARGET, json_safe, log_safe};
pub use replay::{ReplayOutcome, eval_against_record, outcome_of};
pub use validate::check_parameter_value;

/// How often the engine's epoch advances; deadlines are whole ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Evaluations that can run at the same time per runtime (the pooling
/// allocator's slots). One more fails with `instantiate` until one ends.
pub const MAX_CONCURRENT_EVALUATIONS: u32 = 256;

/// Longest error message kept from one failed evaluation.
const MAX_ERROR_MESSAGE_BYTES: usize = 8 * 1024;

/// Runs policy modules. Cheap to clone; all clones share one engine.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<HostState>,
    limits: RuntimeLimits,
    /// `limits` as journal records carry them ([`Evaluation::recorded_limits`]),
    /// worked out once rather than on every evaluation.
    recorded_limits: Option<Arc<RuntimeLimits>>,
    /// Epoch ticks an evaluation may run (its deadline).
    deadline_ticks: u64,
    pooling: bool,
    /// Compiled code on disk, when `limits.cache_dir` is set and usable.
    cache: Option<ModuleCache>,
    /// Where modules not in the cache are compiled.
    compiler: Compiler,
    _ticker: EpochTicker,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("limits", &self.inner.limits)
            .field("pooling", &self.inner.pooling)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Builds the engine for `limits` and starts its epoch ticker. With
    /// `limits.cache_dir` set, compiled code is cached there; a cache folder
    /// that cannot be used is logged and the runtime compiles every time.
    /// Modules are compiled in this process.
    pub fn new(limits: RuntimeLimits) -> Result<Runtime, RuntimeError> {
        Runtime::with_compiler(limits, Compiler::InProcess)
    }

    /// [`Runtime::new`], compiling modules where `compiler` says (the
    /// daemon compiles in a child process; see [`Compiler`]).
    pub fn with_compiler(
        limits: RuntimeLimits,
        compiler: Compiler,
    ) -> Result<Runtime, RuntimeError> {
        check_limits(&limits)?;
        let (engine, pooling) = match Engine::new(&engine_config(&limits, true)) {
            Ok(engine) => (engine, true),
            Err(err) => {
                // The pool reserves address space up front; where that is
                // refused (e.g. a ulimit on virtual memory), allocate per
                // instance instead: slower, same behaviour.
                tracing::warn!(
                    error = %format!("{err:#}"),
                    "The pooling allocator could not be set up; policies get memory on demand instead."
                );
                let engine = Engine::new(&engine_config(&limits, false))
                    .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
                (engine, false)
            }
        };
        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let deadline_ticks = limits.timeout.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64 + 1;
        let cache = limits.cache_dir.as_deref().and_then(|dir| {
            ModuleCache::open(dir, &engine)
                .inspect(|cache| {
                    tracing::debug!(dir = %cache.dir().display(), "Compiled policy code is cached on disk.");
                })
                .map_err(|err| {
                    tracing::warn!(
                        kind = err.kind(),
                        error = %err,
                        "The module cache cannot be used; every policy module will be compiled."
                    );
                })
                .ok()
        });
        let ticker = EpochTicker::start(engine.clone());
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                recorded_limits: Evaluation::recorded_limits(&limits),
                limits,
                deadline_ticks,
                pooling,
                cache,
                compiler,
                _ticker: ticker,
            }),
        })
    }

    /// The folder this runtime's compiled code is cached in (its engine's
    /// folder under `cache_dir`), if caching is on.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.inner.cache.as_ref().map(|c| c.dir())
    }

    /// The limits every evaluation runs under.
    pub fn limits(&self) -> &RuntimeLimits {
        &self.inner.limits
    }

    /// Remembers `text` as why the module version with sha256 `digest` was
    /// refused, in the code cache's folder: the file's path, `None` when
    /// nothing is cached (no `cache_dir`, or one refused as unsafe).
    pub(crate) fn remember_refusal(
        &self,
        digest: &str,
        text: &str,
    ) -> Option<Result<PathBuf, String>> {
        let cache = self.inner.cache.as_ref()?;
        Some(
            cache
                .refuse(digest, text)
                .map(|()| cache.refusal_path(digest))
                .map_err(|e| e.to_string()),
        )
    }

    /// A refusal of `digest` remembered by [`remember_refusal`](Self::remember_refusal):
    /// its file and its text.
    pub(crate) fn remembered_refusal(&self, digest: &str) -> Option<(PathBuf, String)> {
        let cache = self.inner.cache.as_ref()?;
        Some((cache.refusal_path(digest), cache.refusal(digest)?))
    }

    /// Forgets a refusal of `digest`, if one is remembered.
    pub(crate) fn forget_refusal(&self, digest: &str) -> Option<Result<(), String>> {
        let cache = self.inner.cache.as_ref()?;
        Some(
            cache
                .forget_refusal(digest)
                .map_err(|e| format!("{}: {e}", cache.refusal_path(digest).display())),
        )
    }

    /// The wasmtime engine (for precompiling or caching code).
    pub fn engine(&self) -> &wasmtime::Engine {
        &self.inner.engine
    }

    /// Whether instances come from the pooling allocator (fast) rather than
    /// on-demand allocation (the fallback when the pool cannot be reserved).
    pub fn is_pooling(&self) -> bool {
        self.inner.pooling
    }

    /// Compiles `bytes` as the module `name` (or takes its compiled code
    /// from the cache), checks it against the `scalewise:policy@0.1.0`
    /// world, pre-instantiates it and calls its `describe()`.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<PolicyModule, LoadError> {
        let started = Instant::now();
        check_header(bytes)?;
        let digest = hex::encode(Sha256::digest(bytes));
        let inner = &self.inner;
        let (component, origin) = self.component(name, &digest, bytes)?;
        check_exports(&inner.engine, &component)?;
        let pre = inner.linker.instantiate_pre(&component).map_err(|e| {
            LoadError::UnsupportedImports {
                imports: unsupported_imports(&inner.engine, &component),
                message: format!("{e:#}"),
            }
        })?;
        let pre = PolicyPre::new(pre).map_err(|e| LoadError::BadExport(format!("{e:#}")))?;
        let name: Arc<str> = name.into();
        let info = run(inner, &pre, &name, "", 0, |policy, store| {
            policy
                .scalewise_policy_evaluator()
                .call_describe(store)
                .map(Ok)
        })
        .0
        .map_err(|e| LoadError::DescribeFailed {
            kind: e.kind,
            message: e.message,
        })?;
        let info = bindings::info_from_guest(info).map_err(LoadError::InvalidInfo)?;
        validate::validate_info(&info).map_err(LoadError::InvalidInfo)?;
        let load_time = started.elapsed();
        tracing::debug!(
            module = %name,
            policy = %info.name,
            version = %info.version,
            digest = %digest,
            origin = origin.as_str(),
            load_ms = load_time.as_secs_f64() * 1e3,
            "Loaded a policy module."
        );
        Ok(PolicyModule {
            inner: Arc::new(ModuleInner {
                name,
                digest: digest.into(),
                info,
                pre,
                origin,
                load_time,
                runtime: Arc::clone(inner),
                samples: OnceLock::new(),
            }),
        })
    }

    /// The compiled component for `bytes` (sha256 `digest`): from the cache
    /// when it holds a usable copy, else compiled (and cached).
    fn component(
        &self,
        name: &str,
        digest: &str,
        bytes: &[u8],
    ) -> Result<(Component, CodeOrigin), LoadError> {
        let inner = &self.inner;
        if let Some(cache) = &inner.cache {
            match cache.get(&inner.engine, digest) {
                Ok(Some(component)) => return Ok((component, CodeOrigin::Cache)),
                Ok(None) => {}
                Err(err) => tracing::warn!(
                    module = %name,
                    kind = err.kind(),
                    error = %err,
                    "The cached code of a policy module could not be used; compiling it again."
                ),
            }
        }
        let (component, artifact) = self.compile(name, bytes)?;
        if let Some(cache) = &inner.cache
            && let Err(err) = cache.put(digest, &artifact)
        {
            tracing::warn!(
                module = %name,
                kind = err.kind(),
                error = %err,
                "Could not cache the compiled code of a policy module."
            );
        }
        Ok((component, CodeOrigin::Compiled))
    }

    /// Compiles `bytes` where the runtime's [`Compiler`] says: the component
    /// and its artifact (for the cache).
    fn compile(&self, name: &str, bytes: &[u8]) -> Result<(Component, Vec<u8>), LoadError> {
        let inner = &self.inner;
        if let Compiler::Process { program, timeout } = &inner.compiler {
            match compiler::compile_in_child(program, *timeout, &inner.limits, bytes) {
                // Refused code means the program is not this build (say, the
                // binary was upgraded on disk while the daemon runs): the
                // module is not at fault, so it is compiled here instead.
                compiler::ChildOutcome::Code(file) => {
                    match precompiled::decode(&inner.engine, &file) {
                        Ok(component) => {
                            tracing::debug!(
                                module = %name,
                                program = %program.display(),
                                "Compiled a policy module in a child process."
                            );
                            return Ok((component, precompiled::artifact_of(&file).to_vec()));
                        }
                        // The module's own fault, not the build's: the
                        // instance pool's limits refuse it (a memory that
                        // starts above max_memory, too many tables...), as
                        // they would refuse the code compiled here, so it is
                        // refused without compiling in the daemon's process.
                        Err(precompiled::DecodeError::Refused(why))
                            if why.contains("exceed")
                                || why.contains("more than the memory limit") =>
                        {
                            return Err(LoadError::Compile(why));
                        }
                        Err(err) => tracing::warn!(
                            module = %name,
                            program = %program.display(),
                            kind = err.kind(),
                            error = %err,
                            "The compiler process's code cannot be used; compiling the policy module in the daemon's process."
                        ),
                    }
                }
                compiler::ChildOutcome::Failed(message) => {
                    return Err(LoadError::Compile(message));
                }
                compiler::ChildOutcome::Unavailable(why) => tracing::warn!(
                    module = %name,
                    error = %why,
                    "No compiler process; compiling the policy module in the daemon's process."
                ),
            }
        }
        precompiled::compile(&inner.engine, &engine_config(&inner.limits, false), bytes)
            .map_err(LoadError::Compile)
    }

    /// Reads and loads a module file; its name is the file's stem.
    pub fn load_file(&self, path: &Path) -> Result<PolicyModule, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.load(&name, &bytes)
    }
}

/// Where a loaded module's machine code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodeOrigin {
    /// Compiled from the `.wasm` at load.
    Compiled,
    /// Deserialized from the on-disk cache (no compilation).
    Cache,
}

impl CodeOrigin {
    /// The fixed label (`compiled` or `cache`), for metrics and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            CodeOrigin::Compiled => "compiled",
            CodeOrigin::Cache => "cache",
        }
    }
}

/// A loaded policy module, ready to evaluate. Cheap to clone.
#[derive(Clone)]
pub struct PolicyModule {
    inner: Arc<ModuleInner>,
}

struct ModuleInner {
    name: Arc<str>,
    digest: Arc<str>,
    info: PolicyInfo,
    pre: PolicyPre<HostState>,
    origin: CodeOrigin,
    load_time: Duration,
    /// Keeps the engine and its epoch ticker alive as long as the module.
    runtime: Arc<RuntimeInner>,
    /// Where the contexts this version decides are offered
    /// ([`PolicyModule::offer_sample`]); set by the registry, shared by
    /// every version of the module.
    samples: OnceLock<Arc<Samples>>,
}

/// Contexts the versions of one module decided, from up to
/// [`Samples::KEPT`] scalers, each renewed at most every
/// [`Samples::RENEW_MS`] of host time (a context with the policy's state
/// replaces one without at once): what a new version is tried on before it
/// may replace the one serving. When all places are taken, a context whose
/// replica count lies outside the kept ones' range takes the oldest place
/// at once (failures that come with load are tried), others take it once it
/// is stale, so the kept scalers rotate through a fleet. Contexts far older
/// than the newest (a scaler since removed) are not tried. Shared by the
/// module's versions and kept when its file is deleted, so quick successive
/// deploys and a restored file are tried too.
#[derive(Debug, Default)]
pub struct Samples {
    kept: Mutex<Vec<Arc<Context>>>,
}

impl Samples {
    /// Scalers whose contexts are kept.
    pub const KEPT: usize = 8;
    /// How often a scaler's kept context is renewed (host time).
    pub const RENEW_MS: i64 = 10_000;
    /// Contexts this much older than the newest are not tried.
    pub const STALE_MS: i64 = 300_000;

    /// Offers a context a version of the module just decided, its
    /// parameters as configured (`configured`: a version tried on it gets
    /// its own defaults filled in, not those of the version that decided).
    pub fn offer(&self, ctx: &Context, configured: &serde_json::Value) {
        let keep = || {
            let mut ctx = ctx.clone();
            ctx.parameters = configured.clone();
            Arc::new(ctx)
        };
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let renew = |old: &Context| {
            ctx.now_ms.saturating_sub(old.now_ms) >= Self::RENEW_MS
                || (old.state.is_none() && ctx.state.is_some())
        };
        let slot = match kept.iter().position(|c| c.scaler == ctx.scaler) {
            Some(i) => renew(&kept[i]).then_some(i),
            None if kept.len() < Self::KEPT => {
                kept.push(keep());
                None
            }
            None => {
                let current = ctx.target.current;
                let (low, high) = kept.iter().fold((u32::MAX, 0), |(low, high), c| {
                    (low.min(c.target.current), high.max(c.target.current))
                });
                let oldest = kept
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, c)| c.now_ms)
                    .map(|(i, _)| i);
                oldest.filter(|&i| current < low || current > high || renew(&kept[i]))
            }
        };
        if let Some(i) = slot {
            kept[i] = keep();
        }
    }

    /// The kept contexts, less those [`STALE_MS`](Self::STALE_MS) older than
    /// the newest.
    pub fn contexts(&self) -> Vec<Arc<Context>> {
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let newest = kept.iter().map(|c| c.now_ms).max().unwrap_or(0);
        kept.iter()
            .filter(|c| newest.saturating_sub(c.now_ms) < Self::STALE_MS)
            .cloned()
            .collect()
    }
}

impl fmt::Debug for PolicyModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyModule")
            .field("name", &self.inner.name)
            .field("digest", &self.inner.digest)
            .field("info", &self.inner.info)
            .field("origin", &self.inner.origin)
            .finish_non_exhaustive()
    }
}

impl PolicyModule {
    /// Offers `ctx`, a context this version just decided, to its module's
    /// [`Samples`] (nothing when it has none: a module outside a registry).
    pub fn offer_sample(&self, ctx: &Context, configured: &serde_json::Value) {
        if let Some(samples) = self.inner.samples.get() {
            samples.offer(ctx, configured);
        }
    }

    /// Gives this version the [`Samples`] its module's versions share;
    /// the first call wins.
    pub fn share_samples(&self, samples: Arc<Samples>) {
        let _ = self.inner.samples.set(samples);
    }

    /// The module's name (its file stem in the policy folder).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// sha256 of the module's bytes, lowercase hex.
    pub fn digest(&self) -> &str {
        &self.inner.digest
    }

    /// [`PolicyModule::digest`], shared: what every journal record and
    /// scaler status of this module holds.
    pub fn shared_digest(&self) -> Arc<str> {
        Arc::clone(&self.inner.digest)
    }

    /// What the policy said about itself at load.
    pub fn info(&self) -> &PolicyInfo {
        &self.inner.info
    }

    /// Whether its code was compiled at load or came from the cache.
    pub fn origin(&self) -> CodeOrigin {
        self.inner.origin
    }

    /// How long loading took (compile or deserialize, checks, describe()).
    pub fn load_time(&self) -> Duration {
        self.inner.load_time
    }

    /// The limits its evaluations run under.
    pub fn limits(&self) -> &RuntimeLimits {
        &self.inner.runtime.limits
    }

    /// [`PolicyModule::limits`] as a journal record carries them: `None`
    /// for the defaults.
    pub fn recorded_limits(&self) -> Option<Arc<RuntimeLimits>> {
        self.inner.runtime.recorded_limits.clone()
    }

    /// Instantiates the module in a fresh store, as every evaluation does,
    /// without calling it: the per-evaluation setup cost alone (benchmarks,
    /// health checks).
    pub fn instantiate_check(&self) -> Result<(), EvalError> {
        let m = &self.inner;
        run(&m.runtime, &m.pre, &m.name, "", 0, |_, _| Ok(Ok(()))).0
    }

    /// Asks the policy for a decision. Synchronous and CPU-bound (bounded by
    /// the runtime's timeout): call it from a blocking thread
    /// (`tokio::task::spawn_blocking`), never inside an async task, where
    /// WASI's blocking host calls would panic.
    pub fn evaluate(&self, ctx: &Context) -> Result<Decision, EvalError> {
        self.evaluate_with_usage(ctx).0
    }

    /// [`evaluate`](Self::evaluate), also telling how much memory (and, with
    /// fuel metering on, fuel) the call used: for `scalewise eval --usage`,
    /// the host's `policy_memory_*` metrics, and the test that keeps the
    /// bundled policies from growing their memory.
    pub fn evaluate_with_usage(&self, ctx: &Context) -> (Result<Decision, EvalError>, EvalUsage) {
        let guest_ctx = match bindings::context_to_guest(ctx) {
            Ok(c) => c,
            Err(e) => return (Err(e), EvalUsage::default()),
        };
        let m = &self.inner;
        let (answer, usage) = run(
            &m.runtime,
            &m.pre,
            &m.name,
            &ctx.scaler,
            ctx.now_ms,
            |policy, store| {
                policy
                    .scalewise_policy_evaluator()
                    .call_evaluate(store, &guest_ctx)
            },
        );
        let decision = answer.and_then(|decision| {
            let decision = bindings::decision_from_guest(decision);
            validate::validate_decision(&decision, &m.runtime.limits)
                .map_err(|e| EvalError::new(EvalErrorKind::InvalidDecision, e))?;
            Ok(decision)
        });
        (decision, usage)
    }
}

/// How much of a failed call's stderr its error keeps: the end, where a
/// panic's message is, leaving room for the summary and the backtrace
/// within the error's bound.
const MAX_STDERR_IN_ERROR: usize = 4 * 1024;

/// One call into a fresh instance of `pre`: a new Store with the runtime's
/// limits, the call, then the guest's output flushed to the log (or, when
/// the call fails, into its error). Also what the instance used (memory;
/// fuel when metered). `call`'s inner `Err` is the policy's own refusal.
fn run<R>(
    rt: &RuntimeInner,
    pre: &PolicyPre<HostState>,
    module: &Arc<str>,
    scaler: &str,
    now_ms: i64,
    call: impl FnOnce(&Policy, &mut Store<HostState>) -> wasmtime::Result<Result<R, String>>,
) -> (Result<R, EvalError>, EvalUsage) {
    let limits = &rt.limits;
    let state = HostState::new(
        Arc::clone(module),
        scaler,
        now_ms,
        limits.max_memory.as_u64() as usize,
    );
    let mut store = Store::new(&rt.engine, state);
    store.limiter(|s| &mut s.limiter);
    // What one call may hand the host (an answer, a log message), copied
    // into host memory outside the guest's limits: a list of strings that
    // all point at one large string would otherwise be copied once each.
    store.set_hostcall_fuel(hostcall_budget(limits));
    store.set_epoch_deadline(rt.deadline_ticks);
    if limits.fuel > 0
        && let Err(e) = store.set_fuel(limits.fuel)
    {
        let err = EvalError::new(EvalErrorKind::Instantiate, format!("{e:#}"));
        return (Err(err), EvalUsage::default());
    }
    let result = match pre.instantiate(&mut store) {
        Ok(policy) => call(&policy, &mut store).map_err(|e| classify(&e, false, &store, limits)),
        Err(e) => Err(classify(&e, true, &store, limits)),
    };
    let result = result.and_then(|answer| {
        answer.map_err(|message| {
            EvalError::new(
                EvalErrorKind::PolicyError,
                host::truncate(&message, MAX_ERROR_MESSAGE_BYTES),
            )
        })
    });
    let stderr = store.data_mut().finish(result.is_err());
    let mut usage = store.data().limiter.usage;
    if limits.fuel > 0 {
        usage.fuel_consumed = store.get_fuel().ok().map(|left| limits.fuel - left);
    }
    let result = result.map_err(|mut err| {
        if !stderr.is_empty() {
            // What the policy said (a panic's message, say) right after the
            // summary, before wasmtime's detail. A policy's own error is
            // its first line as it returned it.
            let stderr = host::tail(stderr.trim(), MAX_STDERR_IN_ERROR);
            err.message = if err.kind == EvalErrorKind::PolicyError {
                format!("{}\npolicy stderr:\n{stderr}", err.message)
            } else {
                let (summary, detail) = err.message.split_once('\n').unwrap_or((&err.message, ""));
                format!("{summary}\npolicy stderr:\n{stderr}\n{detail}")
                    .trim_end()
                    .to_owned()
            };
        }
        err.message = host::truncate(&err.message, MAX_ERROR_MESSAGE_BYTES).into_owned();
        err
    });
    (result, usage)
}

/// The most bytes one call may copy out of the guest into the host (its
/// answer, or what it passes one host function): room for the largest
/// decision the limits allow, and 4 MiB besides.
pub(crate) fn hostcall_budget(limits: &RuntimeLimits) -> usize {
    // Saturating: limits read from a record (`eval --context`) are not
    // the config's, checked at load.
    (4usize << 20)
        .saturating_add(usize::try_from(limits.max_state_bytes.as_u64()).unwrap_or(usize::MAX))
        .saturating_add(limits.max_reason_bytes)
}

/// Maps a wasmtime error to an [`EvalErrorKind`], keeping wasmtime's full
/// text (the trap, its cause and the guest backtrace).
fn classify(
    err: &wasmtime::Error,
    instantiating: bool,
    store: &Store<HostState>,
    limits: &RuntimeLimits,
) -> EvalError {
    let (kind, summary) = if let Some(m) = err.downcast_ref::<MemoryLimitExceeded>() {
        (EvalErrorKind::OutOfMemory, m.to_string())
    } else if let Some(trap) = err.downcast_ref::<Trap>() {
        match trap {
            Trap::Interrupt => (
                EvalErrorKind::Timeout,
                format!(
                    "the policy ran past its {} deadline (runtime.timeout)",
                    humantime::format_duration(limits.timeout)
                ),
            ),
            Trap::OutOfFuel => (
                EvalErrorKind::OutOfFuel,
                format!(
                    "the policy used all of its {} fuel (runtime.fuel)",
                    limits.fuel
                ),
            ),
            Trap::StackOverflow => (
                EvalErrorKind::StackOverflow,
                format!(
                    "the policy exhausted its {} Wasm stack (runtime.max_wasm_stack)",
                    limits.max_wasm_stack
                ),
            ),
            other => (EvalErrorKind::Trap, format!("the policy trapped: {other}")),
        }
    } else if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
        (
            EvalErrorKind::Trap,
            // WASI 0.2's exit carries success or failure, not the code the
            // guest passed (1 stands for every failure).
            if exit.0 == 0 {
                "the policy called exit with a success status instead of returning a decision"
                    .to_string()
            } else {
                "the policy called exit with a failure status instead of returning a decision"
                    .to_string()
            },
        )
    } else if let Some(desired) = store.data().limiter.denied {
        (
            EvalErrorKind::OutOfMemory,
            format!("the policy's memory growth to {desired} bytes was refused"),
        )
    } else if format!("{err:#}").contains("fuel allocated for hostcalls") {
        (
            EvalErrorKind::InvalidDecision,
            format!(
                "the policy handed the host more than {} in one call (an answer or a log \
                 message); the host copies at most that",
                bytesize::ByteSize::b(hostcall_budget(limits) as u64)
            ),
        )
    } else if instantiating {
        (
            EvalErrorKind::Instantiate,
            "the module could not be instantiated".to_string(),
        )
    } else {
        (EvalErrorKind::Trap, "the call failed".to_string())
    };
    let detail = error_detail(err, &summary);
    EvalError::new(kind, format!("{summary}\n{detail}"))
}

/// What wasmtime says about `err` beyond `summary`. With a guest backtrace:
/// the causes the summary does not already say, then the backtrace; a
/// module without function names (a stripped build) has its frames as code
/// offsets on one line rather than a line of `<unknown>` each.
fn error_detail(err: &wasmtime::Error, summary: &str) -> String {
    const BACKTRACE: &str = "error while executing at wasm backtrace";
    let Some(backtrace) = err.downcast_ref::<WasmBacktrace>() else {
        return format!("{err:?}");
    };
    let mut lines: Vec<String> = err
        .chain()
        .map(ToString::to_string)
        .filter(|cause| !cause.starts_with(BACKTRACE) && !summary.contains(cause.as_str()))
        .collect();
    let frames = backtrace.frames();
    if frames.iter().all(|frame| frame.func_name().is_none()) {
        let offsets = frames.iter().map(|frame| match frame.module_offset() {
            Some(offset) => format!("{offset:#x}"),
            // The frame a stack overflow stopped on entering, say.
            None => format!("function {} (no offset)", frame.func_index()),
        });
        lines.push(format!(
            "wasm backtrace, innermost first ({} frames; the module has no function names, so \
             code offsets): {}",
            frames.len(),
            collapse_repeats(offsets)
        ));
    } else {
        lines.push(backtrace.to_string());
    }
    lines.join("\n")
}

/// `items` joined by ", ", a run of equal ones written once with its count
/// (`0x42ac ×19`, a recursion's frames).
fn collapse_repeats(items: impl IntoIterator<Item = String>) -> String {
    let mut runs: Vec<(String, usize)> = Vec::new();
    for item in items {
        match runs.last_mut() {
            Some((last, count)) if *last == item => *count += 1,
            _ => runs.push((item, 1)),
        }
    }
    runs.iter()
        .map(|(item, count)| match count {
            1 => item.clone(),
            n => format!("{item} ×{n}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses bytes that are not a Wasm component before compiling, with a hint.
fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    const MAGIC: &[u8; 4] = b"\0asm";
    match bytes.get(..8) {
        Some(h) if &h[..4] == MAGIC => match &h[4..8] {
            // Version 1, layer 0: a core module.
            [1, 0, 0, 0] => Err(LoadError::NotAComponent(
                "this is a core Wasm module; build the policy for wasm32-wasip2 \
                 (or wrap it with `wasm-tools component new`)"
                    .into(),
            )),
            _ => Ok(()),
        },
        _ => Err(LoadError::NotAComponent(format!(
            "the file does not start with the Wasm magic bytes ({} bytes long)",
            bytes.len()
        ))),
    }
}

/// Checks that the component exports our evaluator at our version, naming
/// the version it does export otherwise.
fn check_exports(engine: &Engine, component: &Component) -> Result<(), LoadError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let wanted = format!("{EVALUATOR_INTERFACE}@{WIT_VERSION}");
    if exports.contains(&wanted) {
        return Ok(());
    }
    let prefix = format!("{EVALUATOR_INTERFACE}@");
    let found: Vec<String> = exports
        .iter()
        .filter_map(|n| n.strip_prefix(&prefix))
        .map(str::to_string)
        .collect();
    if found.is_empty() {
        Err(LoadError::MissingExport {
            exports,
            expected: WIT_VERSION,
        })
    } else {
        Err(LoadError::WrongWitVersion {
            found,
            expected: WIT_VERSION,
        })
    }
}

/// The component's imports that the host does not give policies: anything
/// but `scalewise:policy` at our version and WASI 0.2.
fn unsupported_imports(engine: &Engine, component: &Component) -> Vec<String> {
    component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name)
        .filter(|name| !host_provides(name))
        .map(str::to_string)
        .collect()
}

fn host_provides(import: &str) -> bool {
    let Some((interface, version)) = import.split_once('@') else {
        return false;
    };
    if let Some(ours) = interface.strip_prefix("scalewise:policy/") {
        return version == WIT_VERSION && matches!(ours, "log" | "types");
    }
    const WASI: [&str; 6] = [
        "wasi:io/",
        "wasi:clocks/",
        "wasi:random/",
        "wasi:cli/",
        "wasi:filesystem/",
        "wasi:sockets/",
    ];
    version.starts_with("0.2.") && WASI.iter().any(|p| interface.starts_with(p))
}

/// The largest `max_wasm_stack`. Calls are synchronous: a policy runs on
/// the stack of the thread that calls it, below what that thread has used
/// already, and the host functions it calls run below it. A Wasm stack as
/// large as the thread's would run into the guard page, where a recursing
/// guest aborts the process instead of trapping; the threads that evaluate
/// get [`THREAD_STACK`], well above this.
pub const MAX_WASM_STACK: u64 = 1024 * 1024;

/// The stack of every thread the daemon evaluates policies on (the async
/// runtime's workers and blocking threads, the loader's threads): the
/// largest Wasm stack and room for the host's frames above and below it.
/// Address space only: pages are used as they are touched.
pub const THREAD_STACK: usize = 4 * 1024 * 1024;

fn check_limits(limits: &RuntimeLimits) -> Result<(), RuntimeError> {
    let problem = if limits.timeout.is_zero() {
        Some("timeout must be above zero")
    } else if limits.max_memory.as_u64() < 64 * 1024 {
        Some("max_memory must be at least one Wasm page (64 KiB)")
    } else if limits.max_memory.as_u64() > 4 * 1024 * 1024 * 1024 {
        Some("max_memory must be at most 4 GiB (a 32-bit Wasm memory)")
    } else if limits.max_wasm_stack.as_u64() < 16 * 1024 {
        Some("max_wasm_stack must be at least 16 KiB")
    } else if limits.max_wasm_stack.as_u64() > MAX_WASM_STACK {
        Some("max_wasm_stack must be at most 1 MiB (it shares the stack of the thread it runs on)")
    } else {
        None
    };
    match problem {
        Some(p) => Err(RuntimeError::Limits(p.into())),
        None => Ok(()),
    }
}

fn engine_config(limits: &RuntimeLimits, pooling: bool) -> Config {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .consume_fuel(limits.fuel > 0)
        // Relaxed SIMD answers as on every machine, and a float operation
        // that makes a NaN makes the one NaN (x86 sets its sign bit, ARM
        // does not): the same context gives the same decision bytes on
        // another CPU too (a replay elsewhere).
        .relaxed_simd_deterministic(true)
        .cranelift_nan_canonicalization(true)
        .max_wasm_stack(limits.max_wasm_stack.as_u64() as usize);
    if pooling {
        let max_memory = limits.max_memory.as_u64() as usize;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(MAX_CONCURRENT_EVALUATIONS)
            .total_core_instances(MAX_CONCURRENT_EVALUATIONS * 8)
            .total_memories(MAX_CONCURRENT_EVALUATIONS)
            .total_tables(MAX_CONCURRENT_EVALUATIONS * 4)
            .max_memories_per_component(4)
            .max_memory_size(max_memory);
        // A reused slot is reset either by copying back the pages the last
        // evaluation dirtied (found with PAGEMAP_SCAN, Linux 6.7+) or by
        // madvise, after which the next evaluation page-faults every page it
        // touches again. Measured on bench-hpa: 30 µs per evaluation with the
        // scan, 53 µs without (keeping 256 KiB resident), 57 µs keeping none.
        if PoolingAllocationConfig::is_pagemap_scan_available() {
            pool.pagemap_scan(Enabled::Yes)
                // Bounds what each idle slot keeps resident (a policy
                // touches a MiB or two).
                .linear_memory_keep_resident(max_memory.min(4 << 20))
                .table_keep_resident(1 << 20);
        } else {
            // Without the scan the first bytes are reset blindly; keep that small.
            pool.linear_memory_keep_resident(256 << 10)
                .table_keep_resident(64 << 10);
        }
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("scalewise-epoch".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(EPOCH_TICK) {
                    engine.increment_epoch();
                }
            })
            .ok();
        if thread.is_none() {
            tracing::error!(
                "The epoch ticker thread could not start; policy timeouts will not fire."
            );
        }
        EpochTicker {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread at once.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_frames_are_written_once_with_their_count() {
        let frames = [
            "function 40 (no offset)",
            "0x42ac",
            "0x42ac",
            "0x42ac",
            "0x10",
            "0x42ac",
        ];
        assert_eq!(
            collapse_repeats(frames.map(String::from)),
            "function 40 (no offset), 0x42ac ×3, 0x10, 0x42ac"
        );
        assert_eq!(collapse_repeats(Vec::new()), "");
    }

    #[test]
    fn the_hostcall_budget_of_extreme_limits_does_not_overflow() {
        let limits = RuntimeLimits {
            max_reason_bytes: usize::MAX,
            max_state_bytes: bytesize::ByteSize::b(u64::MAX),
            ..RuntimeLimits::default()
        };
        assert_eq!(hostcall_budget(&limits), usize::MAX);
        assert_eq!(
            hostcall_budget(&RuntimeLimits::default()),
            (4 << 20) + RuntimeLimits::default().max_state_bytes.as_u64() as usize + 1024
        );
    }

    #[test]
    fn header_checks() {
        let cases: [(&[u8], Option<&str>); 4] = [
            (b"\0asm\x0d\0\x01\0", None),
            (b"\0asm\x01\0\0\0", Some("core Wasm module")),
            (b"hello world", Some("magic bytes")),
            (b"", Some("0 bytes long")),
        ];
        for (bytes, want) in cases {
            match (check_header(bytes), want) {
                (Ok(()), None) => {}
                (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{e}"),
                (got, want) => panic!("{bytes:?}: {got:?} vs {want:?}"),
            }
        }
    }

    #[test]
    fn provided_imports() {
        let cases = [
            ("scalewise:policy/log@0.1.0", true),
            ("scalewise:policy/types@0.1.0", true),
            ("scalewise:policy/log@0.2.0", false),
            ("wasi:cli/environment@0.2.0", true),
            ("wasi:io/streams@0.2.6", true),
            ("wasi:http/outgoing-handler@0.2.0", false),
            ("wasi:cli/environment@0.3.0", false),
            ("my:own/thing", false),
        ];
        for (name, ok) in cases {
            assert_eq!(host_provides(name), ok, "{name}");
        }
    }

    #[test]
    fn limits_are_checked() {
        let bad = [
            RuntimeLimits {
                timeout: Duration::ZERO,
                ..RuntimeLimits::default()
            },
            RuntimeLimits {
                max_memory: bytesize::ByteSize::kib(1),
                ..RuntimeLimits::default()
            },
            RuntimeLimits {
                max_wasm_stack: bytesize::ByteSize::b(10),
                ..RuntimeLimits::default()
            },
        ];
        for limits in bad {
            let err = Runtime::new(limits).unwrap_err();
            assert_eq!(err.kind(), "limits");
        }
    }

    #[test]
    fn deadline_covers_the_timeout() {
        let rt = Runtime::new(RuntimeLimits::default()).unwrap();
        // 100 ms at 5 ms ticks: 20 ticks, plus one for the partial first tick.
        assert_eq!(rt.inner.deadline_ticks, 21);
    }

    fn ctx(scaler: &str, now_ms: i64, state: Option<&[u8]>) -> Context {
        Context {
            now_ms,
            scaler: scaler.into(),
            target: crate::policy::Target {
                kind: "simulator".into(),
                name: scaler.into(),
                current: 1,
                ready: 1,
                min: 1,
                max: 2,
            },
            metrics: vec![],
            events: vec![],
            parameters: serde_json::json!({}),
            state: state.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn samples_prefer_state_renew_per_scaler_and_rotate_through_a_fleet() {
        let samples = Samples::default();
        let kept = |s: &Samples| -> Vec<(String, i64, bool)> {
            s.contexts()
                .iter()
                .map(|c| (c.scaler.clone(), c.now_ms, c.state.is_some()))
                .collect()
        };
        samples.offer(&ctx("a", 1_000, None), &serde_json::json!({}));
        // A second later: too soon to renew, but it brings the state.
        samples.offer(&ctx("a", 2_000, Some(b"s")), &serde_json::json!({}));
        samples.offer(&ctx("a", 3_000, Some(b"t")), &serde_json::json!({}));
        assert_eq!(kept(&samples), [("a".into(), 2_000, true)]);
        samples.offer(
            &ctx("a", 2_000 + Samples::RENEW_MS, Some(b"u")),
            &serde_json::json!({}),
        );
        assert_eq!(kept(&samples), [("a".into(), 12_000, true)]);
        // Other scalers join up to KEPT, once their turn comes round.
        let mut now = 30_000;
        for i in 0..Samples::KEPT + 3 {
            now += Samples::RENEW_MS;
            samples.offer(&ctx(&format!("s{i}"), now, None), &serde_json::json!({}));
        }
        let scalers: Vec<String> = kept(&samples).into_iter().map(|k| k.0).collect();
        assert_eq!(scalers.len(), Samples::KEPT);
        assert!(
            !scalers.contains(&"a".to_string()),
            "the oldest made way: {scalers:?}"
        );
        assert!(
            scalers.contains(&format!("s{}", Samples::KEPT + 2)),
            "{scalers:?}"
        );
        // A scaler at a replica count none of the kept has gets in at once.
        let mut busy = ctx("busy", now + 1, None);
        busy.target.current = 40;
        samples.offer(&busy, &serde_json::json!({}));
        assert!(kept(&samples).iter().any(|k| k.0 == "busy"));
        // A scaler gone from the fleet stops being tried once its context
        // is far older than the rest.
        let later = now + 1 + Samples::STALE_MS;
        samples.offer(
            &ctx(&format!("s{}", Samples::KEPT + 2), later, None),
            &serde_json::json!({}),
        );
        let tried: Vec<String> = samples
            .contexts()
            .iter()
            .map(|c| c.scaler.clone())
            .collect();
        assert_eq!(
            tried,
            [format!("s{}", Samples::KEPT + 2)],
            "only the fresh one"
        );
    }

    /// A sample keeps the parameters as configured, not with the defaults
    /// of the version that decided it: a new version is tried with its
    /// own defaults filled in, as the daemon would hand them to it.
    #[test]
    fn samples_keep_the_parameters_as_configured() {
        let samples = Samples::default();
        let mut decided = ctx("a", 1_000, None);
        decided.parameters = serde_json::json!({ "metric": "cpu", "window": "5m" });
        samples.offer(&decided, &serde_json::json!({ "metric": "cpu" }));
        assert_eq!(
            samples.contexts()[0].parameters,
            serde_json::json!({ "metric": "cpu" })
        );
    }
}
