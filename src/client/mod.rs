//! The native async client: what loadgen, the tests and the CLI use to talk to
//! a broker.
//!
//! It lives on one glommio executor (everything is `Rc`, nothing is `Send`),
//! like the shards it talks to, and depends only on [`crate::protocol`]: it
//! must never reach into the broker's internals, so that it keeps speaking the
//! protocol exactly as an outside program would.
//!
//! - [`Connection`]: one pipelined TCP connection; many requests in flight,
//!   answered in any order.
//! - [`Client`]: shard-aware routing. It caches metadata (which shard owns
//!   which partition) and sends each partition's requests straight to the
//!   owning shard's own port, so the data path crosses no core boundary.
//! - [`Producer`]: per-partition batching with linger, bounded memory and
//!   bounded in-flight requests; each record's future resolves to its offset.
//! - [`PartitionConsumer`]: long-poll fetches from one partition, checking
//!   every batch's CRC and handing out records as zero-copy slices.
//! - [`GroupConsumer`]: a consumer-group member: partitions assigned by the
//!   group's coordinator (cooperatively: a moving partition is committed and
//!   released before its next owner gets it), commits, heartbeats.
//!
//! Invariant: nothing here grows without bound. Frames are checked against
//! `max_frame_bytes` before anything is allocated for them, requests in flight
//! are capped per connection, and the producer makes `send` wait rather than
//! buffer more than its configured bound.

mod accumulator;
mod cluster;
mod connection;
mod consumer;
mod error;
mod group;
mod producer;
mod sasl;
mod tls;
mod transport;

pub use cluster::{Client, ClientOptions};
pub use connection::{Connection, ConnectionOptions};
pub use consumer::{decode_records, ConsumedRecord, PartitionConsumer, RecordRef, StartPosition};
pub use error::ClientError;
pub use group::{GroupConfig, GroupConsumer, GroupRecord, GroupStats, PartitionsCallback, TopicPartition};
pub use producer::{BatchStages, Producer, ProducerConfig, ProducerRecord, SendFuture, SentRun};
pub use sasl::SaslCredentials;
pub use tls::ClientTls;
pub use transport::Transport;

#[cfg(test)]
mod fake_broker;
