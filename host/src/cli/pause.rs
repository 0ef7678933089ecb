//! `scalewise pause` and `scalewise resume`: the API's write endpoints from
//! the command line, with the address and token taken from the daemon's
//! config or given.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Config, Secret};

use super::PauseArgs;

/// How long the request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The API's default address.
const DEFAULT_API: &str = "http://127.0.0.1:9464";

/// Pauses (`paused`) or resumes the scaler; exit 0, or 1 with the reason.
pub fn pause(
    args: &PauseArgs,
    paused: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match runtime.block_on(send(args, paused)) {
        Ok(line) => {
            writeln!(out, "{line}")?;
            Ok(0)
        }
        Err(e) => {
            writeln!(err, "error: {e}")?;
            Ok(1)
        }
    }
}

/// Where the API is, the token to send and the certificates to trust
/// (PEM file), from the flags.
type Target = (String, Option<String>, Option<PathBuf>);

/// [`Target`] from the flags.
fn target(args: &PauseArgs) -> Result<Target, String> {
    if let Some(path) = &args.config {
        let config = Config::load(path).map_err(|e| e.to_string())?;
        let token = match &config.api.token {
            Some(secret) => Some(secret.resolve().map_err(|e| format!("api.token: {e}"))?),
            None => None,
        };
        let scheme = if config.api.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let ca = args
            .ca_file
            .clone()
            .or_else(|| config.api.tls.as_ref().map(|t| t.cert.clone()));
        return Ok((
            format!("{scheme}://{}", reachable(config.api.listen)),
            token,
            ca,
        ));
    }
    let api = args
        .api
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
    Ok((api.to_owned(), token, args.ca_file.clone()))
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

/// The request; the line to print.
async fn send(args: &PauseArgs, paused: bool) -> Result<String, String> {
    let (api, token, ca) = target(args)?;
    let verb = if paused { "pause" } else { "resume" };
    let mut url = reqwest::Url::parse(&api).map_err(|e| format!("the API's URL {api:?}: {e}"))?;
    url.path_segments_mut()
        .map_err(|()| format!("the API's URL {api:?} cannot take a path"))?
        .pop_if_empty()
        .extend(["v1", "scalers", args.scaler.as_str(), verb]);
    let mut client = reqwest::Client::builder().timeout(TIMEOUT);
    if let Some(ca) = &ca {
        let certs = crate::config::read_ca_file(ca)
            .map_err(|e| format!("cannot read the certificates to trust: {e}"))?;
        client = client.tls_certs_only(certs);
    }
    let client = client.build().map_err(|e| e.to_string())?;
    let mut request = client.post(url.clone());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("cannot reach the API at {api}: {e}"))?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|e| format!("{url} answered {status} with no JSON: {e}"))?;
    if !status.is_success() {
        let error = &body["error"];
        return Err(format!(
            "{} ({status}): {}",
            error["code"].as_str().unwrap_or("error"),
            error["message"].as_str().unwrap_or("no message")
        ));
    }
    let number = |key: &str| {
        body[key]
            .as_u64()
            .map_or_else(|| "-".to_owned(), |n| n.to_string())
    };
    Ok(format!(
        "{}: {} (current {}, desired {})",
        args.scaler,
        if body["paused"] == true {
            "paused"
        } else {
            "running"
        },
        number("current"),
        number("desired"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

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
