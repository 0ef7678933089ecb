//! Who may use the API.
//!
//! Reads are open by default: the dashboard, `/metrics` and `/v1/...` GETs
//! serve Prometheus, probes and people alike. With `[api] reads = "token"`
//! the `/v1/...` reads (decisions carry each policy's context and
//! parameters) need the API token too; `/`, `/healthz`, `/readyz` and
//! `/metrics` stay open.
//!
//! A write (pause and resume a scaler) is answered when:
//!
//! 1. it does not come from another web site: a request whose `Origin` is
//!    not the API's own, or that a browser marks `Sec-Fetch-Site:
//!    cross-site` (or `same-site`), is refused, so a page an operator
//!    happens to open cannot pause a scaler through their browser (the API
//!    answers no CORS preflight either);
//! 2. and, with `[api] token` set, it carries `Authorization: Bearer
//!    <token>` (compared in constant time; the token file is read again
//!    every minute, so it can be rotated without a restart);
//! 3. or, without a token, it comes from loopback: a daemon listening on
//!    every interface (a Kubernetes Service) takes writes only through
//!    `kubectl port-forward` or `kubectl exec`, never from any pod that can
//!    reach the Service. Its `Host` must then be an address or `localhost`:
//!    a page whose DNS name an attacker re-points at 127.0.0.1 (DNS
//!    rebinding) sends its own name, and same-origin checks cannot tell.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::config::{ApiConfig, ApiReads, Refreshed, Secret};

/// The rules for reads and writes, built from `[api]`. The default: reads
/// open, writes from loopback only (no token).
#[derive(Debug, Default)]
pub struct ApiAccess {
    token: Option<Token>,
    reads: ApiReads,
    /// The API listens on a loopback address only: open reads from
    /// loopback must then name it (see [`ApiAccess::check_read`]).
    loopback_only: bool,
}

/// The API token and its current value.
#[derive(Debug)]
struct Token {
    secret: Secret,
    current: Refreshed<String>,
}

impl ApiAccess {
    /// The rule `api` asks for; reads the token now.
    pub fn from_config(api: &ApiConfig) -> Result<Self, String> {
        let token = match &api.token {
            None => None,
            Some(secret) => {
                let value = secret.resolve().map_err(|e| format!("api.token: {e}"))?;
                Some(Token {
                    secret: secret.clone(),
                    current: Refreshed::new(value, secret),
                })
            }
        };
        if api.reads == ApiReads::Token && token.is_none() {
            return Err("api.reads: reads = \"token\" needs [api] token".into());
        }
        Ok(ApiAccess {
            token,
            reads: api.reads,
            loopback_only: api.listen.ip().to_canonical().is_loopback(),
        })
    }

    /// Whether writes need the token (else: loopback only).
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Whether `/v1/...` reads need the token.
    pub fn reads_need_token(&self) -> bool {
        self.reads == ApiReads::Token
    }

    /// Why a read from `peer` with `headers` is refused, if it is. Open
    /// reads of an API that listens on loopback only must name it as
    /// loopback: a page whose name was pointed at this machine (DNS
    /// rebinding) could read decisions, contexts and the config through the
    /// operator's browser otherwise. An API listening on the network is
    /// open to its readers anyway, and reached by names (a Service's; a
    /// mesh's proxy forwards from 127.0.0.6 with it).
    fn check_read(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Result<(), ApiError> {
        match (&self.token, self.reads) {
            (Some(token), ApiReads::Token) => token.check(headers),
            _ => match peer {
                Some(peer) if self.loopback_only && peer.ip().to_canonical().is_loopback() => {
                    local_host(headers, "reads")
                }
                _ => Ok(()),
            },
        }
    }

    /// Why a write from `peer` with `headers` is refused, if it is.
    fn check(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Result<(), ApiError> {
        cross_site(headers)?;
        match &self.token {
            Some(token) => token.check(headers),
            None => match peer {
                Some(peer) if peer.ip().to_canonical().is_loopback() => {
                    local_host(headers, "writes")
                }
                Some(peer) => Err(ApiError::Forbidden(format!(
                    "writes are taken only from loopback while [api] token is not set; \
                     this request came from {}",
                    peer.ip()
                ))),
                None => Err(ApiError::Forbidden(
                    "writes are taken only from loopback while [api] token is not set, and \
                     where this request came from is not known"
                        .into(),
                )),
            },
        }
    }
}

impl Token {
    /// Whether `headers` carry this token as `Authorization: Bearer`.
    fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        // A rewritten file holding what the config check refuses at start
        // (a space, a second line) keeps the last good token: taken, it
        // would match no client ever again.
        let expected = self.current.get("api.token", || {
            let token = self.secret.resolve().map_err(|e| e.to_string())?;
            if token.bytes().all(|b| b.is_ascii_graphic()) {
                Ok(token)
            } else {
                Err("the new token is not printable ASCII without spaces".to_owned())
            }
        });
        match bearer(headers) {
            None => Err(ApiError::Unauthorized(
                "this endpoint needs the API token: send `Authorization: Bearer <token>` \
                 ([api] token)"
                    .into(),
            )),
            Some(given) if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) => Ok(()),
            Some(_) => Err(ApiError::Unauthorized(
                "the bearer token is not the API token ([api] token)".into(),
            )),
        }
    }
}

/// Refuses a loopback request (`what`: reads or writes) whose `Host` is a
/// DNS name other than `localhost`: a browser's page served from a name
/// re-pointed at this machine (DNS rebinding) is same-origin with itself,
/// so only the name tells it apart. Addresses, `localhost` and no `Host`
/// at all pass.
fn local_host(headers: &HeaderMap, what: &str) -> Result<(), ApiError> {
    let Some(host) = headers.get(header::HOST) else {
        return Ok(());
    };
    let host = String::from_utf8_lossy(host.as_bytes()).to_ascii_lowercase();
    // Without the port: `[::1]:9464`, `127.0.0.1:9464`, `localhost:9464`.
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host
            .rsplit_once(':')
            .map_or(host.as_str(), |(name, _)| name),
    };
    let local = name.parse::<std::net::IpAddr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost");
    if local {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "{what} without [api] token are taken from loopback addressed as an IP address or \
             localhost, not as {name:?} (a page whose name was pointed at this machine, DNS \
             rebinding, would send its own); use http://127.0.0.1:PORT, or set [api] token{}",
            if what == "reads" {
                " and reads = \"token\""
            } else {
                ""
            }
        )))
    }
}

/// Refuses a request a browser sent on behalf of another site.
fn cross_site(headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(site) = headers.get("sec-fetch-site")
        && !matches!(site.as_bytes(), b"same-origin" | b"none")
    {
        return Err(ApiError::Forbidden(format!(
            "a browser sent this write from another site (Sec-Fetch-Site: {}); writes are \
             taken from the dashboard or from clients that are not browsers",
            String::from_utf8_lossy(site.as_bytes())
        )));
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = String::from_utf8_lossy(origin.as_bytes());
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    let host = headers
        .get(header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()));
    match (authority, host) {
        (Some(authority), Some(host)) if authority.eq_ignore_ascii_case(&host) => Ok(()),
        _ => Err(ApiError::Forbidden(format!(
            "a browser sent this write from another origin ({origin}); writes are taken from \
             the dashboard or from clients that are not browsers"
        ))),
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The middleware in front of the `/v1/...` read routes.
pub async fn reads(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr);
    state.access.check_read(peer, request.headers())?;
    Ok(next.run(request).await)
}

/// The middleware in front of the write routes.
pub async fn writes(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    // Set by the server (`into_make_service_with_connect_info`).
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr);
    if let Err(refused) = state.access.check(peer, request.headers()) {
        tracing::warn!(
            method = %request.method(),
            path = %request.uri().path(),
            peer = %peer.map(|p| p.to_string()).unwrap_or_else(|| "unknown".into()),
            reason = %refused,
            "Refused an API write."
        );
        return Err(refused);
    }
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    fn with_token(dir: &std::path::Path, token: &str) -> ApiAccess {
        let path = dir.join("token");
        std::fs::write(&path, format!("{token}\n")).unwrap();
        ApiAccess::from_config(&ApiConfig {
            token: Some(Secret::File(path)),
            ..ApiConfig::default()
        })
        .unwrap()
    }

    const LOCAL: Option<SocketAddr> = Some(SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        40000,
    ));

    fn remote() -> Option<SocketAddr> {
        Some("10.1.2.3:40000".parse().unwrap())
    }

    #[test]
    fn without_a_token_only_loopback_writes() {
        let access = ApiAccess::default();
        assert!(access.check(LOCAL, &HeaderMap::new()).is_ok());
        let mapped = Some("[::ffff:127.0.0.1]:40000".parse().unwrap());
        assert!(access.check(mapped, &HeaderMap::new()).is_ok());
        let ipv6 = Some("[::1]:40000".parse().unwrap());
        assert!(access.check(ipv6, &HeaderMap::new()).is_ok());
        let err = access.check(remote(), &HeaderMap::new()).unwrap_err();
        assert!(matches!(err, ApiError::Forbidden(_)), "{err:?}");
        assert!(err.to_string().contains("[api] token"), "{err}");
        assert!(err.to_string().contains("10.1.2.3"), "{err}");
        assert!(access.check(None, &HeaderMap::new()).is_err());
        // A bearer token does not help when none is configured.
        let h = headers(&[("authorization", "Bearer x")]);
        assert!(access.check(remote(), &h).is_err());
    }

    #[test]
    fn without_a_token_a_loopback_write_must_not_name_another_host() {
        // DNS rebinding: a page at evil.example, its name pointed at
        // 127.0.0.1, sends its own name and origin, same-origin as far as
        // the browser and the origin check can tell.
        let access = ApiAccess::default();
        let rebound = headers(&[
            ("host", "evil.example:9464"),
            ("origin", "http://evil.example:9464"),
            ("sec-fetch-site", "same-origin"),
        ]);
        let err = access.check(LOCAL, &rebound).unwrap_err();
        assert!(matches!(err, ApiError::Forbidden(_)), "{err:?}");
        assert!(err.to_string().contains("\"evil.example\""), "{err}");
        for host in [
            "127.0.0.1:9464",
            "localhost:9464",
            "LOCALHOST",
            "[::1]:9464",
            "10.0.0.7:9464",
            "dashboard.localhost:9464",
        ] {
            let page = headers(&[("host", host), ("origin", &format!("http://{host}"))]);
            assert!(access.check(LOCAL, &page).is_ok(), "{host}");
        }
        // With a token the name does not matter: the token decides.
        let dir = tempfile::tempdir().unwrap();
        let access = with_token(dir.path(), "t");
        let named = headers(&[
            ("host", "scalewise.ops:9464"),
            ("authorization", "Bearer t"),
        ]);
        assert!(access.check(remote(), &named).is_ok());
    }

    #[test]
    fn with_a_token_any_peer_with_it_writes() {
        let dir = tempfile::tempdir().unwrap();
        let access = with_token(dir.path(), "s3cret-token");
        assert!(access.has_token());
        let good = headers(&[("authorization", "Bearer s3cret-token")]);
        assert!(access.check(remote(), &good).is_ok());
        let scheme_case = headers(&[("authorization", "bearer s3cret-token")]);
        assert!(access.check(remote(), &scheme_case).is_ok());
        for bad in [
            headers(&[]),
            headers(&[("authorization", "Bearer s3cret-toke")]),
            headers(&[("authorization", "Bearer s3cret-token2")]),
            headers(&[("authorization", "Basic s3cret-token")]),
            headers(&[("authorization", "Bearer ")]),
        ] {
            let err = access.check(remote(), &bad).unwrap_err();
            assert!(matches!(err, ApiError::Unauthorized(_)), "{err:?}");
            // Loopback needs it too once a token is set.
            assert!(access.check(LOCAL, &bad).is_err());
        }
    }

    #[test]
    fn reads_need_the_token_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let open = with_token(dir.path(), "t");
        assert!(!open.reads_need_token());
        assert!(open.check_read(LOCAL, &HeaderMap::new()).is_ok());
        // Open reads from loopback must name it so (DNS rebinding); from
        // elsewhere any name is fine (a Service's, a pod's).
        let rebound = headers(&[("host", "evil.example:9464")]);
        let err = open.check_read(LOCAL, &rebound).unwrap_err();
        assert!(matches!(err, ApiError::Forbidden(_)), "{err:?}");
        assert!(
            err.to_string().contains("reads without [api] token"),
            "{err}"
        );
        assert!(open.check_read(remote(), &rebound).is_ok());
        for host in ["127.0.0.1:9464", "localhost:9464", "[::1]:9464"] {
            assert!(open.check_read(LOCAL, &headers(&[("host", host)])).is_ok());
        }
        // Listening on the network, names are how it is reached (a mesh's
        // proxy forwards from loopback with the Service's name).
        let network = ApiAccess::from_config(&ApiConfig {
            listen: "0.0.0.0:9464".parse().unwrap(),
            ..ApiConfig::default()
        })
        .unwrap();
        assert!(network.check_read(LOCAL, &rebound).is_ok());
        let path = dir.path().join("token");
        let closed = ApiAccess::from_config(&ApiConfig {
            token: Some(Secret::File(path)),
            reads: ApiReads::Token,
            ..ApiConfig::default()
        })
        .unwrap();
        assert!(closed.reads_need_token());
        let err = closed.check_read(LOCAL, &HeaderMap::new()).unwrap_err();
        assert!(matches!(err, ApiError::Unauthorized(_)), "{err:?}");
        let wrong = headers(&[("authorization", "Bearer u")]);
        assert!(closed.check_read(LOCAL, &wrong).is_err());
        let good = headers(&[("authorization", "Bearer t"), ("host", "evil.example")]);
        assert!(closed.check_read(LOCAL, &good).is_ok());
        // Without a token to ask for, reads cannot be closed.
        let err = ApiAccess::from_config(&ApiConfig {
            reads: ApiReads::Token,
            ..ApiConfig::default()
        })
        .unwrap_err();
        assert!(err.contains("api.reads"), "{err}");
    }

    #[test]
    fn a_rotated_token_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let access = with_token(dir.path(), "old");
        std::fs::write(dir.path().join("token"), "new\n").unwrap();
        access.token.as_ref().unwrap().current.expire();
        assert!(
            access
                .check(remote(), &headers(&[("authorization", "Bearer new")]))
                .is_ok()
        );
        assert!(
            access
                .check(remote(), &headers(&[("authorization", "Bearer old")]))
                .is_err()
        );
        // Rewritten with what a start would refuse (a space, a second
        // line, emptied): the last good token stays.
        for bad in ["new two\n", "newer\n\n", "\n"] {
            std::fs::write(dir.path().join("token"), bad).unwrap();
            access.token.as_ref().unwrap().current.expire();
            assert!(
                access
                    .check(remote(), &headers(&[("authorization", "Bearer new")]))
                    .is_ok(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn browsers_cannot_write_for_another_site() {
        let access = ApiAccess::default();
        let same = headers(&[
            ("origin", "http://127.0.0.1:9464"),
            ("host", "127.0.0.1:9464"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert!(access.check(LOCAL, &same).is_ok());
        for (h, want) in [
            (
                headers(&[
                    ("origin", "https://evil.example"),
                    ("host", "127.0.0.1:9464"),
                ]),
                "https://evil.example",
            ),
            (
                headers(&[
                    ("origin", "http://localhost:9465"),
                    ("host", "localhost:9464"),
                ]),
                "localhost:9465",
            ),
            (
                headers(&[("origin", "null"), ("host", "127.0.0.1:9464")]),
                "(null)",
            ),
            (
                headers(&[("origin", "http://127.0.0.1:9464")]),
                "another origin",
            ),
            (headers(&[("sec-fetch-site", "cross-site")]), "cross-site"),
            (headers(&[("sec-fetch-site", "same-site")]), "same-site"),
        ] {
            let err = access.check(LOCAL, &h).unwrap_err();
            assert!(matches!(err, ApiError::Forbidden(_)), "{err:?}");
            assert!(err.to_string().contains(want), "{err} !~ {want}");
        }
        // Even with the token: a page cannot have a browser send it.
        let dir = tempfile::tempdir().unwrap();
        let access = with_token(dir.path(), "t");
        let h = headers(&[
            ("authorization", "Bearer t"),
            ("origin", "https://evil.example"),
            ("host", "127.0.0.1:9464"),
        ]);
        assert!(matches!(
            access.check(remote(), &h),
            Err(ApiError::Forbidden(_))
        ));
    }
}
