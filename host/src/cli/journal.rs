//! `scalewise journal`: reading the decision journal from the command line.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::clock::parse_time_ms;
use crate::config::Config;
use crate::journal::{Journal, Query, TickRecord, explain};
use crate::runtime::log_safe;

use super::{JournalCommand, JournalLocation};

/// Runs a `journal` subcommand.
pub fn journal(
    command: &JournalCommand,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<u8> {
    let result = match command {
        JournalCommand::Export {
            at,
            scaler,
            since,
            until,
        } => export(
            at,
            scaler.as_deref(),
            since.as_deref(),
            until.as_deref(),
            out,
        ),
        JournalCommand::Show { at, id } => locate(at)
            .and_then(|path| read_record(&path, *id))
            .and_then(|record| {
                let text = serde_json::to_string_pretty(&record)
                    .map(crate::runtime::json_safe)
                    .map_err(|e| e.to_string())?;
                writeln!(out, "{text}").map_err(|e| e.to_string())
            }),
        JournalCommand::Explain { at, id, scaler } => locate(at)
            .and_then(|path| match (id, scaler) {
                (Some(id), _) => read_record(&path, *id),
                (None, Some(scaler)) => newest_record(&path, scaler),
                (None, None) => Err("give a record id or --scaler NAME".into()),
            })
            .and_then(|record| {
                explain(&record)
                    .iter()
                    .try_for_each(|line| writeln!(out, "{}", log_safe(line)))
                    .map_err(|e| e.to_string())
            }),
    };
    match result {
        Ok(()) => Ok(0),
        Err(e) => {
            writeln!(err, "error: {e}")?;
            Ok(1)
        }
    }
}

/// Reads one record by id from a journal file.
pub fn read_record(path: &Path, id: i64) -> Result<TickRecord, String> {
    let journal = Journal::open_read_only(path).map_err(|e| e.to_string())?;
    journal
        .get_blocking(id)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no record with id {id} in {}", path.display()))
}

/// The newest record of `scaler` in a journal file.
fn newest_record(path: &Path, scaler: &str) -> Result<TickRecord, String> {
    let journal = Journal::open_read_only(path).map_err(|e| e.to_string())?;
    journal
        .query_blocking(&Query::scaler(scaler, 1))
        .map_err(|e| e.to_string())?
        .into_iter()
        .next()
        .ok_or_else(|| {
            format!(
                "no record of a scaler named {scaler:?} in {}",
                path.display()
            )
        })
}

fn export(
    at: &JournalLocation,
    scaler: Option<&str>,
    since: Option<&str>,
    until: Option<&str>,
    out: &mut dyn Write,
) -> Result<(), String> {
    let path = locate(at)?;
    let parse = |what: &str, t: &str| parse_time_ms(t).map_err(|e| format!("{what}: {e}"));
    let since = since.map(|t| parse("--since", t)).transpose()?;
    let until = until.map(|t| parse("--until", t)).transpose()?;
    if let (Some(since), Some(until)) = (since, until)
        && since > until
    {
        return Err(format!(
            "--since ({since}) is after --until ({until}): no record can match"
        ));
    }
    let journal = Journal::open_read_only(&path).map_err(|e| e.to_string())?;
    match journal.export_jsonl(out, scaler, since, until) {
        // Nothing of a scaler the journal never heard of: a misspelt name,
        // said as `explain --scaler` (and the API) say it.
        Ok(0) if let Some(scaler) = scaler => newest_record(&path, scaler).map(drop),
        Ok(_) => Ok(()),
        // The reader stopped reading (`| head`): not an error of ours.
        Err(crate::journal::JournalError::Export(e))
            if e.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The journal file `at` names, directly or through a config.
pub(super) fn locate(at: &JournalLocation) -> Result<PathBuf, String> {
    match (&at.journal, &at.config) {
        (Some(path), _) => Ok(path.clone()),
        // Only the journal's path is read: the daemon's secrets, TLS key
        // and policy folder need not be readable from this shell.
        (None, Some(config)) => {
            let (_, journal, problem) =
                Config::load_operator_sections(config).map_err(|e| e.to_string())?;
            if let Some(problem) = problem {
                eprintln!(
                    "note: only [journal] was read from the config, which has a problem: {problem}"
                );
            }
            Ok(journal.path)
        }
        (None, None) => Err("give --journal FILE or --config FILE".into()),
    }
}
