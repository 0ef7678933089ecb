//! HTTP calls the daemon makes to services named in its config — the
//! `[[notifications]]` webhooks, an AWS target's `drain_webhook`, a
//! `rebalance` target's shard coordinator — with the credentials and trust
//! the config gives them: `bearer_token`, `headers` (each text or a
//! secret), `ca_file`, and `client_cert` with `client_key` (mutual TLS).
//!
//! Secrets are read when the client is built, so one that cannot be read
//! fails the start or the reload that names it, and read again from their
//! files as they rotate ([`Refreshed`]); a new read the header cannot carry
//! keeps the last good value. No value is ever logged or shown in `Debug`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};

use crate::config::{HeaderSetting, Rebuilt, Refreshed, Secret, TlsFiles};

/// The credentials and trust of one outbound endpoint, as configured.
#[derive(Debug, Clone, Copy)]
pub struct HttpAuth<'a> {
    /// Sent as `Authorization: Bearer ...`.
    pub bearer_token: Option<&'a Secret>,
    /// Sent with every request.
    pub headers: &'a BTreeMap<String, HeaderSetting>,
    /// Certificates to trust besides the system's, and the client
    /// certificate to present.
    pub tls: TlsFiles<'a>,
}

/// An HTTP client that sends an endpoint's credentials with every request.
#[derive(Debug, Clone)]
pub struct AuthedClient {
    /// Built again when its TLS files change.
    client: std::sync::Arc<Rebuilt<reqwest::Client>>,
    /// Headers whose values are secrets (plain ones are the client's own
    /// default headers), `Authorization` from `bearer_token` first.
    secret_headers: Vec<(HeaderName, std::sync::Arc<Rotating>)>,
}

impl AuthedClient {
    /// Builds the client for `auth`, giving up on a request after
    /// `timeout`. Secrets and the CA file are read now; errors name the
    /// setting within `what`, the table that holds it (`notifications[0]`,
    /// `drain_webhook`; empty for the settings' own names), never a
    /// secret's value.
    pub fn build(what: &str, auth: HttpAuth<'_>, timeout: Duration) -> Result<Self, String> {
        let field = |name: &str| match what {
            "" => name.to_owned(),
            _ => format!("{what}.{name}"),
        };
        let mut secret_headers = Vec::new();
        if let Some(secret) = auth.bearer_token {
            let rotating = Rotating::new(field("bearer_token"), "Bearer ", secret)?;
            secret_headers.push((AUTHORIZATION, std::sync::Arc::new(rotating)));
        }
        let mut headers = HeaderMap::new();
        for (header, setting) in auth.headers {
            let here = field(&format!("headers.{header}"));
            let name =
                HeaderName::from_bytes(header.as_bytes()).map_err(|e| format!("{here}: {e}"))?;
            match setting {
                HeaderSetting::Value(value) => {
                    let value = HeaderValue::from_str(value).map_err(|_| {
                        format!("{here}: the value has characters HTTP does not allow")
                    })?;
                    headers.insert(name, value);
                }
                HeaderSetting::Secret(secret) => {
                    let rotating = Rotating::new(here, "", secret)?;
                    secret_headers.push((name, std::sync::Arc::new(rotating)));
                }
            }
        }
        let files = auth.tls.owned();
        let table = what.to_owned();
        let build = move || {
            // No redirects: one to another host would take the secret
            // headers there (only Authorization is dropped), one from
            // http to https turns the POST into a bodiless GET whose 2xx
            // would count as delivered. A 3xx is a failure to be fixed
            // in the URL.
            let builder = reqwest::Client::builder()
                .timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .default_headers(headers.clone());
            crate::config::tls_configured(builder, files.as_files())
                .map_err(|e| match table.as_str() {
                    "" => e,
                    _ => format!("{table}.{e}"),
                })?
                .build()
                .map_err(|e| match table.as_str() {
                    "" => format!("cannot build the HTTP client: {}", error_chain(&e)),
                    _ => format!("{table}: cannot build the HTTP client: {}", error_chain(&e)),
                })
        };
        let client = Rebuilt::new(what, auth.tls, build)?;
        Ok(AuthedClient {
            client: std::sync::Arc::new(client),
            secret_headers,
        })
    }

    /// A request to `url` carrying the credentials.
    pub fn request(
        &self,
        method: reqwest::Method,
        url: impl reqwest::IntoUrl,
    ) -> reqwest::RequestBuilder {
        let mut request = self.client.get().request(method, url);
        for (name, secret) in &self.secret_headers {
            request = request.header(name.clone(), secret.value());
        }
        request
    }

    /// `GET url`.
    pub fn get(&self, url: impl reqwest::IntoUrl) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, url)
    }

    /// `POST url`.
    pub fn post(&self, url: impl reqwest::IntoUrl) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::POST, url)
    }

    /// `PUT url`.
    pub fn put(&self, url: impl reqwest::IntoUrl) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::PUT, url)
    }

    /// `DELETE url`.
    pub fn delete(&self, url: impl reqwest::IntoUrl) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::DELETE, url)
    }
}

/// An error's message followed by its causes, without the request URL
/// (reqwest puts the full URL, query and all, in its own message).
pub fn causes(error: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut cause = std::error::Error::source(error);
    while let Some(e) = cause {
        parts.push(e.to_string());
        cause = e.source();
    }
    if parts.is_empty() {
        parts.push(if error.is_connect() {
            "connection failed".to_owned()
        } else {
            "request failed".to_owned()
        });
    }
    parts.join(": ")
}

/// `error` and each of its sources, `: `-separated (reqwest's own message
/// is often only "builder error"; what went wrong is in its sources).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut cause = error.source();
    while let Some(e) = cause {
        parts.push(e.to_string());
        cause = e.source();
    }
    parts.join(": ")
}

/// A header made from a secret: read when the client is built, and again
/// from its file as it rotates ([`Refreshed`]).
struct Rotating {
    /// What it is, for messages: `notifications[0].bearer_token`.
    what: String,
    /// Written before the secret in the header (`Bearer `).
    prefix: &'static str,
    secret: Secret,
    current: Refreshed<HeaderValue>,
}

impl fmt::Debug for Rotating {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the value.
        write!(f, "Rotating({})", self.what)
    }
}

impl Rotating {
    /// Reads `secret` now.
    fn new(what: String, prefix: &'static str, secret: &Secret) -> Result<Rotating, String> {
        let value = read_header_secret(&what, prefix, secret)?;
        Ok(Rotating {
            what,
            prefix,
            secret: secret.clone(),
            current: Refreshed::new(value, secret),
        })
    }

    /// The value, read again from its file when due.
    fn value(&self) -> HeaderValue {
        self.current.get(&self.what, || {
            read_header_secret(&self.what, self.prefix, &self.secret)
        })
    }
}

/// `prefix` and the secret's value, as a header value kept out of debug
/// output.
fn read_header_secret(what: &str, prefix: &str, secret: &Secret) -> Result<HeaderValue, String> {
    let value = secret.resolve().map_err(|e| format!("{what}: {e}"))?;
    let mut value = HeaderValue::from_str(&format!("{prefix}{value}"))
        .map_err(|_| format!("{what}: the value has characters HTTP does not allow"))?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_header_is_read_again_as_its_file_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "first\n").unwrap();
        let token = Rotating::new("t".into(), "Bearer ", &Secret::File(file.clone())).unwrap();
        let age = || token.current.expire();
        assert_eq!(token.value(), "Bearer first");
        assert!(token.value().is_sensitive());
        std::fs::write(&file, "second\n").unwrap();
        assert_eq!(token.value(), "Bearer first", "not yet due");
        age();
        assert_eq!(token.value(), "Bearer second", "rotated");
        std::fs::remove_file(&file).unwrap();
        age();
        assert_eq!(token.value(), "Bearer second", "the last good value stays");
        std::fs::write(&file, "line\nbreak").unwrap();
        age();
        assert_eq!(
            token.value(),
            "Bearer second",
            "and so it does for a bad one"
        );
        assert_eq!(format!("{token:?}"), "Rotating(t)");
    }

    #[test]
    fn a_request_carries_the_token_and_headers_and_debug_shows_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let (token, key) = (dir.path().join("token"), dir.path().join("key"));
        std::fs::write(&token, "t2\n").unwrap();
        std::fs::write(&key, "k1").unwrap();
        let headers = BTreeMap::from([
            ("X-Team".to_owned(), HeaderSetting::Value("a".into())),
            (
                "X-Api-Key".to_owned(),
                HeaderSetting::Secret(Secret::File(key)),
            ),
        ]);
        let auth = HttpAuth {
            bearer_token: Some(&Secret::File(token)),
            headers: &headers,
            tls: TlsFiles::default(),
        };
        let client = AuthedClient::build("x", auth, Duration::from_secs(1)).unwrap();
        let request = client.put("http://127.0.0.1:9/hook").build().unwrap();
        assert_eq!(request.method(), reqwest::Method::PUT);
        assert_eq!(request.headers()["authorization"], "Bearer t2");
        assert_eq!(request.headers()["x-api-key"], "k1");
        let debug = format!("{client:?}");
        assert!(!debug.contains("t2") && !debug.contains("k1"), "{debug}");

        let missing = Secret::File(dir.path().join("missing"));
        let err = AuthedClient::build(
            "scalers[0].target",
            HttpAuth {
                bearer_token: Some(&missing),
                headers: &BTreeMap::new(),
                tls: TlsFiles::default(),
            },
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(
            err.starts_with("scalers[0].target.bearer_token: ") && err.contains("missing"),
            "{err}"
        );
        let err = AuthedClient::build(
            "scalers[0].target",
            HttpAuth {
                bearer_token: None,
                headers: &BTreeMap::new(),
                tls: TlsFiles {
                    ca_file: Some(&dir.path().join("ca.pem")),
                    ..TlsFiles::default()
                },
            },
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(
            err.starts_with("scalers[0].target.ca_file: ") && err.contains("ca.pem"),
            "{err}"
        );
    }
}
