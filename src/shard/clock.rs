//! Where the group coordinator reads the time.
//!
//! Whether a member's session expired, whether a hand-over ran past its
//! rebalance timeout, whether a Kafka rebalance's deadline passed: the
//! coordinator decides these against its shard's [`Clock`], never against
//! `Instant::now()` itself. The broker runs on the real clock; the
//! whole-broker simulation runs on a [`ManualClock`], whose time moves only
//! when told, so that sessions expire at points of the seeded workload and
//! a seed replays exactly.
//!
//! With a manual clock the shard runs no group ticker: whoever advances the
//! clock then calls [`super::Shard::tick_groups`]. Waiting (glommio timers:
//! fetch long-polls, request timeouts) and the latencies the metrics report
//! stay on real time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The wall-clock time a manual clock starts at: 2025-11-24, as the
/// simulation's record timestamps.
const MANUAL_UNIX_START: Duration = Duration::from_secs(1_764_000_000);

/// A shard's clock: the real one, or a manual one. Cheap to clone; the
/// clones of a manual clock show the same time.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// `Instant::now()` and `SystemTime::now()`.
    #[default]
    Real,
    /// Time that moves only by [`ManualClock::advance`].
    Manual(ManualClock),
}

impl Clock {
    /// The time now, for sessions and deadlines.
    pub fn now(&self) -> Instant {
        match self {
            Clock::Real => Instant::now(),
            Clock::Manual(clock) => clock.now(),
        }
    }

    /// The wall-clock time now, since the Unix epoch: for ids that must
    /// differ from the ones handed out before a restart.
    pub fn unix_time(&self) -> Duration {
        match self {
            Clock::Real => SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default(),
            Clock::Manual(clock) => MANUAL_UNIX_START + clock.elapsed(),
        }
    }

    pub fn is_manual(&self) -> bool {
        matches!(self, Clock::Manual(_))
    }
}

impl From<ManualClock> for Clock {
    fn from(clock: ManualClock) -> Clock {
        Clock::Manual(clock)
    }
}

/// A clock whose time stands still until [`ManualClock::advance`] moves it.
/// `Send` and `Sync`: one clock may serve every shard of a simulation.
#[derive(Debug, Clone)]
pub struct ManualClock {
    /// What `now` reads before any advance (only differences matter).
    start: Instant,
    elapsed_ns: Arc<AtomicU64>,
}

impl Default for ManualClock {
    fn default() -> ManualClock {
        ManualClock::new()
    }
}

impl ManualClock {
    pub fn new() -> ManualClock {
        ManualClock { start: Instant::now(), elapsed_ns: Arc::new(AtomicU64::new(0)) }
    }

    /// Moves the time forward by `by` (for this clock and all its clones).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self.elapsed_ns.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |ns| Some(ns.saturating_add(by)));
    }

    /// How far the clock has been advanced since it was made.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.elapsed_ns.load(Ordering::SeqCst))
    }

    pub fn now(&self) -> Instant {
        self.start + self.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_its_clones_follow() {
        let manual = ManualClock::new();
        let clock = Clock::from(manual.clone());
        let (before, unix_before) = (clock.now(), clock.unix_time());
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(clock.now(), before, "real time passing does not move it");
        manual.advance(Duration::from_secs(7));
        assert_eq!(clock.now() - before, Duration::from_secs(7));
        assert_eq!(clock.unix_time() - unix_before, Duration::from_secs(7));
        assert_eq!(manual.elapsed(), Duration::from_secs(7));
        assert!(clock.is_manual() && !Clock::Real.is_manual());
    }
}
