//! Per-shard counters and latency histograms (fdatasync, produce, commit).
//!
//! Plain `Cell`s: a shard's counters are only ever touched by its own
//! thread. Other shards ask for a snapshot with a Stats message.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::protocol::types::ShardId;
use crate::protocol::wire::ShardStats;

/// Percentiles reported for every latency histogram.
const PERCENTILES: [f64; 6] = [50.0, 90.0, 99.0, 99.9, 99.99, 100.0];

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
    pub connections_open: Cell<u64>,
    pub fsyncs: Cell<u64>,
    pub group_requests: Cell<u64>,
    pub commits: Cell<u64>,
    fsync_latency_us: RefCell<Histogram<u64>>,
    commit_latency_us: RefCell<Histogram<u64>>,
    produce_latency_us: RefCell<Histogram<u64>>,
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
            connections_open: Cell::new(0),
            fsyncs: Cell::new(0),
            group_requests: Cell::new(0),
            commits: Cell::new(0),
            commit_latency_us: latency_histogram(),
            fsync_latency_us: latency_histogram(),
            produce_latency_us: latency_histogram(),
        }
    }

    pub fn add(counter: &Cell<u64>, amount: u64) {
        counter.set(counter.get().wrapping_add(amount));
    }

    pub fn record_fsync(&self, took: Duration) {
        Counters::add(&self.fsyncs, 1);
        record(&self.fsync_latency_us, took);
    }

    /// Records how long a durable offset commit took.
    pub fn record_commit(&self, took: Duration) {
        Counters::add(&self.commits, 1);
        record(&self.commit_latency_us, took);
    }

    /// Records how long a produce request that waits for acks took, from
    /// being decoded to its answer: the broker's share of ack latency.
    pub fn record_produce(&self, took: Duration) {
        record(&self.produce_latency_us, took);
    }

    /// A snapshot for the Stats response.
    pub fn snapshot(&self, shard: ShardId) -> ShardStats {
        let counters = [
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
            ("connections_open", &self.connections_open),
            ("fsyncs", &self.fsyncs),
            ("group_requests", &self.group_requests),
            ("commits", &self.commits),
        ];
        ShardStats {
            shard,
            counters: counters.iter().map(|(name, cell)| (name.to_string(), cell.get())).collect(),
            fsync_latency_us: percentiles(&self.fsync_latency_us),
            failed_partitions: Vec::new(),
            commit_latency_us: percentiles(&self.commit_latency_us),
            produce_latency_us: percentiles(&self.produce_latency_us),
        }
    }
}

/// 1 us to 1 hour at 3 significant digits: a few tens of KiB, sized once.
fn latency_histogram() -> RefCell<Histogram<u64>> {
    RefCell::new(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"))
}

fn record(histogram: &RefCell<Histogram<u64>>, took: Duration) {
    let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
    histogram.borrow_mut().saturating_record(micros);
}

/// (percentile, microseconds) pairs; none for an empty histogram.
fn percentiles(histogram: &RefCell<Histogram<u64>>) -> Vec<(f64, u64)> {
    let histogram = histogram.borrow();
    if histogram.is_empty() {
        return Vec::new();
    }
    PERCENTILES.iter().map(|p| (*p, histogram.value_at_percentile(*p))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_carry_counters_and_fsync_percentiles() {
        let counters = Counters::new();
        Counters::add(&counters.bytes_in, 100);
        for micros in 1..=100 {
            counters.record_fsync(Duration::from_micros(micros));
        }
        let snapshot = counters.snapshot(ShardId(3));
        assert_eq!(snapshot.shard, ShardId(3));
        assert!(snapshot.counters.contains(&("bytes_in".to_string(), 100)));
        assert!(snapshot.counters.contains(&("fsyncs".to_string(), 100)));
        assert_eq!(snapshot.fsync_latency_us[0], (50.0, 50));
        assert_eq!(snapshot.fsync_latency_us.last(), Some(&(100.0, 100)));
        assert!(snapshot.produce_latency_us.is_empty(), "no produce recorded yet");
        counters.record_produce(Duration::from_millis(3));
        let snapshot = counters.snapshot(ShardId(3));
        assert_eq!(snapshot.produce_latency_us[0].0, 50.0);
        // Three significant digits: 3000 us is kept within 0.1%.
        assert!(snapshot.produce_latency_us.iter().all(|(_, us)| us.abs_diff(3000) <= 3), "{snapshot:?}");
    }
}
