//! The host's notion of time.
//!
//! Every timestamp the host writes (contexts, journal records, envelope
//! windows, cooldowns) comes from one [`Clock`]. In production it is the wall
//! clock. The embedded demo and some tests run it faster than real time
//! (`speed`), so a simulated day passes in minutes while every window and
//! cooldown keeps its meaning in simulated time.
//!
//! Time is reckoned from a monotonic clock, so it never goes back. The real
//! clock ([`Clock::system`]) also keeps to the wall clock when that moves
//! ahead of the reckoning by more than [`WALL_STEP_MS`]: a clock set right
//! by NTP after the daemon started (a machine booted with a wrong clock), or
//! a suspended machine (the monotonic clock stands still while suspended).
//! Otherwise queries would ask Prometheus about the past and records would
//! be dated wrong until a restart. A wall clock moved back is not followed
//! (windows and cooldowns would stretch, a record would predate the one
//! before it); it is logged.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// How far the wall clock must move ahead of the real clock's reckoning
/// before the clock follows it. Both run at the same rate between steps
/// (NTP's slewing moves both), so less is noise.
pub const WALL_STEP_MS: i64 = 1_000;

/// Maps tokio's monotonic time to milliseconds since the Unix epoch,
/// optionally sped up.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin_ms: i64,
    origin: Instant,
    speed: f64,
    /// The real clock's tie to the wall clock (none when simulated).
    wall: Option<&'static WallTie>,
}

/// What a real clock shares among its copies about the wall clock.
#[derive(Debug)]
struct WallTie {
    /// Reads the wall clock, in ms since the Unix epoch.
    read: fn() -> i64,
    /// How far the wall clock has moved ahead of the monotonic reckoning
    /// since the clock started; only grows.
    ahead_ms: AtomicI64,
    /// A wall clock behind the reckoning has been logged (until it is not).
    behind_told: AtomicBool,
}

impl Clock {
    /// Real time: now is the wall clock's now, advancing at real speed, and
    /// following the wall clock when it moves ahead (see the module's
    /// documentation).
    pub fn system() -> Self {
        Self::keeping_to(wall_clock_ms)
    }

    /// [`Clock::system`] keeping to the wall clock `read` reads instead of
    /// the machine's (a test that sets the clock).
    pub fn keeping_to(read: fn() -> i64) -> Self {
        // One small allocation per real clock made (a process makes a
        // handful); its copies share it, and the clock stays `Copy`.
        let tie: &'static WallTie = Box::leak(Box::new(WallTie {
            read,
            ahead_ms: AtomicI64::new(0),
            behind_told: AtomicBool::new(false),
        }));
        Clock {
            wall: Some(tie),
            ..Self::starting_at(read(), 1.0)
        }
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
            wall: None,
        }
    }

    /// How many times faster than real time this clock runs.
    pub fn speed(&self) -> f64 {
        self.speed
    }

    /// Now, in ms since the Unix epoch (simulated when sped up).
    pub fn now_ms(&self) -> i64 {
        // The wall clock first: a thread held between the two reads must
        // not make the reckoning look behind it.
        let wall = self.wall.map(|tie| (tie, (tie.read)()));
        let real = self.origin.elapsed().as_secs_f64() * 1000.0;
        let reckoned = self.origin_ms + (real * self.speed) as i64;
        match wall {
            None => reckoned,
            Some((tie, wall)) => reckoned + tie.ahead(reckoned, wall),
        }
    }

    /// How far this clock has moved ahead at once, following the wall clock,
    /// since it started (0 for a simulated clock). Time measured across a
    /// change of it includes the jump.
    pub fn moved_ahead_ms(&self) -> i64 {
        self.wall
            .map_or(0, |tie| tie.ahead_ms.load(Ordering::Relaxed))
    }

    /// The tokio instant at which this clock will read `at_ms` (if the
    /// wall clock does not move ahead meanwhile).
    pub fn instant_at(&self, at_ms: i64) -> Instant {
        let sim_ms = (at_ms - self.moved_ahead_ms() - self.origin_ms).max(0) as f64;
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

impl WallTie {
    /// How far to move the monotonic reckoning `reckoned` on, the wall
    /// clock reading `wall`: as far as the wall clock is ahead of it, once
    /// that is more than [`WALL_STEP_MS`].
    fn ahead(&self, reckoned: i64, wall: i64) -> i64 {
        let ahead = self.ahead_ms.load(Ordering::Relaxed);
        let gap = wall - (reckoned + ahead);
        if gap > WALL_STEP_MS {
            // Only from the value read: of copies racing here (every scaler
            // wakes at once after a suspend), one moves it and says so.
            let moved = match self.ahead_ms.compare_exchange(
                ahead,
                wall - reckoned,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    tracing::warn!(
                        moved_ms = gap,
                        now = %format_ms(wall),
                        "The wall clock moved ahead of Scalewise's time (the clock was set, or the machine was suspended); Scalewise's time follows it. Changes in flight do not count the jump towards their timeouts."
                    );
                    wall - reckoned
                }
                Err(current) => current,
            };
            self.behind_told.store(false, Ordering::Relaxed);
            return moved;
        }
        if gap < -WALL_STEP_MS {
            if !self.behind_told.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    behind_ms = -gap,
                    wall = %format_ms(wall),
                    "The wall clock moved back; Scalewise's time does not go back with it, so it stays ahead (queries ask about a later time than the wall clock's) until a restart."
                );
            }
        } else if gap > -WALL_STEP_MS / 2 {
            // Half a step back of the line before it is told again: a gap
            // that sits at the line would say it at every tick.
            self.behind_told.store(false, Ordering::Relaxed);
        }
        ahead
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

    static WALL: AtomicI64 = AtomicI64::new(1_000_000);

    fn step_wall(by_ms: i64) {
        WALL.fetch_add(by_ms, Ordering::Relaxed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_real_clock_follows_the_wall_clock_ahead_never_back() {
        let clock = Clock::keeping_to(|| WALL.load(Ordering::Relaxed));
        let copy = clock;
        assert_eq!(clock.now_ms(), 1_000_000);
        tokio::time::advance(Duration::from_secs(10)).await;
        step_wall(10_000);
        assert_eq!(clock.now_ms(), 1_010_000);
        // Less than a step apart: the reckoning stands.
        step_wall(900);
        assert_eq!(clock.now_ms(), 1_010_000);
        // A suspend of an hour (or the clock set an hour on): followed,
        // by every copy.
        assert_eq!(clock.moved_ahead_ms(), 0);
        step_wall(3_600_000);
        assert_eq!(copy.now_ms(), 4_610_900);
        assert_eq!(clock.now_ms(), 4_610_900);
        assert_eq!(clock.moved_ahead_ms(), 3_600_900);
        // A sleep maps through the new reckoning: 5 s, not an hour more.
        let before = Instant::now();
        clock.sleep_until(clock.now_ms() + 5_000).await;
        assert_eq!(before.elapsed(), Duration::from_secs(5));
        step_wall(5_000);
        assert_eq!(clock.now_ms(), 4_615_900);
        // The wall clock set back two hours: time goes on from where it was.
        step_wall(-7_200_000);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(clock.now_ms(), 4_616_900);
        // Set right again: the reckoning was already there.
        step_wall(7_201_000);
        assert_eq!(clock.now_ms(), 4_616_900);
        // A simulated clock knows no wall clock.
        let simulated = Clock::starting_at(0, 1.0);
        step_wall(60_000);
        assert_eq!(simulated.now_ms(), 0);
        assert_eq!(simulated.moved_ahead_ms(), 0);
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
