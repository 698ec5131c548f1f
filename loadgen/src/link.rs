//! The run's way to the broker: the native client, or loadgen's Kafka
//! client, behind one [`Transport`] so producers and partition consumers
//! are the same code either way.

use std::net::SocketAddr;

use bytes::Bytes;
use ringbroker::client::{Client, ClientError, ClientOptions, Transport};
use ringbroker::protocol::types::{AckLevel, Offset, PartitionId};
use ringbroker::protocol::wire::{FetchPartitionResult, OffsetSpec};

use crate::kafka::KafkaClient;

/// Which protocol a run speaks to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// ringbroker's own protocol, through its client library.
    Native,
    /// The Kafka API, through loadgen's Kafka client.
    Kafka,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Native => "native",
            Protocol::Kafka => "kafka",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Link {
    Native(Client),
    Kafka(KafkaClient),
}

impl Link {
    pub async fn connect(protocol: Protocol, addr: SocketAddr) -> Result<Link, ClientError> {
        Ok(match protocol {
            Protocol::Native => Link::Native(Client::connect(addr, ClientOptions::default()).await?),
            Protocol::Kafka => Link::Kafka(KafkaClient::connect(addr).await?),
        })
    }

    /// The native client, which consumer groups need.
    pub fn native(&self) -> Option<&Client> {
        match self {
            Link::Native(client) => Some(client),
            Link::Kafka(_) => None,
        }
    }
}

impl Transport for Link {
    fn max_frame_bytes(&self) -> usize {
        match self {
            Link::Native(client) => client.max_frame_bytes(),
            Link::Kafka(client) => client.max_frame_bytes(),
        }
    }

    fn cached_partitions(&self, topic: &str) -> Option<u32> {
        match self {
            Link::Native(client) => client.cached_partitions(topic),
            Link::Kafka(client) => client.cached_partitions(topic),
        }
    }

    async fn partitions(&self, topic: &str) -> Result<u32, ClientError> {
        match self {
            Link::Native(client) => client.partitions(topic).await,
            Link::Kafka(client) => client.partitions(topic).await,
        }
    }

    async fn prepare_route(&self, topic: &str, partition: PartitionId) -> Result<(), ClientError> {
        match self {
            Link::Native(client) => client.prepare_route(topic, partition).await,
            Link::Kafka(client) => client.prepare_route(topic, partition).await,
        }
    }

    async fn produce_batches(
        &self,
        topic: &str,
        partition: PartitionId,
        batches: &[u8],
        acks: AckLevel,
        timeout_ms: u32,
    ) -> Result<Offset, ClientError> {
        match self {
            Link::Native(client) => client.produce_batches(topic, partition, batches, acks, timeout_ms).await,
            Link::Kafka(client) => client.produce_batches(topic, partition, batches, acks, timeout_ms).await,
        }
    }

    async fn fetch(
        &self,
        topic: &str,
        partition: PartitionId,
        offset: Offset,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<(FetchPartitionResult, Bytes), ClientError> {
        match self {
            Link::Native(client) => Transport::fetch(client, topic, partition, offset, max_bytes, max_wait_ms).await,
            Link::Kafka(client) => client.fetch(topic, partition, offset, max_bytes, max_wait_ms).await,
        }
    }

    async fn list_offsets(
        &self,
        topic: &str,
        partition: PartitionId,
        spec: OffsetSpec,
    ) -> Result<Option<Offset>, ClientError> {
        match self {
            Link::Native(client) => Transport::list_offsets(client, topic, partition, spec).await,
            Link::Kafka(client) => client.list_offsets(topic, partition, spec).await,
        }
    }
}
