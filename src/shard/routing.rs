//! Serving requests on a shard: the local work, and routing the parts owned
//! by other shards to them over the mesh.
//!
//! Each public entry point splits a request by owning shard, sends the
//! remote parts off first, does the local part meanwhile, then waits for
//! the remote answers and puts the results back in request order.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_channel::oneshot;
use futures_lite::future;

use crate::protocol::batch::{
    peek_batch_len, recompress_batch, set_log_append_time, BatchError, BatchView, LengthProblem, LOG_OVERHEAD,
};
use crate::protocol::compression::CompressionError;
use crate::protocol::types::{AckLevel, Offset, PartitionId, ShardId, TimestampMs};
use crate::protocol::wire::{
    ErrorCode, FetchPartition, FetchPartitionResult, FetchRequest, ListOffsetsPartition, ListOffsetsResult,
    MetadataResponse, OffsetSpec, PartitionMetadata, ProducePartitionResult, ShardEndpoint, StatsResponse,
    TopicMetadata,
};
use crate::storage::io::Storage;
use crate::storage::{AppendReceipt, CheckedBatch};

use super::topic_config::{TimestampType, TopicCompression, TopicConfig};
use super::{error_code, Counters, FetchOutcome, Partition, ProduceItem, Shard, ShardMessage};

/// Items of one request grouped by owning shard, each with its position in
/// the request.
pub(super) type Routed<T> = BTreeMap<ShardId, Vec<(usize, T)>>;

impl<S: Storage> Shard<S> {
    /// Appends each item's batches to its partition (wherever it lives) and
    /// waits for `acks`. Results come back in item order.
    pub async fn produce(
        self: &Rc<Self>,
        acks: AckLevel,
        timeout_ms: u32,
        items: Vec<ProduceItem>,
    ) -> Vec<ProducePartitionResult> {
        self.scatter_gather(
            items,
            |item| (item.topic.as_str(), item.partition),
            move |shard, items| Box::pin(async move { shard.produce_local(acks, timeout_ms, items).await }),
            move |items, reply| ShardMessage::Produce { acks, timeout_ms, items, reply },
            produce_error,
        )
        .await
    }

    /// Produce for partitions this shard owns.
    pub(super) async fn produce_local(
        &self,
        acks: AckLevel,
        timeout_ms: u32,
        items: Vec<ProduceItem>,
    ) -> Vec<ProducePartitionResult> {
        // The deadline covers waiting for room in the log as well as the acks.
        let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
        let mut appended = Vec::with_capacity(items.len());
        for item in items {
            let outcome = self.append_item(item.data, &item.topic, item.partition).await;
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
        mut data: BytesMut,
        topic: &str,
        partition: PartitionId,
    ) -> Result<(super::Log<S>, AppendReceipt, AppendReceipt), ErrorCode> {
        let log = match self.partition(topic, partition) {
            Some(Partition::Ready(log)) => log,
            Some(Partition::Failed(_)) => return Err(ErrorCode::PARTITION_FAILED),
            None => return Err(ErrorCode::NOT_OWNER),
        };
        // Held (an `Rc`) rather than cloned: one lookup per produce item.
        let metadata = self.metadata();
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

    /// Reads from each listed partition (wherever it lives), long-polling up
    /// to `max_wait_ms` until `min_bytes` are available.
    pub async fn fetch(self: &Rc<Self>, request: FetchRequest) -> FetchOutcome {
        let FetchRequest { max_wait_ms, min_bytes, max_bytes, partitions } = request;
        let count = partitions.len();
        let (routed, unknown) = self.route(partitions, |p| (p.topic.as_str(), p.partition));
        let mut parts: Vec<Option<(FetchPartitionResult, Vec<u8>)>> = vec![None; count];
        for (index, p) in unknown {
            parts[index] = Some((fetch_error(&p, ErrorCode::UNKNOWN_TOPIC_OR_PARTITION), Vec::new()));
        }
        if routed.len() == 1 && routed.contains_key(&self.id) && parts.iter().all(Option::is_none) {
            // The common case (a shard-aware client): no copying around.
            let partitions = routed.into_values().flatten().map(|(_, p)| p).collect();
            return self.fetch_local(FetchRequest { max_wait_ms, min_bytes, max_bytes, partitions }).await;
        }
        // Each owning shard gets an equal share of the byte budget, so the
        // merged response stays within what the client asked for.
        let share = max_bytes / routed.len().max(1) as u32;
        let answers = self
            .scatter(
                routed,
                |p| (p.topic.clone(), p.partition),
                move |shard, partitions| {
                    let request = FetchRequest { max_wait_ms, min_bytes, max_bytes: share, partitions };
                    Box::pin(async move { shard.fetch_local(request).await })
                },
                move |partitions, reply| {
                    let request = FetchRequest { max_wait_ms, min_bytes, max_bytes: share, partitions };
                    ShardMessage::Fetch { request, reply }
                },
            )
            .await;
        for part in answers {
            let mut offset = 0;
            for (position, index) in part.indexes.into_iter().enumerate() {
                let found = part.answer.as_ref().and_then(|outcome| {
                    let result = outcome.results.get(position)?.clone();
                    let data = outcome.payload.get(offset..offset + result.bytes as usize)?.to_vec();
                    offset += result.bytes as usize;
                    Some((result, data))
                });
                let (topic, partition) = &part.keys[position];
                let missing = || {
                    let p = FetchPartition {
                        topic: topic.clone(),
                        partition: *partition,
                        offset: Offset::ZERO,
                        max_bytes: 0,
                    };
                    (fetch_error(&p, ErrorCode::SHUTTING_DOWN), Vec::new())
                };
                parts[index] = Some(found.unwrap_or_else(missing));
            }
        }
        let mut outcome = FetchOutcome::default();
        for (result, data) in parts.into_iter().flatten() {
            outcome.payload.extend_from_slice(&data);
            outcome.results.push(result);
        }
        outcome
    }

    /// Waits, holding nothing, until fetching `request` here would find
    /// something: a listed partition has records at the requested offset
    /// (or the offset is out of range), or `max_wait` passes. Returns at once
    /// if any partition is not this shard's or has failed: the fetch itself
    /// answers those. The server takes a fetch's response budget only after
    /// this, so a consumer's long-poll holds no budget its connection's
    /// producers need.
    pub async fn wait_fetchable(&self, request: &FetchRequest, max_wait: Duration) {
        let mut waits: Vec<Pin<Box<dyn Future<Output = ()>>>> = Vec::with_capacity(request.partitions.len() + 1);
        for p in &request.partitions {
            let Some(Partition::Ready(log)) = self.partition(&p.topic, p.partition) else { return };
            let (high_watermark, _) = log.bounds();
            if log.poisoned().is_some() || p.offset != high_watermark {
                return;
            }
            let offset = p.offset;
            waits.push(Box::pin(async move { log.wait_visible_past(offset).await }));
        }
        first_of(waits, max_wait).await;
    }

    /// Fetch for partitions this shard owns.
    pub(super) async fn fetch_local(&self, request: FetchRequest) -> FetchOutcome {
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
            let log = match self.partition(&p.topic, p.partition) {
                Some(Partition::Ready(log)) => log,
                Some(Partition::Failed(_)) => {
                    outcome.results.push(fetch_error(p, ErrorCode::PARTITION_FAILED));
                    continue;
                }
                None => {
                    outcome.results.push(fetch_error(p, ErrorCode::NOT_OWNER));
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
                let before = outcome.payload.len();
                match log.read(p.offset, limit.max(1), &mut outcome.payload).await {
                    Ok(read) => {
                        result.bytes = read.bytes as u32;
                        result.high_watermark = read.visible_end;
                        result.log_start = read.log_start;
                        left = left.saturating_sub(read.bytes);
                    }
                    Err(error) => {
                        // A read can fail part-way; what it appended must not
                        // be taken for the next partition's data.
                        outcome.payload.truncate(before);
                        result.error = error_code(&error);
                    }
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
            if let (Some(Partition::Ready(log)), true) = (self.partition(&p.topic, p.partition), result.error.is_ok()) {
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

    fn count_fetched(&self, payload: &[u8]) {
        Counters::add(&self.counters.bytes_out, payload.len() as u64);
        let mut rest = payload;
        while let Ok(Some(len)) = peek_batch_len(rest, usize::MAX) {
            if let Ok(view) = BatchView::parse_header(rest, usize::MAX) {
                Counters::add(&self.counters.events_out, view.last_offset_delta() as u64 + 1);
            }
            rest = rest.get(len.max(LOG_OVERHEAD)..).unwrap_or_default();
        }
    }

    /// Resolves offsets (earliest, latest, by time) of partitions anywhere.
    pub async fn list_offsets(self: &Rc<Self>, partitions: Vec<ListOffsetsPartition>) -> Vec<ListOffsetsResult> {
        self.scatter_gather(
            partitions,
            |p| (p.topic.as_str(), p.partition),
            |shard, partitions| Box::pin(async move { shard.list_offsets_local(partitions).await }),
            |partitions, reply| ShardMessage::ListOffsets { partitions, reply },
            |topic, partition, error| ListOffsetsResult { topic: topic.to_string(), partition, error, offset: None },
        )
        .await
    }

    pub(super) async fn list_offsets_local(&self, partitions: Vec<ListOffsetsPartition>) -> Vec<ListOffsetsResult> {
        let mut results = Vec::with_capacity(partitions.len());
        for p in partitions {
            let log = match self.partition(&p.topic, p.partition) {
                Some(Partition::Ready(log)) => log,
                Some(Partition::Failed(_)) => {
                    results.push(list_offsets_error(&p, ErrorCode::PARTITION_FAILED));
                    continue;
                }
                None => {
                    results.push(list_offsets_error(&p, ErrorCode::NOT_OWNER));
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

    /// The metadata response, from this shard's copy.
    pub fn metadata_response(&self, topics: Option<Vec<String>>) -> MetadataResponse {
        let metadata = self.metadata();
        let shards = (0..self.shard_count)
            .map(|shard| ShardEndpoint {
                shard: ShardId(shard as u16),
                port: self.shard_ports.get(shard).copied().unwrap_or(0),
            })
            .collect();
        let describe = |name: &str| match metadata.topics.get(name) {
            Some(placement) => TopicMetadata {
                name: name.to_string(),
                error: ErrorCode::NONE,
                partitions: placement
                    .owners
                    .iter()
                    .enumerate()
                    .map(|(partition, shard)| PartitionMetadata {
                        partition: PartitionId(partition as u32),
                        shard: *shard,
                    })
                    .collect(),
            },
            None => TopicMetadata {
                name: name.to_string(),
                error: ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
                partitions: Vec::new(),
            },
        };
        let topics = match topics {
            Some(names) => names.iter().map(|name| describe(name)).collect(),
            None => metadata.topics.keys().map(|name| describe(name)).collect(),
        };
        MetadataResponse { shards, topics }
    }

    /// Counters of every shard.
    pub async fn stats(self: &Rc<Self>) -> StatsResponse {
        let mut shards = Vec::with_capacity(self.shard_count);
        for peer in (0..self.shard_count).map(|peer| ShardId(peer as u16)) {
            if peer == self.id {
                shards.push(self.local_stats());
                continue;
            }
            let (reply, answer) = oneshot::channel();
            if self.send_to(peer, ShardMessage::Stats { reply }).await.is_some() {
                if let Ok(stats) = answer.await {
                    shards.push(stats);
                }
            }
        }
        StatsResponse { shards }
    }

    pub(super) fn local_stats(&self) -> crate::protocol::wire::ShardStats {
        let mut stats = self.counters.snapshot(self.id);
        let busy = self.counters.busy();
        stats.counters.push(("busy_us".to_string(), u64::try_from(busy.as_micros()).unwrap_or(u64::MAX)));
        for (topic, partitions) in self.partitions.borrow().iter() {
            for (partition, state) in partitions {
                if let Partition::Failed(error) = state {
                    stats.failed_partitions.push(format!("{topic}-{partition}: {error}"));
                }
            }
        }
        stats
    }

    /// Runs a request whose items each name a partition on the shards that
    /// own them (see [`Shard::scatter`]) and returns one result per item, in
    /// request order: `failed` makes the result of an item of an unknown
    /// partition (UNKNOWN_TOPIC_OR_PARTITION) or of a shard that is gone
    /// (SHUTTING_DOWN).
    pub(super) async fn scatter_gather<T, R: Clone + 'static>(
        self: &Rc<Self>,
        items: Vec<T>,
        key: impl Fn(&T) -> (&str, PartitionId),
        local: impl FnOnce(Rc<Shard<S>>, Vec<T>) -> Pin<Box<dyn Future<Output = Vec<R>>>>,
        message: impl Fn(Vec<T>, oneshot::Sender<Vec<R>>) -> ShardMessage,
        failed: impl Fn(&str, PartitionId, ErrorCode) -> R,
    ) -> Vec<R> {
        let mut results: Vec<Option<R>> = vec![None; items.len()];
        let (routed, unknown) = self.route(items, &key);
        for (index, item) in unknown {
            let (topic, partition) = key(&item);
            results[index] = Some(failed(topic, partition, ErrorCode::UNKNOWN_TOPIC_OR_PARTITION));
        }
        let owned_key = |item: &T| {
            let (topic, partition) = key(item);
            (topic.to_string(), partition)
        };
        for part in self.scatter(routed, owned_key, local, message).await {
            for (position, index) in part.indexes.into_iter().enumerate() {
                let answer = part.answer.as_ref().and_then(|answers| answers.get(position).cloned());
                let (topic, partition) = &part.keys[position];
                results[index] = Some(answer.unwrap_or_else(|| failed(topic, *partition, ErrorCode::SHUTTING_DOWN)));
            }
        }
        results.into_iter().map(|result| result.expect("every item got a result")).collect()
    }

    /// Runs one part of a request per owning shard, all at once: this
    /// shard's part here, the others' by message. Returns each part with its
    /// items' positions in the request, their (topic, partition), and the
    /// answer (`None` if that shard is gone).
    pub(super) async fn scatter<T, A: 'static>(
        self: &Rc<Self>,
        routed: Routed<T>,
        key: impl Fn(&T) -> (String, PartitionId),
        local: impl FnOnce(Rc<Shard<S>>, Vec<T>) -> Pin<Box<dyn Future<Output = A>>>,
        message: impl Fn(Vec<T>, oneshot::Sender<A>) -> ShardMessage,
    ) -> Vec<Part<A>> {
        let mut parts = Vec::with_capacity(routed.len());
        let mut answers: Vec<Pin<Box<dyn Future<Output = Option<A>>>>> = Vec::with_capacity(routed.len());
        let mut local = Some(local);
        for (shard, items) in routed {
            let (indexes, items): (Vec<usize>, Vec<T>) = items.into_iter().unzip();
            parts.push(Part { indexes, keys: items.iter().map(&key).collect(), answer: None });
            if shard == self.id {
                let run = local.take().expect("one part per shard")(Rc::clone(self), items);
                answers.push(Box::pin(async move { Some(run.await) }));
            } else {
                let (reply, answer) = oneshot::channel();
                let (this, request) = (Rc::clone(self), message(items, reply));
                answers.push(Box::pin(async move {
                    this.send_to(shard, request).await?;
                    answer.await.ok()
                }));
            }
        }
        for (part, answer) in parts.iter_mut().zip(join_all(answers).await) {
            part.answer = answer;
        }
        parts
    }

    /// Splits items by owning shard; items of unknown topics or partitions
    /// come back separately.
    pub(super) fn route<T>(
        &self,
        items: Vec<T>,
        key: impl Fn(&T) -> (&str, PartitionId),
    ) -> (Routed<T>, Vec<(usize, T)>) {
        let metadata = self.metadata();
        let mut routed: Routed<T> = BTreeMap::new();
        let mut unknown = Vec::new();
        for (index, item) in items.into_iter().enumerate() {
            let (topic, partition) = key(&item);
            match metadata.owner(topic, partition) {
                Some(shard) => routed.entry(shard).or_default().push((index, item)),
                None => unknown.push((index, item)),
            }
        }
        (routed, unknown)
    }
}

/// One shard's share of a request, see [`Shard::scatter`].
pub(super) struct Part<A> {
    pub indexes: Vec<usize>,
    pub keys: Vec<(String, PartitionId)>,
    pub answer: Option<A>,
}

/// Polls every future until all have completed; outputs in input order.
async fn join_all<T>(mut futures: Vec<Pin<Box<dyn Future<Output = T>>>>) -> Vec<T> {
    let mut outputs: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|output| output.expect("every future completed")).collect()
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

fn produce_error(topic: &str, partition: PartitionId, error: ErrorCode) -> ProducePartitionResult {
    ProducePartitionResult {
        topic: topic.to_string(),
        partition,
        error,
        base_offset: Offset::ZERO,
        next_offset: Offset::ZERO,
    }
}

fn fetch_error(p: &FetchPartition, error: ErrorCode) -> FetchPartitionResult {
    FetchPartitionResult {
        topic: p.topic.clone(),
        partition: p.partition,
        error,
        high_watermark: Offset::ZERO,
        log_start: Offset::ZERO,
        bytes: 0,
    }
}

fn list_offsets_error(p: &ListOffsetsPartition, error: ErrorCode) -> ListOffsetsResult {
    ListOffsetsResult { topic: p.topic.clone(), partition: p.partition, error, offset: None }
}
