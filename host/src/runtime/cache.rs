//! Compiled policy code on disk, by content hash, so a restart or a flip back
//! to an earlier module version skips compiling (tens to thousands of
//! milliseconds) and only deserializes (about a millisecond).
//!
//! Layout: `<cache_dir>/<engine key>/<sha256 of the .wasm>.cwasm`. The engine
//! key is a hash of wasmtime's precompile compatibility hash (target, compiler
//! flags, tunables, features, wasmtime version), so code compiled by another
//! wasmtime or with other settings is never even looked at. Each file carries
//! the sha256 of its artifact (see [`super::precompiled`]); a file that fails
//! that check, or that wasmtime refuses, is deleted and the module compiled
//! again: a damaged cache costs time, never correctness.
//!
//! The folders are created owner-only, and a cache folder others can write
//! to is refused (the runtime then compiles every time), because what is in
//! it becomes executable code.

use std::hash::{Hash as _, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::precompiled;

/// Files kept per engine; the least recently used go first.
const MAX_ENTRIES: usize = 256;
/// Folders of other engines (older versions) untouched this long are removed.
const STALE_ENGINE_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why the cache could not be used; loading goes on without it.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The folder could not be created or read.
    #[error("cannot use the module cache folder {}: {source}", path.display())]
    Folder {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Others than the host's user can write to the folder.
    #[error(
        "the module cache folder {} can be written by other users (mode {mode:o}); \
         compiled code in it would run as policy code, so it is not used (remove it: \
         files put there meanwhile are not to be trusted; it is made again owner-only)",
        path.display()
    )]
    Unsafe {
        /// The folder.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The folder (or the link to it) belongs to another user.
    #[error(
        "the module cache folder {} belongs to uid {owner}, not to this process's user \
         (uid {user}); compiled code in it would run as policy code, so it is not used \
         (point runtime.cache_dir at a folder of this user's)",
        path.display()
    )]
    Foreign {
        /// The folder.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective user.
        user: u32,
    },
    /// A cached file could not be read or written.
    #[error("module cache file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A cached file is damaged or was made for another engine; it was removed.
    #[error("module cache file {}: {message}; removed", path.display())]
    Unusable {
        /// The file.
        path: PathBuf,
        /// `format`, `checksum` or `incompatible`.
        kind: &'static str,
        /// What was wrong.
        message: String,
    },
}

impl CacheError {
    /// A fixed label for this kind of error.
    pub fn kind(&self) -> &'static str {
        match self {
            CacheError::Folder { .. } => "folder",
            CacheError::Unsafe { .. } => "unsafe_folder",
            CacheError::Foreign { .. } => "foreign_folder",
            CacheError::Io { .. } => "io",
            CacheError::Unusable { kind, .. } => kind,
        }
    }
}

/// The cache folder of one engine.
#[derive(Debug)]
pub(super) struct ModuleCache {
    dir: PathBuf,
    /// Where refusals of module versions are remembered ([`Self::refuse`]):
    /// beside the engines' folders, so that a change of engine settings or
    /// of wasmtime does not forget them.
    refused: PathBuf,
}

impl ModuleCache {
    /// Opens (creating it if needed) the folder for `engine`'s code under
    /// `root`, and removes other engines' folders that have not been used
    /// for a week.
    pub(super) fn open(root: &Path, engine: &Engine) -> Result<ModuleCache, CacheError> {
        let folder_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError::Folder { path, source }
        };
        create_private_dir(root).map_err(folder_err(root))?;
        check_private(root)?;
        let key = engine_key(engine);
        let dir = root.join(&key);
        create_private_dir(&dir).map_err(folder_err(&dir))?;
        check_private(&dir)?;
        remove_stale_engines(root, &key);
        Ok(ModuleCache {
            dir,
            refused: root.join("refused"),
        })
    }

    /// The file that remembers a refusal of the module version with sha256
    /// `digest`.
    pub(super) fn refusal_path(&self, digest: &str) -> PathBuf {
        self.refused.join(format!("{digest}.txt"))
    }

    /// Remembers `text` as why the version `digest` was refused, in a
    /// private folder, replacing what was there (a link is replaced, not
    /// followed).
    pub(super) fn refuse(&self, digest: &str, text: &str) -> Result<(), CacheError> {
        create_private_dir(&self.refused).map_err(|source| CacheError::Folder {
            path: self.refused.clone(),
            source,
        })?;
        check_private(&self.refused)?;
        sweep_stray_temporaries(&self.refused);
        let path = self.refusal_path(digest);
        let io = |source| CacheError::Io {
            path: path.clone(),
            source,
        };
        write_atomically(&self.refused, &path, text.as_bytes()).map_err(io)
    }

    /// Why the version `digest` was refused, when a refusal is remembered
    /// in a file of this user's no one else can write (one planted by
    /// someone else, or a link, is not read).
    pub(super) fn refusal(&self, digest: &str) -> Option<String> {
        check_private(&self.refused).ok()?;
        let bytes = read_own(&self.refusal_path(digest)).ok()??;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Forgets a refusal of `digest`; nothing when none is remembered.
    pub(super) fn forget_refusal(&self, digest: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.refusal_path(digest)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// The folder this engine's files are in.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file for the module whose `.wasm` has sha256 `digest` (hex).
    pub(super) fn path_for(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.cwasm"))
    }

    /// The cached component for `digest`: `Ok(None)` when there is none;
    /// an error when there was one but it could not be used (a damaged or
    /// incompatible file is removed, so the next `put` replaces it).
    pub(super) fn get(
        &self,
        engine: &Engine,
        digest: &str,
    ) -> Result<Option<Component>, CacheError> {
        let path = self.path_for(digest);
        let bytes = match read_own(&path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                // Not this user's, or writable by others: planted, not ours.
                let _ = std::fs::remove_file(&path);
                return Err(CacheError::Unusable {
                    path,
                    kind: "foreign",
                    message: "the file is not this user's alone (another owner, a link, or \
                              writable by others)"
                        .into(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CacheError::Io { path, source }),
        };
        match precompiled::decode(engine, &bytes) {
            Ok(component) => {
                // Marks it recently used, for pruning; best effort.
                if let Ok(file) = std::fs::File::options().append(true).open(&path) {
                    let _ = file.set_modified(SystemTime::now());
                }
                Ok(Some(component))
            }
            Err(err) => {
                let _ = std::fs::remove_file(&path);
                Err(CacheError::Unusable {
                    path,
                    kind: err.kind(),
                    message: err.to_string(),
                })
            }
        }
    }

    /// Stores `artifact` (from `Engine::precompile_component`), compiled
    /// from the `.wasm` with sha256 `digest`. Written to a temporary file and renamed, so readers never
    /// see half a file.
    pub(super) fn put(&self, digest: &str, artifact: &[u8]) -> Result<(), CacheError> {
        let bytes = precompiled::encode(artifact);
        let path = self.path_for(digest);
        write_atomically(&self.dir, &path, &bytes).map_err(|source| CacheError::Io {
            path: path.clone(),
            source,
        })?;
        self.prune();
        Ok(())
    }

    /// Keeps at most [`MAX_ENTRIES`] files, removing the least recently
    /// used, and removes temporary files an hour old (left by a process
    /// killed while it wrote).
    fn prune(&self) {
        sweep_stray_temporaries(&self.dir);
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if files.len() <= MAX_ENTRIES {
            return;
        }
        files.sort();
        let excess = files.len() - MAX_ENTRIES;
        for (_, path) in files.into_iter().take(excess) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A short, stable name for everything that makes compiled code usable by
/// `engine`: wasmtime's precompile compatibility hash, fed through sha256
/// (std's hashers are not stable across Rust versions).
fn engine_key(engine: &Engine) -> String {
    struct Sha(Sha256);
    impl Hasher for Sha {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            // Never called: the digest is taken whole below.
            0
        }
    }
    let mut hasher = Sha(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    // The cache file layout is part of the key too.
    hasher.write(b"scalewise-cwasm1");
    hex::encode(&hasher.0.finalize()[..8])
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn check_private(dir: &Path) -> Result<(), CacheError> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let user = rustix::process::geteuid().as_raw();
    let folder_err = |source| CacheError::Folder {
        path: dir.to_path_buf(),
        source,
    };
    // The link itself (another user's link in /tmp to a folder of ours
    // would let them swap it), then what it leads to.
    let link = std::fs::symlink_metadata(dir).map_err(folder_err)?;
    let meta = std::fs::metadata(dir).map_err(folder_err)?;
    for owner in [link.uid(), meta.uid()] {
        if owner != user && owner != 0 {
            return Err(CacheError::Foreign {
                path: dir.to_path_buf(),
                owner,
                user,
            });
        }
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(CacheError::Unsafe {
            path: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_dir: &Path) -> Result<(), CacheError> {
    Ok(())
}

/// The bytes of `path` when it is a regular file of this user's that no one
/// else can write (not followed if it is a link); `None` when it is not.
#[cfg(unix)]
fn read_own(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read as _;
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let mut file = match std::fs::File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
    {
        Ok(file) => file,
        // A link (ELOOP under O_NOFOLLOW).
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let user = rustix::process::geteuid().as_raw();
    if !meta.is_file() || meta.uid() != user || meta.mode() & 0o022 != 0 {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

#[cfg(not(unix))]
fn read_own(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    std::fs::read(path).map(Some)
}

/// Removes the temporary files in `dir` an hour old (left by a process
/// killed while it wrote).
fn sweep_stray_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let hour_ago = SystemTime::now() - std::time::Duration::from_secs(3600);
    let stray = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "tmp"))
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < hour_ago)
        });
    for entry in stray {
        let _ = std::fs::remove_file(entry.path());
    }
}

/// Writes `bytes` to `path` through an owner-only temporary file of a
/// random name in `dir` (beside it), renamed into place: readers never see
/// half a file (nor an empty one, on a full disk), a link at `path` is
/// replaced rather than followed, and two processes writing one name (two
/// daemons sharing the cache, both pid 1 in their containers) never touch
/// each other's temporary file.
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Removes sibling engine folders (and stray temporary files in them) not
/// used for [`STALE_ENGINE_AGE`]: code for a wasmtime this host no longer is.
fn remove_stale_engines(root: &Path, current: &str) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_engine_dir = name.len() == 16 && name.chars().all(|c| c.is_ascii_hexdigit());
        if !is_engine_dir || name == current {
            continue;
        }
        let newest = std::fs::read_dir(entry.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.metadata().ok()?.modified().ok())
            .max();
        let idle = newest
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age > STALE_ENGINE_AGE);
        if idle {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(fuel: bool) -> Engine {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true).consume_fuel(fuel);
        Engine::new(&config).unwrap()
    }

    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    #[test]
    fn engines_with_other_settings_use_other_folders() {
        assert_eq!(engine_key(&engine(false)), engine_key(&engine(false)));
        assert_ne!(engine_key(&engine(false)), engine_key(&engine(true)));
        assert_eq!(engine_key(&engine(false)).len(), 16);
    }

    /// A write goes through a temporary file of its own, removed once
    /// renamed; one a killed process left is removed once an hour old
    /// (a fresh one may be another daemon's, still writing).
    #[test]
    fn stray_temporary_files_are_removed_once_an_hour_old() {
        let root = tempfile::tempdir().unwrap();
        let cache = ModuleCache::open(&root.path().join("cache"), &engine(false)).unwrap();
        let stray = |name: &str, age_s: u64| {
            let path = cache.dir.join(name);
            let file = std::fs::File::create(&path).unwrap();
            file.set_modified(SystemTime::now() - std::time::Duration::from_secs(age_s))
                .unwrap();
            path
        };
        let old = stray(".d0.1.0.tmp", 2 * 3600);
        let fresh = stray(".d0.2.0.tmp", 60);
        cache.put("d1", b"code").unwrap();
        assert!(!old.exists());
        assert!(fresh.exists());
        let mut left: Vec<String> = std::fs::read_dir(&cache.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".d0.2.0.tmp".to_owned(), "d1.cwasm".to_owned()]);
        // Refusals' too.
        cache.refuse("d2", "then\nwhy").unwrap();
        let old = cache.refused.join(".d2.1.0.tmp");
        let file = std::fs::File::create(&old).unwrap();
        file.set_modified(SystemTime::now() - std::time::Duration::from_secs(7200))
            .unwrap();
        cache.refuse("d3", "then\nwhy").unwrap();
        assert!(!old.exists());
    }

    /// A refusal is written in a private folder and read only from a file
    /// of this user's: a link planted where it goes is neither followed
    /// when one is written (the file it leads to is untouched) nor read.
    #[cfg(unix)]
    #[test]
    fn refusals_are_private_and_links_are_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let cache = ModuleCache::open(&root.path().join("cache"), &engine(false)).unwrap();
        assert_eq!(cache.refusal("d1"), None);
        cache.refuse("d1", "then\nwhy").unwrap();
        assert_eq!(cache.refusal("d1").as_deref(), Some("then\nwhy"));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&cache.refused)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");

        let victim = root.path().join("precious.txt");
        std::fs::write(&victim, "keep me").unwrap();
        std::os::unix::fs::symlink(&victim, cache.refusal_path("d2")).unwrap();
        assert_eq!(cache.refusal("d2"), None, "a link is not read");
        cache.refuse("d2", "refused").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
        assert_eq!(cache.refusal("d2").as_deref(), Some("refused"));

        cache.forget_refusal("d1").unwrap();
        cache.forget_refusal("d1").unwrap();
        assert_eq!(cache.refusal("d1"), None);
    }

    #[test]
    fn put_then_get_and_a_damaged_file_is_removed() {
        let root = tempfile::tempdir().unwrap();
        let engine = engine(false);
        let cache = ModuleCache::open(&root.path().join("cache"), &engine).unwrap();
        assert!(cache.get(&engine, "abc").unwrap().is_none());
        let artifact = engine.precompile_component(EMPTY_COMPONENT).unwrap();
        cache.put("abc", &artifact).unwrap();
        assert!(cache.get(&engine, "abc").unwrap().is_some());

        let path = cache.path_for("abc");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let err = cache.get(&engine, "abc").unwrap_err();
        assert_eq!(err.kind(), "checksum", "{err}");
        assert!(!path.exists(), "a damaged file is removed");
        assert!(cache.get(&engine, "abc").unwrap().is_none());
    }

    #[cfg(unix)]
    #[test]
    fn a_folder_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("shared");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ModuleCache::open(&dir, &engine(false)).unwrap_err();
        assert_eq!(err.kind(), "unsafe_folder", "{err}");
        assert!(err.to_string().contains("remove it"), "{err}");
    }

    /// Another user's folder (one planted in /tmp before the daemon first
    /// ran), or a link to ours they own, is refused; a cached file another
    /// user owns or can write, or a link, is removed, never run.
    #[cfg(unix)]
    #[test]
    fn what_another_user_owns_or_can_write_is_not_trusted() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = tempfile::tempdir().unwrap();
        let engine = engine(false);
        let cache = ModuleCache::open(&root.path().join("cache"), &engine).unwrap();
        let artifact = engine.precompile_component(EMPTY_COMPONENT).unwrap();
        cache.put("abc", &artifact).unwrap();
        let path = cache.path_for("abc");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = cache.get(&engine, "abc").unwrap_err();
        assert_eq!(err.kind(), "foreign", "{err}");
        assert!(!path.exists(), "removed");

        cache.put("abc", &artifact).unwrap();
        let elsewhere = root.path().join("elsewhere.cwasm");
        std::fs::rename(&path, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        let err = cache.get(&engine, "abc").unwrap_err();
        assert_eq!(err.kind(), "foreign", "a link: {err}");

        // Owned by another user: only root can make one here.
        if rustix::process::geteuid().is_root() {
            let theirs = root.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
            let nobody = rustix::process::Uid::from_raw(65534);
            rustix::fs::chown(&theirs, Some(nobody), None).unwrap();
            let err = ModuleCache::open(&theirs, &engine).unwrap_err();
            assert_eq!(err.kind(), "foreign_folder", "{err}");
            assert!(err.to_string().contains("belongs to uid 65534"), "{err}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn folders_are_created_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = tempfile::tempdir().unwrap();
        let engine = engine(false);
        let cache = ModuleCache::open(&root.path().join("a/b"), &engine).unwrap();
        for dir in [root.path().join("a/b"), cache.dir().to_path_buf()] {
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", dir.display());
        }
    }
}
