//! Per-shard counters and latency histograms (the flush stages, produce,
//! commit).
//!
//! Plain `Cell`s: a shard's counters are only ever touched by its own
//! thread, never through a shared atomic. Other shards, the native Stats
//! request and a metrics scrape ask for a snapshot with a mesh message.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::protocol::types::ShardId;
use crate::protocol::wire::{ErrorCode, ShardStats};
use crate::storage::FlushStage;

/// Percentiles reported for every latency histogram.
const PERCENTILES: [f64; 6] = [50.0, 90.0, 99.0, 99.9, 99.99, 100.0];

/// Upper bounds (seconds) of the latency buckets a metrics scrape reports:
/// tails from 50 µs to 1 s, roughly 1-2.5-5 per decade.
pub const LATENCY_BUCKETS_SECONDS: [f64; 14] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// A latency histogram: HdrHistogram for percentiles, plus the exact sum
/// that a Prometheus histogram reports.
#[derive(Debug)]
pub struct Latency {
    histogram: RefCell<Histogram<u64>>,
    sum_us: Cell<u64>,
}

/// A latency histogram as a metrics scrape reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencySnapshot {
    /// (upper bound in seconds, observations at or below it), cumulative,
    /// for each of [`LATENCY_BUCKETS_SECONDS`].
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Latency {
    fn new() -> Latency {
        Latency { histogram: latency_histogram(), sum_us: Cell::new(0) }
    }

    fn record(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        self.histogram.borrow_mut().saturating_record(micros);
        self.sum_us.set(self.sum_us.get().saturating_add(micros));
    }

    fn percentiles(&self) -> Vec<(f64, u64)> {
        let histogram = self.histogram.borrow();
        if histogram.is_empty() {
            return Vec::new();
        }
        PERCENTILES.iter().map(|p| (*p, histogram.value_at_percentile(*p))).collect()
    }

    /// Cumulative bucket counts. A bucket's bound is matched at the
    /// histogram's precision (3 significant digits).
    pub fn snapshot(&self) -> LatencySnapshot {
        let histogram = self.histogram.borrow();
        let buckets = LATENCY_BUCKETS_SECONDS
            .iter()
            .map(|bound| {
                let bound_us = (bound * 1e6).round() as u64;
                let count = if histogram.is_empty() { 0 } else { histogram.count_between(0, bound_us) };
                (*bound, count)
            })
            .collect();
        LatencySnapshot { buckets, count: histogram.len(), sum_seconds: self.sum_us.get() as f64 / 1e6 }
    }
}

/// What a request was, for counting requests by kind and result.
pub type RequestKind = &'static str;

/// Counters of one shard.
#[derive(Debug)]
pub struct Counters {
    pub bytes_in: Cell<u64>,
    pub events_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
    pub events_out: Cell<u64>,
    pub produce_requests: Cell<u64>,
    pub fetch_requests: Cell<u64>,
    pub metadata_requests: Cell<u64>,
    pub admin_requests: Cell<u64>,
    pub other_requests: Cell<u64>,
    pub errors: Cell<u64>,
    /// Data requests (produce, fetch, list offsets) this shard sent to other
    /// shards because it did not own the partition: zero with shard-aware
    /// clients. Admin and stats messages are not counted.
    pub forwarded_out: Cell<u64>,
    /// Data requests other shards sent here.
    pub forwarded_in: Cell<u64>,
    pub connections_accepted: Cell<u64>,
    pub connections_refused: Cell<u64>,
    /// Idle connections closed to admit a new one on a full shard.
    pub connections_evicted: Cell<u64>,
    /// TLS handshakes that failed or did not finish within the frame deadline.
    pub tls_handshake_failures: Cell<u64>,
    /// SASL logins that succeeded, and that failed (wrong password, unknown
    /// user, malformed exchange, unsupported mechanism).
    pub sasl_logins: Cell<u64>,
    pub sasl_failures: Cell<u64>,
    pub connections_open: Cell<u64>,
    /// Partition log flushes written and made durable (O_DSYNC writes need
    /// no fdatasync, so this can exceed `fsyncs`).
    pub flushes: Cell<u64>,
    pub fsyncs: Cell<u64>,
    pub group_requests: Cell<u64>,
    pub commits: Cell<u64>,
    /// Request bytes held against the shard's in-flight budget, kept by
    /// the server's budget as it changes; and that budget.
    pub inflight_bytes: Rc<Cell<u64>>,
    pub inflight_bytes_max: Cell<u64>,
    /// Groups rebalanced (generations started) on this shard.
    pub rebalances: Cell<u64>,
    /// The executor's busy time so far (see [`Counters::busy`]).
    busy: Cell<Duration>,
    pub fsync_latency: Latency,
    /// The O_DIRECT write of each partition flush.
    pub write_latency: Latency,
    /// Each partition flush's wait before its write: from its first batch
    /// being queued to the flusher taking it.
    pub flush_queue_latency: Latency,
    pub commit_latency: Latency,
    pub produce_latency: Latency,
    /// Produce requests with acks, from their first bytes read to their
    /// answer written to the socket.
    pub produce_request_latency: Latency,
    /// Requests by kind and result code: at most every kind times every
    /// code, a few hundred entries.
    requests: RefCell<BTreeMap<(RequestKind, u16), u64>>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters::new()
    }
}

impl Counters {
    pub fn new() -> Counters {
        Counters {
            bytes_in: Cell::new(0),
            events_in: Cell::new(0),
            bytes_out: Cell::new(0),
            events_out: Cell::new(0),
            produce_requests: Cell::new(0),
            fetch_requests: Cell::new(0),
            metadata_requests: Cell::new(0),
            admin_requests: Cell::new(0),
            other_requests: Cell::new(0),
            errors: Cell::new(0),
            forwarded_out: Cell::new(0),
            forwarded_in: Cell::new(0),
            connections_accepted: Cell::new(0),
            connections_refused: Cell::new(0),
            connections_evicted: Cell::new(0),
            tls_handshake_failures: Cell::new(0),
            sasl_logins: Cell::new(0),
            sasl_failures: Cell::new(0),
            connections_open: Cell::new(0),
            flushes: Cell::new(0),
            fsyncs: Cell::new(0),
            group_requests: Cell::new(0),
            commits: Cell::new(0),
            inflight_bytes: Rc::new(Cell::new(0)),
            inflight_bytes_max: Cell::new(0),
            rebalances: Cell::new(0),
            busy: Cell::new(Duration::ZERO),
            commit_latency: Latency::new(),
            fsync_latency: Latency::new(),
            write_latency: Latency::new(),
            flush_queue_latency: Latency::new(),
            produce_latency: Latency::new(),
            produce_request_latency: Latency::new(),
            requests: RefCell::new(BTreeMap::new()),
        }
    }

    pub fn add(counter: &Cell<u64>, amount: u64) {
        counter.set(counter.get().wrapping_add(amount));
    }

    /// Records how long a stage of a partition flush took.
    pub fn record_flush_stage(&self, stage: FlushStage, took: Duration) {
        match stage {
            FlushStage::Queued => self.flush_queue_latency.record(took),
            FlushStage::Write => {
                Counters::add(&self.flushes, 1);
                self.write_latency.record(took);
            }
            FlushStage::Fsync => {
                Counters::add(&self.fsyncs, 1);
                self.fsync_latency.record(took);
            }
        }
    }

    /// Records how long a durable offset commit took.
    pub fn record_commit(&self, took: Duration) {
        Counters::add(&self.commits, 1);
        self.commit_latency.record(took);
    }

    /// Records how long a produce request that waits for acks took, from
    /// being decoded to its answer (its flush waits included); see
    /// [`Counters::record_produce_request`] for the broker's whole share.
    pub fn record_produce(&self, took: Duration) {
        self.produce_latency.record(took);
    }

    /// Records a produce request's whole time in the broker: from its
    /// first bytes read to its answer written (reading it, waiting for the
    /// budgets and the executor, the answer's turn at the socket).
    pub fn record_produce_request(&self, took: Duration) {
        self.produce_request_latency.record(took);
    }

    /// The time this shard's executor has spent running tasks and polling
    /// for I/O since it started. glommio hands out its runtime since the
    /// last time anyone asked (reading it resets it), so it is added up
    /// here; call only from the shard's own executor.
    pub fn busy(&self) -> Duration {
        let since_last = glommio::executor().executor_stats().total_runtime();
        self.busy.set(self.busy.get() + since_last);
        self.busy.get()
    }

    /// Counts a request of `kind` answered with `code`.
    pub fn record_request(&self, kind: RequestKind, code: ErrorCode) {
        *self.requests.borrow_mut().entry((kind, code.0)).or_default() += 1;
    }

    /// (kind, code, count) of every request kind and result seen.
    pub fn requests(&self) -> Vec<(RequestKind, ErrorCode, u64)> {
        self.requests.borrow().iter().map(|((kind, code), count)| (*kind, ErrorCode(*code), *count)).collect()
    }

    /// Every plain counter, by name.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        self.named().iter().map(|(name, cell)| (*name, cell.get())).collect()
    }

    fn named(&self) -> [(&'static str, &Cell<u64>); 24] {
        [
            ("bytes_in", &self.bytes_in),
            ("events_in", &self.events_in),
            ("bytes_out", &self.bytes_out),
            ("events_out", &self.events_out),
            ("produce_requests", &self.produce_requests),
            ("fetch_requests", &self.fetch_requests),
            ("metadata_requests", &self.metadata_requests),
            ("admin_requests", &self.admin_requests),
            ("other_requests", &self.other_requests),
            ("errors", &self.errors),
            ("forwarded_out", &self.forwarded_out),
            ("forwarded_in", &self.forwarded_in),
            ("connections_accepted", &self.connections_accepted),
            ("connections_refused", &self.connections_refused),
            ("connections_evicted", &self.connections_evicted),
            ("tls_handshake_failures", &self.tls_handshake_failures),
            ("sasl_logins", &self.sasl_logins),
            ("sasl_failures", &self.sasl_failures),
            ("connections_open", &self.connections_open),
            ("flushes", &self.flushes),
            ("fsyncs", &self.fsyncs),
            ("group_requests", &self.group_requests),
            ("commits", &self.commits),
            ("rebalances", &self.rebalances),
        ]
    }

    /// A snapshot for the Stats response.
    pub fn snapshot(&self, shard: ShardId) -> ShardStats {
        let mut counters: Vec<(String, u64)> =
            self.counters().into_iter().map(|(name, value)| (name.to_string(), value)).collect();
        counters.push(("inflight_bytes".to_string(), self.inflight_bytes.get()));
        ShardStats {
            shard,
            counters,
            fsync_latency_us: self.fsync_latency.percentiles(),
            write_latency_us: self.write_latency.percentiles(),
            flush_queue_latency_us: self.flush_queue_latency.percentiles(),
            failed_partitions: Vec::new(),
            commit_latency_us: self.commit_latency.percentiles(),
            produce_latency_us: self.produce_latency.percentiles(),
            produce_request_latency_us: self.produce_request_latency.percentiles(),
        }
    }
}

/// 1 us to 1 hour at 3 significant digits: a few tens of KiB, sized once.
fn latency_histogram() -> RefCell<Histogram<u64>> {
    RefCell::new(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_carry_counters_and_flush_stage_percentiles() {
        let counters = Counters::new();
        Counters::add(&counters.bytes_in, 100);
        for micros in 1..=100 {
            counters.record_flush_stage(FlushStage::Fsync, Duration::from_micros(micros));
            counters.record_flush_stage(FlushStage::Write, Duration::from_micros(2 * micros));
        }
        counters.record_flush_stage(FlushStage::Queued, Duration::from_micros(7));
        let snapshot = counters.snapshot(ShardId(3));
        assert_eq!(snapshot.shard, ShardId(3));
        assert!(snapshot.counters.contains(&("bytes_in".to_string(), 100)));
        assert!(snapshot.counters.contains(&("fsyncs".to_string(), 100)));
        assert_eq!(snapshot.fsync_latency_us[0], (50.0, 50));
        assert_eq!(snapshot.fsync_latency_us.last(), Some(&(100.0, 100)));
        assert_eq!(snapshot.write_latency_us[0], (50.0, 100));
        assert_eq!(snapshot.write_latency_us.last(), Some(&(100.0, 200)));
        assert!(snapshot.flush_queue_latency_us.iter().all(|(_, us)| *us == 7), "{snapshot:?}");
        assert!(snapshot.produce_latency_us.is_empty(), "no produce recorded yet");
        counters.record_produce(Duration::from_millis(3));
        let snapshot = counters.snapshot(ShardId(3));
        assert_eq!(snapshot.produce_latency_us[0].0, 50.0);
        // Three significant digits: 3000 us is kept within 0.1%.
        assert!(snapshot.produce_latency_us.iter().all(|(_, us)| us.abs_diff(3000) <= 3), "{snapshot:?}");
    }

    #[test]
    fn latency_buckets_are_cumulative_and_the_sum_is_exact() {
        let counters = Counters::new();
        for micros in [40, 60, 900, 1_500, 2_000_000] {
            counters.record_produce(Duration::from_micros(micros));
        }
        let snapshot = counters.produce_latency.snapshot();
        assert_eq!(snapshot.count, 5);
        assert!((snapshot.sum_seconds - 2.002_5).abs() < 1e-9, "{}", snapshot.sum_seconds);
        let at = |bound: f64| snapshot.buckets.iter().find(|(le, _)| *le == bound).unwrap().1;
        assert_eq!((at(0.00005), at(0.0001), at(0.001), at(0.0025), at(1.0)), (1, 2, 3, 4, 4));
        assert!(snapshot.buckets.windows(2).all(|pair| pair[0].1 <= pair[1].1), "cumulative");
        assert_eq!(Counters::new().fsync_latency.snapshot().count, 0);
    }

    #[test]
    fn requests_are_counted_by_kind_and_code() {
        let counters = Counters::new();
        counters.record_request("produce", ErrorCode::NONE);
        counters.record_request("produce", ErrorCode::NONE);
        counters.record_request("produce", ErrorCode::STORAGE_FULL);
        counters.record_request("fetch", ErrorCode::NONE);
        assert_eq!(
            counters.requests(),
            vec![
                ("fetch", ErrorCode::NONE, 1),
                ("produce", ErrorCode::NONE, 2),
                ("produce", ErrorCode::STORAGE_FULL, 1)
            ]
        );
    }
}
