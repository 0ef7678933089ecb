//! `scalewise simulate`: a config's scalers against its simulated services,
//! a stretch of simulated time as fast as the CPU allows, and a report.

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::clock::{Clock, format_ms, parse_time_ms, wall_clock_ms};
use crate::config::{Config, Mode};
use crate::daemon::{Daemon, default_cache_dir};
use crate::demo;
use crate::simulate::{self, MAX_DURATION_MS, Plan, Report, STANDING_STILL, ScalerReport, Span};

use super::SimulateArgs;

/// Runs the backtest and prints its report; exit 0, or 1 with the reason.
pub fn simulate(
    args: &SimulateArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(crate::runtime::THREAD_STACK)
        .enable_all()
        .thread_name("scalewise")
        .build()?;
    match runtime.block_on(backtest(args, out)) {
        Ok(()) => Ok(0),
        Err(e) => {
            writeln!(err, "error: {e}")?;
            Ok(1)
        }
    }
}

/// The least wall-clock deadline an evaluation gets in a backtest.
const BACKTEST_TIMEOUT: Duration = Duration::from_secs(10);

async fn backtest(args: &SimulateArgs, out: &mut dyn Write) -> Result<(), String> {
    let run_ms = i64::try_from(args.run_for.as_millis()).unwrap_or(i64::MAX);
    if !(1000..=MAX_DURATION_MS).contains(&run_ms) {
        return Err(format!(
            "--for {}: a simulation runs from 1s to {}",
            humantime::format_duration(args.run_for),
            humantime::format_duration(Duration::from_millis(MAX_DURATION_MS as u64))
        ));
    }
    let warmup_ms = i64::try_from(args.warmup.as_millis()).unwrap_or(i64::MAX);
    // The simulation counts whole seconds: 1.5 s would be counted as 2.
    for (flag, value) in [("--for", args.run_for), ("--warmup", args.warmup)] {
        if value.subsec_nanos() != 0 {
            return Err(format!(
                "{flag} {}: give whole seconds (the simulation steps once a second)",
                humantime::format_duration(value)
            ));
        }
    }
    if warmup_ms > MAX_DURATION_MS - run_ms {
        return Err(format!(
            "--warmup {} and --for {}: a simulation runs for at most {} in all",
            humantime::format_duration(args.warmup),
            humantime::format_duration(args.run_for),
            humantime::format_duration(Duration::from_millis(MAX_DURATION_MS as u64))
        ));
    }
    let scratch = tempfile::Builder::new()
        .prefix("scalewise-simulate-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary folder: {e}"))?;
    let journal = match &args.journal {
        Some(path) if path.exists() => {
            return Err(format!(
                "--journal {}: the file exists; a simulation writes a new journal",
                path.display()
            ));
        }
        Some(path) => path.clone(),
        None => scratch.path().join("journal.db"),
    };
    let config = config(args, journal.clone())?;
    let start_ms = match &args.start {
        Some(text) => parse_time_ms(text).map_err(|e| format!("--start: {e}"))?,
        None => traces_start_ms(&config).unwrap_or(wall_clock_ms() / 1000 * 1000),
    };
    let plans = Plan::of(&config);
    let clock = Clock::starting_at(start_ms, STANDING_STILL);
    let mut daemon = Daemon::build_for_simulation(config, clock)
        .await
        .map_err(|e| e.to_string())?;

    let started = Instant::now();
    let slo = args.slo_latency.map(|d| d.as_secs_f64() * 1000.0);
    let print = args.decisions;
    let mut lines = Vec::new();
    let span = Span {
        start_ms,
        counted_from_ms: start_ms.saturating_add(warmup_ms),
        end_ms: start_ms.saturating_add(warmup_ms).saturating_add(run_ms),
    };
    let report = simulate::run(&mut daemon, &plans, span, slo, |record| {
        if print && record.is_scale() {
            lines.push(demo::decision_line(record, start_ms));
        }
    })
    .await;
    let wall = started.elapsed();
    daemon
        .journal()
        .clone()
        .close()
        .await
        .map_err(|e| format!("the journal did not close cleanly: {e}"))?;
    let report = report?;

    let io = |e: std::io::Error| e.to_string();
    for line in &lines {
        writeln!(out, "{line}").map_err(io)?;
    }
    if args.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        writeln!(out, "{json}").map_err(io)?;
    } else {
        if !lines.is_empty() {
            writeln!(out).map_err(io)?;
        }
        write!(out, "{}", render(&report, wall)).map_err(io)?;
        match &args.journal {
            Some(path) => writeln!(
                out,
                "\nThe journal is in {}: `scalewise journal export --journal {0}` prints every \
                 tick, `scalewise replay MODULE --journal {0}` runs another module version \
                 on the same inputs.",
                path.display()
            ),
            None => writeln!(out, "\n(--journal FILE keeps the run's journal.)"),
        }
        .map_err(io)?;
    }
    Ok(())
}

/// The config to simulate: the file's or the demo's, checked for the
/// simulator, with the run's own journal, no leader election, no
/// notifications and no commit delay. Modules compiled once stay cached where `scalewise run`
/// would keep them.
fn config(args: &SimulateArgs, journal: PathBuf) -> Result<Config, String> {
    let mut config = match &args.config {
        // --policy-dir replaces the file's before it is checked: the file's
        // folder need not exist where the backtest runs.
        Some(path) => Config::load_with_policy_dir(path, args.policy_dir.as_deref())
            .map_err(|e| e.to_string())?,
        None => {
            let config = Config::demo(
                &demo::policy_dir(args.policy_dir.clone()).map_err(|e| e.to_string())?,
                &journal,
            );
            config.validate().map_err(|e| e.to_string())?;
            config
        }
    };
    config.check_simulated().map_err(|e| e.to_string())?;
    if config.runtime.cache_dir.is_none() && args.config.is_some() {
        config.runtime.cache_dir = Some(default_cache_dir(&config.journal.path));
    }
    config.journal.path = journal;
    config.journal.commit_delay = Duration::ZERO;
    // A wall-clock deadline makes the report depend on how busy the machine
    // is (an evaluation stalled 100 ms would fail, and the scaler hold):
    // generous here; fuel, which counts work, stays as configured.
    config.runtime.timeout = config.runtime.timeout.max(BACKTEST_TIMEOUT);
    config.leader_election = None;
    // A backtest changes nothing anyone should be told about.
    config.notifications.clear();
    Ok(config)
}

/// Where the traces the simulations play begin, as dates, when they agree:
/// a trace `scalewise trace` recorded is dated (epoch seconds), and a
/// policy that reads the calendar (`schedule`, `predictive`) must see its
/// office hours at their own hours. `None` (start now) when no trace is
/// played at its recorded speed, the traces begin at different times, or
/// their times are not dates (seconds from 0).
fn traces_start_ms(config: &Config) -> Option<i64> {
    /// 2001-09-09: a trace's first time before this is not a date.
    const DATED_FROM_S: f64 = 1e9;
    let mut starts = config.simulations.values().filter_map(|sim| {
        let trace = sim.get_ref().load.trace.as_ref()?;
        if trace.speed != 1.0 {
            return None;
        }
        let path = config.origin().dir().join(&trace.path);
        let loaded = crate::simulator::Trace::load(&path).ok()?;
        // An offset past the end goes round, as the trace plays.
        let into = trace.offset.as_secs_f64().rem_euclid(loaded.span_s());
        Some(((loaded.first_s() + into) * 1000.0).round() as i64)
    });
    let first = starts.next()?;
    (starts.all(|s| s == first) && first as f64 >= DATED_FROM_S * 1000.0).then_some(first)
}

/// The report as text: a header, then a block per scaler.
pub fn render(report: &Report, wall: Duration) -> String {
    let mut s = String::new();
    let span = report.span;
    let length = |from: i64, to: i64| {
        humantime::format_duration(Duration::from_millis((to - from).max(0) as u64))
    };
    let scalers = report.scalers.len();
    let warmup = if span.counted_from_ms > span.start_ms {
        format!(
            " after {} of warm-up",
            length(span.start_ms, span.counted_from_ms)
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "Simulated {} from {}{warmup} in {:.1} s: {} ticks of {scalers} scaler{}.",
        length(span.counted_from_ms, span.end_ms),
        format_ms(span.counted_from_ms),
        wall.as_secs_f64(),
        thousands(report.ticks),
        if scalers == 1 { "" } else { "s" },
    );
    for scaler in &report.scalers {
        s.push('\n');
        render_scaler(&mut s, scaler, span.end_ms - span.counted_from_ms);
    }
    s
}

fn render_scaler(s: &mut String, r: &ScalerReport, span_ms: i64) {
    let mode = match r.mode {
        Mode::Enforce => "",
        Mode::DryRun => ", dry-run: the service was not scaled",
    };
    let _ = writeln!(
        s,
        "{} (service {}; {}{mode})",
        r.scaler,
        r.service,
        r.policies.join(" + ")
    );
    let _ = writeln!(
        s,
        "  replicas     min {}  mean {:.1}  max {}  (ready: mean {:.1})  {:.1} replica-hours",
        r.replicas.min, r.replicas.mean, r.replicas.max, r.ready.mean, r.replica_hours
    );
    let holds = r.ticks - r.scale_outs - r.scale_ins;
    let mut scaling = format!(
        "  scaling      {} out, {} in, {} held of {} ticks",
        thousands(r.scale_outs),
        thousands(r.scale_ins),
        thousands(holds),
        thousands(r.ticks)
    );
    if !r.envelope.is_empty() {
        let rules: Vec<String> = r
            .envelope
            .iter()
            .map(|(rule, n)| format!("{rule} {}", thousands(*n)))
            .collect();
        let _ = write!(scaling, "; envelope: {}", rules.join(", "));
    }
    let _ = writeln!(s, "{scaling}");
    let _ = writeln!(
        s,
        "  load         mean {:.0} req/s, peak {:.0} req/s; cpu mean {:.1} %",
        r.load.mean, r.load.max, r.cpu.mean
    );
    let seconds = (span_ms / 1000).max(1) as f64;
    let _ = writeln!(
        s,
        "  saturated    {} ({:.2} % of the time); longest queue {:.0} requests",
        duration_text(r.saturated_seconds),
        100.0 * r.saturated_seconds as f64 / seconds,
        r.max_queue
    );
    let p = &r.p95_latency_ms;
    let mut latency = format!(
        "  p95 latency  p50 {}, p90 {}, p99 {}, max {}",
        ms_text(p.p50),
        ms_text(p.p90),
        ms_text(p.p99),
        ms_text(p.max)
    );
    if let Some(slo) = &r.slo {
        let _ = write!(
            latency,
            "; above {}: {} ({:.2} %)",
            ms_text(slo.latency_ms),
            duration_text(slo.seconds_above),
            100.0 * slo.seconds_above as f64 / seconds
        );
    }
    let _ = writeln!(s, "{latency}");
    if r.policy_error_ticks + r.metric_error_ticks + r.actuation_failures > 0 {
        let _ = writeln!(
            s,
            "  problems     a policy failed in {} ticks, a metric in {}, the actuator in {}",
            r.policy_error_ticks, r.metric_error_ticks, r.actuation_failures
        );
    }
}

fn duration_text(seconds: u64) -> String {
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}

fn ms_text(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_an_operator_writes_them() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(5_760), "5,760");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(ms_text(61.4), "61 ms");
        assert_eq!(ms_text(4_200.0), "4.20 s");
        assert_eq!(duration_text(250), "4m 10s");
    }
}
