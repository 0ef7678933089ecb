//! The host's notion of time.
//!
//! Every timestamp the host writes (contexts, journal records, envelope
//! windows, cooldowns) comes from one [`Clock`]. In production it is the wall
//! clock. The embedded demo and some tests run it faster than real time
//! (`speed`), so a simulated day passes in minutes while every window and
//! cooldown keeps its meaning in simulated time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Maps tokio's monotonic time to milliseconds since the Unix epoch,
/// optionally sped up.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin_ms: i64,
    origin: Instant,
    speed: f64,
}

impl Clock {
    /// Real time: now is the wall clock's now, advancing at real speed.
    pub fn system() -> Self {
        Self::starting_at(wall_clock_ms(), 1.0)
    }

    /// A clock that reads `origin_ms` now and advances `speed` times faster
    /// than real time. Under a paused tokio runtime it is fully virtual.
    pub fn starting_at(origin_ms: i64, speed: f64) -> Self {
        assert!(
            speed.is_finite() && speed > 0.0,
            "clock speed must be positive"
        );
        Clock {
            origin_ms,
            origin: Instant::now(),
            speed,
        }
    }

    /// How many times faster than real time this clock runs.
    pub fn speed(&self) -> f64 {
        self.speed
    }

    /// Now, in ms since the Unix epoch (simulated when sped up).
    pub fn now_ms(&self) -> i64 {
        let real = self.origin.elapsed().as_secs_f64() * 1000.0;
        self.origin_ms + (real * self.speed) as i64
    }

    /// The tokio instant at which this clock will read `at_ms`.
    pub fn instant_at(&self, at_ms: i64) -> Instant {
        let sim_ms = (at_ms - self.origin_ms).max(0) as f64;
        self.origin + Duration::from_secs_f64(sim_ms / self.speed / 1000.0)
    }

    /// The real duration that `sim` of this clock's time takes.
    pub fn real_duration(&self, sim: Duration) -> Duration {
        sim.div_f64(self.speed)
    }

    /// Sleeps until this clock reads `at_ms`. Tokio's own future, not an
    /// `async fn` around it: every idle scaler's task holds one.
    pub fn sleep_until(&self, at_ms: i64) -> tokio::time::Sleep {
        tokio::time::sleep_until(self.instant_at(at_ms))
    }
}

/// The real wall clock, in ms since the Unix epoch.
pub fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Parses a point in time given as ms since the Unix epoch or as an RFC 3339
/// timestamp (`2026-11-23T10:00:00Z`, `2026-11-23T11:00:00+01:00`); the
/// error says which forms are accepted.
pub fn parse_time_ms(text: &str) -> Result<i64, String> {
    if (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())) || text.starts_with('-') {
        return text.parse::<i64>().map_err(|e| {
            format!(
                "{text:?} is not a time in ms since the epoch ({e}); an RFC 3339 time also works"
            )
        });
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            format!(
                "expected ms since the epoch or an RFC 3339 time such as \
                 2026-11-23T10:00:00Z or 2026-11-23T11:00:00+01:00, got {text:?}: {e}"
            )
        })
}

/// A time in ms since the Unix epoch, as RFC 3339 (UTC, milliseconds). A
/// time no calendar date can name (hundreds of millennia away: a number
/// typed wrong) reads as the number it is, never a panic.
pub fn format_ms(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(time) => time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => format!("{ms} ms since the epoch"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_time_formats_without_a_panic() {
        assert_eq!(format_ms(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        // Past year 9999 (humantime's limit, where formatting used to panic).
        assert_eq!(format_ms(300_000_000_000_000), "+11476-08-15T05:20:00.000Z");
        assert_eq!(
            format_ms(i64::MAX),
            format!("{} ms since the epoch", i64::MAX)
        );
        assert_eq!(format_ms(-1_000), "1969-12-31T23:59:59.000Z");
    }

    #[test]
    fn times_parse_as_ms_or_rfc3339() {
        assert_eq!(parse_time_ms("1700000000000"), Ok(1_700_000_000_000));
        assert_eq!(parse_time_ms("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert!(parse_time_ms("yesterday").unwrap_err().contains("RFC 3339"));
        // Offsets, and lowercase separators, as RFC 3339 allows.
        assert_eq!(
            parse_time_ms("2023-11-14T23:13:20+01:00"),
            Ok(1_700_000_000_000)
        );
        assert_eq!(
            parse_time_ms("2023-11-14t17:13:20-05:00"),
            Ok(1_700_000_000_000)
        );
        assert_eq!(
            parse_time_ms("2023-11-14T22:13:20.5z"),
            Ok(1_700_000_000_500)
        );
        assert!(
            parse_time_ms("99999999999999999999")
                .unwrap_err()
                .contains("number too large")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sped_up_clock_advances_faster() {
        let clock = Clock::starting_at(1_000, 10.0);
        assert_eq!(clock.now_ms(), 1_000);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(clock.now_ms(), 11_000);
        clock.sleep_until(21_000).await;
        assert_eq!(clock.now_ms(), 21_000);
        assert_eq!(
            clock.real_duration(Duration::from_secs(15)),
            Duration::from_millis(1_500)
        );
    }
}
