//! The partition table: the logs a shard owns, and the work done on them
//! (appends, reads, offsets, record deletion). It knows nothing of other
//! shards: requests reach it already routed (see `router.rs`), with the
//! metadata they were routed by.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::future;
use glommio::TaskQueueHandle;

use crate::protocol::batch::{
    peek_batch_len, recompress_batch, set_log_append_time, BatchError, BatchView, LengthProblem, LOG_OVERHEAD,
};
use crate::protocol::chunks::Chunks;
use crate::protocol::compression::CompressionError;
use crate::protocol::types::{AckLevel, Offset, PartitionId, ShardId, TimestampMs};
use crate::protocol::wire::{
    DeleteRecordsPartition, DeleteRecordsResult, ErrorCode, FetchPartition, FetchPartitionResult, FetchRequest,
    ListOffsetsPartition, ListOffsetsResult, OffsetSpec, ProducePartitionResult,
};
use crate::storage::io::Storage;
use crate::storage::{
    AppendReceipt, CheckedBatch, FlushObserver, LogConfig, LogLimits, OpenOptions, PartitionLog, StorageError,
};

use super::metadata::ClusterMetadata;
use super::topic_config::{TimestampType, TopicCompression, TopicConfig};
use super::{error_code, partition_dir, Counters, FetchOutcome, Log, ProduceItem};

/// One partition owned by this shard.
#[derive(Debug, Clone)]
pub(super) enum Partition<S: Storage> {
    Ready(Log<S>),
    /// Quarantined: recovery refused it (corruption) or it failed to open.
    /// Other partitions keep serving.
    Failed(Rc<StorageError>),
}

/// What a shard needs to open and run its partitions.
#[derive(Debug)]
pub(super) struct TableConfig<S: Storage> {
    pub shard: ShardId,
    pub storage: S,
    pub data_dir: PathBuf,
    pub log_config: LogConfig,
    /// Most bytes a compressed batch may inflate to when it is checked.
    pub inflated_bytes_max: usize,
    pub flush_queue: Option<TaskQueueHandle>,
    pub counters: Rc<Counters>,
}

/// Partitions by topic and number.
type PartitionMap<S> = HashMap<Rc<str>, BTreeMap<u32, Partition<S>>>;

/// The partitions a shard owns, by topic and partition number.
#[derive(Debug)]
pub(super) struct PartitionTable<S: Storage> {
    shard: ShardId,
    storage: S,
    data_dir: PathBuf,
    log_config: LogConfig,
    inflated_bytes_max: usize,
    flush_queue: Option<TaskQueueHandle>,
    counters: Rc<Counters>,
    partitions: RefCell<PartitionMap<S>>,
}

impl<S: Storage> PartitionTable<S> {
    pub fn new(config: TableConfig<S>) -> PartitionTable<S> {
        PartitionTable {
            shard: config.shard,
            storage: config.storage,
            data_dir: config.data_dir,
            log_config: config.log_config,
            inflated_bytes_max: config.inflated_bytes_max,
            flush_queue: config.flush_queue,
            counters: config.counters,
            partitions: RefCell::new(HashMap::new()),
        }
    }

    pub fn get(&self, topic: &str, partition: PartitionId) -> Option<Partition<S>> {
        self.partitions.borrow().get(topic)?.get(&partition.0).cloned()
    }

    /// The open log of a partition, or the error a request for it gets.
    fn ready(&self, topic: &str, partition: PartitionId) -> Result<Log<S>, ErrorCode> {
        match self.get(topic, partition) {
            Some(Partition::Ready(log)) => Ok(log),
            Some(Partition::Failed(_)) => Err(ErrorCode::PARTITION_FAILED),
            None => Err(ErrorCode::NOT_OWNER),
        }
    }

    /// Every open log (for retention).
    pub fn ready_logs(&self) -> Vec<Log<S>> {
        self.each(|_, _, partition| match partition {
            Partition::Ready(log) => Some(log.clone()),
            Partition::Failed(_) => None,
        })
    }

    /// `f` of every partition, by topic and number, where it gives something.
    pub fn each<T>(&self, mut f: impl FnMut(&str, u32, &Partition<S>) -> Option<T>) -> Vec<T> {
        let partitions = self.partitions.borrow();
        let mut out = Vec::new();
        for (topic, numbered) in partitions.iter() {
            for (number, partition) in numbered {
                out.extend(f(topic, *number, partition));
            }
        }
        out
    }

    /// Gives the open logs of `topic` new limits (its configs changed).
    pub fn set_limits(&self, topic: &str, limits: LogLimits) {
        for state in self.partitions.borrow().get(topic).into_iter().flat_map(BTreeMap::values) {
            if let Partition::Ready(log) = state {
                log.set_limits(limits);
            }
        }
    }

    /// Opens partition `partition` of `topic` unless it is open already;
    /// one that fails to open is kept, quarantined.
    pub async fn open(&self, topic: &str, partition: u32, limits: LogLimits) {
        let open = self.partitions.borrow().get(topic).is_some_and(|map| map.contains_key(&partition));
        if open {
            return;
        }
        let dir = partition_dir(&self.data_dir, topic, partition);
        let counters = Rc::clone(&self.counters);
        let options = OpenOptions {
            flush_queue: self.flush_queue,
            flush_observer: Some(FlushObserver(Rc::new(move |stage, took| counters.record_flush_stage(stage, took)))),
            ..OpenOptions::default()
        };
        let config = self.log_config.clone().with_limits(limits);
        let opened = match PartitionLog::open(self.storage.clone(), &dir, config, options).await {
            Ok(log) => Partition::Ready(log),
            Err(error) => {
                tracing::error!(shard = %self.shard, topic, partition, %error, "partition quarantined; other partitions keep serving");
                Partition::Failed(Rc::new(error))
            }
        };
        self.partitions.borrow_mut().entry(Rc::from(topic)).or_default().insert(partition, opened);
    }

    /// Closes the logs of a deleted topic and removes their files; returns
    /// whether any were here.
    pub async fn remove_topic(&self, topic: &str) -> bool {
        let removed = self.partitions.borrow_mut().remove(topic);
        let held = removed.is_some();
        for (partition, state) in removed.into_iter().flatten() {
            if let Partition::Ready(log) = state {
                let _ = log.close().await;
            }
            let dir = partition_dir(&self.data_dir, topic, partition);
            if let Err(error) = self.storage.remove_dir_all(&dir).await {
                tracing::warn!(topic, partition, %error, "could not remove the partition directory");
            }
        }
        held
    }

    /// Flushes and closes every log.
    pub async fn close(&self) {
        let partitions = std::mem::take(&mut *self.partitions.borrow_mut());
        for partition in partitions.into_values().flat_map(BTreeMap::into_values) {
            if let Partition::Ready(log) = partition {
                let dir = log.dir().to_path_buf();
                if let Err(error) = log.close().await {
                    tracing::error!(dir = %dir.display(), %error, "closing partition");
                }
            }
        }
    }

    /// Produce for partitions this shard owns.
    pub async fn produce(
        &self,
        metadata: &ClusterMetadata,
        acks: AckLevel,
        timeout_ms: u32,
        items: Vec<ProduceItem>,
    ) -> Vec<ProducePartitionResult> {
        // The deadline covers waiting for room in the log as well as the acks.
        let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
        let mut appended = Vec::with_capacity(items.len());
        for item in items {
            let outcome = self.append_item(metadata, item.data, &item.topic, item.partition).await;
            appended.push((item.topic, item.partition, outcome));
        }
        let mut results = Vec::with_capacity(appended.len());
        for (topic, partition, outcome) in appended {
            let result = match outcome {
                Err(code) => produce_error(&topic, partition, code),
                Ok((log, first, last)) => {
                    let code = wait_for_ack(&log, last, acks, deadline).await;
                    ProducePartitionResult {
                        topic,
                        partition,
                        error: code,
                        base_offset: first.base,
                        next_offset: last.next,
                    }
                }
            };
            if !result.error.is_ok() {
                Counters::add(&self.counters.errors, 1);
            }
            results.push(result);
        }
        results
    }

    /// Appends the batches of one produce item (validating all of them
    /// before appending any, so an item is taken whole or not at all).
    async fn append_item(
        &self,
        metadata: &ClusterMetadata,
        mut data: BytesMut,
        topic: &str,
        partition: PartitionId,
    ) -> Result<(Log<S>, AppendReceipt, AppendReceipt), ErrorCode> {
        let log = self.ready(topic, partition)?;
        let no_config = TopicConfig::default();
        let config = metadata.topics.get(topic).map_or(&no_config, |placement| &placement.config);
        let batch_bytes_max = config.max_batch_bytes(self.log_config.batch_bytes_max);
        let mut batches = Vec::new();
        while !data.is_empty() {
            let len = match peek_batch_len(&data, batch_bytes_max) {
                Ok(Some(len)) if len <= data.len() => len,
                Err(BatchError::Length(LengthProblem::TooLarge { .. })) => return Err(ErrorCode::BATCH_TOO_LARGE),
                Ok(_) | Err(_) => return Err(ErrorCode::INVALID_BATCH),
            };
            batches.push(data.split_to(len));
        }
        if batches.is_empty() {
            return Err(ErrorCode::INVALID_BATCH);
        }
        // Every batch is checked (CRC included, once) before any is
        // appended, then made what the topic's configs say.
        let mut checked = Vec::with_capacity(batches.len());
        for batch in batches {
            let batch = CheckedBatch::check(batch, batch_bytes_max).map_err(|error| error_code(&error))?;
            checked.push(self.apply_topic_config(batch, config, batch_bytes_max).await?);
        }
        let (mut first, mut last) = (None, None);
        for batch in checked {
            let len = batch.bytes().len() as u64;
            let receipt = log.append_checked(batch).await.map_err(|error| error_code(&error))?;
            Counters::add(&self.counters.bytes_in, len);
            Counters::add(&self.counters.events_in, receipt.next.distance_from(receipt.base));
            first.get_or_insert(receipt);
            last = Some(receipt);
        }
        Ok((log, first.expect("one batch at least"), last.expect("one batch at least")))
    }

    /// A checked batch as the topic keeps it. A compressed batch is stored
    /// as produced, but first inflated once (bounded by the frame limit) to
    /// check it holds its records; a topic with a fixed codec gets it
    /// recompressed instead, which checks the same; a topic with
    /// log-append time gets it stamped.
    async fn apply_topic_config(
        &self,
        batch: CheckedBatch,
        config: &TopicConfig,
        batch_bytes_max: usize,
    ) -> Result<CheckedBatch, ErrorCode> {
        let recompress_to = config.compression.and_then(TopicCompression::codec);
        let append_time = config.timestamp_type == Some(TimestampType::LogAppendTime);
        let view = BatchView::parse_header(batch.bytes(), batch_bytes_max).map_err(|_| ErrorCode::INVALID_BATCH)?;
        let rebuilt = match recompress_to {
            Some(codec) if codec != view.compression() => {
                recompress_batch(&view, codec, self.inflated_bytes_max).map(|stored| Some(BytesMut::from(&stored[..])))
            }
            _ => view.verify_compressed_records(self.inflated_bytes_max).map(|()| None),
        };
        let mut bytes = match rebuilt {
            Ok(Some(recompressed)) => {
                // Compressing is the costliest thing a shard does per batch.
                glommio::yield_if_needed().await;
                recompressed
            }
            Ok(None) if append_time => batch.into_bytes(),
            Ok(None) => return Ok(batch),
            Err(BatchError::Inflate(CompressionError::TooLarge { .. })) => return Err(ErrorCode::BATCH_TOO_LARGE),
            Err(_) => return Err(ErrorCode::INVALID_BATCH),
        };
        if append_time {
            set_log_append_time(&mut bytes, TimestampMs::now().0);
        }
        CheckedBatch::rebuilt(bytes, batch_bytes_max).map_err(|error| error_code(&error))
    }

    /// Waits, holding nothing, until fetching `request` here would find
    /// `min_bytes` (at least one byte) in the listed partitions, an offset
    /// is out of range, or `max_wait` passes. This is a fetch's only wait:
    /// it returns `true` when every partition is this shard's, and the
    /// fetch then reads at once (`max_wait_ms` 0). Otherwise it returns
    /// `false` at once and the owners' tables do the waiting. The server
    /// takes a fetch's response budget only after this, so a consumer's
    /// long-poll holds no budget its connection's producers need.
    pub async fn wait_fetchable(&self, request: &FetchRequest, max_wait: Duration) -> bool {
        let mut logs = Vec::with_capacity(request.partitions.len());
        for p in &request.partitions {
            let Some(Partition::Ready(log)) = self.get(&p.topic, p.partition) else { return false };
            logs.push(log);
        }
        let deadline = Instant::now() + max_wait;
        let wanted = request.min_bytes.max(1) as usize;
        loop {
            // The usual case (data there) allocates nothing more: the waits
            // are built only when the fetch must park.
            let mut available = 0usize;
            for (p, log) in request.partitions.iter().zip(&logs) {
                let (high_watermark, log_start) = log.bounds();
                if log.poisoned().is_some() || p.offset > high_watermark || p.offset < log_start {
                    return true; // the fetch answers with the error at once
                }
                available = available.saturating_add(log.visible_bytes_from(p.offset).min(p.max_bytes as usize));
            }
            let now = Instant::now();
            if available >= wanted || now >= deadline {
                return true;
            }
            let mut waits: Vec<Pin<Box<dyn Future<Output = ()>>>> = Vec::with_capacity(logs.len() + 1);
            for log in &logs {
                let (high_watermark, _) = log.bounds();
                let log = log.clone();
                waits.push(Box::pin(async move { log.wait_visible_past(high_watermark).await }));
            }
            first_of(waits, deadline - now).await;
        }
    }

    /// Fetch for partitions this shard owns.
    pub async fn fetch(&self, request: FetchRequest) -> FetchOutcome {
        let deadline = Instant::now() + Duration::from_millis(u64::from(request.max_wait_ms));
        loop {
            let outcome = self.read_once(&request).await;
            let total: usize = outcome.results.iter().map(|result| result.bytes as usize).sum();
            let failed = outcome.results.iter().any(|result| !result.error.is_ok());
            let now = Instant::now();
            if total >= request.min_bytes.max(1) as usize || failed || now >= deadline {
                self.count_fetched(&outcome.payload);
                return outcome;
            }
            self.wait_for_data(&request.partitions, &outcome.results, deadline - now).await;
            // Never monopolise the shard, whatever woke us.
            glommio::yield_if_needed().await;
        }
    }

    async fn read_once(&self, request: &FetchRequest) -> FetchOutcome {
        let mut outcome = FetchOutcome::default();
        let mut left = request.max_bytes as usize;
        for p in &request.partitions {
            let log = match self.ready(&p.topic, p.partition) {
                Ok(log) => log,
                Err(code) => {
                    outcome.results.push(fetch_error(p, code));
                    continue;
                }
            };
            let (high_watermark, log_start) = log.bounds();
            let limit = (p.max_bytes as usize).min(left);
            let mut result = FetchPartitionResult {
                topic: p.topic.clone(),
                partition: p.partition,
                error: ErrorCode::NONE,
                high_watermark,
                log_start,
                bytes: 0,
            };
            // Out of budget: report positions without data (the first
            // partition always gets at least one whole batch).
            if limit > 0 || outcome.payload.is_empty() {
                match log.read(p.offset, limit.max(1), &mut outcome.payload).await {
                    Ok(read) => {
                        result.bytes = read.bytes as u32;
                        result.high_watermark = read.visible_end;
                        result.log_start = read.log_start;
                        left = left.saturating_sub(read.bytes);
                    }
                    // A failed read put nothing in the payload.
                    Err(error) => result.error = error_code(&error),
                }
            }
            outcome.results.push(result);
        }
        outcome
    }

    /// Parks until any listed partition has data past the requested offset,
    /// or `wait` passes.
    async fn wait_for_data(&self, partitions: &[FetchPartition], results: &[FetchPartitionResult], wait: Duration) {
        let mut waits: Vec<Pin<Box<dyn Future<Output = ()>>>> = Vec::with_capacity(partitions.len() + 1);
        for (p, result) in partitions.iter().zip(results) {
            if let (Some(Partition::Ready(log)), true) = (self.get(&p.topic, p.partition), result.error.is_ok()) {
                // Wait for data beyond what was just read, not merely beyond
                // the requested offset (that may be satisfied already), and
                // not on a failed log (it would return at once, every time).
                if log.poisoned().is_some() {
                    continue;
                }
                let offset = p.offset.max(result.high_watermark);
                waits.push(Box::pin(async move { log.wait_visible_past(offset).await }));
            }
        }
        first_of(waits, wait).await;
    }

    fn count_fetched(&self, payload: &Chunks) {
        Counters::add(&self.counters.bytes_out, payload.len() as u64);
        // Each piece a log read returns holds whole batches.
        for piece in payload.pieces() {
            let mut rest = &piece[..];
            while let Ok(Some(len)) = peek_batch_len(rest, usize::MAX) {
                if let Ok(view) = BatchView::parse_header(rest, usize::MAX) {
                    Counters::add(&self.counters.events_out, view.last_offset_delta() as u64 + 1);
                }
                rest = rest.get(len.max(LOG_OVERHEAD)..).unwrap_or_default();
            }
        }
    }

    pub async fn list_offsets(&self, partitions: Vec<ListOffsetsPartition>) -> Vec<ListOffsetsResult> {
        let mut results = Vec::with_capacity(partitions.len());
        for p in partitions {
            let log = match self.ready(&p.topic, p.partition) {
                Ok(log) => log,
                Err(code) => {
                    results.push(list_offsets_error(&p, code));
                    continue;
                }
            };
            let (end, start) = log.bounds();
            let offset = match p.spec {
                OffsetSpec::Earliest => Ok(Some(start)),
                OffsetSpec::Latest => Ok(Some(end)),
                OffsetSpec::Timestamp(time) => log.offset_for_time(TimestampMs(time)).await,
            };
            results.push(match offset {
                Ok(offset) => {
                    ListOffsetsResult { topic: p.topic, partition: p.partition, error: ErrorCode::NONE, offset }
                }
                Err(error) => list_offsets_error(&p, error_code(&error)),
            });
        }
        results
    }

    pub async fn delete_records(&self, partitions: Vec<DeleteRecordsPartition>) -> Vec<DeleteRecordsResult> {
        let mut results = Vec::with_capacity(partitions.len());
        for p in partitions {
            let log = match self.ready(&p.topic, p.partition) {
                Ok(log) => log,
                Err(code) => {
                    results.push(delete_records_error(&p.topic, p.partition, code));
                    continue;
                }
            };
            let before = p.before.unwrap_or_else(|| log.bounds().0);
            let result = match log.delete_records_before(before).await {
                Ok(log_start) => {
                    tracing::info!(topic = %p.topic, partition = %p.partition, %log_start, "deleted records");
                    DeleteRecordsResult { topic: p.topic, partition: p.partition, error: ErrorCode::NONE, log_start }
                }
                Err(error) => delete_records_error(&p.topic, p.partition, error_code(&error)),
            };
            results.push(result);
        }
        results
    }
}

/// Waits for one partition's ack level, bounded by the request deadline.
async fn wait_for_ack<S: Storage>(
    log: &super::Log<S>,
    last: AppendReceipt,
    acks: AckLevel,
    deadline: Instant,
) -> ErrorCode {
    let left = deadline.saturating_duration_since(Instant::now());
    match glommio::timer::timeout(left, async { Ok(log.wait(last, acks).await) }).await {
        Ok(Ok(())) => ErrorCode::NONE,
        Ok(Err(error)) => error_code(&error),
        Err(_) => ErrorCode::TIMEOUT,
    }
}

/// Waits until any of `waits` is done, or `max_wait` passes (callers leave
/// room in `waits` for the timer).
async fn first_of(mut waits: Vec<Pin<Box<dyn Future<Output = ()> + '_>>>, max_wait: Duration) {
    waits.push(Box::pin(glommio::timer::sleep(max_wait)));
    future::poll_fn(|cx| {
        if waits.iter_mut().any(|wait| wait.as_mut().poll(cx).is_ready()) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}

pub(super) fn produce_error(topic: &str, partition: PartitionId, error: ErrorCode) -> ProducePartitionResult {
    ProducePartitionResult {
        topic: topic.to_string(),
        partition,
        error,
        base_offset: Offset::ZERO,
        next_offset: Offset::ZERO,
    }
}

pub(super) fn fetch_error(p: &FetchPartition, error: ErrorCode) -> FetchPartitionResult {
    FetchPartitionResult {
        topic: p.topic.clone(),
        partition: p.partition,
        error,
        high_watermark: Offset::ZERO,
        log_start: Offset::ZERO,
        bytes: 0,
    }
}

pub(super) fn list_offsets_error(p: &ListOffsetsPartition, error: ErrorCode) -> ListOffsetsResult {
    ListOffsetsResult { topic: p.topic.clone(), partition: p.partition, error, offset: None }
}

pub(super) fn delete_records_error(topic: &str, partition: PartitionId, error: ErrorCode) -> DeleteRecordsResult {
    DeleteRecordsResult { topic: topic.to_string(), partition, error, log_start: Offset::ZERO }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::batch::{BatchBuilder, Record};
    use crate::storage::sim::SimStorage;

    fn batch(value_bytes: usize) -> BytesMut {
        let value = vec![b'v'; value_bytes];
        let mut out = Vec::new();
        let mut builder = BatchBuilder::new(&mut out, 1_764_000_000_000);
        builder.push(&Record { timestamp_ms: 1_764_000_000_000, key: None, value: Some(&value), headers: &[] });
        BytesMut::from(builder.finish())
    }

    fn request(min_bytes: u32) -> FetchRequest {
        let partition = FetchPartition {
            topic: "orders".into(),
            partition: PartitionId(0),
            offset: Offset::ZERO,
            max_bytes: 1 << 20,
        };
        FetchRequest { max_wait_ms: 0, min_bytes, max_bytes: 1 << 20, partitions: vec![partition] }
    }

    /// A table with one open partition, orders/0, on the simulated disk.
    async fn one_partition() -> Rc<PartitionTable<SimStorage>> {
        let table = Rc::new(PartitionTable::new(TableConfig {
            shard: ShardId(0),
            storage: SimStorage::new(),
            data_dir: PathBuf::from("/data"),
            log_config: LogConfig { preallocate: false, ..LogConfig::default() },
            inflated_bytes_max: 1 << 20,
            flush_queue: None,
            counters: Rc::new(Counters::new()),
        }));
        table.open("orders", 0, LogConfig::default().limits()).await;
        table
    }

    /// A fetch of cached data shares the cache's bytes: two fetches of the
    /// same batches get pieces at the same addresses, so neither copied.
    #[test]
    fn a_fetch_shares_the_cached_bytes() {
        let (first, second, len) = crate::runtime::test_executor().run(async {
            let table = one_partition().await;
            let Some(Partition::Ready(log)) = table.get("orders", PartitionId(0)) else { panic!("opened") };
            for _ in 0..3 {
                log.append_and_wait(batch(1000), AckLevel::Durable).await.unwrap();
            }
            let addresses = |outcome: FetchOutcome| -> Vec<usize> {
                outcome.payload.pieces().map(|piece| piece.as_ptr() as usize).collect()
            };
            let first = table.fetch(request(1)).await;
            let len = first.payload.len();
            (addresses(first), addresses(table.fetch(request(1)).await), len)
        });
        assert_eq!(first.len(), 3, "one piece per cached batch");
        assert_eq!(first, second, "a fetch copied the cached batches");
        assert!(len >= 3000);
    }

    /// A long-poll at the tail waits, once, until `min_bytes` are durable,
    /// and the fetch that follows reads them at once.
    #[test]
    fn a_fetch_waits_once_for_its_min_bytes() {
        let (seen_when_woken, fetched) = crate::runtime::test_executor().run(async {
            let table = one_partition().await;
            let Some(Partition::Ready(log)) = table.get("orders", PartitionId(0)) else { panic!("opened") };
            let waiter = {
                let (table, log) = (Rc::clone(&table), log.clone());
                glommio::spawn_local(async move {
                    let here = table.wait_fetchable(&request(3000), Duration::from_secs(30)).await;
                    // Durable records when it woke: one per 1000-byte batch.
                    (here, log.bounds().0.get())
                })
            };
            for _ in 0..5 {
                log.append_and_wait(batch(1000), AckLevel::Durable).await.unwrap();
                futures_lite::future::yield_now().await;
            }
            let (here, seen) = waiter.await;
            assert!(here, "every partition is this table's");
            let fetched = table.fetch(request(3000)).await;
            (seen, fetched.payload.len())
        });
        // Two batches hold fewer than 3000 bytes, three more.
        assert!(seen_when_woken >= 3, "woke with {seen_when_woken} batches durable, fewer than min_bytes");
        assert!(fetched >= 3000, "the fetch after the wait read {fetched} bytes");
    }
}
