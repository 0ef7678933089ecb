//! The named set of loaded policy modules: every `*.wasm` in the policy folder.
//!
//! Readers take an [`Arc<Snapshot>`] and never wait: the set is swapped
//! whole (an `ArcSwap`), which is what hot reload will build on. A module
//! that fails to load is recorded in [`Snapshot::failures`] and never stops
//! the others from loading.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::clock::wall_clock_ms;
use crate::runtime::{LoadError, PolicyModule, Runtime};

/// The loaded modules at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Modules that loaded, by name (file stem).
    pub modules: BTreeMap<String, PolicyModule>,
    /// Modules that did not, by name, with why.
    pub failures: BTreeMap<String, LoadFailure>,
}

/// Why a module file did not load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadFailure {
    /// The module file.
    pub path: PathBuf,
    /// A fixed label ([`LoadError::kind`]).
    pub kind: &'static str,
    /// The full error.
    pub error: String,
    /// When the load was tried (wall clock, ms since the Unix epoch).
    pub at_ms: i64,
}

impl LoadFailure {
    fn new(path: &Path, err: &LoadError) -> Self {
        LoadFailure {
            path: path.to_path_buf(),
            kind: err.kind(),
            error: err.to_string(),
            at_ms: wall_clock_ms(),
        }
    }
}

/// Why the policy folder could not be read at all.
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
}

impl RegistryError {
    /// A fixed label for this kind of error.
    pub fn kind(&self) -> &'static str {
        match self {
            RegistryError::MissingDir(_) => "missing_dir",
            RegistryError::ReadDir { .. } => "read_dir",
        }
    }
}

/// The policy modules of one folder, loaded by one runtime.
#[derive(Debug)]
pub struct Registry {
    runtime: Runtime,
    dir: PathBuf,
    current: ArcSwap<Snapshot>,
}

impl Registry {
    /// Loads every `*.wasm` file in `dir` (not recursively), compiling in
    /// parallel. A module that fails goes to [`Snapshot::failures`].
    pub fn load_dir(runtime: Runtime, dir: &Path) -> Result<Registry, RegistryError> {
        let files = module_files(dir)?;
        let snapshot = load_all(&runtime, &files);
        for (name, failure) in &snapshot.failures {
            tracing::warn!(
                module = %name,
                path = %failure.path.display(),
                kind = failure.kind,
                error = %failure.error,
                "A policy module failed to load; scalers that use it will hold."
            );
        }
        tracing::info!(
            dir = %dir.display(),
            loaded = snapshot.modules.len(),
            failed = snapshot.failures.len(),
            "Loaded the policy folder."
        );
        Ok(Registry {
            runtime,
            dir: dir.to_path_buf(),
            current: ArcSwap::from_pointee(snapshot),
        })
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
}

/// The `*.wasm` files directly in `dir`, sorted by name.
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
        // `is_file` follows symlinks, as the Kubernetes ConfigMap layout needs.
        if path.extension().is_some_and(|e| e == "wasm") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Loads `files` on up to as many threads as there are cores.
fn load_all(runtime: &Runtime, files: &[PathBuf]) -> Snapshot {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(files.len().max(1));
    let chunk = files.len().div_ceil(threads).max(1);
    let results: Vec<(PathBuf, Result<PolicyModule, LoadError>)> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|p| (p.clone(), runtime.load_file(p)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut snapshot = Snapshot::default();
    for (path, result) in results {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        match result {
            Ok(module) => {
                snapshot.modules.insert(name, module);
            }
            Err(err) => {
                snapshot
                    .failures
                    .insert(name, LoadFailure::new(&path, &err));
            }
        }
    }
    snapshot
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
        let rt = Runtime::new(RuntimeLimits::default()).unwrap();
        let reg = Registry::load_dir(rt, dir.path()).unwrap();
        let snap = reg.snapshot();
        assert!(snap.modules.is_empty());
        assert_eq!(
            snap.failures.keys().collect::<Vec<_>>(),
            ["core", "junk"],
            "txt files are not modules"
        );
        assert_eq!(snap.failures["junk"].kind, "not_a_component");
        assert!(reg.get("junk").is_none());
    }
}
