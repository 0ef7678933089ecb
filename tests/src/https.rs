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
    let config = server_config(&tls).map_err(anyhow::Error::msg)?;
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
