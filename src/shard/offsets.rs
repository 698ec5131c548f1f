//! Committed consumer-group offsets: a map in memory, made durable in an
//! internal partition log of the coordinating shard.
//!
//! Each commit request becomes one record batch (one record per partition:
//! key = group/topic/partition, value = offset, metadata and commit time),
//! appended and fdatasync'd before the commit is acknowledged. At start a
//! shard replays the offset logs of every shard (the number of shards may
//! have changed since, which moves groups between shards) and keeps the
//! newest entry of each key for the groups it now coordinates.
//!
//! The log is never compacted yet: it grows by one small batch per commit.
//! Compaction (a snapshot of the map, then deleting older segments) is
//! future work, noted in the issue.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use serde::{Deserialize, Serialize};

use crate::protocol::batch::{peek_batch_len, BatchBuilder, BatchView, Record};
use crate::protocol::types::{AckLevel, Offset, ShardId, TimestampMs};
use crate::protocol::wire::coordinator_of;
use crate::storage::dma::DmaStorage;
use crate::storage::{LogConfig, OpenOptions, PartitionLog, StorageError};

const OFFSETS_DIR_PREFIX: &str = "group-offsets-";
/// Offset commits are tiny; segments need not be large.
const OFFSETS_SEGMENT_BYTES: u64 = 64 << 20;

/// A committed position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: Offset,
    pub metadata: String,
}

/// One change to a group's committed offsets.
#[derive(Debug, Clone)]
pub struct OffsetUpdate {
    pub topic: String,
    pub partition: u32,
    pub offset: Offset,
    pub metadata: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct CommitKey {
    group: String,
    topic: String,
    partition: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct CommitValue {
    offset: u64,
    metadata: String,
    time_us: u64,
}

type GroupOffsets = BTreeMap<(String, u32), Committed>;

/// The offsets of the groups this shard coordinates.
#[derive(Debug)]
pub struct OffsetStore {
    log: PartitionLog<DmaStorage>,
    committed: RefCell<HashMap<String, GroupOffsets>>,
    batch_bytes_max: usize,
}

impl OffsetStore {
    /// Opens this shard's offsets log and rebuilds the map from every
    /// shard's log.
    pub async fn open(
        storage: DmaStorage,
        data_dir: &Path,
        shard: ShardId,
        shard_count: usize,
        mut config: LogConfig,
    ) -> Result<OffsetStore, StorageError> {
        config.segment_bytes_max =
            config.segment_bytes_max.min(OFFSETS_SEGMENT_BYTES).max(config.batch_bytes_max as u64);
        config.retention_bytes = None;
        config.retention_ms = None;
        config.segment_age_max_ms = None;
        let internal = data_dir.join("internal");
        let own_dir = internal.join(format!("{OFFSETS_DIR_PREFIX}{}", shard.0));
        let log = PartitionLog::open(storage, &own_dir, config.clone(), OpenOptions::default()).await?;
        let mut newest: HashMap<(String, String, u32), (u64, Committed)> = HashMap::new();
        for dir in offset_dirs(&internal) {
            let entries =
                if dir == own_dir { read_own(&log).await? } else { read_foreign(&dir, config.batch_bytes_max) };
            for (key, value) in entries {
                if coordinator_of(&key.group, shard_count) != shard {
                    continue;
                }
                let Some(offset) = Offset::new(value.offset) else { continue };
                let committed = Committed { offset, metadata: value.metadata };
                let slot = newest.entry((key.group, key.topic, key.partition)).or_insert((0, committed.clone()));
                if value.time_us >= slot.0 {
                    *slot = (value.time_us, committed);
                }
            }
        }
        let mut committed: HashMap<String, GroupOffsets> = HashMap::new();
        for ((group, topic, partition), (_, value)) in newest {
            committed.entry(group).or_default().insert((topic, partition), value);
        }
        Ok(OffsetStore { log, committed: RefCell::new(committed), batch_bytes_max: config.batch_bytes_max })
    }

    /// Makes `updates` durable, then visible in the map.
    pub async fn commit(&self, group: &str, updates: Vec<OffsetUpdate>) -> Result<(), StorageError> {
        if updates.is_empty() {
            return Ok(());
        }
        let time_us = u64::try_from(TimestampMs::now().0).unwrap_or(0) * 1000;
        let encoded: Vec<(Vec<u8>, Vec<u8>)> = updates
            .iter()
            .map(|update| {
                let key =
                    CommitKey { group: group.to_string(), topic: update.topic.clone(), partition: update.partition };
                let value = CommitValue { offset: update.offset.get(), metadata: update.metadata.clone(), time_us };
                (postcard::to_allocvec(&key).expect("encodes"), postcard::to_allocvec(&value).expect("encodes"))
            })
            .collect();
        let mut buf = Vec::new();
        let mut builder = BatchBuilder::new(&mut buf, TimestampMs::now().0);
        for (key, value) in &encoded {
            builder.push(&Record {
                timestamp_ms: TimestampMs::now().0,
                key: Some(key),
                value: Some(value),
                headers: &[],
            });
        }
        let batch = builder.finish();
        if batch.len() > self.batch_bytes_max {
            return Err(StorageError::BatchTooLarge { len_bytes: batch.len(), max_bytes: self.batch_bytes_max });
        }
        self.log.append_and_wait(BytesMut::from(batch), AckLevel::Durable).await?;
        let mut committed = self.committed.borrow_mut();
        let offsets = committed.entry(group.to_string()).or_default();
        for update in updates {
            offsets.insert(
                (update.topic, update.partition),
                Committed { offset: update.offset, metadata: update.metadata },
            );
        }
        Ok(())
    }

    pub fn get(&self, group: &str, topic: &str, partition: u32) -> Option<Committed> {
        self.committed.borrow().get(group)?.get(&(topic.to_string(), partition)).cloned()
    }

    /// Every committed offset of a group.
    pub fn group(&self, group: &str) -> Vec<((String, u32), Committed)> {
        self.committed.borrow().get(group).map(|offsets| offsets.clone().into_iter().collect()).unwrap_or_default()
    }

    /// Groups that have committed offsets.
    pub fn groups(&self) -> Vec<String> {
        self.committed.borrow().keys().cloned().collect()
    }

    pub async fn close(self) {
        if let Err(error) = self.log.close().await {
            tracing::error!(%error, "closing the offsets log");
        }
    }
}

/// The offsets directories of all shards, present and past.
fn offset_dirs(internal: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(internal) else { return Vec::new() };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(OFFSETS_DIR_PREFIX)))
        .collect();
    dirs.sort();
    dirs
}

/// Every commit in this shard's own log.
async fn read_own(log: &PartitionLog<DmaStorage>) -> Result<Vec<(CommitKey, CommitValue)>, StorageError> {
    let mut entries = Vec::new();
    let (end, mut next) = log.bounds();
    while next < end {
        let mut out = Vec::new();
        let read = log.read(next, 1 << 20, &mut out).await?;
        if read.bytes == 0 {
            break;
        }
        decode_batches(&out, usize::MAX, &mut entries);
        next = read.next_offset;
    }
    Ok(entries)
}

/// Every whole, valid commit in another shard's log, read straight from
/// its segment files (that shard owns the log; this only reads). Reading
/// stops at the first damaged or partial batch of a segment.
fn read_foreign(dir: &Path, batch_bytes_max: usize) -> Vec<(CommitKey, CommitValue)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut segments: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    segments.sort();
    let mut found = Vec::new();
    for segment in segments {
        match std::fs::read(&segment) {
            Ok(bytes) => decode_batches(&bytes, batch_bytes_max, &mut found),
            Err(error) => tracing::warn!(path = %segment.display(), %error, "skipping an unreadable offsets segment"),
        }
    }
    found
}

fn decode_batches(mut bytes: &[u8], batch_bytes_max: usize, out: &mut Vec<(CommitKey, CommitValue)>) {
    while let Ok(Some(len)) = peek_batch_len(bytes, batch_bytes_max) {
        let Ok(view) = BatchView::parse(bytes, batch_bytes_max) else { return };
        if let Ok(records) = view.records() {
            for record in records.flatten() {
                let key = record.key.and_then(|key| postcard::from_bytes::<CommitKey>(key).ok());
                let value = record.value.and_then(|value| postcard::from_bytes::<CommitValue>(value).ok());
                if let (Some(key), Some(value)) = (key, value) {
                    out.push((key, value));
                }
            }
        }
        bytes = &bytes[len..];
    }
}
