//! Native unit tests: forecasts from past days, combining, bounds, the
//! hold on a short history, parameter checks.

use super::*;
use scalewise_sdk::serde_json::{self, json};
use scalewise_sdk::testing::ContextBuilder;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
/// Day 8, 09:00.
const NOW: i64 = 7 * DAY + 9 * HOUR;

/// A load sampled every 5 minutes from `days` days before `NOW` up to `NOW`:
/// `base` all day, `peak` from 09:05 to 09:10 of every day (a morning
/// rush), times `1 + day_index × growth`.
fn load(days: i64, base: f64, peak: f64, growth: f64) -> Vec<(i64, f64)> {
    let first = NOW - days * DAY;
    (0..=days * DAY / (5 * MINUTE))
        .map(|i| {
            let t = first + i * 5 * MINUTE;
            let of_day = t.rem_euclid(DAY);
            let day = (t - first) / DAY;
            let level = if (9 * HOUR + 5 * MINUTE..=9 * HOUR + 10 * MINUTE).contains(&of_day) {
                peak
            } else {
                base
            };
            (t, level * (1.0 + day as f64 * growth))
        })
        .collect()
}

fn ctx(samples: &[(i64, f64)], current: u32, extra: serde_json::Value) -> Context {
    let mut params = json!({"metric": "rps", "per_replica": 10});
    for (k, v) in extra.as_object().unwrap() {
        params[k] = v.clone();
    }
    ContextBuilder::new()
        .now_ms(NOW)
        .replicas(current, 1, 50)
        .metric("rps", samples)
        .params(params)
        .build()
}

#[test]
fn sizes_for_the_rush_the_past_days_had_in_the_coming_horizon() {
    // Every day the rush is 200 rps at 09:05; now it is 09:00 and quiet.
    let d = decide(&ctx(&load(7, 30.0, 200.0, 0.0), 3, json!({}))).unwrap();
    assert_eq!(d.desired(), Some(20), "{}", d.reason);
    assert_eq!(
        d.reason,
        "rps forecast for the next 10m: 200.0 (median of the peaks of 7 past periods of 1day), \
         10.0 per replica needs 20: 3 → 20"
    );
    // Ten minutes later the rush of the past days is behind the horizon:
    // only the base is left to provision for (scale-in is the other
    // policies' to agree to).
    let mut later = ctx(&load(7, 30.0, 200.0, 0.0), 20, json!({}));
    later.now_ms = NOW + 11 * MINUTE;
    assert_eq!(decide(&later).unwrap().desired(), Some(3));
}

#[test]
fn combine_chooses_how_the_days_count() {
    // The rush grew 10% a day: 200, 220, ... 320 over days 0-6, and the
    // days looked at are the seven before today.
    let samples = load(7, 30.0, 200.0, 0.1);
    let desired = |combine: &str| {
        decide(&ctx(&samples, 3, json!({ "combine": combine })))
            .unwrap()
            .desired()
    };
    assert_eq!(desired("max"), Some(32));
    assert_eq!(desired("median"), Some(26));
    assert_eq!(desired("mean"), Some(26));
    assert_eq!(Combine::Median.apply(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    assert_eq!(Combine::Mean.apply(&[1.0, 2.0]), 1.5);
    assert_eq!(Combine::Max.apply(&[1.0, 7.0, 2.0]), 7.0);
}

#[test]
fn headroom_and_bounds_shape_the_answer() {
    let samples = load(7, 30.0, 200.0, 0.0);
    let d = decide(&ctx(&samples, 3, json!({"headroom": 1.2}))).unwrap();
    assert_eq!(d.desired(), Some(24));
    assert!(d.reason.contains("× headroom 1.2"), "{}", d.reason);
    let mut capped = ctx(&samples, 3, json!({}));
    capped.target.max = 12;
    let d = decide(&capped).unwrap();
    assert_eq!(d.desired(), Some(12));
    assert!(
        d.reason.ends_with("needs 20: 3 → 12 (max 12)"),
        "{}",
        d.reason
    );
    // Already there: a hold that says so.
    let d = decide(&ctx(&samples, 20, json!({}))).unwrap();
    assert_eq!(d.desired(), None);
    assert!(d.reason.ends_with("needs 20: hold at 20"), "{}", d.reason);
    // A whole number is not rounded up by floating-point noise.
    assert_eq!(replicas_for(0.3 * 3.0, 0.1), 9);
}

#[test]
fn a_short_history_holds_and_says_why() {
    // One day of samples: one past period, two needed.
    let d = decide(&ctx(&load(1, 30.0, 200.0, 0.0), 3, json!({}))).unwrap();
    assert_eq!(d.desired(), None);
    assert_eq!(
        d.reason,
        "rps has samples in 1 of the last 7 periods of 1day at this time of the period, fewer \
         than min_cycles 2: no forecast, hold at 3 (is the metric's window 7days?)"
    );
    // With min_cycles 1 that one day is enough.
    let d = decide(&ctx(
        &load(1, 30.0, 200.0, 0.0),
        3,
        json!({"min_cycles": 1}),
    ))
    .unwrap();
    assert_eq!(d.desired(), Some(20));
    // Asked to leave the count to the other policies meanwhile: the min.
    let d = decide(&ctx(
        &load(1, 30.0, 200.0, 0.0),
        3,
        json!({"without_forecast": "min"}),
    ))
    .unwrap();
    assert_eq!(d.desired(), Some(1));
    assert!(
        d.reason
            .ends_with("no forecast: min 1 (the other policies decide)"),
        "{}",
        d.reason
    );
    let err = decide(&ctx(
        &load(1, 30.0, 200.0, 0.0),
        3,
        json!({"without_forecast": "scale"}),
    ))
    .unwrap_err();
    assert!(
        err.contains("without_forecast must be hold or min"),
        "{err}"
    );
}

#[test]
fn a_weekly_period_looks_at_the_same_weekday() {
    // Three weeks of samples; a weekly period with two cycles looks 7 and
    // 14 days back, where the rush was.
    let d = decide(&ctx(
        &load(21, 30.0, 200.0, 0.0),
        3,
        json!({"period": "7d", "cycles": 2}),
    ))
    .unwrap();
    assert_eq!(d.desired(), Some(20), "{}", d.reason);
    assert!(d.reason.contains("2 past periods of 7days"), "{}", d.reason);
}

/// The day after clocks went forward in Berlin (2026-03-29): the rush at
/// 09:05 local time was at 08:05 UTC on the days before and is at 07:05
/// UTC now. In the service's time zone each past day is looked at at 09:00
/// local; in UTC, six of the seven days were looked at an hour early.
#[test]
fn a_daily_period_keeps_local_time_across_daylight_saving() {
    let berlin = TimeZone::get("Europe/Berlin").unwrap();
    let at = |text: &str| text.parse::<Timestamp>().unwrap().as_millisecond();
    let now = at("2026-03-30T07:00:00Z");
    let samples: Vec<(i64, f64)> = (at("2026-03-22T00:00:00Z")..=now)
        .step_by(5 * MINUTE as usize)
        .map(|t| {
            let local = Timestamp::from_millisecond(t)
                .unwrap()
                .to_zoned(berlin.clone());
            let minute = i64::from(local.hour()) * 60 + i64::from(local.minute());
            let rush = (9 * 60 + 5..=9 * 60 + 10).contains(&minute);
            (t, if rush { 200.0 } else { 30.0 })
        })
        .collect();
    let decide_in = |zone: &str| {
        let mut c = ctx(&samples, 3, json!({ "timezone": zone }));
        c.now_ms = now;
        decide(&c).unwrap()
    };
    let local = decide_in("Europe/Berlin");
    assert_eq!(local.desired(), Some(20), "{}", local.reason);
    let utc = decide_in("UTC");
    assert_eq!(utc.desired(), None, "{}", utc.reason);
    // The week after clocks went back (2026-10-25) the oldest day looked at
    // is 7 days and an hour back: a window of exactly 7 days misses it, and
    // the hold says how long the window must be.
    let now = at("2026-10-26T08:00:00Z");
    let week: Vec<(i64, f64)> = (now - 7 * DAY..=now)
        .step_by(5 * MINUTE as usize)
        .map(|t| (t, 30.0))
        .collect();
    let mut c = ctx(
        &week,
        3,
        json!({ "timezone": "Europe/Berlin", "min_cycles": 7 }),
    );
    c.now_ms = now;
    let held = decide(&c).unwrap();
    assert_eq!(held.desired(), None, "{}", held.reason);
    assert!(
        held.reason.contains("6 of the last 7 periods")
            && held.reason.ends_with("(is the metric's window 7days 1h?)"),
        "{}",
        held.reason
    );
    // The hint is the same in a week with no change of the clocks (the
    // window has to hold the fall-back's week too).
    c.now_ms = at("2026-02-10T08:00:00Z");
    let held = decide(&c).unwrap();
    assert!(
        held.reason.ends_with("(is the metric's window 7days 1h?)"),
        "{}",
        held.reason
    );
    // A period not of whole days counts milliseconds, whatever the zone.
    let p: Params = serde_json::from_value(json!({
        "metric": "rps", "per_replica": 1, "horizon": "10m", "period": "12h", "cycles": 2,
        "min_cycles": 1, "combine": "max", "headroom": 1, "without_forecast": "hold",
        "timezone": "Europe/Berlin"
    }))
    .unwrap();
    assert_eq!(period_before(&p, now, 2), now - DAY);
}

#[test]
fn bad_parameters_are_refused_by_name() {
    let samples = load(2, 30.0, 200.0, 0.0);
    let refused = |extra: serde_json::Value| decide(&ctx(&samples, 3, extra)).unwrap_err();
    assert_eq!(
        refused(json!({"per_replica": 0})),
        "parameter per_replica must be a number > 0, got 0.0"
    );
    assert_eq!(
        refused(json!({"horizon": "1d"})),
        "parameter horizon (1day) must be longer than 0s and shorter than period (1day)"
    );
    assert_eq!(
        refused(json!({"min_cycles": 8})),
        "parameter min_cycles must be between 1 and cycles (7), got 8"
    );
    assert!(
        refused(json!({"combine": "mode"}))
            .ends_with("parameter combine must be median, mean or max, got \"mode\""),
        "{}",
        refused(json!({"combine": "mode"}))
    );
    assert!(
        refused(json!({"timezone": "Europe/Berlinn"}))
            .contains("\"Europe/Berlinn\" is not a time zone of the IANA database"),
        "{}",
        refused(json!({"timezone": "Europe/Berlinn"}))
    );
    let missing = ContextBuilder::new()
        .now_ms(NOW)
        .params(json!({"metric": "rps", "per_replica": 10}))
        .build();
    assert!(decide(&missing).unwrap_err().contains("rps"));
}

#[test]
fn describe_lists_every_parameter() {
    let info = info();
    let names: Vec<&str> = info.parameters.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "metric",
            "per_replica",
            "horizon",
            "period",
            "cycles",
            "min_cycles",
            "combine",
            "headroom",
            "without_forecast",
            "timezone"
        ]
    );
    scalewise_sdk::params::check_specs(PARAMS).unwrap();
}
