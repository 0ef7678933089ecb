//! Compiling policy modules in a child process (`runtime::Compiler`), as
//! `scalewise run` does: the real `scalewise` binary (this crate's
//! `scalewise-cli`) compiles real modules, its code runs and is cached like
//! code compiled in-process; a module the compiler rejects, a child that
//! dies or hangs, code the engine refuses and a program that is not there
//! are each handled as the runtime documents. The misbehaving compilers are
//! shell scripts: a real one that crashes on demand does not exist.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scalewise::config::RuntimeLimits;
use scalewise::runtime::{CodeOrigin, Compiler, LoadError, Runtime};
use scalewise_tests::{artifacts, context};
use serde_json::json;

fn scalewise_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_scalewise-cli"))
}

fn runtime(compiler: Compiler, limits: RuntimeLimits) -> Runtime {
    Runtime::with_compiler(limits, compiler).unwrap()
}

/// Held by each test for its whole run: the tests run one at a time. A
/// script written while another test's thread forks a child can be held
/// open for writing by that child until it execs, and running the script
/// then fails with "Text file busy" (ETXTBSY), which a test would read as
/// a compiler that is missing.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A shell script standing in for the compiler program: `body` runs with
/// the arguments the runtime passes.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Loading target-tracking with `compiler`, which must fail: the error.
fn load_error(compiler: Compiler) -> LoadError {
    runtime(compiler, RuntimeLimits::default())
        .load_file(Path::new(artifacts::TARGET_TRACKING))
        .unwrap_err()
}

/// Runs `f` with the warnings it logs captured.
fn warnings_of<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

#[test]
fn code_compiled_by_the_child_decides_as_code_compiled_in_process() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    // The real binary behind a script that counts its runs.
    let calls = dir.path().join("calls");
    let program = script(
        dir.path(),
        "compiler",
        &format!(
            "echo \"$1\" >> {calls:?}\nexec {:?} \"$@\"",
            scalewise_bin()
        ),
    );
    let cache = dir.path().join("cache");
    let limits = RuntimeLimits {
        cache_dir: Some(cache.clone()),
        ..RuntimeLimits::default()
    };
    let child_rt = runtime(Compiler::process(program), limits.clone());
    let (child, warnings) = warnings_of(|| {
        child_rt
            .load_file(Path::new(artifacts::TARGET_TRACKING))
            .unwrap()
    });
    // The child ran, once, and its code was used: nothing fell back to
    // compiling here (that would warn).
    assert_eq!(std::fs::read_to_string(&calls).unwrap(), "compile-worker\n");
    assert_eq!(warnings, "");
    assert_eq!(child.origin(), CodeOrigin::Compiled);

    let here = runtime(Compiler::InProcess, RuntimeLimits::default())
        .load_file(Path::new(artifacts::TARGET_TRACKING))
        .unwrap();
    assert_eq!(child.info(), here.info());
    assert_eq!(child.digest(), here.digest());
    let params = json!({"metric": "cpu", "target": 50.0, "aggregate": "mean"});
    for points in [1, 10, 1_000] {
        let ctx = context(1_700_000_000_000, params.clone(), points);
        assert_eq!(
            serde_json::to_vec(&child.evaluate(&ctx).unwrap()).unwrap(),
            serde_json::to_vec(&here.evaluate(&ctx).unwrap()).unwrap(),
            "{points} points"
        );
    }

    // What the child handed back went into the cache as a cache file: a
    // runtime compiling in-process starts from it.
    let again = runtime(Compiler::InProcess, limits)
        .load_file(Path::new(artifacts::TARGET_TRACKING))
        .unwrap();
    assert_eq!(again.origin(), CodeOrigin::Cache);
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap().lines().count(),
        1,
        "a cache hit runs no compiler"
    );
}

#[test]
fn the_child_compiles_for_the_runtimes_engine_settings() {
    let _serial = serial();
    // Fuel metering changes the code: the child must compile with it on.
    let limits = RuntimeLimits {
        fuel: 10_000_000,
        ..RuntimeLimits::default()
    };
    let rt = runtime(Compiler::process(scalewise_bin()), limits);
    let (module, warnings) = warnings_of(|| rt.load_file(Path::new(artifacts::COUNTER)).unwrap());
    assert_eq!(warnings, "");
    let (decision, usage) = module.evaluate_with_usage(&context(5, json!({}), 3));
    decision.unwrap();
    assert!(usage.fuel_consumed.is_some_and(|f| f > 0), "{usage:?}");
}

#[test]
fn a_module_the_compiler_rejects_is_refused_with_the_compilers_words() {
    let _serial = serial();
    // A component header, then a section that is not one.
    let bytes = b"\0asm\x0d\0\x01\0\x07\xff\xff\xff\xff\x0f";
    let child = runtime(Compiler::process(scalewise_bin()), RuntimeLimits::default())
        .load("broken", bytes)
        .unwrap_err();
    let here = runtime(Compiler::InProcess, RuntimeLimits::default())
        .load("broken", bytes)
        .unwrap_err();
    assert!(matches!(child, LoadError::Compile(_)), "{child:?}");
    assert_eq!(child.to_string(), here.to_string());
}

#[test]
fn a_compiler_that_dies_is_an_error_for_that_module() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let program = script(dir.path(), "dies", "kill -9 $$");
    let err = load_error(Compiler::process(program));
    assert!(matches!(err, LoadError::Compile(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "the component does not compile: the compiler process was killed by signal 9"
    );

    // A panic aborts: what it said comes with the signal.
    let program = script(
        dir.path(),
        "panics",
        "echo \"thread 'main' panicked: boom\" >&2\nkill -6 $$",
    );
    let err = load_error(Compiler::process(program));
    assert_eq!(
        err.to_string(),
        "the component does not compile: the compiler process was killed by signal 6: \
         thread 'main' panicked: boom"
    );

    // A long message is cut.
    let program = script(
        dir.path(),
        "verbose",
        "head -c 100000 /dev/zero | tr '\\0' x >&2\nexit 1",
    );
    let err = load_error(Compiler::process(program));
    let text = err.to_string();
    assert!(text.len() < 4200, "{} bytes", text.len());
    assert!(
        text.ends_with("[95904 bytes cut]"),
        "{}",
        &text[text.len() - 40..]
    );

    let program = script(dir.path(), "fails", "echo 'error: out of disk' >&2\nexit 3");
    let err = load_error(Compiler::process(program));
    assert_eq!(
        err.to_string(),
        "the component does not compile: out of disk"
    );
}

#[test]
fn a_compiler_that_hangs_is_stopped_at_its_timeout() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let program = script(dir.path(), "hangs", "exec sleep 600");
    let compiler = Compiler::Process {
        program,
        timeout: Duration::from_millis(300),
    };
    let started = Instant::now();
    let err = load_error(compiler);
    assert_eq!(
        err.to_string(),
        "the component does not compile: the compiler process was still running after 300ms \
         and was stopped"
    );
    // Killed, not waited for.
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// A module the instance pool refuses (its memory starts above
/// `max_memory`) is the module's fault: refused in the operator's words,
/// not compiled again in the daemon's process.
#[test]
fn a_module_the_pool_refuses_is_not_compiled_again_here() {
    let _serial = serial();
    let limits = RuntimeLimits {
        max_memory: bytesize::ByteSize::mib(1),
        ..RuntimeLimits::default()
    };
    let rt = runtime(Compiler::process(scalewise_bin()), limits);
    let (err, warnings) = warnings_of(|| rt.load_file(Path::new(artifacts::FAULTS)).unwrap_err());
    assert!(
        err.to_string().contains("the module's memory starts at "),
        "{err}"
    );
    assert!(
        !warnings.contains("compiling the policy module in the daemon"),
        "{warnings}"
    );
}

#[test]
fn code_the_engine_refuses_or_no_program_falls_back_to_compiling_here() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    // Another build's code (here: a successful exit with garbage), and a
    // program that is not there: the module is not at fault, so it loads,
    // compiled in this process, with a warning saying why.
    let garbage = script(dir.path(), "garbage", "cat > /dev/null\necho not code");
    let missing = dir.path().join("no-such-program");
    for (program, says) in [
        (garbage, "The compiler process's code cannot be used"),
        (missing, "No compiler process"),
    ] {
        let rt = runtime(Compiler::process(&program), RuntimeLimits::default());
        let (module, warnings) =
            warnings_of(|| rt.load_file(Path::new(artifacts::TARGET_TRACKING)));
        let module = module.unwrap_or_else(|e| panic!("{}: {e}", program.display()));
        assert_eq!(module.origin(), CodeOrigin::Compiled);
        assert!(warnings.contains(says), "{}: {warnings}", program.display());
    }
}
