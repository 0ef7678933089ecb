//! The TLS settings of an outbound HTTP client: `ca_file`, certificates it
//! trusts besides the system's, and `client_cert` with `client_key`, the
//! certificate it presents to a server that asks for one (mutual TLS).
//! Clients built from such files are built again when the files change
//! ([`Rebuilt`]), so a certificate cert-manager renews is picked up without a
//! restart or a reload.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

/// How often a client's TLS files are looked at for a change.
pub const TLS_RECHECK: Duration = Duration::from_secs(60);

/// An outbound client's TLS files, as configured (already resolved against
/// the config's folder).
#[derive(Debug, Clone, Copy, Default)]
pub struct TlsFiles<'a> {
    /// Certificates to trust besides the system's.
    pub ca_file: Option<&'a Path>,
    /// The client certificate (PEM, the chain after it if any).
    pub client_cert: Option<&'a Path>,
    /// The client certificate's private key (PEM).
    pub client_key: Option<&'a Path>,
}

impl TlsFiles<'_> {
    /// The files set, to watch for changes.
    fn paths(&self) -> Vec<PathBuf> {
        [self.ca_file, self.client_cert, self.client_key]
            .into_iter()
            .flatten()
            .map(Path::to_path_buf)
            .collect()
    }

    /// Owned copies of the paths, for a client that builds itself again.
    pub fn owned(&self) -> OwnedTlsFiles {
        OwnedTlsFiles {
            ca_file: self.ca_file.map(Path::to_path_buf),
            client_cert: self.client_cert.map(Path::to_path_buf),
            client_key: self.client_key.map(Path::to_path_buf),
        }
    }
}

/// [`TlsFiles`] with owned paths.
#[derive(Debug, Clone, Default)]
pub struct OwnedTlsFiles {
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
}

impl OwnedTlsFiles {
    /// Borrowed, as [`tls_configured`] takes them.
    pub fn as_files(&self) -> TlsFiles<'_> {
        TlsFiles {
            ca_file: self.ca_file.as_deref(),
            client_cert: self.client_cert.as_deref(),
            client_key: self.client_key.as_deref(),
        }
    }
}

/// Reads the client certificate `cert` and its private key `key` (PEM
/// files) as an identity to present. Errors start with the setting at
/// fault (`client_cert: ...`, `client_key: ...`) and name the file.
pub fn read_identity(cert: &Path, key: &Path) -> Result<reqwest::Identity, String> {
    let cert_pem =
        std::fs::read(cert).map_err(|e| format!("client_cert: {}: {e}", cert.display()))?;
    let key_pem = std::fs::read(key).map_err(|e| format!("client_key: {}: {e}", key.display()))?;
    if !contains(&cert_pem, b"-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "client_cert: {}: no certificate in it (a PEM file with `-----BEGIN CERTIFICATE-----`)",
            cert.display()
        ));
    }
    if contains(&key_pem, b"ENCRYPTED PRIVATE KEY-----") {
        return Err(format!(
            "client_key: {}: the key is encrypted; give it unencrypted (a Secret's tls.key is)",
            key.display()
        ));
    }
    if !contains(&key_pem, b"PRIVATE KEY-----") {
        return Err(format!(
            "client_key: {}: no private key in it (a PEM file with `-----BEGIN PRIVATE KEY-----`, \
             or an RSA or EC one)",
            key.display()
        ));
    }
    // Parsed and matched as a server's pair is (the API's `[api.tls]`), so
    // a key that does not belong is refused with the config rather than
    // at the first request; no client is built for it.
    let pair = crate::config::ApiTls {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    };
    crate::api::tls::load(&pair).map_err(|e| {
        if let Some(rest) = e.strip_prefix("cert: ") {
            format!("client_cert: {rest}")
        } else if let Some(rest) = e.strip_prefix("key: ") {
            format!("client_key: {rest}")
        } else {
            e
        }
    })?;
    let mut pem = key_pem;
    pem.push(b'\n');
    pem.extend_from_slice(&cert_pem);
    reqwest::Identity::from_pem(&pem).map_err(|e| {
        format!(
            "client_key: {} with client_cert {}: {}",
            key.display(),
            cert.display(),
            crate::outbound::error_chain(&e)
        )
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `builder` with `files` applied: trusting `ca_file`'s certificates as
/// well as the system's, presenting the client certificate. Errors start
/// with the setting at fault. A client certificate needs its key and the
/// other way round.
pub fn tls_configured(
    builder: reqwest::ClientBuilder,
    files: TlsFiles<'_>,
) -> Result<reqwest::ClientBuilder, String> {
    let builder = trusting(builder, files.ca_file)?;
    match (files.client_cert, files.client_key) {
        (None, None) => Ok(builder),
        (Some(cert), Some(key)) => Ok(builder.identity(read_identity(cert, key)?)),
        (Some(_), None) => {
            Err("client_cert: given without client_key (the certificate's private key)".into())
        }
        (None, Some(_)) => {
            Err("client_key: given without client_cert (the certificate it belongs to)".into())
        }
    }
}

/// A client (`T`) built from TLS files, built again when one of them
/// changes: looked at no more than every [`TLS_RECHECK`], when the client
/// is asked for. A build that fails (a certificate written before its key)
/// keeps the client in use, is logged, and is tried again when the files
/// change again.
pub struct Rebuilt<T> {
    current: ArcSwap<T>,
    /// `None` when no file is set: nothing changes.
    watch: Option<Watch>,
    build: Box<dyn Fn() -> Result<T, String> + Send + Sync>,
    /// Names the client in the log (`sources.prom`, `notifications[0]`).
    what: String,
}

struct Watch {
    paths: Vec<PathBuf>,
    /// When the files were last looked at, and their modification times
    /// as the client in use was built from.
    checked: Mutex<(Instant, Vec<Option<SystemTime>>)>,
}

impl<T> std::fmt::Debug for Rebuilt<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rebuilt")
            .field("what", &self.what)
            .field("files", &self.watch.as_ref().map(|w| &w.paths))
            .finish_non_exhaustive()
    }
}

/// The files, for the log: which client they belong to shows in them.
fn shown(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn modified(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

impl<T> Rebuilt<T> {
    /// Builds the client once with `build` (an error is returned as is),
    /// and again whenever `files` change.
    pub fn new(
        what: impl Into<String>,
        files: TlsFiles<'_>,
        build: impl Fn() -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let paths = files.paths();
        let stamps = modified(&paths);
        let first = build()?;
        Ok(Rebuilt {
            current: ArcSwap::from_pointee(first),
            watch: (!paths.is_empty()).then(|| Watch {
                paths,
                checked: Mutex::new((Instant::now(), stamps)),
            }),
            build: Box::new(build),
            what: what.into(),
        })
    }

    /// The client to use now.
    pub fn get(&self) -> Arc<T> {
        if let Some(watch) = &self.watch {
            self.recheck(watch, false);
        }
        self.current.load_full()
    }

    fn recheck(&self, watch: &Watch, now_anyway: bool) {
        let mut checked = match watch.checked.try_lock() {
            Ok(checked) => checked,
            // A build that panicked: the times are still right.
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            // Another request is looking; this one uses the client in use.
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        let now = Instant::now();
        if !now_anyway && now.duration_since(checked.0) < TLS_RECHECK {
            return;
        }
        checked.0 = now;
        let stamps = modified(&watch.paths);
        if stamps == checked.1 {
            return;
        }
        // Tried once for these files, whatever comes of it (a build that
        // panics is not tried again every minute).
        checked.1 = stamps;
        match (self.build)() {
            Ok(client) => {
                self.current.store(Arc::new(client));
                tracing::info!(client = %self.what, files = %shown(&watch.paths), "TLS files changed; the client now uses them.");
            }
            Err(err) => {
                tracing::warn!(client = %self.what, files = %shown(&watch.paths), error = %err, "TLS files changed but cannot be used; the client keeps the ones it had.");
            }
        }
    }

    /// Looks at the files now, whenever it last did (tests).
    #[doc(hidden)]
    pub fn recheck_now(&self) {
        if let Some(watch) = &self.watch {
            self.recheck(watch, true);
        }
    }
}

/// Reads the PEM certificates in `path` (at least one). Errors name the
/// file (the caller names the setting).
pub fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no certificate in it (a PEM file with `-----BEGIN CERTIFICATE-----`)",
            path.display()
        ));
    }
    Ok(certs)
}

/// `builder`, trusting `ca_file`'s certificates as well as the system's.
pub fn trusting(
    builder: reqwest::ClientBuilder,
    ca_file: Option<&Path>,
) -> Result<reqwest::ClientBuilder, String> {
    Ok(match ca_file {
        None => builder,
        Some(path) => {
            builder.tls_certs_merge(read_ca_file(path).map_err(|e| format!("ca_file: {e}"))?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate and its key, as PEM.
    fn pair() -> (String, String) {
        let certified = rcgen::generate_simple_self_signed(vec!["client".to_owned()]).unwrap();
        (certified.cert.pem(), certified.signing_key.serialize_pem())
    }

    #[test]
    fn a_client_identity_is_read_or_refused_naming_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let (cert_pem, key_pem) = pair();
        std::fs::write(&cert, &cert_pem).unwrap();
        std::fs::write(&key, &key_pem).unwrap();
        read_identity(&cert, &key).expect("a certificate and its key");

        let err = read_identity(&dir.path().join("none.pem"), &key).unwrap_err();
        assert!(
            err.starts_with("client_cert: ") && err.contains("none.pem"),
            "{err}"
        );
        let err = read_identity(&cert, &dir.path().join("none.pem")).unwrap_err();
        assert!(
            err.starts_with("client_key: ") && err.contains("none.pem"),
            "{err}"
        );
        // Swapped: the key file holds the certificate and the other way round.
        let err = read_identity(&key, &cert).unwrap_err();
        assert!(
            err.starts_with("client_cert: ") && err.contains("no certificate"),
            "{err}"
        );
        std::fs::write(&key, &cert_pem).unwrap();
        let err = read_identity(&cert, &key).unwrap_err();
        assert!(
            err.starts_with("client_key: ") && err.contains("no private key"),
            "{err}"
        );

        // A key of another certificate; an encrypted key.
        let (_, other_key) = pair();
        std::fs::write(&key, &other_key).unwrap();
        let err = read_identity(&cert, &key).unwrap_err();
        assert!(
            err.starts_with("client_key: ") && err.contains("does not go with the certificate"),
            "{err}"
        );
        std::fs::write(
            &key,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = read_identity(&cert, &key).unwrap_err();
        assert!(
            err.starts_with("client_key: ") && err.contains("encrypted"),
            "{err}"
        );

        let half = TlsFiles {
            client_cert: Some(&cert),
            ..TlsFiles::default()
        };
        let err = tls_configured(reqwest::Client::builder(), half).unwrap_err();
        assert!(
            err.starts_with("client_cert: given without client_key"),
            "{err}"
        );
        let half = TlsFiles {
            client_key: Some(&key),
            ..TlsFiles::default()
        };
        let err = tls_configured(reqwest::Client::builder(), half).unwrap_err();
        assert!(
            err.starts_with("client_key: given without client_cert"),
            "{err}"
        );
    }

    /// A client built from files is built again when they change, and keeps
    /// what it had when the new files cannot be used.
    #[test]
    fn a_client_is_built_again_when_its_files_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "one").unwrap();
        let files = TlsFiles {
            ca_file: Some(&path),
            ..TlsFiles::default()
        };
        let read = path.clone();
        let built = Rebuilt::new("test", files, move || {
            match std::fs::read_to_string(&read).map_err(|e| e.to_string())? {
                bad if bad == "bad" => Err("cannot be used".to_owned()),
                good => Ok(good),
            }
        })
        .unwrap();
        assert_eq!(*built.get(), "one");
        // Not looked at again within a minute.
        let stamp = |when: u64| {
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(when))
                .unwrap();
        };
        std::fs::write(&path, "two").unwrap();
        stamp(1_000);
        assert_eq!(*built.get(), "one");
        built.recheck_now();
        assert_eq!(*built.get(), "two");
        std::fs::write(&path, "bad").unwrap();
        stamp(2_000);
        built.recheck_now();
        assert_eq!(*built.get(), "two", "kept");
        std::fs::write(&path, "three").unwrap();
        stamp(3_000);
        built.recheck_now();
        assert_eq!(*built.get(), "three");
        // Without files nothing is watched.
        let fixed = Rebuilt::new("fixed", TlsFiles::default(), || Ok(1)).unwrap();
        fixed.recheck_now();
        assert_eq!(*fixed.get(), 1);
    }

    #[test]
    fn a_file_without_certificates_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "nothing here\n").unwrap();
        let err = read_ca_file(&path).unwrap_err();
        assert!(
            err.contains("ca.pem") && err.contains("no certificate"),
            "{err}"
        );
        let err = read_ca_file(&dir.path().join("missing.pem")).unwrap_err();
        assert!(err.contains("missing.pem"), "{err}");
        let certified = rcgen::generate_simple_self_signed(vec!["ca".to_owned()]).unwrap();
        std::fs::write(&path, certified.cert.pem()).unwrap();
        assert_eq!(read_ca_file(&path).unwrap().len(), 1);
    }
}
