//! One loadgen executor: its producers, ack collectors, consumers and lag
//! sampler, all on one pinned glommio thread with its own [`Client`].
//!
//! Thread-per-core like the broker: nothing here is shared with other
//! executors except a handful of atomics (start signal, progress counters,
//! "producers finished", abort). Each executor measures into its own
//! [`Measurements`]; the main thread merges them at the end.
//!
//! Per event the hot path is: rewrite the 24-byte header of a reused value
//! buffer, `Producer::send` (which copies it into the open batch), poll the
//! record's ack future once and queue it on the producer's lane (see
//! `acks`: acks are timed exactly even when batches are answered out of
//! order).
//!
//! Consumer group members (fanout, pipeline) join before the executor
//! reports ready and keep polling until the run starts, so the main thread
//! can hold the start until every group is stable. Each member checks what
//! it consumes into its group's own tracker and histogram; a pipeline
//! relay forwards each polled batch to the next stage's topic, waits for
//! the acks, and only then commits (at least once).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use ringbroker::client::{
    BatchStages, ClientError, GroupConfig, GroupRecord, GroupStats, PartitionConsumer, Producer, ProducerConfig,
    ProducerRecord, SendFuture, SentRun, StartPosition, Transport,
};
use ringbroker::protocol::types::{AckLevel, Offset, PartitionId};
use ringbroker::protocol::wire::OffsetSpec;

use crate::acks::{Lane, Pending, SameBatch};
use crate::clock::Clock;
use crate::link::{GroupMember, Link, Protocol};
use crate::metrics::Measurements;
use crate::payload::{self, Bitmap, EventHeader, Seen, SeqTracker};
use crate::schedule::Schedule;

/// What a record's ack future resolves to.
type AckResult = Result<Option<Offset>, ClientError>;

/// Why an executor, producer, consumer or group member stopped before the
/// end of the run. Reported as text among the run's errors.
#[derive(Debug, thiserror::Error)]
enum WorkerError {
    #[error("connecting to {broker}: {error}")]
    Connect { broker: SocketAddr, error: ClientError },
    #[error("topic {topic}: {error}")]
    Placement { topic: String, error: ClientError },
    #[error("joining group {group}: {error}")]
    Join { group: String, error: ClientError },
    #[error("polling {topic}: {error}")]
    Poll { topic: String, error: ClientError },
    /// A member's poll before the start returned records while the start
    /// was still unset: something else writes to the topic.
    #[error("{0} records consumed before the run started")]
    EarlyRecords(usize),
    #[error("stopped: the run was aborted")]
    Aborted,
    #[error("starting a producer: {0}")]
    Producer(ClientError),
    #[error("send: {0}")]
    Send(ClientError),
    #[error("reading the end of {topic} partition {partition}: {error}")]
    End { topic: String, partition: u32, error: ClientError },
    #[error("fetching {topic} partition {partition}: {error}")]
    Fetch { topic: String, partition: u32, error: ClientError },
    #[error("{topic} partition {partition}: {behind} records behind its end after the drain timeout")]
    PartitionBehind { topic: String, partition: u32, behind: u64 },
    #[error("{behind} records of {topic} not consumed after the drain timeout")]
    GroupBehind { topic: String, behind: u64 },
    #[error("forwarding to {topic}: {error}")]
    Forward { topic: String, error: ClientError },
    #[error("{failed} forwards to {topic} failed, the first: {first}")]
    ForwardsFailed { topic: String, failed: usize, first: ClientError },
    /// One of the above, met by a member of the group with this label.
    #[error("{label}: {error}")]
    Group { label: String, error: Box<WorkerError> },
}

impl WorkerError {
    fn in_group(self, label: &str) -> WorkerError {
        WorkerError::Group { label: label.to_string(), error: Box::new(self) }
    }
}

/// glommio 0.9.0 can miss a wake-up sent from another thread as an executor
/// goes to sleep; a timer this often bounds how late it is noticed.
const WAKE_INTERVAL: Duration = Duration::from_millis(1);

/// A producer yields to the executor's other tasks (collectors, consumers)
/// at least this often, so they measure promptly even when `send` never
/// has to wait.
const EVENTS_PER_YIELD: u64 = 256;

/// A producer hands the client this many events at a time
/// (`Producer::try_send_run`), which makes the client's checks and lookups
/// once per run instead of per event. In a burst one clock reading
/// timestamps the run: 32 events take about ten microseconds to send, far
/// below the latencies measured.
const EVENTS_PER_RUN: u64 = 32;

/// Open-loop producers wake on a grid this fine (see [`wake_time`]).
const SEND_QUANTUM_NS: u64 = 100_000;

/// Progress counters shared with the main thread are updated at most this
/// often per task, not per event.
const PROGRESS_INTERVAL_NS: u64 = 50_000_000;

/// How long a consumer's fetch waits at the end of a partition; also how
/// quickly it notices that the producers have finished.
const POLL_WAIT: Duration = Duration::from_millis(100);

/// A partition's end is taken as final once two readings this far apart
/// agree (with `acks = none` or `written`, records become visible a little
/// after their producer is done).
const SETTLE_INTERVAL: Duration = Duration::from_millis(20);
/// How long the end of a partition written without durable acks must stay
/// put before it is taken as final (a CI run once saw 20 ms pass without an
/// fdatasync completing, and took three quarters of an acks-0 run as lost).
const NOT_DURABLE_SETTLE_QUIET: Duration = Duration::from_millis(500);

/// The largest fetch a consumer asks for. A fetch returns whole batches up to
/// this size; at 512 KiB a consumer of 256 KiB batches got one batch per
/// round trip and fell seconds behind a 600 MB/s producer.
const FETCH_BYTES_MAX: u32 = 2 << 20;

/// Group members heartbeat this often (the client's default is a third of
/// the 10 s session): a member learns of a rebalance at its next
/// heartbeat, so this bounds how long the groups take to settle at start.
const GROUP_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(250);

/// How long a member's poll waits while the run has not started yet.
const SETTLE_POLL_WAIT: Duration = Duration::from_millis(5);

/// A relay commits (always after its forwards are acknowledged) at most
/// this often. A commit costs a round trip to the coordinator and a write
/// there (~4 ms on the dev VM); committing after every polled batch took a
/// quarter of a relay's time. Between commits, a rebalance or crash means
/// re-reading (and re-forwarding) at most this much: at-least-once either
/// way.
const RELAY_COMMIT_INTERVAL_NS: u64 = 100_000_000;

/// A member's `owned` slot while it is not stable.
const NOT_STABLE: usize = usize::MAX;

/// Everything the executors need to know about the run; built once, shared
/// read-only.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Where producers and consumers connect: the native address, or the
    /// Kafka bootstrap address.
    pub broker: SocketAddr,
    /// TLS to the native listeners (`None`: plain).
    pub tls: Option<ringbroker::client::ClientTls>,
    pub protocol: Protocol,
    /// The producers' topic.
    pub topic: String,
    /// Every topic of the run, the producers' first.
    pub topics: Vec<String>,
    /// Partitions of every topic.
    pub partitions: u32,
    /// Consumer groups (fanout, pipeline); consumed by their members
    /// instead of `consumers`.
    pub groups: Vec<GroupPlan>,
    /// Bytes per event value.
    pub event_bytes: usize,
    pub producer: ProducerConfig,
    pub producers: Vec<ProducerPlan>,
    pub consumers: Vec<ConsumerPlan>,
    /// How long consumers may take to catch up once every producer is done.
    pub drain_timeout: Duration,
}

impl Plan {
    /// Events each producer plans to send, indexed by producer id.
    pub fn planned(&self) -> Vec<u64> {
        self.producers.iter().map(|producer| producer.events).collect()
    }
}

#[derive(Debug, Clone)]
pub struct ProducerPlan {
    pub id: u32,
    pub executor: usize,
    pub events: u64,
    /// `None`: send as fast as the broker takes events (closed loop).
    pub schedule: Option<Schedule>,
}

#[derive(Debug, Clone)]
pub struct ConsumerPlan {
    pub executor: usize,
    pub partitions: Vec<u32>,
    /// Throttles this consumer (all its partitions together).
    pub events_per_s: Option<u64>,
}

/// A consumer group of the run.
#[derive(Debug, Clone)]
pub struct GroupPlan {
    pub name: String,
    /// Short, for reports: "group 1", "stage 0".
    pub label: String,
    pub topic: String,
    pub role: GroupRole,
    /// The group whose members write this group's topic; `None`: the
    /// producers.
    pub upstream: Option<usize>,
    /// The executor of each member.
    pub members: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRole {
    /// One of the fanout groups: each must receive every event.
    Fanout,
    /// A pipeline stage forwarding every event to this topic.
    Relay(String),
    /// The pipeline's last stage.
    Last,
}

impl GroupRole {
    /// Whether the group is at the end of the flow: its deliveries are the
    /// run's consumed events (counted in the series, the totals and `e2e`).
    pub fn is_end(&self) -> bool {
        !matches!(self, GroupRole::Relay(_))
    }

    pub fn name(&self) -> &'static str {
        match self {
            GroupRole::Fanout => "fanout",
            GroupRole::Relay(_) => "relay",
            GroupRole::Last => "last",
        }
    }
}

/// What the members of one group share across executors.
#[derive(Debug, Default)]
pub struct GroupState {
    /// Per member: the partitions it owns while stable, [`NOT_STABLE`]
    /// otherwise (published until the run starts).
    owned: Vec<AtomicUsize>,
    /// Members that reached the end of the topic (or failed).
    finished: AtomicUsize,
    /// Members still in the group; 0: the group is done, its forwards (if
    /// it relays) all acknowledged, so the next stage's topic is complete.
    pub members_left: AtomicUsize,
    /// Per partition: the furthest position any member consumed to (and,
    /// relaying, forwarded and had acknowledged).
    positions: Vec<AtomicU64>,
}

impl GroupState {
    fn new(members: usize, partitions: u32) -> GroupState {
        GroupState {
            owned: (0..members).map(|_| AtomicUsize::new(NOT_STABLE)).collect(),
            finished: AtomicUsize::new(0),
            members_left: AtomicUsize::new(members),
            positions: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Partitions owned by all members together, if every member is stable.
    pub fn owned_when_stable(&self) -> Option<usize> {
        self.owned
            .iter()
            .map(|owned| owned.load(Ordering::SeqCst))
            .try_fold(0, |sum, owned| (owned != NOT_STABLE).then(|| sum + owned))
    }

    fn advance(&self, partition: PartitionId, position: Offset) {
        if let Some(slot) = self.positions.get(partition.0 as usize) {
            slot.fetch_max(position.get(), Ordering::SeqCst);
        }
    }

    /// Records between the furthest positions and `ends`.
    fn behind(&self, ends: &[Offset]) -> u64 {
        ends.iter().zip(&self.positions).map(|(end, at)| end.get().saturating_sub(at.load(Ordering::SeqCst))).sum()
    }
}

/// The little that executors and the main thread share.
#[derive(Debug, Default)]
pub struct Shared {
    pub ready: AtomicUsize,
    /// `Clock::now_ns` of the run's start; 0 until the main thread starts it.
    pub start_ns: AtomicU64,
    pub producers_left: AtomicUsize,
    pub workers_done: AtomicUsize,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub consumed: AtomicU64,
    pub aborted: AtomicBool,
    /// Executors finish only once the main thread has read their CPU time
    /// (a thread that exited is gone from /proc).
    pub released: AtomicBool,
    /// Indexed like `Plan::groups`.
    pub groups: Vec<GroupState>,
}

impl Shared {
    pub fn new(plan: &Plan) -> Shared {
        Shared {
            producers_left: AtomicUsize::new(plan.producers.len()),
            groups: plan.groups.iter().map(|group| GroupState::new(group.members.len(), plan.partitions)).collect(),
            ..Shared::default()
        }
    }

    pub fn abort(&self) {
        self.aborted.store(true, Ordering::SeqCst);
    }

    pub fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Relaxed)
    }
}

/// Starts executor `index` pinned to `cpu`; it returns what it measured.
pub fn spawn(
    index: usize,
    cpu: usize,
    io_memory_bytes: usize,
    spin: Duration,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    clock: Clock,
) -> std::io::Result<ExecutorJoinHandle<Measurements>> {
    let mut builder =
        LocalExecutorBuilder::new(Placement::Fixed(cpu)).name(&format!("loadgen-{index}")).io_memory(io_memory_bytes);
    if !spin.is_zero() {
        builder = builder.spin_before_park(spin);
    }
    builder.spawn(move || run(index, plan, shared, clock)).map_err(|error| std::io::Error::other(error.to_string()))
}

/// Per-executor state shared by its tasks.
struct Ctx {
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    clock: Clock,
    start_ns: u64,
    client: Link,
    measurements: RefCell<Measurements>,
    /// Each partition consumer's last known lag, summed by the sampler.
    lags: RefCell<Vec<Rc<Cell<u64>>>>,
    progress: Progress,
}

async fn run(index: usize, plan: Arc<Plan>, shared: Arc<Shared>, clock: Clock) -> Measurements {
    ringbroker::runtime::spawn_wake_ticker(WAKE_INTERVAL);
    let joined = match connect(&plan).await {
        Ok(client) => join_members(index, &plan, &client).await.map(|members| (client, members)),
        Err(error) => Err(WorkerError::Connect { broker: plan.broker, error }),
    };
    if joined.is_err() {
        // At once: the main thread waits for the groups to settle otherwise.
        shared.abort();
    }
    shared.ready.fetch_add(1, Ordering::SeqCst);
    let joined = match joined {
        Ok((client, mut members)) => match settle(&plan, &mut members, &shared).await {
            Ok(()) => Ok((client, members)),
            Err(error) => {
                shared.abort();
                Err(error)
            }
        },
        Err(error) => Err(error),
    };
    let start_ns = wait_for_start(&shared).await;
    let measurements = match joined {
        Ok((client, members)) => measure(index, &plan, &shared, clock, start_ns, client, members).await,
        Err(error) => {
            let mut measurements = Measurements::for_plan(start_ns, &plan);
            measurements.error(format!("executor {index}: {error}"));
            measurements
        }
    };
    shared.workers_done.fetch_add(1, Ordering::SeqCst);
    while !shared.released.load(Ordering::SeqCst) {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    measurements
}

/// Runs this executor's producers, consumers and group members to the end.
async fn measure(
    index: usize,
    plan: &Arc<Plan>,
    shared: &Arc<Shared>,
    clock: Clock,
    start_ns: u64,
    client: Link,
    members: Vec<Member>,
) -> Measurements {
    let measurements = RefCell::new(Measurements::for_plan(start_ns, plan));
    let ctx = Rc::new(Ctx {
        plan: Arc::clone(plan),
        shared: Arc::clone(shared),
        clock,
        start_ns,
        client,
        measurements,
        lags: RefCell::new(Vec::new()),
        progress: Progress::default(),
    });
    let producers: Vec<_> = plan
        .producers
        .iter()
        .filter(|producer| producer.executor == index)
        .map(|producer| glommio::spawn_local(produce(Rc::clone(&ctx), producer.clone())))
        .collect();
    let mut consumers = Vec::new();
    for consumer in plan.consumers.iter().filter(|consumer| consumer.executor == index) {
        let throttle = consumer.events_per_s.map(|rate| Rc::new(Throttle::new(rate, start_ns)));
        let link = ctx.client.for_consumer();
        for &partition in &consumer.partitions {
            let lag = Rc::new(Cell::new(0));
            ctx.lags.borrow_mut().push(Rc::clone(&lag));
            let task = consume_partition(
                Rc::clone(&ctx),
                link.clone(),
                partition,
                throttle.clone(),
                lag,
                consumer.events_per_s,
            );
            consumers.push(glommio::spawn_local(task));
        }
    }
    for member in members {
        consumers.push(glommio::spawn_local(consume_group(Rc::clone(&ctx), member)));
    }
    // Dropping the sampler's task at the end cancels it. Group members do
    // not know their lag: with groups there is no lag series.
    let sampler = (!plan.consumers.is_empty()).then(|| glommio::spawn_local(sample_lag(Rc::clone(&ctx))));
    for task in producers {
        task.await;
    }
    for task in consumers {
        task.await;
    }
    drop(sampler);
    ctx.progress.flush(shared);
    ctx.measurements.replace(Measurements::new(start_ns, &[], 0))
}

async fn connect(plan: &Plan) -> Result<Link, ClientError> {
    let client = Link::connect(plan.protocol, plan.broker, plan.tls.clone()).await?;
    // Learn the topic's placement now, so the first send does not wait for it.
    client.partitions(&plan.topic).await?;
    Ok(client)
}

/// A consumer group member of this executor.
struct Member {
    /// Index into `Plan::groups`.
    group: usize,
    /// Index among the group's members.
    index: usize,
    consumer: GroupMember,
    /// Records a settling poll returned after the run had started.
    early: Vec<GroupRecord>,
}

fn group_config(group: &GroupPlan) -> GroupConfig {
    let mut config = GroupConfig::new(group.name.clone(), vec![group.topic.clone()]);
    config.heartbeat_interval = Some(GROUP_HEARTBEAT_INTERVAL);
    config.max_bytes = FETCH_BYTES_MAX;
    if matches!(group.role, GroupRole::Relay(_)) {
        // A relay commits itself, once its forwards are acknowledged.
        config.auto_commit = None;
    }
    config
}

/// Joins this executor's members of every group.
async fn join_members(index: usize, plan: &Plan, link: &Link) -> Result<Vec<Member>, WorkerError> {
    let mut members = Vec::new();
    if plan.groups.is_empty() {
        return Ok(members);
    }
    for (group_index, group) in plan.groups.iter().enumerate() {
        for (member_index, _) in group.members.iter().enumerate().filter(|(_, executor)| **executor == index) {
            if let GroupRole::Relay(next) = &group.role {
                // Learn the next topic's placement now, not on the first forward.
                link.partitions(next)
                    .await
                    .map_err(|error| WorkerError::Placement { topic: next.clone(), error }.in_group(&group.label))?;
            }
            let consumer = link
                .join_group(group_config(group))
                .await
                .map_err(|error| WorkerError::Join { group: group.name.clone(), error }.in_group(&group.label))?;
            members.push(Member { group: group_index, index: member_index, consumer, early: Vec::new() });
        }
    }
    Ok(members)
}

/// Polls the members until the run starts, publishing whether each is
/// stable and how many partitions it owns. Nothing is produced before the
/// start, so the polls return nothing.
async fn settle(plan: &Plan, members: &mut [Member], shared: &Shared) -> Result<(), WorkerError> {
    if members.is_empty() {
        return Ok(());
    }
    while shared.start_ns.load(Ordering::SeqCst) == 0 && !shared.is_aborted() {
        for member in members.iter_mut() {
            let group = &plan.groups[member.group];
            let records = member
                .consumer
                .poll(SETTLE_POLL_WAIT)
                .await
                .map_err(|error| WorkerError::Poll { topic: group.topic.clone(), error }.in_group(&group.label))?;
            if !records.is_empty() {
                // Producers start only once the start is set, so records
                // mean it was set during this poll (producers on another
                // executor went at once): they belong to the run.
                if shared.start_ns.load(Ordering::SeqCst) == 0 {
                    return Err(WorkerError::EarlyRecords(records.len()).in_group(&group.label));
                }
                member.early.extend(records);
                break;
            }
            let owned = if member.consumer.is_stable() { member.consumer.assignment().len() } else { NOT_STABLE };
            shared.groups[member.group].owned[member.index].store(owned, Ordering::SeqCst);
        }
    }
    Ok(())
}

async fn wait_for_start(shared: &Shared) -> u64 {
    loop {
        let start_ns = shared.start_ns.load(Ordering::SeqCst);
        if start_ns != 0 {
            return start_ns;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

async fn produce(ctx: Rc<Ctx>, plan: ProducerPlan) {
    if let Err(error) = produce_events(&ctx, &plan).await {
        ctx.measurements.borrow_mut().error(format!("producer {}: {error}", plan.id));
        ctx.shared.abort();
    }
    ctx.shared.producers_left.fetch_sub(1, Ordering::SeqCst);
}

async fn produce_events(ctx: &Rc<Ctx>, plan: &ProducerPlan) -> Result<(), WorkerError> {
    let producer: Producer<Link> =
        Producer::new(ctx.client.clone(), ctx.plan.producer.clone()).map_err(WorkerError::Producer)?;
    let acked = Rc::new(RefCell::new(Bitmap::new(plan.events)));
    let lane: Rc<Lane<SendFuture>> = Rc::new(Lane::new());
    let collector =
        glommio::spawn_local(collect_acks(Rc::clone(ctx), plan.clone(), Rc::clone(&acked), Rc::clone(&lane)));
    let (sent, result) = send_events(ctx, plan, &producer, &lane, &acked).await;
    ctx.measurements.borrow_mut().sent += sent;
    producer.flush().await;
    // Every batch is answered now; the collector ends once it has seen the
    // last ack.
    lane.close();
    collector.await;
    let acked = std::mem::replace(&mut *acked.borrow_mut(), Bitmap::new(0));
    ctx.measurements.borrow_mut().acked.push((plan.id, acked));
    result
}

/// The send loop; returns how many events it sent. Bounded: `send` waits
/// once the producer's buffer is full, and each lane holds at most the
/// records of that buffer.
async fn send_events(
    ctx: &Ctx,
    plan: &ProducerPlan,
    producer: &Producer<Link>,
    lane: &Lane<SendFuture>,
    acked: &RefCell<Bitmap>,
) -> (u64, Result<(), WorkerError>) {
    let mut seq = 0;
    let result = send_loop(ctx, plan, producer, lane, acked, &mut seq).await;
    ctx.measurements.borrow_mut().series.record_sent(ctx.clock.now_ns(), seq % EVENTS_PER_YIELD);
    (seq, result)
}

async fn send_loop(
    ctx: &Ctx,
    plan: &ProducerPlan,
    producer: &Producer<Link>,
    lane: &Lane<SendFuture>,
    acked: &RefCell<Bitmap>,
    seq: &mut u64,
) -> Result<(), WorkerError> {
    let event_bytes = ctx.plan.event_bytes;
    // The values of one run, back to back; their padding is written once.
    let mut values: Vec<u8> = (0..EVENTS_PER_RUN).flat_map(|_| payload::new_value(event_bytes)).collect();
    let mut runs = Vec::new();
    // Open loop: events before this index are known to be due, so the clock
    // is read once per run of due events, not per event.
    let mut due = 0;
    while *seq < plan.events {
        let next = *seq;
        if ctx.shared.is_aborted() {
            return Err(WorkerError::Aborted);
        }
        // A run ends at the next yield, so that yields stay on their grid.
        let room = (plan.events - next).min(EVENTS_PER_YIELD - next % EVENTS_PER_YIELD).min(EVENTS_PER_RUN);
        // The run's send times: one clock reading for all in a burst (then
        // `burst_ns`); each event's intended time in open loop.
        let (count, burst_ns) = match &plan.schedule {
            None => (room, ctx.clock.now_ns()),
            Some(schedule) => {
                if next >= due {
                    let now_ns = ctx.clock.now_ns();
                    due = schedule.due_count(now_ns.saturating_sub(ctx.start_ns));
                    if next >= due {
                        let wake_ns = ctx.start_ns + wake_time(schedule.intended_ns(next));
                        glommio::timer::sleep(Duration::from_nanos(wake_ns.saturating_sub(now_ns))).await;
                        continue;
                    }
                }
                (room.min(due - next), 0)
            }
        };
        let from_ns = |event: u64| match &plan.schedule {
            None => burst_ns,
            Some(schedule) => ctx.start_ns + schedule.intended_ns(event),
        };
        // `count` is at most EVENTS_PER_RUN, so it fits a usize.
        let count = count as usize;
        let mut times_ms = [0i64; EVENTS_PER_RUN as usize];
        for (index, value) in values.chunks_exact_mut(event_bytes).take(count).enumerate() {
            let event = next + index as u64;
            let sent_unix_us = ctx.clock.unix_us(from_ns(event));
            payload::encode(value, &EventHeader { producer: plan.id, seq: event, sent_unix_us });
            times_ms[index] = (sent_unix_us / 1000) as i64;
        }
        // No key and no partition: the client's sticky choice fills one
        // partition's batch, then moves to the next. Spreading records
        // round-robin instead keeps every partition's batch open at once;
        // when the producer's buffer is full the client seals them all,
        // and batches shrink until each holds one record (seen with 1 KiB
        // events over 4 partitions: 1 event per produce request, 17 MB/s).
        // On the stack, a whole run's worth; the run is the first `count`.
        let records: [ProducerRecord<'_>; EVENTS_PER_RUN as usize] = std::array::from_fn(|index| ProducerRecord {
            topic: &ctx.plan.topic,
            partition: None,
            key: None,
            value: Some(&values[index * event_bytes..(index + 1) * event_bytes]),
            headers: &[],
            // Passed in so the client does not read the clock again.
            timestamp_ms: Some(times_ms[index]),
        });
        let records = &records[..count];
        // One call for the whole run spares the per-record cost of the
        // client's checks and lookups, and of an async call; only when the
        // buffer is full does the first record wait in `send`.
        runs.clear();
        let mut sent = producer.try_send_run(records, &mut runs).map_err(WorkerError::Send)?;
        if sent == 0 {
            let first = producer.send(records[0]).await.map_err(WorkerError::Send)?;
            runs.push(SentRun { first, count: 1 });
            sent = 1;
        }
        let now_ns = ctx.clock.now_ns();
        // A burst run's one send time; `None` in open loop, where each
        // event's own follows from its sequence number.
        let sent_at = plan.schedule.is_none().then_some(burst_ns);
        if sent_at.is_none() {
            // Sent once the producer took it: a full buffer delays the send.
            let mut measurements = ctx.measurements.borrow_mut();
            for event in next..next + sent as u64 {
                measurements.send_delay.saturating_record(now_ns.saturating_sub(from_ns(event)) / 1000);
            }
        }
        let mut run_seq = next;
        for run in runs.drain(..) {
            // At most EVENTS_PER_RUN records, so the count fits a u32.
            let pending = Pending { future: run.first, seq: run_seq, count: run.count as u32, from_ns: sent_at };
            run_seq += run.count as u64;
            if let Some(answered) = lane.push(pending) {
                record_acks(ctx, plan, acked, now_ns, [answered]);
            }
        }
        *seq += sent as u64;
        ctx.progress.sent.set(ctx.progress.sent.get() + sent as u64);
        if seq.is_multiple_of(EVENTS_PER_YIELD) {
            let sent_ns = sent_at.unwrap_or(now_ns);
            ctx.measurements.borrow_mut().series.record_sent(sent_ns, EVENTS_PER_YIELD);
            ctx.progress.maybe_flush(&ctx.shared, sent_ns);
            futures_lite::future::yield_now().await;
        }
    }
    Ok(())
}

/// When an open-loop producer wakes to send an event due at `intended_ns`
/// (both from the run start): the next multiple of [`SEND_QUANTUM_NS`].
///
/// Sleeping until each event's own time parks the executor per event, and
/// every glommio park costs an io_uring timeout and a membarrier IPI: at
/// 200k events/s that alone took 90% of a core. On a shared grid all the
/// producers of an executor wake together, at most once per quantum, and
/// send everything then due. The price is up to one quantum of send delay,
/// which is measured (`send_delay`) and counted in the latencies, as
/// coordinated-omission correction requires.
fn wake_time(intended_ns: u64) -> u64 {
    intended_ns.div_ceil(SEND_QUANTUM_NS) * SEND_QUANTUM_NS
}

/// Records the latencies of one lane's acks as its batches are answered.
///
/// The clock is read once per wake-up: every record found answered was
/// answered before the collector resumed (no other task ran since), so
/// that reading is the ack time of all of them — as exact as a reading per
/// record, at a fraction of the cost.
async fn collect_acks(ctx: Rc<Ctx>, plan: ProducerPlan, acked: Rc<RefCell<Bitmap>>, lane: Rc<Lane<SendFuture>>) {
    let mut ready = Vec::new();
    loop {
        let wakes = lane.answered().await;
        if wakes == 0 {
            break;
        }
        let now_ns = ctx.clock.now_ns();
        lane.take_ready(wakes, &mut ready);
        record_acks(&ctx, &plan, &acked, now_ns, ready.drain(..));
        ctx.progress.maybe_flush(&ctx.shared, now_ns);
    }
}

impl SameBatch for SendFuture {
    fn same_batch(&self, other: &SendFuture) -> bool {
        SendFuture::same_batch(self, other)
    }
}

/// Counts and times answered runs of records (see [`Lane`]): every record
/// of a run has the same ack time. In a burst they also share a send time,
/// so a run is one histogram entry with its record count; in open loop
/// each record's intended send time comes from the producer's schedule.
fn record_acks(
    ctx: &Ctx,
    plan: &ProducerPlan,
    acked: &RefCell<Bitmap>,
    now_ns: u64,
    answered: impl IntoIterator<Item = (Pending<SendFuture>, AckResult)>,
) {
    let mut measurements = ctx.measurements.borrow_mut();
    let mut acked = acked.borrow_mut();
    let latency_us = |from_ns: u64| now_ns.saturating_sub(from_ns) / 1000;
    for (Pending { future, seq, count, from_ns }, result) in answered {
        let events = u64::from(count);
        match result {
            Ok(Some(_offset)) => {
                for seq in seq..seq + events {
                    acked.insert(seq);
                }
                let stages = StageTimes::of(&ctx.clock, &future);
                match (from_ns, &plan.schedule) {
                    (Some(from_ns), _) => {
                        measurements.ack.saturating_record_n(latency_us(from_ns), events);
                        measurements.series.record_ack(now_ns, latency_us(from_ns), count);
                        if let Some(stages) = &stages {
                            let to_seal_us = stages.sealed_ns.saturating_sub(from_ns) / 1000;
                            measurements.ack_to_seal.saturating_record_n(to_seal_us, events);
                        }
                    }
                    (None, Some(schedule)) => {
                        for seq in seq..seq + events {
                            let intended_ns = ctx.start_ns + schedule.intended_ns(seq);
                            let latency_us = latency_us(intended_ns);
                            measurements.ack.saturating_record(latency_us);
                            measurements.series.record_ack(now_ns, latency_us, 1);
                            if let Some(stages) = &stages {
                                let to_seal_us = stages.sealed_ns.saturating_sub(intended_ns) / 1000;
                                measurements.ack_to_seal.saturating_record(to_seal_us);
                            }
                        }
                    }
                    (None, None) => unreachable!("a closed-loop producer stamps every run with its send time"),
                }
                if let Some(stages) = &stages {
                    stages.record_after_seal(&mut measurements, now_ns, events);
                }
                measurements.acked_count += events;
                measurements.last_ack_ns = measurements.last_ack_ns.max(Some(now_ns));
                ctx.progress.acked.set(ctx.progress.acked.get() + events);
            }
            Ok(None) => measurements.unconfirmed += events,
            Err(error) => {
                measurements.failed += events;
                if measurements.failed == 1 {
                    measurements.error(format!("first failed send: {error}"));
                }
            }
        }
    }
}

/// A batch's stages ([`BatchStages`]) as readings of the run's clock.
struct StageTimes {
    sealed_ns: u64,
    sent_ns: u64,
    answered_ns: u64,
}

impl StageTimes {
    /// `None` until the batch has been answered.
    fn of(clock: &Clock, future: &SendFuture) -> Option<StageTimes> {
        let BatchStages { sealed, sent, answered, .. } = future.stages();
        Some(StageTimes {
            sealed_ns: clock.ns_of(sealed?),
            sent_ns: clock.ns_of(sent?),
            answered_ns: clock.ns_of(answered?),
        })
    }

    /// Records the ack's parts after the seal, the same for every event of
    /// the batch; the ack was counted at `now_ns`.
    fn record_after_seal(&self, measurements: &mut Measurements, now_ns: u64, events: u64) {
        let us = |from_ns: u64, to_ns: u64| to_ns.saturating_sub(from_ns) / 1000;
        measurements.ack_dispatch.saturating_record_n(us(self.sealed_ns, self.sent_ns), events);
        measurements.ack_round_trip.saturating_record_n(us(self.sent_ns, self.answered_ns), events);
        measurements.ack_delivery.saturating_record_n(us(self.answered_ns, now_ns), events);
    }
}

/// Limits a consumer to a rate: events are let through no faster than
/// `events_per_s`, with at most [`THROTTLE_BURST_NS`] of unused rate saved
/// up while idle (a consumer that had nothing to do must not then race
/// through a backlog at unlimited speed).
struct Throttle {
    events_per_s: u64,
    /// When the events taken so far are paid for.
    next_ns: Cell<u64>,
}

/// How much idle time a throttled consumer may make up for.
const THROTTLE_BURST_NS: u64 = 50_000_000;

impl Throttle {
    fn new(events_per_s: u64, start_ns: u64) -> Throttle {
        Throttle { events_per_s: events_per_s.max(1), next_ns: Cell::new(start_ns) }
    }

    async fn take(&self, clock: &Clock, events: u64) {
        let now_ns = clock.now_ns();
        let from_ns = self.next_ns.get().max(now_ns.saturating_sub(THROTTLE_BURST_NS));
        let cost_ns = (u128::from(events) * 1_000_000_000 / u128::from(self.events_per_s)) as u64;
        self.next_ns.set(from_ns + cost_ns);
        let wait = clock.until(from_ns + cost_ns);
        if !wait.is_zero() {
            glommio::timer::sleep(wait).await;
        }
    }
}

/// Reads one partition from its start until it reaches the partition's end
/// after every producer finished, checking and timing every event.
async fn consume_partition(
    ctx: Rc<Ctx>,
    link: Link,
    partition: u32,
    throttle: Option<Rc<Throttle>>,
    lag: Rc<Cell<u64>>,
    events_per_s: Option<u64>,
) {
    // A throttled consumer fetches about 50 ms of its rate at a time, so its
    // pace (and the lag it reports) stays smooth.
    let fetch_bytes = events_per_s.map_or(FETCH_BYTES_MAX, |rate| {
        let bytes = rate.saturating_mul(ctx.plan.event_bytes as u64) / 20;
        bytes.clamp(16 << 10, u64::from(FETCH_BYTES_MAX)) as u32
    });
    let start = StartPosition::Offset(Offset::ZERO);
    let mut consumer =
        PartitionConsumer::new(link, ctx.plan.topic.clone(), PartitionId(partition), start).with_max_bytes(fetch_bytes);
    let mut end: Option<(Offset, u64)> = None;
    let mut advanced_ns = ctx.start_ns;
    // Each producer sends its events to this partition in sequence order,
    // so a sequence below the highest seen means the partition holds them
    // out of order.
    let mut highest_seq: Vec<Option<u64>> = vec![None; ctx.plan.producers.len()];
    let result = loop {
        if ctx.shared.is_aborted() {
            break Err(WorkerError::Aborted);
        }
        if end.is_none() && ctx.shared.producers_left.load(Ordering::SeqCst) == 0 {
            match settled_end(&ctx, &ctx.plan.topic, partition).await {
                Ok(offset) => end = Some((offset, ctx.clock.now_ns() + ctx.plan.drain_timeout.as_nanos() as u64)),
                Err(error) => break Err(WorkerError::End { topic: ctx.plan.topic.clone(), partition, error }),
            }
        }
        if let Some((end_offset, deadline_ns)) = end {
            let position = consumer.position().unwrap_or(Offset::ZERO);
            if position >= end_offset {
                break Ok(());
            }
            if ctx.clock.now_ns() > deadline_ns {
                let behind = end_offset.distance_from(position);
                break Err(WorkerError::PartitionBehind { topic: ctx.plan.topic.clone(), partition, behind });
            }
        }
        // Every record of one fetch arrived at the same moment: the clock is
        // read at the first one and serves them all.
        let mut arrived: Option<(u64, u64)> = None;
        let mut e2e_run = LatencyRun::default();
        let polled = consumer
            .poll_with(POLL_WAIT, |record| {
                let (_, now_unix_us) = *arrived.get_or_insert_with(|| {
                    let now_ns = ctx.clock.now_ns();
                    (now_ns, ctx.clock.unix_us(now_ns))
                });
                let mut measurements = ctx.measurements.borrow_mut();
                let measurements = &mut *measurements;
                let mut check = Check {
                    tracker: &mut measurements.tracker,
                    e2e: &mut measurements.e2e,
                    e2e_run: &mut e2e_run,
                    reordered: &mut measurements.reordered,
                    now_unix_us,
                };
                check.event(record.value(), &mut highest_seq);
            })
            .await;
        e2e_run.flush(&mut ctx.measurements.borrow_mut().e2e);
        let count = match polled {
            Ok(count) => count as u64,
            Err(error) => break Err(WorkerError::Fetch { topic: ctx.plan.topic.clone(), partition, error }),
        };
        lag.set(consumer.lag().unwrap_or(0));
        let Some((now_ns, _)) = arrived else {
            continue;
        };
        advanced_ns = now_ns;
        ctx.measurements.borrow_mut().series.record_consumed(now_ns, count);
        ctx.progress.consumed.set(ctx.progress.consumed.get() + count);
        ctx.progress.maybe_flush(&ctx.shared, now_ns);
        if let Some(throttle) = &throttle {
            throttle.take(&ctx.clock, count).await;
        }
    };
    let mut measurements = ctx.measurements.borrow_mut();
    match result {
        // Caught up when the last records arrived, not when that was noticed.
        Ok(()) => measurements.caught_up_ns = measurements.caught_up_ns.max(Some(advanced_ns)),
        Err(error) => {
            measurements.partitions_not_caught_up += 1;
            measurements.error(error.to_string());
        }
    }
}

/// Where one consumed event is checked and timed: the run's (partition
/// consumers) or a consumer group's tracker and histogram.
struct Check<'a> {
    tracker: &'a mut SeqTracker,
    e2e: &'a mut Histogram<u64>,
    /// Latencies not yet in `e2e`.
    e2e_run: &'a mut LatencyRun,
    reordered: &'a mut u64,
    now_unix_us: u64,
}

/// Consecutive equal latencies, recorded as one histogram entry with their
/// count: the events of one fetch arrive together, and a producer stamps a
/// run of events with one send time, so most come in such runs.
#[derive(Debug, Default)]
struct LatencyRun {
    latency_us: u64,
    count: u64,
}

impl LatencyRun {
    fn add(&mut self, latency_us: u64, histogram: &mut Histogram<u64>) {
        if self.count > 0 && latency_us != self.latency_us {
            self.flush(histogram);
        }
        self.latency_us = latency_us;
        self.count += 1;
    }

    /// Records the run; call it before the histogram is read.
    fn flush(&mut self, histogram: &mut Histogram<u64>) {
        if self.count > 0 {
            histogram.saturating_record_n(self.latency_us, self.count);
            self.count = 0;
        }
    }
}

impl Check<'_> {
    /// Gaps, duplicates and order per producer (`highest_seq`: the highest
    /// sequence seen per producer in this record's partition), end-to-end
    /// latency from the send time in the event.
    fn event(&mut self, value: Option<&[u8]>, highest_seq: &mut [Option<u64>]) {
        let header = value.and_then(payload::decode);
        let seen = self.tracker.observe(header.as_ref());
        let Some(header) = header.filter(|_| seen != Seen::Foreign) else {
            return;
        };
        self.e2e_run.add(self.now_unix_us.saturating_sub(header.sent_unix_us), self.e2e);
        let highest = &mut highest_seq[header.producer as usize];
        if seen == Seen::First && highest.is_some_and(|highest| header.seq < highest) {
            *self.reordered += 1;
        }
        *highest = (*highest).max(Some(header.seq));
    }
}

/// One group member, from the start until its group consumed its topic to
/// the end (or it failed); then it leaves the group.
async fn consume_group(ctx: Rc<Ctx>, member: Member) {
    let Member { group, mut consumer, early, .. } = member;
    let plan = &ctx.plan.groups[group];
    let before = consumer.stats();
    let relay = match &plan.role {
        GroupRole::Relay(next) => Producer::new(ctx.client.clone(), ctx.plan.producer.clone())
            .map(|producer| Some(Relay { producer, topic: next.clone(), pending: Vec::new() }))
            .map_err(WorkerError::Producer),
        _ => Ok(None),
    };
    let result = match relay {
        Ok(mut relay) => follow_group(&ctx, group, &mut consumer, early, relay.as_mut()).await,
        Err(error) => Err(error),
    }
    .map_err(|error| error.in_group(&plan.label));
    let after = consumer.stats();
    let state = &ctx.shared.groups[group];
    state.finished.fetch_add(1, Ordering::SeqCst);
    if result.is_ok() {
        // Nobody leaves before everyone is done: a member leaving hands its
        // partitions to the others, a rebalance that is no part of the run.
        while state.finished.load(Ordering::SeqCst) < plan.members.len() && !ctx.shared.is_aborted() {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }
    // Leaving commits what was consumed; a relay has committed already.
    let left = consumer.close().await;
    {
        let mut measurements = ctx.measurements.borrow_mut();
        let counted = plan.role.is_end();
        let measured = &mut measurements.groups[group];
        measured.rebalances += rebalances(&after) - rebalances(&before);
        measured.commit_failures += after.commit_failures - before.commit_failures;
        match result {
            Ok(advanced_ns) => {
                // Caught up when the last records arrived, not when that was noticed.
                measured.caught_up_ns = measured.caught_up_ns.max(Some(advanced_ns));
                if counted {
                    measurements.caught_up_ns = measurements.caught_up_ns.max(Some(advanced_ns));
                }
                if let Err(error) = left {
                    measurements.error(format!("{}: leaving group {}: {error}", plan.label, plan.name));
                }
            }
            Err(error) => {
                measured.members_not_caught_up += 1;
                measurements.partitions_not_caught_up += 1;
                measurements.error(error.to_string());
            }
        }
    }
    state.members_left.fetch_sub(1, Ordering::SeqCst);
}

fn rebalances(stats: &GroupStats) -> u64 {
    stats.assignment_changes + stats.rejoins
}

/// Consumes (and, relaying, forwards) until every partition of the group's
/// topic is consumed to the end its writers left it at; returns when the
/// last records arrived.
async fn follow_group(
    ctx: &Ctx,
    group: usize,
    consumer: &mut GroupMember,
    mut early: Vec<GroupRecord>,
    mut relay: Option<&mut Relay>,
) -> Result<u64, WorkerError> {
    let plan = &ctx.plan.groups[group];
    let state = &ctx.shared.groups[group];
    let mut highest_seq = vec![vec![None; ctx.plan.producers.len()]; ctx.plan.partitions as usize];
    let mut end: Option<(Vec<Offset>, u64)> = None;
    let mut advanced_ns = ctx.start_ns;
    let mut committed_ns = ctx.start_ns;
    loop {
        if ctx.shared.is_aborted() {
            return Err(WorkerError::Aborted);
        }
        let writers_done = match plan.upstream {
            None => ctx.shared.producers_left.load(Ordering::SeqCst) == 0,
            Some(upstream) => ctx.shared.groups[upstream].members_left.load(Ordering::SeqCst) == 0,
        };
        if end.is_none() && writers_done {
            let mut ends = Vec::new();
            for partition in 0..ctx.plan.partitions {
                let offset = settled_end(ctx, &plan.topic, partition).await.map_err(|error| WorkerError::End {
                    topic: plan.topic.clone(),
                    partition,
                    error,
                })?;
                ends.push(offset);
            }
            end = Some((ends, ctx.clock.now_ns() + ctx.plan.drain_timeout.as_nanos() as u64));
        }
        if let Some((ends, deadline_ns)) = &end {
            let behind = state.behind(ends);
            if behind == 0 {
                if relay.is_some() {
                    // Leaving does not commit for a relay (no auto-commit).
                    let _ = consumer.commit().await;
                }
                return Ok(advanced_ns);
            }
            if ctx.clock.now_ns() > *deadline_ns {
                return Err(WorkerError::GroupBehind { topic: plan.topic.clone(), behind });
            }
        }
        let records = if early.is_empty() {
            consumer.poll(POLL_WAIT).await.map_err(|error| WorkerError::Poll { topic: plan.topic.clone(), error })?
        } else {
            std::mem::take(&mut early)
        };
        if !records.is_empty() {
            let now_ns = ctx.clock.now_ns();
            advanced_ns = now_ns;
            check_group_records(ctx, group, now_ns, &records, &mut highest_seq);
            if let Some(relay) = relay.as_deref_mut() {
                relay.forward(&records).await?;
                ctx.measurements.borrow_mut().groups[group].forwarded += records.len() as u64;
                // Only now: everything polled so far is forwarded and
                // acknowledged. (A commit made inside the next `poll`, as a
                // partition is revoked, is just as safe: the loop polls
                // only once the last batch is acknowledged.) A failed
                // commit means re-reading after a rebalance, not a lost
                // event; the report counts them.
                let now_ns = ctx.clock.now_ns();
                if now_ns.saturating_sub(committed_ns) >= RELAY_COMMIT_INTERVAL_NS {
                    committed_ns = now_ns;
                    let _ = consumer.commit().await;
                }
            }
        }
        for (_, partition) in consumer.assignment() {
            if let Some(position) = consumer.position(&plan.topic, partition) {
                state.advance(partition, position);
            }
        }
    }
}

/// Checks and times the records of one poll of a group member.
fn check_group_records(
    ctx: &Ctx,
    group: usize,
    now_ns: u64,
    records: &[GroupRecord],
    highest_seq: &mut [Vec<Option<u64>>],
) {
    let mut measurements = ctx.measurements.borrow_mut();
    let Measurements { groups, series, .. } = &mut *measurements;
    let measured = &mut groups[group];
    let mut e2e_run = LatencyRun::default();
    let mut check = Check {
        tracker: &mut measured.tracker,
        e2e: &mut measured.e2e,
        e2e_run: &mut e2e_run,
        reordered: &mut measured.reordered,
        now_unix_us: ctx.clock.unix_us(now_ns),
    };
    for record in records {
        if let Some(highest) = highest_seq.get_mut(record.partition.0 as usize) {
            check.event(record.record.value.as_deref(), highest);
        }
    }
    e2e_run.flush(&mut measured.e2e);
    if ctx.plan.groups[group].role.is_end() {
        let count = records.len() as u64;
        series.record_consumed(now_ns, count);
        ctx.progress.consumed.set(ctx.progress.consumed.get() + count);
        ctx.progress.maybe_flush(&ctx.shared, now_ns);
    }
}

/// A pipeline stage's way to the next topic.
struct Relay {
    producer: Producer<Link>,
    topic: String,
    /// The acks of the batch being forwarded (kept for its allocation).
    pending: Vec<SendFuture>,
}

impl Relay {
    /// Forwards every record, unchanged, to the same partition of the next
    /// topic, and waits until all are acknowledged. The value (with the
    /// event header and its original send time), key and timestamp are
    /// kept; record headers are not (loadgen events have none).
    async fn forward(&mut self, records: &[GroupRecord]) -> Result<(), WorkerError> {
        for record in records {
            let consumed = &record.record;
            let forward = ProducerRecord {
                topic: &self.topic,
                // Same partition number (every stage has as many): a
                // partition's order is kept along the chain.
                partition: Some(record.partition),
                key: consumed.key.as_deref(),
                value: consumed.value.as_deref(),
                headers: &[],
                timestamp_ms: Some(consumed.timestamp_ms),
            };
            let sent = self.producer.send(forward).await;
            self.pending.push(sent.map_err(|error| WorkerError::Forward { topic: self.topic.clone(), error })?);
        }
        self.producer.flush().await;
        let (mut failed, mut first) = (0, None);
        for ack in self.pending.drain(..) {
            if let Err(error) = ack.await {
                failed += 1;
                first.get_or_insert(error);
            }
        }
        match first {
            None => Ok(()),
            Some(first) => Err(WorkerError::ForwardsFailed { topic: self.topic.clone(), failed, first }),
        }
    }
}

/// The partition's end once it stops moving. With durable acks every event
/// is durable once its producer is done, so one quiet interval suffices;
/// with `written` or none, events may still be on their way to the disk
/// (the end read is the durable end), and the end must stay put for
/// [`NOT_DURABLE_SETTLE_QUIET`], longer than a slow fdatasync.
async fn settled_end(ctx: &Ctx, topic: &str, partition: u32) -> Result<Offset, ClientError> {
    let partition = PartitionId(partition);
    let quiet = if ctx.plan.producer.acks == AckLevel::Durable { SETTLE_INTERVAL } else { NOT_DURABLE_SETTLE_QUIET };
    let read = || ctx.client.list_offsets(topic, partition, OffsetSpec::Latest);
    let mut last = read().await?.unwrap_or(Offset::ZERO);
    let mut unchanged_since = Instant::now();
    loop {
        glommio::timer::sleep(SETTLE_INTERVAL).await;
        let now = read().await?.unwrap_or(Offset::ZERO);
        if now != last {
            last = now;
            unchanged_since = Instant::now();
        } else if unchanged_since.elapsed() >= quiet {
            return Ok(now);
        }
    }
}

/// Records the executor's total consumer lag at the end of every second.
async fn sample_lag(ctx: Rc<Ctx>) {
    for second in 0.. {
        let at_ns = ctx.start_ns + (second + 1) * 1_000_000_000;
        glommio::timer::sleep(ctx.clock.until(at_ns)).await;
        let lag: u64 = ctx.lags.borrow().iter().map(|lag| lag.get()).sum();
        ctx.measurements.borrow_mut().series.at(second as usize).lag = Some(lag);
    }
}

/// Counts not yet published to the shared progress counters.
#[derive(Debug, Default)]
struct Progress {
    sent: Cell<u64>,
    acked: Cell<u64>,
    consumed: Cell<u64>,
    flushed_ns: Cell<u64>,
}

impl Progress {
    fn maybe_flush(&self, shared: &Shared, now_ns: u64) {
        if now_ns.saturating_sub(self.flushed_ns.get()) >= PROGRESS_INTERVAL_NS {
            self.flushed_ns.set(now_ns);
            self.flush(shared);
        }
    }

    fn flush(&self, shared: &Shared) {
        shared.sent.fetch_add(self.sent.take(), Ordering::Relaxed);
        shared.acked.fetch_add(self.acked.take(), Ordering::Relaxed);
        shared.consumed.fetch_add(self.consumed.take(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_wake_ups_share_a_grid() {
        assert_eq!(wake_time(0), 0);
        assert_eq!(wake_time(1), SEND_QUANTUM_NS);
        assert_eq!(wake_time(SEND_QUANTUM_NS), SEND_QUANTUM_NS);
        assert_eq!(wake_time(SEND_QUANTUM_NS + 1), 2 * SEND_QUANTUM_NS);
    }

    #[test]
    fn runs_of_equal_latencies_are_recorded_with_their_counts() {
        let mut histogram = Histogram::<u64>::new(3).unwrap();
        let mut run = LatencyRun::default();
        for latency_us in [5, 5, 5, 7, 7, 5] {
            run.add(latency_us, &mut histogram);
        }
        // The last run is still pending until flushed.
        assert_eq!(histogram.len(), 5);
        run.flush(&mut histogram);
        run.flush(&mut histogram);
        assert_eq!(histogram.len(), 6);
        assert_eq!(histogram.count_at(5), 4);
        assert_eq!(histogram.count_at(7), 2);
    }

    #[test]
    fn a_throttle_allows_only_a_short_burst_after_idling() {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(64 << 10)
            .make()
            .expect("a test executor")
            .run(async {
                let clock = Clock::start();
                // 10,000 events/s; the first 1,000 events were "paid for" long ago.
                let throttle = Throttle::new(10_000, 0);
                glommio::timer::sleep(Duration::from_millis(200)).await;
                let started = clock.now_ns();
                throttle.take(&clock, 1_000).await;
                // Only 50 ms of idle time counts: 1,000 events cost 100 ms, so
                // about 50 ms of waiting remain.
                let waited_ms = (clock.now_ns() - started) / 1_000_000;
                assert!((40..200).contains(&waited_ms), "waited {waited_ms} ms");
            });
    }
}
