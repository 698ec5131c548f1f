//! The open-loop send schedule: when each event is *meant* to be sent.
//!
//! A closed-loop generator (send, wait for the answer, send the next) slows
//! down exactly when the broker does, so a stall delays the events that
//! would have measured it and the tail disappears from the numbers
//! ("coordinated omission"). Here every event has an intended send time fixed
//! before the run starts; a producer that falls behind sends the overdue
//! events at once, and their latency still counts from the intended time.
//!
//! A schedule is a list of phases of constant rate (one phase for `steady`,
//! alternating peaks and valleys for `peaks`). Event `j` of a phase starting
//! at `start` with rate `r` is due at `start + floor(j * 1e9 / r)` ns. Plain
//! integer arithmetic, no state: [`Schedule::intended_ns`] and
//! [`Schedule::due_count`] are exact inverses of each other, which the tests
//! check.

const NS_PER_S: u128 = 1_000_000_000;

/// A stretch of constant rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phase {
    pub duration_ns: u64,
    pub events_per_s: u64,
}

/// Intended send times for one producer, in nanoseconds from the run start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    spans: Vec<Span>,
    /// Shifts the whole schedule, so producers sharing a rate interleave
    /// instead of all sending at the same instants.
    offset_ns: u64,
    total_events: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start_ns: u64,
    duration_ns: u64,
    events_per_s: u64,
    /// Index of the span's first event in the whole schedule.
    first_event: u64,
    events: u64,
}

impl Schedule {
    pub fn new(phases: &[Phase], offset_ns: u64) -> Schedule {
        let mut spans = Vec::with_capacity(phases.len());
        let (mut start_ns, mut first_event) = (0u64, 0u64);
        for phase in phases {
            // floor(duration * rate): the events whose due time falls inside the phase.
            let events = (u128::from(phase.duration_ns) * u128::from(phase.events_per_s) / NS_PER_S) as u64;
            spans.push(Span {
                start_ns,
                duration_ns: phase.duration_ns,
                events_per_s: phase.events_per_s,
                first_event,
                events,
            });
            start_ns += phase.duration_ns;
            first_event += events;
        }
        Schedule { spans, offset_ns, total_events: first_event }
    }

    /// One rate for the whole duration.
    pub fn constant(events_per_s: u64, duration_ns: u64, offset_ns: u64) -> Schedule {
        Schedule::new(&[Phase { duration_ns, events_per_s }], offset_ns)
    }

    pub fn total_events(&self) -> u64 {
        self.total_events
    }

    /// When the schedule's last phase ends.
    #[cfg(test)]
    pub fn end_ns(&self) -> u64 {
        self.offset_ns + self.spans.last().map_or(0, |span| span.start_ns + span.duration_ns)
    }

    /// When event `index` is meant to be sent. Precondition:
    /// `index < total_events()`.
    pub fn intended_ns(&self, index: u64) -> u64 {
        assert!(index < self.total_events, "event {index} is beyond the schedule's {}", self.total_events);
        // The last span whose first event is at or before `index`, skipping
        // empty spans (a zero-rate valley) that share their first index.
        let position = self.spans.partition_point(|span| span.first_event + span.events <= index);
        let span = &self.spans[position];
        let within = u128::from(index - span.first_event);
        self.offset_ns + span.start_ns + (within * NS_PER_S / u128::from(span.events_per_s)) as u64
    }

    /// How many events are due at `now_ns`: those with an intended time at or
    /// before it. Monotone in `now_ns`; `intended_ns(i) <= now` exactly when
    /// `i < due_count(now)`.
    pub fn due_count(&self, now_ns: u64) -> u64 {
        let Some(elapsed_ns) = now_ns.checked_sub(self.offset_ns) else {
            return 0;
        };
        let position = self.spans.partition_point(|span| span.start_ns + span.duration_ns <= elapsed_ns);
        let Some(span) = self.spans.get(position) else {
            return self.total_events;
        };
        // Event j is due when floor(j * 1e9 / r) <= d, i.e. j * 1e9 < (d + 1) * r,
        // i.e. j < ceil((d + 1) * r / 1e9).
        let since_start = u128::from(elapsed_ns - span.start_ns) + 1;
        let due = (since_start * u128::from(span.events_per_s)).div_ceil(NS_PER_S) as u64;
        span.first_event + due.min(span.events)
    }
}

/// Splits a total rate over `producers`: producer `index` gets an equal
/// share, the remainder going to the first ones, so the shares add up to
/// exactly `total`.
pub fn share(total: u64, producers: u64, index: u64) -> u64 {
    total / producers + u64::from(index < total % producers)
}

/// Alternating peak and valley phases, starting with a peak, cut at
/// `duration_ns`.
pub fn peaks_and_valleys(peak: Phase, valley: Phase, duration_ns: u64) -> Vec<Phase> {
    let mut phases = Vec::new();
    let mut left_ns = duration_ns;
    for phase in [peak, valley].into_iter().cycle() {
        if left_ns == 0 || peak.duration_ns + valley.duration_ns == 0 {
            break;
        }
        let duration_ns = phase.duration_ns.min(left_ns);
        if duration_ns > 0 {
            phases.push(Phase { duration_ns, ..phase });
        }
        left_ns -= duration_ns;
    }
    phases
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;

    #[test]
    fn a_constant_rate_spaces_events_evenly() {
        let schedule = Schedule::constant(1000, S, 0);
        assert_eq!(schedule.total_events(), 1000);
        assert_eq!(schedule.intended_ns(0), 0);
        assert_eq!(schedule.intended_ns(1), MS);
        assert_eq!(schedule.intended_ns(999), 999 * MS);
        assert_eq!(schedule.due_count(0), 1);
        assert_eq!(schedule.due_count(MS - 1), 1);
        assert_eq!(schedule.due_count(MS), 2);
        assert_eq!(schedule.due_count(10 * S), 1000);
        // Rates that do not divide a second keep the total exact.
        let odd = Schedule::constant(3, S, 0);
        assert_eq!((odd.total_events(), odd.intended_ns(1), odd.intended_ns(2)), (3, 333_333_333, 666_666_666));
    }

    #[test]
    fn intended_times_and_due_counts_are_inverse() {
        let phases = [
            Phase { duration_ns: 3 * MS, events_per_s: 7_000 },
            Phase { duration_ns: 2 * MS, events_per_s: 0 },
            Phase { duration_ns: 5 * MS, events_per_s: 1_300_000 },
            Phase { duration_ns: MS / 3, events_per_s: 999_983 },
        ];
        let schedule = Schedule::new(&phases, 12_345);
        assert_eq!(schedule.total_events(), 21 + 6_500 + 333);
        let mut previous = 0;
        for index in 0..schedule.total_events() {
            let at = schedule.intended_ns(index);
            assert!(at >= previous, "intended times never go backwards");
            previous = at;
            assert!(schedule.due_count(at) > index, "event {index} is due at its own time");
            assert!(schedule.due_count(at - 1) <= index, "event {index} is not due before its time");
        }
        assert!(previous < schedule.end_ns());
        assert_eq!(schedule.due_count(12_344), 0);
        assert_eq!(schedule.due_count(u64::MAX), schedule.total_events());
    }

    /// Replays a producer that sends every due event whenever it runs, and
    /// stalls (e.g. a full buffer) for 50 ms at t = 100 ms.
    #[test]
    fn a_stall_is_caught_up_and_charged_to_the_events_it_delayed() {
        let schedule = Schedule::constant(10_000, S, 0);
        let (stall_at, stall_ns) = (100 * MS, 50 * MS);
        let mut next = 0;
        let mut now = 0;
        let mut delays_ns = Vec::new();
        while next < schedule.total_events() {
            if (stall_at..stall_at + stall_ns).contains(&now) {
                now = stall_at + stall_ns;
            }
            let due = schedule.due_count(now);
            // Each event takes 1 us to send, then time moves on.
            while next < due {
                delays_ns.push(now - schedule.intended_ns(next));
                next += 1;
                now += 1_000;
            }
            if next < schedule.total_events() {
                // Sleep until the next event is due.
                now = now.max(schedule.intended_ns(next));
            }
        }
        assert_eq!(delays_ns.len(), 10_000, "the schedule, not the stall, decides how many events are sent");
        // The first event due during the stall waited it out in full...
        assert!(delays_ns[1000] >= stall_ns - 100_000, "{}", delays_ns[1000]);
        // ...and the catch-up burst sends 500 overdue events back to back.
        let overdue = delays_ns.iter().filter(|&&delay| delay > MS).count();
        assert!((490..=560).contains(&overdue), "{overdue} overdue events");
        // Long after the stall, events go out on time again.
        assert!(delays_ns[5000..].iter().all(|&delay| delay <= 1_000));
    }

    #[test]
    fn peaks_alternate_and_stop_at_the_duration() {
        let peak = Phase { duration_ns: 2 * S, events_per_s: 100 };
        let valley = Phase { duration_ns: 3 * S, events_per_s: 10 };
        let phases = peaks_and_valleys(peak, valley, 11 * S);
        let rates: Vec<(u64, u64)> = phases.iter().map(|phase| (phase.duration_ns / S, phase.events_per_s)).collect();
        assert_eq!(rates, [(2, 100), (3, 10), (2, 100), (3, 10), (1, 100)]);
        assert_eq!(Schedule::new(&phases, 0).total_events(), 200 + 30 + 200 + 30 + 100);
        assert!(peaks_and_valleys(Phase { duration_ns: 0, events_per_s: 1 }, valley, 0).is_empty());
    }

    #[test]
    fn shares_add_up_to_the_total() {
        let shares: Vec<u64> = (0..4).map(|index| share(10, 4, index)).collect();
        assert_eq!(shares, [3, 3, 2, 2]);
        assert_eq!((0..7).map(|index| share(1_000_003, 7, index)).sum::<u64>(), 1_000_003);
    }
}
