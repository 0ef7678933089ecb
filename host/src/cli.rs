//! The `scalewise` command line: `run`, and the policy author's tools
//! `check` and `eval` (`check --config` is the operator's).
//!
//! Commands write to the `out`/`err` writers they are given (so tests run
//! them in-process) and return the process exit code: 0 on success, 1 when a
//! module does not load, an evaluation fails or a replay does not match
//! (`replay` then exits 2 on an error, as `diff` does).

mod check_config;
mod journal;
mod pause;
mod pinned;
mod remote;
mod replay;
mod run;
mod simulate;
mod status;
mod trace;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::config::{ParamProblem, RuntimeLimits};
use crate::journal::{Evaluation, TickRecord};
use crate::policy::{Context, PolicyInfo};
use crate::runtime::{Compiler, PolicyModule, Runtime, eval_against_record, json_safe, log_safe};

/// Scalewise: an autoscaling daemon whose decision logic is sandboxed WebAssembly.
#[derive(Debug, Parser)]
#[command(name = "scalewise", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the daemon; with no config, runs the embedded demo.
    Run(RunArgs),
    /// Loads policy modules, checks them against the policy contract and
    /// prints what each says about itself; with `--config`, checks a config
    /// file as `run --config` would before starting, without starting.
    Check {
        /// Module files (`.wasm` components).
        #[arg(
            required_unless_present = "config",
            conflicts_with = "config",
            value_name = "MODULE"
        )]
        modules: Vec<PathBuf>,
        /// Check this config file instead: every problem with its line, its
        /// secrets, the policy folder's modules and each scaler's policies
        /// against what they declare, the simulations' traces. Contacts
        /// nothing and writes nothing.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// With `--config`: load the policy modules from this folder instead
        /// of the config's `policy_dir`.
        #[arg(long, value_name = "DIR")]
        policy_dir: Option<PathBuf>,
        /// With `--config`: then run one tick of every scaler against the
        /// real systems, in dry-run: read each target and metric, ask each
        /// policy, print what it would do. Changes, notifies and keeps
        /// nothing; exit 1 if a target or metric cannot be read or a policy
        /// fails.
        #[arg(long)]
        tick: bool,
        /// Limits for the load-time `describe()` call (and, with
        /// `--config`, in place of the file's `[runtime]` ones, checked as
        /// the rest of the config is).
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Runs one evaluation of a module and prints its decision as JSON.
    Eval(EvalArgs),
    /// Reads the decision journal.
    #[command(subcommand)]
    Journal(JournalCommand),
    /// Runs a module again on the evaluations the journal recorded and
    /// shows where its answers differ (exit 0: none differ; 1: some do;
    /// 2: an error).
    Replay(ReplayArgs),
    /// Backtests a config: runs its scalers against its simulated services
    /// (a load curve or a recorded trace) for a stretch of simulated time,
    /// as fast as the CPU allows, and reports what the scaling cost and
    /// what each service went through.
    Simulate(SimulateArgs),
    /// Writes a load trace for `simulate` (a `timestamp_s,requests` CSV)
    /// from the history of a request rate in Prometheus: backtests on your
    /// own traffic.
    Trace(TraceArgs),
    /// Pauses a scaler of a running daemon through its API: it keeps
    /// ticking and journaling, but holds (kept across restarts).
    Pause(PauseArgs),
    /// Resumes a paused scaler of a running daemon through its API.
    Resume(PauseArgs),
    /// Shows a running daemon's scalers through its API: a line each, or
    /// one in detail.
    Status(StatusArgs),
    /// Internal: the daemon's compiler process. Compiles the `.wasm` on
    /// stdin and writes the code to stdout (see `runtime::Compiler`).
    #[command(name = crate::runtime::WORKER_COMMAND, hide = true)]
    CompileWorker {
        /// The runtime limits, as JSON (they select the engine settings).
        #[arg(long)]
        limits: String,
    },
}

/// Arguments of `scalewise run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The configuration file; without one, the embedded demo runs.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The demo's policy folder (default: `$SCALEWISE_POLICY_DIR`, else
    /// `policies/dist`). Not with `--config`, whose `policy_dir` applies.
    #[arg(long, value_name = "DIR", conflicts_with = "config")]
    pub policy_dir: Option<PathBuf>,
    /// Listen on this address instead of the config's `[api] listen`.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Stop after this much real time (default: run until SIGINT/SIGTERM).
    #[arg(long = "for", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub run_for: Option<Duration>,
    /// Where policy modules are compiled; not a flag. In this process unless
    /// the caller says otherwise: the `scalewise` binary's `main` sets a
    /// child process of itself ([`Compiler::this_binary`]), which only the
    /// binary can be.
    #[arg(skip)]
    pub compiler: Compiler,
}

/// Arguments of `scalewise simulate`.
#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// The configuration file; without one, the embedded demo's. Every
    /// target must be a `[simulations]` service and every metric's source
    /// the simulator or the target.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Load the policy modules from this folder instead of the config's
    /// `policy_dir` (to compare module versions on the same load). For the
    /// demo the default is `$SCALEWISE_POLICY_DIR`, else `policies/dist`.
    #[arg(long, value_name = "DIR")]
    pub policy_dir: Option<PathBuf>,
    /// How much simulated time to run.
    #[arg(
        long = "for",
        default_value = "1d",
        value_parser = humantime::parse_duration,
        value_name = "DURATION"
    )]
    pub run_for: Duration,
    /// Run this much simulated time first without counting it (after
    /// `--start`, before `--for`): history for policies that look back,
    /// such as `predictive` at days.
    #[arg(
        long,
        default_value = "0s",
        value_parser = humantime::parse_duration,
        value_name = "DURATION"
    )]
    pub warmup: Duration,
    /// When the simulated stretch starts (ms since the epoch or RFC 3339).
    /// Default: where the traces played begin, when they are dated (as
    /// `scalewise trace` records them) and agree; else now. Load curves
    /// and traces count from here: the figures of policies that read the
    /// calendar (schedule, predictive) depend on it, others' do not.
    #[arg(long, value_name = "TIME")]
    pub start: Option<String>,
    /// Keep the run's journal in this new file (it must not exist), for
    /// `scalewise journal` and `scalewise replay`. Default: a temporary
    /// file, deleted at the end.
    #[arg(long, value_name = "FILE")]
    pub journal: Option<PathBuf>,
    /// Also count the time each service's p95 latency spends above this.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub slo_latency: Option<Duration>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Print a line per change of replicas while the run goes.
    #[arg(long, conflicts_with = "json")]
    pub decisions: bool,
}

/// Arguments of `scalewise pause` and `scalewise resume`.
#[derive(Debug, Clone, Args)]
pub struct PauseArgs {
    /// The scaler.
    pub scaler: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Arguments of `scalewise status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// One scaler, in detail (default: a line for each).
    pub scaler: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print the API's JSON instead.
    #[arg(long)]
    pub json: bool,
}

/// How to reach a running daemon's API (`pause`, `resume`, `status`).
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The daemon's config file: its `[api] listen` (an address on every
    /// interface is reached on loopback) and `[api] token`.
    #[arg(long, short, conflicts_with = "url")]
    pub config: Option<PathBuf>,
    /// The daemon's API, e.g. `http://10.0.3.7:9464` (default:
    /// `http://127.0.0.1:9464`).
    #[arg(long = "api", value_name = "URL")]
    pub url: Option<String>,
    /// A file holding the API token (`[api] token`), sent as a bearer
    /// token; with `--config`, the config's token is used.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub token_file: Option<PathBuf>,
    /// The certificates (PEM) to trust for an `https://` API instead of the
    /// system's: the CA that issued the daemon's certificate, or a
    /// self-signed certificate itself (trusted as that very certificate,
    /// even when marked as a CA, as `openssl req -x509` makes them). With
    /// `--config` and `[api] tls`, the daemon's certificate file by default.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

/// Arguments of `scalewise trace`.
#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    /// The request rate in requests per second, as one series, e.g.
    /// `sum(rate(http_requests_total{job="site"}[1m]))`.
    #[arg(long, value_name = "PROMQL")]
    pub query: String,
    /// The Prometheus server to ask (no auth), e.g. `http://prometheus:9090`.
    #[arg(
        long,
        value_name = "URL",
        required_unless_present = "config",
        conflicts_with = "config"
    )]
    pub prometheus: Option<String>,
    /// Ask a source of this config instead: its URL, auth and headers.
    #[arg(long, short, value_name = "FILE", requires = "source")]
    pub config: Option<PathBuf>,
    /// The config's source to ask (`[sources.<name>]`).
    #[arg(long, value_name = "NAME", requires = "config")]
    pub source: Option<String>,
    /// The first sample's time (ms since the epoch or RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub start: String,
    /// The last sample's time (ms since the epoch or RFC 3339; default: now).
    #[arg(long, value_name = "TIME")]
    pub end: Option<String>,
    /// Time between samples: a row of the trace each (whole seconds).
    #[arg(
        long,
        default_value = "1m",
        value_parser = humantime::parse_duration,
        value_name = "DURATION"
    )]
    pub step: Duration,
    /// Write the trace to this file (replaced whole, only once every
    /// sample has arrived) instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// `scalewise journal ...`: reading the decision journal.
#[derive(Debug, Clone, Subcommand)]
pub enum JournalCommand {
    /// Prints records as JSON lines (one tick record per line), oldest first.
    Export {
        /// Where the journal is.
        #[command(flatten)]
        at: JournalLocation,
        /// Only this scaler's records.
        #[arg(long)]
        scaler: Option<String>,
        /// Records at or after this time (ms since the epoch or RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Records before this time (ms since the epoch or RFC 3339).
        #[arg(long)]
        until: Option<String>,
    },
    /// Prints one record, by id, as JSON (`scalewise eval --context` replays it).
    Show {
        /// Where the journal is.
        #[command(flatten)]
        at: JournalLocation,
        /// The record's id.
        id: i64,
    },
    /// Explains one record, by id, in words: what the target and metrics
    /// read, what each policy answered, what the envelope changed and why,
    /// what the actuator did.
    Explain {
        /// Where the journal is.
        #[command(flatten)]
        at: JournalLocation,
        /// The record's id.
        #[arg(required_unless_present = "scaler", conflicts_with = "scaler")]
        id: Option<i64>,
        /// Instead of an id: this scaler's newest record.
        #[arg(long, value_name = "NAME")]
        scaler: Option<String>,
    },
}

/// Where a journal is: a database file, or the config that names one.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct JournalLocation {
    /// The journal's database file.
    #[arg(long, value_name = "FILE")]
    pub journal: Option<PathBuf>,
    /// A config file whose `[journal] path` is used.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Arguments of `scalewise eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The module file (a `.wasm` component).
    #[arg(value_name = "MODULE")]
    pub module: PathBuf,
    /// A context (JSON, the shape of `policy::Context`), or a journal record
    /// (a tick record or one evaluation from one) to replay and compare.
    #[arg(
        long,
        short,
        value_name = "FILE",
        required_unless_present = "record",
        conflicts_with = "record"
    )]
    pub context: Option<PathBuf>,
    /// Replays the journal record with this id (needs `--journal`).
    #[arg(long, value_name = "ID", requires = "journal")]
    pub record: Option<i64>,
    /// The journal database to read `--record` from.
    #[arg(long, value_name = "FILE")]
    pub journal: Option<PathBuf>,
    /// Of a tick record's evaluations, the one of `policies[N]`: needed when
    /// the scaler ran the module more than once (default: the record's
    /// evaluation of the module, or its only one).
    #[arg(long, value_name = "N")]
    pub index: Option<usize>,
    /// Sets a key of the context's `parameters`; VALUE is read as JSON when
    /// it parses, else as a string (`--params target=60 metric=cpu`).
    #[arg(long = "params", short = 'p', value_name = "KEY=VALUE", num_args = 1.., value_parser = parse_param)]
    pub params: Vec<(String, Value)>,
    /// Limits for the evaluation.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Also prints on stderr how much memory (and, with `--fuel`, fuel) the
    /// evaluation used.
    #[arg(long)]
    pub usage: bool,
}

/// Arguments of `scalewise replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The module to run (a `.wasm` component): a new version, say.
    #[arg(value_name = "MODULE")]
    pub module: PathBuf,
    /// Where the journal is.
    #[command(flatten)]
    pub at: JournalLocation,
    /// The recorded policy to replay (default: the module file's name
    /// without `.wasm`).
    #[arg(long, value_name = "NAME")]
    pub policy: Option<String>,
    /// Only this scaler's records.
    #[arg(long)]
    pub scaler: Option<String>,
    /// Records at or after this time (ms since the epoch or RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// Records before this time (ms since the epoch or RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
    /// At most this many records, the newest.
    #[arg(long, default_value_t = 100_000)]
    pub limit: usize,
    /// Changes a key of every recorded context's `parameters`
    /// (`--params target=50`); checked against the module's `describe()`.
    #[arg(long = "params", short = 'p', value_name = "KEY=VALUE", num_args = 1.., value_parser = parse_param)]
    pub params: Vec<(String, Value)>,
    /// The state each evaluation is handed: `own` (what the replayed module
    /// returned at the scaler's previous record) or `recorded`.
    #[arg(long, value_enum, default_value_t)]
    pub state: replay::StateSource,
    /// Prints every evaluation, not only those whose answer differs.
    #[arg(long)]
    pub all: bool,
    /// Prints JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
    /// Limits for the evaluations.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Overrides of the runtime limits (defaults: those of the config file's
/// `[runtime]` table).
#[derive(Debug, Clone, Default, Args)]
pub struct LimitArgs {
    /// Deadline of one call, e.g. `100ms`.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// Memory a policy may use, e.g. `64MiB`.
    #[arg(long, value_name = "SIZE")]
    pub max_memory: Option<ByteSize>,
    /// Fuel per call; 0 turns fuel metering off.
    #[arg(long, value_name = "UNITS")]
    pub fuel: Option<u64>,
    /// Wasm stack a policy may use, e.g. `512KiB`.
    #[arg(long, value_name = "SIZE")]
    pub max_wasm_stack: Option<ByteSize>,
    /// Decisions above this many replicas are invalid (1 to 1,000,000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::config::MAX_REPLICAS)))]
    pub max_replicas: Option<u32>,
}

impl LimitArgs {
    /// The flags given, as written on the command line.
    pub fn given(&self) -> Vec<&'static str> {
        [
            (self.timeout.is_some(), "--timeout"),
            (self.max_memory.is_some(), "--max-memory"),
            (self.fuel.is_some(), "--fuel"),
            (self.max_wasm_stack.is_some(), "--max-wasm-stack"),
            (self.max_replicas.is_some(), "--max-replicas"),
        ]
        .into_iter()
        .filter_map(|(given, flag)| given.then_some(flag))
        .collect()
    }

    /// The default limits with these overrides applied.
    pub fn to_limits(&self) -> RuntimeLimits {
        self.applied_to(RuntimeLimits::default())
    }

    /// `base` with these overrides applied.
    pub fn applied_to(&self, base: RuntimeLimits) -> RuntimeLimits {
        let mut l = base;
        if let Some(v) = self.timeout {
            l.timeout = v;
        }
        if let Some(v) = self.max_memory {
            l.max_memory = v;
        }
        if let Some(v) = self.fuel {
            l.fuel = v;
        }
        if let Some(v) = self.max_wasm_stack {
            l.max_wasm_stack = v;
        }
        if let Some(v) = self.max_replicas {
            l.max_replicas = v;
        }
        l
    }
}

/// Parses `KEY=VALUE`; VALUE as JSON when valid, else as a string.
fn parse_param(arg: &str) -> Result<(String, Value), String> {
    let (key, value) = arg
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {arg:?}"))?;
    if key.is_empty() {
        return Err(format!("empty key in {arg:?}"));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
    Ok((key.to_string(), value))
}

/// Runs a parsed command line; returns the exit code.
pub fn run_cli(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let result = match cli.command {
        Command::Run(args) => run::run(&args, out, err),
        Command::Journal(command) => journal::journal(&command, out, err),
        Command::Check {
            config: Some(config),
            policy_dir,
            tick,
            limits,
            ..
        } => check_config::check_config(&config, policy_dir.as_deref(), tick, &limits, out, err),
        Command::Check {
            policy_dir: Some(_),
            ..
        } => writeln!(err, "error: --policy-dir goes with --config").map(|()| 2),
        Command::Check { tick: true, .. } => {
            writeln!(err, "error: --tick goes with --config").map(|()| 2)
        }
        Command::Check {
            modules, limits, ..
        } => check(&modules, &limits, out, err),
        Command::Eval(args) => eval(&args, out, err),
        Command::Replay(args) => replay::replay(&args, out, err),
        Command::Simulate(args) => simulate::simulate(&args, out, err),
        Command::Trace(args) => trace::trace(&args, out, err),
        Command::Pause(args) => pause::pause(&args, true, out, err),
        Command::Resume(args) => pause::pause(&args, false, out, err),
        Command::Status(args) => status::status(&args, out, err),
        Command::CompileWorker { limits } => compile_worker(&limits, out, err),
    };
    // A closed stdout/stderr (e.g. `| head`) is not worth more than exit 1.
    result.unwrap_or(1)
}

/// `scalewise compile-worker`: one module from stdin, its code to `out`.
fn compile_worker(limits: &str, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<u8> {
    match crate::runtime::compile_worker(limits, &mut std::io::stdin().lock()) {
        Ok(code) => {
            out.write_all(&code)?;
            out.flush()?;
            Ok(0)
        }
        Err(message) => {
            writeln!(err, "error: {message}")?;
            Ok(1)
        }
    }
}

/// `scalewise check`: loads each module and prints its info.
pub fn check(
    modules: &[PathBuf],
    limits: &LimitArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<u8> {
    let runtime = match Runtime::new(limits.to_limits()) {
        Ok(rt) => rt,
        Err(e) => {
            writeln!(err, "error: {e}")?;
            return Ok(1);
        }
    };
    let (mut failed, mut printed) = (0, 0);
    for path in modules {
        match runtime.load_file(path) {
            Ok(module) => {
                if printed > 0 {
                    writeln!(out)?;
                }
                write_info(out, path, &module)?;
                printed += 1;
            }
            Err(e) => {
                failed += 1;
                writeln!(
                    err,
                    "error: {}: {}",
                    path.display(),
                    log_safe(&e.to_string())
                )?;
            }
        }
    }
    if failed > 0 {
        writeln!(err, "{failed} of {} modules failed to load", modules.len())?;
        Ok(1)
    } else {
        Ok(0)
    }
}

fn write_info(out: &mut dyn Write, path: &Path, module: &PolicyModule) -> std::io::Result<()> {
    let PolicyInfo {
        name,
        version,
        description,
        parameters,
    } = module.info();
    writeln!(out, "{}: ok", path.display())?;
    writeln!(out, "  name         {name}")?;
    writeln!(out, "  version      {version}")?;
    // A policy's own words: continuation lines aligned, nothing that
    // drives the terminal.
    let description = log_safe(description).replace("\n    ", "\n               ");
    writeln!(out, "  description  {description}")?;
    writeln!(out, "  digest       sha256:{}", module.digest())?;
    if parameters.is_empty() {
        writeln!(out, "  parameters   (none)")?;
        return Ok(());
    }
    writeln!(out, "  parameters")?;
    let rows: Vec<[String; 5]> = parameters
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                p.kind.as_str().to_string(),
                if p.required { "yes" } else { "no" }.to_string(),
                p.default
                    .as_ref()
                    .map_or_else(|| "-".to_string(), |v| json_safe(v.to_string())),
                one_line(&p.description),
            ]
        })
        .collect();
    let header = ["NAME", "KIND", "REQUIRED", "DEFAULT", "DESCRIPTION"].map(String::from);
    let mut widths = [0usize; 4];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        write!(out, "   ")?;
        for (w, cell) in widths.iter().zip(row) {
            write!(out, " {cell:<w$} ")?;
        }
        writeln!(out, " {}", row[4])?;
    }
    Ok(())
}

/// A policy's text for one cell of a table: its lines joined by spaces,
/// control characters escaped.
fn one_line(text: &str) -> String {
    let joined = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    log_safe(&joined).into_owned()
}

/// The runtime limits a journal record (a tick's, or one evaluation's)
/// says its calls ran under: `None` for a context, or a record of calls
/// under the defaults. A tick's policies all run under the `[runtime]` of
/// the time.
fn recorded_limits(text: &str) -> Option<RuntimeLimits> {
    let value: Value = serde_json::from_str(text).ok()?;
    let limits = match value.get("evaluations") {
        Some(Value::Array(evaluations)) => evaluations
            .iter()
            .find_map(|e| e.get("limits").filter(|l| !l.is_null()))?,
        Some(_) => return None,
        None => value.get("context").and(value.get("limits"))?,
    };
    serde_json::from_value(limits.clone()).ok()
}

/// What `scalewise eval --context FILE` was given.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalInput {
    /// A plain context.
    Context(Context),
    /// A journaled evaluation to replay and compare.
    Record(Box<Evaluation>),
}

/// Reads a context file: a [`Context`], a journal [`TickRecord`] (its
/// evaluation `index` when given, else its evaluation of the module named
/// `module` — refused when there are several — or its only one), or a
/// single [`Evaluation`]. The shape is told by its keys.
pub fn parse_eval_input(
    text: &str,
    module: &str,
    index: Option<usize>,
) -> Result<EvalInput, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let has = |key: &str| value.get(key).is_some();
    if has("evaluations") {
        let record: TickRecord = from_json_at(text)
            .map_err(|e| format!("looks like a journal tick record but is not one: {e}"))?;
        let names: Vec<&str> = record
            .evaluations
            .iter()
            .map(|e| e.module.as_str())
            .collect();
        if let Some(i) = index {
            return match record.evaluations.get(i) {
                Some(chosen) => Ok(EvalInput::Record(Box::new(chosen.clone()))),
                None => Err(format!(
                    "--index {i}: the tick record has {} evaluation(s) ({})",
                    names.len(),
                    names.join(", ")
                )),
            };
        }
        let of_module: Vec<usize> = (0..names.len()).filter(|&i| names[i] == module).collect();
        if of_module.len() > 1 {
            let at: Vec<String> = of_module.iter().map(|i| format!("policies[{i}]")).collect();
            return Err(format!(
                "the tick record has {} evaluations of module {module:?} ({}); give --index N \
                 for the one of policies[N]",
                of_module.len(),
                at.join(", ")
            ));
        }
        let chosen = of_module
            .first()
            .map(|&i| &record.evaluations[i])
            .or(match record.evaluations.as_slice() {
                [only] => Some(only),
                _ => None,
            })
            .ok_or_else(|| {
                format!(
                    "the tick record has no evaluation of module {module:?} (it has: {})",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                )
            })?;
        Ok(EvalInput::Record(Box::new(chosen.clone())))
    } else if has("outcome") && has("context") {
        let evaluation: Evaluation = from_json_at(text)
            .map_err(|e| format!("looks like a journal evaluation but is not one: {e}"))?;
        Ok(EvalInput::Record(Box::new(evaluation)))
    } else {
        let ctx: Context = from_json_at(text).map_err(|e| format!("not a valid context: {e}"))?;
        ctx.validate()
            .map_err(|e| format!("not a valid context: {e}"))?;
        Ok(EvalInput::Context(ctx))
    }
}

/// Deserializes JSON text; an error names the field it is about (e.g.
/// `target.min`) as well as the line and column.
fn from_json_at<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        }
    })
}

/// `scalewise eval`: one evaluation, or a replay of a journaled one.
pub fn eval(args: &EvalArgs, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<u8> {
    let (source, text) = match (&args.context, args.record, &args.journal) {
        (Some(path), _, _) => (
            path.display().to_string(),
            std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}")),
        ),
        (None, Some(id), Some(journal)) => match journal::read_record(journal, id) {
            Ok(record) => (
                format!("{} record {id}", journal.display()),
                serde_json::to_string(&record).map_err(|e| e.to_string()),
            ),
            // Its message names the journal and the id already.
            Err(e) => {
                writeln!(err, "error: {e}")?;
                return Ok(1);
            }
        },
        _ => (
            String::new(),
            Err("give --context FILE, or --record ID with --journal FILE".into()),
        ),
    };
    // A record is replayed under the limits it ran under: the module is
    // loaded under them from the start (one that needs more memory or
    // stack than the defaults give would not load under those).
    let recorded = text.as_deref().ok().and_then(recorded_limits);
    let runtime = match Runtime::new(args.limits.applied_to(recorded.unwrap_or_default())) {
        Ok(rt) => rt,
        Err(e) => {
            writeln!(err, "error: {e}")?;
            return Ok(1);
        }
    };
    let module = match runtime.load_file(&args.module) {
        Ok(m) => m,
        Err(e) => {
            writeln!(
                err,
                "error: {}: {}",
                args.module.display(),
                log_safe(&e.to_string())
            )?;
            return Ok(1);
        }
    };
    let input = text.and_then(|text| parse_eval_input(&text, module.name(), args.index));
    let input = match input {
        Ok(i) => i,
        Err(e) => {
            writeln!(err, "error: {source}: {e}")?;
            return Ok(1);
        }
    };
    match input {
        EvalInput::Context(mut ctx) => {
            let problems = apply_params(&mut ctx.parameters, &args.params)
                .and_then(|()| param_problems(&module, &ctx));
            let problems = match problems {
                Ok(problems) => problems,
                Err(e) => {
                    writeln!(err, "error: {source}: {e}")?;
                    return Ok(1);
                }
            };
            // What --params got wrong is refused, as config load refuses it;
            // what the context file holds is only warned about (one example
            // context may serve several policies).
            let (refused, warned): (Vec<_>, Vec<_>) = problems.iter().partition(|p| {
                p.key()
                    .is_some_and(|key| args.params.iter().any(|(k, _)| k == key))
            });
            for problem in &warned {
                let left_out = match problem {
                    // Left out of the call too: the daemon never hands a
                    // policy a parameter it does not declare (the SDK's
                    // checked parameters would refuse it).
                    ParamProblem::Unknown { key, .. } => {
                        if let Value::Object(map) = &mut ctx.parameters {
                            map.remove(key);
                        }
                        "left out; "
                    }
                    _ => "",
                };
                writeln!(
                    err,
                    "warning: {source}: {} ({left_out}the daemon would refuse this in a config)",
                    log_safe(problem.message())
                )?;
            }
            if !refused.is_empty() {
                for problem in &refused {
                    writeln!(err, "error: --params: {}", log_safe(problem.message()))?;
                }
                return Ok(1);
            }
            // As the daemon hands them: a parameter not given (or null, "not
            // given") has the default `describe()` declares for it.
            if let Value::Object(map) = &mut ctx.parameters {
                map.retain(|_, value| !value.is_null());
            }
            ctx.parameters = crate::scaler::with_defaults(&ctx.parameters, module.info());
            let (result, usage) = module.evaluate_with_usage(&ctx);
            if args.usage {
                let fuel = match usage.fuel_consumed {
                    Some(used) => format!(", fuel {used} of {}", module.limits().fuel),
                    None => String::new(),
                };
                writeln!(
                    err,
                    "usage: memory {} at its largest (limit {}), grown {} times during the call{fuel}",
                    ByteSize::b(usage.memory_bytes),
                    module.limits().max_memory,
                    usage.memory_growths
                )?;
            }
            match result {
                Ok(decision) => {
                    writeln!(out, "{}", to_pretty(&decision))?;
                    Ok(0)
                }
                Err(e) => {
                    writeln!(out, "{}", to_pretty(&serde_json::json!({ "error": e })))?;
                    Ok(1)
                }
            }
        }
        EvalInput::Record(evaluation) => {
            // The limits the call ran under (recorded when not the
            // defaults), unless a flag says otherwise.
            let recorded = evaluation.limits.as_deref().cloned().unwrap_or_default();
            let limits = args.limits.applied_to(recorded);
            let module = if limits == *module.limits() {
                module
            } else {
                let loaded = Runtime::new(limits)
                    .map_err(|e| e.to_string())
                    .and_then(|rt| rt.load_file(&args.module).map_err(|e| e.to_string()));
                match loaded {
                    Ok(m) => m,
                    Err(e) => {
                        writeln!(err, "error: {}: {}", args.module.display(), log_safe(&e))?;
                        return Ok(1);
                    }
                }
            };
            if !args.params.is_empty() {
                writeln!(
                    err,
                    "error: --params cannot be used with a journal record: a replay runs the recorded context as it was"
                )?;
                return Ok(1);
            }
            let replay = eval_against_record(&module, &evaluation);
            writeln!(out, "{}", to_pretty(&replay))?;
            if evaluation.digest.is_none() {
                writeln!(
                    err,
                    "replay: the record's evaluation ran no module (the module was not \
                     available then), so there is no recorded digest to match"
                )?;
            }
            writeln!(
                err,
                "replay: the answer {} the record; the module digest {}",
                if replay.outcome_matches {
                    "matches"
                } else {
                    "DIFFERS FROM"
                },
                if replay.digest_matches {
                    "matches the recorded one".to_owned()
                } else {
                    // Both named, so the module that ran then can be found.
                    let short = |d: &str| d.get(..12).unwrap_or(d).to_owned();
                    match &replay.recorded_digest {
                        Some(then) => format!(
                            "{} DIFFERS FROM the recorded one, {}",
                            short(&replay.digest),
                            short(then)
                        ),
                        None => format!("{} has none recorded to match", short(&replay.digest)),
                    }
                },
            )?;
            Ok(if replay.matches() { 0 } else { 1 })
        }
    }
}

/// Sets `params` in the context's parameters object.
fn apply_params(parameters: &mut Value, params: &[(String, Value)]) -> Result<(), String> {
    if params.is_empty() {
        return Ok(());
    }
    let Value::Object(map) = parameters else {
        return Err(
            "the context's parameters are not a JSON object, so --params cannot set keys".into(),
        );
    };
    for (k, v) in params {
        map.insert(k.clone(), v.clone());
    }
    Ok(())
}

/// The context's parameters checked against what the module declares, as
/// the daemon checks a scaler's config.
fn param_problems(module: &PolicyModule, ctx: &Context) -> Result<Vec<ParamProblem>, String> {
    let Value::Object(given) = &ctx.parameters else {
        return Err("the context's parameters are not a JSON object".into());
    };
    let mut params = toml::Table::new();
    for (key, value) in given {
        // null stands for "not given", as the SDK reads it.
        if value.is_null() {
            continue;
        }
        let value = toml::Value::try_from(value)
            .map_err(|e| format!("parameter {key:?} cannot be a config value: {e}"))?;
        params.insert(key.clone(), value);
    }
    let metrics: Vec<&str> = ctx.metrics.iter().map(|m| m.name.as_str()).collect();
    Ok(crate::config::param_problems(
        module.name(),
        module.info(),
        &params,
        &metrics,
    ))
}

/// `v` as pretty JSON for the terminal ([`json_safe`]).
fn to_pretty<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v)
        .map(json_safe)
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot print: {e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use serde_json::json;

    #[test]
    fn a_policys_text_in_a_table_cell_is_one_safe_line() {
        assert_eq!(
            one_line("Target value.\n  Defaults to 50.\n"),
            "Target value. Defaults to 50."
        );
        assert_eq!(one_line("a\r\x1b[2Jb"), "a\\r\\u{1b}[2Jb");
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn check_takes_modules_or_a_config_not_both() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("scalewise").chain(args.iter().copied()))
                .map(|cli| cli.command)
        };
        assert!(matches!(
            parse(&["check", "--config", "s.toml", "--policy-dir", "p"]),
            Ok(Command::Check {
                config: Some(_),
                policy_dir: Some(_),
                ..
            })
        ));
        assert!(matches!(
            parse(&["check", "a.wasm", "b.wasm"]),
            Ok(Command::Check { ref modules, config: None, .. }) if modules.len() == 2
        ));
        for refused in [&["check"][..], &["check", "a.wasm", "--config", "s.toml"]] {
            assert!(parse(refused).is_err(), "{refused:?} parsed");
        }
        // --policy-dir without --config: refused when run.
        let cli =
            Cli::try_parse_from(["scalewise", "check", "a.wasm", "--policy-dir", "p"]).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(run_cli(cli, &mut out, &mut err), 2);
        assert_eq!(
            String::from_utf8_lossy(&err),
            "error: --policy-dir goes with --config\n"
        );
    }

    #[test]
    fn params_parse_as_json_or_string() {
        let cases = [
            ("target=60", Ok(("target", json!(60)))),
            ("metric=cpu", Ok(("metric", json!("cpu")))),
            ("flag=true", Ok(("flag", json!(true)))),
            ("list=[1,2]", Ok(("list", json!([1, 2])))),
            ("eq=a=b", Ok(("eq", json!("a=b")))),
            ("empty=", Ok(("empty", json!("")))),
            ("noequals", Err("expected KEY=VALUE")),
            ("=1", Err("empty key")),
        ];
        for (arg, want) in cases {
            match (parse_param(arg), want) {
                (Ok((k, v)), Ok((wk, wv))) => assert_eq!((k.as_str(), v), (wk, wv), "{arg}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{e}"),
                (got, want) => panic!("{arg}: {got:?} vs {want:?}"),
            }
        }
    }

    #[test]
    fn eval_args_accept_several_params() {
        let cli = Cli::try_parse_from([
            "scalewise",
            "eval",
            "m.wasm",
            "--context",
            "c.json",
            "--params",
            "a=1",
            "b=x",
            "--timeout",
            "250ms",
            "--max-memory",
            "32MiB",
        ])
        .unwrap();
        let Command::Eval(args) = cli.command else {
            panic!("not eval")
        };
        assert_eq!(
            args.params,
            vec![("a".into(), json!(1)), ("b".into(), json!("x"))]
        );
        let limits = args.limits.to_limits();
        assert_eq!(limits.timeout, Duration::from_millis(250));
        assert_eq!(limits.max_memory, ByteSize::mib(32));
        assert_eq!(limits.fuel, 0);
    }

    const CONTEXT: &str = r#"{"now_ms": 5, "target": {"kind": "simulator", "name": "web",
        "current": 2, "ready": 2, "min": 1, "max": 4}}"#;

    fn evaluation(module: &str) -> Value {
        json!({
            "module": module,
            "digest": "abc",
            "context": serde_json::from_str::<Value>(CONTEXT).unwrap(),
            "outcome": {"status": "decided", "decision": {"desired": 3, "reason": "r"}},
            "duration_us": 7
        })
    }

    fn tick(evaluations: Vec<Value>) -> String {
        json!({
            "time_ms": 5, "scaler": "web", "mode": "enforce",
            "target": {"kind": "simulator", "name": "web", "current": 2, "ready": 2, "min": 1, "max": 4},
            "evaluations": evaluations, "proposal": 3, "desired": 3, "recommendation": 3,
            "actuation": {"status": "none"}
        })
        .to_string()
    }

    #[test]
    fn eval_input_shapes() {
        let EvalInput::Context(ctx) = parse_eval_input(CONTEXT, "m", None).unwrap() else {
            panic!("context")
        };
        assert_eq!(ctx.target.current, 2);
        assert_eq!(ctx.parameters, json!({}));

        let single = evaluation("tt").to_string();
        let EvalInput::Record(e) = parse_eval_input(&single, "other", None).unwrap() else {
            panic!("evaluation")
        };
        assert_eq!(e.module, "tt");

        let two = tick(vec![evaluation("a"), evaluation("b")]);
        let EvalInput::Record(e) = parse_eval_input(&two, "b", None).unwrap() else {
            panic!("tick")
        };
        assert_eq!(e.module, "b");
        let none = parse_eval_input(&two, "c", None).unwrap_err();
        assert!(
            none.contains("no evaluation of module \"c\" (it has: a, b)"),
            "{none}"
        );

        let one = tick(vec![evaluation("a")]);
        assert!(matches!(
            parse_eval_input(&one, "renamed", None),
            Ok(EvalInput::Record(_))
        ));

        // The module twice in one scaler: which one must be said.
        let twice = tick(vec![evaluation("a"), evaluation("b"), evaluation("a")]);
        let both = parse_eval_input(&twice, "a", None).unwrap_err();
        assert!(
            both.contains("2 evaluations of module \"a\" (policies[0], policies[2]); give --index"),
            "{both}"
        );
        let EvalInput::Record(e) = parse_eval_input(&twice, "a", Some(2)).unwrap() else {
            panic!("tick")
        };
        assert_eq!(e.module, "a");
        let beyond = parse_eval_input(&twice, "a", Some(3)).unwrap_err();
        assert!(
            beyond.contains("--index 3: the tick record has 3 evaluation(s)"),
            "{beyond}"
        );

        let bad = parse_eval_input(r#"{"now_ms": 1}"#, "m", None).unwrap_err();
        assert!(bad.contains("not a valid context"), "{bad}");
        let typo = parse_eval_input(r#"{"now_ms": 1, "targte": {}}"#, "m", None).unwrap_err();
        assert!(typo.contains("targte"), "{typo}");
        assert!(
            parse_eval_input("{", "m", None)
                .unwrap_err()
                .contains("not valid JSON")
        );
    }

    #[test]
    fn a_context_error_names_the_field_and_the_line() {
        let negative = CONTEXT.replace("\"min\": 1", "\"min\": -1");
        let err = parse_eval_input(&negative, "m", None).unwrap_err();
        assert!(
            err.contains("target.min: invalid value: integer `-1`"),
            "{err}"
        );
        assert!(err.contains("line 2"), "{err}");
        let state = CONTEXT.replace("\"now_ms\": 5,", "\"now_ms\": 5, \"state\": \"!!\",");
        let err = parse_eval_input(&state, "m", None).unwrap_err();
        assert!(err.contains("state: not base64"), "{err}");
    }

    #[test]
    fn a_context_whose_points_are_out_of_order_is_refused() {
        let with = |metrics: Value| {
            let mut ctx: Value = serde_json::from_str(CONTEXT).unwrap();
            ctx["metrics"] = metrics;
            parse_eval_input(&ctx.to_string(), "m", None)
        };
        let sorted = json!([{"name": "cpu", "points": [[1, 1.0], [2, 2.0], [3, 3.0]]}]);
        assert!(with(sorted).is_ok());
        let unsorted = json!([{"name": "cpu", "points": [[3, 1.0], [1, 2.0], [2, 3.0]]}]);
        let err = with(unsorted).unwrap_err();
        assert!(
            err.contains("metrics[0].points[1] (metric \"cpu\"): timestamp 1 is not after"),
            "{err}"
        );
        let repeated = json!([{"name": "cpu", "points": [[1, 1.0], [1, 2.0]]}]);
        assert!(with(repeated).unwrap_err().contains("points[1]"));
        let twice = json!([{"name": "cpu"}, {"name": "mem"}, {"name": "cpu"}]);
        let err = with(twice).unwrap_err();
        assert!(
            err.contains("metrics[2]: a second metric named \"cpu\" (the first is metrics[0])"),
            "{err}"
        );
        let mut inverted: Value = serde_json::from_str(CONTEXT).unwrap();
        inverted["target"]["min"] = json!(5);
        let err = parse_eval_input(&inverted.to_string(), "m", None).unwrap_err();
        assert!(err.contains("target: min 5 is above max 4"), "{err}");
    }

    #[test]
    fn params_override_and_refuse_non_objects() {
        let mut p = json!({"a": 1, "b": 2});
        apply_params(&mut p, &[("b".into(), json!(3)), ("c".into(), json!("x"))]).unwrap();
        assert_eq!(p, json!({"a": 1, "b": 3, "c": "x"}));
        let mut arr = json!([1]);
        assert!(apply_params(&mut arr, &[("a".into(), json!(1))]).is_err());
        assert!(apply_params(&mut arr, &[]).is_ok());
    }
}
