//! Where policy modules are compiled: in this process, or in a child
//! process running this same binary's hidden `compile-worker` command.
//!
//! Compiling runs Cranelift. In the daemon's own process that leaves the
//! compiler's code mapped and its working memory in the allocator for as long
//! as the daemon lives (~7 MiB for one scaler — a sidecar's whole budget
//! grows by a third), and a module that makes the compiler crash or blow up
//! takes the daemon with it. A child compiles, hands the code back on a pipe
//! and exits: the daemon holds what it holds when it starts from the module
//! cache, and a crash or an out-of-memory kill of the child is an error for
//! that one module (the module it would have replaced keeps running).
//!
//! The child writes the code in the on-disk cache's layout (magic, sha256,
//! artifact; see [`super::precompiled`]): the parent checks the checksum on
//! the bytes it read before wasmtime sees them, and wasmtime checks the
//! engine settings, exactly as for a cache file.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::host::truncate;
use crate::config::RuntimeLimits;

/// The hidden command a compiler child runs (`scalewise compile-worker`).
pub const WORKER_COMMAND: &str = "compile-worker";

/// How long a compiler child may take before it is killed and the module
/// refused. Compiling a bundled policy takes ~0.1 s; a module that keeps the
/// compiler busy for minutes is not one to run.
pub const COMPILE_TIMEOUT: Duration = Duration::from_secs(120);

/// Where a [`super::Runtime`] compiles the modules it loads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Compiler {
    /// In this process (a throwaway engine, so the runtime's own engine
    /// keeps no compiler state). What the library and the CLI's one-shot
    /// commands use.
    #[default]
    InProcess,
    /// In a child process: `program compile-worker --limits <json>`, the
    /// `.wasm` on its stdin, the code on its stdout. `program` is a
    /// `scalewise` binary of the same build (the daemon passes its own).
    /// A child still running after `timeout` is killed and the module
    /// refused. When the child cannot be started at all, the module is
    /// compiled in this process instead, with a warning.
    Process {
        /// The `scalewise` binary.
        program: PathBuf,
        /// How long one compilation may take.
        timeout: Duration,
    },
}

impl Compiler {
    /// A child process running `program`, with the default timeout
    /// ([`COMPILE_TIMEOUT`]).
    pub fn process(program: impl Into<PathBuf>) -> Compiler {
        Compiler::Process {
            program: program.into(),
            timeout: COMPILE_TIMEOUT,
        }
    }

    /// A child process running the current executable, which must be the
    /// `scalewise` binary; in this process when its path is unknown.
    pub fn this_binary() -> Compiler {
        match std::env::current_exe() {
            Ok(path) => Compiler::process(path),
            Err(err) => {
                tracing::warn!(error = %err, "The path of this binary is unknown; policy modules will be compiled in the daemon's process.");
                Compiler::InProcess
            }
        }
    }
}

/// What running the child came to.
#[derive(Debug)]
pub(super) enum ChildOutcome {
    /// The child ran and wrote this (a cache-layout file).
    Code(Vec<u8>),
    /// The child ran and failed: its message, or how it died.
    Failed(String),
    /// The child could not be started (or talked to); compile here instead.
    Unavailable(String),
}

/// Runs `program compile-worker` on `bytes` for an engine built from
/// `limits`, for at most `timeout`.
pub(super) fn compile_in_child(
    program: &Path,
    timeout: Duration,
    limits: &RuntimeLimits,
    bytes: &[u8],
) -> ChildOutcome {
    let limits = match serde_json::to_string(limits) {
        Ok(json) => json,
        Err(e) => return ChildOutcome::Unavailable(format!("cannot pass the limits: {e}")),
    };
    let child = Command::new(program)
        .args([WORKER_COMMAND, "--limits", &limits])
        // Its stderr is the error message: no log lines in it.
        .env("RUST_LOG", "off")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            return ChildOutcome::Unavailable(format!("cannot start {}: {e}", program.display()));
        }
    };
    // The module goes in, and the code and the error text come out, on
    // threads of their own: a child that fails early stops reading, and no
    // pipe may fill up and block either side. This thread keeps the clock.
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let (read, code, message, timed_out) = std::thread::scope(|scope| {
        scope.spawn(move || {
            if let Some(mut stdin) = stdin {
                // A child that exits early closes the pipe; its exit status
                // and stderr tell why.
                let _ = stdin.write_all(bytes);
            }
        });
        let message = scope.spawn(move || {
            let mut message = Vec::new();
            if let Some(mut stderr) = stderr {
                let _ = stderr.read_to_end(&mut message);
            }
            message
        });
        let code = scope.spawn(move || {
            let mut code = Vec::new();
            let read = stdout.map(|mut out| out.read_to_end(&mut code)).transpose();
            let _ = done_tx.send(());
            (read, code)
        });
        // The code's pipe closes when the child exits (or closes it); kill a
        // child that is still at it after `timeout`, which closes the pipes
        // and ends the readers.
        let timed_out = matches!(
            done_rx.recv_timeout(timeout),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        if timed_out {
            let _ = child.kill();
        }
        let (read, code) = code.join().unwrap_or((Ok(None), Vec::new()));
        let message = message.join().unwrap_or_default();
        (read, code, message, timed_out)
    });
    let status = child.wait();
    if timed_out {
        return ChildOutcome::Failed(format!(
            "the compiler process was still running after {} and was stopped",
            humantime::format_duration(timeout)
        ));
    }
    let status = match (read, status) {
        (Ok(_), Ok(status)) => status,
        (Err(e), _) | (_, Err(e)) => {
            return ChildOutcome::Unavailable(format!("lost touch with the compiler process: {e}"));
        }
    };
    if status.success() {
        return ChildOutcome::Code(code);
    }
    let message = String::from_utf8_lossy(&message);
    let message = message.trim();
    let message = message.strip_prefix("error: ").unwrap_or(message);
    let message = truncate(message, MAX_MESSAGE_BYTES);
    match (message.is_empty(), status.code().is_some()) {
        (false, true) => ChildOutcome::Failed(message.into_owned()),
        // Killed (a panic aborts; the OOM killer), with what it said first.
        (false, false) => ChildOutcome::Failed(format!(
            "the compiler process {}: {message}",
            describe_exit(status)
        )),
        (true, _) => {
            ChildOutcome::Failed(format!("the compiler process {}", describe_exit(status)))
        }
    }
}

/// The most of a compiler child's stderr an error keeps (it ends up in
/// logs, `GET /v1/policies` and journal records).
const MAX_MESSAGE_BYTES: usize = 4096;

#[cfg(unix)]
fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (_, Some(signal)) => format!("was killed by signal {signal}"),
        (Some(code), None) => format!("exited with {code} and no message"),
        (None, None) => format!("ended: {status}"),
    }
}

#[cfg(not(unix))]
fn describe_exit(status: std::process::ExitStatus) -> String {
    format!("ended: {status}")
}

/// The child's side: compiles the `.wasm` read from `input` for the engine
/// `limits_json` describes, and returns the code in the cache's layout.
pub fn worker(limits_json: &str, input: &mut dyn std::io::Read) -> Result<Vec<u8>, String> {
    let limits: RuntimeLimits = serde_json::from_str(limits_json)
        .map_err(|e| format!("the limits passed to the compiler are not valid: {e}"))?;
    let mut bytes = Vec::new();
    input
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the module: {e}"))?;
    let artifact = super::precompiled::precompile(&super::engine_config(&limits, false), &bytes)?;
    Ok(super::precompiled::encode(&artifact))
}
