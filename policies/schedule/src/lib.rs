//! `schedule`: replicas by the calendar. Business hours, a nightly batch,
//! a sale announced for a date: capacity that is known in advance, in the
//! service's own time zone, daylight saving time and all.
//!
//! `windows` lists entries of three fields, separated by `;` or new lines:
//!
//! ```text
//! mon-fri 08:30-18:00 10; sat,sun 10:00-16:00 4; 2026-11-27 00:00-24:00 30
//! ```
//!
//! - the days: `mon`..`sun`, ranges such as `mon-fri` (or `fri-mon`),
//!   `daily`, dates `2026-11-27` and date ranges `2026-12-24..2026-12-26`,
//!   separated by commas;
//! - local start and end, `HH:MM-HH:MM`, the start included and the end not;
//!   `24:00` ends at midnight, and an end not after the start ends on the
//!   next day (`fri 22:00-02:00` runs into Saturday);
//! - the replicas the window asks for at least.
//!
//! `#` starts a comment to the end of its line.
//!
//! In a window (from `lead` before its start, so that replicas that take
//! time to start are ready at the hour) the policy asks for the window's
//! count (the highest, where windows overlap; a window on dates replaces
//! the weekly ones while it lasts: holidays, a sale); outside every window for
//! `outside`, which by default is the scaler's `min`. Always within the
//! scaler's `min`..`max`.
//!
//! # Use it alone or beside a reactive policy
//!
//! Alone, it sets the count by the clock. Beside a reactive policy
//! (`target-tracking`), the host takes the larger answer (scale-out wins),
//! so the window's count is a floor the load can still lift; outside the
//! windows it asks for the scaler's `min` and so never holds a scale-in
//! back.
//!
//! # Parameters
//!
//! | name | kind | default | meaning |
//! |---|---|---|---|
//! | `windows` | text | required | the entries above |
//! | `timezone` | text | `"UTC"` | an IANA time zone (`"Europe/Berlin"`) the days and times are in |
//! | `lead` | duration | `"0s"` | each window starts this much early, at most a day |
//! | `outside` | integer | `0` | replicas outside every window (raised to the scaler's `min`) |
//!
//! The policy reads the tick's time from its context (never a clock) and
//! the time-zone rules from the database built into it, so a replay decides
//! as the tick did.
//!
//! The logic is the plain function [`decide`]; the Wasm export only calls it.
#![deny(missing_docs)]

use jiff::Timestamp;
use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use scalewise_sdk::params::ParamSpec;
use scalewise_sdk::prelude::*;
use serde::Deserialize;

/// The parameters this policy accepts; the source of both `describe()` and
/// [`Params`].
pub const PARAMS: &[ParamSpec] = &[
    ParamSpec::required(
        "windows",
        ParameterKind::Text,
        "Entries `<days> <HH:MM>-<HH:MM> <replicas>` separated by `;` or new lines, e.g. \
         `mon-fri 08:30-18:00 10; 2026-11-27 00:00-24:00 30`. Days: mon..sun, ranges \
         (mon-fri), daily, dates (2026-11-27) and date ranges (2026-12-24..2026-12-26), \
         comma-separated.",
    ),
    ParamSpec::optional(
        "timezone",
        ParameterKind::Text,
        "\"UTC\"",
        "The IANA time zone the days and times are in, e.g. Europe/Berlin.",
    ),
    ParamSpec::optional(
        "lead",
        ParameterKind::Duration,
        "\"0s\"",
        "Each window starts this much early (replicas' start-up time), at most 1d.",
    ),
    ParamSpec::optional(
        "outside",
        ParameterKind::Integer,
        "0",
        "Replicas outside every window (raised to the scaler's min).",
    ),
];

/// The longest `lead`.
const MAX_LEAD_MS: i64 = 24 * 3600 * 1000;

/// The parameters as given, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct RawParams {
    windows: String,
    timezone: String,
    lead: DurationMs,
    outside: i64,
}

/// The policy's parameters, read and checked.
#[derive(Debug, Clone)]
pub struct Params {
    /// The windows, in the order written.
    pub windows: Vec<Window>,
    /// The time zone's name, as given.
    pub timezone_name: String,
    /// The time zone.
    pub timezone: TimeZone,
    /// How early each window starts.
    pub lead: DurationMs,
    /// Replicas outside every window.
    pub outside: u32,
}

impl Params {
    /// Reads and checks the parameters of `ctx`.
    pub fn from_context(ctx: &Context) -> Result<Self, String> {
        let raw: RawParams = ctx.params_checked(PARAMS)?;
        let timezone = TimeZone::get(&raw.timezone).map_err(|_| {
            format!(
                "parameter timezone: {:?} is not a time zone of the IANA database (e.g. \
                 \"Europe/Berlin\", \"America/New_York\", \"UTC\")",
                raw.timezone
            )
        })?;
        if !(0..=MAX_LEAD_MS).contains(&raw.lead.ms()) {
            return Err(format!(
                "parameter lead must be from 0s to 1d, got {}",
                raw.lead
            ));
        }
        let outside = u32::try_from(raw.outside).map_err(|_| {
            format!(
                "parameter outside must be a replica count (0 or more), got {}",
                raw.outside
            )
        })?;
        Ok(Params {
            windows: parse_windows(&raw.windows)?,
            timezone_name: raw.timezone,
            timezone,
            lead: raw.lead,
            outside,
        })
    }
}

/// Which days a window is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Days {
    /// Days of the week (Monday first).
    Weekdays([bool; 7]),
    /// Dates, from..=to each.
    Dates(Vec<(Date, Date)>),
}

impl Days {
    fn includes(&self, date: Date) -> bool {
        match self {
            Days::Weekdays(days) => {
                days[usize::try_from(date.weekday().to_monday_zero_offset()).unwrap_or(0)]
            }
            Days::Dates(ranges) => ranges
                .iter()
                .any(|(from, to)| (*from..=*to).contains(&date)),
        }
    }
}

/// One entry of `windows`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The entry as written (trimmed), for reasons.
    pub text: String,
    /// The days it starts on.
    pub days: Days,
    /// Local start.
    pub from: Time,
    /// Local end; on the next day when not after `from` (`None`: 24:00).
    pub to: Option<Time>,
    /// The replicas it asks for at least.
    pub replicas: u32,
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn weekday(name: &str) -> Option<usize> {
    DAY_NAMES.iter().position(|d| *d == name)
}

fn parse_days(text: &str) -> Result<Days, String> {
    let mut weekdays = [false; 7];
    let mut dates = Vec::new();
    for part in text.split(',') {
        if part == "daily" {
            weekdays = [true; 7];
        } else if let Some(day) = weekday(part) {
            weekdays[day] = true;
        } else if let Some((a, b)) = part.split_once("..") {
            let from = parse_date(a)?;
            let to = parse_date(b)?;
            if to < from {
                return Err(format!("the date range `{part}` ends before it starts"));
            }
            dates.push((from, to));
        } else if let Some((a, b)) = part.split_once('-').filter(|(a, _)| weekday(a).is_some()) {
            let (Some(from), Some(to)) = (weekday(a), weekday(b)) else {
                return Err(format!("`{part}` is not a range of days such as mon-fri"));
            };
            // fri-mon wraps over the weekend.
            let mut day = from;
            loop {
                weekdays[day] = true;
                if day == to {
                    break;
                }
                day = (day + 1) % 7;
            }
        } else if part.starts_with(|c: char| c.is_ascii_digit()) {
            let date = parse_date(part)?;
            dates.push((date, date));
        } else {
            return Err(format!(
                "`{part}` is not a day (mon..sun, mon-fri, daily, 2026-11-27 or \
                 2026-12-24..2026-12-26)"
            ));
        }
    }
    match (weekdays.iter().any(|d| *d), dates.is_empty()) {
        (true, true) => Ok(Days::Weekdays(weekdays)),
        (false, false) => Ok(Days::Dates(dates)),
        (true, false) => Err(format!(
            "`{text}` mixes days of the week and dates; write them as two entries"
        )),
        (false, true) => Err("no days".to_owned()),
    }
}

fn parse_date(text: &str) -> Result<Date, String> {
    text.parse::<Date>()
        .map_err(|_| format!("`{text}` is not a date (YYYY-MM-DD)"))
}

/// `HH:MM`; `24:00` is `None` (the end of the day).
fn parse_time(text: &str) -> Result<Option<Time>, String> {
    let bad = || format!("`{text}` is not a time of day (HH:MM, 00:00 to 24:00)");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: i8 = h.parse().map_err(|_| bad())?;
    let m: i8 = m.parse().map_err(|_| bad())?;
    if h == 24 && m == 0 {
        return Ok(None);
    }
    Time::new(h, m, 0, 0).map(Some).map_err(|_| bad())
}

fn parse_window(text: &str) -> Result<Window, String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [days, times, replicas] = fields[..] else {
        return Err(format!(
            "{} field(s); an entry is `<days> <HH:MM>-<HH:MM> <replicas>`",
            fields.len()
        ));
    };
    let (from, to) = times
        .split_once('-')
        .ok_or_else(|| format!("`{times}` is not a time range HH:MM-HH:MM"))?;
    let from = parse_time(from)?
        .ok_or_else(|| "a window cannot start at 24:00 (write 00:00 of the next day)".to_owned())?;
    let to = parse_time(to)?;
    let replicas = replicas
        .parse::<u32>()
        .map_err(|_| format!("`{replicas}` is not a replica count"))?;
    Ok(Window {
        text: fields.join(" "),
        days: parse_days(days)?,
        from,
        to,
        replicas,
    })
}

/// Parses `windows`; errors name the entry (1-based) and what is wrong.
pub fn parse_windows(text: &str) -> Result<Vec<Window>, String> {
    let mut windows = Vec::new();
    let entries = text
        .lines()
        // `#` starts a comment to the end of the line.
        .flat_map(|line| line.split('#').next().unwrap_or_default().split(';'))
        .map(str::trim)
        .filter(|e| !e.is_empty());
    for (i, entry) in entries.enumerate() {
        let window = parse_window(entry)
            .map_err(|e| format!("parameter windows, entry {} (`{entry}`): {e}", i + 1))?;
        windows.push(window);
    }
    if windows.is_empty() {
        return Err("parameter windows has no entries; e.g. `mon-fri 08:30-18:00 10`".to_owned());
    }
    Ok(windows)
}

/// An occurrence of a window: its start and end instants (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occurrence {
    /// When it starts (before `lead`).
    pub start_ms: i64,
    /// When it ends.
    pub end_ms: i64,
}

/// The local midnight-relative instant `time` (or 24:00) of `date` in `tz`;
/// a time that daylight saving skips is taken as the instant the gap ends
/// (02:30 on the night clocks go from 02:00 to 03:00 is 03:00), and a time
/// it repeats as its first occurrence.
fn instant_ms(date: Date, time: Option<Time>, tz: &TimeZone) -> Option<i64> {
    let datetime = match time {
        Some(time) => date.to_datetime(time),
        None => date.tomorrow().ok()?.to_datetime(Time::midnight()),
    };
    let ambiguous = tz.to_ambiguous_timestamp(datetime);
    let instant = match ambiguous.offset() {
        jiff::tz::AmbiguousOffset::Gap { after, .. } => {
            // Read with the offset after the gap, it falls before the
            // change; the change is the next transition from there.
            let before_change = after.to_timestamp(datetime).ok()?;
            tz.following(before_change).next()?.timestamp()
        }
        _ => ambiguous.compatible().ok()?,
    };
    Some(instant.as_millisecond())
}

impl Window {
    /// Its occurrence starting on `date`, if it starts that day.
    pub fn on(&self, date: Date, tz: &TimeZone) -> Option<Occurrence> {
        if !self.days.includes(date) {
            return None;
        }
        let start_ms = instant_ms(date, Some(self.from), tz)?;
        let end_ms = match self.to {
            Some(to) if to <= self.from => instant_ms(date.tomorrow().ok()?, Some(to), tz)?,
            to => instant_ms(date, to, tz)?,
        };
        // A window that daylight saving skips whole (02:15-03:00 on the
        // night clocks go from 02:00 to 03:00) does not happen that day.
        if end_ms <= start_ms {
            return None;
        }
        Some(Occurrence { start_ms, end_ms })
    }
}

/// The window in force at `now_ms` (counting `lead`) that asks for the
/// most replicas, with its occurrence. A window on dates replaces the
/// weekly ones while it lasts; a window only in its lead (not started yet)
/// can raise the count, never lower it: a holiday at 2 does not bring the
/// evening before down an hour early, and the weekly window after the
/// holiday still starts its lead before the holiday ends. A weekly window
/// whose occurrence starts inside a dated window that asks for fewer
/// replicas is replaced by it whole, its lead too and whatever of it
/// outlasts the dated window: the morning of a holiday does not scale out
/// for the workday that is not coming, nor does its afternoon when the
/// holiday is a morning. One that asks for as many or more (a launch's
/// extra capacity) replaces it only while it lasts.
///
/// `outside`: the count outside every window (the scaler's `min` when
/// `outside` is below it). A window in its lead with no window started
/// wins only when it asks for more: a holiday at 2 does not lower an
/// `outside` of 4 before it starts.
pub fn in_force(p: &Params, now_ms: i64, outside: u32) -> Option<(&Window, Occurrence)> {
    let today = local_date(now_ms, &p.timezone)?;
    // The highest dated window started; the weekly ones started and those
    // only in their lead, kept until every dated window has been seen.
    let mut dated: Option<(&Window, Occurrence)> = None;
    let mut weekly: Vec<(&Window, Occurrence)> = Vec::new();
    let mut leads: Vec<(&Window, Occurrence)> = Vec::new();
    let mut dated_spans: Vec<(u32, Occurrence)> = Vec::new();
    // A window ends at the latest the day after it starts (yesterday's
    // 22:00-02:00), and begins up to a day (`lead`) before its start: on a
    // 23-hour day that reaches back from the day after tomorrow. The day
    // before yesterday is for its dated windows: one may still have been
    // on when yesterday's weekly window started.
    for offset in -2..=2 {
        let Ok(date) = today.checked_add(jiff::Span::new().days(offset)) else {
            continue;
        };
        for window in &p.windows {
            let Some(occurrence) = window.on(date, &p.timezone) else {
                continue;
            };
            if matches!(window.days, Days::Dates(_)) {
                dated_spans.push((window.replicas, occurrence));
            }
            let started = (occurrence.start_ms..occurrence.end_ms).contains(&now_ms);
            let in_lead =
                (occurrence.start_ms - p.lead.ms()..occurrence.start_ms).contains(&now_ms);
            match (started, in_lead, &window.days) {
                (true, _, Days::Dates(_)) => {
                    if dated.is_none_or(|(b, _)| window.replicas > b.replicas) {
                        dated = Some((window, occurrence));
                    }
                }
                (true, _, Days::Weekdays(_)) => weekly.push((window, occurrence)),
                (false, true, _) => leads.push((window, occurrence)),
                (false, false, _) => {}
            }
        }
    }
    // A weekly occurrence that starts inside a dated window asking for
    // fewer replicas is replaced whole: it has no lead, and it does not
    // come back when the dated window ends before it does (the holiday was
    // the morning, the workday is still not coming in the afternoon).
    let replaced = |(window, occurrence): &(&Window, Occurrence)| {
        matches!(window.days, Days::Weekdays(_))
            && dated_spans.iter().any(|(replicas, d)| {
                *replicas < window.replicas && (d.start_ms..d.end_ms).contains(&occurrence.start_ms)
            })
    };
    let weekly = weekly
        .into_iter()
        .filter(|w| !replaced(w))
        .fold(None, highest);
    let leading = leads
        .into_iter()
        .filter(|w| !replaced(w))
        .fold(None, highest);
    let started = dated.or(weekly);
    match (started, leading) {
        (Some(now), Some(next)) if next.0.replicas > now.0.replicas => Some(next),
        (None, Some(next)) if next.0.replicas > outside => Some(next),
        (now, _) => now,
    }
}

/// The one of `best` and `next` that asks for more replicas; `best` on a
/// tie.
fn highest<'a>(
    best: Option<(&'a Window, Occurrence)>,
    next: (&'a Window, Occurrence),
) -> Option<(&'a Window, Occurrence)> {
    match best {
        Some((b, _)) if next.0.replicas <= b.replicas => best,
        _ => Some(next),
    }
}

/// The next window to start (counting `lead`) after `now_ms`, within 400
/// days; or one whose lead has begun but which has not started (it asks
/// for no more than `outside`, so its lead is not in force).
pub fn next(p: &Params, now_ms: i64) -> Option<(&Window, Occurrence)> {
    let today = local_date(now_ms, &p.timezone)?;
    let mut best: Option<(&Window, Occurrence)> = None;
    for offset in -1..=400 {
        let Ok(date) = today.checked_add(jiff::Span::new().days(offset)) else {
            continue;
        };
        for window in &p.windows {
            let Some(occurrence) = window.on(date, &p.timezone) else {
                continue;
            };
            let begins = occurrence.start_ms - p.lead.ms();
            if occurrence.start_ms > now_ms
                && best.is_none_or(|(_, b)| begins < b.start_ms - p.lead.ms())
            {
                best = Some((window, occurrence));
            }
        }
        // Whatever starts on a later day starts later.
        if best.is_some() {
            break;
        }
    }
    best
}

fn local_date(now_ms: i64, tz: &TimeZone) -> Option<Date> {
    let now = Timestamp::from_millisecond(now_ms).ok()?;
    Some(now.to_zoned(tz.clone()).date())
}

/// `ms` as local time in `tz`: `Mon 2026-12-07 08:30`.
fn local(ms: i64, tz: &TimeZone) -> String {
    match Timestamp::from_millisecond(ms) {
        Ok(t) => t
            .to_zoned(tz.clone())
            .strftime("%a %Y-%m-%d %H:%M")
            .to_string(),
        Err(_) => format!("{ms} ms"),
    }
}

/// Decides one tick: the count of the window in force (or `outside`),
/// within the scaler's bounds. This is everything `evaluate` does.
pub fn decide(ctx: &Context) -> Result<Decision, String> {
    let p = Params::from_context(ctx)?;
    let t = &ctx.target;
    let tz = &p.timezone;
    let (wanted, why) = match in_force(&p, ctx.now_ms, p.outside.max(t.min)) {
        Some((window, occurrence)) => {
            let early = if ctx.now_ms < occurrence.start_ms {
                format!(
                    ", starting {} with lead {}",
                    local(occurrence.start_ms, tz),
                    p.lead
                )
            } else {
                String::new()
            };
            (
                window.replicas,
                format!(
                    "window `{}` ({}) until {}{early} asks for {}",
                    window.text,
                    p.timezone_name,
                    local(occurrence.end_ms, tz),
                    window.replicas
                ),
            )
        }
        None => {
            let next = match next(&p, ctx.now_ms) {
                Some((window, occurrence)) => format!(
                    "next: `{}` at {}",
                    window.text,
                    local(occurrence.start_ms, tz)
                ),
                None => "no window starts again".to_owned(),
            };
            let outside = if p.outside == 0 {
                "the scaler's min".to_owned()
            } else {
                p.outside.to_string()
            };
            (
                p.outside,
                format!(
                    "no window in force ({}; {next}): outside asks for {outside}",
                    p.timezone_name
                ),
            )
        }
    };
    // Not `clamp`: it panics on a context with min above max.
    let desired = wanted.max(t.min).min(t.max);
    let bound = if desired == wanted {
        String::new()
    } else if desired == t.max {
        format!(" (max {desired})")
    } else {
        format!(" (min {desired})")
    };
    let outcome = if desired == t.current {
        format!("hold at {desired}")
    } else {
        format!("{} → {desired}", t.current)
    };
    Ok(Decision::scale_or_hold(
        t.current,
        desired,
        format!("{why}: {outcome}{bound}"),
    ))
}

/// The policy's self-description.
pub fn info() -> Info {
    Info::new(
        "schedule",
        env!("CARGO_PKG_VERSION"),
        "Replicas by the calendar: each window (days, local hours, a count) asks for its count \
         from lead before its start; outside them, outside or the scaler's min. Alone or beside \
         a reactive policy (the larger answer wins).",
    )
    .with_params(PARAMS)
}

/// The exported policy.
#[derive(Debug)]
pub struct Schedule;

impl Policy for Schedule {
    fn describe() -> Info {
        info()
    }

    fn evaluate(ctx: Context) -> Result<Decision, String> {
        decide(&ctx)
    }
}

scalewise_sdk::export_policy!(Schedule);

#[cfg(test)]
mod tests;
