//! What each loadgen thread measures, and how the threads' measurements are
//! combined.
//!
//! Every executor records into its own [`Measurements`] (no sharing, no
//! locks while measuring); at the end they are merged. Latency distributions
//! merge by adding HdrHistograms bucket by bucket — the merged percentiles
//! are those of all samples together, which averaging per-thread
//! percentiles would not give.

use hdrhistogram::Histogram;

use crate::payload::{Bitmap, SeqTracker};

/// Latencies are recorded in microseconds, up to an hour (anything longer
/// is clamped, and a run that slow has other problems).
pub const LATENCY_US_MAX: u64 = 3_600_000_000;

/// Three significant digits: a 2.345 ms value is stored as 2.345 ms +/- 1 us.
const LATENCY_SIGFIG: u8 = 3;

/// Per-second histograms only feed the p99-per-second column: two digits
/// and a one-minute ceiling keep each at ~10 KiB.
const SECOND_US_MAX: u64 = 60_000_000;
const SECOND_SIGFIG: u8 = 2;

/// The time series covers at most this many seconds; later samples go into
/// the last second. Bounds memory at ~10 KiB per second per executor.
pub const SERIES_SECONDS_MAX: usize = 3600;

/// A histogram for one latency quantity of the whole run.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGFIG).expect("static histogram bounds are valid")
}

fn second_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, SECOND_US_MAX, SECOND_SIGFIG).expect("static histogram bounds are valid")
}

/// Counts and latencies of one second of the run.
#[derive(Debug, Clone, Default)]
pub struct Second {
    pub sent: u64,
    pub acked: u64,
    pub consumed: u64,
    /// Ack latencies of the acks that arrived in this second.
    pub ack_latency: Option<Histogram<u32>>,
    /// Consumer lag (records between the consumers' positions and the
    /// partitions' ends) sampled at the end of this second.
    pub lag: Option<u64>,
}

/// Per-second counters, indexed by whole seconds since the run started.
#[derive(Debug, Clone, Default)]
pub struct Series {
    start_ns: u64,
    seconds: Vec<Second>,
}

impl Series {
    pub fn new(start_ns: u64) -> Series {
        Series { start_ns, seconds: Vec::new() }
    }

    pub fn seconds(&self) -> &[Second] {
        &self.seconds
    }

    /// The second a clock reading falls into.
    pub fn second_of(&self, now_ns: u64) -> usize {
        (now_ns.saturating_sub(self.start_ns) / 1_000_000_000) as usize
    }

    pub fn at(&mut self, second: usize) -> &mut Second {
        let second = second.min(SERIES_SECONDS_MAX - 1);
        if self.seconds.len() <= second {
            self.seconds.resize_with(second + 1, Second::default);
        }
        &mut self.seconds[second]
    }

    /// `events` acked at `now_ns`, each after `latency_us`.
    pub fn record_ack(&mut self, now_ns: u64, latency_us: u64, events: u32) {
        let second = self.at(self.second_of(now_ns));
        second.acked += u64::from(events);
        second.ack_latency.get_or_insert_with(second_histogram).saturating_record_n(latency_us, events);
    }

    pub fn record_sent(&mut self, now_ns: u64, count: u64) {
        let second = self.second_of(now_ns);
        self.at(second).sent += count;
    }

    pub fn record_consumed(&mut self, now_ns: u64, count: u64) {
        let second = self.second_of(now_ns);
        self.at(second).consumed += count;
    }

    /// Adds another thread's series: counts and lags add up, histograms merge.
    pub fn merge(&mut self, other: &Series) {
        for (index, theirs) in other.seconds.iter().enumerate() {
            let mine = self.at(index);
            mine.sent += theirs.sent;
            mine.acked += theirs.acked;
            mine.consumed += theirs.consumed;
            if let Some(hist) = &theirs.ack_latency {
                merge_into(mine.ack_latency.get_or_insert_with(second_histogram), hist);
            }
            if let Some(lag) = theirs.lag {
                *mine.lag.get_or_insert(0) += lag;
            }
        }
    }
}

/// Adds `source` into `target`. Both come from the constructors above, so
/// the ranges always fit.
pub fn merge_into<T: hdrhistogram::Counter>(target: &mut Histogram<T>, source: &Histogram<T>) {
    target.add(source).expect("histograms of the same bounds always merge");
}

/// What one consumer group's members on one executor measured (fanout,
/// pipeline). Each group has its own tracker and histogram: every group
/// must receive every event, so one group's deliveries say nothing about
/// another's.
#[derive(Debug, Clone)]
pub struct GroupMeasurements {
    /// Send timestamp in the payload to this group's member holding the
    /// event (in a pipeline: the original send, so stage i shows the
    /// latency up to stage i).
    pub e2e: Histogram<u64>,
    pub tracker: SeqTracker,
    /// Consumed after a later event of the same producer in the same
    /// partition.
    pub reordered: u64,
    /// Pipeline relays: events forwarded to the next stage and acknowledged.
    pub forwarded: u64,
    /// Assignment changes and rejoins while measuring: after one, a
    /// partition's new owner re-reads from the last commit, so duplicates
    /// are at-least-once delivery, not a fault.
    pub rebalances: u64,
    /// Commits the coordinator refused or that failed (re-read later).
    pub commit_failures: u64,
    /// When the last member found the group's topic consumed to its end.
    pub caught_up_ns: Option<u64>,
    pub members_not_caught_up: u32,
}

impl GroupMeasurements {
    pub fn new(planned: &[u64]) -> GroupMeasurements {
        GroupMeasurements {
            e2e: latency_histogram(),
            tracker: SeqTracker::new(planned),
            reordered: 0,
            forwarded: 0,
            rebalances: 0,
            commit_failures: 0,
            caught_up_ns: None,
            members_not_caught_up: 0,
        }
    }

    pub fn merge(&mut self, other: &GroupMeasurements) {
        merge_into(&mut self.e2e, &other.e2e);
        self.tracker.merge(&other.tracker);
        self.reordered += other.reordered;
        self.forwarded += other.forwarded;
        self.rebalances += other.rebalances;
        self.commit_failures += other.commit_failures;
        self.caught_up_ns = self.caught_up_ns.max(other.caught_up_ns);
        self.members_not_caught_up += other.members_not_caught_up;
    }
}

/// Everything one executor measured.
#[derive(Debug, Clone)]
pub struct Measurements {
    /// Producer send (or intended send) to ack future resolved.
    pub ack: Histogram<u64>,
    /// The ack's time in four parts, per event, adding up to `ack`: send
    /// (or intended send) to its batch sealed; sealed to the produce
    /// request handed to the connection; that to the answer; the answer to
    /// the ack counted here (loadgen's own lateness in taking it).
    pub ack_to_seal: Histogram<u64>,
    pub ack_dispatch: Histogram<u64>,
    pub ack_round_trip: Histogram<u64>,
    pub ack_delivery: Histogram<u64>,
    /// Send timestamp in the payload to the consumer holding the event.
    pub e2e: Histogram<u64>,
    /// Actual minus intended send time (open-loop scenarios only).
    pub send_delay: Histogram<u64>,
    pub series: Series,
    pub tracker: SeqTracker,
    /// The acknowledged sequences of each producer this executor ran.
    pub acked: Vec<(u32, Bitmap)>,
    pub sent: u64,
    pub acked_count: u64,
    /// Sent with `acks = none`: written to the socket, never confirmed.
    pub unconfirmed: u64,
    pub failed: u64,
    /// Events consumed after a later event of the same producer in the same
    /// partition (the producer sent them in order).
    pub reordered: u64,
    pub last_ack_ns: Option<u64>,
    /// When the last partition was consumed up to its end.
    pub caught_up_ns: Option<u64>,
    /// Partition consumers and consumer group members that did not catch up.
    pub partitions_not_caught_up: u32,
    /// Per consumer group (fanout, pipeline), indexed like `Plan::groups`.
    /// The deliveries of the groups at the end of the flow also count in
    /// `series` and (merged at the end of the run) in `e2e`.
    pub groups: Vec<GroupMeasurements>,
    pub errors: Vec<String>,
}

/// Errors kept per executor: the first few say what went wrong, the count
/// says how often.
const ERRORS_KEPT: usize = 8;

impl Measurements {
    /// Empty measurements for a run's plan.
    pub fn for_plan(start_ns: u64, plan: &crate::worker::Plan) -> Measurements {
        Measurements::new(start_ns, &plan.planned(), plan.groups.len())
    }

    /// Empty measurements for a run whose producers plan `planned` events
    /// each, with `groups` consumer groups.
    pub fn new(start_ns: u64, planned: &[u64], groups: usize) -> Measurements {
        Measurements {
            ack: latency_histogram(),
            ack_to_seal: latency_histogram(),
            ack_dispatch: latency_histogram(),
            ack_round_trip: latency_histogram(),
            ack_delivery: latency_histogram(),
            e2e: latency_histogram(),
            send_delay: latency_histogram(),
            series: Series::new(start_ns),
            tracker: SeqTracker::new(planned),
            acked: Vec::new(),
            sent: 0,
            acked_count: 0,
            unconfirmed: 0,
            failed: 0,
            reordered: 0,
            last_ack_ns: None,
            caught_up_ns: None,
            partitions_not_caught_up: 0,
            groups: (0..groups).map(|_| GroupMeasurements::new(planned)).collect(),
            errors: Vec::new(),
        }
    }

    pub fn error(&mut self, message: String) {
        if self.errors.len() < ERRORS_KEPT {
            self.errors.push(message);
        }
    }

    /// Folds in another executor's measurements.
    pub fn merge(&mut self, other: &Measurements) {
        merge_into(&mut self.ack, &other.ack);
        merge_into(&mut self.ack_to_seal, &other.ack_to_seal);
        merge_into(&mut self.ack_dispatch, &other.ack_dispatch);
        merge_into(&mut self.ack_round_trip, &other.ack_round_trip);
        merge_into(&mut self.ack_delivery, &other.ack_delivery);
        merge_into(&mut self.e2e, &other.e2e);
        merge_into(&mut self.send_delay, &other.send_delay);
        self.series.merge(&other.series);
        self.tracker.merge(&other.tracker);
        self.acked.extend(other.acked.iter().cloned());
        self.sent += other.sent;
        self.acked_count += other.acked_count;
        self.unconfirmed += other.unconfirmed;
        self.failed += other.failed;
        self.reordered += other.reordered;
        self.last_ack_ns = self.last_ack_ns.max(other.last_ack_ns);
        self.caught_up_ns = self.caught_up_ns.max(other.caught_up_ns);
        self.partitions_not_caught_up += other.partitions_not_caught_up;
        assert_eq!(self.groups.len(), other.groups.len(), "measurements of different runs");
        for (mine, theirs) in self.groups.iter_mut().zip(&other.groups) {
            mine.merge(theirs);
        }
        for error in &other.errors {
            self.error(error.clone());
        }
    }

    /// Acknowledged events that no consumer received.
    pub fn missing(&self) -> u64 {
        self.missing_from(&self.tracker)
    }

    /// Acknowledged events that `tracker` (a consumer group's) never saw.
    pub fn missing_from(&self, tracker: &SeqTracker) -> u64 {
        self.acked.iter().map(|(producer, acked)| tracker.missing(*producer, acked)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records 1..=10000 us uniformly, split over two histograms by parity.
    fn uniform_halves() -> (Histogram<u64>, Histogram<u64>, Histogram<u64>) {
        let (mut all, mut odd, mut even) = (latency_histogram(), latency_histogram(), latency_histogram());
        for value in 1..=10_000u64 {
            all.record(value).unwrap();
            let half = if value % 2 == 1 { &mut odd } else { &mut even };
            half.record(value).unwrap();
        }
        (all, odd, even)
    }

    #[test]
    fn percentiles_of_a_uniform_distribution_are_within_hdr_precision() {
        let (all, _, _) = uniform_halves();
        for (quantile, expected) in [(0.5, 5000.0), (0.9, 9000.0), (0.99, 9900.0), (0.999, 9990.0)] {
            let value = all.value_at_quantile(quantile) as f64;
            // Three significant digits: within 0.1% (plus one unit of rounding).
            assert!((value - expected).abs() <= expected * 0.001 + 1.0, "p{quantile}: {value} vs {expected}");
        }
        assert_eq!(all.max(), all.highest_equivalent(10_000));
        assert_eq!(all.min(), 1);
        assert_eq!(all.len(), 10_000);
    }

    #[test]
    fn merging_two_halves_equals_recording_everything() {
        let (all, odd, even) = uniform_halves();
        let mut merged = latency_histogram();
        merge_into(&mut merged, &odd);
        merge_into(&mut merged, &even);
        assert_eq!(merged, all);
        for quantile in [0.5, 0.9, 0.99, 0.999, 0.9999, 1.0] {
            assert_eq!(merged.value_at_quantile(quantile), all.value_at_quantile(quantile));
        }
        // Averaging the halves' percentiles is not the same thing: here
        // one half is 1..=100 and the other 9901..=10000.
        let (mut low, mut high, mut both) = (latency_histogram(), latency_histogram(), latency_histogram());
        for value in 1..=100 {
            low.record(value).unwrap();
            high.record(9900 + value).unwrap();
            both.record(value).unwrap();
            both.record(9900 + value).unwrap();
        }
        let averaged_p99 = (low.value_at_quantile(0.99) + high.value_at_quantile(0.99)) / 2;
        merge_into(&mut low, &high);
        assert_eq!(low.value_at_quantile(0.99), both.value_at_quantile(0.99));
        assert!(both.value_at_quantile(0.99) > averaged_p99 + 4000, "a merged tail is not an averaged tail");
    }

    #[test]
    fn series_merge_adds_counts_lags_and_latencies() {
        let mut left = Series::new(1_000);
        let mut right = Series::new(1_000);
        left.record_ack(1_000 + 500_000_000, 100, 1);
        left.at(0).lag = Some(5);
        right.record_ack(1_000 + 1_500_000_000, 300, 1);
        right.record_ack(1_000 + 1_600_000_000, 500, 3);
        right.record_consumed(1_000 + 100, 7);
        right.at(0).lag = Some(2);
        left.merge(&right);
        let seconds = left.seconds();
        assert_eq!(seconds.len(), 2);
        assert_eq!((seconds[0].acked, seconds[0].consumed, seconds[0].lag), (1, 7, Some(7)));
        assert_eq!((seconds[1].acked, seconds[1].lag), (4, None));
        let latencies = seconds[1].ack_latency.as_ref().unwrap();
        assert_eq!(latencies.len(), 4, "a run of 3 acks counts 3 times");
        assert!(latencies.equivalent(latencies.value_at_quantile(0.5), 500), "the median is the run's latency");
        // Samples far beyond the cap land in the last second, not in new memory.
        left.record_consumed(u64::MAX, 1);
        assert_eq!(left.seconds().len(), SERIES_SECONDS_MAX);
    }

    #[test]
    fn missing_events_are_acked_minus_consumed_across_threads() {
        let planned = [10, 10];
        let (mut producer_side, mut consumer_side) =
            (Measurements::new(0, &planned, 2), Measurements::new(0, &planned, 2));
        for producer in 0..2u32 {
            let mut acked = Bitmap::new(10);
            for seq in 0..10 {
                acked.insert(seq);
            }
            producer_side.acked.push((producer, acked));
        }
        for seq in 0..9 {
            let header = crate::payload::EventHeader { producer: 1, seq, sent_unix_us: 0 };
            consumer_side.tracker.observe(Some(&header));
        }
        // Group 0 got everything of producer 0; group 1 nothing.
        for seq in 0..10 {
            let header = crate::payload::EventHeader { producer: 0, seq, sent_unix_us: 0 };
            consumer_side.groups[0].tracker.observe(Some(&header));
        }
        producer_side.merge(&consumer_side);
        assert_eq!(producer_side.missing(), 11);
        assert_eq!(producer_side.missing_from(&producer_side.groups[0].tracker), 10);
        assert_eq!(producer_side.missing_from(&producer_side.groups[1].tracker), 20);
    }
}
