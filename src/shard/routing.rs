//! The shard's request entry points: each routes its request through the
//! router to the partition tables of the owning shards (this one's runs
//! in place), and answers in request order. Also the metadata response and
//! the stats of every shard.

use std::rc::Rc;

use futures_channel::oneshot;

use crate::protocol::types::{AckLevel, Offset, PartitionId, ShardId};
use crate::protocol::wire::{
    ErrorCode, FetchPartition, FetchPartitionResult, FetchRequest, ListOffsetsPartition, ListOffsetsResult,
    MetadataResponse, OffsetSpec, PartitionMetadata, ProducePartitionResult, ShardEndpoint, StatsResponse,
    TopicMetadata,
};
use crate::storage::io::Storage;

use super::partitions::{fetch_error, list_offsets_error, produce_error, Partition};
use super::router::route;
use super::{FetchOutcome, ProduceItem, Shard, ShardMessage};

/// Where one partition's fetch answer is: (part, position in it), or its
/// result already (an error).
type Slot = Result<(usize, usize), FetchPartitionResult>;

impl<S: Storage> Shard<S> {
    /// Appends each item's batches to its partition (wherever it lives) and
    /// waits for `acks`. Results come back in item order.
    pub async fn produce(
        self: &Rc<Self>,
        acks: AckLevel,
        timeout_ms: u32,
        items: Vec<ProduceItem>,
    ) -> Vec<ProducePartitionResult> {
        let metadata = self.metadata();
        let shard = Rc::clone(self);
        let local = move |items| -> std::pin::Pin<Box<dyn std::future::Future<Output = _>>> {
            Box::pin(async move { shard.partitions.produce(&shard.metadata(), acks, timeout_ms, items).await })
        };
        self.router
            .scatter_gather(
                &metadata,
                items,
                |item| (item.topic.as_str(), item.partition),
                local,
                move |items, reply| ShardMessage::Produce { acks, timeout_ms, items, reply },
                produce_error,
            )
            .await
    }

    /// Reads from each listed partition (wherever it lives), long-polling up
    /// to `max_wait_ms` until `min_bytes` are available.
    pub async fn fetch(self: &Rc<Self>, request: FetchRequest) -> FetchOutcome {
        let FetchRequest { max_wait_ms, min_bytes, max_bytes, partitions } = request;
        let count = partitions.len();
        let (routed, unknown) = route(&self.metadata(), partitions, |p| (p.topic.as_str(), p.partition));
        if unknown.is_empty() && routed.len() == 1 {
            // One owner (a shard-aware client's fetch, or a forwarded one
            // for a single shard): its answer is the answer, moved as it is.
            let Some((owner, items)) = routed.into_iter().next() else { return FetchOutcome::default() };
            let partitions: Vec<FetchPartition> = items.into_iter().map(|(_, p)| p).collect();
            if owner == self.id {
                return self.partitions.fetch(FetchRequest { max_wait_ms, min_bytes, max_bytes, partitions }).await;
            }
            let gone: Vec<FetchPartitionResult> =
                partitions.iter().map(|p| fetch_error(p, ErrorCode::SHUTTING_DOWN)).collect();
            let (reply, answer) = oneshot::channel();
            let request = FetchRequest { max_wait_ms, min_bytes, max_bytes, partitions };
            if self.send_to(owner, ShardMessage::Fetch { request, reply }).await.is_some() {
                if let Ok(outcome) = answer.await {
                    return outcome;
                }
            }
            return FetchOutcome { results: gone, payload: Default::default() };
        }
        let mut slots: Vec<Option<Slot>> = vec![None; count];
        for (index, p) in unknown {
            slots[index] = Some(Err(fetch_error(&p, ErrorCode::UNKNOWN_TOPIC_OR_PARTITION)));
        }
        // Each owning shard gets an equal share of the byte budget, so the
        // merged response stays within what the client asked for.
        let share = max_bytes / routed.len().max(1) as u32;
        let shard = Rc::clone(self);
        let mut answers = self
            .router
            .scatter(
                routed,
                |p| (p.topic.clone(), p.partition),
                move |partitions| {
                    let request = FetchRequest { max_wait_ms, min_bytes, max_bytes: share, partitions };
                    Box::pin(async move { shard.partitions.fetch(request).await })
                },
                move |partitions, reply| {
                    let request = FetchRequest { max_wait_ms, min_bytes, max_bytes: share, partitions };
                    ShardMessage::Fetch { request, reply }
                },
            )
            .await;
        for (number, part) in answers.iter().enumerate() {
            for (position, index) in part.indexes.iter().enumerate() {
                let slot = match part.answer.as_ref().and_then(|outcome| outcome.results.get(position)) {
                    Some(_) => Ok((number, position)),
                    None => {
                        let (topic, partition) = &part.keys[position];
                        let p = FetchPartition {
                            topic: topic.clone(),
                            partition: *partition,
                            offset: Offset::ZERO,
                            max_bytes: 0,
                        };
                        Err(fetch_error(&p, ErrorCode::SHUTTING_DOWN))
                    }
                };
                slots[*index] = Some(slot);
            }
        }
        // Each part's bytes, shared (not copied) into the response in
        // request order. A part's results come in its own order, so each
        // takes the next bytes of its part.
        let mut outcome = FetchOutcome::default();
        for slot in slots.into_iter().flatten() {
            let (number, position) = match slot {
                Ok(found) => found,
                Err(result) => {
                    outcome.results.push(result);
                    continue;
                }
            };
            let Some(answer) = answers.get_mut(number).and_then(|part| part.answer.as_mut()) else { continue };
            let Some(mut result) = answer.results.get(position).cloned() else { continue };
            let data = answer.payload.split_to(result.bytes as usize);
            if data.len() == result.bytes as usize {
                outcome.payload.append(data);
            } else {
                result.error = ErrorCode::INTERNAL;
                result.bytes = 0;
            }
            outcome.results.push(result);
        }
        outcome
    }

    /// A fetch's one wait, holding nothing: until its partitions here hold
    /// `min_bytes` or `max_wait` passes. `true` if it waited here (every
    /// partition is this shard's) and the fetch should read at once;
    /// `false` if the owners will wait (see the partition table's
    /// `wait_fetchable`).
    pub async fn wait_fetchable(&self, request: &FetchRequest, max_wait: std::time::Duration) -> bool {
        self.partitions.wait_fetchable(request, max_wait).await
    }

    /// Resolves offsets (earliest, latest, by time) of partitions anywhere.
    pub async fn list_offsets(self: &Rc<Self>, partitions: Vec<ListOffsetsPartition>) -> Vec<ListOffsetsResult> {
        let shard = Rc::clone(self);
        self.router
            .scatter_gather(
                &self.metadata(),
                partitions,
                |p| (p.topic.as_str(), p.partition),
                move |partitions| Box::pin(async move { shard.partitions.list_offsets(partitions).await }),
                |partitions, reply| ShardMessage::ListOffsets { partitions, reply },
                |topic, partition, error| {
                    let p = ListOffsetsPartition { topic: topic.to_string(), partition, spec: OffsetSpec::Latest };
                    list_offsets_error(&p, error)
                },
            )
            .await
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
        stats.failed_partitions = self.partitions.each(|topic, partition, state| match state {
            Partition::Failed(error) => Some(format!("{topic}-{partition}: {error}")),
            Partition::Ready(_) => None,
        });
        stats
    }
}
