//! Native unit tests: business hours in a zone with daylight saving time,
//! lead, windows over midnight, dates, overlaps, bounds, parameter errors.

use super::*;
use scalewise_sdk::serde_json::{self, json};
use scalewise_sdk::testing::ContextBuilder;

/// The instant `text` (RFC 3339), in ms.
fn at(text: &str) -> i64 {
    text.parse::<Timestamp>().unwrap().as_millisecond()
}

fn ctx(now_ms: i64, current: u32, params: serde_json::Value) -> Context {
    ContextBuilder::new()
        .now_ms(now_ms)
        .replicas(current, 1, 50)
        .params(params)
        .build()
}

/// The count asked for at `now` (RFC 3339) with `params`, from 3 replicas.
fn desired(now: &str, params: serde_json::Value) -> u32 {
    let d = decide(&ctx(at(now), 3, params)).unwrap();
    d.desired().unwrap_or(3)
}

fn berlin_office() -> serde_json::Value {
    json!({ "windows": "mon-fri 08:30-18:00 10", "timezone": "Europe/Berlin" })
}

#[test]
fn business_hours_in_the_service_time_zone() {
    // Monday 2026-12-07; Berlin is UTC+1 in winter.
    let p = berlin_office;
    assert_eq!(desired("2026-12-07T07:29:59Z", p()), 1);
    assert_eq!(desired("2026-12-07T07:30:00Z", p()), 10);
    assert_eq!(desired("2026-12-07T16:59:59Z", p()), 10);
    assert_eq!(desired("2026-12-07T17:00:00Z", p()), 1);
    // Saturday.
    assert_eq!(desired("2026-12-12T10:00:00Z", p()), 1);
    // In summer (UTC+2) the same local hours are an hour earlier in UTC.
    assert_eq!(desired("2026-07-06T06:29:59Z", p()), 1);
    assert_eq!(desired("2026-07-06T06:30:00Z", p()), 10);
    assert_eq!(desired("2026-07-06T15:59:59Z", p()), 10);
    assert_eq!(desired("2026-07-06T16:00:00Z", p()), 1);

    let d = decide(&ctx(at("2026-12-07T07:30:00Z"), 3, p())).unwrap();
    assert_eq!(
        d.reason,
        "window `mon-fri 08:30-18:00 10` (Europe/Berlin) until Mon 2026-12-07 18:00 asks for 10: \
         3 → 10"
    );
    let d = decide(&ctx(at("2026-12-11T17:00:00Z"), 10, p())).unwrap();
    assert_eq!(d.desired(), Some(1));
    assert_eq!(
        d.reason,
        "no window in force (Europe/Berlin; next: `mon-fri 08:30-18:00 10` at Mon 2026-12-14 \
         08:30): outside asks for the scaler's min: 10 → 1 (min 1)"
    );
    // The window's count again: a hold.
    let d = decide(&ctx(at("2026-12-07T08:00:00Z"), 10, p())).unwrap();
    assert_eq!(d.desired(), None, "{}", d.reason);
    assert!(d.reason.ends_with("hold at 10"), "{}", d.reason);
}

#[test]
fn lead_starts_each_window_early() {
    let params = json!({
        "windows": "mon-fri 08:30-18:00 10",
        "timezone": "Europe/Berlin",
        "lead": "10m",
    });
    assert_eq!(desired("2026-12-07T07:19:59Z", params.clone()), 1);
    let d = decide(&ctx(at("2026-12-07T07:20:00Z"), 3, params.clone())).unwrap();
    assert_eq!(d.desired(), Some(10));
    assert!(
        d.reason
            .contains("until Mon 2026-12-07 18:00, starting Mon 2026-12-07 08:30 with lead 10m"),
        "{}",
        d.reason
    );
    // The end does not move.
    assert_eq!(desired("2026-12-07T17:00:00Z", params), 1);
}

#[test]
fn a_window_may_run_past_midnight_and_days_may_wrap() {
    let late = json!({ "windows": "fri 22:00-02:00 5" });
    assert_eq!(desired("2026-12-11T21:59:59Z", late.clone()), 1);
    assert_eq!(desired("2026-12-11T22:00:00Z", late.clone()), 5);
    assert_eq!(desired("2026-12-12T01:59:59Z", late.clone()), 5);
    assert_eq!(desired("2026-12-12T02:00:00Z", late.clone()), 1);
    // Thursday night is not Friday's.
    assert_eq!(desired("2026-12-11T01:00:00Z", late), 1);

    let weekend = json!({ "windows": "fri-mon 10:00-11:00 3\nwed 00:00-24:00 4", "outside": 2 });
    assert_eq!(desired("2026-12-13T10:30:00Z", weekend.clone()), 3); // Sunday
    assert_eq!(desired("2026-12-14T10:30:00Z", weekend.clone()), 3); // Monday
    assert_eq!(desired("2026-12-15T10:30:00Z", weekend.clone()), 2); // Tuesday
    assert_eq!(desired("2026-12-16T23:59:59Z", weekend.clone()), 4); // Wednesday
    assert_eq!(desired("2026-12-17T00:00:00Z", weekend), 2);
}

#[test]
fn dates_and_overlaps() {
    let params = json!({
        "windows": "daily 00:00-24:00 2; mon-fri 09:00-17:00 8; \
                    2026-11-27 00:00-24:00 30; 2026-12-24..2026-12-26 08:00-20:00 20",
    });
    assert_eq!(desired("2026-11-26T12:00:00Z", params.clone()), 8); // Thursday
    assert_eq!(desired("2026-11-26T18:00:00Z", params.clone()), 2);
    assert_eq!(desired("2026-11-27T00:00:00Z", params.clone()), 30); // the sale
    assert_eq!(desired("2026-11-27T23:59:59Z", params.clone()), 30);
    assert_eq!(desired("2026-11-28T00:00:00Z", params.clone()), 2);
    assert_eq!(desired("2026-12-25T12:00:00Z", params.clone()), 20);
    assert_eq!(desired("2026-12-27T12:00:00Z", params.clone()), 2);

    // A date replaces the weekly windows, lower as well as higher: a
    // holiday on a Thursday.
    let holiday = json!({
        "windows": "mon-fri 09:00-17:00 8  # office hours\n2026-12-24 00:00-24:00 1 # closed",
    });
    assert_eq!(desired("2026-12-23T12:00:00Z", holiday.clone()), 8);
    assert_eq!(desired("2026-12-24T12:00:00Z", holiday), 1);

    // A date's lead can raise the count before it starts, never lower it;
    // and the weekly window after it still starts its lead in time.
    let christmas = json!({
        "windows": "daily 00:00-24:00 10; 2026-12-25 00:00-24:00 2",
        "lead": "1h",
    });
    assert_eq!(desired("2026-12-24T23:30:00Z", christmas.clone()), 10);
    assert_eq!(desired("2026-12-25T12:00:00Z", christmas.clone()), 2);
    assert_eq!(desired("2026-12-25T23:30:00Z", christmas.clone()), 10);
    let sale = json!({
        "windows": "daily 00:00-24:00 2; 2026-11-27 00:00-24:00 30",
        "lead": "1h",
    });
    assert_eq!(desired("2026-11-26T23:30:00Z", sale.clone()), 30);
    assert_eq!(desired("2026-11-26T22:30:00Z", sale), 2);
    // Nor outside every window: a Saturday at 2 does not lower an outside
    // of 4 in its lead (it asked for 2 from 09:50).
    let saturday = json!({ "windows": "sat 10:00-16:00 2", "outside": 4, "lead": "10m" });
    assert_eq!(desired("2026-12-12T09:55:00Z", saturday.clone()), 4);
    let d = decide(&ctx(at("2026-12-12T09:55:00Z"), 3, saturday.clone())).unwrap();
    assert!(
        d.reason
            .contains("next: `sat 10:00-16:00 2` at Sat 2026-12-12 10:00"),
        "names the window about to start: {}",
        d.reason
    );
    assert_eq!(desired("2026-12-12T10:00:00Z", saturday.clone()), 2);
    assert_eq!(desired("2026-12-12T16:00:00Z", saturday), 4);
    let busy = json!({ "windows": "sat 10:00-16:00 8", "outside": 4, "lead": "10m" });
    assert_eq!(desired("2026-12-12T09:55:00Z", busy), 8);

    // A weekly window starting inside a holiday does not lead it: the
    // holiday morning does not scale out for the workday not coming.
    let closed = json!({
        "windows": "mon-fri 08:30-18:00 10; 2026-12-24..2026-12-26 00:00-24:00 2",
        "lead": "10m",
    });
    assert_eq!(desired("2026-12-24T08:20:00Z", closed.clone()), 2);
    assert_eq!(desired("2026-12-24T08:40:00Z", closed.clone()), 2);
    assert_eq!(desired("2026-12-28T08:20:00Z", closed), 10);

    // Past its last date, a date-only schedule says so.
    let once = json!({ "windows": "2026-11-27 00:00-24:00 30" });
    let d = decide(&ctx(at("2026-12-01T00:00:00Z"), 3, once)).unwrap();
    assert!(d.reason.contains("no window starts again"), "{}", d.reason);
}

/// A weekly window whose occurrence starts inside a dated one is replaced
/// whole, not only while the date lasts: when the holiday ends first, the
/// rest of the workday (or the night's batch) it replaced does not come
/// back.
#[test]
fn a_weekly_window_starting_inside_a_date_is_replaced_whole() {
    let batch = json!({ "windows": "fri 22:00-02:00 6; 2026-12-25 00:00-24:00 2" });
    assert_eq!(desired("2026-12-25T23:00:00Z", batch.clone()), 2);
    assert_eq!(desired("2026-12-26T01:00:00Z", batch.clone()), 1);
    assert_eq!(desired("2027-01-02T01:00:00Z", batch), 6);
    let half_day = json!({
        "windows": "mon-fri 08:30-18:00 10; 2026-12-24 00:00-12:00 2",
    });
    assert_eq!(desired("2026-12-24T11:00:00Z", half_day.clone()), 2);
    assert_eq!(desired("2026-12-24T13:00:00Z", half_day.clone()), 1);
    assert_eq!(desired("2026-12-23T13:00:00Z", half_day), 10);
    // One that started before the holiday is replaced only while it lasts.
    let early = json!({ "windows": "fri 22:00-02:00 6; 2026-12-26 00:00-01:00 2" });
    assert_eq!(desired("2026-12-26T00:30:00Z", early.clone()), 2);
    assert_eq!(desired("2026-12-26T01:30:00Z", early), 6);
    // The holiday began the day before the weekly window did.
    let overnight = json!({ "windows": "thu 08:00-02:00 10; 2026-12-23 12:00-11:00 2" });
    assert_eq!(desired("2026-12-24T10:00:00Z", overnight.clone()), 2);
    assert_eq!(desired("2026-12-25T01:00:00Z", overnight.clone()), 1);
    assert_eq!(desired("2026-12-31T12:00:00Z", overnight), 10);
    // A date that asks for more (a launch morning) replaces the workday
    // only while it lasts.
    let launch = json!({
        "windows": "mon-fri 08:30-18:00 10; 2026-11-27 08:30-10:00 30",
    });
    assert_eq!(desired("2026-11-27T09:00:00Z", launch.clone()), 30);
    assert_eq!(desired("2026-11-27T11:00:00Z", launch), 10);
}

#[test]
fn within_the_scalers_bounds() {
    let big = json!({ "windows": "daily 00:00-24:00 100" });
    let d = decide(&ctx(at("2026-12-07T12:00:00Z"), 3, big)).unwrap();
    assert_eq!(d.desired(), Some(50));
    assert!(d.reason.ends_with("3 → 50 (max 50)"), "{}", d.reason);
    let outside = json!({ "windows": "mon 09:00-10:00 5", "outside": 3 });
    let d = decide(&ctx(at("2026-12-08T12:00:00Z"), 5, outside)).unwrap();
    assert_eq!(d.desired(), Some(3));
    assert!(d.reason.contains("outside asks for 3"), "{}", d.reason);
}

#[test]
fn bad_parameters_are_named() {
    let now = at("2026-12-07T12:00:00Z");
    let cases = [
        (
            json!({ "windows": "mon-fri 08:30-18:00 10", "timezone": "Mars/Olympus" }),
            "parameter timezone: \"Mars/Olympus\" is not a time zone",
        ),
        (
            json!({ "windows": "mon 08:30-18:00 10; tue 09:00-10:00" }),
            "parameter windows, entry 2 (`tue 09:00-10:00`): 2 field(s)",
        ),
        (
            json!({ "windows": "mon 08:30-25:00 10" }),
            "`25:00` is not a time of day",
        ),
        (
            json!({ "windows": "funday 08:30-18:00 10" }),
            "`funday` is not a day",
        ),
        (
            json!({ "windows": "mon,2026-12-07 08:30-18:00 10" }),
            "mixes days of the week and dates",
        ),
        (
            json!({ "windows": "2026-12-26..2026-12-24 08:30-18:00 10" }),
            "ends before it starts",
        ),
        (
            json!({ "windows": "mon 08:30-18:00 many" }),
            "`many` is not a replica count",
        ),
        (
            json!({ "windows": " ; " }),
            "parameter windows has no entries",
        ),
        (
            json!({ "windows": "mon 08:30-18:00 10", "lead": "2d" }),
            "parameter lead must be from 0s to 1d",
        ),
        (
            json!({ "windows": "mon 08:30-18:00 10", "outside": -1 }),
            "parameter outside must be a replica count",
        ),
    ];
    for (params, expected) in cases {
        let err = decide(&ctx(now, 3, params.clone())).unwrap_err();
        assert!(err.contains(expected), "{params}: {err}");
    }
}

#[test]
fn describes_its_parameters() {
    let info = info();
    assert_eq!(info.name, "schedule");
    let names: Vec<&str> = info.parameters.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["windows", "timezone", "lead", "outside"]);
}

/// The night Berlin's clocks go from 02:00 to 03:00 (Sunday 2026-03-29,
/// 01:00Z): a window from 02:30 starts when the gap ends (03:00 CEST,
/// 01:00Z), not an hour later; one wholly inside the gap does not happen
/// that night; the night clocks go back (2026-10-25), a repeated time is
/// its first occurrence.
#[test]
fn daylight_saving_gaps_and_folds() {
    let spring = json!({ "windows": "sun 02:30-06:00 10", "timezone": "Europe/Berlin" });
    assert_eq!(desired("2026-03-29T00:59:59Z", spring.clone()), 1);
    assert_eq!(desired("2026-03-29T01:00:00Z", spring.clone()), 10);
    assert_eq!(desired("2026-03-29T03:59:59Z", spring.clone()), 10);
    assert_eq!(desired("2026-03-29T04:00:00Z", spring), 1);
    let skipped = json!({ "windows": "sun 02:15-02:45 10", "timezone": "Europe/Berlin" });
    for now in [
        "2026-03-29T00:30:00Z",
        "2026-03-29T01:00:00Z",
        "2026-03-29T01:30:00Z",
    ] {
        assert_eq!(desired(now, skipped.clone()), 1, "{now}");
    }
    // A week later it happens (02:15 CEST is 00:15Z).
    assert_eq!(desired("2026-04-05T00:20:00Z", skipped), 10);
    // 02:30 happens twice on 2026-10-25: at 00:30Z (CEST) first.
    let autumn = json!({ "windows": "sun 02:30-04:00 10", "timezone": "Europe/Berlin" });
    assert_eq!(desired("2026-10-25T00:29:59Z", autumn.clone()), 1);
    assert_eq!(desired("2026-10-25T00:30:00Z", autumn.clone()), 10);
    assert_eq!(desired("2026-10-25T02:59:59Z", autumn.clone()), 10);
    assert_eq!(desired("2026-10-25T03:00:00Z", autumn), 1);
}
