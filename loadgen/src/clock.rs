//! One clock for the whole run, shared by every loadgen thread.
//!
//! Latencies are differences of monotonic readings (`Instant`, which every
//! thread reads from the same CLOCK_MONOTONIC); payloads carry wall-clock
//! microseconds since the Unix epoch, as the issue asks, so that a consumer
//! in another process could still compute end-to-end latency. Both come from
//! one `Instant` anchored to one `SystemTime` reading at start, so the two
//! never disagree within a run (an NTP step during the run cannot produce
//! negative latencies).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The run's time base. `Copy`, so every executor gets its own.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
    origin_unix_us: u64,
}

impl Clock {
    pub fn start() -> Clock {
        let origin_unix_us = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_micros() as u64);
        Clock { origin: Instant::now(), origin_unix_us }
    }

    /// Nanoseconds since the clock started.
    pub fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// The `now_ns` reading of an earlier or later instant (0 before the start).
    pub fn ns_of(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_nanos() as u64
    }

    /// Wall-clock microseconds since the Unix epoch of a `now_ns` reading.
    pub fn unix_us(&self, ns: u64) -> u64 {
        self.origin_unix_us + ns / 1000
    }

    pub fn origin_unix_us(&self) -> u64 {
        self.origin_unix_us
    }

    /// How long until `at_ns`, zero if it has passed.
    pub fn until(&self, at_ns: u64) -> Duration {
        Duration::from_nanos(at_ns.saturating_sub(self.now_ns()))
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` for a Unix time in seconds (the report header;
/// a calendar crate would be the only other use of one).
pub fn format_utc(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let seconds_of_day = unix_s % 86_400;
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (seconds_of_day / 3600, seconds_of_day / 60 % 60, seconds_of_day % 60);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02} UTC")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_match_known_instants() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_764_000_000), "2025-11-24 16:00:00 UTC");
    }

    #[test]
    fn unix_readings_follow_the_monotonic_clock() {
        let clock = Clock::start();
        assert_eq!(clock.unix_us(1_234_567_000) - clock.unix_us(0), 1_234_567);
        assert!(clock.until(u64::MAX) > Duration::from_secs(1));
        assert_eq!(clock.until(0), Duration::ZERO);
    }
}
