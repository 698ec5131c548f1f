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
//! Deleting a topic forgets every group's offsets for it: a batch of
//! tombstones (a record with the commit's key and a null value, as in
//! Kafka's `__consumer_offsets`) is made durable, then the entries leave the
//! map. Replay applies tombstones like commits, newest wins, so a topic
//! re-created under the same name starts with no committed offsets.
//!
//! The log is never compacted yet: it grows by one small batch per commit.
//! Compaction (a snapshot of the map, then deleting older segments) is
//! future work, noted in the issue.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use serde::{Deserialize, Serialize};

use crate::protocol::batch::{peek_batch_len, BatchBuilder, BatchView, Record};
use crate::protocol::types::{AckLevel, Offset, ShardId, TimestampMs};
use crate::protocol::wire::coordinator_of;
use crate::storage::io::{Storage, StorageFile};
use crate::storage::{LogConfig, OpenOptions, PartitionLog, StorageError};

const OFFSETS_DIR_PREFIX: &str = "group-offsets-";
/// Offset commits are tiny; segments need not be large.
const OFFSETS_SEGMENT_BYTES: u64 = 64 << 20;
/// A tombstone record's bytes besides its key: length, attributes,
/// timestamp and offset deltas, key length, null value and header count
/// are at most 5 + 1 + 10 + 5 + 5 + 1 + 5 varint bytes.
const TOMBSTONE_OVERHEAD_BYTES: usize = 32;

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
pub struct OffsetStore<S: Storage> {
    log: PartitionLog<S>,
    committed: RefCell<HashMap<String, GroupOffsets>>,
    batch_bytes_max: usize,
}

impl<S: Storage> OffsetStore<S> {
    /// Opens this shard's offsets log and rebuilds the map from every
    /// shard's log.
    pub async fn open(
        storage: S,
        data_dir: &Path,
        shard: ShardId,
        shard_count: usize,
        mut config: LogConfig,
    ) -> Result<OffsetStore<S>, StorageError> {
        config.segment_bytes_max =
            config.segment_bytes_max.min(OFFSETS_SEGMENT_BYTES).max(config.batch_bytes_max as u64);
        config.retention_bytes = None;
        config.retention_ms = None;
        config.segment_age_max_ms = None;
        let internal = data_dir.join("internal");
        let own_dir = internal.join(format!("{OFFSETS_DIR_PREFIX}{}", shard.0));
        let log = PartitionLog::open(storage.clone(), &own_dir, config.clone(), OpenOptions::default()).await?;
        // The newest entry of each key wins; `None` is a tombstone.
        let mut newest: HashMap<(String, String, u32), (u64, Option<Committed>)> = HashMap::new();
        for dir in offset_dirs(&storage, &internal).await {
            let entries = if dir == own_dir {
                read_own(&log).await?
            } else {
                read_foreign(&storage, &dir, config.batch_bytes_max).await
            };
            for Entry { key, time_us, value } in entries {
                if coordinator_of(&key.group, shard_count) != shard {
                    continue;
                }
                let committed = match value {
                    Some(value) => match Offset::new(value.offset) {
                        Some(offset) => Some(Committed { offset, metadata: value.metadata }),
                        None => continue,
                    },
                    None => None,
                };
                let slot = newest.entry((key.group, key.topic, key.partition)).or_insert((0, None));
                if time_us >= slot.0 {
                    *slot = (time_us, committed);
                }
            }
        }
        let mut committed: HashMap<String, GroupOffsets> = HashMap::new();
        for ((group, topic, partition), (_, value)) in newest {
            if let Some(value) = value {
                committed.entry(group).or_default().insert((topic, partition), value);
            }
        }
        Ok(OffsetStore { log, committed: RefCell::new(committed), batch_bytes_max: config.batch_bytes_max })
    }

    /// Makes `updates` durable, then visible in the map.
    pub async fn commit(&self, group: &str, updates: Vec<OffsetUpdate>) -> Result<(), StorageError> {
        if updates.is_empty() {
            return Ok(());
        }
        let now = TimestampMs::now();
        let time_us = u64::try_from(now.0).unwrap_or(0) * 1000;
        let encoded: Vec<(Vec<u8>, Option<Vec<u8>>)> = updates
            .iter()
            .map(|update| {
                let key =
                    CommitKey { group: group.to_string(), topic: update.topic.clone(), partition: update.partition };
                let value = CommitValue { offset: update.offset.get(), metadata: update.metadata.clone(), time_us };
                (encode(&key), Some(encode(&value)))
            })
            .collect();
        self.append(now, &encoded).await?;
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

    /// Forgets every group's offsets for `topic` (deleted): durable
    /// tombstones first, then the map. Returns how many were forgotten.
    pub async fn forget_topic(&self, topic: &str) -> Result<usize, StorageError> {
        let doomed: Vec<CommitKey> = self
            .committed
            .borrow()
            .iter()
            .flat_map(|(group, offsets)| {
                offsets.keys().filter(|(t, _)| t == topic).map(|(topic, partition)| CommitKey {
                    group: group.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                })
            })
            .collect();
        // As many batches as it takes: a busy broker can have many groups
        // on one topic. Half a batch of keys leaves room for the framing.
        let mut encoded: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut encoded_bytes = 0;
        for key in &doomed {
            let key = encode(key);
            if encoded_bytes + key.len() > self.batch_bytes_max / 2 && !encoded.is_empty() {
                self.append(TimestampMs::now(), &encoded).await?;
                encoded.clear();
                encoded_bytes = 0;
            }
            encoded_bytes += key.len() + TOMBSTONE_OVERHEAD_BYTES;
            encoded.push((key, None));
        }
        if !encoded.is_empty() {
            self.append(TimestampMs::now(), &encoded).await?;
        }
        let mut committed = self.committed.borrow_mut();
        for key in &doomed {
            if let Some(offsets) = committed.get_mut(&key.group) {
                offsets.remove(&(key.topic.clone(), key.partition));
                if offsets.is_empty() {
                    committed.remove(&key.group);
                }
            }
        }
        Ok(doomed.len())
    }

    /// Topics that have committed offsets in some group.
    pub fn topics(&self) -> BTreeSet<String> {
        self.committed.borrow().values().flat_map(|offsets| offsets.keys().map(|(topic, _)| topic.clone())).collect()
    }

    /// Appends one batch of (key, value) records, durably.
    async fn append(&self, now: TimestampMs, records: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<(), StorageError> {
        let mut buf = Vec::new();
        let mut builder = BatchBuilder::new(&mut buf, now.0);
        for (key, value) in records {
            builder.push(&Record { timestamp_ms: now.0, key: Some(key), value: value.as_deref(), headers: &[] });
        }
        let batch = builder.finish();
        if batch.len() > self.batch_bytes_max {
            return Err(StorageError::BatchTooLarge { len_bytes: batch.len(), max_bytes: self.batch_bytes_max });
        }
        self.log.append_and_wait(BytesMut::from(batch), AckLevel::Durable).await?;
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
async fn offset_dirs<S: Storage>(storage: &S, internal: &Path) -> Vec<PathBuf> {
    let Ok(entries) = storage.list_dirs(internal).await else { return Vec::new() };
    let mut dirs: Vec<PathBuf> = entries
        .into_iter()
        .filter(|path| path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(OFFSETS_DIR_PREFIX)))
        .collect();
    dirs.sort();
    dirs
}

/// Every commit in this shard's own log.
async fn read_own<S: Storage>(log: &PartitionLog<S>) -> Result<Vec<Entry>, StorageError> {
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
/// its segment files through the storage seam (that shard owns the log;
/// this only reads). Reading stops at the first damaged or partial batch
/// of a segment.
async fn read_foreign<S: Storage>(storage: &S, dir: &Path, batch_bytes_max: usize) -> Vec<Entry> {
    let Ok(entries) = storage.list(dir).await else { return Vec::new() };
    let mut segments: Vec<PathBuf> =
        entries.into_iter().filter(|path| path.extension().is_some_and(|ext| ext == "log")).collect();
    segments.sort();
    let mut found = Vec::new();
    for segment in segments {
        match read_file(storage, &segment).await {
            Ok(bytes) => decode_batches(&bytes, batch_bytes_max, &mut found),
            Err(error) => tracing::warn!(path = %segment.display(), %error, "skipping an unreadable offsets segment"),
        }
    }
    found
}

/// A whole file's bytes, read in aligned chunks.
async fn read_file<S: Storage>(storage: &S, path: &Path) -> std::io::Result<Vec<u8>> {
    const CHUNK_BYTES: usize = 1 << 20;
    let file = storage.open(path).await?;
    let size = usize::try_from(file.size().await?).map_err(std::io::Error::other)?;
    let mut bytes = Vec::with_capacity(size.min(CHUNK_BYTES));
    while bytes.len() < size {
        let want = (size - bytes.len()).min(CHUNK_BYTES);
        if file.read_into(bytes.len() as u64, want, &mut bytes).await? == 0 {
            break;
        }
    }
    file.close().await?;
    Ok(bytes)
}

/// One record of an offsets log: a commit, or a tombstone (`value: None`).
struct Entry {
    key: CommitKey,
    time_us: u64,
    value: Option<CommitValue>,
}

fn decode_batches(mut bytes: &[u8], batch_bytes_max: usize, out: &mut Vec<Entry>) {
    while let Ok(Some(len)) = peek_batch_len(bytes, batch_bytes_max) {
        let Ok(view) = BatchView::parse(bytes, batch_bytes_max) else { return };
        if let Ok(records) = view.records() {
            for record in records.flatten() {
                let Some(key) = record.key.and_then(|key| postcard::from_bytes::<CommitKey>(key).ok()) else {
                    continue;
                };
                match record.value {
                    Some(value) => {
                        if let Ok(value) = postcard::from_bytes::<CommitValue>(value) {
                            out.push(Entry { key, time_us: value.time_us, value: Some(value) });
                        }
                    }
                    None => {
                        // A tombstone carries its time in the record timestamp
                        // (milliseconds; commits use the same clock times 1000).
                        let time_us = u64::try_from(record.timestamp_ms()).unwrap_or(0).saturating_mul(1000);
                        out.push(Entry { key, time_us, value: None });
                    }
                }
            }
        }
        bytes = &bytes[len..];
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("commit keys and values always encode")
}
