//! Journal throughput and cost, with realistic records whose load comes
//! from the NASA July 1995 trace.
//!
//! `cargo bench -p scalewise --bench journal` (release). The need: 10,000
//! scalers ticking every 15 s append ~667 records/s.
//!
//! Sections: record size and encoding cost; saturation throughput (as many
//! appenders as possible) under both durability levels; the paced load of
//! 10,000 scalers at 15 s with append-before-actuate (latency, CPU); reads
//! and restart recovery against the resulting file.

#[path = "../tests/support/records.rs"]
mod records;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use scalewise::clock::wall_clock_ms;
use scalewise::journal::{ActuationRecord, Durability, Journal, JournalOptions, Query, TickRecord};

use records::{Rng, tick_record};

const SCALERS: usize = 10_000;
const INTERVAL: Duration = Duration::from_secs(15);
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let trace = Arc::new(nasa_trace());
    let start_ms = wall_clock_ms() - 3_600_000;
    println!(
        "journal benchmark ({} mode)",
        if quick { "quick" } else { "full" }
    );
    let pool = record_pool(&trace, start_ms, if quick { 500 } else { 4_000 });
    encoding(&pool);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let pool = Arc::new(pool);
    let seconds = if quick { 3 } else { 8 };
    println!("\n== saturation: appenders loop for {seconds} s ==");
    for durability in [Durability::Full, Durability::Normal] {
        for appenders in [16, 1_000, 10_000] {
            let path = dir
                .path()
                .join(format!("saturate-{durability:?}-{appenders}.db"));
            runtime.block_on(saturate(&path, durability, appenders, &pool, seconds));
        }
    }

    let paced_seconds = if quick { 20 } else { 60 };
    println!("\n== paced: {SCALERS} scalers every {INTERVAL:?} for {paced_seconds} s ==");
    let path = dir.path().join("paced.db");
    runtime.block_on(paced(&path, &pool, paced_seconds));
    runtime.block_on(reads(&path));
}

/// Requests per second at each minute of the NASA trace.
fn nasa_trace() -> Vec<f64> {
    let path = trace_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the trace {}: {e}", path.display()));
    text.lines()
        .skip(1)
        .filter_map(|line| line.split(',').nth(1))
        .map(|requests| requests.trim().parse::<f64>().unwrap() / 60.0)
        .collect()
}

/// `$SCALEWISE_TRACES/nasa_jul95_per_minute.csv`, else `shared/traces/` in a
/// folder above this crate.
fn trace_path() -> PathBuf {
    const FILE: &str = "nasa_jul95_per_minute.csv";
    if let Some(dir) = std::env::var_os("SCALEWISE_TRACES") {
        return Path::new(&dir).join(FILE);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("shared/traces").join(FILE))
        .find(|path| path.exists())
        .expect("the NASA trace: set SCALEWISE_TRACES to the folder holding it")
}

/// The load scaler `index` sees: the trace, shifted and scaled per scaler,
/// interpolated between minutes.
fn load(trace: &[f64], index: usize) -> impl Fn(i64) -> f64 + '_ {
    let shift = index * 137;
    let scale = 1.0 + (index % 13) as f64;
    move |time_ms: i64| {
        let minute = time_ms.max(0) as f64 / 60_000.0;
        let at = minute.floor() as usize + shift;
        let frac = minute.fract();
        let a = trace[at % trace.len()];
        let b = trace[(at + 1) % trace.len()];
        (a + (b - a) * frac) * scale
    }
}

fn record_pool(trace: &[f64], start_ms: i64, n: usize) -> Vec<TickRecord> {
    (0..n)
        .map(|i| {
            let scaler = i % SCALERS;
            let tick = (i / SCALERS) as u64 + i as u64;
            let time_ms = start_ms + (i as i64) * 1_500;
            tick_record(
                &format!("scaler-{scaler:05}"),
                tick,
                time_ms,
                &load(trace, scaler),
            )
        })
        .collect()
}

/// How big a record is, and what JSON and zstd cost per record.
fn encoding(pool: &[TickRecord]) {
    let json: Vec<Vec<u8>> = pool
        .iter()
        .map(|r| serde_json::to_vec(r).unwrap())
        .collect();
    let total: usize = json.iter().map(Vec::len).sum();
    let started = Instant::now();
    for r in pool {
        std::hint::black_box(serde_json::to_vec(r).unwrap());
    }
    let serialize = started.elapsed() / pool.len() as u32;
    let started = Instant::now();
    for j in &json {
        std::hint::black_box(serde_json::from_slice::<TickRecord>(j).unwrap());
    }
    let deserialize = started.elapsed() / pool.len() as u32;
    println!("== records ({} built from the NASA trace) ==", pool.len());
    println!(
        "JSON: {} bytes on average; serialise {serialize:?}, parse {deserialize:?} per record",
        total / pool.len()
    );
    for level in [1, 3, 9] {
        let mut compressor = zstd::bulk::Compressor::new(level).unwrap();
        let started = Instant::now();
        let compressed: usize = json
            .iter()
            .map(|j| compressor.compress(j).unwrap().len())
            .sum();
        let per = started.elapsed() / pool.len() as u32;
        let frames: Vec<Vec<u8>> = json
            .iter()
            .map(|j| compressor.compress(j).unwrap())
            .collect();
        let mut decompressor = zstd::bulk::Decompressor::new().unwrap();
        let started = Instant::now();
        for (frame, j) in frames.iter().zip(&json) {
            std::hint::black_box(decompressor.decompress(frame, j.len()).unwrap());
        }
        let unpack = started.elapsed() / pool.len() as u32;
        println!(
            "zstd level {level}: {} bytes on average ({:.1}x smaller); compress {per:?}, \
             decompress {unpack:?} per record",
            compressed / pool.len(),
            total as f64 / compressed as f64,
        );
    }
}

fn options(durability: Durability) -> JournalOptions {
    JournalOptions {
        durability,
        ..JournalOptions::new(WEEK)
    }
}

/// Appenders that append back to back for `seconds`: the most the journal
/// can take.
async fn saturate(
    path: &Path,
    durability: Durability,
    appenders: usize,
    pool: &Arc<Vec<TickRecord>>,
    seconds: u64,
) {
    let journal = Journal::open_with(path, options(durability)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_times();
    let started = Instant::now();
    let tasks: Vec<_> = (0..appenders)
        .map(|task| {
            let (journal, pool, stop, count) =
                (journal.clone(), pool.clone(), stop.clone(), count.clone());
            tokio::spawn(async move {
                let mut i = task;
                while !stop.load(Ordering::Relaxed) {
                    journal.append(pool[i % pool.len()].clone()).await.unwrap();
                    count.fetch_add(1, Ordering::Relaxed);
                    i += appenders;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let cpu = cpu_times().since(&cpu_before);
    journal.close().await.unwrap();
    let n = count.load(Ordering::Relaxed);
    println!(
        "{durability:?}, {appenders:>6} appenders: {:>7.0} appends/s; writer thread {:.0}% of a \
         core, process {:.0}%",
        n as f64 / elapsed.as_secs_f64(),
        cpu.writer.as_secs_f64() / elapsed.as_secs_f64() * 100.0,
        cpu.process.as_secs_f64() / elapsed.as_secs_f64() * 100.0,
    );
}

/// 10,000 scalers, each ticking every 15 s from a random phase: append, and
/// for a scale tick (pending actuation) update the actuation after a
/// simulated actuator call.
async fn paced(path: &Path, pool: &Arc<Vec<TickRecord>>, seconds: u64) {
    let journal = Journal::open_with(path, options(Durability::Full)).unwrap();
    let cpu_before = cpu_times();
    let started = tokio::time::Instant::now();
    let until = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..SCALERS)
        .map(|scaler| {
            let (journal, pool) = (journal.clone(), pool.clone());
            let phase = Duration::from_secs_f64(Rng::new(scaler as u64).unit() * 15.0);
            tokio::spawn(async move {
                let mut appends = Vec::new();
                let mut updates = Vec::new();
                let mut next = started + phase;
                let mut tick = 0usize;
                while next < until {
                    tokio::time::sleep_until(next).await;
                    let mut record = pool[(scaler + tick * 7) % pool.len()].clone();
                    record.scaler = format!("scaler-{scaler:05}");
                    record.time_ms = wall_clock_ms();
                    let t = Instant::now();
                    let id = journal.append(record.clone()).await.unwrap();
                    appends.push(t.elapsed());
                    if record.actuation == ActuationRecord::Pending {
                        let t = Instant::now();
                        let done = ActuationRecord::Done {
                            detail: "scaled".into(),
                        };
                        journal.update_actuation(id, done, None).await.unwrap();
                        updates.push(t.elapsed());
                    }
                    tick += 1;
                    next += INTERVAL;
                }
                (appends, updates)
            })
        })
        .collect();
    let mut appends = Vec::new();
    let mut updates = Vec::new();
    for task in tasks {
        let (a, u) = task.await.unwrap();
        appends.extend(a);
        updates.extend(u);
    }
    let elapsed = started.elapsed();
    let cpu = cpu_times().since(&cpu_before);
    journal.close().await.unwrap();
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    println!(
        "{} appends ({:.0}/s) and {} actuation updates in {:.1} s",
        appends.len(),
        appends.len() as f64 / elapsed.as_secs_f64(),
        updates.len(),
        elapsed.as_secs_f64()
    );
    println!("append latency: {}", percentiles(&mut appends));
    println!("update latency: {}", percentiles(&mut updates));
    println!(
        "CPU: writer thread {:.1}% of a core, whole process {:.1}% (incl. 10k load tasks)",
        cpu.writer.as_secs_f64() / elapsed.as_secs_f64() * 100.0,
        cpu.process.as_secs_f64() / elapsed.as_secs_f64() * 100.0,
    );
    let per_record = bytes as f64 / appends.len().max(1) as f64;
    println!(
        "file: {:.1} MiB, {per_record:.0} bytes per record => {:.1} GiB per day at 667/s",
        bytes as f64 / 1048576.0,
        per_record * 667.0 * 86_400.0 / (1u64 << 30) as f64
    );
}

/// Queries and restart recovery against the paced run's file.
async fn reads(path: &Path) {
    println!("\n== reads on that file ==");
    let journal = Journal::open(path, WEEK).unwrap();
    let ids: Vec<i64> = journal
        .query(Query::latest(1_000))
        .await
        .unwrap()
        .iter()
        .map(|r| r.id.unwrap())
        .collect();
    let n = 500;
    let started = Instant::now();
    for i in 0..n {
        journal.get(ids[i % ids.len()]).await.unwrap().unwrap();
    }
    println!("get(id): {:?} per call", started.elapsed() / n as u32);
    let started = Instant::now();
    for i in 0..n {
        let scaler = format!("scaler-{:05}", (i * 7919) % SCALERS);
        journal.query(Query::scaler(scaler, 50)).await.unwrap();
    }
    println!(
        "query(scaler, limit 50): {:?} per call",
        started.elapsed() / n as u32
    );
    let started = Instant::now();
    let latest = journal.query(Query::latest(100)).await.unwrap();
    println!("query(latest 100): {:?}", started.elapsed());
    assert_eq!(latest.len(), 100);
    let since = wall_clock_ms() - 3_600_000;
    let started = Instant::now();
    let mut states = 0;
    for scaler in 0..SCALERS {
        let recovery = journal
            .recover(&format!("scaler-{scaler:05}"), since)
            .await
            .unwrap();
        states += recovery.policy_states.len();
    }
    println!(
        "recover() of all {SCALERS} scalers, one after another: {:.2} s ({states} policy states)",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let mut out = Vec::new();
    let exported = journal.export_jsonl(&mut out, None, None, None).unwrap();
    println!(
        "export_jsonl: {exported} records, {:.1} MiB, in {:.2} s",
        out.len() as f64 / 1048576.0,
        started.elapsed().as_secs_f64()
    );
    journal.close().await.unwrap();
}

fn percentiles(samples: &mut [Duration]) -> String {
    if samples.is_empty() {
        return "no samples".into();
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    format!(
        "p50 {:?}, p99 {:?}, max {:?}",
        at(0.5),
        at(0.99),
        samples[samples.len() - 1]
    )
}

/// CPU time used so far by the process and by the journal's writer thread.
struct CpuTimes {
    process: Duration,
    writer: Duration,
}

impl CpuTimes {
    fn since(&self, before: &CpuTimes) -> CpuTimes {
        CpuTimes {
            process: self.process.saturating_sub(before.process),
            writer: self.writer.saturating_sub(before.writer),
        }
    }
}

/// From /proc (utime + stime, in clock ticks of 10 ms). Writer threads of
/// journals already closed are gone, so only the open journal counts.
fn cpu_times() -> CpuTimes {
    let parse = |stat: &str| -> Option<(String, Duration)> {
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some((name, Duration::from_millis(ticks * 10)))
    };
    let process = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| parse(&s))
        .map_or(Duration::ZERO, |(_, t)| t);
    let writer = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter_map(|s| parse(&s))
        .filter(|(name, _)| name == "journal-writer")
        .map(|(_, t)| t)
        .sum();
    CpuTimes { process, writer }
}
