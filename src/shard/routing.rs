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
        let mut parts: Vec<Option<(FetchPartitionResult, Vec<u8>)>> = vec![None; count];
        for (index, p) in unknown {
            parts[index] = Some((fetch_error(&p, ErrorCode::UNKNOWN_TOPIC_OR_PARTITION), Vec::new()));
        }
        if routed.len() == 1 && routed.contains_key(&self.id) && parts.iter().all(Option::is_none) {
            // The common case (a shard-aware client): no copying around.
            let partitions = routed.into_values().flatten().map(|(_, p)| p).collect();
            return self.partitions.fetch(FetchRequest { max_wait_ms, min_bytes, max_bytes, partitions }).await;
        }
        // Each owning shard gets an equal share of the byte budget, so the
        // merged response stays within what the client asked for.
        let share = max_bytes / routed.len().max(1) as u32;
        let shard = Rc::clone(self);
        let answers = self
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
    /// something, or `max_wait` passes (see the partition table's `wait_fetchable`).
    pub async fn wait_fetchable(&self, request: &FetchRequest, max_wait: std::time::Duration) {
        self.partitions.wait_fetchable(request, max_wait).await;
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
