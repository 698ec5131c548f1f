//! Rate-limited warnings: a flood of bad frames from clients must not
//! become a flood of log lines. Each shard logs at most
//! [`WARNINGS_PER_WINDOW`] client errors per [`WINDOW`]; the first warning
//! of the next window says how many were suppressed. Handed the time, so it
//! is tested without a clock.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Client-error warnings a shard logs per window.
pub(crate) const WARNINGS_PER_WINDOW: u32 = 10;
pub(crate) const WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(crate) struct WarnLimit {
    window_start: Cell<Instant>,
    logged: Cell<u32>,
    suppressed: Cell<u64>,
}

impl WarnLimit {
    pub(crate) fn new(now: Instant) -> WarnLimit {
        WarnLimit { window_start: Cell::new(now), logged: Cell::new(0), suppressed: Cell::new(0) }
    }

    /// `Some(n)`: log this warning, and say that `n` were suppressed since
    /// the last one logged. `None`: suppress it.
    pub(crate) fn allow(&self, now: Instant) -> Option<u64> {
        if now.saturating_duration_since(self.window_start.get()) >= WINDOW {
            self.window_start.set(now);
            self.logged.set(0);
        }
        if self.logged.get() >= WARNINGS_PER_WINDOW {
            self.suppressed.set(self.suppressed.get() + 1);
            return None;
        }
        self.logged.set(self.logged.get() + 1);
        Some(self.suppressed.replace(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_a_few_lines_a_window_and_the_rest_counted() {
        let start = Instant::now();
        let limit = WarnLimit::new(start);
        let logged: Vec<u64> = (0..1000).filter_map(|_| limit.allow(start)).collect();
        assert_eq!(logged, vec![0; WARNINGS_PER_WINDOW as usize]);
        // Next window: the first warning carries the count suppressed.
        let later = start + WINDOW;
        assert_eq!(limit.allow(later), Some(1000 - u64::from(WARNINGS_PER_WINDOW)));
        assert_eq!(limit.allow(later), Some(0));
    }
}
