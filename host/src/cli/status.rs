//! `scalewise status`: a running daemon's scalers from the command line, a
//! line each (as `kubectl get hpa` shows autoscalers), or one in detail.

use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use super::StatusArgs;
use super::remote::{Remote, run_blocking};
use crate::clock::format_ms;
use crate::runtime::log_safe;

/// Prints the scalers; exit 0, or 1 with the reason.
pub fn status(args: &StatusArgs, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<u8> {
    run_blocking(show(args), out, err)
}

async fn show(args: &StatusArgs) -> Result<String, String> {
    let remote = Remote::new(&args.api)?;
    let body = match &args.scaler {
        None => remote.call(Method::GET, &["v1", "scalers"]).await?,
        Some(name) => remote.call(Method::GET, &["v1", "scalers", name]).await?,
    };
    if args.json {
        return as_json(&body);
    }
    let leader = remote.call(Method::GET, &["v1", "leader"]).await?;
    let mut text = follower_note(&leader);
    // Not an error when it cannot be read (a daemon before /v1/config).
    if let Ok(config) = remote.call(Method::GET, &["v1", "config"]).await {
        text.push_str(&config_note(&config));
    }
    match &args.scaler {
        None => text.push_str(&table(body.as_array().map_or(&[][..], Vec::as_slice))),
        Some(_) => text.push_str(&detail(&body)),
    }
    Ok(text)
}

/// Lines saying the config file's last change was refused (the config
/// before it runs), and which changes wait for a restart: without them an
/// operator who edited the file reads the scalers as the new settings.
fn config_note(config: &Value) -> String {
    let mut note = String::new();
    if let Some(error) = config["last_error"].as_object() {
        let when = error.get("at_ms").and_then(Value::as_i64);
        let when = when.map(format_ms).unwrap_or_default();
        let first = error.get("error").and_then(Value::as_str);
        let first = first.unwrap_or_default().lines().next();
        note.push_str(&format!(
            "The config file's last change was refused at {when}; the config before it runs: {}\n",
            log_safe(first.unwrap_or_default())
        ));
    }
    let waiting: Vec<&str> = config["restart_required"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter_map(Value::as_str)
        .collect();
    if !waiting.is_empty() {
        note.push_str(&format!(
            "Changed in the config file, applied only at a restart: {}\n",
            log_safe(&waiting.join(", "))
        ));
    }
    note
}

/// `body` as JSON for a terminal: a policy's words (the last decision, its
/// errors) carry nothing that drives it.
fn as_json(body: &Value) -> Result<String, String> {
    serde_json::to_string_pretty(body)
        .map(crate::runtime::json_safe)
        .map_err(|e| e.to_string())
}

/// A line saying the replica asked does not act, when it does not.
fn follower_note(leader: &Value) -> String {
    if leader["election"] != true || leader["leading"] == true {
        return String::new();
    }
    match leader["leader"].as_str() {
        Some(holder) => format!(
            "This replica follows: {} holds the lease and acts; its scalers do not tick here.\n",
            log_safe(holder)
        ),
        None => "This replica follows and no leader is known yet; its scalers do not tick here.\n"
            .to_owned(),
    }
}

fn number(value: &Value) -> String {
    value
        .as_u64()
        .map_or_else(|| "-".to_owned(), |n| n.to_string())
}

fn text(value: &Value) -> String {
    log_safe(value.as_str().unwrap_or("-")).into_owned()
}

/// `paused`, `changing` (a change in flight), `failing` (problems at the
/// last tick), `waiting` (no tick yet) or `ok`.
fn state(scaler: &Value) -> &'static str {
    let problems = scaler["problems"].as_array().is_some_and(|p| !p.is_empty());
    if scaler["paused"] == true {
        "paused"
    } else if !scaler["in_flight"].is_null() {
        "changing"
    } else if problems {
        "failing"
    } else if scaler["last_tick_ms"].is_null() {
        "waiting"
    } else {
        "ok"
    }
}

fn target(scaler: &Value) -> String {
    format!(
        "{} {}",
        text(&scaler["target_kind"]),
        text(&scaler["target_name"])
    )
}

/// One line per scaler, in columns.
fn table(scalers: &[Value]) -> String {
    let header = [
        "NAME",
        "TARGET",
        "MODE",
        "STATE",
        "CURRENT",
        "READY",
        "DESIRED",
        "MIN",
        "MAX",
        "LAST TICK",
    ];
    let rows: Vec<[String; 10]> = scalers
        .iter()
        .map(|s| {
            [
                text(&s["name"]),
                target(s),
                text(&s["mode"]),
                state(s).to_owned(),
                number(&s["current"]),
                number(&s["ready"]),
                number(&s["desired"]),
                number(&s["min"]),
                number(&s["max"]),
                s["last_tick_ms"]
                    .as_i64()
                    .map_or_else(|| "-".to_owned(), format_ms),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let padded: Vec<String> = cells
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(&mut header.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    if rows.is_empty() {
        out.push_str("(no scalers)\n");
    }
    out
}

/// One scaler, field by field.
fn detail(s: &Value) -> String {
    let mut out = String::new();
    let interval = s["interval_ms"]
        .as_u64()
        .map(|ms| humantime::format_duration(Duration::from_millis(ms)).to_string())
        .unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "{}: {}, {}, every {interval}, {}..{} replicas",
        text(&s["name"]),
        target(s),
        text(&s["mode"]),
        number(&s["min"]),
        number(&s["max"]),
    );
    let _ = writeln!(out, "  state      {}", state(s));
    let _ = writeln!(
        out,
        "  replicas   current {}, ready {}, desired {}",
        number(&s["current"]),
        number(&s["ready"]),
        number(&s["desired"])
    );
    if let Some(at) = s["last_tick_ms"].as_i64() {
        let record = s["last_record_id"]
            .as_i64()
            .map(|id| format!(" (journal record {id})"))
            .unwrap_or_default();
        let _ = writeln!(out, "  last tick  {}{record}", format_ms(at));
        let _ = writeln!(out, "  decision   {}", text(&s["last_decision"]));
    }
    if !s["in_flight"].is_null() {
        let _ = writeln!(out, "  in flight  {}", text(&s["in_flight"]));
    }
    for problem in s["problems"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  problem    {}", text(problem));
    }
    for policy in s["policies"].as_array().into_iter().flatten() {
        let digest: String = policy["digest"]
            .as_str()
            .map(|d| d.chars().take(12).collect())
            .unwrap_or_else(|| "-".into());
        let error = match policy["last_error"].as_str() {
            Some(e) => format!("  failing: {}", log_safe(e.lines().next().unwrap_or(""))),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "  policy     {} {digest}{error}",
            text(&policy["module"])
        );
    }
    if let Some(facts) = s["facts"].as_object().filter(|f| !f.is_empty()) {
        let facts: Vec<String> = facts
            .iter()
            .map(|(k, v)| format!("{} {v}", log_safe(&k.replace('_', " "))))
            .collect();
        let _ = writeln!(out, "  facts      {}", facts.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_output_escapes_what_would_drive_the_terminal() {
        let mut web = scaler("web");
        web["last_decision"] = json!("a\u{9b}2J\u{202e}b");
        let text = as_json(&json!([web])).unwrap();
        assert!(!text.contains(['\u{9b}', '\u{202e}']), "{text}");
        assert!(text.contains(r"a\u009b2J\u202eb"), "{text}");
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back[0]["last_decision"], "a\u{9b}2J\u{202e}b");
    }

    fn scaler(name: &str) -> Value {
        json!({
            "name": name, "mode": "enforce", "paused": false,
            "target_kind": "simulator", "target_name": name,
            "min": 1, "max": 10, "interval_ms": 15000,
            "current": 4, "ready": 3, "desired": 5,
            "last_tick_ms": 1_764_000_000_000_i64, "last_record_id": 42,
            "last_decision": "4 → 5: target-tracking: cpu 80.0 vs target 60.0",
            "problems": [], "policies": [{"module": "target-tracking", "digest": "0123456789abcdef", "last_error": null}],
            "in_flight": null, "facts": {}, "ticks": 7
        })
    }

    #[test]
    fn the_table_has_a_line_per_scaler_in_columns() {
        let mut paused = scaler("checkout");
        paused["paused"] = json!(true);
        let mut failing = scaler("api");
        failing["problems"] = json!(["metric cpu: unreachable"]);
        let text = table(&[scaler("web"), paused, failing]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("NAME      TARGET"), "{text}");
        assert!(
            lines[1].starts_with("web       simulator web       enforce  ok"),
            "{text}"
        );
        assert!(lines[2].contains("paused"), "{text}");
        assert!(lines[3].contains("failing"), "{text}");
        // Columns line up: DESIRED starts at the same place on every line.
        let at = lines[0].find("DESIRED").unwrap();
        assert!(lines[1..].iter().all(|l| &l[at..at + 1] == "5"), "{text}");
        let empty = table(&[]);
        assert_eq!(
            empty,
            "NAME  TARGET  MODE  STATE  CURRENT  READY  DESIRED  MIN  MAX  LAST TICK\n(no scalers)\n"
        );
    }

    #[test]
    fn the_detail_shows_the_decision_problems_and_policies() {
        let mut s = scaler("web");
        s["problems"] = json!(["policy target-tracking: trap\u{1b}[31m"]);
        s["policies"][0]["last_error"] = json!("trap: unreachable\nbacktrace...");
        let text = detail(&s);
        assert!(
            text.starts_with("web: simulator web, enforce, every 15s, 1..10 replicas\n"),
            "{text}"
        );
        assert!(text.contains("  state      failing\n"), "{text}");
        assert!(
            text.contains("  replicas   current 4, ready 3, desired 5\n"),
            "{text}"
        );
        assert!(text.contains("(journal record 42)"), "{text}");
        assert!(
            text.contains("  decision   4 → 5: target-tracking"),
            "{text}"
        );
        assert!(
            text.contains(
                "  policy     target-tracking 0123456789ab  failing: trap: unreachable\n"
            ),
            "{text}"
        );
        assert!(
            !text.contains('\u{1b}'),
            "control characters are escaped: {text}"
        );
    }

    #[test]
    fn a_follower_says_who_acts() {
        assert_eq!(
            follower_note(&json!({"election": false, "leading": true})),
            ""
        );
        assert_eq!(
            follower_note(&json!({"election": true, "leading": true, "leader": "a"})),
            ""
        );
        let note = follower_note(&json!({"election": true, "leading": false, "leader": "a-1"}));
        assert!(note.contains("a-1 holds the lease"), "{note}");
    }
}
