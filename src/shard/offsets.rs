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
//! Compaction: once more than [`COMPACT_AFTER_BYTES`] were appended since the
//! last snapshot (and more than twice that snapshot's size), the store
//! appends a snapshot of its map, durably, and then moves the log's start to
//! the snapshot's first record, which removes the older segments. Commits
//! wait while a snapshot is written, so none can land between the map being
//! read and the log start moving past it. A snapshot also carries tombstones
//! for keys of this shard's groups that other shards' logs still hold (left
//! from before a change in the number of shards), so dropping the older
//! tombstones cannot bring those entries back.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use glommio::sync::Semaphore;
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
/// Bytes appended since the last snapshot that make the log due for
/// compaction (see the module comment).
pub const COMPACT_AFTER_BYTES: u64 = 4 << 20;
/// Appends in flight at once; a compaction takes every permit.
const WRITERS_MAX: u64 = 1 << 16;

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

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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
    /// Keys of this shard's groups found in other shards' logs at open.
    foreign_keys: BTreeSet<CommitKey>,
    /// Commits and forgets hold one permit; a compaction holds them all.
    writers: Semaphore,
    /// Bytes appended since the last snapshot, and that snapshot's size.
    appended_bytes: Cell<u64>,
    snapshot_bytes: Cell<u64>,
    compact_after_bytes: u64,
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
        let mut foreign_keys = BTreeSet::new();
        for dir in offset_dirs(&storage, &internal).await {
            let foreign = dir != own_dir;
            let entries = if foreign {
                read_foreign(&storage, &dir, config.batch_bytes_max).await
            } else {
                read_own(&log).await?
            };
            for Entry { key, time_us, value } in entries {
                if coordinator_of(&key.group, shard_count) != shard {
                    continue;
                }
                if foreign {
                    foreign_keys.insert(key.clone());
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
        let appended_bytes = Cell::new(log.size_bytes());
        Ok(OffsetStore {
            log,
            committed: RefCell::new(committed),
            batch_bytes_max: config.batch_bytes_max,
            foreign_keys,
            writers: Semaphore::new(WRITERS_MAX),
            appended_bytes,
            snapshot_bytes: Cell::new(0),
            compact_after_bytes: COMPACT_AFTER_BYTES,
        })
    }

    /// Compacts once this many bytes were appended since the last snapshot.
    pub fn with_compaction_after(mut self, bytes: u64) -> Self {
        self.compact_after_bytes = bytes;
        self
    }

    /// Makes `updates` durable, then visible in the map.
    pub async fn commit(&self, group: &str, updates: Vec<OffsetUpdate>) -> Result<(), StorageError> {
        if updates.is_empty() {
            return Ok(());
        }
        let writer = self.writers.acquire_permit(1).await.map_err(|_| StorageError::Closed)?;
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
        {
            let mut committed = self.committed.borrow_mut();
            let offsets = committed.entry(group.to_string()).or_default();
            for update in updates {
                offsets.insert(
                    (update.topic, update.partition),
                    Committed { offset: update.offset, metadata: update.metadata },
                );
            }
        }
        drop(writer);
        self.compact_if_due().await
    }

    /// Forgets every group's offsets for `topic` (deleted): durable
    /// tombstones first, then the map. Returns how many were forgotten.
    pub async fn forget_topic(&self, topic: &str) -> Result<usize, StorageError> {
        let writer = self.writers.acquire_permit(1).await.map_err(|_| StorageError::Closed)?;
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
        // on one topic.
        let tombstones: Vec<(Vec<u8>, Option<Vec<u8>>)> = doomed.iter().map(|key| (encode(key), None)).collect();
        self.append_chunked(TimestampMs::now(), &tombstones).await?;
        {
            let mut committed = self.committed.borrow_mut();
            for key in &doomed {
                if let Some(offsets) = committed.get_mut(&key.group) {
                    offsets.remove(&(key.topic.clone(), key.partition));
                    if offsets.is_empty() {
                        committed.remove(&key.group);
                    }
                }
            }
        }
        drop(writer);
        self.compact_if_due().await?;
        Ok(doomed.len())
    }

    /// Writes a snapshot and drops what it supersedes, if enough was
    /// appended since the last one (see the module comment).
    async fn compact_if_due(&self) -> Result<(), StorageError> {
        let due = || {
            let appended = self.appended_bytes.get();
            appended >= self.compact_after_bytes && appended >= 2 * self.snapshot_bytes.get()
        };
        if !due() {
            return Ok(());
        }
        let Ok(_all) = self.writers.acquire_permit(WRITERS_MAX).await else { return Err(StorageError::Closed) };
        if !due() {
            return Ok(()); // another compaction ran while this one waited
        }
        let time_us = u64::try_from(TimestampMs::now().0).unwrap_or(0) * 1000;
        let mut records: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut live = BTreeSet::new();
        for (group, offsets) in self.committed.borrow().iter() {
            for ((topic, partition), committed) in offsets {
                let key = CommitKey { group: group.clone(), topic: topic.clone(), partition: *partition };
                let value =
                    CommitValue { offset: committed.offset.get(), metadata: committed.metadata.clone(), time_us };
                records.push((encode(&key), Some(encode(&value))));
                live.insert(key);
            }
        }
        for key in self.foreign_keys.difference(&live) {
            records.push((encode(key), None));
        }
        let start = self.log.next_offset();
        self.appended_bytes.set(0);
        self.append_chunked(TimestampMs::now(), &records).await?;
        let snapshot_bytes = self.appended_bytes.get();
        self.log.delete_records_before(start).await?;
        self.snapshot_bytes.set(snapshot_bytes);
        tracing::debug!(entries = records.len(), snapshot_bytes, start = start.get(), "compacted the offsets log");
        Ok(())
    }

    /// Appends records in as many batches as their size needs.
    async fn append_chunked(
        &self,
        now: TimestampMs,
        records: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> Result<(), StorageError> {
        let mut first = 0;
        let mut bytes = 0;
        for (index, (key, value)) in records.iter().enumerate() {
            let len = key.len() + value.as_ref().map_or(0, Vec::len) + TOMBSTONE_OVERHEAD_BYTES;
            if bytes + len > self.batch_bytes_max / 2 && index > first {
                self.append(now, &records[first..index]).await?;
                first = index;
                bytes = 0;
            }
            bytes += len;
        }
        if first < records.len() {
            self.append(now, &records[first..]).await?;
        }
        Ok(())
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
        let len = batch.len() as u64;
        self.log.append_and_wait(BytesMut::from(batch), AckLevel::Durable).await?;
        self.appended_bytes.set(self.appended_bytes.get() + len);
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
        let mut entries = Vec::new();
        match read_segment(storage, &segment, batch_bytes_max, &mut entries).await {
            Ok(()) => found.append(&mut entries),
            Err(error) => tracing::warn!(path = %segment.display(), %error, "skipping an unreadable offsets segment"),
        }
    }
    found
}

/// Decodes a segment's entries into `out`, reading it in chunks only as
/// far as its batches go. A segment's file is preallocated (4 MiB for a new
/// log, then whole segments), so most of a young one is zeros; reading
/// those would cost every shard, at every start, every other shard's
/// preallocation.
async fn read_segment<S: Storage>(
    storage: &S,
    path: &Path,
    batch_bytes_max: usize,
    out: &mut Vec<Entry>,
) -> std::io::Result<()> {
    const CHUNK_BYTES: usize = 1 << 20;
    let file = storage.open(path).await?;
    let size = file.size().await?;
    let read = async {
        // Read but not yet decoded: at most one batch plus one chunk.
        let mut pending = Vec::with_capacity(CHUNK_BYTES.min(usize::try_from(size).unwrap_or(CHUNK_BYTES)));
        let mut position = 0u64;
        while position < size {
            let want = usize::try_from(size - position).unwrap_or(usize::MAX).min(CHUNK_BYTES);
            let read = file.read_into(position, want, &mut pending).await?;
            if read == 0 {
                break;
            }
            position += read as u64;
            let (decoded, at_end) = decode_batches(&pending, batch_bytes_max, out);
            if at_end {
                break;
            }
            pending.drain(..decoded);
        }
        Ok(())
    }
    .await;
    file.close().await?;
    read
}

/// One record of an offsets log: a commit, or a tombstone (`value: None`).
struct Entry {
    key: CommitKey,
    time_us: u64,
    value: Option<CommitValue>,
}

/// Decodes the whole batches at the start of `bytes` into `out`. Returns
/// how many bytes they took, and whether what follows them is the end of
/// the data (zeros, or anything not a batch) rather than a batch cut short.
fn decode_batches(bytes: &[u8], batch_bytes_max: usize, out: &mut Vec<Entry>) -> (usize, bool) {
    let mut decoded = 0;
    loop {
        let rest = &bytes[decoded..];
        let len = match peek_batch_len(rest, batch_bytes_max) {
            Ok(Some(len)) if len <= rest.len() => len,
            Ok(_) => return (decoded, false),
            Err(_) => return (decoded, true),
        };
        let Ok(view) = BatchView::parse(&rest[..len], batch_bytes_max) else { return (decoded, true) };
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
        decoded += len;
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("commit keys and values always encode")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sim::{CrashMode, SimStorage};

    fn run<T, F: std::future::Future<Output = T>>(make: impl FnOnce() -> F) -> T {
        crate::runtime::test_executor().run(make())
    }

    fn config() -> LogConfig {
        LogConfig {
            segment_bytes_max: 16 << 10,
            batch_bytes_max: 4 << 10,
            write_bytes_max: 8 << 10,
            write_request_bytes: 4096,
            tail_cache_bytes: 4 << 10,
            ..LogConfig::default()
        }
    }

    async fn open(disk: &SimStorage, shard: u16, shard_count: usize) -> OffsetStore<SimStorage> {
        OffsetStore::open(disk.clone(), Path::new("/data"), ShardId(shard), shard_count, config())
            .await
            .expect("opens")
            .with_compaction_after(8 << 10)
    }

    fn update(topic: &str, partition: u32, offset: u64) -> OffsetUpdate {
        OffsetUpdate {
            topic: topic.to_string(),
            partition,
            offset: Offset::new(offset).expect("in range"),
            metadata: format!("m{offset}"),
        }
    }

    /// A group whose coordinator is shard `shard` of `count`.
    fn group_on(shard: u16, count: usize) -> String {
        (0..).map(|i| format!("group-{i}")).find(|g| coordinator_of(g, count) == ShardId(shard)).expect("some group")
    }

    #[test]
    fn compaction_keeps_the_newest_offsets_and_drops_the_rest() {
        let (start, segments, reopened, expected) = run(|| async {
            let disk = SimStorage::new();
            let store = open(&disk, 0, 1).await;
            for round in 0..400u64 {
                let group = format!("g{}", round % 7);
                store.commit(&group, vec![update("orders", (round % 3) as u32, round)]).await.unwrap();
            }
            store.forget_topic("orders").await.unwrap();
            store.commit("g1", vec![update("payments", 0, 99)]).await.unwrap();
            let expected: Vec<_> = (0..7).map(|g| store.group(&format!("g{g}"))).collect();
            let (_, start) = store.log.bounds();
            let segments = store.log.segment_count();
            store.close().await;
            // A power cut: only what was synced counts.
            let image = disk.crash_image(CrashMode::LoseUnsynced);
            let reopened = open(&image, 0, 1).await;
            let found: Vec<_> = (0..7).map(|g| reopened.group(&format!("g{g}"))).collect();
            (start.get(), segments, found, expected)
        });
        assert!(start > 0, "the log start moved past compacted records");
        assert!(segments <= 3, "old segments were removed ({segments} left)");
        assert_eq!(reopened, expected);
        assert_eq!(expected[1].len(), 1, "only g1's payments commit is left: {:?}", expected[1]);
    }

    #[test]
    fn another_shards_segment_is_read_only_as_far_as_its_batches_go() {
        let (found, read) = run(|| async {
            let disk = SimStorage::new();
            let group = group_on(1, 2);
            let before = open(&disk, 1, 2).await;
            before.commit(&group, vec![update("orders", 0, 42)]).await.unwrap();
            before.close().await;
            // Its file as preallocated on a real disk: the batches, then
            // zeros to 8 MiB.
            let segment = Path::new("/data/internal/group-offsets-1/00000000000000000000.log");
            let mut bytes = disk.contents(segment).expect("shard 1's segment");
            assert!(bytes.len() < 64 << 10, "one small commit: {} bytes", bytes.len());
            bytes.resize(8 << 20, 0);
            disk.set_contents(segment, bytes);
            let read_before = disk.bytes_read();
            let store = open(&disk, 0, 1).await;
            (store.get(&group, "orders", 0).map(|c| c.offset.get()), disk.bytes_read() - read_before)
        });
        assert_eq!(found, Some(42), "shard 1's commit is found");
        assert!(read <= 1 << 20, "{read} bytes read: the zeros after the batches were read too");
    }

    #[test]
    fn decoding_tells_a_batch_cut_short_from_the_end_of_the_data() {
        let bytes = run(|| async {
            let disk = SimStorage::new();
            let store = open(&disk, 1, 2).await;
            for round in 0..3 {
                store.commit("g", vec![update("orders", round, u64::from(round))]).await.unwrap();
            }
            store.close().await;
            disk.contents(Path::new("/data/internal/group-offsets-1/00000000000000000000.log")).unwrap()
        });
        let mut entries = Vec::new();
        let (whole, at_end) = decode_batches(&bytes, usize::MAX, &mut entries);
        assert_eq!((entries.len(), at_end), (3, true), "{whole} of {} bytes", bytes.len());
        let first = peek_batch_len(&bytes, usize::MAX).unwrap().unwrap();
        // Cut inside the second batch: one batch whole, and more to read.
        for cut in [first + 5, first + 20, first + (whole - first) / 3] {
            let mut entries = Vec::new();
            assert_eq!(decode_batches(&bytes[..cut], usize::MAX, &mut entries), (first, false), "cut at {cut}");
            assert_eq!(entries.len(), 1);
        }
        // Zeros after the batches end the data.
        let mut padded = bytes[..whole].to_vec();
        padded.resize(whole + 4096, 0);
        assert_eq!(decode_batches(&padded, usize::MAX, &mut Vec::new()), (whole, true));
    }

    #[test]
    fn a_compacted_tombstone_does_not_bring_back_another_shards_entry() {
        let found = run(|| async {
            let disk = SimStorage::new();
            // With two shards, the group lives on shard 1 and commits there.
            let group = group_on(1, 2);
            let before = open(&disk, 1, 2).await;
            before.commit(&group, vec![update("orders", 0, 42)]).await.unwrap();
            before.close().await;
            // One shard now: shard 0 coordinates it and finds shard 1's entry.
            let store = open(&disk, 0, 1).await;
            assert_eq!(store.get(&group, "orders", 0).map(|c| c.offset.get()), Some(42));
            store.forget_topic("orders").await.unwrap();
            // Enough other commits that the tombstone is compacted away.
            for round in 0..400u64 {
                store.commit("busy", vec![update("payments", 0, round)]).await.unwrap();
            }
            assert!(store.log.bounds().1.get() > 0, "compacted");
            store.close().await;
            let reopened = open(&disk, 0, 1).await;
            reopened.get(&group, "orders", 0)
        });
        assert_eq!(found, None, "the forgotten offset stayed forgotten");
    }
}
