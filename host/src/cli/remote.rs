//! A running daemon's API from the command line (`pause`, `resume`,
//! `status`): where it is, the token to send and the certificates to trust,
//! from its config or from flags.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};

use crate::config::{Config, Secret};

use super::ApiArgs;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request may take: a pause is answered once it is recorded in
/// the Lease (after any other pause in progress) and a change the scaler is
/// making has been made, which may take a minute.
const TIMEOUT: Duration = Duration::from_secs(90);

/// The API's default address.
const DEFAULT_API: &str = "http://127.0.0.1:9464";

/// A daemon's API, ready to ask.
#[derive(Debug)]
pub struct Remote {
    base: String,
    token: Option<String>,
    /// Why the config's `api.token` could not be read: said only if the
    /// API asks for a token (reads may be open without one).
    token_problem: Option<String>,
    client: reqwest::Client,
    /// Whether the address came from a config file (`--config`).
    from_config: bool,
}

impl Remote {
    /// The API `args` point at.
    pub fn new(args: &ApiArgs) -> Result<Remote, String> {
        let Target {
            base,
            token,
            token_problem,
            ca,
        } = target(args)?;
        let mut client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(TIMEOUT);
        if let Some(ca) = &ca {
            let tls = super::pinned::client_config(ca)
                .map_err(|e| format!("cannot read the certificates to trust: {e}"))?;
            client = client.tls_backend_preconfigured(tls);
        }
        let client = client.build().map_err(|e| e.to_string())?;
        Ok(Remote {
            base,
            token,
            token_problem,
            client,
            from_config: args.config.is_some(),
        })
    }

    /// `method` on `segments` under the API's URL: the JSON answered, or
    /// the API's error as `code (status): message`.
    pub async fn call(
        &self,
        method: Method,
        segments: &[&str],
    ) -> Result<serde_json::Value, String> {
        let base = &self.base;
        let mut url = Url::parse(base).map_err(|e| format!("the API's URL {base:?}: {e}"))?;
        url.path_segments_mut()
            .map_err(|()| format!("the API's URL {base:?} cannot take a path"))?
            .pop_if_empty()
            .extend(segments);
        let mut request = self.client.request(method, url.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() && !e.is_connect() {
                format!(
                    "the API at {base} did not answer within {}: whether it did what was asked \
                     is not known (`scalewise status` shows it)",
                    humantime::format_duration(TIMEOUT)
                )
            } else {
                let hint = match self.from_config {
                    true => {
                        " (the address the config's [api] listen gives; a daemon started \
                         with --listen is reached with --api URL)"
                    }
                    false => "",
                };
                format!(
                    "cannot reach the API at {base}{hint}: {}",
                    crate::outbound::causes(&e)
                )
            }
        })?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| format!("{url} answered {status} with no JSON: {e}"))?;
        if !status.is_success() {
            let error = api_error(status, &body);
            return Err(match (&self.token_problem, status) {
                (Some(problem), StatusCode::UNAUTHORIZED) => {
                    format!("{error} (and the config's api.token could not be read: {problem})")
                }
                _ => error,
            });
        }
        Ok(body)
    }
}

/// The API's JSON error as one line.
fn api_error(status: StatusCode, body: &serde_json::Value) -> String {
    let error = &body["error"];
    format!(
        "{} ({status}): {}",
        error["code"].as_str().unwrap_or("error"),
        error["message"].as_str().unwrap_or("no message")
    )
}

/// Where the API is, the token to send and the certificates to trust
/// (PEM file).
struct Target {
    base: String,
    token: Option<String>,
    /// Why the token named could not be read (sent without one).
    token_problem: Option<String>,
    ca: Option<PathBuf>,
}

/// [`Target`] from the flags.
fn target(args: &ApiArgs) -> Result<Target, String> {
    if let Some(path) = &args.config {
        // Only the API's settings are read (and its token resolved): the
        // daemon's other secrets and folders need not be readable here.
        let (api, _, problem) = Config::load_operator_sections(path).map_err(|e| e.to_string())?;
        if let Some(problem) = problem {
            // A pause right after a bad edit must still go through.
            eprintln!("note: only [api] was read from the config, which has a problem: {problem}");
        }
        // Unreadable here (the daemon's secret, mounted for it alone),
        // reads still go through if the API leaves them open.
        let (token, token_problem) = match api.token.as_ref().map(|s| s.resolve()) {
            Some(Ok(token)) => (Some(token), None),
            Some(Err(e)) => (None, Some(e.to_string())),
            None => (None, None),
        };
        let scheme = if api.tls.is_some() { "https" } else { "http" };
        let ca = args
            .ca_file
            .clone()
            .or_else(|| api.tls.as_ref().map(|t| t.cert.clone()));
        return Ok(Target {
            base: format!("{scheme}://{}", reachable(api.listen)),
            token,
            token_problem,
            ca,
        });
    }
    let api = args
        .url
        .as_deref()
        .unwrap_or(DEFAULT_API)
        .trim_end_matches('/');
    if !(api.starts_with("http://") || api.starts_with("https://")) {
        return Err(format!(
            "--api {api:?}: give the API's URL, e.g. {DEFAULT_API}"
        ));
    }
    let token = match &args.token_file {
        Some(path) => Some(
            Secret::File(path.clone())
                .resolve()
                .map_err(|e| format!("--token-file: {e}"))?,
        ),
        None => None,
    };
    Ok(Target {
        base: api.to_owned(),
        token,
        token_problem: None,
        ca: args.ca_file.clone(),
    })
}

/// The address to reach a daemon listening on `listen`: loopback when it
/// listens on every interface.
fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), listen.port())
        }
        _ => listen,
    }
}

/// Runs `work` on a runtime of its own: exit 0 with its line(s), or 1 with
/// its error.
pub fn run_blocking(
    work: impl std::future::Future<Output = Result<String, String>>,
    out: &mut dyn std::io::Write,
    err: &mut dyn std::io::Write,
) -> std::io::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match runtime.block_on(work) {
        Ok(text) => {
            write!(out, "{text}")?;
            if !text.ends_with('\n') {
                writeln!(out)?;
            }
            Ok(0)
        }
        Err(e) => {
            writeln!(err, "error: {e}")?;
            Ok(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_is_waited_for_as_long_as_the_daemon_may_take_to_answer_it() {
        use crate::api::handlers::LEASE_WRITE_TIMEOUT;
        // Another pause in progress, the Lease write, the journal's
        // commit, a change under way.
        let longest = 3 * LEASE_WRITE_TIMEOUT + Duration::from_secs(1) + crate::scaler::ACTING_WAIT;
        assert!(TIMEOUT > longest, "{TIMEOUT:?} <= {longest:?}");
    }

    #[test]
    fn an_api_on_every_interface_is_reached_on_loopback() {
        let any4: SocketAddr = "0.0.0.0:9464".parse().unwrap();
        assert_eq!(reachable(any4).to_string(), "127.0.0.1:9464");
        let any6: SocketAddr = "[::]:9000".parse().unwrap();
        assert_eq!(reachable(any6).to_string(), "[::1]:9000");
        let one: SocketAddr = "10.0.0.5:9464".parse().unwrap();
        assert_eq!(reachable(one), one);
    }
}
