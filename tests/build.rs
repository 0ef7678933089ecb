//! Builds the guest modules of `policies/` for wasm32-wasip2 and generates
//! `artifacts.rs`: one `pub const` path per module, plus `ALL`.
//!
//! The guests build in their own target dir (`<target>/guests`) with an
//! environment cleared of the host build's settings, so host flags never
//! leak into Wasm builds and the two never invalidate each other. Only this
//! crate builds guests: `cargo build -p scalewise` never does.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("the tests crate lives in the workspace");
    let policies = root.join("policies");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .expect("OUT_DIR is inside the target dir");
    let guests_dir = target_dir.join("guests");

    watch(&policies, &["target", "dist"]);
    watch(&root.join("sdk").join("rust"), &["target"]);
    watch(&root.join("wit"), &[]);

    watch(&root.join("sdk").join("python"), &["__pycache__"]);
    watch(&root.join("sdk").join("js"), &["node_modules"]);
    watch(&root.join("sdk").join("c"), &[]);

    check_target_installed();
    // The Python and JavaScript guests build beside the Rust ones.
    let others = std::thread::scope(|s| {
        let python = s.spawn(|| build_python_guests(root, &guests_dir));
        let js = s.spawn(|| build_js_guests(root, &guests_dir));
        let c = s.spawn(|| build_c_guests(root, &guests_dir));
        let rust = build_guests(&policies, &guests_dir);
        let mut others = python.join().expect("the Python build panicked");
        others.extend(js.join().expect("the JavaScript build panicked"));
        others.extend(c.join().expect("the C build panicked"));
        (rust, others)
    });
    write_constants(&out_dir.join("artifacts.rs"), &others.0, &others.1);
}

/// The policy folders under `dir` (and `dir/fixtures`) that hold `entry`,
/// by name.
fn policy_dirs(dir: &Path, entry: &str) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    for parent in [dir.to_path_buf(), dir.join("fixtures")] {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.join(entry).is_file() {
                found.push((e.file_name().to_string_lossy().into_owned(), path));
            }
        }
    }
    found.sort();
    found
}

/// Runs `cmd`, panicking with its output and `fix` when it cannot start or
/// fails.
fn run(mut cmd: Command, what: &str, fix: &str) {
    let output = cmd.output().unwrap_or_else(|e| {
        panic!(
            "\n\nCannot run {:?} to build {what}: {e}.\n{fix}\n\n",
            cmd.get_program()
        )
    });
    if !output.status.success() {
        panic!(
            "\n\nBuilding {what} failed:\n{}{}\n",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

const INSTALL_FIX: &str =
    "Run `scripts/install-test-deps` (it installs componentize-py and componentize-js).";

/// Each `policies/python/<name>/app.py` with componentize-py, against the
/// SDK in `sdk/python`.
fn build_python_guests(root: &Path, guests_dir: &Path) -> Vec<Artifact> {
    let out = guests_dir.join("python");
    std::fs::create_dir_all(&out).expect("cannot create the Python guests folder");
    let mut built = Vec::new();
    for (name, dir) in policy_dirs(&root.join("policies").join("python"), "app.py") {
        let path = out.join(format!("{name}.wasm"));
        let mut cmd = Command::new("componentize-py");
        cmd.arg("-d")
            .arg(root.join("wit"))
            .args(["-w", "policy", "componentize", "-p"])
            .arg(root.join("sdk").join("python"))
            .arg("-p")
            .arg(&dir)
            .arg("app")
            .arg("-o")
            .arg(&path);
        run(
            cmd,
            &format!("the Python policy {}", dir.display()),
            INSTALL_FIX,
        );
        built.push(Artifact {
            package: name,
            path,
        });
    }
    built
}

/// Each `policies/c/<name>/` (its `.c` files) with clang for wasm32-wasi
/// (WASI preview 1, as Debian's wasi-libc is): the world's C bindings are
/// generated from `wit/` (as `wit-bindgen c` does), and the core module is
/// made a component with the preview1 reactor adapter (as `wasm-tools
/// component new --adapt` does).
fn build_c_guests(root: &Path, guests_dir: &Path) -> Vec<Artifact> {
    let dirs = policy_dirs(&root.join("policies").join("c"), "policy.c");
    if dirs.is_empty() {
        return Vec::new();
    }
    let out = guests_dir.join("c");
    let bindings = out.join("bindings");
    std::fs::create_dir_all(&bindings).expect("cannot create the C bindings folder");
    generate_c_bindings(&root.join("wit"), &bindings);
    // For the C policies' native tests (tests/languages.rs).
    println!(
        "cargo::rustc-env=SCALEWISE_C_BINDINGS={}",
        bindings.display()
    );
    let mut built = Vec::new();
    for (name, dir) in dirs {
        let core = out.join(format!("{name}.core.wasm"));
        let mut cmd = Command::new("clang");
        cmd.args([
            "--target=wasm32-wasi",
            "-mexec-model=reactor",
            "-O2",
            "-Wall",
            "-Werror",
        ])
        // The generated bindings are not warning-free.
        .args(["-Wno-unused-function", "-Wno-unused-parameter"])
        .arg("-I")
        .arg(&bindings)
        .arg("-I")
        .arg(root.join("sdk").join("c"))
        .arg("-I")
        .arg(&dir)
        .arg(bindings.join("policy.c"))
        .arg(bindings.join("policy_component_type.o"));
        let mut sources: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("cannot read a C policy folder")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "c") && !is_test_file(p))
            .collect();
        sources.sort();
        cmd.args(&sources).arg("-o").arg(&core);
        run(
            cmd,
            &format!("the C policy {}", dir.display()),
            "Run `scripts/install-test-deps` (it installs clang, lld and wasi-libc).",
        );
        let module = std::fs::read(&core).expect("clang wrote the core module");
        let component = wit_component::ComponentEncoder::default()
            .validate(true)
            .module(&module)
            .and_then(|e| {
                e.adapter(
                    wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                    wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
                )
            })
            .and_then(|e| e.encode())
            .unwrap_or_else(|e| panic!("making {name} a component failed: {e:#}"));
        let path = out.join(format!("{name}.wasm"));
        std::fs::write(&path, component).expect("cannot write a C component");
        built.push(Artifact {
            package: name,
            path,
        });
    }
    built
}

/// A C policy's native unit test (`test_*.c`), not part of the module.
fn is_test_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("test_"))
}

/// `policy.h`, `policy.c` and `policy_component_type.o` for the `policy`
/// world, into `out`.
fn generate_c_bindings(wit: &Path, out: &Path) {
    use wit_bindgen_core::wit_parser::Resolve;
    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_dir(wit)
        .unwrap_or_else(|e| panic!("cannot read {}: {e:#}", wit.display()));
    let world = resolve
        .select_world(&[package], Some("policy"))
        .expect("wit/ defines the policy world");
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .unwrap_or_else(|e| panic!("generating the C bindings failed: {e:#}"));
    for (name, bytes) in files.iter() {
        std::fs::write(out.join(name), bytes).expect("cannot write the C bindings");
    }
}

/// Each `policies/js/<name>/policy.js` with componentize-js. componentize-js
/// reads only the entry file's own folder, so the folder is copied first
/// with its links (`scalewise.js`, the SDK) resolved.
fn build_js_guests(root: &Path, guests_dir: &Path) -> Vec<Artifact> {
    let componentize = root.join("sdk/js/node_modules/.bin/componentize-js");
    let out = guests_dir.join("js");
    let mut built = Vec::new();
    for (name, dir) in policy_dirs(&root.join("policies").join("js"), "policy.js") {
        let staged = out.join("src").join(&name);
        let _ = std::fs::remove_dir_all(&staged);
        std::fs::create_dir_all(&staged).expect("cannot create the JavaScript staging folder");
        for e in std::fs::read_dir(&dir)
            .expect("cannot read a JavaScript policy folder")
            .flatten()
        {
            let from = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".js") && !name.ends_with(".test.js") {
                // fs::copy follows links.
                std::fs::copy(&from, staged.join(e.file_name()))
                    .unwrap_or_else(|err| panic!("cannot copy {}: {err}", from.display()));
            }
        }
        let path = out.join(format!("{name}.wasm"));
        let mut cmd = Command::new(&componentize);
        cmd.arg(staged.join("policy.js"))
            .arg("--wit")
            .arg(root.join("wit"))
            .args(["--world-name", "policy", "-d", "http", "fetch-event", "-o"])
            .arg(&path);
        run(
            cmd,
            &format!("the JavaScript policy {}", dir.display()),
            INSTALL_FIX,
        );
        built.push(Artifact {
            package: name,
            path,
        });
    }
    built
}

/// Re-runs this script when anything under `dir` changes, except the named
/// top-level folders (build outputs).
fn watch(dir: &Path, skip: &[&str]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        println!("cargo::rerun-if-changed={}", dir.display());
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        println!("cargo::rerun-if-changed={}", entry.path().display());
    }
}

/// Fails with the fix when the Wasm target's standard library is missing.
fn check_target_installed() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let libdir = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if !libdir.is_some_and(|d| d.is_dir()) {
        panic!(
            "\n\nThe {TARGET} target is not installed, so the test policies cannot be built.\n\
             Run `rustup target add {TARGET}` and build again.\n\n"
        );
    }
}

/// One built guest module.
struct Artifact {
    package: String,
    path: PathBuf,
}

/// `cargo build --release --target wasm32-wasip2` in `policies/`; returns
/// the `.wasm` files cargo reports.
fn build_guests(policies: &Path, guests_dir: &Path) -> Vec<Artifact> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(policies).args([
        "build",
        "--release",
        "--target",
        TARGET,
        "--message-format=json-render-diagnostics",
    ]);
    // Settings meant for the host build (or for this build script) must not
    // reach the guest build: flags, wrappers (clippy-driver), targets,
    // profiles, and the variables cargo sets for build scripts.
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let leaks = [
            "CARGO_BUILD_",
            "CARGO_PROFILE_",
            "CARGO_ENCODED_",
            "CARGO_TARGET_",
            "CARGO_CFG_",
            "CARGO_FEATURE_",
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
        ]
        .iter()
        .any(|p| key.starts_with(p))
            || matches!(
                key,
                "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "RUSTC_LINKER"
                    | "CLIPPY_ARGS"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_CRATE_NAME"
                    | "TARGET"
                    | "HOST"
                    | "OPT_LEVEL"
                    | "PROFILE"
                    | "DEBUG"
                    | "NUM_JOBS"
                    | "OUT_DIR"
            );
        if leaks {
            cmd.env_remove(key);
        }
    }
    // Set after the clean-up above, which removes any inherited value.
    cmd.env("CARGO_TARGET_DIR", guests_dir);
    let output = cmd
        .output()
        .expect("cannot run cargo to build the test policies");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        panic!(
            "\n\nBuilding the test policies in {} failed:\n{stderr}\n",
            policies.display()
        );
    }
    let mut artifacts = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        // The lib target's name is the package name with `_` for `-`.
        let package = msg["target"]["name"]
            .as_str()
            .unwrap_or_default()
            .replace('_', "-");
        for file in msg["filenames"].as_array().into_iter().flatten() {
            if let Some(path) = file.as_str().filter(|f| f.ends_with(".wasm")) {
                artifacts.push(Artifact {
                    package: package.clone(),
                    path: PathBuf::from(path),
                });
            }
        }
    }
    assert!(
        !artifacts.is_empty(),
        "cargo built no .wasm files in {}:\n{stderr}",
        policies.display()
    );
    artifacts.sort_by(|a, b| a.package.cmp(&b.package));
    artifacts
}

fn write_constants(file: &Path, artifacts: &[Artifact], others: &[Artifact]) {
    let mut code =
        String::from("// Generated by build.rs: the guest modules built from policies/.\n");
    let mut all = String::new();
    for a in others {
        let ident = a.package.to_uppercase().replace('-', "_");
        writeln!(
            code,
            "/// The `{}` module, not written in Rust ({}).\npub const {ident}: &str = {:?};",
            a.package,
            a.path.display(),
            a.path.display().to_string()
        )
        .unwrap();
    }
    for a in artifacts {
        let ident = a.package.to_uppercase().replace('-', "_");
        writeln!(
            code,
            "/// The `{}` module ({}).\npub const {ident}: &str = {:?};",
            a.package,
            a.path.display(),
            a.path.display().to_string()
        )
        .unwrap();
        writeln!(all, "    ({:?}, {ident}),", a.package).unwrap();
    }
    writeln!(
        code,
        "/// Every Rust module: (package name, path).\npub const ALL: &[(&str, &str)] = &[\n{all}];"
    )
    .unwrap();
    std::fs::write(file, code).expect("cannot write artifacts.rs");
}
