//! The batching producer.
//!
//! `send` appends a record, synchronously, to the open batch of its
//! (topic, partition) and returns a future for the record's offset. A batch
//! is sealed and sent when the next record would overflow `batch_bytes`, when
//! it reaches `batch_bytes`, or `linger` after its first record, whichever
//! comes first. Batching is where the throughput comes from: one produce
//! request, one CRC and one log append for many records.
//!
//! Memory and work are bounded: at most `max_in_flight` produce requests are
//! outstanding (a semaphore), and once `max_in_flight * batch_bytes` bytes are
//! buffered (open batches plus sealed ones not yet answered) `send` waits.
//! No allocation per record once warm: records are encoded straight into the
//! batch buffer (buffers are recycled), and every record future of a batch
//! shares one `Rc<BatchOutcome>`.
//!
//! Ordering: records of one partition are sent in order and, while requests
//! are pipelined, arrive in order; a request that is retried after a
//! `NOT_OWNER` answer may land after a later one (as in Kafka with more than
//! one request in flight and no idempotence).
//!
//! Partitioning: an explicit partition wins; else the key picks one with
//! Kafka's default partitioner (`protocol::partitioner`: murmur2, stable
//! forever, so a key's records stay in order in one partition and land where
//! a Kafka client would put them);
//! else records go round-robin by batch — the "sticky" choice: keyless
//! records fill one partition's batch until it is sealed, then move to the
//! next partition, so they batch as well as keyed ones.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use glommio::sync::Semaphore;
use rustc_hash::FxHashMap;

use super::accumulator::{is_full, must_seal_before};
use super::cluster::Client;
use super::error::ClientError;
use super::transport::Transport;
use crate::protocol::batch::OpenBatch;
use crate::protocol::batch::{compress_batch, set_producer, BatchView, Compression, Record, HEADER_LEN};
use crate::protocol::partitioner::partition_for_key;
use crate::protocol::types::{AckLevel, Offset, PartitionId, TimestampMs};
use crate::protocol::wire::{ErrorCode, ProducerIdentity};

/// A new batch buffer starts this large and grows to what batches need;
/// buffers are recycled, so this only matters while warming up.
const INITIAL_BATCH_CAPACITY: usize = 16 << 10;

/// How a [`Producer`] batches and acknowledges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerConfig {
    /// A batch is sent once it holds this many bytes.
    pub batch_bytes: usize,
    /// A batch is sent at the latest this long after its first record.
    pub linger: Duration,
    /// Produce requests outstanding at once.
    pub max_in_flight: usize,
    pub acks: AckLevel,
    /// How long the broker may take to reach `acks` before answering TIMEOUT.
    pub timeout_ms: u32,
    /// The codec batches are compressed with when sealed; `batch_bytes`
    /// counts bytes before compression.
    pub compression: Compression,
    /// Idempotent (the default): the producer takes a producer id, numbers its batches
    /// per partition, keeps at most [`IDEMPOTENT_IN_FLIGHT_MAX`] requests
    /// in flight per partition, and sends a batch again after a retriable failure (a lost
    /// connection, a timeout, a moved partition) until `delivery_timeout`;
    /// the broker stores each batch once however often it arrives.
    pub idempotent: bool,
    /// How long an idempotent producer keeps retrying a batch.
    pub delivery_timeout: Duration,
}

/// Requests an idempotent producer keeps in flight per partition at most:
/// the batches per producer and partition the broker remembers, so every
/// retry finds its original there.
pub const IDEMPOTENT_IN_FLIGHT_MAX: usize = 5;
/// Pause before an idempotent producer sends a failed batch again.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            batch_bytes: 64 << 10,
            linger: Duration::from_millis(1),
            max_in_flight: 16,
            acks: AckLevel::Durable,
            timeout_ms: 10_000,
            compression: Compression::None,
            idempotent: true,
            delivery_timeout: Duration::from_secs(30),
        }
    }
}

/// One record to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerRecord<'a> {
    pub topic: &'a str,
    /// `None`: chosen from the key, or round-robin without a key.
    pub partition: Option<PartitionId>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(&'a str, Option<&'a [u8]>)],
    /// `None`: the time of `send`.
    pub timestamp_ms: Option<i64>,
}

impl<'a> ProducerRecord<'a> {
    /// A record with a value only.
    pub fn new(topic: &'a str, value: &'a [u8]) -> ProducerRecord<'a> {
        ProducerRecord { topic, partition: None, key: None, value: Some(value), headers: &[], timestamp_ms: None }
    }

    pub fn with_key(self, key: &'a [u8]) -> ProducerRecord<'a> {
        ProducerRecord { key: Some(key), ..self }
    }

    pub fn with_partition(self, partition: PartitionId) -> ProducerRecord<'a> {
        ProducerRecord { partition: Some(partition), ..self }
    }
}

/// A batching producer on one executor. Call [`flush`](Self::flush) (or
/// [`close`](Self::close)) before dropping it: records still buffered when it
/// is dropped fail with [`ClientError::Closed`]; requests already sent
/// complete normally.
///
/// Generic over its [`Transport`]: the native [`Client`] by default.
pub struct Producer<T: Transport = Client> {
    shared: Rc<Shared<T>>,
}

impl<T: Transport> fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("config", &self.shared.config)
            .field("buffered_bytes", &self.buffered_bytes())
            .finish_non_exhaustive()
    }
}

impl<T: Transport> Producer<T> {
    /// Starts a producer (and its linger task) on the current executor.
    pub fn new(client: T, config: ProducerConfig) -> Result<Producer<T>, ClientError> {
        if config.batch_bytes == 0 || config.max_in_flight == 0 {
            return Err(ClientError::InvalidArgument(format!("producer limits out of range: {config:?}")));
        }
        if let Compression::Unknown(code) = config.compression {
            return Err(ClientError::InvalidArgument(format!("unknown compression codec {code}")));
        }
        let buffer_bytes_max = config.max_in_flight.saturating_mul(config.batch_bytes);
        let record_bytes_max = client.max_frame_bytes().saturating_sub(HEADER_LEN);
        let shared = Rc::new(Shared {
            client,
            in_flight: Rc::new(Semaphore::new(config.max_in_flight as u64)),
            identity: RefCell::new(None),
            sequences: RefCell::new(FxHashMap::default()),
            partition_in_flight: RefCell::new(FxHashMap::default()),
            partition_waiter: RefCell::new(None),
            buffer_bytes_max,
            record_bytes_max,
            state: RefCell::new(State { ..State::default() }),
            config,
        });
        glommio::spawn_local(linger_loop(shared.clone())).detach();
        glommio::spawn_local(dispatch_loop(shared.clone())).detach();
        Ok(Producer { shared })
    }

    /// Appends a record to its partition's batch. Waits only when the
    /// producer's buffer is full or the topic's partition count is not yet
    /// known. The returned future resolves to the record's offset (`None`
    /// with [`AckLevel::None`]) once the broker acknowledged its batch.
    pub async fn send(&self, record: ProducerRecord<'_>) -> Result<SendFuture, ClientError> {
        loop {
            if let Some(sent) = self.try_send(record)? {
                return Ok(sent);
            }
            // Either may be needed; each returns at once when it is not.
            // The cache can forget the topic again while this waits for
            // space (a metadata refresh), hence the loop.
            self.shared.client.partitions(record.topic).await?;
            self.wait_for_space().await?;
        }
    }

    /// [`send`](Self::send) without waiting: `Ok(None)` (and nothing
    /// appended) where `send` would wait, because the buffer is full or the
    /// topic's partition count is not cached. A sender with many records in
    /// hand calls this and falls back to `send` only then, sparing the
    /// per-record cost of an `async` call.
    pub fn try_send(&self, record: ProducerRecord<'_>) -> Result<Option<SendFuture>, ClientError> {
        let Some(KnownTopic { partitions, batches }) = self.shared.open_topic(record.topic)? else {
            return Ok(None);
        };
        let target = target_of(&record, partitions)?;
        if self.buffered_bytes() >= self.shared.buffer_bytes_max {
            return Ok(None);
        }
        self.shared.append(record.topic, batches, partitions, target, &to_record(&record, &mut None)).map(Some)
    }

    /// [`try_send`](Self::try_send) for many records at a time, in order:
    /// the checks and lookups of a call are made once for all of them, and
    /// the records' futures come back as runs, one per batch they went into
    /// (appended to `runs`), instead of one per record.
    ///
    /// Takes records until one names another topic than the first, or one
    /// that `try_send` would decline (the buffer is full) or refuse (an
    /// error), and returns how many it took. An error is returned only for
    /// the first record; a later one that would fail is left for the next
    /// call, which starts with it.
    pub fn try_send_run(&self, records: &[ProducerRecord<'_>], runs: &mut Vec<SentRun>) -> Result<usize, ClientError> {
        let Some(first) = records.first() else {
            return Ok(0);
        };
        let Some(KnownTopic { partitions, batches }) = self.shared.open_topic(first.topic)? else {
            return Ok(0);
        };
        self.shared.append_run(first.topic, batches, partitions, records, runs)
    }

    /// Sends everything buffered now and waits until every batch sent so far
    /// is answered. Results are reported through each record's future.
    pub async fn flush(&self) {
        self.shared.seal_all();
        let outstanding: Vec<Rc<BatchOutcome>> =
            self.shared.state.borrow().ledger.outstanding.values().cloned().collect();
        for outcome in outstanding {
            poll_fn(|cx| outcome.poll_done(cx)).await;
        }
    }

    /// Flushes, then drops the producer.
    pub async fn close(self) {
        self.flush().await;
    }

    /// Bytes in open batches plus sealed batches not yet answered.
    pub fn buffered_bytes(&self) -> usize {
        self.shared.state.borrow().ledger.buffered_bytes
    }

    pub fn config(&self) -> &ProducerConfig {
        &self.shared.config
    }

    /// Waits until the buffer has room. A full buffer of open batches is
    /// sealed at once rather than after `linger`: nothing else will free it.
    async fn wait_for_space(&self) -> Result<(), ClientError> {
        let mut sealed_for_space = false;
        poll_fn(|cx| {
            let mut state = self.shared.state.borrow_mut();
            if state.ledger.closed {
                return Poll::Ready(Err(ClientError::Closed));
            }
            if state.ledger.buffered_bytes < self.shared.buffer_bytes_max {
                return Poll::Ready(Ok(()));
            }
            state.ledger.space_waiters.push(cx.waker().clone());
            // Batches in flight will free room when answered; sealing the
            // open ones now would only send them small. With nothing in
            // flight, sealing is the only way to make room.
            let nothing_in_flight = state.ledger.outstanding.is_empty();
            drop(state);
            if nothing_in_flight && !sealed_for_space {
                sealed_for_space = true;
                self.shared.seal_all();
            }
            Poll::Pending
        })
        .await
    }
}

impl<T: Transport> Drop for Producer<T> {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// Resolves to one record's offset once its batch is answered.
#[must_use = "the record's result is only known by awaiting its future"]
pub struct SendFuture {
    outcome: Rc<BatchOutcome>,
    index: u32,
    partition: PartitionId,
}

impl SendFuture {
    /// The partition the record was appended to (chosen by its key, or the
    /// sticky partition of a keyless record), known before the ack.
    pub fn partition(&self) -> PartitionId {
        self.partition
    }

    /// Whether both records went into the same batch, so they are answered
    /// together, with the same result. A caller awaiting many records can
    /// then keep one future per batch instead of one per record.
    pub fn same_batch(&self, other: &SendFuture) -> bool {
        Rc::ptr_eq(&self.outcome, &other.outcome)
    }

    /// When the record's batch passed each stage so far.
    pub fn stages(&self) -> BatchStages {
        self.outcome.stages.get()
    }
}

/// Records that [`Producer::try_send_run`] put into one batch, one after
/// another: the first one's future, and how many they are. The batch
/// answers them together; the others' offsets follow the first's.
#[derive(Debug)]
pub struct SentRun {
    pub first: SendFuture,
    pub count: usize,
}

impl SentRun {
    /// Whether the record at `index` of the run's batch comes right after
    /// the run's last.
    fn follows(&self, index: u32) -> bool {
        self.first.index as usize + self.count == index as usize
    }
}

impl fmt::Debug for SendFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendFuture")
            .field("partition", &self.partition)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Future for SendFuture {
    /// `Ok(Some(offset))`, or `Ok(None)` with [`AckLevel::None`].
    type Output = Result<Option<Offset>, ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.outcome.poll_record(self.index, cx)
    }
}

/// The result of one batch, shared by the futures of all its records.
struct BatchOutcome {
    state: RefCell<Outcome>,
    stages: Cell<BatchStages>,
}

/// When a batch passed each stage on its way to its answer, so a caller
/// timing acks can tell the producer's own waits from the request's round
/// trip ([`SendFuture::stages`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchStages {
    /// Its first record was added.
    pub opened: Instant,
    /// Sealed: full, lingered out, or flushed.
    pub sealed: Option<Instant>,
    /// Its first produce request was handed to the connection (past the
    /// in-flight limits).
    pub sent: Option<Instant>,
    /// Its answer, or its last failure, arrived.
    pub answered: Option<Instant>,
}

enum Outcome {
    Pending(Vec<Waker>),
    /// The batch's base offset (`None` with acks = none), or its error.
    Done(Result<Option<Offset>, ClientError>),
}

impl BatchOutcome {
    fn new(opened: Instant) -> BatchOutcome {
        let stages = BatchStages { opened, sealed: None, sent: None, answered: None };
        BatchOutcome { state: RefCell::new(Outcome::Pending(Vec::new())), stages: Cell::new(stages) }
    }

    fn mark(&self, stage: impl FnOnce(&mut BatchStages)) {
        let mut stages = self.stages.get();
        stage(&mut stages);
        self.stages.set(stages);
    }

    fn complete(&self, result: Result<Option<Offset>, ClientError>) {
        let previous = std::mem::replace(&mut *self.state.borrow_mut(), Outcome::Done(result));
        if let Outcome::Pending(wakers) = previous {
            wakers.into_iter().for_each(Waker::wake);
        }
    }

    fn poll_record(&self, index: u32, cx: &mut Context<'_>) -> Poll<Result<Option<Offset>, ClientError>> {
        match &mut *self.state.borrow_mut() {
            Outcome::Done(Ok(base)) => Poll::Ready(Ok(base.map(|base| base.plus(u64::from(index))))),
            Outcome::Done(Err(error)) => Poll::Ready(Err(error.clone())),
            Outcome::Pending(wakers) => {
                register(wakers, cx.waker());
                Poll::Pending
            }
        }
    }

    fn poll_done(&self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut *self.state.borrow_mut() {
            Outcome::Done(_) => Poll::Ready(()),
            Outcome::Pending(wakers) => {
                register(wakers, cx.waker());
                Poll::Pending
            }
        }
    }
}

/// Adds a waker unless it is the one added last: a task that polls the same
/// future again must not grow the list, and checking only the last entry
/// keeps registration O(1) for a batch of thousands of records.
fn register(wakers: &mut Vec<Waker>, waker: &Waker) {
    if !wakers.last().is_some_and(|last| last.will_wake(waker)) {
        wakers.push(waker.clone());
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Partition(u32),
    /// The topic's current round-robin partition.
    Sticky,
}

struct Shared<T> {
    client: T,
    config: ProducerConfig,
    in_flight: Rc<Semaphore>,
    /// `send` waits while this many bytes are buffered.
    buffer_bytes_max: usize,
    /// A record that cannot fit a frame even alone is refused at `send`.
    record_bytes_max: usize,
    state: RefCell<State>,
    /// Idempotent mode: the producer id and epoch, taken at the first
    /// dispatch (and again after a batch finally failed).
    identity: RefCell<Option<ProducerIdentity>>,
    /// Idempotent mode: the next sequence number per partition.
    sequences: RefCell<FxHashMap<(Rc<str>, u32), i32>>,
    /// Idempotent mode: requests in flight per partition (only partitions
    /// with some), at most [`IDEMPOTENT_IN_FLIGHT_MAX`] each.
    partition_in_flight: RefCell<FxHashMap<(Rc<str>, u32), usize>>,
    /// The dispatcher, when it waits for a partition's in-flight slot.
    partition_waiter: RefCell<Option<Waker>>,
}

#[derive(Default)]
struct State {
    topics: Topics,
    ledger: Ledger,
}

/// The topics this producer has sent to, looked up for every record.
#[derive(Default)]
struct Topics {
    list: Vec<TopicBatches>,
    /// Fx-hashed (names come from the application, so there is no hash
    /// flooding to defend against).
    by_name: FxHashMap<Rc<str>, usize>,
    /// The topic of the last record: producers mostly send runs of records
    /// to one topic, so comparing the name spares hashing it.
    last: usize,
}

impl Topics {
    fn get_mut(&mut self, topic: &str) -> Option<&mut TopicBatches> {
        let index = self.index_of(topic)?;
        self.list.get_mut(index)
    }

    fn index_of(&mut self, topic: &str) -> Option<usize> {
        let index = match self.list.get(self.last) {
            Some(batches) if *batches.name == *topic => self.last,
            _ => *self.by_name.get(topic)?,
        };
        self.last = index;
        Some(index)
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut TopicBatches> {
        self.list.iter_mut()
    }
}

/// The partition a record asks for: its own (which must exist), its key's,
/// or the topic's round-robin one.
fn target_of(record: &ProducerRecord<'_>, partitions: u32) -> Result<Target, ClientError> {
    match (record.partition, record.key) {
        (Some(partition), _) if partition.0 < partitions => Ok(Target::Partition(partition.0)),
        (Some(partition), _) => {
            let topic = record.topic;
            let message = format!("partition {partition} does not exist: topic {topic} has {partitions} partitions");
            Err(ClientError::InvalidArgument(message))
        }
        (None, Some(key)) => Ok(Target::Partition(partition_for_key(key, partitions))),
        (None, None) => Ok(Target::Sticky),
    }
}

/// The record to encode: stamped with `now_ms` (read once per call, on
/// first need) unless it has a time of its own.
fn to_record<'r>(record: &ProducerRecord<'r>, now_ms: &mut Option<i64>) -> Record<'r> {
    let timestamp_ms = record.timestamp_ms.unwrap_or_else(|| *now_ms.get_or_insert_with(|| TimestampMs::now().0));
    Record { timestamp_ms, key: record.key, value: record.value, headers: record.headers }
}

/// A topic as `try_send` found it: its partition count, and the index of
/// its batches if this producer has sent to it before.
struct KnownTopic {
    partitions: u32,
    batches: Option<usize>,
}

/// Per topic: the open batch of each partition and the round-robin position.
struct TopicBatches {
    name: Rc<str>,
    /// Indexed by partition id.
    open: Vec<Option<OpenEntry>>,
    sticky: u32,
    /// The partition count and the transport's metadata epoch it was read
    /// at: still right while the epoch is the same.
    counted: Option<(u64, u32)>,
}

struct OpenEntry {
    batch: OpenBatch,
    outcome: Rc<BatchOutcome>,
    id: u64,
}

/// Everything but the open batches, split off so it can be updated while a
/// topic's batches are borrowed.
#[derive(Default)]
struct Ledger {
    /// Invariant: the bytes of every open batch plus every sealed batch not
    /// yet answered.
    buffered_bytes: usize,
    next_batch_id: u64,
    /// Open batches' linger deadlines, in opening order — which is deadline
    /// order, since every batch lingers equally long. Entries of batches that
    /// were sealed early are skipped when they come due.
    deadlines: VecDeque<Deadline>,
    /// Sealed batches not yet answered, for `flush`.
    outstanding: FxHashMap<u64, Rc<BatchOutcome>>,
    spare_buffers: Vec<Vec<u8>>,
    space_waiters: Vec<Waker>,
    /// The linger task, when it waits for a first batch to open.
    flusher: Option<Waker>,
    /// Sealed batches waiting for an in-flight slot, in sealing order: one
    /// dispatcher sends them in this order, so a partition's batches reach
    /// the broker in the order their records were sent.
    ready: VecDeque<Sealed>,
    /// The dispatcher, when it waits for a sealed batch.
    dispatcher: Option<Waker>,
    closed: bool,
}

struct Deadline {
    at: Instant,
    topic: Rc<str>,
    partition: u32,
    id: u64,
}

/// A batch ready to go on the wire.
struct Sealed {
    topic: Rc<str>,
    partition: PartitionId,
    id: u64,
    batch: Vec<u8>,
    outcome: Rc<BatchOutcome>,
}

/// What `append` leaves to do once the state is no longer borrowed.
#[derive(Default)]
struct AppendEffects {
    sealed: Vec<Sealed>,
    wake_flusher: Option<Waker>,
}

impl TopicBatches {
    /// Takes a partition's open batch, moving the round-robin on if it was
    /// the sticky partition.
    fn take(&mut self, partition: u32) -> Option<OpenEntry> {
        let entry = self.open.get_mut(partition as usize)?.take()?;
        let partitions = self.open.len() as u32;
        if self.sticky_partition(partitions) == partition {
            self.sticky = (partition + 1) % partitions;
        }
        Some(entry)
    }

    /// The partition a keyless record goes to. `sticky` is kept below the
    /// partition count, so this is a comparison per record, not a division;
    /// only a count that shrank needs the remainder. `partitions` > 0.
    fn sticky_partition(&self, partitions: u32) -> u32 {
        if self.sticky < partitions {
            self.sticky
        } else {
            self.sticky % partitions
        }
    }
}

impl Ledger {
    /// Finishes a batch; an empty one (the record that opened it was
    /// refused) just gives its buffer back.
    fn seal(&mut self, config: &ProducerConfig, topic: Rc<str>, partition: u32, entry: OpenEntry) -> Option<Sealed> {
        let OpenEntry { batch, outcome, id } = entry;
        if batch.record_count() == 0 {
            self.buffered_bytes = self.buffered_bytes.saturating_sub(batch.len_bytes());
            self.spare_buffers.push(batch.into_buffer());
            return None;
        }
        let len = batch.len_bytes();
        // An idempotent producer's batch gets its producer fields, and with
        // them its CRC, when it is dispatched (`stamp`): an uncompressed one
        // is not checksummed twice. Compressing reads the batch back, so it
        // needs the CRC.
        let finished = if config.idempotent && config.compression == Compression::None {
            batch.finish_for_stamping()
        } else {
            batch.finish()
        };
        let Some(mut batch) = finished else {
            // Only a batch over 2 GiB gets here; batch_bytes keeps them far smaller.
            self.buffered_bytes = self.buffered_bytes.saturating_sub(len);
            outcome.complete(Err(ClientError::InvalidArgument("batch exceeds the record batch format".into())));
            return None;
        };
        if config.compression != Compression::None {
            match compress_batch(&batch, config.compression) {
                Ok(compressed) => {
                    // The sealed batch now holds only its compressed bytes
                    // (the plain buffer is dropped: compressing allocates
                    // per batch anyway).
                    self.buffered_bytes = self.buffered_bytes.saturating_sub(len.saturating_sub(compressed.len()));
                    batch = compressed;
                }
                Err(error) => {
                    self.buffered_bytes = self.buffered_bytes.saturating_sub(len);
                    outcome.complete(Err(ClientError::InvalidArgument(format!("compressing a batch: {error}"))));
                    return None;
                }
            }
        }
        outcome.mark(|stages| stages.sealed = Some(Instant::now()));
        self.outstanding.insert(id, outcome.clone());
        Some(Sealed { topic, partition: PartitionId(partition), id, batch, outcome })
    }

    fn open(&mut self, config: &ProducerConfig, topic: &Rc<str>, partition: u32, timestamp_ms: i64) -> OpenEntry {
        let buffer = self
            .spare_buffers
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(config.batch_bytes.min(INITIAL_BATCH_CAPACITY)));
        let batch = OpenBatch::start(buffer, timestamp_ms);
        self.buffered_bytes += batch.len_bytes();
        let id = self.next_batch_id;
        self.next_batch_id += 1;
        let opened = Instant::now();
        self.deadlines.push_back(Deadline { at: opened + config.linger, topic: topic.clone(), partition, id });
        OpenEntry { batch, outcome: Rc::new(BatchOutcome::new(opened)), id }
    }
}

/// The topic's batches, with a slot per partition: at `known` (an index
/// from [`Topics::index_of`] in this same call, so still the topic's), else
/// looked up, or created on first use.
fn topic_batches<'a>(
    topics: &'a mut Topics,
    topic: &str,
    known: Option<usize>,
    partitions: u32,
) -> &'a mut TopicBatches {
    // Looked up by `&str` first so the common case allocates nothing.
    let index = known.or_else(|| topics.index_of(topic)).unwrap_or_else(|| {
        let name: Rc<str> = Rc::from(topic);
        // Producers start their round-robin at different partitions, so that
        // many of them starting together do not all fill partition 0 first.
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        let sticky = nanos % partitions.max(1);
        let index = topics.list.len();
        topics.by_name.insert(name.clone(), index);
        topics.list.push(TopicBatches { name, open: Vec::new(), sticky, counted: None });
        topics.last = index;
        index
    });
    let batches = &mut topics.list[index];
    if batches.open.len() < partitions as usize {
        batches.open.resize_with(partitions as usize, || None);
    }
    batches
}

fn unencodable() -> ClientError {
    ClientError::InvalidArgument("a key, value or header is too long for a record batch".into())
}

impl<T: Transport> Shared<T> {
    /// What `try_send` and `try_send_run` check first: the producer is
    /// open, and the topic is known (`None`: not yet, so `send` would wait)
    /// and has partitions.
    fn open_topic(&self, topic: &str) -> Result<Option<KnownTopic>, ClientError> {
        if self.state.borrow().ledger.closed {
            return Err(ClientError::Closed);
        }
        match self.known_topic(topic) {
            Some(KnownTopic { partitions: 0, .. }) => Err(ClientError::NoSuchTopic(topic.to_owned())),
            known => Ok(known),
        }
    }

    /// The topic's partition count if it is known now, and where its
    /// batches are. A topic this producer has sent to keeps its count while
    /// the transport's metadata epoch stays the same, so a record costs no
    /// lookup by name in the cache.
    fn known_topic(&self, topic: &str) -> Option<KnownTopic> {
        let epoch = self.client.metadata_epoch();
        let mut state = self.state.borrow_mut();
        let Some(index) = state.topics.index_of(topic) else {
            let partitions = self.client.cached_partitions(topic)?;
            return Some(KnownTopic { partitions, batches: None });
        };
        let batches = &mut state.topics.list[index];
        let partitions = match batches.counted {
            Some((counted_at, count)) if counted_at == epoch => count,
            _ => {
                let count = self.client.cached_partitions(topic);
                batches.counted = count.map(|count| (epoch, count));
                count?
            }
        };
        Some(KnownTopic { partitions, batches: Some(index) })
    }

    /// The synchronous part of `send`: the record goes into its partition's
    /// open batch; full batches are sealed and dispatched.
    fn append(
        self: &Rc<Self>,
        topic: &str,
        known: Option<usize>,
        partitions: u32,
        target: Target,
        record: &Record<'_>,
    ) -> Result<SendFuture, ClientError> {
        let mut effects = AppendEffects::default();
        let result = self.with_batches(topic, known, partitions, |ledger, batches| {
            let future = self.push(ledger, batches, partitions, target, record, None, &mut effects)?;
            Ok(future.expect("a record extends no run when none is given"))
        });
        self.carry_out(effects);
        result
    }

    /// [`append`](Self::append) for the records of
    /// [`Producer::try_send_run`], under one borrow of the state.
    fn append_run(
        self: &Rc<Self>,
        topic: &str,
        known: Option<usize>,
        partitions: u32,
        records: &[ProducerRecord<'_>],
        runs: &mut Vec<SentRun>,
    ) -> Result<usize, ClientError> {
        let mut effects = AppendEffects::default();
        let result = self.with_batches(topic, known, partitions, |ledger, batches| {
            let first_run = runs.len();
            let mut now_ms = None;
            for (taken, record) in records.iter().enumerate() {
                // The same `&str` as the first record's (the usual case) needs
                // no comparison of the bytes.
                let same_topic = std::ptr::eq(record.topic, topic) || record.topic == topic;
                if !same_topic {
                    return Ok(taken);
                }
                let refused = |error| if taken == 0 { Err(error) } else { Ok(taken) };
                let target = match target_of(record, partitions) {
                    Ok(target) => target,
                    Err(error) => return refused(error),
                };
                if ledger.buffered_bytes >= self.buffer_bytes_max {
                    return Ok(taken);
                }
                let last_run = if runs.len() > first_run { runs.last_mut() } else { None };
                match self.push(
                    ledger,
                    batches,
                    partitions,
                    target,
                    &to_record(record, &mut now_ms),
                    last_run,
                    &mut effects,
                ) {
                    Ok(Some(future)) => runs.push(SentRun { first: future, count: 1 }),
                    Ok(None) => {}
                    Err(error) => return refused(error),
                }
            }
            Ok(records.len())
        });
        self.carry_out(effects);
        result
    }

    /// Runs `append` on the ledger and the topic's batches, under one borrow
    /// of the state, unless the producer is closed.
    fn with_batches<R>(
        &self,
        topic: &str,
        known: Option<usize>,
        partitions: u32,
        append: impl FnOnce(&mut Ledger, &mut TopicBatches) -> Result<R, ClientError>,
    ) -> Result<R, ClientError> {
        let mut guard = self.state.borrow_mut();
        let State { topics, ledger } = &mut *guard;
        if ledger.closed {
            return Err(ClientError::Closed);
        }
        append(ledger, topic_batches(topics, topic, known, partitions))
    }

    /// What an append left to do once the state is no longer borrowed: wake
    /// the linger task for a newly opened batch, dispatch the sealed ones.
    fn carry_out(self: &Rc<Self>, effects: AppendEffects) {
        if let Some(flusher) = effects.wake_flusher {
            flusher.wake();
        }
        for sealed in effects.sealed {
            self.dispatch(sealed);
        }
    }

    /// Appends one record to its partition's open batch (opening one, and
    /// sealing the full ones it meets). Returns the record's future, or
    /// `None` where the record follows `run`'s last one in the same batch
    /// and so only lengthened it.
    #[allow(clippy::too_many_arguments)]
    fn push(
        &self,
        ledger: &mut Ledger,
        batches: &mut TopicBatches,
        partitions: u32,
        target: Target,
        record: &Record<'_>,
        run: Option<&mut SentRun>,
        effects: &mut AppendEffects,
    ) -> Result<Option<SendFuture>, ClientError> {
        let config = &self.config;
        let mut partition = match target {
            Target::Partition(partition) => partition,
            Target::Sticky => batches.sticky_partition(partitions),
        };
        // Seal the open batch first if the record would overflow it. A
        // keyless record then moves on to the next round-robin partition,
        // whose batch may need sealing too; each turn empties one partition's
        // slot, so this ends within `partitions` turns. The record's size in
        // the batch it stays in is kept for the push.
        let mut measured = None;
        while let Some(entry) = batches.open[partition as usize].as_ref() {
            let size = entry.batch.measure(record).ok_or_else(unencodable)?;
            if !must_seal_before(entry.batch.len_bytes(), entry.batch.record_count(), size.total, config.batch_bytes) {
                measured = Some(size);
                break;
            }
            if let Some(entry) = batches.take(partition) {
                effects.sealed.extend(ledger.seal(config, batches.name.clone(), partition, entry));
            }
            if target == Target::Sticky {
                partition = batches.sticky_partition(partitions);
            }
        }
        let TopicBatches { name, open, .. } = &mut *batches;
        let mut opened = false;
        let entry = open[partition as usize].get_or_insert_with(|| {
            opened = true;
            ledger.open(config, name, partition, record.timestamp_ms)
        });
        if opened {
            effects.wake_flusher = ledger.flusher.take();
        }
        let before = entry.batch.len_bytes();
        let measured = match measured {
            Some(size) => size,
            None => entry.batch.measure(record).ok_or_else(unencodable)?,
        };
        if measured.total > self.record_bytes_max {
            let (record_bytes, limit) = (measured.total, self.record_bytes_max);
            return Err(ClientError::InvalidArgument(format!(
                "a record of {record_bytes} bytes cannot fit the {limit}-byte frame limit"
            )));
        }
        entry.batch.push_measured(record, measured);
        ledger.buffered_bytes += entry.batch.len_bytes() - before;
        // At most i32::MAX records fit a batch, so the index fits a u32.
        let index = (entry.batch.record_count() - 1) as u32;
        let future = match run {
            Some(run) if Rc::ptr_eq(&run.first.outcome, &entry.outcome) && run.follows(index) => {
                run.count += 1;
                None
            }
            _ => Some(SendFuture { outcome: entry.outcome.clone(), index, partition: PartitionId(partition) }),
        };
        if is_full(entry.batch.len_bytes(), config.batch_bytes) {
            if let Some(entry) = batches.take(partition) {
                effects.sealed.extend(ledger.seal(config, batches.name.clone(), partition, entry));
            }
        }
        Ok(future)
    }

    /// Queues a sealed batch for the dispatcher.
    fn dispatch(self: &Rc<Self>, sealed: Sealed) {
        let waker = {
            let mut state = self.state.borrow_mut();
            state.ledger.ready.push_back(sealed);
            state.ledger.dispatcher.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The next sealed batch, in sealing order; `None` once closed and empty.
    /// Idempotent mode: takes one of the partition's in-flight slots, or
    /// parks the dispatcher until one is released.
    fn poll_partition_slot(&self, key: &(Rc<str>, u32), cx: &mut Context<'_>) -> Poll<()> {
        let mut in_flight = self.partition_in_flight.borrow_mut();
        let count = in_flight.entry(key.clone()).or_insert(0);
        if *count < IDEMPOTENT_IN_FLIGHT_MAX {
            *count += 1;
            return Poll::Ready(());
        }
        *self.partition_waiter.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }

    fn release_partition_slot(&self, key: &(Rc<str>, u32)) {
        let mut in_flight = self.partition_in_flight.borrow_mut();
        if let Some(count) = in_flight.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(key);
            }
        }
        drop(in_flight);
        if let Some(waker) = self.partition_waiter.borrow_mut().take() {
            waker.wake();
        }
    }

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Option<Sealed>> {
        let mut state = self.state.borrow_mut();
        if let Some(sealed) = state.ledger.ready.pop_front() {
            return Poll::Ready(Some(sealed));
        }
        if state.ledger.closed {
            return Poll::Ready(None);
        }
        state.ledger.dispatcher = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Seals every open batch (flush, or a full buffer).
    fn seal_all(self: &Rc<Self>) {
        let mut sealed = Vec::new();
        {
            let mut guard = self.state.borrow_mut();
            let State { topics, ledger } = &mut *guard;
            for batches in topics.values_mut() {
                for partition in 0..batches.open.len() as u32 {
                    if let Some(entry) = batches.take(partition) {
                        sealed.extend(ledger.seal(&self.config, batches.name.clone(), partition, entry));
                    }
                }
            }
        }
        for batch in sealed {
            self.dispatch(batch);
        }
    }

    /// Seals the batches whose linger ran out; says when to look again.
    fn seal_due(self: &Rc<Self>, now: Instant) -> NextTick {
        let mut sealed = Vec::new();
        let next = {
            let mut guard = self.state.borrow_mut();
            let State { topics, ledger } = &mut *guard;
            if ledger.closed {
                return NextTick::Stop;
            }
            while let Some(deadline) = ledger.deadlines.front() {
                if deadline.at > now {
                    break;
                }
                let Some(Deadline { topic, partition, id, .. }) = ledger.deadlines.pop_front() else { break };
                let Some(batches) = topics.get_mut(&topic) else { continue };
                let is_same_batch =
                    batches.open.get(partition as usize).and_then(Option::as_ref).is_some_and(|entry| entry.id == id);
                if is_same_batch {
                    if let Some(entry) = batches.take(partition) {
                        sealed.extend(ledger.seal(&self.config, topic, partition, entry));
                    }
                }
            }
            match ledger.deadlines.front() {
                Some(deadline) => NextTick::At(deadline.at),
                None => NextTick::Idle,
            }
        };
        for batch in sealed {
            self.dispatch(batch);
        }
        next
    }

    fn poll_idle(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.state.borrow_mut();
        if state.ledger.closed || !state.ledger.deadlines.is_empty() {
            return Poll::Ready(());
        }
        state.ledger.flusher = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Books a batch's answer: frees its bytes, recycles its buffer and wakes
    /// senders waiting for room.
    fn finished(&self, id: u64, mut batch: Vec<u8>) {
        let waiters = {
            let mut state = self.state.borrow_mut();
            let ledger = &mut state.ledger;
            ledger.outstanding.remove(&id);
            ledger.buffered_bytes = ledger.buffered_bytes.saturating_sub(batch.len());
            // Keep as many buffers as can be in use at once, and none that a
            // huge single record blew up.
            let keep = ledger.spare_buffers.len() <= self.config.max_in_flight
                && batch.capacity() <= self.config.batch_bytes.saturating_mul(2).max(INITIAL_BATCH_CAPACITY);
            if keep {
                batch.clear();
                ledger.spare_buffers.push(batch);
            }
            std::mem::take(&mut ledger.space_waiters)
        };
        waiters.into_iter().for_each(Waker::wake);
    }

    /// The producer handle is gone: fail what was never sent, stop the linger
    /// task and release waiting senders. Sent batches finish on their own.
    fn close(&self) {
        let mut failed = Vec::new();
        let mut wakers = Vec::new();
        {
            let mut guard = self.state.borrow_mut();
            let State { topics, ledger } = &mut *guard;
            ledger.closed = true;
            for batches in topics.values_mut() {
                for slot in batches.open.iter_mut() {
                    if let Some(entry) = slot.take() {
                        ledger.buffered_bytes = ledger.buffered_bytes.saturating_sub(entry.batch.len_bytes());
                        failed.push(entry.outcome);
                    }
                }
            }
            ledger.deadlines.clear();
            wakers.extend(ledger.flusher.take());
            // Sealed batches still go out; then the dispatcher stops.
            wakers.extend(ledger.dispatcher.take());
            wakers.append(&mut ledger.space_waiters);
        }
        for outcome in failed {
            outcome.complete(Err(ClientError::Closed));
        }
        wakers.into_iter().for_each(Waker::wake);
    }
}

enum NextTick {
    At(Instant),
    Idle,
    Stop,
}

/// Seals batches as their linger runs out. One task per producer, however
/// many partitions: deadlines are kept in order, so it sleeps exactly until
/// the next one, and parks when no batch is open.
async fn linger_loop<T: Transport>(shared: Rc<Shared<T>>) {
    loop {
        match shared.seal_due(Instant::now()) {
            NextTick::At(at) => glommio::timer::sleep(at.saturating_duration_since(Instant::now())).await,
            NextTick::Idle => poll_fn(|cx| shared.poll_idle(cx)).await,
            NextTick::Stop => return,
        }
    }
}

/// Sends sealed batches in sealing order, at most `max_in_flight` at once.
/// Only this task waits for the in-flight semaphore, so no batch can
/// overtake an earlier one (glommio's semaphore does not serve waiters in
/// arrival order).
async fn dispatch_loop<T: Transport>(shared: Rc<Shared<T>>) {
    while let Some(sealed) = poll_fn(|cx| shared.poll_ready(cx)).await {
        // Resolve the partition's connection here, in order: a send that
        // had to wait for it (metadata, connecting) could otherwise be
        // overtaken by a later one of the same partition. Errors surface in
        // the send itself.
        let _ = shared.client.prepare_route(&sealed.topic, sealed.partition).await;
        let mut sealed = sealed;
        if shared.config.idempotent {
            let key = (Rc::clone(&sealed.topic), sealed.partition.0);
            poll_fn(|cx| shared.poll_partition_slot(&key, cx)).await;
            if let Err(error) = stamp(&shared, &mut sealed).await {
                shared.release_partition_slot(&key);
                let Sealed { id, batch, outcome, .. } = sealed;
                outcome.complete(Err(error));
                shared.finished(id, batch);
                continue;
            }
        }
        match shared.in_flight.acquire_static_permit(1).await {
            Ok(permit) => {
                glommio::spawn_local(send_batch(Rc::clone(&shared), sealed, permit)).detach();
            }
            Err(_) => {
                if shared.config.idempotent {
                    shared.release_partition_slot(&(Rc::clone(&sealed.topic), sealed.partition.0));
                }
                let Sealed { id, batch, outcome, .. } = sealed;
                outcome.complete(Err(ClientError::Closed));
                shared.finished(id, batch);
            }
        }
    }
}

/// Idempotent mode: gives the batch the producer's id and epoch and the
/// partition's next sequence number (taking an id first if there is none).
/// Batches are stamped in dispatch order, which is each partition's order.
async fn stamp<T: Transport>(shared: &Shared<T>, sealed: &mut Sealed) -> Result<(), ClientError> {
    let current = *shared.identity.borrow();
    let identity = match current {
        Some(identity) => identity,
        None => {
            let identity = shared.client.init_producer_id().await?;
            shared.sequences.borrow_mut().clear();
            *shared.identity.borrow_mut() = Some(identity);
            identity
        }
    };
    let count = BatchView::parse_header(&sealed.batch, usize::MAX)
        .map_err(|error| ClientError::InvalidArgument(format!("a sealed batch does not parse: {error}")))?
        .record_count();
    let mut sequences = shared.sequences.borrow_mut();
    let next = sequences.entry((Rc::clone(&sealed.topic), sealed.partition.0)).or_insert(0);
    set_producer(&mut sealed.batch, identity.producer_id, identity.epoch, *next);
    // Sequences wrap from i32::MAX to 0, as Kafka's do.
    *next = ((i64::from(*next) + i64::from(count)) % (i64::from(i32::MAX) + 1)) as i32;
    Ok(())
}

async fn send_batch<T: Transport>(shared: Rc<Shared<T>>, sealed: Sealed, permit: glommio::sync::StaticPermit) {
    let Sealed { topic, partition, id, batch, outcome } = sealed;
    let acks = shared.config.acks;
    let timeout_ms = shared.config.timeout_ms;
    let sent = Instant::now();
    outcome.mark(|stages| stages.sent = Some(sent));
    let deadline = sent + shared.config.delivery_timeout;
    let produced = loop {
        let produced = shared.client.produce_batches(&topic, partition, &batch, acks, timeout_ms).await;
        match produced {
            // Idempotent: the same batch again is stored at most once. Out
            // of order means an earlier batch of the partition is itself
            // being sent again; this one follows once it has landed.
            Err(error)
                if shared.config.idempotent
                    && (error.is_retriable() || error.code() == Some(ErrorCode::OUT_OF_ORDER_SEQUENCE))
                    && Instant::now() < deadline =>
            {
                glommio::timer::sleep(RETRY_BACKOFF).await;
            }
            other => break other,
        }
    };
    drop(permit);
    if shared.config.idempotent {
        shared.release_partition_slot(&(Rc::clone(&topic), partition.0));
    }
    let result = match produced {
        Ok(base_offset) => Ok((acks != AckLevel::None).then_some(base_offset)),
        // Stored long ago (older than the batches the broker remembers):
        // delivered, its offset no longer known.
        Err(error) if shared.config.idempotent && error.code() == Some(ErrorCode::DUPLICATE_SEQUENCE) => Ok(None),
        Err(error) => {
            if shared.config.idempotent {
                // The partition's sequence has a gap now: later batches go
                // under a new producer id.
                *shared.identity.borrow_mut() = None;
            }
            Err(error)
        }
    };
    outcome.mark(|stages| stages.answered = Some(Instant::now()));
    outcome.complete(result);
    shared.finished(id, batch);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::fake_broker::{executor, FakeBroker};
    use crate::client::ClientOptions;
    use crate::protocol::wire::{FetchPartitionResult, OffsetSpec};
    use bytes::Bytes;

    async fn producer(broker: &FakeBroker, config: ProducerConfig) -> Producer {
        let client = Client::connect(broker.addr(), ClientOptions::default()).await.unwrap();
        Producer::new(client, config).unwrap()
    }

    #[test]
    fn a_batch_tells_when_it_was_sealed_sent_and_answered() {
        executor().run(async {
            let broker = FakeBroker::start(&[("orders", 1)]);
            let config = ProducerConfig { linger: Duration::from_secs(60), ..ProducerConfig::default() };
            let producer = producer(&broker, config).await;
            let before = Instant::now();
            let mut future = producer.send(ProducerRecord::new("orders", b"an order")).await.unwrap();
            let open = future.stages();
            assert!(open.opened >= before);
            assert_eq!((open.sealed, open.sent, open.answered), (None, None, None), "still open");
            producer.flush().await;
            (&mut future).await.unwrap();
            let stages = future.stages();
            let (sealed, sent, answered) = (stages.sealed.unwrap(), stages.sent.unwrap(), stages.answered.unwrap());
            assert!(open.opened <= sealed && sealed <= sent && sent <= answered, "{stages:?}");
        });
    }

    #[test]
    fn records_resolve_to_consecutive_offsets_in_send_order() {
        executor().run(async {
            let broker = FakeBroker::start(&[("orders", 3)]);
            let config = ProducerConfig { batch_bytes: 1024, ..ProducerConfig::default() };
            let producer = producer(&broker, config).await;
            let mut sent = Vec::new();
            for index in 0..300u32 {
                let key = format!("customer-{}", index % 17);
                let record = ProducerRecord::new("orders", b"some order payload").with_key(key.as_bytes());
                let partition = partition_for_key(key.as_bytes(), 3);
                sent.push((partition, producer.send(record).await.unwrap()));
            }
            producer.flush().await;
            assert_eq!(producer.buffered_bytes(), 0);
            let mut next = [0u64; 3];
            for (partition, future) in sent {
                let offset = future.await.unwrap().unwrap();
                assert_eq!(offset.get(), next[partition as usize], "partition {partition}");
                next[partition as usize] += 1;
            }
            assert_eq!(next.iter().sum::<u64>(), 300);
            // Batching: far fewer requests than records.
            let requests = broker.produce_requests_on(broker.shard_port());
            assert!((3..100).contains(&requests), "{requests} produce requests");
        });
    }

    #[test]
    fn keyless_records_fill_one_partition_per_batch_in_turn() {
        executor().run(async {
            let broker = FakeBroker::start(&[("logs", 4)]);
            let config = ProducerConfig { batch_bytes: 200, linger: Duration::from_secs(60), ..Default::default() };
            let producer = producer(&broker, config).await;
            let mut futures = Vec::new();
            for _ in 0..40 {
                futures.push(producer.send(ProducerRecord::new("logs", &[1u8; 20])).await.unwrap());
            }
            let shared: Vec<bool> = futures.windows(2).map(|pair| pair[0].same_batch(&pair[1])).collect();
            let partitions: Vec<PartitionId> = futures.iter().map(SendFuture::partition).collect();
            producer.flush().await;
            let mut per_partition_offsets = Vec::new();
            for future in futures {
                per_partition_offsets.push(future.await.unwrap().unwrap().get());
            }
            // Every batch restarts at a new partition: offsets restart at 0
            // four times, then continue where each partition left off.
            let restarts = per_partition_offsets.windows(2).filter(|pair| pair[1] != pair[0] + 1).count();
            assert!(restarts >= 4, "{per_partition_offsets:?}");
            assert_eq!(per_partition_offsets.iter().filter(|offset| **offset == 0).count(), 4);
            // Records say whether they share a batch: those of one batch are
            // consecutive offsets of one partition, the next batch is another's.
            for (at, same) in shared.iter().enumerate() {
                if *same {
                    assert_eq!(partitions[at], partitions[at + 1], "record {at}");
                    assert_eq!(per_partition_offsets[at] + 1, per_partition_offsets[at + 1], "record {at}");
                } else {
                    assert_ne!(partitions[at], partitions[at + 1], "record {at}");
                }
            }
            // Every restart is a batch boundary (a boundary may also happen to
            // continue at the next offset of another partition).
            assert!(shared.iter().filter(|same| !**same).count() >= restarts, "{shared:?}");
        });
    }

    #[test]
    fn records_to_several_topics_keep_each_topics_order() {
        executor().run(async {
            let broker = FakeBroker::start(&[("orders", 2), ("audit", 1), ("logs", 3)]);
            let config = ProducerConfig { batch_bytes: 512, ..ProducerConfig::default() };
            let producer = producer(&broker, config).await;
            // Runs of one topic, then switches back and forth, so the producer
            // finds each topic both as the last one used and by its name.
            let topics = ["orders", "orders", "audit", "logs", "orders", "audit", "audit", "logs"];
            let mut sent = Vec::new();
            for index in 0..400usize {
                let topic = topics[index % topics.len()];
                let key = format!("k{}", index % 5);
                let record = ProducerRecord::new(topic, b"payload").with_key(key.as_bytes());
                sent.push((topic, producer.send(record).await.unwrap()));
            }
            producer.flush().await;
            let mut next: std::collections::HashMap<(&str, PartitionId), u64> = Default::default();
            for (topic, future) in sent {
                let partition = future.partition();
                let offset = future.await.unwrap().unwrap().get();
                let expected = next.entry((topic, partition)).or_default();
                assert_eq!(offset, *expected, "{topic} partition {partition}");
                *expected += 1;
            }
            let per_topic =
                |name: &str| next.iter().filter(|((topic, _), _)| *topic == name).map(|(_, n)| n).sum::<u64>();
            assert_eq!([per_topic("orders"), per_topic("audit"), per_topic("logs")], [150u64, 150, 100]);
        });
    }

    #[test]
    fn linger_sends_a_partial_batch_without_flush() {
        executor().run(async {
            let broker = FakeBroker::start(&[("t", 1)]);
            let producer = producer(&broker, ProducerConfig::default()).await;
            let future = producer.send(ProducerRecord::new("t", b"alone")).await.unwrap();
            assert_eq!(future.await.unwrap(), Some(Offset::ZERO));
            let second = producer.send(ProducerRecord::new("t", b"again")).await.unwrap();
            assert_eq!(second.await.unwrap(), Offset::new(1));
        });
    }

    /// Room for 256 bytes, one request in flight, no linger: the buffer
    /// fills after a few records.
    fn tight_buffer() -> ProducerConfig {
        ProducerConfig {
            batch_bytes: 256,
            max_in_flight: 1,
            linger: Duration::from_secs(60),
            ..ProducerConfig::default()
        }
    }

    #[test]
    fn a_full_buffer_makes_send_wait_instead_of_growing() {
        executor().run(async {
            let broker = FakeBroker::start(&[("t", 2)]);
            let producer = producer(&broker, tight_buffer()).await;
            let mut futures = Vec::new();
            for index in 0..200u32 {
                let value = [index as u8; 40];
                let record = ProducerRecord::new("t", &value).with_partition(PartitionId(index % 2));
                futures.push(producer.send(record).await.unwrap());
                // One record of slack over the bound: the one just appended.
                assert!(producer.buffered_bytes() < 256 + 128, "{}", producer.buffered_bytes());
            }
            producer.flush().await;
            for future in futures {
                assert!(future.await.unwrap().is_some());
            }
        });
    }

    #[test]
    fn try_send_declines_where_send_would_wait() {
        executor().run(async {
            let broker = FakeBroker::start(&[("t", 1)]);
            let producer = producer(&broker, tight_buffer()).await;
            let value = [7u8; 100];
            // The topic's partition count is not cached yet.
            assert!(producer.try_send(ProducerRecord::new("t", &value)).unwrap().is_none());
            assert_eq!(producer.buffered_bytes(), 0);
            let first = producer.send(ProducerRecord::new("t", &value)).await.unwrap();
            let mut futures = vec![first];
            // Now cached: records go in until the 256-byte buffer is full.
            while let Some(future) = producer.try_send(ProducerRecord::new("t", &value)).unwrap() {
                futures.push(future);
            }
            assert!(producer.buffered_bytes() >= 256, "{}", producer.buffered_bytes());
            assert!((2..=4).contains(&futures.len()), "{} records buffered", futures.len());
            // Declining appended nothing; send waits for room and goes in.
            let buffered = producer.buffered_bytes();
            assert!(producer.try_send(ProducerRecord::new("t", &value)).unwrap().is_none());
            assert_eq!(producer.buffered_bytes(), buffered);
            futures.push(producer.send(ProducerRecord::new("t", &value)).await.unwrap());
            // Errors are errors, not "try again".
            let out_of_range = producer.try_send(ProducerRecord::new("t", &value).with_partition(PartitionId(3)));
            assert!(matches!(out_of_range, Err(ClientError::InvalidArgument(_))), "{out_of_range:?}");
            producer.flush().await;
            for (index, future) in futures.into_iter().enumerate() {
                assert_eq!(future.await.unwrap().map(Offset::get), Some(index as u64));
            }
        });
    }

    #[test]
    fn acks_none_resolves_without_offsets() {
        executor().run(async {
            let broker = FakeBroker::start(&[("t", 1)]);
            let config = ProducerConfig { acks: AckLevel::None, ..ProducerConfig::default() };
            let producer = producer(&broker, config).await;
            let future = producer.send(ProducerRecord::new("t", b"fire and forget")).await.unwrap();
            producer.flush().await;
            assert_eq!(future.await.unwrap(), None);
        });
    }

    #[test]
    fn bad_records_are_refused_and_dropping_fails_unsent_ones() {
        executor().run(async {
            let broker = FakeBroker::start(&[("t", 1)]);
            let config = ProducerConfig { linger: Duration::from_secs(60), ..ProducerConfig::default() };
            let producer = producer(&broker, config).await;
            let missing = producer.send(ProducerRecord::new("missing", b"x")).await;
            assert!(matches!(missing, Err(ClientError::NoSuchTopic(_))), "{missing:?}");
            let out_of_range = producer.send(ProducerRecord::new("t", b"x").with_partition(PartitionId(1))).await;
            assert!(matches!(out_of_range, Err(ClientError::InvalidArgument(_))), "{out_of_range:?}");
            let unsent = producer.send(ProducerRecord::new("t", b"never sent")).await.unwrap();
            drop(producer);
            assert!(matches!(unsent.await, Err(ClientError::Closed)));
        });
    }

    /// A transport whose produce requests wait until released, counting
    /// how many are in flight per partition and in all.
    #[derive(Clone, Default)]
    struct HeldTransport {
        state: Rc<RefCell<Held>>,
    }

    #[derive(Default)]
    struct Held {
        in_flight: FxHashMap<u32, usize>,
        most_per_partition: FxHashMap<u32, usize>,
        total: usize,
        most_total: usize,
        released: bool,
        next_offset: FxHashMap<u32, u64>,
        /// The partition count the cache gives (2 unless set).
        partitions: Option<u32>,
        epoch: u64,
        /// How often the producer asked the cache for a count.
        lookups: usize,
    }

    impl Transport for HeldTransport {
        fn max_frame_bytes(&self) -> usize {
            1 << 20
        }

        fn cached_partitions(&self, _topic: &str) -> Option<u32> {
            let mut held = self.state.borrow_mut();
            held.lookups += 1;
            Some(held.partitions.unwrap_or(2))
        }

        fn metadata_epoch(&self) -> u64 {
            self.state.borrow().epoch
        }

        async fn partitions(&self, topic: &str) -> Result<u32, ClientError> {
            Ok(self.cached_partitions(topic).unwrap_or(2))
        }

        async fn prepare_route(&self, _topic: &str, _partition: PartitionId) -> Result<(), ClientError> {
            Ok(())
        }

        async fn produce_batches(
            &self,
            _topic: &str,
            partition: PartitionId,
            batches: &[u8],
            _acks: AckLevel,
            _timeout_ms: u32,
        ) -> Result<Offset, ClientError> {
            // Offsets in arrival order, as a broker assigns them.
            let count = BatchView::parse_header(batches, usize::MAX).expect("a batch").record_count() as u64;
            let base = {
                let mut held = self.state.borrow_mut();
                let next = held.next_offset.entry(partition.0).or_insert(0);
                let base = *next;
                *next += count;
                let now = held.in_flight.entry(partition.0).or_insert(0);
                *now += 1;
                let now = *now;
                let most = held.most_per_partition.entry(partition.0).or_insert(0);
                *most = (*most).max(now);
                held.total += 1;
                held.most_total = held.most_total.max(held.total);
                base
            };
            while !self.state.borrow().released {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            let mut held = self.state.borrow_mut();
            *held.in_flight.get_mut(&partition.0).expect("counted") -= 1;
            held.total -= 1;
            Ok(Offset::new(base).expect("small"))
        }

        async fn fetch(
            &self,
            _topic: &str,
            _partition: PartitionId,
            _offset: Offset,
            _max_bytes: u32,
            _max_wait_ms: u32,
        ) -> Result<(FetchPartitionResult, Bytes), ClientError> {
            Err(ClientError::InvalidArgument("not served".into()))
        }

        async fn list_offsets(
            &self,
            _topic: &str,
            _partition: PartitionId,
            _spec: OffsetSpec,
        ) -> Result<Option<Offset>, ClientError> {
            Err(ClientError::InvalidArgument("not served".into()))
        }

        async fn init_producer_id(&self) -> Result<ProducerIdentity, ClientError> {
            Ok(ProducerIdentity { producer_id: 7, epoch: 0 })
        }
    }

    #[test]
    fn an_idempotent_producer_keeps_at_most_five_requests_in_flight_per_partition() {
        executor().run(async {
            let transport = HeldTransport::default();
            // One record per batch: each send is a request of its own.
            let config = ProducerConfig {
                batch_bytes: 256,
                max_in_flight: 16,
                idempotent: true,
                linger: Duration::ZERO,
                ..ProducerConfig::default()
            };
            let producer = Producer::new(transport.clone(), config).unwrap();
            // Six per partition (about 330 bytes each): within the
            // producer's buffer of 16 x 256 bytes, so no send waits.
            let value = [b'v'; 250];
            let mut sent = Vec::new();
            for index in 0..12u32 {
                let record = ProducerRecord::new("t", &value).with_partition(PartitionId(index % 2));
                sent.push((index % 2, producer.send(record).await.unwrap()));
            }
            // Wait (however loaded the machine) until both partitions are
            // at their cap, then a little longer for any excess to show.
            let deadline = Instant::now() + Duration::from_secs(20);
            while transport.state.borrow().total < 2 * IDEMPOTENT_IN_FLIGHT_MAX && Instant::now() < deadline {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            glommio::timer::sleep(Duration::from_millis(50)).await;
            {
                let held = transport.state.borrow();
                assert_eq!(held.most_per_partition.get(&0), Some(&IDEMPOTENT_IN_FLIGHT_MAX));
                assert_eq!(held.most_per_partition.get(&1), Some(&IDEMPOTENT_IN_FLIGHT_MAX));
                assert_eq!(held.most_total, 2 * IDEMPOTENT_IN_FLIGHT_MAX, "both partitions at their cap at once");
            }
            transport.state.borrow_mut().released = true;
            let mut expected = [0u64; 2];
            for (partition, future) in sent {
                let offset = future.await.unwrap().unwrap();
                assert_eq!(offset.get(), expected[partition as usize], "in order within the partition");
                expected[partition as usize] += 1;
            }
            let held = transport.state.borrow();
            assert!(held.most_per_partition.values().all(|most| *most <= IDEMPOTENT_IN_FLIGHT_MAX));
        });
    }

    /// A producer over a transport that answers every request at once.
    fn answered(config: ProducerConfig) -> (HeldTransport, Producer<HeldTransport>) {
        let transport = HeldTransport::default();
        transport.state.borrow_mut().released = true;
        let producer = Producer::new(transport.clone(), config).unwrap();
        (transport, producer)
    }

    #[test]
    fn the_partition_count_is_looked_up_again_only_when_the_metadata_epoch_moves() {
        executor().run(async {
            let (transport, producer) = answered(ProducerConfig::default());
            let value = [b'v'; 10];
            let to = |partition| ProducerRecord::new("t", &value).with_partition(PartitionId(partition));
            for _ in 0..100 {
                drop(producer.try_send(to(1)).unwrap().expect("the buffer has room"));
            }
            let lookups = transport.state.borrow().lookups;
            assert!((1..=2).contains(&lookups), "{lookups} lookups for 100 records to one topic");
            // The topic now has one partition: the cache says so, and its
            // epoch moves.
            {
                let mut held = transport.state.borrow_mut();
                held.partitions = Some(1);
                held.epoch += 1;
            }
            let Err(error) = producer.try_send(to(1)) else { panic!("partition 1 is gone, yet the send was taken") };
            assert!(
                matches!(&error, ClientError::InvalidArgument(message) if message.contains("does not exist")),
                "{error}"
            );
            drop(producer.try_send(to(0)).unwrap().expect("the buffer has room"));
        });
    }

    #[test]
    fn a_run_of_records_comes_back_as_one_future_per_batch_with_consecutive_offsets() {
        executor().run(async {
            // About nine 100-byte records per batch: the run fills and seals
            // several batches as it goes.
            let config = ProducerConfig { batch_bytes: 1024, linger: Duration::ZERO, ..ProducerConfig::default() };
            let (_transport, producer) = answered(config);
            let value = [b'v'; 100];
            let records = vec![ProducerRecord::new("t", &value); 50];
            let mut runs = Vec::new();
            assert_eq!(producer.try_send_run(&records, &mut runs).unwrap(), 50);
            assert_eq!(runs.iter().map(|run| run.count).sum::<usize>(), 50);
            assert!(runs.len() >= 5, "{} runs: batches hold about 9 records", runs.len());
            producer.flush().await;
            // Per partition, the runs' offsets follow each other from 0.
            let mut next = [0u64; 2];
            for run in runs {
                let partition = run.first.partition().0 as usize;
                let offset = run.first.await.unwrap().unwrap();
                assert_eq!(offset.get(), next[partition], "runs in order within partition {partition}");
                next[partition] += run.count as u64;
            }
            assert_eq!(next[0] + next[1], 50);
        });
    }

    #[test]
    fn a_run_stops_at_another_topic_and_at_a_refused_record_which_fails_the_next_call() {
        executor().run(async {
            let (_transport, producer) = answered(ProducerConfig::default());
            let value = [b'v'; 10];
            let to = |topic, partition| ProducerRecord::new(topic, &value).with_partition(PartitionId(partition));
            let mut runs = Vec::new();
            let records = [to("t", 0), to("t", 0), to("u", 0), to("t", 0)];
            assert_eq!(producer.try_send_run(&records, &mut runs).unwrap(), 2);
            assert_eq!(producer.try_send_run(&records[2..], &mut runs).unwrap(), 1);
            // Partition 5 does not exist (the transport says 2): the run
            // stops before it, and the call that starts with it fails.
            let records = [to("t", 1), to("t", 5), to("t", 1)];
            assert_eq!(producer.try_send_run(&records, &mut runs).unwrap(), 1);
            let error = producer.try_send_run(&records[1..], &mut runs).unwrap_err();
            assert!(
                matches!(&error, ClientError::InvalidArgument(message) if message.contains("does not exist")),
                "{error}"
            );
            // Every record taken has its place in a run: 2 to t/0, 1 to
            // u/0 and 1 to t/1.
            let counts: Vec<(u32, usize)> = runs.iter().map(|run| (run.first.partition().0, run.count)).collect();
            assert_eq!(counts, [(0, 2), (0, 1), (1, 1)]);
            assert_eq!(producer.try_send_run(&[], &mut runs).unwrap(), 0);
        });
    }

    #[test]
    fn a_run_stops_where_the_buffer_is_full() {
        executor().run(async {
            // Answers are held back: nothing frees the buffer of 2 x 256 bytes.
            let transport = HeldTransport::default();
            let config = ProducerConfig { batch_bytes: 256, max_in_flight: 2, ..ProducerConfig::default() };
            let producer = Producer::new(transport.clone(), config).unwrap();
            let value = [b'v'; 100];
            let records = vec![ProducerRecord::new("t", &value).with_partition(PartitionId(0)); 20];
            let mut runs = Vec::new();
            let taken = producer.try_send_run(&records, &mut runs).unwrap();
            assert!((1..20).contains(&taken), "{taken} of 20 records taken into a 512-byte buffer");
            assert_eq!(runs.iter().map(|run| run.count).sum::<usize>(), taken);
            assert!(producer.buffered_bytes() >= 512);
            assert_eq!(producer.try_send_run(&records[taken..], &mut runs).unwrap(), 0, "still full");
        });
    }
}
