//! The run's way to the broker: the native client, or loadgen's Kafka
//! client, behind one [`Transport`] so producers and partition consumers
//! are the same code either way; and a group member of either kind.

use std::net::SocketAddr;

use std::time::Duration;

use bytes::Bytes;
use ringbroker::client::{
    Client, ClientError, ClientOptions, GroupConfig, GroupConsumer, GroupRecord, GroupStats, TopicPartition, Transport,
};
use ringbroker::protocol::types::{AckLevel, Offset, PartitionId};
use ringbroker::protocol::wire::{FetchPartitionResult, OffsetSpec, ProducerIdentity};

use crate::kafka::KafkaClient;
use crate::kafka_group::KafkaGroupMember;

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
    pub async fn connect(
        protocol: Protocol,
        addr: SocketAddr,
        tls: Option<ringbroker::client::ClientTls>,
    ) -> Result<Link, ClientError> {
        Ok(match protocol {
            Protocol::Native => {
                Link::Native(Client::connect(addr, ClientOptions { tls, ..ClientOptions::default() }).await?)
            }
            Protocol::Kafka => Link::Kafka(KafkaClient::connect(addr).await?),
        })
    }

    /// The link for one consumer: over Kafka, with fetch connections of its
    /// own, as a consumer client of its own would have.
    pub fn for_consumer(&self) -> Link {
        match self {
            Link::Native(client) => Link::Native(client.clone()),
            Link::Kafka(client) => Link::Kafka(client.with_own_fetch_lane()),
        }
    }

    /// Joins a consumer group: the native group protocol, or Kafka's
    /// classic one.
    pub async fn join_group(&self, config: GroupConfig) -> Result<GroupMember, ClientError> {
        Ok(match self {
            Link::Native(client) => GroupMember::Native(GroupConsumer::join(client.clone(), config).await?),
            Link::Kafka(client) => {
                GroupMember::Kafka(KafkaGroupMember::join(client.with_own_fetch_lane(), config).await?)
            }
        })
    }
}

/// A consumer group member over either protocol.
pub enum GroupMember {
    Native(GroupConsumer),
    Kafka(KafkaGroupMember),
}

impl GroupMember {
    pub async fn poll(&mut self, max_wait: Duration) -> Result<Vec<GroupRecord>, ClientError> {
        match self {
            GroupMember::Native(member) => member.poll(max_wait).await,
            GroupMember::Kafka(member) => member.poll(max_wait).await,
        }
    }

    pub async fn commit(&mut self) -> Result<(), ClientError> {
        match self {
            GroupMember::Native(member) => member.commit().await,
            GroupMember::Kafka(member) => member.commit().await,
        }
    }

    pub async fn close(self) -> Result<(), ClientError> {
        match self {
            GroupMember::Native(member) => member.close().await,
            GroupMember::Kafka(member) => member.close().await,
        }
    }

    pub fn assignment(&self) -> Vec<TopicPartition> {
        match self {
            GroupMember::Native(member) => member.assignment(),
            GroupMember::Kafka(member) => member.assignment(),
        }
    }

    pub fn position(&self, topic: &str, partition: PartitionId) -> Option<Offset> {
        match self {
            GroupMember::Native(member) => member.position(topic, partition),
            GroupMember::Kafka(member) => member.position(topic, partition),
        }
    }

    pub fn is_stable(&self) -> bool {
        match self {
            GroupMember::Native(member) => member.is_stable(),
            GroupMember::Kafka(member) => member.is_stable(),
        }
    }

    pub fn stats(&self) -> GroupStats {
        match self {
            GroupMember::Native(member) => member.stats(),
            GroupMember::Kafka(member) => member.stats(),
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

    fn metadata_epoch(&self) -> u64 {
        match self {
            Link::Native(client) => client.metadata_epoch(),
            Link::Kafka(client) => client.metadata_epoch(),
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

    async fn init_producer_id(&self) -> Result<ProducerIdentity, ClientError> {
        match self {
            Link::Native(client) => Transport::init_producer_id(client).await,
            Link::Kafka(client) => client.init_producer_id().await,
        }
    }
}
