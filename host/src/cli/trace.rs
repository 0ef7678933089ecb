//! `scalewise trace`: a load trace for `simulate` from the history of a
//! request rate in Prometheus.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::clock::{format_ms, parse_time_ms, wall_clock_ms};
use crate::config::{Config, PrometheusConfig, SourceConfig};
use crate::sources::prometheus::PrometheusSource;

use super::TraceArgs;

/// The most rows a trace is written with (58 days at one a second).
pub const MAX_ROWS: i64 = 5_000_000;

/// How long one range query of `--prometheus` may take (a source from a
/// config has its own `timeout`).
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes the trace and a summary of it (to `err`); exit 0, or 1 with the
/// reason.
pub fn trace(args: &TraceArgs, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match runtime.block_on(write(args, out)) {
        Ok(summary) => {
            writeln!(err, "{summary}")?;
            Ok(0)
        }
        Err(e) => {
            writeln!(err, "error: {e}")?;
            Ok(1)
        }
    }
}

/// The span and step asked for, in whole seconds: (start, end, step).
fn span(args: &TraceArgs) -> Result<(i64, i64, i64), String> {
    let step_ms = args.step.as_millis();
    if step_ms < 1000 || !step_ms.is_multiple_of(1000) {
        return Err(format!(
            "--step {}: a whole number of seconds, at least 1s",
            humantime::format_duration(args.step)
        ));
    }
    let step_s = i64::try_from(step_ms / 1000).map_err(|_| "--step: too long".to_owned())?;
    let start_ms = parse_time_ms(&args.start).map_err(|e| format!("--start: {e}"))?;
    let end_ms = match &args.end {
        Some(text) => parse_time_ms(text).map_err(|e| format!("--end: {e}"))?,
        None => wall_clock_ms(),
    };
    // Samples fall on whole seconds from the start.
    let start_s = start_ms.div_euclid(1000) + i64::from(start_ms.rem_euclid(1000) != 0);
    let end_s = end_ms.div_euclid(1000);
    if end_s - start_s < step_s {
        return Err(format!(
            "--start {} and --end {}: a trace needs at least two samples, so the end must be \
             at least a step (--step {}) after the start",
            format_ms(start_ms),
            format_ms(end_ms),
            humantime::format_duration(args.step)
        ));
    }
    let rows = (end_s - start_s) / step_s + 1;
    if rows > MAX_ROWS {
        return Err(format!(
            "--start {} to --end {} every {} is {rows} samples; a trace has at most {MAX_ROWS}: \
             a longer --step or a shorter span",
            format_ms(start_ms),
            format_ms(end_ms),
            humantime::format_duration(args.step)
        ));
    }
    Ok((start_s, end_s, step_s))
}

/// The source to ask: `--prometheus`, or `--source` of `--config`.
fn source(args: &TraceArgs) -> Result<PrometheusSource, String> {
    let (name, config) = match (&args.prometheus, &args.config, &args.source) {
        (Some(url), _, _) => (
            "--prometheus".to_owned(),
            PrometheusConfig {
                url: url.clone(),
                timeout: QUERY_TIMEOUT,
                bearer_token: None,
                basic_auth: None,
                headers: Default::default(),
                ca_file: None,
                client_cert: None,
                client_key: None,
            },
        ),
        (None, Some(path), Some(name)) => {
            // Only the source is read: the daemon's secrets, TLS key and
            // policy folder need not be there where the trace is taken.
            // The source's own problems (a header written twice, say) are
            // refused as the daemon refuses them.
            let config = Config::load_unvalidated(path).map_err(|e| e.to_string())?;
            if let Err(e) = config.validate() {
                let at = crate::config::source_path(name);
                let ours: Vec<String> = e
                    .problems()
                    .iter()
                    .filter(|p| p.path == at || p.path.starts_with(&format!("{at}.")))
                    .map(ToString::to_string)
                    .collect();
                if !ours.is_empty() {
                    return Err(ours.join("\n"));
                }
            }
            match config.sources.get(name).map(|s| s.get_ref()) {
                Some(SourceConfig::Prometheus(prometheus)) => (name.clone(), prometheus.clone()),
                None => {
                    let known: Vec<&str> = config.sources.keys().map(String::as_str).collect();
                    return Err(format!(
                        "--source {name}: {} has no [{}]; {}",
                        path.display(),
                        crate::config::source_path(name),
                        if known.is_empty() {
                            "it has no sources".to_owned()
                        } else {
                            format!("it has: {}", known.join(", "))
                        }
                    ));
                }
            }
        }
        _ => return Err("give --prometheus URL, or --config FILE with --source NAME".to_owned()),
    };
    PrometheusSource::new(&name, &config).map_err(|e| e.to_string())
}

async fn write(args: &TraceArgs, out: &mut dyn Write) -> Result<String, String> {
    let (start_s, end_s, step_s) = span(args)?;
    let source = source(args)?;
    let points = source
        .history(&args.query, start_s, end_s, step_s)
        .await
        .map_err(|e| {
            format!(
                "`{}` from {} to {}: {e}",
                args.query,
                format_ms(start_s * 1000),
                format_ms(end_s * 1000)
            )
        })?;
    let queries = PrometheusSource::history_queries(start_s, end_s, step_s);
    let written = match &args.output {
        None => {
            let written = crate::simulator::write_trace(&points, start_s, end_s, step_s, &mut *out)
                .map_err(|e| e.to_string())?;
            out.flush().map_err(|e| e.to_string())?;
            written
        }
        Some(path) => write_file(path, |file| {
            crate::simulator::write_trace(&points, start_s, end_s, step_s, file)
        })?,
    };
    let mut summary = format!(
        "Wrote {} rows of `{}`, {} to {} every {} ({queries} range quer{}){}.",
        written.rows,
        args.query,
        format_ms(written.first_s * 1000),
        format_ms(written.last_s * 1000),
        humantime::format_duration(args.step),
        if queries == 1 { "y" } else { "ies" },
        match &args.output {
            Some(path) => format!(" to {}", path.display()),
            None => String::new(),
        }
    );
    if written.missing > 0 {
        summary.push_str(&format!(
            "\n{} of the {} steps had no data: the rate before each gap holds over it{}.",
            written.missing,
            (end_s - start_s) / step_s + 1,
            if written.first_s > start_s {
                ", and the trace starts at the first sample"
            } else {
                ""
            }
        ));
    }
    summary.push_str(
        "\nPlay it back with `load = { trace = { path = \"...\" } }` in a [simulations.<name>] \
         table and `scalewise simulate`.",
    );
    Ok(summary)
}

/// Writes `path` whole or not at all: into a temporary file beside it,
/// renamed over it once complete.
fn write_file<T, E: std::fmt::Display>(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> Result<T, E>,
) -> Result<T, String> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| format!("--output {}: {e}", path.display()))?;
    let result = write(file.as_file_mut()).map_err(|e| format!("{}: {e}", path.display()))?;
    file.as_file_mut()
        .sync_all()
        .map_err(|e| format!("--output {}: {e}", path.display()))?;
    file.persist(path)
        .map_err(|e| format!("--output {}: {}", path.display(), e.error))?;
    Ok(result)
}
