//! The shard: everything one core owns.
//!
//! One shard runs per configured CPU on its own glommio executor. It owns the
//! partitions placed on it (their logs and files), a read-only copy of the
//! cluster metadata, and its ends of the cross-core channel mesh. Inside a
//! shard everything is `Rc`/`RefCell`; other shards reach it only by
//! messages ([`ShardMessage`]), and replies travel back on `Send` oneshot
//! channels carried inside the request, never on the mesh itself (awaiting a
//! mesh send from inside the mesh's own receive loop could deadlock).
//!
//! Requests for partitions a shard does not own are forwarded to the owner,
//! so a simple client works against any shard; a shard-aware client talks to
//! the owner directly and nothing is forwarded.

mod admin;
pub use admin::{AclChange, CredentialChange};
pub mod clock;
mod coordinator;
pub mod groups;
pub mod kafka_groups;
pub mod mesh;
pub mod metadata;
pub mod offsets;
mod partitions;
pub mod producer_ids;
mod router;
mod routing;
pub mod snapshot;
mod stats;
pub mod topic_config;

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use futures_channel::oneshot;
use glommio::sync::Semaphore;
use glommio::TaskQueueHandle;

use crate::protocol::chunks::Chunks;
use crate::protocol::types::AckLevel;
use crate::protocol::types::{PartitionId, ShardId, TimestampMs};
use crate::protocol::wire::{
    ErrorCode, FetchPartitionResult, FetchRequest, ListOffsetsPartition, ListOffsetsResult, ProducePartitionResult,
    ShardStats, TopicResult,
};
use crate::storage::dma::DmaStorage;
use crate::storage::io::Storage;
use crate::storage::producers::SequenceError;
use crate::storage::{LogConfig, PartitionLog, StorageError};

pub use metadata::ClusterMetadata;
pub use snapshot::{GroupSnapshot, PartitionSnapshot, ShardSnapshot};
pub use stats::{Counters, LatencySnapshot, LATENCY_BUCKETS_SECONDS};

/// A partition's log; the broker runs on [`DmaStorage`], the simulation on
/// [`crate::storage::sim::SimStorage`].
pub type Log<S = DmaStorage> = PartitionLog<S>;

/// Capacity of each directed channel of the mesh.
pub const MESH_CHANNEL_CAPACITY: usize = 1024;
/// Forwarded requests a shard handles at once; more wait in the mesh
/// channel, which in turn makes the sending shard wait (backpressure).
const MESH_HANDLERS_MAX: u64 = 1024;

/// A request from one shard to another. `Send`: it crosses threads.
#[derive(Debug)]
pub enum ShardMessage {
    Produce {
        acks: AckLevel,
        timeout_ms: u32,
        items: Vec<ProduceItem>,
        reply: oneshot::Sender<Vec<ProducePartitionResult>>,
    },
    Fetch {
        request: FetchRequest,
        reply: oneshot::Sender<FetchOutcome>,
    },
    ListOffsets {
        partitions: Vec<ListOffsetsPartition>,
        reply: oneshot::Sender<Vec<ListOffsetsResult>>,
    },
    /// To shard 0, the metadata writer.
    CreateTopic {
        name: String,
        partitions: u32,
        config: topic_config::TopicConfig,
        reply: oneshot::Sender<TopicResult>,
    },
    /// To shard 0, the metadata writer.
    AlterTopicConfig {
        name: String,
        edit: topic_config::ConfigEdit,
        reply: oneshot::Sender<TopicResult>,
    },
    DeleteRecords {
        partitions: Vec<crate::protocol::wire::DeleteRecordsPartition>,
        reply: oneshot::Sender<Vec<crate::protocol::wire::DeleteRecordsResult>>,
    },
    /// To shard 0, the metadata writer.
    DeleteTopic {
        name: String,
        reply: oneshot::Sender<TopicResult>,
    },
    /// To shard 0, the metadata writer.
    AlterCredential {
        user: String,
        change: admin::CredentialChange,
        reply: oneshot::Sender<TopicResult>,
    },
    /// To shard 0, the metadata writer.
    ChangeAcls {
        change: admin::AclChange,
        reply: oneshot::Sender<(TopicResult, Vec<crate::protocol::acl::AclBinding>)>,
    },
    /// From shard 0 after the change is durable.
    ApplyMetadata {
        metadata: ClusterMetadata,
        reply: oneshot::Sender<()>,
    },
    Stats {
        reply: oneshot::Sender<ShardStats>,
    },
    /// Everything a metrics scrape reports of the shard.
    Snapshot {
        reply: oneshot::Sender<ShardSnapshot>,
    },
    /// A consumer-group request for the group's coordinator.
    Group {
        request: crate::protocol::wire::Request,
        reply: oneshot::Sender<crate::protocol::wire::Response>,
    },
    ListGroups {
        reply: oneshot::Sender<Vec<crate::protocol::wire::GroupListing>>,
    },
    /// A Kafka group request (bounds-checked) for the group's coordinator.
    KafkaGroup {
        api_key: i16,
        version: i16,
        body: bytes::Bytes,
        reply: oneshot::Sender<Result<kafka_protocol::messages::ResponseKind, kafka_groups::KafkaGroupError>>,
    },
    /// The Kafka groups of a shard: (group, protocol type, state).
    KafkaListGroups {
        reply: oneshot::Sender<Vec<(String, String, String)>>,
    },
    KafkaDescribeGroup {
        group: String,
        reply: oneshot::Sender<kafka_protocol::messages::describe_groups_response::DescribedGroup>,
    },
}

/// One partition's share of a produce request.
#[derive(Debug)]
pub struct ProduceItem {
    pub topic: String,
    pub partition: PartitionId,
    /// One or more record batches, concatenated.
    pub data: BytesMut,
}

/// The answer to a fetch: per-partition results and their data, in order.
/// The data shares the logs' cached bytes: nothing is copied on its way
/// from the cache to the socket.
#[derive(Debug, Default)]
pub struct FetchOutcome {
    pub results: Vec<FetchPartitionResult>,
    pub payload: Chunks,
}

/// Everything a shard needs to start; built on the main thread and moved
/// into the shard's executor.
#[derive(Debug)]
pub struct ShardConfig {
    pub id: ShardId,
    pub shard_count: usize,
    pub data_dir: PathBuf,
    pub log_config: LogConfig,
    /// Partitions of a topic created with 0 partitions.
    pub default_partitions: u32,
    /// Most partitions the broker holds (`topics.partitions_max`).
    pub partitions_max: usize,
    /// Free disk space a topic creation leaves untouched.
    pub free_bytes_reserved: u64,
    /// Most bytes a compressed batch may inflate to when it is checked
    /// (the frame limit).
    pub inflated_bytes_max: usize,
    pub retention_check_interval: Duration,
    pub metadata: ClusterMetadata,
    /// Each shard's own port (0: none), indexed by shard.
    pub shard_ports: Vec<u16>,
    /// Shares of the task queue that flushes logs and enforces retention;
    /// `None` runs them in the shard's own queue (the simulation does, so
    /// that its schedule depends on nothing but its seed).
    pub flush_shares: Option<usize>,
    /// Bytes appended to the group offsets log that make it due for
    /// compaction ([`offsets::COMPACT_AFTER_BYTES`] in the broker).
    pub offsets_compact_after_bytes: u64,
    /// Where the group coordinator reads the time: [`clock::Clock::Real`] in
    /// the broker, a manual clock in the simulation.
    pub clock: clock::Clock,
}

/// The per-core world, generic over the disk it runs on (see
/// [`Shard::start_on`]).
#[derive(Debug)]
pub struct Shard<S: Storage = DmaStorage> {
    id: ShardId,
    shard_count: usize,
    data_dir: PathBuf,
    log_config: LogConfig,
    default_partitions: u32,
    partitions_max: usize,
    free_bytes_reserved: u64,
    /// Ids for idempotent producers, from this shard's own space.
    producer_ids: producer_ids::ProducerIds,
    shard_ports: Vec<u16>,
    /// This shard's copy of the cluster metadata.
    metadata: metadata::MetadataReplica,
    /// The logs this shard owns.
    partitions: partitions::PartitionTable<S>,
    /// Its ends of the mesh, and the scatter/gather over them.
    router: router::Router,
    mesh_handlers: Rc<Semaphore>,
    /// Where retention runs (`None`: the shard's own queue).
    flush_queue: Option<TaskQueueHandle>,
    counters: Rc<Counters>,
    /// The groups this shard coordinates and their committed offsets.
    coordinator: coordinator::GroupCoordinator<S>,
    /// The time the coordinator judges sessions and deadlines by.
    clock: clock::Clock,
}

/// Why a shard failed to start.
#[derive(Debug, thiserror::Error)]
pub enum ShardStartError {
    #[error("shard {shard}: {error}")]
    Io { shard: ShardId, error: std::io::Error },
    #[error("shard {shard}: opening the group offsets log: {message}")]
    Offsets { shard: ShardId, message: String },
}

impl Shard {
    /// Starts the shard on the current executor, on the real disk under
    /// its data directory.
    pub async fn start(config: ShardConfig, mesh: mesh::MeshEnds<ShardMessage>) -> Result<Rc<Shard>, ShardStartError> {
        let id = config.id;
        let storage =
            DmaStorage::new(&config.data_dir).await.map_err(|error| ShardStartError::Io { shard: id, error })?;
        Shard::start_on(storage, config, mesh).await
    }
}

impl<S: Storage> Shard<S> {
    /// Starts the shard on the current executor with `storage` holding its
    /// logs: joins the mesh, opens the partitions it owns, and starts
    /// serving forwarded requests and enforcing retention.
    pub async fn start_on(
        storage: S,
        config: ShardConfig,
        mesh: mesh::MeshEnds<ShardMessage>,
    ) -> Result<Rc<Shard<S>>, ShardStartError> {
        let id = config.id;
        let (senders, receivers) = mesh.split();
        let offsets = offsets::OffsetStore::open(
            storage.clone(),
            &config.data_dir,
            id,
            config.shard_count,
            config.log_config.clone(),
        )
        .await
        .map_err(|error| ShardStartError::Offsets { shard: id, message: error.to_string() })?
        .with_compaction_after(config.offsets_compact_after_bytes);
        let flush_queue = config.flush_shares.map(|shares| {
            glommio::executor().create_task_queue(
                glommio::Shares::Static(shares),
                glommio::Latency::NotImportant,
                "flush",
            )
        });
        let counters = Rc::new(Counters::new());
        let partitions = partitions::PartitionTable::new(partitions::TableConfig {
            shard: id,
            storage,
            data_dir: config.data_dir.clone(),
            log_config: config.log_config.clone(),
            inflated_bytes_max: config.inflated_bytes_max,
            flush_queue,
            counters: Rc::clone(&counters),
        });
        let shard = Rc::new(Shard {
            id,
            shard_count: config.shard_count,
            producer_ids: producer_ids::ProducerIds::new(&config.data_dir, config.id.0),
            data_dir: config.data_dir,
            log_config: config.log_config,
            default_partitions: config.default_partitions,
            partitions_max: config.partitions_max,
            free_bytes_reserved: config.free_bytes_reserved,
            shard_ports: config.shard_ports,
            metadata: metadata::MetadataReplica::default(),
            partitions,
            router: router::Router::new(id, senders, Rc::clone(&counters)),
            mesh_handlers: Rc::new(Semaphore::new(MESH_HANDLERS_MAX)),
            flush_queue,
            counters,
            coordinator: coordinator::GroupCoordinator::new(offsets),
            clock: config.clock,
        });
        shard.apply_metadata(config.metadata).await;
        // Offsets of topics deleted while a crash kept their tombstones from
        // being written: the metadata no longer names them.
        let orphans: Vec<String> = match shard.coordinator.offsets.borrow().as_ref() {
            Some(store) => store.topics().into_iter().filter(|t| !shard.metadata().topics.contains_key(t)).collect(),
            None => Vec::new(),
        };
        for topic in orphans {
            shard.forget_offsets(&topic).await;
        }
        shard.serve_mesh(receivers);
        shard.spawn_retention(config.retention_check_interval);
        // A manual clock's owner ticks the groups as it moves the time.
        if !shard.clock.is_manual() {
            shard.spawn_group_ticker();
        }
        Ok(shard)
    }

    pub fn id(&self) -> ShardId {
        self.id
    }

    pub fn shard_count(&self) -> usize {
        self.shard_count
    }

    /// The clock the group coordinator reads.
    pub fn clock(&self) -> &clock::Clock {
        &self.clock
    }

    /// Judges every group this shard coordinates at the clock's time now:
    /// removes members whose session expired, forces hand-overs past their
    /// rebalance timeout, completes Kafka rebalances whose deadline passed.
    /// The shard does this every `GROUP_TICK` (100 ms) on the real
    /// clock; on a manual one, whoever advances the clock calls it.
    pub fn tick_groups(&self) {
        let now = self.clock.now();
        self.tick_native_groups(now);
        self.tick_kafka_groups(now);
    }

    pub fn shard_ports(&self) -> &[u16] {
        &self.shard_ports
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The counters, for a task that records into them later (a
    /// connection's writer).
    pub fn shared_counters(&self) -> Rc<Counters> {
        Rc::clone(&self.counters)
    }

    pub fn log_config(&self) -> &LogConfig {
        &self.log_config
    }

    /// A new idempotent producer's id (durably never handed out before).
    pub async fn new_producer_id(&self) -> std::io::Result<i64> {
        self.producer_ids.next().await
    }

    /// This shard's copy of the cluster metadata.
    pub fn metadata(&self) -> Rc<ClusterMetadata> {
        self.metadata.current()
    }

    /// Flushes and closes every partition log. The last thing a shard does.
    pub async fn close(&self) {
        self.partitions.close().await;
        self.coordinator.close().await;
        self.router.close();
    }

    /// Brings this shard's partitions in line with `next`: opens the ones it
    /// now owns, closes and deletes the ones whose topic is gone, and gives
    /// the logs of a topic whose configs changed their new limits. Group
    /// offsets of a deleted topic are forgotten, and so are any left over
    /// for a topic that is created (a deletion whose tombstones failed to be
    /// written), so a topic always starts with no committed offsets.
    async fn apply_metadata(self: &Rc<Self>, next: ClusterMetadata) {
        let next = Rc::new(next);
        let previous = self.metadata();
        let created: Vec<String> =
            next.topics.keys().filter(|topic| !previous.topics.contains_key(*topic)).cloned().collect();
        for topic in &created {
            let stale = self.coordinator.offsets.borrow().as_ref().is_some_and(|store| store.topics().contains(topic));
            if stale && previous.version > 0 {
                self.forget_offsets(topic).await;
            }
        }
        // Open the partitions first, then publish the metadata: requests that
        // see the new topic find its partitions open.
        for (topic, placement) in &next.topics {
            let limits = placement.config.log_limits(&self.log_config);
            if previous.topics.get(topic).is_some_and(|before| before.config != placement.config) {
                self.partitions.set_limits(topic, limits);
            }
            for (partition, owner) in placement.owners.iter().enumerate() {
                if *owner == self.id {
                    self.partitions.open(topic, partition as u32, limits).await;
                }
            }
        }
        self.metadata.publish(Rc::clone(&next));
        let gone: Vec<String> =
            previous.topics.keys().filter(|topic| !next.topics.contains_key(*topic)).cloned().collect();
        for topic in gone {
            self.drop_topic(&topic, &previous).await;
        }
    }

    /// Closes this shard's logs of a deleted topic and removes their files.
    async fn drop_topic(&self, topic: &str, previous: &ClusterMetadata) {
        self.partitions.remove_topic(topic).await;
        let owned_here = previous.topics.get(topic).is_some_and(|p| p.owners.contains(&self.id));
        if owned_here {
            tracing::info!(shard = %self.id, topic, "deleted topic");
        }
        self.forget_offsets(topic).await;
    }

    /// Forgets (durably) every committed offset for `topic` of the groups
    /// this shard coordinates. A failure is logged: the offsets are then
    /// forgotten when the topic is created again, or at the next start.
    async fn forget_offsets(&self, topic: &str) {
        let Some(store) = self.coordinator.offsets.borrow().clone() else { return };
        match store.forget_topic(topic).await {
            Ok(0) => {}
            Ok(forgotten) => tracing::info!(shard = %self.id, topic, forgotten, "forgot committed offsets of topic"),
            Err(error) => tracing::error!(shard = %self.id, topic, %error, "could not forget committed offsets"),
        }
    }

    /// Spawns one receive loop per peer. Each message is handled in its own
    /// task, at most [`MESH_HANDLERS_MAX`] at once.
    fn serve_mesh(self: &Rc<Self>, receivers: Vec<(ShardId, flume::Receiver<ShardMessage>)>) {
        for (_peer, receiver) in receivers {
            let shard = Rc::clone(self);
            glommio::spawn_local(async move {
                while let Ok(message) = receiver.recv_async().await {
                    let Ok(permit) = shard.mesh_handlers.acquire_static_permit(1).await else { break };
                    let shard = Rc::clone(&shard);
                    glommio::spawn_local(async move {
                        shard.handle_message(message).await;
                        drop(permit);
                    })
                    .detach();
                }
            })
            .detach();
        }
    }

    async fn handle_message(self: &Rc<Self>, message: ShardMessage) {
        if matches!(
            message,
            ShardMessage::Produce { .. } | ShardMessage::Fetch { .. } | ShardMessage::ListOffsets { .. }
        ) {
            Counters::add(&self.counters.forwarded_in, 1);
        }
        // A send fails only if the requester gave up (timed out); nothing to do then.
        match message {
            ShardMessage::Produce { acks, timeout_ms, items, reply } => {
                let _ = reply.send(self.partitions.produce(&self.metadata(), acks, timeout_ms, items).await);
            }
            ShardMessage::Fetch { request, reply } => {
                let _ = reply.send(self.partitions.fetch(request).await);
            }
            ShardMessage::ListOffsets { partitions, reply } => {
                let _ = reply.send(self.partitions.list_offsets(partitions).await);
            }
            ShardMessage::CreateTopic { name, partitions, config, reply } => {
                let _ = reply.send(self.create_topic(name, partitions, config).await);
            }
            ShardMessage::AlterTopicConfig { name, edit, reply } => {
                let _ = reply.send(self.alter_topic_config(name, edit, false).await);
            }
            ShardMessage::DeleteRecords { partitions, reply } => {
                let _ = reply.send(self.partitions.delete_records(partitions).await);
            }
            ShardMessage::DeleteTopic { name, reply } => {
                let _ = reply.send(self.delete_topic(name).await);
            }
            ShardMessage::AlterCredential { user, change, reply } => {
                let _ = reply.send(self.alter_credential(user, change).await);
            }
            ShardMessage::ChangeAcls { change, reply } => {
                let _ = reply.send(self.change_acls(change).await);
            }
            ShardMessage::ApplyMetadata { metadata, reply } => {
                self.apply_metadata(metadata).await;
                let _ = reply.send(());
            }
            ShardMessage::Stats { reply } => {
                let _ = reply.send(self.local_stats());
            }
            ShardMessage::Snapshot { reply } => {
                let _ = reply.send(self.local_snapshot());
            }
            ShardMessage::Group { request, reply } => {
                let _ = reply.send(self.coordinate(request).await);
            }
            ShardMessage::ListGroups { reply } => {
                let _ = reply.send(self.local_groups());
            }
            ShardMessage::KafkaGroup { api_key, version, body, reply } => {
                let answer = match kafka_protocol::messages::ApiKey::try_from(api_key) {
                    Ok(api_key) => self.kafka_coordinate(api_key, version, body).await,
                    Err(()) => Err(kafka_groups::KafkaGroupError::UnknownApiKey(api_key)),
                };
                let _ = reply.send(answer);
            }
            ShardMessage::KafkaListGroups { reply } => {
                let _ = reply.send(self.kafka_local_groups());
            }
            ShardMessage::KafkaDescribeGroup { group, reply } => {
                let _ = reply.send(self.kafka_describe_local(&group));
            }
        }
    }

    /// Sends a message to another shard; `None` if that shard is gone.
    /// Data-path messages (produce, fetch, list offsets) count as forwarded:
    /// with shard-aware clients there are none.
    async fn send_to(&self, shard: ShardId, message: ShardMessage) -> Option<()> {
        self.router.send(shard, message).await
    }

    fn spawn_group_ticker(self: &Rc<Self>) {
        let shard = Rc::downgrade(self);
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(coordinator::GROUP_TICK).await;
                let Some(shard) = shard.upgrade() else { return };
                shard.tick_groups();
            }
        })
        .detach();
    }

    fn spawn_retention(self: &Rc<Self>, interval: Duration) {
        let shard = Rc::downgrade(self);
        let queue = self.flush_queue;
        let task = async move {
            loop {
                glommio::timer::sleep(interval).await;
                let Some(shard) = shard.upgrade() else { return };
                let logs = shard.partitions.ready_logs();
                for log in logs {
                    if let Err(error) = log.enforce_retention(TimestampMs::now()).await {
                        tracing::warn!(dir = %log.dir().display(), %error, "retention failed");
                    }
                }
            }
        };
        let Some(queue) = queue else {
            glommio::spawn_local(task).detach();
            return;
        };
        match glommio::spawn_local_into(task, queue) {
            Ok(task) => drop(task.detach()),
            Err(error) => tracing::error!(%error, "could not start retention"),
        }
    }
}

/// Directory of one partition's log.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: u32) -> PathBuf {
    data_dir.join("topics").join(format!("{topic}-{partition}"))
}

/// The wire error code for a storage error.
pub fn error_code(error: &StorageError) -> ErrorCode {
    match error {
        StorageError::InvalidBatch(_) | StorageError::NotOneBatch { .. } => ErrorCode::INVALID_BATCH,
        StorageError::BatchTooLarge { .. } => ErrorCode::BATCH_TOO_LARGE,
        StorageError::Sequence(SequenceError::OutOfOrder { .. }) => ErrorCode::OUT_OF_ORDER_SEQUENCE,
        StorageError::Sequence(SequenceError::Fenced { .. }) => ErrorCode::PRODUCER_FENCED,
        StorageError::Sequence(SequenceError::OldDuplicate { .. }) => ErrorCode::DUPLICATE_SEQUENCE,
        StorageError::NoSpace { .. } => ErrorCode::STORAGE_FULL,
        StorageError::OffsetOutOfRange { .. } => ErrorCode::OFFSET_OUT_OF_RANGE,
        StorageError::Closed => ErrorCode::SHUTTING_DOWN,
        StorageError::Io { .. } | StorageError::Corrupt { .. } | StorageError::Poisoned(_) => {
            ErrorCode::PARTITION_FAILED
        }
        StorageError::Locked { .. } | StorageError::Config(_) => ErrorCode::INTERNAL,
    }
}
