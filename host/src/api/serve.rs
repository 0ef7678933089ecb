//! Serving the API's router on a listener, with the limits axum's own
//! `serve` does not set: HTTP/1 only (the API has no use for HTTP/2, whose
//! connections have no idle timeout); a client must send its request's
//! headers within [`HEADER_READ_TIMEOUT`] (an idle keep-alive connection is
//! closed after as long); a connection lasts [`MAX_CONNECTION_LIFE`] at most
//! (a client that never reads its answer); and at most [`MAX_CONNECTIONS`]
//! connections are served at once (the next wait in the listen backlog), at
//! most [`MAX_CONNECTIONS_PER_CLIENT`] of them from one client (its next are
//! closed at once). A client that connects and sends a byte every few
//! seconds (slowloris) therefore holds one connection for 30 s at most,
//! many of them cannot take the file descriptors the journal, the sources
//! and the actuators need, and one client cannot shut the others out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// How long a client may take to send a request's headers, and how long an
/// idle keep-alive connection stays open (Prometheus scraping every 15 s
/// keeps its connection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 512;

/// Connections served at once from one client (an IPv4 address, an IPv6
/// /64): a dashboard opens a few, a scraper one.
pub const MAX_CONNECTIONS_PER_CLIENT: usize = 64;

/// The longest a connection is served, keep-alive included: a dashboard or
/// a scraper reconnects after it.
pub const MAX_CONNECTION_LIFE: Duration = Duration::from_secs(300);

/// How long requests in progress may finish once the API stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` until `stop` is cancelled, then lets the
/// requests in progress finish (for a few seconds at most). Each request
/// carries its peer's address as [`ConnectInfo`] (the write guard reads it).
pub async fn serve<L>(listener: L, router: Router, stop: CancellationToken)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let limits = Limits {
        header_read_timeout: HEADER_READ_TIMEOUT,
        life: MAX_CONNECTION_LIFE,
        connections: MAX_CONNECTIONS,
        per_client: MAX_CONNECTIONS_PER_CLIENT,
    };
    serve_with(listener, router, stop, limits).await;
}

/// What [`serve`] bounds (smaller in tests).
#[derive(Debug, Clone, Copy)]
struct Limits {
    header_read_timeout: Duration,
    life: Duration,
    connections: usize,
    per_client: usize,
}

async fn serve_with<L>(mut listener: L, router: Router, stop: CancellationToken, limits: Limits)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let slots = Arc::new(Semaphore::new(limits.connections));
    let clients = super::peers::PerPeer::new(limits.per_client);
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        let slot = tokio::select! {
            _ = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (io, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Some(place) = clients.admit(peer.ip()) else {
            tracing::debug!(%peer, "An API client holds its share of connections; its next one is closed.");
            continue;
        };
        let service = router
            .clone()
            .map_request(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
        let connection = builder
            .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        let life = limits.life;
        tokio::spawn(async move {
            match tokio::time::timeout(life, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "An API connection ended with an error.")
                }
                Err(_) => tracing::debug!(%peer, "An API connection was closed at its time limit."),
            }
            // The client's place first: the slot lets the next connection
            // in, which may be this client's.
            drop((place, slot));
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("Some API requests did not finish before the API stopped.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};

    async fn request(addr: SocketAddr) -> String {
        request_from(addr, "127.0.0.1").await
    }

    /// Connects to `addr` from the loopback address `from` (any 127.x).
    async fn connect_from(addr: SocketAddr, from: &str) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        socket.connect(addr).await.unwrap()
    }

    async fn request_from(addr: SocketAddr, from: &str) -> String {
        let mut stream = connect_from(addr, from).await;
        stream
            .write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    /// Serves a route answering each request with its peer's address, on a
    /// free loopback port, under `limits`, until the token is cancelled.
    async fn serving(
        limits: Limits,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }),
        );
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve_with(listener, router, stop.clone(), limits));
        (addr, stop, server)
    }

    #[tokio::test]
    async fn slow_clients_are_cut_off_and_connections_are_capped() {
        let (addr, stop, server) = serving(Limits {
            header_read_timeout: Duration::from_millis(300),
            life: Duration::from_secs(20),
            connections: 2,
            per_client: 2,
        })
        .await;
        // A request is answered, with its peer's address.
        assert!(request(addr).await.ends_with("127.0.0.1"));

        // HTTP/2 is refused at once (its connections would idle for ever).
        let mut h2 = TcpStream::connect(addr).await.unwrap();
        h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), h2.read_to_end(&mut rest))
            .await
            .expect("an HTTP/2 client is turned away")
            .unwrap();
        drop(h2);
        // A client that never finishes its headers and one that sends
        // nothing at all take both slots; a third waits, and is answered
        // once they are cut off.
        let mut slow = Vec::new();
        for first in [&b"GET /peer HTTP/1.1\r\n"[..], b""] {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(first).await.unwrap();
            slow.push(stream);
        }
        let started = std::time::Instant::now();
        // Within the header timeout of each (0.3 s), not their 20 s life.
        let third = tokio::time::timeout(Duration::from_secs(10), request(addr))
            .await
            .expect("answered once the slow clients were cut off");
        assert!(third.ends_with("127.0.0.1"), "{third}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        for mut stream in slow {
            let mut rest = Vec::new();
            // Closed by the server (an error answer, then end of stream).
            let read =
                tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
            assert!(read.is_ok(), "a slow client's connection stays open");
        }
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server stops")
            .unwrap();
    }

    /// A client holding its share of connections (two here, silent ones
    /// that would be kept 20 s) has its next closed at once, while another
    /// client is served; a place it gives back is its again.
    #[tokio::test]
    async fn one_client_cannot_take_every_connection() {
        let (addr, stop, server) = serving(Limits {
            header_read_timeout: Duration::from_secs(20),
            life: Duration::from_secs(20),
            connections: 8,
            per_client: 2,
        })
        .await;
        let mut silent = vec![
            connect_from(addr, "127.0.0.1").await,
            connect_from(addr, "127.0.0.1").await,
        ];
        // Served in turn: the two are the server's before the third.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut third = connect_from(addr, "127.0.0.1").await;
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a third connection was kept");
        let other = tokio::time::timeout(Duration::from_secs(5), request_from(addr, "127.0.0.2"))
            .await
            .expect("another client is served");
        assert!(other.ends_with("127.0.0.2"), "{other}");
        drop(silent.pop());
        let again = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let mut stream = connect_from(addr, "127.0.0.1").await;
                stream
                    .write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await
                    .unwrap();
                let mut answer = String::new();
                let _ = stream.read_to_string(&mut answer).await;
                if !answer.is_empty() {
                    return answer;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("served once a place was given back");
        assert!(again.ends_with("127.0.0.1"), "{again}");
        stop.cancel();
        drop(silent);
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server stops")
            .unwrap();
    }
}
