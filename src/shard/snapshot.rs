//! What a metrics scrape reads of a shard: its counters, latency
//! histograms, partitions and the consumer groups it coordinates, copied
//! into plain owned data on the shard's own thread and sent over the mesh
//! to the shard that serves the scrape. Nothing here is shared between
//! threads while a shard runs; the hot path only bumps its own `Cell`s.

use std::collections::BTreeSet;
use std::rc::Rc;

use futures_channel::oneshot;

use crate::protocol::types::{Offset, ShardId};
use crate::protocol::wire::ErrorCode;
use crate::storage::io::Storage;

use super::partitions::Partition;
use super::stats::LatencySnapshot;
use super::{Shard, ShardMessage};

/// One shard at one moment.
#[derive(Debug, Clone)]
pub struct ShardSnapshot {
    pub shard: ShardId,
    /// Every plain counter of `stats::Counters`, by name.
    pub counters: Vec<(&'static str, u64)>,
    /// Requests by kind and result code.
    pub requests: Vec<(&'static str, ErrorCode, u64)>,
    pub inflight_bytes: u64,
    pub inflight_bytes_max: u64,
    /// Time the shard's executor spent running tasks and polling I/O.
    pub busy_seconds: f64,
    pub produce_latency: LatencySnapshot,
    pub produce_request_latency: LatencySnapshot,
    pub fsync_latency: LatencySnapshot,
    pub write_latency: LatencySnapshot,
    pub flush_queue_latency: LatencySnapshot,
    pub commit_latency: LatencySnapshot,
    pub partitions: Vec<PartitionSnapshot>,
    pub groups: Vec<GroupSnapshot>,
    /// Write, fdatasync and seal failures of this shard's partition logs.
    pub write_errors: u64,
    /// Segments retention has deleted.
    pub segments_deleted: u64,
}

/// One partition this shard owns.
#[derive(Debug, Clone)]
pub struct PartitionSnapshot {
    pub topic: String,
    pub partition: u32,
    /// First offset still held.
    pub start: Offset,
    /// The offset the next append gets (some of what is before it may not
    /// be durable yet).
    pub end: Offset,
    /// End of the durable prefix: what consumers can read.
    pub durable_end: Offset,
    pub size_bytes: u64,
    pub segments: u64,
    /// Quarantined or poisoned: out of service.
    pub failed: bool,
}

/// One consumer group this shard coordinates.
#[derive(Debug, Clone)]
pub struct GroupSnapshot {
    pub group: String,
    pub state: &'static str,
    pub members: u32,
    pub generation: u32,
    /// (topic, partition, committed offset).
    pub committed: Vec<(String, u32, Offset)>,
}

impl<S: Storage> Shard<S> {
    /// A snapshot of every shard, this one first.
    pub async fn snapshot_all(self: &Rc<Self>) -> Vec<ShardSnapshot> {
        let mut snapshots = vec![self.local_snapshot()];
        for peer in (0..self.shard_count).map(|peer| ShardId(peer as u16)).filter(|peer| *peer != self.id) {
            let (reply, answer) = oneshot::channel();
            if self.send_to(peer, ShardMessage::Snapshot { reply }).await.is_some() {
                if let Ok(snapshot) = answer.await {
                    snapshots.push(snapshot);
                }
            }
        }
        snapshots
    }

    pub(super) fn local_snapshot(&self) -> ShardSnapshot {
        let counters = &self.counters;
        let mut snapshot = ShardSnapshot {
            shard: self.id,
            counters: counters.counters(),
            requests: counters.requests(),
            inflight_bytes: counters.inflight_bytes.get(),
            inflight_bytes_max: counters.inflight_bytes_max.get(),
            busy_seconds: counters.busy().as_secs_f64(),
            produce_latency: counters.produce_latency.snapshot(),
            produce_request_latency: counters.produce_request_latency.snapshot(),
            fsync_latency: counters.fsync_latency.snapshot(),
            write_latency: counters.write_latency.snapshot(),
            flush_queue_latency: counters.flush_queue_latency.snapshot(),
            commit_latency: counters.commit_latency.snapshot(),
            partitions: Vec::new(),
            groups: self.group_snapshots(),
            write_errors: 0,
            segments_deleted: 0,
        };
        let (mut write_errors, mut segments_deleted) = (0, 0);
        snapshot.partitions = self.partitions.each(|topic, partition, state| {
            Some(match state {
                Partition::Ready(log) => {
                    let stats = log.stats();
                    write_errors += stats.write_errors;
                    segments_deleted += stats.segments_deleted;
                    let (durable_end, start) = log.bounds();
                    PartitionSnapshot {
                        topic: topic.to_string(),
                        partition,
                        start,
                        end: log.next_offset(),
                        durable_end,
                        size_bytes: log.size_bytes(),
                        segments: log.segment_count() as u64,
                        failed: log.poisoned().is_some(),
                    }
                }
                Partition::Failed(_) => PartitionSnapshot {
                    topic: topic.to_string(),
                    partition,
                    start: Offset::ZERO,
                    end: Offset::ZERO,
                    durable_end: Offset::ZERO,
                    size_bytes: 0,
                    segments: 0,
                    failed: true,
                },
            })
        });
        snapshot.write_errors = write_errors;
        snapshot.segments_deleted = segments_deleted;
        snapshot
    }

    /// The groups with members or committed offsets on this shard.
    fn group_snapshots(&self) -> Vec<GroupSnapshot> {
        let store = self.coordinator.offsets.borrow().clone();
        let groups = self.coordinator.groups.borrow();
        let mut names: BTreeSet<String> = groups.keys().cloned().collect();
        if let Some(store) = &store {
            names.extend(store.groups());
        }
        names
            .into_iter()
            .map(|group| {
                let state = groups.get(&group);
                let committed = store
                    .as_ref()
                    .map(|store| store.group(&group))
                    .unwrap_or_default()
                    .into_iter()
                    .map(|((topic, partition), committed)| (topic, partition, committed.offset))
                    .collect();
                GroupSnapshot {
                    state: state.map_or("empty", |state| state.state_name()),
                    members: state.map_or(0, |state| state.member_count() as u32),
                    generation: state.map_or(0, |state| state.generation),
                    committed,
                    group,
                }
            })
            .collect()
    }
}
