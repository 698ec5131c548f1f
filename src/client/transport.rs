//! What the [`Producer`](super::Producer) and the
//! [`PartitionConsumer`](super::PartitionConsumer) need from the brokers:
//! partition counts, a produce of encoded batches, a fetch, a list-offsets.
//!
//! [`Client`] provides it over the native protocol. loadgen provides it over
//! the Kafka API, so that both paths batch, pipeline and check records with
//! the same code and a benchmark of the two measures the wire and the
//! broker's front door, not two different producers.

use std::future::Future;

use bytes::Bytes;

use super::cluster::Client;
use super::error::ClientError;
use crate::protocol::types::{AckLevel, Offset, PartitionId};
use crate::protocol::wire::{FetchPartitionResult, OffsetSpec, ProducerIdentity};

/// A way to reach the partitions of a cluster. Implementations live on one
/// executor (nothing is `Send`) and are cheap to clone.
pub trait Transport: Clone + 'static {
    /// The largest request this transport sends: a record that cannot fit
    /// one is refused when it is sent, not when its batch is.
    fn max_frame_bytes(&self) -> usize;

    /// The topic's partition count if it is known now; never waits.
    fn cached_partitions(&self, topic: &str) -> Option<u32>;

    /// A number that changes whenever a cached partition count may have
    /// changed (a metadata answer taken in, a topic forgotten). The producer
    /// keeps each topic's count for as long as it stays the same, which
    /// spares a lookup by name per record.
    fn metadata_epoch(&self) -> u64;

    /// The topic's partition count, asking the cluster if it is not known.
    fn partitions(&self, topic: &str) -> impl Future<Output = Result<u32, ClientError>>;

    /// Learns where the partition is served and connects there, so a
    /// request sent next goes out at once. The producer calls it in batch
    /// order, which keeps a partition's batches in order on the wire.
    fn prepare_route(&self, topic: &str, partition: PartitionId) -> impl Future<Output = Result<(), ClientError>>;

    /// Appends encoded record batches to one partition; resolves to the base
    /// offset of the first ([`Offset::ZERO`] with [`AckLevel::None`], which
    /// resolves once the request is written).
    fn produce_batches(
        &self,
        topic: &str,
        partition: PartitionId,
        batches: &[u8],
        acks: AckLevel,
        timeout_ms: u32,
    ) -> impl Future<Output = Result<Offset, ClientError>>;

    /// Whole batches from the one containing `offset` on, long-polling up to
    /// `max_wait_ms`; the `Bytes` are this partition's batches. A partition
    /// error is returned as [`ClientError::Broker`].
    fn fetch(
        &self,
        topic: &str,
        partition: PartitionId,
        offset: Offset,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> impl Future<Output = Result<(FetchPartitionResult, Bytes), ClientError>>;

    /// The partition's start, end, or first offset at or after a timestamp.
    fn list_offsets(
        &self,
        topic: &str,
        partition: PartitionId,
        spec: OffsetSpec,
    ) -> impl Future<Output = Result<Option<Offset>, ClientError>>;

    /// A new idempotent producer's id and epoch.
    fn init_producer_id(&self) -> impl Future<Output = Result<ProducerIdentity, ClientError>>;
}

impl Transport for Client {
    fn max_frame_bytes(&self) -> usize {
        self.options().max_frame_bytes
    }

    fn cached_partitions(&self, topic: &str) -> Option<u32> {
        Client::cached_partitions(self, topic)
    }

    fn metadata_epoch(&self) -> u64 {
        Client::metadata_epoch(self)
    }

    async fn partitions(&self, topic: &str) -> Result<u32, ClientError> {
        Client::partitions(self, topic).await
    }

    async fn prepare_route(&self, topic: &str, partition: PartitionId) -> Result<(), ClientError> {
        self.partition_connection(topic, partition).await.map(drop)
    }

    async fn produce_batches(
        &self,
        topic: &str,
        partition: PartitionId,
        batches: &[u8],
        acks: AckLevel,
        timeout_ms: u32,
    ) -> Result<Offset, ClientError> {
        let result = self.produce_raw_with_timeout(topic, partition, batches, acks, timeout_ms).await?;
        Ok(result.base_offset)
    }

    async fn fetch(
        &self,
        topic: &str,
        partition: PartitionId,
        offset: Offset,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<(FetchPartitionResult, Bytes), ClientError> {
        Client::fetch(self, topic, partition, offset, max_bytes, max_wait_ms).await
    }

    async fn list_offsets(
        &self,
        topic: &str,
        partition: PartitionId,
        spec: OffsetSpec,
    ) -> Result<Option<Offset>, ClientError> {
        Client::list_offsets(self, topic, partition, spec).await
    }

    async fn init_producer_id(&self) -> Result<ProducerIdentity, ClientError> {
        Client::init_producer_id(self).await
    }
}
