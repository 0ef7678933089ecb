//! A test peer behind HTTPS and a bearer token, as a production service
//! the daemon calls often is: its certificate is signed by no authority a
//! system trusts (a private CA's, say), and it answers 401 to a request
//! without the token. What `ca_file` and `bearer_token` are for.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use scalewise::api::tls::{TlsListener, server_config};
use scalewise::config::ApiTls;

/// The token every request must carry.
pub const TOKEN: &str = "s3cret-token";

/// What a client needs to reach a [`serve`]d peer.
#[derive(Debug)]
pub struct Secured {
    /// Where it listens (`https://{addr}`).
    pub addr: SocketAddr,
    /// The PEM certificate to trust (`ca_file`).
    pub ca_file: PathBuf,
    /// A file holding [`TOKEN`] (`bearer_token = { file = ... }`).
    pub token_file: PathBuf,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Secured {
    /// `https://{addr}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }
}

impl Drop for Secured {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `app` over HTTPS on a free loopback port with a fresh
/// self-signed certificate for 127.0.0.1, refusing (401) every request
/// without `Authorization: Bearer TOKEN`. Within a Tokio runtime.
pub async fn serve(app: Router) -> anyhow::Result<Secured> {
    serve_with(app, None).await
}

/// As [`serve`], and the TLS handshake also asks for a client certificate
/// signed by the CA `client_ca_pem` (mutual TLS): a client without one,
/// or with another CA's, is refused before any request.
pub async fn serve_requiring_client_cert(
    app: Router,
    client_ca_pem: &str,
) -> anyhow::Result<Secured> {
    serve_with(app, Some(client_ca_pem)).await
}

async fn serve_with(app: Router, client_ca_pem: Option<&str>) -> anyhow::Result<Secured> {
    let dir = tempfile::tempdir()?;
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
    let tls = ApiTls {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
    };
    std::fs::write(&tls.cert, certified.cert.pem())?;
    std::fs::write(&tls.key, certified.signing_key.serialize_pem())?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n"))?;
    let config = match client_ca_pem {
        None => server_config(&tls).map_err(anyhow::Error::msg)?,
        Some(ca) => mutual_tls_config(&certified, ca)?,
    };
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = tcp.local_addr()?;
    let listener = TlsListener::new(tcp, config)?;
    let app = app.layer(middleware::from_fn(require_token));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(Secured {
        addr,
        ca_file: tls.cert,
        token_file,
        _dir: dir,
        task,
    })
}

async fn require_token(request: Request, next: Next) -> Result<Response, StatusCode> {
    let expected = format!("Bearer {TOKEN}");
    match request.headers().get(header::AUTHORIZATION) {
        Some(value) if value == expected.as_str() => Ok(next.run(request).await),
        _ => Err(StatusCode::UNAUTHORIZED),
    }
}

/// A private CA and a client certificate it signed, for mutual TLS: what a
/// server that asks for client certificates trusts (`ca_pem`), and what a
/// client presents (`cert_pem`, `key_pem`).
#[derive(Debug)]
pub struct ClientCertificate {
    /// The CA's certificate (PEM).
    pub ca_pem: String,
    /// The client's certificate (PEM), signed by the CA.
    pub cert_pem: String,
    /// The client's private key (PEM).
    pub key_pem: String,
}

impl ClientCertificate {
    /// A fresh CA and a client certificate for `name` signed by it.
    pub fn mint(name: &str) -> anyhow::Result<ClientCertificate> {
        use rcgen::{
            BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        };
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![name.to_owned()])?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer)?;
        Ok(ClientCertificate {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The key and the certificate in one PEM (what `reqwest::Identity`
    /// reads).
    pub fn identity_pem(&self) -> String {
        format!("{}{}", self.key_pem, self.cert_pem)
    }

    /// Writes the certificate and the key to `dir` as `client.crt` and
    /// `client.key`; returns their paths.
    pub fn write_to(&self, dir: &std::path::Path) -> std::io::Result<(PathBuf, PathBuf)> {
        let (cert, key) = (dir.join("client.crt"), dir.join("client.key"));
        std::fs::write(&cert, &self.cert_pem)?;
        std::fs::write(&key, &self.key_pem)?;
        Ok((cert, key))
    }
}

/// A server config presenting `certified` and asking every client for a
/// certificate signed by the CA `client_ca_pem`.
fn mutual_tls_config(
    certified: &rcgen::CertifiedKey<rcgen::KeyPair>,
    client_ca_pem: &str,
) -> anyhow::Result<std::sync::Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der())
        .map_err(anyhow::Error::msg)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![certified.cert.der().clone()], key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(std::sync::Arc::new(config))
}
