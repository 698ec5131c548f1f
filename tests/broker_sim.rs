//! The whole broker on the simulated disk: three shards with their mesh,
//! group coordinators and offsets logs, in one process, driven by a seeded
//! workload of produce, fetch, group join and commit, topic create and
//! delete, with power cuts that drop or tear everything not yet synced.
//! After each cut the shards start again on what the disk kept, and the
//! checker holds the broker to its promises:
//! - every acknowledged event is present, at the offset its ack named,
//!   with its bytes; every acknowledged commit is there (or a later one
//!   that was in flight);
//! - offsets are contiguous from the start of each log, and nothing is
//!   there that no client sent to that incarnation of the topic (a deleted
//!   topic's records and commits do not come back);
//! - no consumer saw data past the durable end: whatever a fetch returned
//!   before a cut is still there after it.
//!
//! Group members hold sessions of a few seconds on the brokers' manual
//! clock, which moves only when the workload says (by up to a few seconds
//! at a time); the coordinators then judge the sessions, and the checker
//! holds them to the timeout: a member is gone once its session has passed
//! since it was last heard, and not before.
//!
//! One seed decides everything: the operations, which shard each goes to,
//! how many run at once, how many scheduler turns pass between them, when
//! the power goes out and what each unsynced write leaves behind. Everything
//! runs on one executor in one task queue, so a seed replays exactly; each
//! run records a trace, and a test checks that replaying a seed gives the
//! same trace.
//!
//! Run one seed again: `RB_SIM_SEED=<seed> cargo nextest run --test broker_sim`.
//! The long run (docs/testing.md):
//! `RB_SIM_SEEDS=10000 cargo nextest run --release --test broker_sim`.
//!
//! Topic creation and deletion write the cluster metadata with `std::fs` on
//! a real temp dir, synced before they answer; the simulation runs them
//! between other operations, not across a cut.

mod support;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::future::yield_now;
use glommio::{LocalExecutorBuilder, Placement, Task};
use ringbroker::protocol::batch::{BatchBuilder, BatchView, Record};
use ringbroker::protocol::types::{AckLevel, Offset, PartitionId};
use ringbroker::protocol::wire::{
    CommitOffsetsRequest, ErrorCode, FetchCommittedRequest, FetchPartition, FetchRequest, HeartbeatRequest,
    JoinGroupRequest, OffsetCommit, Request, Response,
};
use ringbroker::shard::clock::ManualClock;
use ringbroker::shard::topic_config::TopicConfig;
use ringbroker::shard::{mesh, metadata, ProduceItem, Shard, ShardConfig, MESH_CHANNEL_CAPACITY};
use ringbroker::storage::io::SyncMethod;
use ringbroker::storage::sim::{CrashMode, SimStorage};
use ringbroker::storage::{FlushPolicy, LogConfig};
use support::Rng;

const SHARDS: usize = 3;
const TOPICS: [&str; 3] = ["orders", "payments", "audit"];
/// Client operations in flight at once, at most.
const IN_FLIGHT_MAX: u64 = 6;
const FETCH_BYTES_MAX: u32 = 64 << 10;
const BATCH_BYTES_MAX: usize = 8 << 10;
/// The most one move of the clock advances it.
const CLOCK_STEP_MAX_MS: u64 = 5_000;
/// Group members' session timeouts: a few clock moves.
const SESSION_MS: std::ops::RangeInclusive<u64> = 2_000..=20_000;

/// A broken broker the checker must catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    /// The real broker: no violation may be found.
    None,
    /// Producers count an ack given once the write completed, before its
    /// fdatasync, as a promise (acks before fsync). Runs with the
    /// fdatasync sync method.
    AckBeforeSync,
    /// The disk's fdatasync and O_DSYNC writes succeed and persist nothing,
    /// so every "durable" append and commit is applied before it is
    /// durable.
    LyingDisk,
}

#[derive(Debug, Default)]
struct Report {
    trace: Vec<String>,
    violations: Vec<String>,
    operations: usize,
    cuts: usize,
    /// Members found gone once their session had passed.
    expired: usize,
}

type PartitionKey = (String, u32);
type CommitKey = (String, String, u32);

/// What clients were promised, and what they sent.
#[derive(Debug, Default)]
struct Model {
    /// Topics whose creation was acknowledged (and not their deletion).
    topics: BTreeMap<String, u32>,
    /// Acknowledged records: offset → value.
    acked: BTreeMap<PartitionKey, BTreeMap<u64, Vec<u8>>>,
    /// Every value sent to this incarnation of the partition, acked or not.
    sent: BTreeMap<PartitionKey, BTreeSet<Vec<u8>>>,
    /// The furthest end a fetch has shown a consumer.
    seen_end: BTreeMap<PartitionKey, u64>,
    /// Acknowledged commits.
    committed: BTreeMap<CommitKey, u64>,
    /// Commits sent and not acknowledged since: after a cut any of them may
    /// be the one found.
    maybe_committed: BTreeMap<CommitKey, BTreeSet<u64>>,
    /// The member each group's client holds.
    members: BTreeMap<String, Held>,
    /// Groups with a commit in flight (one at a time, so acks come back in
    /// the order the commits were applied).
    committing: BTreeSet<String>,
    violations: Vec<String>,
    expired: usize,
}

/// A group member a client holds.
#[derive(Debug, Clone)]
struct Held {
    id: String,
    generation: u32,
    session: Duration,
    /// When the coordinator last heard from it (join or heartbeat), on the
    /// manual clock.
    heard: Duration,
}

impl Model {
    fn violation(&mut self, message: String) {
        self.violations.push(message);
    }

    /// The end of a partition as clients know it.
    fn known_end(&self, key: &PartitionKey) -> u64 {
        let acked = self.acked.get(key).and_then(|records| records.keys().next_back()).map_or(0, |last| last + 1);
        acked.max(self.seen_end.get(key).copied().unwrap_or(0))
    }
}

struct Sim {
    seed: u64,
    control: Control,
    /// How the partition logs make writes durable (by seed).
    sync: SyncMethod,
    rng: Rng,
    dir: tempfile::TempDir,
    disk: SimStorage,
    /// The time every shard's group coordinator reads.
    clock: ManualClock,
    shards: Vec<Rc<Shard<SimStorage>>>,
    model: Rc<RefCell<Model>>,
    trace: Rc<RefCell<Vec<String>>>,
    /// Bumped at each power cut: answers to requests sent before it are
    /// never seen by their clients.
    power: Rc<Cell<u32>>,
    in_flight: Vec<Task<()>>,
    operations: usize,
    cuts: usize,
}

fn log_config(sync: SyncMethod) -> LogConfig {
    LogConfig {
        segment_bytes_max: 32 << 10,
        segment_age_max_ms: None,
        index_interval_bytes: 1024,
        write_bytes_max: 16 << 10,
        write_request_bytes: 4096,
        batch_bytes_max: BATCH_BYTES_MAX,
        tail_cache_bytes: 8 << 10,
        flush: FlushPolicy::EveryBatch,
        sync,
        retention_bytes: None,
        retention_ms: None,
        preallocate: true,
        ..LogConfig::default()
    }
}

async fn start_shards(
    disk: &SimStorage,
    data_dir: &Path,
    clock: &ManualClock,
    sync: SyncMethod,
) -> Result<Vec<Rc<Shard<SimStorage>>>, String> {
    let metadata = metadata::load(data_dir).map_err(|error| format!("loading the metadata: {error}"))?;
    let mut shards = Vec::with_capacity(SHARDS);
    for (id, ends) in mesh::build(SHARDS, MESH_CHANNEL_CAPACITY).into_iter().enumerate() {
        let config = ShardConfig {
            id: ringbroker::protocol::types::ShardId(id as u16),
            shard_count: SHARDS,
            data_dir: data_dir.to_path_buf(),
            log_config: log_config(sync),
            default_partitions: 1,
            partitions_max: 1000,
            free_bytes_reserved: 0,
            inflated_bytes_max: 1 << 20,
            retention_check_interval: Duration::from_secs(3600),
            metadata: metadata.clone(),
            shard_ports: vec![0; SHARDS],
            flush_shares: None,
            // Small, so that runs compact the group offsets logs often.
            offsets_compact_after_bytes: 512,
            clock: clock.clone().into(),
        };
        let shard = Shard::start_on(disk.clone(), config, ends).await.map_err(|error| error.to_string())?;
        shards.push(shard);
    }
    Ok(shards)
}

impl Sim {
    async fn new(seed: u64, control: Control) -> Sim {
        let disk = SimStorage::new();
        disk.set_syncs_lie(control == Control::LyingDisk);
        let dir = support::temp_dir();
        let clock = ManualClock::new();
        // Written acks are durable ones with O_DSYNC: the control needs
        // the fdatasync method to have a gap to catch.
        let sync =
            if control == Control::AckBeforeSync || seed % 2 == 1 { SyncMethod::Fdatasync } else { SyncMethod::Dsync };
        let shards = start_shards(&disk, dir.path(), &clock, sync).await.expect("a new broker starts");
        Sim {
            seed,
            control,
            sync,
            rng: Rng(seed),
            dir,
            disk,
            clock,
            shards,
            model: Rc::default(),
            trace: Rc::default(),
            power: Rc::new(Cell::new(0)),
            in_flight: Vec::new(),
            operations: 0,
            cuts: 0,
        }
    }

    fn note(&self, line: String) {
        self.trace.borrow_mut().push(line);
    }

    fn any_shard(&mut self) -> Rc<Shard<SimStorage>> {
        let index = self.rng.below(SHARDS as u64) as usize;
        Rc::clone(&self.shards[index])
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.rng.below(items.len() as u64) as usize].clone())
    }

    async fn run(mut self, operations: usize) -> Report {
        for _ in 0..operations {
            self.operations += 1;
            match self.rng.below(100) {
                0..=2 => self.power_cut().await,
                3..=6 => self.admin().await,
                7..=59 => self.produce(),
                60..=84 => self.fetch(),
                85..=88 => self.advance_clock(),
                _ => self.commit().await,
            }
            if self.in_flight.len() as u64 > self.rng.below(IN_FLIGHT_MAX) {
                let oldest = self.in_flight.remove(0);
                oldest.await;
            }
            for _ in 0..self.rng.below(4) {
                yield_now().await;
            }
        }
        self.quiesce().await;
        self.power_cut().await;
        for shard in std::mem::take(&mut self.shards) {
            shard.close().await;
        }
        let model = self.model.borrow();
        Report {
            trace: self.trace.take(),
            violations: model.violations.clone(),
            operations: self.operations,
            cuts: self.cuts,
            expired: model.expired,
        }
    }

    async fn quiesce(&mut self) {
        for task in std::mem::take(&mut self.in_flight) {
            task.await;
        }
    }

    /// Creates or deletes a topic, with nothing else in flight.
    async fn admin(&mut self) {
        self.quiesce().await;
        let existing: Vec<String> = self.model.borrow().topics.keys().cloned().collect();
        let absent: Vec<&str> = TOPICS.iter().copied().filter(|t| !existing.iter().any(|e| e == t)).collect();
        let shard = self.any_shard();
        let delete = !existing.is_empty() && (absent.is_empty() || self.rng.below(3) == 0);
        if delete {
            let Some(topic) = self.pick(&existing) else { return };
            let result = shard.delete_topic(topic.clone()).await;
            self.note(format!("delete {topic} via {}: {:?}", shard.id(), result.error));
            let mut model = self.model.borrow_mut();
            if !result.error.is_ok() {
                model.violation(format!("deleting existing topic {topic} failed: {:?}", result.error));
                return;
            }
            model.topics.remove(&topic);
            model.acked.retain(|(t, _), _| *t != topic);
            model.sent.retain(|(t, _), _| *t != topic);
            model.seen_end.retain(|(t, _), _| *t != topic);
            model.committed.retain(|(_, t, _), _| *t != topic);
            model.maybe_committed.retain(|(_, t, _), _| *t != topic);
        } else {
            let Some(topic) = self.pick(&absent) else { return };
            let partitions = 1 + self.rng.below(4) as u32;
            let result = shard.create_topic(topic.to_string(), partitions, TopicConfig::default()).await;
            self.note(format!("create {topic} x{partitions} via {}: {:?}", shard.id(), result.error));
            let mut model = self.model.borrow_mut();
            if !result.error.is_ok() {
                model.violation(format!("creating absent topic {topic} failed: {:?}", result.error));
                return;
            }
            model.topics.insert(topic.to_string(), partitions);
        }
    }

    fn pick_partition(&mut self) -> Option<PartitionKey> {
        let topics: Vec<(String, u32)> = self.model.borrow().topics.iter().map(|(t, n)| (t.clone(), *n)).collect();
        let (topic, partitions) = self.pick(&topics)?;
        Some((topic, self.rng.below(u64::from(partitions)) as u32))
    }

    fn produce(&mut self) {
        let Some(key) = self.pick_partition() else { return };
        let count = 1 + self.rng.below(8) as usize;
        let value_len = 8 + self.rng.below(300) as usize;
        let op = self.operations;
        let values: Vec<Vec<u8>> = (0..count)
            .map(|i| {
                let mut value = format!("{}:{op}:{i}:", self.seed).into_bytes();
                value.resize(value_len.max(value.len()), b'.');
                value
            })
            .collect();
        let mut out = Vec::new();
        let mut builder = BatchBuilder::new(&mut out, 1_764_000_000_000);
        for value in &values {
            builder.push(&Record { timestamp_ms: 1_764_000_000_000, key: None, value: Some(value), headers: &[] });
        }
        let data = BytesMut::from(builder.finish());
        let acks = if self.control == Control::AckBeforeSync { AckLevel::Written } else { AckLevel::Durable };
        self.model.borrow_mut().sent.entry(key.clone()).or_default().extend(values.iter().cloned());
        let shard = self.any_shard();
        let (model, trace, power) = (Rc::clone(&self.model), Rc::clone(&self.trace), Rc::clone(&self.power));
        let epoch = power.get();
        let item = ProduceItem { topic: key.0.clone(), partition: PartitionId(key.1), data };
        self.in_flight.push(glommio::spawn_local(async move {
            let results = shard.produce(acks, 30_000, vec![item]).await;
            if power.get() != epoch {
                return;
            }
            let mut model = model.borrow_mut();
            let Some(result) = results.first() else {
                model.violation(format!("op {op}: a produce of one partition got no result"));
                return;
            };
            let (base, next) = (result.base_offset.get(), result.next_offset.get());
            trace.borrow_mut().push(format!(
                "op {op}: produce {}/{} x{count} via {}: {:?} {base}..{next}",
                key.0,
                key.1,
                shard.id(),
                result.error
            ));
            if !result.error.is_ok() {
                model.violation(format!("op {op}: produce to {}/{} failed: {:?}", key.0, key.1, result.error));
                return;
            }
            if next - base != count as u64 {
                model.violation(format!("op {op}: {count} records acked as {base}..{next}"));
                return;
            }
            for (i, value) in values.into_iter().enumerate() {
                let offset = base + i as u64;
                let previous = model.acked.entry(key.clone()).or_default().insert(offset, value);
                if previous.is_some() {
                    model.violation(format!("op {op}: offset {offset} of {}/{} acknowledged twice", key.0, key.1));
                }
            }
        }));
    }

    /// Fetches one partition, or several at once (whose owners may be
    /// several shards: the router splits and merges the request).
    fn fetch(&mut self) {
        let Some(first) = self.pick_partition() else { return };
        let partitions = self.model.borrow().topics.get(&first.0).copied().unwrap_or(1);
        let keys: Vec<PartitionKey> =
            if self.rng.below(3) == 0 { (0..partitions).map(|p| (first.0.clone(), p)).collect() } else { vec![first] };
        let froms: Vec<u64> =
            keys.iter().map(|key| self.model.borrow().known_end(key)).map(|end| self.rng.below(end + 1)).collect();
        let shard = self.any_shard();
        let (model, trace, power) = (Rc::clone(&self.model), Rc::clone(&self.trace), Rc::clone(&self.power));
        let epoch = power.get();
        let op = self.operations;
        let control = self.control;
        self.in_flight.push(glommio::spawn_local(async move {
            let request = FetchRequest {
                max_wait_ms: 0,
                min_bytes: 0,
                max_bytes: FETCH_BYTES_MAX,
                partitions: keys.iter().zip(&froms).map(|(key, from)| fetch_partition(key, *from)).collect(),
            };
            let outcome = shard.fetch(request).await;
            if power.get() != epoch {
                return;
            }
            let mut model = model.borrow_mut();
            if outcome.results.len() != keys.len() {
                model.violation(format!("op {op}: a fetch of {} partitions got {} results", keys.len(), outcome.results.len()));
                return;
            }
            let payload = outcome.payload.contiguous();
            let mut payload = &payload[..];
            for ((key, from), result) in keys.iter().zip(&froms).zip(&outcome.results) {
                let Some(data) = payload.get(..result.bytes as usize) else {
                    model.violation(format!("op {op}: results announce more bytes than the fetch holds"));
                    return;
                };
                payload = &payload[data.len()..];
                let high_watermark = result.high_watermark.get();
                trace.borrow_mut().push(format!(
                    "op {op}: fetch {}/{} from {from} via {}: {:?} hw {high_watermark} {} bytes",
                    key.0,
                    key.1,
                    shard.id(),
                    result.error,
                    result.bytes
                ));
                if (result.topic.as_str(), result.partition.0) != (key.0.as_str(), key.1) {
                    model.violation(format!("op {op}: asked for {}/{}, answered for {}/{}", key.0, key.1, result.topic, result.partition));
                    continue;
                }
                if result.error == ErrorCode::OFFSET_OUT_OF_RANGE && control == Control::AckBeforeSync {
                    continue; // acked past the durable end: the cut will tell
                }
                if !result.error.is_ok() {
                    model.violation(format!("op {op}: fetch {}/{} from {from} failed: {:?}", key.0, key.1, result.error));
                    continue;
                }
                match check_records(&mut model, key, data, Some(*from)) {
                    Ok(Some(next)) if next > high_watermark => model.violation(format!(
                        "op {op}: a fetch of {}/{} showed records up to {next}, past the high watermark {high_watermark}",
                        key.0, key.1
                    )),
                    Ok(Some(next)) => {
                        let seen = model.seen_end.entry(key.clone()).or_default();
                        *seen = (*seen).max(next);
                    }
                    Ok(None) => {}
                    Err(problem) => model.violation(format!("op {op}: {problem}")),
                }
            }
            if !payload.is_empty() {
                model.violation(format!("op {op}: {} bytes in the fetch belong to no partition", payload.len()));
            }
        }));
    }

    /// Joins the topic's group if this client has no member, then commits
    /// a position of one partition the member owns.
    async fn commit(&mut self) {
        let Some(key) = self.pick_partition() else { return };
        let group = format!("g-{}", key.0);
        if self.model.borrow().committing.contains(&group) {
            return;
        }
        let shard = self.any_shard();
        let member = self.model.borrow().members.get(&group).cloned();
        let held = match member {
            Some(member) => member,
            None => {
                let session_ms = SESSION_MS.start() + self.rng.below(SESSION_MS.end() - SESSION_MS.start() + 1);
                let join = JoinGroupRequest {
                    group: group.clone(),
                    member_id: None,
                    topics: vec![key.0.clone()],
                    session_timeout_ms: session_ms as u32,
                    rebalance_timeout_ms: 300_000,
                };
                let Response::JoinGroup(joined) = shard.group_request(Request::JoinGroup(join)).await else {
                    self.model.borrow_mut().violation(format!("{group}: join answered with something else"));
                    return;
                };
                self.note(format!("join {group} via {}: {:?} gen {}", shard.id(), joined.error, joined.generation));
                if !joined.error.is_ok() {
                    self.model.borrow_mut().violation(format!("{group}: join failed: {:?}", joined.error));
                    return;
                }
                let member = Held {
                    id: joined.member_id,
                    generation: joined.generation,
                    session: Duration::from_millis(session_ms),
                    heard: self.clock.elapsed(),
                };
                self.model.borrow_mut().members.insert(group.clone(), member.clone());
                member
            }
        };
        let member_id = held.id.clone();
        let heartbeat =
            HeartbeatRequest { group: group.clone(), member_id: member_id.clone(), generation: held.generation };
        let Response::Heartbeat(beat) = shard.group_request(Request::Heartbeat(heartbeat)).await else {
            self.model.borrow_mut().violation(format!("{group}: heartbeat answered with something else"));
            return;
        };
        // The coordinators judged the sessions when the clock last moved,
        // and it has not moved since.
        let silent = self.clock.elapsed() - held.heard;
        let expired = silent >= held.session;
        if !beat.error.is_ok() {
            self.note(format!("heartbeat {group}: {:?}", beat.error));
            let mut model = self.model.borrow_mut();
            model.members.remove(&group);
            if expired && beat.error == ErrorCode::UNKNOWN_MEMBER {
                model.expired += 1;
            } else {
                model.violation(format!(
                    "{group}: heartbeat refused ({:?}) {silent:?} after the member was last heard, session {:?}",
                    beat.error, held.session
                ));
            }
            return;
        }
        if expired {
            self.model.borrow_mut().violation(format!(
                "{group}: a member outlived its session: heard {silent:?} ago, session {:?}",
                held.session
            ));
        }
        let heard = self.clock.elapsed();
        let held = Held { generation: beat.generation, heard, ..held };
        self.model.borrow_mut().members.insert(group.clone(), held);
        let owned =
            beat.assignment.iter().any(|owned| owned.topic == key.0 && owned.partitions.contains(&PartitionId(key.1)));
        if !owned {
            self.note(format!("{group}: {}/{} not owned yet", key.0, key.1));
            return;
        }
        let offset = self.rng.below(self.model.borrow().known_end(&key) + 1);
        let commit_key: CommitKey = (group.clone(), key.0.clone(), key.1);
        {
            let mut model = self.model.borrow_mut();
            model.maybe_committed.entry(commit_key.clone()).or_default().insert(offset);
            model.committing.insert(group.clone());
        }
        let request = CommitOffsetsRequest {
            group: group.clone(),
            member_id,
            generation: beat.generation,
            offsets: vec![OffsetCommit {
                topic: key.0.clone(),
                partition: PartitionId(key.1),
                offset: Offset::new(offset).unwrap_or(Offset::ZERO),
                metadata: String::new(),
            }],
        };
        let (model, trace, power) = (Rc::clone(&self.model), Rc::clone(&self.trace), Rc::clone(&self.power));
        let epoch = power.get();
        let op = self.operations;
        self.in_flight.push(glommio::spawn_local(async move {
            let answer = shard.group_request(Request::CommitOffsets(request)).await;
            if power.get() != epoch {
                return;
            }
            let mut model = model.borrow_mut();
            model.committing.remove(&group);
            let Response::CommitOffsets(answer) = answer else {
                model.violation(format!("op {op}: commit answered with something else"));
                return;
            };
            let error = answer.partitions.first().map_or(answer.error, |p| {
                if answer.error.is_ok() {
                    p.error
                } else {
                    answer.error
                }
            });
            trace.borrow_mut().push(format!("op {op}: commit {group} {}/{} at {offset}: {error:?}", key.0, key.1));
            if error.is_ok() {
                model.committed.insert(commit_key.clone(), offset);
                model.maybe_committed.remove(&commit_key);
            }
        }));
    }

    /// Moves the brokers' clock on, by up to [`CLOCK_STEP_MAX_MS`], and has
    /// every coordinator judge its groups at the new time.
    fn advance_clock(&mut self) {
        let step = Duration::from_millis(self.rng.below(CLOCK_STEP_MAX_MS + 1));
        self.clock.advance(step);
        for shard in &self.shards {
            shard.tick_groups();
        }
        self.note(format!("clock +{step:?}, now {:?}", self.clock.elapsed()));
    }

    /// The power goes out: requests in flight never get their answers, the
    /// disk keeps what the crash mode says, and the broker starts again on
    /// it. Then every promise is checked.
    async fn power_cut(&mut self) {
        self.cuts += 1;
        self.power.set(self.power.get() + 1);
        let mode = match self.rng.below(4) {
            0 => CrashMode::KeepAll,
            1 => CrashMode::LoseUnsynced,
            _ => CrashMode::Torn { seed: self.rng.next() },
        };
        let image = self.disk.crash_image(mode);
        // Cancels the clients' requests. The old shards run on with the old
        // disk, which nothing reads again; closing them ends their mesh
        // loops (parked tasks whose wakers form a cycle would otherwise
        // outlive the executor).
        self.in_flight.clear();
        for shard in std::mem::take(&mut self.shards) {
            shard.close().await;
        }
        self.disk = image;
        {
            let mut model = self.model.borrow_mut();
            model.members.clear();
            model.committing.clear();
        }
        self.note(format!("power cut {} ({mode:?})", self.cuts));
        match start_shards(&self.disk, self.dir.path(), &self.clock, self.sync).await {
            Ok(shards) => self.shards = shards,
            Err(error) => {
                self.model.borrow_mut().violation(format!("cut {}: the broker did not start: {error}", self.cuts));
                // Nothing more can be checked; a fresh disk lets the run end.
                self.disk = SimStorage::new();
                self.shards =
                    start_shards(&self.disk, self.dir.path(), &self.clock, self.sync).await.unwrap_or_default();
                return;
            }
        }
        self.check_everything().await;
    }

    /// Reads every partition from its start and every group's commits.
    async fn check_everything(&mut self) {
        let topics: Vec<(String, u32)> = self.model.borrow().topics.iter().map(|(t, n)| (t.clone(), *n)).collect();
        for (topic, partitions) in &topics {
            for partition in 0..*partitions {
                let key = (topic.clone(), partition);
                let shard = self.any_shard();
                let (payload, high_watermark) = match read_all(&shard, &key).await {
                    Ok(read) => read,
                    Err(problem) => {
                        self.model.borrow_mut().violation(format!("cut {}: {problem}", self.cuts));
                        continue;
                    }
                };
                self.note(format!("after cut {}: {topic}/{partition} holds 0..{high_watermark}", self.cuts));
                let mut model = self.model.borrow_mut();
                let found = match check_records(&mut model, &key, &payload, Some(0)) {
                    Ok(found) => found.unwrap_or(0),
                    Err(problem) => {
                        model.violation(format!("cut {}: {problem}", self.cuts));
                        continue;
                    }
                };
                if found != high_watermark {
                    model.violation(format!(
                        "cut {}: {topic}/{partition} read up to {found}, hw {high_watermark}",
                        self.cuts
                    ));
                }
                let lost: Vec<u64> =
                    model.acked.get(&key).into_iter().flat_map(|r| r.range(found..)).map(|(o, _)| *o).collect();
                if let (Some(first), Some(last)) = (lost.first(), lost.last()) {
                    model.violation(format!(
                        "cut {}: {} acknowledged records of {topic}/{partition} lost ({first}..={last}, the log ends at {found})",
                        self.cuts,
                        lost.len()
                    ));
                }
                let seen = model.seen_end.get(&key).copied().unwrap_or(0);
                if seen > found {
                    model.violation(format!(
                        "cut {}: a consumer saw {topic}/{partition} up to {seen}, but only {found} survived",
                        self.cuts
                    ));
                }
                // What survived is durable now: it is the new baseline.
                let records = record_values(&payload);
                model.acked.insert(key.clone(), records.into_iter().collect());
                model.seen_end.insert(key, found);
            }
        }
        self.check_commits().await;
    }

    async fn check_commits(&mut self) {
        let topics: BTreeMap<String, u32> = self.model.borrow().topics.clone();
        for topic in TOPICS {
            let group = format!("g-{topic}");
            let shard = self.any_shard();
            let request = FetchCommittedRequest { group: group.clone(), partitions: None };
            let Response::FetchCommitted(answer) = shard.group_request(Request::FetchCommitted(request)).await else {
                self.model.borrow_mut().violation(format!("{group}: fetch committed answered with something else"));
                continue;
            };
            let found: BTreeMap<(String, u32), u64> = answer
                .offsets
                .iter()
                .filter_map(|c| Some(((c.topic.clone(), c.partition.0), c.offset?.get())))
                .collect();
            self.note(format!("after cut {}: {group} committed {found:?}", self.cuts));
            let mut model = self.model.borrow_mut();
            for ((t, partition), offset) in &found {
                if !topics.contains_key(t) {
                    model.violation(format!("cut {}: {group} has a commit of deleted topic {t}", self.cuts));
                    continue;
                }
                let key = (group.clone(), t.clone(), *partition);
                let acked = model.committed.get(&key).copied();
                let maybe = model.maybe_committed.get(&key).is_some_and(|values| values.contains(offset));
                if acked != Some(*offset) && !maybe {
                    model.violation(format!(
                        "cut {}: {group} {t}/{partition} committed at {offset}, acknowledged {acked:?}",
                        self.cuts
                    ));
                }
            }
            let keys: Vec<CommitKey> = model.committed.keys().filter(|(g, _, _)| *g == group).cloned().collect();
            for key in keys {
                if !found.contains_key(&(key.1.clone(), key.2)) {
                    model.violation(format!(
                        "cut {}: {group} lost its acknowledged commit of {}/{}",
                        self.cuts, key.1, key.2
                    ));
                }
            }
            model.committed.retain(|(g, _, _), _| *g != group);
            model.maybe_committed.retain(|(g, _, _), _| *g != group);
            for ((t, partition), offset) in found {
                if topics.contains_key(&t) {
                    model.committed.insert((group.clone(), t, partition), offset);
                }
            }
        }
    }
}

fn fetch_partition(key: &PartitionKey, from: u64) -> FetchPartition {
    FetchPartition {
        topic: key.0.clone(),
        partition: PartitionId(key.1),
        offset: Offset::new(from).unwrap_or(Offset::ZERO),
        max_bytes: FETCH_BYTES_MAX,
    }
}

fn fetch_request(key: &PartitionKey, from: u64) -> FetchRequest {
    FetchRequest {
        max_wait_ms: 0,
        min_bytes: 0,
        max_bytes: FETCH_BYTES_MAX,
        partitions: vec![fetch_partition(key, from)],
    }
}

/// Every batch of a partition from offset 0, and its high watermark.
async fn read_all(shard: &Rc<Shard<SimStorage>>, key: &PartitionKey) -> Result<(Vec<u8>, u64), String> {
    let mut payload = Vec::new();
    let mut next = 0;
    loop {
        let outcome = shard.fetch(fetch_request(key, next)).await;
        let Some(result) = outcome.results.first() else { return Err("a fetch got no result".into()) };
        if !result.error.is_ok() {
            return Err(format!("reading {}/{} from {next}: {:?}", key.0, key.1, result.error));
        }
        let high_watermark = result.high_watermark.get();
        let data = outcome.payload.contiguous();
        let mut rest = &data[..];
        while !rest.is_empty() {
            let view = BatchView::parse(rest, BATCH_BYTES_MAX).map_err(|error| format!("a damaged batch: {error}"))?;
            next = u64::try_from(view.last_offset()).map_err(|_| "a negative offset")? + 1;
            rest = &rest[view.total_len()..];
        }
        payload.extend_from_slice(&data);
        if data.is_empty() || next >= high_watermark {
            return Ok((payload, high_watermark));
        }
    }
}

/// The (offset, value) of every record in `payload`.
fn record_values(mut payload: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut found = Vec::new();
    while let Ok(view) = BatchView::parse(payload, BATCH_BYTES_MAX) {
        let base = u64::try_from(view.base_offset()).unwrap_or(0);
        if let Ok(records) = view.records() {
            for (i, record) in records.flatten().enumerate() {
                found.push((base + i as u64, record.value.unwrap_or_default().to_vec()));
            }
        }
        payload = &payload[view.total_len()..];
    }
    found
}

/// Checks fetched batches against the model: valid, contiguous, starting
/// at or before `from`, each record acked there or at least sent to this
/// partition, none twice. Returns the offset after the last record.
fn check_records(
    model: &mut Model,
    key: &PartitionKey,
    payload: &[u8],
    from: Option<u64>,
) -> Result<Option<u64>, String> {
    let name = format!("{}/{}", key.0, key.1);
    let mut rest = payload;
    let mut expected = None;
    let mut values_seen = BTreeSet::new();
    while !rest.is_empty() {
        let view =
            BatchView::parse(rest, BATCH_BYTES_MAX).map_err(|error| format!("{name}: a damaged batch: {error}"))?;
        let base = u64::try_from(view.base_offset()).map_err(|_| format!("{name}: a negative base offset"))?;
        match expected {
            None => {
                if from.is_some_and(|from| base > from) {
                    return Err(format!("{name}: asked from {from:?}, the first batch starts at {base}"));
                }
            }
            Some(expected) if base != expected => {
                return Err(format!("{name}: a gap or overlap: batch at {base}, expected {expected}"));
            }
            Some(_) => {}
        }
        let records = view.records().map_err(|error| format!("{name}: unreadable records: {error}"))?;
        for (i, record) in records.enumerate() {
            let record = record.map_err(|error| format!("{name}: unreadable record: {error}"))?;
            let offset = base + i as u64;
            let value = record.value.unwrap_or_default();
            if let Some(acked) = model.acked.get(key).and_then(|records| records.get(&offset)) {
                if acked.as_slice() != value {
                    return Err(format!("{name}: offset {offset} holds other bytes than the ones acknowledged there"));
                }
            } else if !model.sent.get(key).is_some_and(|sent| sent.contains(value)) {
                return Err(format!("{name}: offset {offset} holds a record no client sent to this topic"));
            }
            if !values_seen.insert(value.to_vec()) {
                return Err(format!("{name}: a record appears twice (again at {offset})"));
            }
        }
        expected = Some(base + view.record_count() as u64);
        rest = &rest[view.total_len()..];
    }
    Ok(expected)
}

/// Runs one seed on an executor of its own.
fn simulate(seed: u64, operations: usize, control: Control) -> Report {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(64 << 10)
        .ring_depth(32)
        // One task queue, never preempted by the clock: the schedule
        // depends on the seed alone.
        .preempt_timer(Duration::from_secs(3600))
        .spawn(move || async move { Sim::new(seed, control).await.run(operations).await })
        .expect("starting a simulation executor")
        .join()
        .expect("the simulation panicked")
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|value| value.parse().ok())
}

const OPERATIONS: usize = 300;

#[test]
fn power_cuts_lose_nothing_acknowledged() {
    let seeds: Vec<u64> = match env_number("RB_SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let first = env_number("RB_SIM_FIRST_SEED").unwrap_or(1);
            (first..first + env_number("RB_SIM_SEEDS").unwrap_or(60)).collect()
        }
    };
    let (mut operations, mut cuts, mut expired) = (0, 0, 0);
    for seed in &seeds {
        let report = simulate(*seed, OPERATIONS, Control::None);
        assert!(
            report.violations.is_empty(),
            "seed {seed} broke a promise (replay: RB_SIM_SEED={seed} cargo nextest run --test broker_sim):\n{}\n\ntrace:\n{}",
            report.violations.join("\n"),
            report.trace.join("\n")
        );
        if seeds.len() == 1 {
            println!("trace of seed {seed}:\n{}", report.trace.join("\n"));
        }
        operations += report.operations;
        cuts += report.cuts;
        expired += report.expired;
    }
    println!(
        "{} seeds, {operations} operations, {cuts} power cuts, {expired} group members expired, 0 violations",
        seeds.len()
    );
    assert!(cuts >= seeds.len(), "every seed ends with a power cut and a check");
    if seeds.len() >= 10 {
        assert!(expired > 0, "the workload lets sessions expire");
    }
}

#[test]
fn a_replayed_seed_gives_the_same_trace() {
    let seed = env_number("RB_SIM_SEED").unwrap_or(7);
    let first = simulate(seed, OPERATIONS, Control::None);
    let second = simulate(seed, OPERATIONS, Control::None);
    assert!(first.trace.len() > 100, "the trace records the run ({} lines)", first.trace.len());
    assert!(first.trace.iter().any(|line| line.starts_with("power cut")));
    assert!(first.trace == second.trace, "seed {seed} replayed differently");
    let other = simulate(seed + 1, OPERATIONS, Control::None);
    assert!(other.trace != first.trace, "another seed is another run");
}

/// The checker must catch a broker that acknowledges before fsync.
#[test]
fn acks_before_fsync_are_caught() {
    let caught =
        (1..=20).flat_map(|seed| simulate(seed, OPERATIONS, Control::AckBeforeSync).violations).collect::<Vec<_>>();
    assert!(
        caught.iter().any(|v| v.contains("acknowledged records") && v.contains("lost")),
        "acks before fsync went unnoticed: {caught:?}"
    );
}

/// And a disk that says data is durable when it is not: appends and
/// commits "applied" before they are durable.
#[test]
fn a_lying_disk_is_caught() {
    let caught =
        (1..=20).flat_map(|seed| simulate(seed, OPERATIONS, Control::LyingDisk).violations).collect::<Vec<_>>();
    assert!(
        caught.iter().any(|v| v.contains("acknowledged records") && v.contains("lost")),
        "lost records: {caught:?}"
    );
    assert!(caught.iter().any(|v| v.contains("lost its acknowledged commit")), "lost commits: {caught:?}");
}
