//! The offered load of a simulated service: a synthetic curve (base, daily
//! wave, spikes) or a recorded trace, times noise.
//!
//! The load is a pure function of the time since the simulation started, so
//! asking for it twice, or in any order, gives the same answer. The noise is
//! drawn per [`STEP_MS`] bucket from a ChaCha stream chosen by the bucket's
//! index, which keeps it a function of (seed, bucket) alone.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use super::{STEP_MS, SimulatorError};
use crate::config::LoadConfig;

/// Offered load (requests/s) as a function of time since the simulation's start.
#[derive(Debug, Clone)]
pub struct LoadModel {
    shape: Shape,
    spikes: Vec<Spike>,
    noise: Noise,
}

/// The load before spikes and noise.
#[derive(Debug, Clone)]
enum Shape {
    /// `base + amplitude · sin(2π · t / period)`.
    Curve {
        base: f64,
        amplitude: f64,
        period_ms: f64,
    },
    /// A recorded trace, played back.
    Trace {
        trace: Arc<Trace>,
        scale: f64,
        speed: f64,
        offset_s: f64,
    },
}

/// Extra load over `[start_ms, end_ms)` of simulation time.
#[derive(Debug, Clone, Copy)]
struct Spike {
    start_ms: i64,
    end_ms: i64,
    extra: f64,
}

/// Multiplicative noise `1 + N(0, sigma)`, one draw per step bucket.
#[derive(Debug, Clone)]
struct Noise {
    sigma: f64,
    /// Every draw seeds a generator with it and picks the bucket's stream,
    /// so a draw depends on nothing but (seed, bucket). (Kept as the seed,
    /// not as a generator: a ChaCha generator is ~300 bytes, per service.)
    seed: u64,
}

impl Noise {
    fn new(seed: u64, sigma: f64) -> Self {
        Noise { sigma, seed }
    }

    fn factor(&self, bucket: u64) -> f64 {
        if self.sigma == 0.0 {
            return 1.0;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(bucket);
        let z: f64 = StandardNormal.sample(&mut rng);
        1.0 + self.sigma * z
    }
}

impl LoadModel {
    /// Builds the model of `[simulations.<service>].load`. `trace` is the
    /// already loaded file `cfg.trace` names (the caller resolves and caches
    /// it). Errors name the service and the field.
    pub fn new(
        service: &str,
        cfg: &LoadConfig,
        seed: u64,
        trace: Option<Arc<Trace>>,
    ) -> Result<Self, SimulatorError> {
        let bad = |field: &str, message: String| SimulatorError::Config {
            service: service.to_owned(),
            field: format!("load.{field}"),
            message,
        };
        let non_negative = |field: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(v)
            } else {
                Err(bad(field, format!("must be a number >= 0, not {v}")))
            }
        };
        non_negative("base", cfg.base)?;
        non_negative("diurnal_amplitude", cfg.diurnal_amplitude)?;
        non_negative("noise", cfg.noise)?;
        if cfg.diurnal_amplitude > 0.0 && cfg.diurnal_period.is_zero() {
            return Err(bad(
                "diurnal_period",
                "must be longer than zero when diurnal_amplitude is set".into(),
            ));
        }
        let spikes = cfg
            .spikes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if !s.extra.is_finite() {
                    return Err(bad(
                        &format!("spikes[{i}].extra"),
                        format!("must be a finite number, not {}", s.extra),
                    ));
                }
                let start_ms = duration_ms(s.at);
                Ok(Spike {
                    start_ms,
                    end_ms: start_ms.saturating_add(duration_ms(s.duration)),
                    extra: s.extra,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let shape = match (&cfg.trace, trace) {
            (None, _) => Shape::Curve {
                base: cfg.base,
                amplitude: cfg.diurnal_amplitude,
                period_ms: cfg.diurnal_period.as_secs_f64() * 1000.0,
            },
            (Some(t), Some(trace)) => {
                // A trace replaces the curve; silently ignoring a curve the
                // operator also wrote would hide a mistake.
                if cfg.base != 0.0 || cfg.diurnal_amplitude != 0.0 {
                    return Err(bad(
                        "trace",
                        "replaces the synthetic curve; remove base and diurnal_amplitude \
                         (spikes and noise still apply on top of a trace)"
                            .into(),
                    ));
                }
                non_negative("trace.scale", t.scale)?;
                if !(t.speed.is_finite() && t.speed > 0.0) {
                    return Err(bad(
                        "trace.speed",
                        format!("must be a number > 0, not {}", t.speed),
                    ));
                }
                Shape::Trace {
                    trace,
                    scale: t.scale,
                    speed: t.speed,
                    offset_s: t.offset.as_secs_f64(),
                }
            }
            (Some(_), None) => {
                return Err(bad("trace", "the trace file was not loaded".into()));
            }
        };
        Ok(LoadModel {
            shape,
            spikes,
            noise: Noise::new(seed, cfg.noise),
        })
    }

    /// Offered load (requests/s, never negative) `elapsed_ms` after the
    /// simulation's start. Times before the start count as the start.
    pub fn rate(&self, elapsed_ms: i64) -> f64 {
        let elapsed_ms = elapsed_ms.max(0);
        let shape = match &self.shape {
            Shape::Curve {
                base,
                amplitude,
                period_ms,
            } => {
                if *amplitude == 0.0 {
                    *base
                } else {
                    let phase = (elapsed_ms as f64 / period_ms).fract();
                    base + amplitude * (std::f64::consts::TAU * phase).sin()
                }
            }
            Shape::Trace {
                trace,
                scale,
                speed,
                offset_s,
            } => {
                let step_s = STEP_MS as f64 / 1000.0;
                trace.mean_over(
                    offset_s + elapsed_ms as f64 / 1000.0 * speed,
                    step_s * speed,
                ) * scale
            }
        };
        let spikes: f64 = self
            .spikes
            .iter()
            .filter(|s| (s.start_ms..s.end_ms).contains(&elapsed_ms))
            .map(|s| s.extra)
            .sum();
        let bucket = (elapsed_ms / STEP_MS) as u64;
        ((shape + spikes) * self.noise.factor(bucket)).max(0.0)
    }
}

fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A recorded request-rate trace: contiguous bins, each with a rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    path: PathBuf,
    /// Start of each bin, seconds, as written in the file (increasing).
    starts_s: Vec<f64>,
    /// Requests per second in each bin.
    rates: Vec<f64>,
    /// Requests before each bin (from the first bin's start), and in
    /// all of them last: for the mean rate over any span.
    before: Vec<f64>,
    /// End of the last bin.
    end_s: f64,
}

/// The header every trace file starts with.
const TRACE_HEADER: [&str; 2] = ["timestamp_s", "requests"];

impl Trace {
    /// Reads a `timestamp_s,requests` CSV file: each row is a bin from its
    /// timestamp to the next row's; the last bin is as long as the one
    /// before it. Errors name the file and the line.
    pub fn load(path: &Path) -> Result<Self, SimulatorError> {
        let file = File::open(path).map_err(|source| SimulatorError::TraceRead {
            path: path.to_owned(),
            source,
        })?;
        Self::from_reader(path, file)
    }

    /// Reads a trace from `reader`; `path` is only used in errors.
    pub fn from_reader(
        path: &Path,
        mut reader: impl std::io::Read,
    ) -> Result<Self, SimulatorError> {
        let bad = |line: u64, message: String| SimulatorError::TraceFormat {
            path: path.to_owned(),
            line,
            message,
        };
        // Lines are counted here, from a record's byte offset: the csv
        // reader's own count is off after blank lines and in CRLF files.
        let mut text = Vec::new();
        reader
            .read_to_end(&mut text)
            .map_err(|source| SimulatorError::TraceRead {
                path: path.to_owned(),
                source,
            })?;
        let newlines: Vec<u64> = text
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| i as u64)
            .collect();
        // A record's offset may be where the blank lines before it begin.
        let line_at = |byte: u64| {
            let skipped = text
                .iter()
                .skip(byte as usize)
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            let byte = byte + skipped as u64;
            newlines.partition_point(|&n| n < byte) as u64 + 1
        };
        let csv_error = |e: csv::Error| {
            let line = e.position().map_or(0, |p| line_at(p.byte()));
            match e.into_kind() {
                csv::ErrorKind::Io(source) => SimulatorError::TraceRead {
                    path: path.to_owned(),
                    source,
                },
                csv::ErrorKind::UnequalLengths { len, .. } => bad(
                    line,
                    format!("expected 2 fields (timestamp_s,requests), found {len}"),
                ),
                csv::ErrorKind::Utf8 { err, .. } => bad(line, format!("not UTF-8: {err}")),
                other => bad(line, format!("{other:?}")),
            }
        };
        let mut rdr = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(text.as_slice());
        let header = rdr.headers().map_err(csv_error)?;
        if header.iter().ne(TRACE_HEADER) {
            return Err(bad(
                1,
                format!(
                    "expected the header `timestamp_s,requests`, found `{}`",
                    header.iter().collect::<Vec<_>>().join(",")
                ),
            ));
        }
        let mut starts_s = Vec::new();
        let mut requests = Vec::new();
        let mut last_line = 1;
        for record in rdr.records() {
            let record = record.map_err(csv_error)?;
            let line = record.position().map_or(0, |p| line_at(p.byte()));
            last_line = line;
            let field = |i: usize, name: &str| -> Result<f64, SimulatorError> {
                let text = record.get(i).unwrap_or_default();
                let v: f64 = text
                    .parse()
                    .map_err(|_| bad(line, format!("{name} `{text}` is not a number")))?;
                if !v.is_finite() {
                    return Err(bad(line, format!("{name} `{text}` is not finite")));
                }
                Ok(v)
            };
            let ts = field(0, "timestamp_s")?;
            let n = field(1, "requests")?;
            if n < 0.0 {
                return Err(bad(line, format!("requests {n} is negative")));
            }
            if let Some(&prev) = starts_s.last()
                && ts <= prev
            {
                return Err(bad(
                    line,
                    format!("timestamp_s {ts} is not after the previous row's {prev}"),
                ));
            }
            starts_s.push(ts);
            requests.push(n);
        }
        if starts_s.len() < 2 {
            return Err(bad(
                last_line,
                format!(
                    "a trace needs at least two rows to know its bin length, found {}",
                    starts_s.len()
                ),
            ));
        }
        let n = starts_s.len();
        let last_bin_s = starts_s[n - 1] - starts_s[n - 2];
        let end_s = starts_s[n - 1] + last_bin_s;
        let rates = (0..n)
            .map(|i| {
                let next = starts_s.get(i + 1).copied().unwrap_or(end_s);
                requests[i] / (next - starts_s[i])
            })
            .collect();
        let before = std::iter::once(0.0)
            .chain(requests.iter().scan(0.0, |sum, n| {
                *sum += n;
                Some(*sum)
            }))
            .collect();
        tracing::debug!(path = %path.display(), bins = n, span_s = end_s - starts_s[0], "Loaded a load trace.");
        Ok(Trace {
            path: path.to_owned(),
            starts_s,
            rates,
            before,
            end_s,
        })
    }

    /// The file the trace came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of bins.
    pub fn len(&self) -> usize {
        self.rates.len()
    }

    /// Whether the trace has no bins (never true for a loaded trace).
    pub fn is_empty(&self) -> bool {
        self.rates.is_empty()
    }

    /// Length of the whole trace, in seconds.
    pub fn span_s(&self) -> f64 {
        self.end_s - self.starts_s[0]
    }

    /// When the first bin starts, seconds, as written in the file (epoch
    /// seconds in a trace `scalewise trace` recorded).
    pub fn first_s(&self) -> f64 {
        self.starts_s.first().copied().unwrap_or_default()
    }

    /// Requests per second `t_s` seconds after the trace's first bin
    /// starts; the trace loops at its end.
    pub fn rate_at(&self, t_s: f64) -> f64 {
        let t = self.starts_s[0] + t_s.rem_euclid(self.span_s());
        let i = self.starts_s.partition_point(|&s| s <= t).saturating_sub(1);
        self.rates[i]
    }

    /// The mean request rate over `len_s` seconds from `t_s` seconds
    /// after the first bin starts (looping at the trace's end): what a
    /// step that plays `len_s` seconds of the trace offers. A trace played
    /// faster than one bin per step is averaged, not sampled (sampled, it
    /// would skip bins, its peak among them).
    pub fn mean_over(&self, t_s: f64, len_s: f64) -> f64 {
        if len_s <= 0.0 {
            return self.rate_at(t_s);
        }
        (self.requests_until(t_s + len_s) - self.requests_until(t_s)) / len_s
    }

    /// Requests from the first bin's start to `t_s` seconds after it,
    /// looping at the trace's end.
    fn requests_until(&self, t_s: f64) -> f64 {
        let span = self.span_s();
        let laps = (t_s / span).floor();
        let t = self.starts_s[0] + (t_s - laps * span);
        let i = self.starts_s.partition_point(|&s| s <= t).saturating_sub(1);
        let total = self.before[self.rates.len()];
        laps * total + self.before[i] + self.rates[i] * (t - self.starts_s[i])
    }

    /// Requests per second in each bin, in file order.
    pub fn rates(&self) -> &[f64] {
        &self.rates
    }
}

/// What [`write_trace`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrittenTrace {
    /// Rows: one per sample, and one more where a gap comes just before
    /// the last sample (see [`write_trace`]).
    pub rows: usize,
    /// The first row's time, seconds since the epoch.
    pub first_s: i64,
    /// The last row's time.
    pub last_s: i64,
    /// Steps of the asked span with no sample (or a NaN one): the rate
    /// before each gap holds over it, and the trace starts at the first
    /// sample and ends a step after the last.
    pub missing: usize,
}

/// Why [`write_trace`] wrote no trace.
#[derive(Debug, thiserror::Error)]
pub enum TraceWriteError {
    /// A sample that is not a request rate.
    #[error("the query gave {value} at {time}: a request rate is a finite number, never negative",
        time = crate::clock::format_ms(*timestamp_ms))]
    NotARate {
        /// When.
        timestamp_ms: i64,
        /// What it gave.
        value: f64,
    },
    /// Fewer than two samples: a trace needs two rows to know its bin length.
    #[error("the query gave {0} sample(s) with data; a trace needs at least two")]
    TooFew(usize),
    /// The output could not be written.
    #[error("{0}")]
    Write(#[from] csv::Error),
}

/// Writes a trace file (the `timestamp_s,requests` CSV [`Trace::load`]
/// reads) from a request rate sampled every `step_s` seconds from `start_s`
/// to `end_s`, oldest first, as a range query gives it: a row per sample,
/// dated in seconds since the epoch, whose requests are the rate times the
/// time until the next sample (after the last, one step). So a gap in the
/// data leaves the rate before it in force, as a scraper outage would have
/// looked to a policy holding its last value. NaN samples (a rate of
/// nothing over nothing) count as gaps. [`Trace::load`] takes the last row
/// to be as long as the one before it, so a gap just before the last
/// sample ends a step before it, in a row of its own holding the rate
/// before the gap.
pub fn write_trace(
    points: &[crate::policy::Point],
    start_s: i64,
    end_s: i64,
    step_s: i64,
    out: impl std::io::Write,
) -> Result<WrittenTrace, TraceWriteError> {
    let mut samples = Vec::with_capacity(points.len());
    for p in points {
        if p.value.is_nan() {
            continue;
        }
        if p.value < 0.0 || !p.value.is_finite() {
            return Err(TraceWriteError::NotARate {
                timestamp_ms: p.timestamp_ms,
                value: p.value,
            });
        }
        samples.push((p.timestamp_ms.div_euclid(1000), p.value));
    }
    if samples.len() < 2 {
        return Err(TraceWriteError::TooFew(samples.len()));
    }
    let (first_s, last_s) = (samples[0].0, samples[samples.len() - 1].0);
    // The reader takes the last row to be as long as the one before it: a
    // gap there played the last rate back too low (40 req/s after a
    // 3-minute gap came back as 13.3). The gap ends a step before the last
    // sample instead, in a row holding the rate before it.
    if let [.., (prev_s, prev_rate), (last, _)] = samples[..]
        && last - prev_s > step_s
    {
        samples.insert(samples.len() - 1, (last - step_s, prev_rate));
    }
    let mut csv = csv::Writer::from_writer(out);
    csv.write_record(TRACE_HEADER)?;
    for (i, &(t_s, rate)) in samples.iter().enumerate() {
        let next_s = samples.get(i + 1).map_or(t_s + step_s, |&(next, _)| next);
        let requests = rate * (next_s - t_s) as f64;
        csv.write_record([t_s.to_string(), requests.to_string()])?;
    }
    csv.flush().map_err(csv::Error::from)?;
    let steps = usize::try_from((end_s - start_s).div_euclid(step_s) + 1).unwrap_or(0);
    let read = points.iter().filter(|p| !p.value.is_nan()).count();
    Ok(WrittenTrace {
        rows: samples.len(),
        first_s,
        last_s,
        missing: steps.saturating_sub(read),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{SpikeConfig, TraceConfig};

    const HOUR_MS: i64 = 3_600_000;

    fn curve(base: f64, amplitude: f64, noise: f64, spikes: Vec<SpikeConfig>) -> LoadConfig {
        LoadConfig {
            base,
            diurnal_amplitude: amplitude,
            diurnal_period: Duration::from_secs(24 * 3600),
            noise,
            spikes,
            trace: None,
        }
    }

    fn spike(at_s: u64, duration_s: u64, extra: f64) -> SpikeConfig {
        SpikeConfig {
            at: Duration::from_secs(at_s),
            duration: Duration::from_secs(duration_s),
            extra,
        }
    }

    fn traces_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/traces")
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn curve_has_its_peak_trough_and_spikes_where_configured() {
        let cfg = curve(100.0, 40.0, 0.0, vec![spike(3600, 600, 250.0)]);
        let model = LoadModel::new("web", &cfg, 7, None).unwrap();
        let cases = [
            ("start: the wave is at its mean", 0, 100.0),
            ("quarter day: peak", 6 * HOUR_MS, 140.0),
            ("half day: mean again", 12 * HOUR_MS, 100.0),
            ("three quarters: trough", 18 * HOUR_MS, 60.0),
            ("a full day later: the wave repeats", 30 * HOUR_MS, 140.0),
            ("before the start: as at the start", -5_000, 100.0),
        ];
        for (what, t, want) in cases {
            assert!(close(model.rate(t), want), "{what}: {}", model.rate(t));
        }
        // The spike is on over [1 h, 1 h 10 min), off at both edges' outsides.
        let wave = |t: i64| 100.0 + 40.0 * (std::f64::consts::TAU * t as f64 / 86_400_000.0).sin();
        let spike_cases = [
            (HOUR_MS - 1, 0.0),
            (HOUR_MS, 250.0),
            (HOUR_MS + 599_999, 250.0),
            (HOUR_MS + 600_000, 0.0),
        ];
        for (t, extra) in spike_cases {
            assert!(close(model.rate(t), wave(t) + extra), "spike at {t} ms");
        }
    }

    #[test]
    fn load_never_goes_negative() {
        let model = LoadModel::new("web", &curve(10.0, 30.0, 0.0, vec![]), 0, None).unwrap();
        assert_eq!(model.rate(18 * HOUR_MS), 0.0);
        let dip = curve(10.0, 0.0, 0.0, vec![spike(0, 60, -50.0)]);
        let model = LoadModel::new("web", &dip, 0, None).unwrap();
        assert_eq!(model.rate(1_000), 0.0);
        assert_eq!(model.rate(60_000), 10.0);
    }

    #[test]
    fn noise_is_a_function_of_seed_and_bucket_only() {
        let cfg = curve(100.0, 0.0, 0.1, vec![]);
        let a = LoadModel::new("web", &cfg, 42, None).unwrap();
        let b = LoadModel::new("web", &cfg, 42, None).unwrap();
        let other = LoadModel::new("web", &cfg, 43, None).unwrap();
        // Same bucket, any order, any instant inside it: same value.
        let forward: Vec<f64> = (0..200).map(|i| a.rate(i * 1_000)).collect();
        let backward: Vec<f64> = (0..200).rev().map(|i| b.rate(i * 1_000 + 999)).collect();
        assert!(forward.iter().eq(backward.iter().rev()));
        assert!(forward.windows(2).any(|w| w[0] != w[1]), "noise varies");
        let differs = (0..200).filter(|&i| other.rate(i * 1_000) != forward[i as usize]);
        assert!(differs.count() > 190, "another seed gives other noise");
    }

    #[test]
    fn noise_has_the_configured_spread() {
        let model = LoadModel::new("web", &curve(100.0, 0.0, 0.1, vec![]), 1, None).unwrap();
        let n = 20_000;
        let xs: Vec<f64> = (0..n)
            .map(|i| model.rate(i * 1_000) / 100.0 - 1.0)
            .collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        assert!(mean.abs() < 0.003, "mean {mean}");
        assert!((sd - 0.1).abs() < 0.005, "sd {sd}");
    }

    #[test]
    fn curve_settings_are_checked() {
        let cases: [(&str, LoadConfig); 4] = [
            ("load.base", curve(-1.0, 0.0, 0.0, vec![])),
            ("load.noise", curve(1.0, 0.0, f64::NAN, vec![])),
            (
                "load.spikes[1].extra",
                curve(
                    1.0,
                    0.0,
                    0.0,
                    vec![spike(0, 1, 1.0), spike(0, 1, f64::INFINITY)],
                ),
            ),
            ("load.diurnal_period", {
                let mut c = curve(1.0, 1.0, 0.0, vec![]);
                c.diurnal_period = Duration::ZERO;
                c
            }),
        ];
        for (field, cfg) in cases {
            let err = LoadModel::new("web", &cfg, 0, None).unwrap_err();
            assert!(
                matches!(&err, SimulatorError::Config { service, field: f, .. } if service == "web" && f == field),
                "{field}: {err}"
            );
        }
    }

    fn nasa() -> Arc<Trace> {
        Arc::new(Trace::load(&traces_dir().join("nasa_jul95_per_minute.csv")).unwrap())
    }

    fn played(trace: Arc<Trace>, scale: f64, speed: f64, offset_s: u64) -> LoadModel {
        let cfg = LoadConfig {
            trace: Some(TraceConfig {
                path: trace.path().to_owned(),
                scale,
                speed,
                offset: Duration::from_secs(offset_s),
            }),
            ..curve(0.0, 0.0, 0.0, vec![])
        };
        LoadModel::new("web", &cfg, 0, Some(trace)).unwrap()
    }

    /// Played faster than one bin per step, a step offers the mean of the
    /// bins it plays: none is skipped, the peak's minute included (played
    /// at 120x, every other minute was skipped when sampled, the peak's
    /// among them).
    #[test]
    fn a_sped_up_trace_is_averaged_not_sampled() {
        let trace = nasa();
        let model = played(trace.clone(), 1.0, 120.0, 0);
        // Simulated second k plays minutes 2k and 2k + 1; the peak's minute
        // (bin 17,869, odd) is the second half of second 8,934.
        let peak_bin = 1_072_140 / 60;
        assert_eq!(peak_bin % 2, 1);
        let k = (peak_bin - 1) / 2;
        let rates = trace.rates();
        let expected = (rates[peak_bin - 1] + rates[peak_bin]) / 2.0;
        assert!(close(model.rate(k as i64 * 1000), expected));
        // Over the whole trace the mean is kept: the requests played are
        // the trace's requests.
        let seconds = (trace.span_s() / 120.0) as i64;
        let played: f64 = (0..seconds).map(|s| model.rate(s * 1000) * 120.0).sum();
        let total: f64 = rates.iter().map(|r| r * 60.0).sum();
        assert!((played - total).abs() / total < 1e-9, "{played} vs {total}");
        // Across the loop's seam, too.
        let seam = trace.span_s() - 30.0;
        let mean = trace.mean_over(seam, 60.0);
        let expected = (rates[rates.len() - 1] + rates[0]) / 2.0;
        assert!(close(mean, expected), "{mean} vs {expected}");
    }

    #[test]
    fn nasa_trace_peaks_at_the_sts70_launch() {
        let trace = nasa();
        assert_eq!(trace.len(), 39_692);
        assert!(close(trace.span_s(), 2_381_520.0));
        let max = trace.rates().iter().copied().fold(0.0, f64::max);
        assert!(close(max, 409.0 / 60.0));

        let model = played(trace.clone(), 3.0, 1.0, 0);
        let spike_ms = 1_072_140_000;
        assert!(close(model.rate(spike_ms), 409.0 / 60.0 * 3.0));
        // The last second of the bin (a step plays a second of the trace).
        assert!(close(model.rate(spike_ms + 59_000), 409.0 / 60.0 * 3.0));
        assert!(model.rate(spike_ms + 60_000) < model.rate(spike_ms));
        assert!(close(model.rate(0), 42.0 / 60.0 * 3.0), "first bin");
        // The trace loops: one span later the spike comes again.
        let span_ms = 2_381_520_000;
        assert!(close(model.rate(span_ms + spike_ms), 409.0 / 60.0 * 3.0));
        assert!(close(model.rate(span_ms), model.rate(0)));

        // Sped up 60×, one simulated second plays one recorded minute; an
        // offset skips the trace's start.
        let fast = played(trace.clone(), 1.0, 60.0, 0);
        assert!(close(fast.rate(1_072_140_000 / 60), 409.0 / 60.0));
        let skipped = played(trace, 1.0, 1.0, 1_072_140);
        assert!(close(skipped.rate(0), 409.0 / 60.0));
    }

    #[test]
    fn azure_traces_play_per_second() {
        let conv = Trace::load(&traces_dir().join("azure_llm_conv_2023_per_second.csv")).unwrap();
        assert_eq!(conv.len(), 3_503);
        assert_eq!(conv.rates().iter().sum::<f64>(), 19_366.0);
        assert_eq!(conv.rate_at(0.5), 1.0);
        let code = Trace::load(&traces_dir().join("azure_llm_code_2023_per_second.csv")).unwrap();
        assert_eq!(code.rates().iter().copied().fold(0.0, f64::max), 67.0);
        assert_eq!(code.rate_at(1.0), 7.0);
    }

    #[test]
    fn a_trace_together_with_a_curve_is_refused() {
        let trace = nasa();
        let cfg = LoadConfig {
            base: 5.0,
            trace: Some(TraceConfig {
                path: trace.path().to_owned(),
                scale: 1.0,
                speed: 1.0,
                offset: Duration::ZERO,
            }),
            ..curve(0.0, 0.0, 0.0, vec![])
        };
        let err = LoadModel::new("web", &cfg, 0, Some(trace)).unwrap_err();
        assert!(err.to_string().contains("load.trace"), "{err}");
    }

    #[test]
    fn bad_trace_files_are_refused_naming_file_and_line() {
        let cases = [
            ("time,count\n0,1\n1,2\n", 1, "expected the header"),
            (
                "timestamp_s,requests\n0,1\n60,abc\n",
                3,
                "requests `abc` is not a number",
            ),
            (
                "timestamp_s,requests\n0,1\nx,2\n",
                3,
                "timestamp_s `x` is not a number",
            ),
            ("timestamp_s,requests\n0,1\n60,2\n120,-3\n", 4, "negative"),
            (
                "timestamp_s,requests\n0,1\n60,2\n60,3\n",
                4,
                "not after the previous row's 60",
            ),
            (
                "timestamp_s,requests\n0,1\n60,2,7\n",
                3,
                "expected 2 fields",
            ),
            ("timestamp_s,requests\n0,1\n60,inf\n", 3, "not finite"),
            ("timestamp_s,requests\n0,1\n", 2, "at least two rows"),
            ("timestamp_s,requests\n", 1, "at least two rows"),
            // Blank lines and Windows line ends count as lines too.
            (
                "timestamp_s,requests\n0,1\n\n\n60,x\n",
                5,
                "requests `x` is not a number",
            ),
            (
                "timestamp_s,requests\r\n0,1\r\n60,2\r\n120,x\r\n",
                4,
                "requests `x` is not a number",
            ),
            (
                "timestamp_s,requests\r\n0,1\r\n\r\n60,2,7\r\n",
                4,
                "expected 2 fields",
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        for (i, (text, line, message)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("bad{i}.csv"));
            std::fs::write(&path, text).unwrap();
            let err = Trace::load(&path).unwrap_err();
            let shown = err.to_string();
            assert_eq!(err.kind(), "trace_format", "{shown}");
            assert!(
                shown.contains(&format!("{}:{line}:", path.display())),
                "case {i} names file and line {line}: {shown}"
            );
            assert!(shown.contains(message), "case {i}: {shown}");
        }
        let missing = dir.path().join("missing.csv");
        let err = Trace::load(&missing).unwrap_err();
        assert_eq!(err.kind(), "trace_read");
        assert!(err.to_string().contains("missing.csv"), "{err}");
    }

    fn at(t_s: i64, value: f64) -> crate::policy::Point {
        crate::policy::Point {
            timestamp_ms: t_s * 1000,
            value,
        }
    }

    #[test]
    fn a_written_trace_plays_back_the_rates_and_holds_them_over_gaps() {
        // Every minute from 1,000,000 s: 10 req/s, 12.5, a step with no
        // sample and one NaN (gaps), then 40 twice.
        let start_s = 1_000_020;
        let points = [
            at(start_s, 10.0),
            at(start_s + 60, 12.5),
            at(start_s + 120, f64::NAN),
            at(start_s + 240, 40.0),
            at(start_s + 300, 40.0),
        ];
        let mut out = Vec::new();
        let written = write_trace(&points, start_s, start_s + 360, 60, &mut out).unwrap();
        assert_eq!(
            written,
            WrittenTrace {
                rows: 4,
                first_s: start_s,
                last_s: start_s + 300,
                missing: 3
            }
        );
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "timestamp_s,requests\n1000020,600\n1000080,2250\n1000260,2400\n1000320,2400\n"
        );
        let trace = Trace::from_reader(Path::new("written.csv"), text.as_bytes()).unwrap();
        assert_eq!(trace.span_s(), 360.0);
        let rates: Vec<f64> = (0..6).map(|m| trace.rate_at(f64::from(m) * 60.0)).collect();
        assert_eq!(rates, [10.0, 12.5, 12.5, 12.5, 40.0, 40.0]);

        // A gap just before the last sample: its rate plays back as it was
        // (it came back as 2400 requests over the 3-minute bin before it),
        // for one step.
        let mut out = Vec::new();
        let written = write_trace(&points[..4], start_s, start_s + 300, 60, &mut out).unwrap();
        assert_eq!((written.rows, written.missing), (4, 3));
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "timestamp_s,requests\n1000020,600\n1000080,1500\n1000200,750\n1000260,2400\n"
        );
        let trace = Trace::from_reader(Path::new("gap.csv"), text.as_bytes()).unwrap();
        assert_eq!(trace.span_s(), 300.0);
        let rates: Vec<f64> = (0..5).map(|m| trace.rate_at(f64::from(m) * 60.0)).collect();
        assert_eq!(rates, [10.0, 12.5, 12.5, 12.5, 40.0], "{text}");
    }

    #[test]
    fn what_is_not_a_rate_writes_no_trace() {
        let mut out = Vec::new();
        let err = write_trace(&[at(0, 1.0), at(60, -2.0)], 0, 60, 60, &mut out).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.contains("-2 at 1970-01-01T00:01:00") && shown.contains("never negative"),
            "{shown}"
        );
        let err = write_trace(&[at(0, 1.0), at(60, f64::INFINITY)], 0, 60, 60, &mut out);
        assert!(
            matches!(err, Err(TraceWriteError::NotARate { .. })),
            "{err:?}"
        );
        let err = write_trace(&[at(0, 1.0), at(60, f64::NAN)], 0, 60, 60, &mut out).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the query gave 1 sample(s) with data; a trace needs at least two"
        );
        assert!(out.is_empty(), "nothing written: {out:?}");
    }
}
