//! The fleet benchmark (issue 3): 10,000 simulated scalers at a 15 s
//! interval in one host, each scaled by the real `target-tracking` module,
//! run by the real daemon at real speed (compiling its module in a child
//! process of the real binary, as `scalewise run` does). Goals: < 25% of one core, tick lag
//! p99 < 50 ms, RSS ≤ 30 MiB + 2 MiB per loaded Rust policy.
//!
//! `cargo bench -p scalewise-tests --bench fleet`
//!
//! Settings (environment): `FLEET_SCALERS` (10000), `FLEET_SECONDS` (how
//! long the daemon runs, 240), `FLEET_WARMUP_SECONDS` (left out of the
//! figures, 45: every scaler has ticked by then), `FLEET_INTERVAL_SECONDS`
//! (15), `FLEET_JOURNAL_DIR` (where the journal goes; a temporary folder),
//! `FLEET_COMMIT_DELAY_MS` (the journal's `commit_delay`; the config's
//! default when unset), `FLEET_CACHE_DIR` (the module cache, `[runtime]
//! cache_dir`: a second run with the same folder starts as a restarted daemon
//! does, from compiled code, and never runs the compiler; by default the
//! cache is next to the journal, so every run compiles), `FLEET_PROFILE_EXIT`
//! (set: exit at the end of the window without shutting
//! down, so that a heap profiler such as heaptrack reports what the running
//! daemon holds as "leaked").
//!
//! Measured over the window after warm-up:
//! - CPU: user + system time of the whole process (`/proc/self/stat`), as a
//!   percentage of one core;
//! - tick lag: how late each tick started versus its schedule, from the
//!   journal (a tick's `time_ms` minus its slot on the scaler's grid,
//!   `scalewise::daemon::tick_offset_ms`), plus the daemon's own
//!   `tick_lag_seconds` histogram as a cross-check;
//! - memory: VmRSS sampled every second (max and last; the last split into
//!   anonymous and file-backed) and VmHWM, from
//!   `/proc/self/status`;
//! - journal appends and commits (transactions, each an fsync) per second.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use scalewise::clock::Clock;
use scalewise::config::Config;
use scalewise::daemon::{Daemon, tick_offset_ms};
use scalewise::journal::{Journal, Query};
use scalewise::runtime::Compiler;
use scalewise_tests::{artifacts, policy_dir};

// The allocator the `scalewise` binary runs with, so the figures are the
// binary's.
#[global_allocator]
static ALLOC: scalewise::Allocator = scalewise::Allocator;

fn setting(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, not {v:?}")),
        Err(_) => default,
    }
}

/// The config: one simulated service per scaler, with loads that differ
/// (phase, size, spikes) so that some scalers scale while most hold, as in a
/// real fleet.
fn fleet_config(scalers: u64, interval_s: u64, policy_dir: &str, journal: &str) -> String {
    let mut toml = format!(
        "policy_dir = {policy_dir:?}\n\n[journal]\npath = {journal:?}\nretention = \"1d\"\n"
    );
    if let Ok(ms) = std::env::var("FLEET_COMMIT_DELAY_MS") {
        writeln!(toml, "commit_delay = \"{ms}ms\"").unwrap();
    }
    if let Ok(dir) = std::env::var("FLEET_CACHE_DIR") {
        writeln!(toml, "\n[runtime]\ncache_dir = {dir:?}").unwrap();
    }
    toml.push('\n');
    for i in 0..scalers {
        let name = format!("svc-{i:05}");
        let base = 200 + (i % 7) * 100;
        let spike = if i % 10 == 0 {
            format!(
                "spikes = [{{ at = \"{}s\", duration = \"2m\", extra = {} }}]\n",
                30 + (i % 120),
                base
            )
        } else {
            String::new()
        };
        writeln!(
            toml,
            r#"[simulations.{name}]
seed = {i}
capacity_per_replica = 100.0
initial_replicas = {replicas}
startup_delay = "30s"

[simulations.{name}.load]
base = {base}.0
diurnal_amplitude = {amplitude}.0
diurnal_period = "{period}m"
noise = 0.05
{spike}
[[scalers]]
name = "{name}"
interval = "{interval_s}s"
min = 1
max = 40
target = {{ kind = "simulator", service = "{name}" }}

[scalers.metrics.cpu]
source = "simulator"
query = "cpu"

[[scalers.policies]]
module = "target-tracking"
params = {{ metric = "cpu", target = 60.0 }}
"#,
            replicas = base / 60 + 1,
            amplitude = base / 2,
            period = 20 + i % 40,
        )
        .unwrap();
    }
    toml
}

/// user + system CPU time of this process.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// `/proc/self/status` fields in KiB (`VmRSS`, `VmHWM`, ...), from one read.
fn status_kib<const N: usize>(fields: [&str; N]) -> [u64; N] {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    fields.map(|field| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    let scalers = setting("FLEET_SCALERS", 10_000);
    let seconds = setting("FLEET_SECONDS", 240);
    let warmup = setting("FLEET_WARMUP_SECONDS", 45);
    let interval_s = setting("FLEET_INTERVAL_SECONDS", 15);
    assert!(warmup < seconds, "the warm-up must be shorter than the run");

    let modules = policy_dir(&[("target-tracking", artifacts::TARGET_TRACKING)]);
    let journal_dir = match std::env::var("FLEET_JOURNAL_DIR") {
        Ok(dir) => tempfile::tempdir_in(dir).expect("a folder for the journal"),
        Err(_) => tempfile::tempdir().expect("a folder for the journal"),
    };
    let journal_path = journal_dir.path().join("fleet.db");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let built = Instant::now();
        let text = fleet_config(
            scalers,
            interval_s,
            &modules.path().display().to_string(),
            &journal_path.display().to_string(),
        );
        let config = Config::parse(&text, std::path::Path::new("fleet.toml"))
            .unwrap_or_else(|e| panic!("the fleet config is invalid: {e}"));
        drop(text);
        // As `scalewise run` does: modules compile in a child process of the
        // real binary, so the compiler's memory is never the daemon's.
        let compiler = Compiler::process(env!("CARGO_BIN_EXE_scalewise-cli"));
        let daemon = Daemon::build_with_compiler(config, Clock::system(), compiler)
            .await
            .unwrap_or_else(|e| panic!("the daemon does not build: {e}"));
        let telemetry = daemon.app_state().telemetry;
        println!(
            "fleet: {scalers} scalers at {interval_s}s, built in {:.1}s; RSS {:.1} MiB; \
             running {seconds}s (first {warmup}s are warm-up)",
            built.elapsed().as_secs_f64(),
            mib(status_kib(["VmRSS"])[0]),
        );

        let started = Instant::now();
        let writer = daemon.journal().clone();
        let sampler = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(warmup)).await;
            let from_ms = scalewise::clock::wall_clock_ms();
            let cpu_before = cpu_time();
            let commits_before = writer.commits();
            let window_start = Instant::now();
            let mut rss_max = 0;
            let mut rss_last = 0;
            let mut rss_split = (0, 0);
            // The last sample is taken half a second before the daemon is
            // told to stop: one taken after would read a daemon that has
            // already freed its scalers.
            let end = started + Duration::from_secs(seconds) - Duration::from_millis(500);
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                tokio::time::sleep((end - now).min(Duration::from_secs(1))).await;
                let [rss, anon, file] = status_kib(["VmRSS", "RssAnon", "RssFile"]);
                rss_last = rss;
                rss_max = rss_max.max(rss);
                rss_split = (anon, file);
            }
            let cpu = cpu_time() - cpu_before;
            let wall = window_start.elapsed();
            let commits = writer.commits() - commits_before;
            let until_ms = scalewise::clock::wall_clock_ms();
            if std::env::var_os("FLEET_PROFILE_EXIT").is_some() {
                println!(
                    "profile exit: CPU {:.1}% of one core, RSS {:.1} MiB",
                    100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
                    mib(rss_last)
                );
                std::process::exit(0);
            }
            (from_ms, until_ms, cpu, wall, rss_max, rss_last, rss_split, commits)
        });
        daemon
            .run(None, tokio::time::sleep(Duration::from_secs(seconds)))
            .await
            .expect("the daemon runs");
        let (from_ms, until_ms, cpu, wall, rss_max, rss_last, (anon, file), commits) =
            sampler.await.unwrap();
        let [hwm] = status_kib(["VmHWM"]);

        let journal = Journal::open_read_only(&journal_path).expect("the journal opens");
        let (lags, per_scaler, scales) =
            lags_from_journal(&journal, from_ms, until_ms, interval_s as i64 * 1000);
        let window_s = (until_ms - from_ms) as f64 / 1000.0;
        let ticks = lags.len();
        let min_ticks = per_scaler.iter().copied().min().unwrap_or(0);
        let exposition = telemetry.encode();

        println!("window: {window_s:.1}s after {warmup}s of warm-up");
        println!(
            "CPU: {:.1}% of one core ({:.2}s user+sys over {:.1}s)",
            100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
            cpu.as_secs_f64(),
            wall.as_secs_f64()
        );
        println!(
            "tick lag (journal, {ticks} ticks): p50 {} ms, p99 {} ms, max {} ms",
            percentile(&lags, 50.0),
            percentile(&lags, 99.0),
            lags.last().copied().unwrap_or(0)
        );
        println!("tick lag (daemon histogram, whole run): {}", histogram_summary(&exposition));
        println!(
            "RSS: {:.1} MiB at the end, {:.1} MiB max in the window; VmHWM {:.1} MiB (includes start-up)",
            mib(rss_last),
            mib(rss_max),
            mib(hwm)
        );
        println!(
            "  at the end: {:.1} MiB anonymous (the heap, stacks, policy instances' memory), \
             {:.1} MiB file-backed (the binary's code and read-only data)",
            mib(anon),
            mib(file)
        );
        println!(
            "journal: {:.0} appends/s ({ticks} records in the window; {scales} scale decisions), \
             {:.0} commits/s; every scaler ticked at least {min_ticks} times in the window",
            ticks as f64 / window_s,
            commits as f64 / wall.as_secs_f64()
        );
    });
}

/// Every tick's lag (ms) in `[from_ms, until_ms)`, sorted; ticks per scaler;
/// and how many ticks scaled. Read in slices so a long window never loads
/// every record at once.
fn lags_from_journal(
    journal: &Journal,
    from_ms: i64,
    until_ms: i64,
    interval_ms: i64,
) -> (Vec<i64>, Vec<u64>, u64) {
    let mut lags = Vec::new();
    let mut per_scaler = std::collections::HashMap::<String, u64>::new();
    let mut offsets = std::collections::HashMap::<String, i64>::new();
    let mut scales = 0;
    let slice = 5_000;
    let mut at = from_ms;
    while at < until_ms {
        let end = (at + slice).min(until_ms);
        let records = journal
            .query_blocking(&Query {
                scaler: None,
                since_ms: Some(at),
                until_ms: Some(end),
                limit: usize::MAX,
            })
            .expect("the journal reads");
        for record in records {
            let offset = *offsets
                .entry(record.scaler.clone())
                .or_insert_with(|| tick_offset_ms(&record.scaler, interval_ms));
            lags.push((record.time_ms - offset).rem_euclid(interval_ms));
            *per_scaler.entry(record.scaler).or_default() += 1;
            if record.desired != record.target.current {
                scales += 1;
            }
        }
        at = end;
    }
    lags.sort_unstable();
    (lags, per_scaler.into_values().collect(), scales)
}

/// Count, mean and the bucket holding p99 of `scalewise_tick_lag_seconds`.
fn histogram_summary(exposition: &str) -> String {
    let value = |line: &str| -> f64 {
        line.rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let mut count = 0.0;
    let mut sum = 0.0;
    let mut buckets = Vec::new();
    for line in exposition.lines() {
        if line.starts_with("scalewise_tick_lag_seconds_count") {
            count = value(line);
        } else if line.starts_with("scalewise_tick_lag_seconds_sum") {
            sum = value(line);
        } else if let Some(rest) = line.strip_prefix("scalewise_tick_lag_seconds_bucket{le=\"") {
            let le = rest.split('"').next().unwrap_or("+Inf").to_owned();
            buckets.push((le, value(line)));
        }
    }
    let p99 = buckets
        .iter()
        .find(|(_, c)| *c >= 0.99 * count)
        .map(|(le, _)| format!("≤ {le} s"))
        .unwrap_or_default();
    format!(
        "{count:.0} ticks, mean {:.1} ms, p99 {p99}",
        if count > 0.0 {
            1000.0 * sum / count
        } else {
            0.0
        }
    )
}
