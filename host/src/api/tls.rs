//! HTTPS for the API (`[api] tls`).
//!
//! The certificate chain and key are PEM files, read and checked (the key
//! must go with the certificate) at start and by `scalewise check`. A
//! rotated certificate (cert-manager renewing its Secret, say) applies
//! without a restart: at most once a minute a handshake looks at the files'
//! modification times and, when either changed, reads them again; a pair
//! that does not load is logged and the one in use stays.
//!
//! TLS handshakes run in tasks of their own, each bounded by
//! [`HANDSHAKE_TIMEOUT`], so a client that connects and says nothing never
//! holds up the others; one client has at most [`MAX_PENDING_PER_CLIENT`]
//! of the [`MAX_PENDING`] places (its next connections are closed at once),
//! so that it cannot shut the others out by connecting and saying nothing.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::peers::{PeerPlace, PerPeer};
use crate::config::ApiTls;

/// How long a client may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS connections in their handshake or waiting for the server to take
/// them, at most.
pub const MAX_PENDING: usize = 128;

/// Of those, from one client (an IPv4 address, an IPv6 /64).
pub const MAX_PENDING_PER_CLIENT: usize = 16;

/// How often (at most) the files are looked at for a rotation.
const RECHECK: Duration = Duration::from_secs(60);

pub(crate) fn provider() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// What went wrong reading a private key, without quoting it: the PEM
/// parser's own messages print the line it stopped at (a key whose line
/// breaks were lost is one line: the whole key) into logs and CI output.
fn key_error(error: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match error {
        Error::Io(e) => e.to_string(),
        Error::NoItemsFound => "no private key in it".to_owned(),
        _ => "not a readable PEM private key (are its line breaks intact?)".to_owned(),
    }
}

/// Reads `tls`'s certificate chain and key and checks that they go
/// together. Errors name the setting and the file.
pub fn load(tls: &ApiTls) -> Result<Arc<CertifiedKey>, String> {
    let cert = &tls.cert;
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cert: {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "cert: {}: no certificate in it (a PEM file with `-----BEGIN CERTIFICATE-----`)",
            cert.display()
        ));
    }
    let key = &tls.key;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "key: {}: {} (a PEM private key: PKCS#8, PKCS#1 or SEC1)",
            key.display(),
            key_error(&e)
        )
    })?;
    let certified = CertifiedKey::from_der(chain, private, &provider()).map_err(|e| {
        format!(
            "key: {} does not go with the certificate in {} ({e})",
            key.display(),
            cert.display()
        )
    })?;
    Ok(Arc::new(certified))
}

/// The server's TLS settings for `tls`, with the pair loaded now.
pub fn server_config(tls: &ApiTls) -> Result<Arc<ServerConfig>, String> {
    let resolver = Rotating::new(tls.clone())?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The files' modification times, as last loaded.
type Stamps = (Option<SystemTime>, Option<SystemTime>);

fn stamps(tls: &ApiTls) -> Stamps {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    (modified(&tls.cert), modified(&tls.key))
}

/// The certificate in use, read again when its files change.
#[derive(Debug)]
struct Rotating {
    tls: ApiTls,
    current: ArcSwap<CertifiedKey>,
    /// When the files were last looked at, and their times then.
    checked: Mutex<(Instant, Stamps)>,
}

impl Rotating {
    fn new(tls: ApiTls) -> Result<Rotating, String> {
        let stamps = stamps(&tls);
        let current = load(&tls)?;
        Ok(Rotating {
            tls,
            current: ArcSwap::new(current),
            checked: Mutex::new((Instant::now(), stamps)),
        })
    }

    /// Reads the files again if they changed since they were loaded (looked
    /// at once per `every`).
    fn refresh(&self, every: Duration) {
        // A handshake that finds another one checking does not wait; one
        // that panicked while checking leaves the lock to the next (or no
        // certificate would ever be read again).
        let mut checked = match self.checked.try_lock() {
            Ok(checked) => checked,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        if checked.0.elapsed() < every {
            return;
        }
        let now = stamps(&self.tls);
        checked.0 = Instant::now();
        if now == checked.1 {
            return;
        }
        match load(&self.tls) {
            Ok(pair) => {
                self.current.store(pair);
                checked.1 = now;
                tracing::info!(cert = %self.tls.cert.display(), "The API's TLS certificate was read again.");
            }
            Err(error) => tracing::warn!(
                %error,
                "The API's TLS files changed but do not load; the certificate in use stays."
            ),
        }
    }
}

impl ResolvesServerCert for Rotating {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.refresh(RECHECK);
        Some(self.current.load_full())
    }
}

/// A listener that hands the API's server connections whose TLS handshake
/// is done.
#[derive(Debug)]
pub struct TlsListener {
    /// Handshaken connections, each with its place among the pending ones
    /// (given up once the server takes it, into a place of its own).
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr, Pending)>,
    local: SocketAddr,
    accepting: JoinHandle<()>,
}

/// A connection's place among the pending ones, and its client's.
type Pending = (OwnedSemaphorePermit, PeerPlace);

impl TlsListener {
    /// Accepts on `tcp`, each handshake in a task of its own.
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> io::Result<TlsListener> {
        TlsListener::with_share(tcp, config, MAX_PENDING_PER_CLIENT)
    }

    /// [`TlsListener::new`] with `per_client` pending places for a client.
    fn with_share(
        tcp: TcpListener,
        config: Arc<ServerConfig>,
        per_client: usize,
    ) -> io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (done, ready) = mpsc::channel(64);
        // Handshakes in progress and connections waiting to be served are
        // bounded too, until the server takes each into one of its own
        // places: at most MAX_PENDING + MAX_CONNECTIONS sockets in all,
        // well under the usual 1,024 open files.
        let pending = Arc::new(Semaphore::new(MAX_PENDING));
        let clients = PerPeer::new(per_client);
        let accepting = tokio::spawn(async move {
            loop {
                let Ok(permit) = pending.clone().acquire_owned().await else {
                    return;
                };
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors, say: wait, as axum does.
                        tracing::debug!(%error, "Accepting an API connection failed.");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if done.is_closed() {
                    return;
                }
                let Some(place) = clients.admit(peer.ip()) else {
                    tracing::debug!(%peer, "An API client holds its share of pending TLS connections; its next one is closed.");
                    continue;
                };
                let (acceptor, done) = (acceptor.clone(), done.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            // Waits for the server to take it, not for ever.
                            let handed = tokio::time::timeout(
                                HANDSHAKE_TIMEOUT,
                                done.send((tls, peer, (permit, place))),
                            )
                            .await;
                            if handed.is_err() {
                                tracing::debug!(%peer, "An API connection waited too long to be served.");
                            }
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "A TLS handshake with the API failed.")
                        }
                        Err(_) => tracing::debug!(%peer, "A TLS handshake with the API timed out."),
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            local,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            // The server holds a place of its own for it now.
            Some((tls, peer, _pending)) => (tls, peer),
            // The accepting task ended (it only does when aborted).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for 127.0.0.1 in `dir`: (cert, key) paths.
    fn self_signed(dir: &Path, name: &str) -> ApiTls {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let tls = ApiTls {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&tls.cert, certified.cert.pem()).unwrap();
        std::fs::write(&tls.key, certified.signing_key.serialize_pem()).unwrap();
        tls
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let one = self_signed(dir.path(), "one");
        let two = self_signed(dir.path(), "two");
        load(&one).expect("a matching pair loads");
        let mixed = ApiTls {
            cert: one.cert.clone(),
            key: two.key.clone(),
        };
        let err = load(&mixed).unwrap_err();
        assert!(
            err.contains("two.key does not go with the certificate in") && err.contains("one.crt"),
            "{err}"
        );
    }

    /// A key whose line breaks were lost (pasted into one line) is refused
    /// without the error quoting it: the PEM parser's message holds the
    /// line it stopped at, which here is the whole key.
    #[test]
    fn a_broken_key_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let tls = self_signed(dir.path(), "tls");
        let pem = std::fs::read_to_string(&tls.key).unwrap();
        let body: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();
        for broken in [
            pem.replace('\n', " "),
            pem.replace('\n', "\\n"),
            format!("-----BEGIN PRIVATE KEY-----\n{body}\n"),
        ] {
            std::fs::write(&tls.key, &broken).unwrap();
            let err = load(&tls).unwrap_err();
            assert!(err.starts_with("key: "), "{err}");
            // Neither the base64 nor its bytes as numbers.
            assert!(!err.contains(&body[..24]), "{err}");
            assert!(!err.contains("45, 45"), "bytes listed: {err}");
        }
    }

    #[test]
    fn a_rotated_pair_is_read_again_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let tls = self_signed(dir.path(), "tls");
        let rotating = Rotating::new(tls.clone()).unwrap();
        let first = rotating.current.load_full();
        // Unchanged files: the same pair.
        rotating.refresh(Duration::ZERO);
        assert!(Arc::ptr_eq(&first, &rotating.current.load_full()));
        // Renewed (written as cert-manager does, both files).
        let renewed = self_signed(dir.path(), "renewed");
        std::fs::copy(&renewed.cert, &tls.cert).unwrap();
        std::fs::copy(&renewed.key, &tls.key).unwrap();
        // Not before the interval is up.
        rotating.refresh(Duration::from_secs(3600));
        assert!(Arc::ptr_eq(&first, &rotating.current.load_full()));
        rotating.refresh(Duration::ZERO);
        let second = rotating.current.load_full();
        assert_eq!(second.cert, load(&renewed).unwrap().cert);
        // Half-written: the key is garbage. The renewed pair stays.
        std::fs::write(&tls.key, "-----BEGIN PRIVATE KEY-----\ngarbage\n").unwrap();
        rotating.refresh(Duration::ZERO);
        assert!(Arc::ptr_eq(&second, &rotating.current.load_full()));
    }

    #[test]
    fn files_that_are_not_pem_are_refused_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        std::fs::write(&cert, "not a certificate\n").unwrap();
        std::fs::write(&key, "not a key\n").unwrap();
        let tls = ApiTls {
            cert: cert.clone(),
            key: key.clone(),
        };
        let err = load(&tls).unwrap_err();
        assert!(
            err.starts_with("cert: ") && err.contains("tls.crt"),
            "{err}"
        );
        assert!(err.contains("no certificate"), "{err}");
        let missing = ApiTls {
            cert: dir.path().join("missing.crt"),
            key,
        };
        let err = load(&missing).unwrap_err();
        assert!(err.contains("missing.crt"), "{err}");
    }

    /// A client that connects and never starts its handshake is dropped
    /// once HANDSHAKE_TIMEOUT is up (the clock is tokio's, paused once the
    /// server took the connection: it then moves on whenever every task
    /// waits).
    #[tokio::test]
    async fn a_client_that_says_nothing_is_dropped_after_the_handshake_timeout() {
        use tokio::io::AsyncReadExt as _;
        let dir = tempfile::tempdir().unwrap();
        let config = server_config(&self_signed(dir.path(), "tls")).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let _listener = TlsListener::new(tcp, config).unwrap();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let connected = tokio::time::Instant::now();
        // Real time for the server to accept and start the handshake.
        tokio::time::sleep(Duration::from_millis(200)).await;
        tokio::time::pause();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(60), silent.read(&mut byte))
            .await
            .expect("the server closed the connection");
        assert!(matches!(read, Ok(0)), "{read:?}");
        let waited = connected.elapsed();
        assert!(
            (HANDSHAKE_TIMEOUT..HANDSHAKE_TIMEOUT + Duration::from_secs(1)).contains(&waited),
            "{waited:?}"
        );
    }

    /// A client holding its share of pending places (two here, silent
    /// connections) has its next closed at once; another client's
    /// handshake goes through meanwhile.
    #[tokio::test]
    async fn one_client_cannot_take_every_pending_place() {
        use tokio::io::AsyncReadExt as _;
        let dir = tempfile::tempdir().unwrap();
        let tls = self_signed(dir.path(), "tls");
        let config = server_config(&tls).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut listener = TlsListener::with_share(tcp, config, 2).unwrap();
        let connect_from = |from: &'static str| async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
            socket.connect(addr).await.unwrap()
        };
        let _silent = [
            connect_from("127.0.0.1").await,
            connect_from("127.0.0.1").await,
        ];
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut third = connect_from("127.0.0.1").await;
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), third.read(&mut byte))
            .await
            .expect("a third connection was kept");
        assert!(matches!(read, Ok(0)), "{read:?}");

        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&tls.cert).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let other = connect_from("127.0.0.2").await;
        let handshake = tokio::spawn(async move { connector.connect(name, other).await });
        let (_served, peer) = tokio::time::timeout(
            Duration::from_secs(5),
            axum::serve::Listener::accept(&mut listener),
        )
        .await
        .expect("another client's handshake goes through");
        assert_eq!(peer.ip().to_string(), "127.0.0.2");
        handshake.await.unwrap().unwrap();
    }
}
