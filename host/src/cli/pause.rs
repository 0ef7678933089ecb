//! `scalewise pause` and `scalewise resume`: the API's write endpoints from
//! the command line, with the address and token taken from the daemon's
//! config or given.

use std::io::Write;

use reqwest::Method;

use super::PauseArgs;
use super::remote::{Remote, run_blocking};

/// Pauses (`paused`) or resumes the scaler; exit 0, or 1 with the reason.
pub fn pause(
    args: &PauseArgs,
    paused: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<u8> {
    run_blocking(send(args, paused), out, err)
}

/// The request; the line to print.
async fn send(args: &PauseArgs, paused: bool) -> Result<String, String> {
    let remote = Remote::new(&args.api)?;
    let verb = if paused { "pause" } else { "resume" };
    let body = remote
        .call(Method::POST, &["v1", "scalers", args.scaler.as_str(), verb])
        .await?;
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
