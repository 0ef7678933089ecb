//! End-to-end harness for the control loop: a [`Harness`] builds the real
//! [`Daemon`] from a config (real policy modules, real journal, simulated
//! targets) and steps its scalers on a manual clock, so a simulated half
//! hour runs in seconds and every tick happens at a known time. The checks
//! ([`check_behavior`], [`check_envelope_steps`]) recompute from the
//! journal alone what the rules allow, with their own arithmetic rather than
//! the envelope's code.

use std::path::Path;
use std::time::Duration;

use scalewise::clock::Clock;
use scalewise::config::{Behavior, Config, Mode, RateLimit, ScalingRules, Select};
use scalewise::daemon::Daemon;
use scalewise::envelope::Rule;
use scalewise::journal::{ActuationRecord, EvaluationOutcome, TickRecord};

/// The start of every stepped run: 2023-11-14T22:13:20Z.
pub const T0: i64 = 1_700_000_000_000;

/// One second, minute, in ms.
pub const SECOND: i64 = 1_000;
/// One minute in ms.
pub const MINUTE: i64 = 60 * SECOND;

/// The speed of the daemon's clock under a [`Harness`], as under
/// `scalewise simulate`: it all but stands still at the start, so the
/// simulated services start exactly at `start_ms` and the harness supplies
/// every tick's time.
pub const STANDING_STILL: f64 = scalewise::simulate::STANDING_STILL;

/// A daemon whose scalers are stepped by hand.
#[derive(Debug)]
pub struct Harness {
    /// The daemon (its scalers are ticked by [`Harness::run_until`]).
    pub daemon: Daemon,
    /// When the simulated world started (the clock's origin).
    pub start_ms: i64,
    /// The next time the stepper looks at (ticks happen on whole seconds).
    next_ms: i64,
}

impl Harness {
    /// Builds the daemon for `config`, whose simulated services start at
    /// `start_ms`. A harness rebuilt after a restart passes the same
    /// `start_ms`: the simulated world kept running while the host was down.
    pub async fn build(config: Config, start_ms: i64) -> Harness {
        let daemon = Daemon::build(config, Clock::starting_at(start_ms, STANDING_STILL))
            .await
            .unwrap_or_else(|e| panic!("the daemon does not build: {e}"));
        Harness {
            daemon,
            start_ms,
            next_ms: start_ms,
        }
    }

    /// Parses and validates `text` as the config file `path`, then builds.
    pub async fn from_text(text: &str, path: &Path, start_ms: i64) -> Harness {
        let config =
            Config::parse(text, path).unwrap_or_else(|e| panic!("the config is invalid:\n{e}"));
        Harness::build(config, start_ms).await
    }

    /// Makes the next step look at `at_ms` (after a restart, the time the
    /// host comes back).
    pub fn resume_at(&mut self, at_ms: i64) {
        self.next_ms = at_ms;
    }

    /// Ticks every scaler whose interval divides the time since the start,
    /// at every whole second from the current step up to `until_ms`
    /// inclusive, in config order; returns the records in tick order.
    pub async fn run_until(&mut self, until_ms: i64) -> Vec<TickRecord> {
        let mut records = Vec::new();
        while self.next_ms <= until_ms {
            let now = self.next_ms;
            for scaler in self.daemon.scalers_mut() {
                let interval = scaler.spec().interval.as_millis() as i64;
                if (now - self.start_ms).rem_euclid(interval) == 0 {
                    records.push(scaler.tick(now).await);
                }
            }
            self.next_ms += SECOND;
        }
        records
    }

    /// Every journal record of `scaler`, oldest first.
    pub async fn journal_of(&self, scaler: &str) -> Vec<TickRecord> {
        self.daemon
            .journal()
            .recent(scaler, i64::MIN)
            .await
            .expect("the journal reads")
    }

    /// Flushes and closes the journal (a graceful stop).
    pub async fn close(self) {
        self.daemon
            .journal()
            .clone()
            .close()
            .await
            .expect("the journal closes");
    }
}

/// The HPA rules of one direction with the defaults filled in.
fn resolve(rules: &ScalingRules, up: bool) -> (i64, Select, Vec<RateLimit>, i64) {
    let defaults = if up {
        ScalingRules::default_up()
    } else {
        ScalingRules::default_down()
    };
    let ms = |d: Duration| d.as_millis() as i64;
    let window = rules
        .stabilization_window
        .or(defaults.stabilization_window)
        .unwrap_or_default();
    let limits = rules
        .limits
        .clone()
        .or(defaults.limits)
        .map(|l| l.to_vec())
        .unwrap_or_default();
    (ms(window), rules.select, limits, ms(rules.cooldown))
}

/// A change the host made to the target, as the journal shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleEvent {
    /// When.
    pub time_ms: i64,
    /// Replicas before.
    pub from: u32,
    /// Replicas after.
    pub to: u32,
}

/// The changes the actuator carried out (enforce mode, done or started).
pub fn scale_events(records: &[TickRecord]) -> Vec<ScaleEvent> {
    records
        .iter()
        .filter(|r| r.mode == Mode::Enforce && r.desired != r.target.current)
        .filter(|r| {
            matches!(
                r.actuation,
                ActuationRecord::Done { .. } | ActuationRecord::Started { .. }
            )
        })
        .map(|r| ScaleEvent {
            time_ms: r.time_ms,
            from: r.target.current,
            to: r.desired,
        })
        .collect()
}

/// The recommendation HPA keeps for a tick, recomputed: what the policies
/// proposed (the current count when they all held); none when the tick
/// computed none: a policy failed, a scale-in was blocked for a missing
/// metric, the count was outside the bounds or scaled to 0. (A policy that
/// failed with its own error while a metric was missing is taken to have
/// abstained for want of it, as the daemon decides from what it reads.)
pub fn recommendation(record: &TickRecord) -> Option<u32> {
    let t = &record.target;
    let current = t.current;
    let proposed = record.proposal.unwrap_or(current);
    let blocked = proposed < current && !record.metric_errors.is_empty();
    let failed = record.evaluations.iter().any(|e| match &e.outcome {
        EvaluationOutcome::Failed { kind, .. } => {
            kind != "policy_error" || record.metric_errors.is_empty()
        }
        EvaluationOutcome::Decided { .. } => false,
    });
    let min = t.min.min(t.max);
    let outside = current > t.max || current < min || (current == 0 && min > 0);
    (!(blocked || failed || outside)).then_some(proposed)
}

/// Checks every journaled scale event of one scaler (oldest first) against
/// the scaler's bounds and behaviour, recomputed from the journal alone:
///
/// - bounds: `min <= to <= max`;
/// - stabilisation: a scale-up goes no higher than the lowest recommendation
///   of the scale-up window, a scale-down no lower than the highest of the
///   scale-down window (this tick's included);
/// - rate limits: from the count at each period's start (the current count
///   minus what earlier events within the period added, plus what they
///   removed), at most `pods` or `percent` per period, the largest (select
///   max) or smallest (select min) change of the limits; none at all when
///   the direction is disabled;
/// - cooldown: no change in a direction within its cooldown of the previous
///   scale event.
///
/// Also checks that each record's stored recommendation is the recomputed
/// one, and that every tick's decision stays within bounds. Returns every
/// violation found.
pub fn check_behavior(
    records: &[TickRecord],
    behavior: &Behavior,
    min: u32,
    max: u32,
) -> Vec<String> {
    let mut problems = Vec::new();
    let ticks: Vec<&TickRecord> = records
        .iter()
        .filter(|r| !matches!(r.actuation, ActuationRecord::ObserveFailed { .. }))
        .collect();
    for r in &ticks {
        if r.recommendation != recommendation(r) {
            problems.push(format!(
                "{}: recommendation {:?} recorded, {:?} recomputed",
                r.time_ms,
                r.recommendation,
                recommendation(r)
            ));
        }
        if r.desired < min || r.desired > max {
            problems.push(format!(
                "{}: desired {} outside {min}..={max}",
                r.time_ms, r.desired
            ));
        }
    }
    let events = scale_events(records);
    for (i, event) in events.iter().enumerate() {
        let t = event.time_ms;
        let (from, to) = (i64::from(event.from), i64::from(event.to));
        let at = format!("{t}: {from} → {to}");
        if to < i64::from(min) || to > i64::from(max) {
            problems.push(format!("{at}: outside {min}..={max}"));
        }
        if from < i64::from(min) || from > i64::from(max) {
            // Brought back within bounds at once; no other rule applies.
            continue;
        }
        let up = to > from;
        let rules = if up {
            &behavior.scale_up
        } else {
            &behavior.scale_down
        };
        let (window, select, limits, cooldown) = resolve(rules, up);

        // Stabilisation over this tick's and earlier recommendations.
        let in_window: Vec<i64> = ticks
            .iter()
            .filter(|r| r.time_ms <= t && t - r.time_ms < window.max(1))
            .filter_map(|r| recommendation(r).map(i64::from))
            .collect();
        if up {
            let lowest = in_window.iter().copied().min().unwrap_or(to);
            if to > lowest.max(from) {
                problems.push(format!(
                    "{at}: above the lowest recommendation {lowest} of the last {window} ms"
                ));
            }
        } else {
            let highest = in_window.iter().copied().max().unwrap_or(to);
            if to < highest.min(from) {
                problems.push(format!(
                    "{at}: below the highest recommendation {highest} of the last {window} ms"
                ));
            }
        }

        // Rate limits, from the count at the start of each period.
        let earlier = &events[..i];
        let bounds: Vec<i64> = limits
            .iter()
            .flat_map(|limit| {
                let period = limit.period.as_millis() as i64;
                let (mut added, mut removed) = (0, 0);
                for e in earlier.iter().filter(|e| t - e.time_ms < period) {
                    let delta = i64::from(e.to) - i64::from(e.from);
                    if delta > 0 {
                        added += delta;
                    } else {
                        removed -= delta;
                    }
                }
                let start = from - added + removed;
                let pods = limit.pods.map(|p| {
                    if up {
                        start + i64::from(p)
                    } else {
                        start - i64::from(p)
                    }
                });
                let percent = limit.percent.map(|p| {
                    let p = i64::from(p);
                    if up {
                        // Rounded up, so a small count can still grow.
                        (start * (100 + p) + 99) / 100
                    } else {
                        start * (100 - p) / 100
                    }
                });
                pods.into_iter().chain(percent)
            })
            .collect();
        match select {
            Select::Disabled => problems.push(format!("{at}: this direction is disabled")),
            _ if bounds.is_empty() => {}
            _ => {
                // Max means the largest change: the highest bound going
                // up, the lowest going down.
                let largest = (select == Select::Max) == up;
                let allowed = if largest {
                    *bounds.iter().max().unwrap()
                } else {
                    *bounds.iter().min().unwrap()
                };
                let ok = if up { to <= allowed } else { to >= allowed };
                if !ok {
                    problems.push(format!(
                        "{at}: the rate limits allow {allowed} ({bounds:?})"
                    ));
                }
            }
        }

        // Cooldown since the previous scale event.
        if cooldown > 0
            && let Some(previous) = earlier.last()
            && t - previous.time_ms < cooldown
        {
            problems.push(format!(
                "{at}: {} ms after the previous scale event, cooldown {cooldown} ms",
                t - previous.time_ms
            ));
        }
    }
    problems
}

/// Checks that each record's envelope steps explain the whole way from the
/// policies' proposal (the current count when they held) to the decision:
/// every step starts where the previous one ended, names a known rule and
/// gives a reason, and the last one ends at `desired`. Returns every
/// record that does not add up.
pub fn check_envelope_steps(records: &[TickRecord]) -> Vec<String> {
    let mut problems = Vec::new();
    for r in records {
        if matches!(r.actuation, ActuationRecord::ObserveFailed { .. }) {
            continue;
        }
        let mut value = r.proposal.unwrap_or(r.target.current);
        for step in &r.envelope {
            if step.from != value || !is_known_rule(&step.rule) || step.reason.is_empty() {
                problems.push(format!(
                    "{}: step {step:?} does not follow {value}",
                    r.time_ms
                ));
            }
            value = step.to;
        }
        if value != r.desired {
            problems.push(format!(
                "{}: proposal {:?} and steps {:?} end at {value}, desired is {}",
                r.time_ms, r.proposal, r.envelope, r.desired
            ));
        }
    }
    problems
}

/// The replica count after each scale event, with its time: the story of a
/// scaler at a glance, for assertion messages.
pub fn story(records: &[TickRecord]) -> String {
    scale_events(records)
        .iter()
        .map(|e| format!("{}s {}→{}", (e.time_ms - T0) / 1000, e.from, e.to))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a journal step names a rule the host's envelope has.
fn is_known_rule(rule: &str) -> bool {
    Rule::ALL.iter().any(|r| r.as_str() == rule)
}
