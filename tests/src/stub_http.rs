//! Small HTTP and TCP peers that misbehave on purpose, for testing clients:
//! a server that answers a fixed response and records each request, a
//! proxy that counts the queries passing through it, a listener that never
//! answers, and a port nobody listens on.
//!
//! Each runs as a task on the calling test's runtime and stops with it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

/// A fixed answer served to every request.
#[derive(Debug, Clone)]
pub struct Canned {
    /// The status code.
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
    /// Other headers (`Retry-After`, say).
    pub headers: Vec<(&'static str, String)>,
}

impl Canned {
    /// A successful Prometheus instant-query answer: one label-less sample.
    pub fn prometheus_sample(timestamp_s: f64, value: f64) -> Canned {
        Canned {
            status: 200,
            content_type: "application/json",
            body: format!(
                r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[{timestamp_s},"{value}"]}}]}}}}"#
            ),
            headers: Vec::new(),
        }
    }

    /// A plain-text error, as a proxy in front of Prometheus sends.
    pub fn text_error(status: u16, body: &str) -> Canned {
        Canned {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.to_owned(),
            headers: Vec::new(),
        }
    }
}

/// A server that answers every request with one [`Canned`] response (or a
/// sequence of them) and keeps the headers and body of every request it got.
#[derive(Debug)]
pub struct RecordingServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Received>>>,
}

/// One request a [`RecordingServer`] got.
#[derive(Debug, Clone)]
struct Received {
    uri: String,
    headers: HeaderMap,
    body: String,
}

impl RecordingServer {
    /// Starts serving `answer` on a free loopback port.
    pub async fn start(answer: Canned) -> anyhow::Result<RecordingServer> {
        RecordingServer::start_sequence(vec![answer]).await
    }

    /// Starts serving `answers` in turn, one per request, the last one to
    /// every request after (a webhook that fails, then recovers).
    pub async fn start_sequence(answers: Vec<Canned>) -> anyhow::Result<RecordingServer> {
        anyhow::ensure!(!answers.is_empty(), "no answer to serve");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let state = (Arc::new(answers), requests.clone());
        let app = Router::new().fallback(record).with_state(state);
        let addr = serve(app).await?;
        Ok(RecordingServer { addr, requests })
    }

    /// The base URL, e.g. `http://127.0.0.1:40001`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The headers of every request so far, in arrival order.
    pub fn requests(&self) -> Vec<HeaderMap> {
        self.received().into_iter().map(|r| r.headers).collect()
    }

    /// The path and query of every request so far, in arrival order.
    pub fn uris(&self) -> Vec<String> {
        self.received().into_iter().map(|r| r.uri).collect()
    }

    /// The body of every request so far, in arrival order.
    pub fn bodies(&self) -> Vec<String> {
        self.received().into_iter().map(|r| r.body).collect()
    }

    /// The bodies as JSON, once at least `want` requests have arrived
    /// (30 s at most).
    pub async fn json_bodies(&self, want: usize) -> Vec<serde_json::Value> {
        crate::wait_until(
            &format!("{want} requests"),
            std::time::Duration::from_secs(30),
            || async {
                let got = self.bodies();
                if got.len() >= want {
                    Ok(got)
                } else {
                    Err(format!("{got:?}"))
                }
            },
        )
        .await
        .unwrap()
        .iter()
        .map(|b| serde_json::from_str(b).unwrap_or_else(|e| panic!("{e}: {b}")))
        .collect()
    }

    fn received(&self) -> Vec<Received> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

type RecordState = (Arc<Vec<Canned>>, Arc<Mutex<Vec<Received>>>);

async fn record(
    State((answers, requests)): State<RecordState>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let answer = {
        let mut requests = requests.lock().unwrap_or_else(|p| p.into_inner());
        let answer = answers[requests.len().min(answers.len() - 1)].clone();
        requests.push(Received {
            uri: uri.to_string(),
            headers,
            body,
        });
        answer
    };
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status,
        [(header::CONTENT_TYPE, answer.content_type)],
        answer.body,
    )
        .into_response();
    for (name, value) in answer.headers {
        if let Ok(value) = header::HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// A reverse proxy in front of an HTTP server that counts, per `query`
/// parameter, the requests it forwards.
#[derive(Debug)]
pub struct CountingProxy {
    addr: SocketAddr,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

impl CountingProxy {
    /// Starts a proxy to `upstream` (a base URL) on a free loopback port.
    pub async fn start(upstream: &str) -> anyhow::Result<CountingProxy> {
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let state = ProxyState {
            upstream: upstream.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            counts: counts.clone(),
        };
        let app = Router::new().fallback(forward).with_state(state);
        let addr = serve(app).await?;
        Ok(CountingProxy { addr, counts })
    }

    /// The proxy's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests carried exactly this `query` parameter.
    pub fn count(&self, query: &str) -> usize {
        self.counts().get(query).copied().unwrap_or_default()
    }

    /// Requests so far, per `query` parameter.
    pub fn counts(&self) -> HashMap<String, usize> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

async fn forward(
    State(state): State<ProxyState>,
    method: Method,
    uri: Uri,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let raw = raw.unwrap_or_default();
    let query = reqwest::Url::parse(&format!("http://proxy/?{raw}"))
        .ok()
        .and_then(|url| {
            url.query_pairs()
                .find(|(k, _)| k == "query")
                .map(|(_, v)| v.into_owned())
        })
        .unwrap_or_default();
    *state
        .counts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(query)
        .or_default() += 1;
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let upstream = state
        .http
        .request(method, format!("{}{path_and_query}", state.upstream))
        .body(body)
        .send()
        .await;
    match upstream {
        Ok(response) => {
            let status = response.status();
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .cloned()
                .unwrap_or(header::HeaderValue::from_static("application/octet-stream"));
            let body = response.bytes().await.unwrap_or_default();
            (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

/// A TCP listener that accepts connections and never says a word: a server
/// that hangs. Returns its address; it stops with the runtime.
pub async fn silent_listener() -> anyhow::Result<SocketAddr> {
    Ok(counted_silent_listener().await?.0)
}

/// A [`silent_listener`] that also counts the connections it accepted (a
/// client is waiting on it once the count is above 0).
pub async fn counted_silent_listener() -> anyhow::Result<(SocketAddr, Arc<AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            // Keep the socket open, unanswered.
            held.push(socket);
        }
    });
    Ok((addr, accepted))
}

/// An address on loopback where nothing listens (connections are refused).
pub fn closed_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
    // The listener is dropped here, so the port is closed again.
}

async fn serve(app: Router) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}
