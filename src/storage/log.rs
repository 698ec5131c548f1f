//! The partition log: an append-only sequence of record batches in segment
//! files, with group-committed durability.
//!
//! Appending is synchronous bookkeeping: the batch is checked, given its
//! offsets (by rewriting `baseOffset`, which lies outside the CRC), indexed,
//! cached for tail readers and queued. A flusher task owned by the log then
//! copies everything queued into aligned buffers, writes them with O_DIRECT
//! (several requests of `write_request_bytes` in flight at once) and follows
//! with one fdatasync, or, with [`SyncMethod::Dsync`], needs none: the
//! segment files are opened with O_DSYNC. Whatever is appended while a flush
//! is in flight goes out in the next one: group commit, so acknowledgements
//! stay cheap under load.
//!
//! O_DIRECT writes must cover whole blocks. The last, partially filled block
//! of the segment is kept in memory and written again, extended, by the next
//! flush; sectors are written atomically, so a crash during that rewrite
//! leaves either the old or the new version of each sector, and both hold the
//! bytes already acknowledged.
//!
//! Readers only ever see the durable prefix of the log: a consumer never sees
//! an event that a crash could take back.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::future;
use glommio::TaskQueueHandle;

use crate::protocol::batch::{set_base_offset, BatchView};
use crate::protocol::chunks::Chunks;
use crate::protocol::types::{AckLevel, Offset, TimestampMs};

use super::config::{FlushPolicy, LogConfig, LogLimits};
use super::error::{Result, StorageError};
use super::io::{align_down, align_up, IoBuf, Storage, StorageFile, SyncMethod, ALIGN};
use super::log_start;
use super::producers::{self, ProducerFields, ProducerTable, Verdict};
use super::recovery::{self, RecoveryMode};
use super::segment::{
    adopt_spare, classify, create_segment, create_spare, index_path, producers_path, producers_tmp_path, seal_segment,
    spare_path, write_small_file, BatchCursor, FileKind, Reserve, Segment,
};
use crate::runtime::notify::Notify;

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendReceipt {
    /// Offset of the batch's first record.
    pub base: Offset,
    /// One past the batch's last record.
    pub next: Offset,
}

/// A batch that passed every check an append makes (one whole batch, size,
/// magic, CRC, counts, the records of an uncompressed one), with the facts
/// the append needs. A caller that must check several batches before
/// appending any (a produce item is taken whole or not at all) checks each
/// once and appends them with [`PartitionLog::append_checked`].
#[derive(Debug)]
pub struct CheckedBatch {
    bytes: BytesMut,
    count: u64,
    max_timestamp: TimestampMs,
    producer: Option<ProducerFields>,
}

impl CheckedBatch {
    /// Checks `batch`, which must be exactly one batch of at most
    /// `batch_bytes_max` bytes.
    pub fn check(batch: BytesMut, batch_bytes_max: usize) -> Result<CheckedBatch> {
        if batch.len() > batch_bytes_max {
            return Err(StorageError::BatchTooLarge { len_bytes: batch.len(), max_bytes: batch_bytes_max });
        }
        let view = BatchView::parse(&batch, batch_bytes_max)?;
        let facts = Facts::of(&view, batch.len())?;
        Ok(facts.with(batch))
    }

    /// A batch the caller built from a checked one (recompressed, or
    /// stamped with the append time, its CRC recomputed): only its header is
    /// read again, the CRC is not checked.
    pub(crate) fn rebuilt(batch: BytesMut, batch_bytes_max: usize) -> Result<CheckedBatch> {
        if batch.len() > batch_bytes_max {
            return Err(StorageError::BatchTooLarge { len_bytes: batch.len(), max_bytes: batch_bytes_max });
        }
        let view = BatchView::parse_header(&batch, batch_bytes_max)?;
        let facts = Facts::of(&view, batch.len())?;
        Ok(facts.with(batch))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> BytesMut {
        self.bytes
    }
}

/// What an append needs to know of a parsed batch.
struct Facts {
    count: u64,
    max_timestamp: TimestampMs,
    producer: Option<ProducerFields>,
}

impl Facts {
    /// The facts of `view`, a parse of `len` bytes that must be one batch.
    fn of(view: &BatchView<'_>, len: usize) -> Result<Facts> {
        if view.total_len() != len {
            return Err(StorageError::NotOneBatch { len_bytes: len, batch_bytes: view.total_len() });
        }
        Ok(Facts {
            // Invariant: parsing checked last_offset_delta >= 0.
            count: u64::from(view.last_offset_delta() as u32) + 1,
            max_timestamp: TimestampMs(view.max_timestamp()),
            producer: ProducerFields::of(view),
        })
    }

    fn with(self, bytes: BytesMut) -> CheckedBatch {
        CheckedBatch { bytes, count: self.count, max_timestamp: self.max_timestamp, producer: self.producer }
    }
}

/// Where a read puts the whole batches it returns, in order: a `Vec`
/// copies them, `Chunks` shares the cache's bytes (a fetch answer). A read
/// that fails puts nothing.
pub trait ReadSink {
    fn put(&mut self, bytes: Bytes);
}

impl ReadSink for Vec<u8> {
    fn put(&mut self, bytes: Bytes) {
        if self.is_empty() {
            // A disk read's buffer is this read's alone: taken, not copied.
            *self = Vec::from(bytes);
        } else {
            self.extend_from_slice(&bytes);
        }
    }
}

impl ReadSink for Chunks {
    fn put(&mut self, bytes: Bytes) {
        self.push(bytes);
    }
}

/// What a read returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOutcome {
    /// Bytes of whole batches appended to the output.
    pub bytes: usize,
    /// Offset after the last batch returned (the next offset to ask for).
    pub next_offset: Offset,
    /// End of the visible (durable) log when the read ran.
    pub visible_end: Offset,
    /// First offset still held (older segments may have been deleted).
    pub log_start: Offset,
}

/// Counters of one log, for observability.
#[derive(Debug, Default, Clone)]
pub struct LogStats {
    pub appended_batches: u64,
    pub appended_bytes: u64,
    pub writes: u64,
    pub written_bytes: u64,
    pub fsyncs: u64,
    pub segments_rolled: u64,
    pub segments_deleted: u64,
    /// Write, fdatasync or seal failures (each poisons the log).
    pub write_errors: u64,
    pub cache_reads: u64,
    pub disk_reads: u64,
}

/// One partition's log. Cheap to clone: clones share the same log.
#[derive(Debug)]
pub struct PartitionLog<S: Storage> {
    inner: Rc<Inner<S>>,
}

impl<S: Storage> Clone for PartitionLog<S> {
    fn clone(&self) -> Self {
        PartitionLog { inner: Rc::clone(&self.inner) }
    }
}

/// How the log is opened.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    pub recovery: RecoveryMode,
    /// Task queue for the flusher (the shard gives flushing fewer shares than
    /// network work); the current queue when `None`.
    pub flush_queue: Option<TaskQueueHandle>,
    /// Told how long each stage of each flush took (the shard keeps
    /// histograms).
    pub flush_observer: Option<FlushObserver>,
}

/// The stages of a flush, in order; a produce request waiting for a durable
/// ack spends its time in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushStage {
    /// From the first batch of a flush being queued to the flusher taking
    /// it: mostly waiting for the flush in progress (group commit).
    Queued,
    /// The O_DIRECT write of the flush's chunks, all of them.
    Write,
    /// The fdatasync after the write.
    Fsync,
}

/// A callback for the duration of each flush stage. It is called with no
/// log state borrowed, so it may call back into the log.
#[derive(Clone)]
pub struct FlushObserver(pub Rc<dyn Fn(FlushStage, Duration)>);

impl std::fmt::Debug for FlushObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlushObserver")
    }
}

#[derive(Debug)]
struct Inner<S: Storage> {
    storage: S,
    dir: PathBuf,
    /// As opened; `limits` holds what a topic's configuration changes later.
    config: LogConfig,
    limits: Cell<LogLimits>,
    /// One change of the log start file at a time.
    start_writer: glommio::sync::Semaphore,
    state: RefCell<State<S>>,
    /// Signalled when there is new work for the flusher.
    work: Notify,
    /// Signalled when appends may proceed or waiters may complete.
    progress: Notify,
    stats: RefCell<LogStats>,
    flush_observer: Option<FlushObserver>,
    line: RefCell<Line>,
    /// Idempotent producers' last batches, checked and updated at each
    /// append's turn.
    producers: RefCell<ProducerTable>,
}

#[derive(Debug)]
struct CachedBatch {
    base: Offset,
    next: Offset,
    bytes: Bytes,
}

#[derive(Debug)]
struct State<S: Storage> {
    /// All segments by base offset; the last one is the active segment.
    segments: BTreeMap<Offset, Segment<S::File>>,
    /// The offset the next appended record gets.
    next_offset: Offset,
    /// Everything below this has been written to its segment file.
    written_next: Offset,
    /// Everything below this is durable, and visible to readers.
    durable_next: Offset,
    /// Batches appended but not yet handed to a write.
    pending: VecDeque<Bytes>,
    pending_bytes: usize,
    /// When the oldest pending batch was queued (set only with a flush
    /// observer, for its [`FlushStage::Queued`]).
    pending_since: Option<Instant>,
    /// End of the data handed to writes in the active segment.
    flushed_end: u64,
    /// Bytes of the active segment from `align_down(flushed_end)` to
    /// `flushed_end`: the partial block the next write rewrites.
    tail_block: Vec<u8>,
    /// Records below this were deleted (DeleteRecords); the log starts at
    /// the later of this and the oldest segment's base.
    start_floor: Offset,
    /// Recent batches, oldest first, serving tail readers from memory.
    cache: VecDeque<CachedBatch>,
    cache_bytes: usize,
    poisoned: Option<Rc<StorageError>>,
    rolling: bool,
    /// A segment a roll left behind is being sealed in the background (at
    /// most one at a time).
    sealing: bool,
    /// The file prepared for the next segment (with `preallocate`).
    spare: Spare<S::File>,
    /// The active segment a spare was last prepared for (once each, even if
    /// preparing it failed).
    spare_for: Option<Offset>,
    closing: bool,
    flusher_done: bool,
    /// The next flush must fdatasync even under the interval policy.
    sync_requested: bool,
    last_sync: Instant,
    active_created: Instant,
}

impl<S: Storage> PartitionLog<S> {
    /// Opens (recovering) or creates the log in `dir`, and starts its flusher.
    pub async fn open(storage: S, dir: &Path, config: LogConfig, options: OpenOptions) -> Result<Self> {
        config.validate()?;
        let recovered = recovery::recover(&storage, dir, &config, options.recovery).await?;
        let producers = recovered.producers;
        let next_offset = recovered.segments.last_key_value().map_or(Offset::ZERO, |(_, seg)| seg.index.next_offset);
        let flushed_end = recovered.segments.last_key_value().map_or(0, |(_, seg)| seg.index.segment_bytes);
        let now = Instant::now();
        let state = State {
            segments: recovered.segments,
            next_offset,
            written_next: next_offset,
            durable_next: next_offset,
            pending: VecDeque::new(),
            pending_bytes: 0,
            pending_since: None,
            flushed_end,
            tail_block: recovered.tail_block,
            start_floor: recovered.start_floor,
            cache: VecDeque::new(),
            cache_bytes: 0,
            poisoned: None,
            rolling: false,
            sealing: false,
            spare: Spare::Absent,
            spare_for: None,
            closing: false,
            flusher_done: false,
            sync_requested: false,
            last_sync: now,
            active_created: now,
        };
        let inner = Rc::new(Inner {
            storage,
            dir: dir.to_path_buf(),
            limits: Cell::new(config.limits()),
            config,
            start_writer: glommio::sync::Semaphore::new(1),
            state: RefCell::new(state),
            work: Notify::default(),
            progress: Notify::default(),
            stats: RefCell::new(LogStats::default()),
            flush_observer: options.flush_observer.clone(),
            line: RefCell::new(Line::default()),
            producers: RefCell::new(producers),
        });
        let flusher = run_flusher(Rc::clone(&inner));
        let task = match options.flush_queue {
            Some(queue) => glommio::spawn_local_into(flusher, queue)
                .map_err(|error| StorageError::Config(format!("flush task queue: {error}")))?,
            None => glommio::spawn_local(flusher),
        };
        task.detach();
        Ok(PartitionLog { inner })
    }

    /// Validates `batch`, exactly one record batch (magic, CRC, lengths,
    /// record count), assigns its
    /// offsets and queues it for the flusher. Waits while the log has
    /// `write_bytes_max` bytes pending (backpressure) or is rolling a
    /// segment. The returned receipt is what [`PartitionLog::wait`] takes.
    ///
    /// A batch of an idempotent producer is checked against the producer's
    /// last batches at its turn: one stored already is not stored again,
    /// and its receipt is the original one (waiting on it waits for the
    /// original to be durable); one out of sequence or of an older epoch is
    /// refused with [`StorageError::Sequence`].
    pub async fn append(&self, batch: BytesMut) -> Result<AppendReceipt> {
        self.append_checked(CheckedBatch::check(batch, self.inner.config.batch_bytes_max)?).await
    }

    /// [`append`](Self::append) of a batch checked already.
    pub async fn append_checked(&self, batch: CheckedBatch) -> Result<AppendReceipt> {
        let batch_bytes_max = self.inner.config.batch_bytes_max;
        if batch.bytes.len() > batch_bytes_max {
            return Err(StorageError::BatchTooLarge { len_bytes: batch.bytes.len(), max_bytes: batch_bytes_max });
        }
        let CheckedBatch { bytes: batch, count, max_timestamp, producer } = batch;
        // Appends take their offsets in the order they were called: a later
        // append never overtakes one waiting for room (or a roll), so a
        // producer's pipelined batches keep their order in the log.
        let ticket = Ticket::take(&self.inner);
        loop {
            let wait = self.inner.progress.notified();
            if !ticket.is_turn() {
                wait.await;
                continue;
            }
            if let Some(fields) = &producer {
                // Checked at the turn: every earlier batch of the producer
                // has been recorded by now.
                match self.inner.producers.borrow().check(fields).map_err(StorageError::Sequence)? {
                    Verdict::Duplicate(stored) => return Ok(AppendReceipt { base: stored.base, next: stored.next }),
                    Verdict::Append => {}
                }
            }
            match self.inner.admit(batch.len(), count)? {
                Admission::Go => break,
                Admission::Wait => wait.await,
                Admission::Roll => self.inner.roll().await?,
                Admission::Extend(target) => self.inner.extend(target).await?,
            }
        }
        let receipt = self.inner.push(batch, count, max_timestamp);
        if let Some(fields) = &producer {
            self.inner.producers.borrow_mut().record(fields, receipt.base, receipt.next, producers::now_ms());
        }
        Ok(receipt)
    }

    /// Waits until the batch of `receipt` has reached `level`.
    pub async fn wait(&self, receipt: AppendReceipt, level: AckLevel) -> Result<()> {
        loop {
            let wait = self.inner.progress.notified();
            {
                let state = self.inner.state.borrow();
                let reached = match level {
                    AckLevel::None => return Ok(()),
                    AckLevel::Written => state.written_next,
                    AckLevel::Durable => state.durable_next,
                };
                if reached >= receipt.next {
                    return Ok(());
                }
                if let Some(error) = &state.poisoned {
                    return Err(StorageError::Poisoned(Rc::clone(error)));
                }
                if state.flusher_done {
                    return Err(StorageError::Closed);
                }
                if level == AckLevel::Durable && !state.sync_requested {
                    // Interval policy: a durable waiter should not wait for the timer.
                    drop(state);
                    self.inner.request_sync();
                }
            }
            wait.await;
        }
    }

    /// Appends and waits for `level` in one call.
    pub async fn append_and_wait(&self, batch: BytesMut, level: AckLevel) -> Result<AppendReceipt> {
        let receipt = self.append(batch).await?;
        self.wait(receipt, level).await?;
        Ok(receipt)
    }

    /// Appends whole batches, starting with the one that contains `from`, to
    /// `out` until adding the next would pass `max_bytes` (the first batch is
    /// returned whole even if it alone is larger). Only durable data is
    /// returned. An empty result at the end of the log means "wait for more".
    pub async fn read(&self, from: Offset, max_bytes: usize, out: &mut impl ReadSink) -> Result<ReadOutcome> {
        let (visible_end, log_start) = self.bounds();
        let mut outcome = ReadOutcome { bytes: 0, next_offset: from, visible_end, log_start };
        if from == visible_end {
            return Ok(outcome);
        }
        if from < log_start || from > visible_end {
            return Err(StorageError::OffsetOutOfRange { requested: from, start: log_start, end: visible_end });
        }
        if let Some((bytes, next)) = self.inner.read_cache(from, visible_end, max_bytes, out) {
            self.inner.stats.borrow_mut().cache_reads += 1;
            outcome.bytes = bytes;
            outcome.next_offset = next;
            return Ok(outcome);
        }
        self.inner.stats.borrow_mut().disk_reads += 1;
        let (bytes, next) = self.inner.read_disk(from, visible_end, max_bytes, out).await?;
        outcome.bytes = bytes;
        outcome.next_offset = next;
        Ok(outcome)
    }

    /// The first offset of the first batch whose max timestamp is at or after
    /// `time`, among durable data; `None` if there is none. Batch precision:
    /// the offset returned may belong to an earlier record of that batch.
    pub async fn offset_for_time(&self, time: TimestampMs) -> Result<Option<Offset>> {
        let candidates: Vec<_> = {
            let state = self.inner.state.borrow();
            state
                .segments
                .values()
                .filter_map(|seg| {
                    let pos = seg.index.time_floor_pos(time)?;
                    Some((Rc::clone(&seg.file), seg.path.clone(), pos, seg.visible_bytes))
                })
                .collect()
        };
        let durable_next = self.inner.state.borrow().durable_next;
        for (file, path, pos, limit) in candidates {
            let mut cursor = BatchCursor::new(&*file, &path, pos, limit, self.inner.config.batch_bytes_max);
            while let Some((info, _)) = cursor.next().await? {
                if info.base >= durable_next {
                    return Ok(None);
                }
                if info.max_timestamp >= time {
                    // The batch may begin below a start set by DeleteRecords.
                    return Ok(Some(info.base.max(self.bounds().1)));
                }
            }
        }
        Ok(None)
    }

    /// Deletes whole old segments beyond the retention limits (never the
    /// active one). Returns how many were deleted.
    pub async fn enforce_retention(&self, now: TimestampMs) -> Result<usize> {
        let mut deleted = 0;
        // Never a segment still being sealed: its index would come back.
        while let Some(victim) = {
            self.inner.seal_done().await;
            self.inner.take_expired_segment(now)
        } {
            self.inner.remove_segment(victim).await?;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Deletes the records below `before` (Kafka's DeleteRecords): the log
    /// then starts there, durably, and whole segments below it are removed.
    /// `before` may be at most the durable end; one at or below the current
    /// start changes nothing. Returns the log start afterwards.
    pub async fn delete_records_before(&self, before: Offset) -> Result<Offset> {
        let Ok(_writer) = self.inner.start_writer.acquire_permit(1).await else {
            return Err(StorageError::Closed);
        };
        let (visible_end, start) = self.bounds();
        if before > visible_end {
            return Err(StorageError::OffsetOutOfRange { requested: before, start, end: visible_end });
        }
        if before <= start {
            return Ok(start);
        }
        let inner = &self.inner;
        let (tmp, target) = (log_start::tmp_path(&inner.dir), log_start::path(&inner.dir));
        write_small_file(&inner.storage, &inner.dir, &tmp, &target, &log_start::encode(before)).await?;
        inner.state.borrow_mut().start_floor = before;
        inner.evict_cached_below_start();
        // Whole segments below the new start go now rather than at the next
        // retention pass; their index files go with them.
        while let Some(victim) = {
            inner.seal_done().await;
            inner.take_segment_below_start()
        } {
            inner.remove_segment(victim).await?;
        }
        Ok(self.bounds().1)
    }

    /// Changes the settings a topic's configuration controls. A new segment
    /// size applies from the next roll check; retention from its next pass.
    pub fn set_limits(&self, limits: LogLimits) {
        self.inner.limits.set(limits);
    }

    pub fn limits(&self) -> LogLimits {
        self.inner.limits.get()
    }

    /// The visible (durable) end and the first offset still held.
    pub fn bounds(&self) -> (Offset, Offset) {
        let state = self.inner.state.borrow();
        (state.durable_next, state.log_start())
    }

    /// The offset the next append will get (including non-durable appends).
    pub fn next_offset(&self) -> Offset {
        self.inner.state.borrow().next_offset
    }

    /// Bytes of visible batches from the one holding `offset` on, as far as
    /// the tail cache tells; `usize::MAX` when `offset` lies below the
    /// cache (the data is on disk: more than a long-poll waits for).
    pub fn visible_bytes_from(&self, offset: Offset) -> usize {
        let state = self.inner.state.borrow();
        if offset >= state.durable_next {
            return 0;
        }
        if state.cache.front().is_none_or(|oldest| oldest.base > offset) {
            return usize::MAX;
        }
        let first = state.cache.partition_point(|batch| batch.next <= offset);
        state
            .cache
            .range(first..)
            .take_while(|batch| batch.base < state.durable_next)
            .map(|batch| batch.bytes.len())
            .sum()
    }

    /// Completes when the visible end moves past `offset` (or the log fails
    /// or closes). Long-polling readers park here.
    pub async fn wait_visible_past(&self, offset: Offset) {
        loop {
            let wait = self.inner.progress.notified();
            {
                let state = self.inner.state.borrow();
                if state.durable_next > offset || state.poisoned.is_some() || state.flusher_done {
                    return;
                }
            }
            wait.await;
        }
    }

    pub fn stats(&self) -> LogStats {
        self.inner.stats.borrow().clone()
    }

    /// Total bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.inner.state.borrow().segments.values().map(|seg| seg.index.segment_bytes).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.inner.state.borrow().segments.len()
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The error that poisoned the log, if any.
    pub fn poisoned(&self) -> Option<Rc<StorageError>> {
        self.inner.state.borrow().poisoned.clone()
    }

    /// Flushes and syncs everything appended, stops the flusher and closes
    /// the files. Appends after this fail with [`StorageError::Closed`].
    pub async fn close(self) -> Result<()> {
        {
            let mut state = self.inner.state.borrow_mut();
            state.closing = true;
            state.sync_requested = true;
        }
        self.inner.work.notify_all();
        self.inner.progress.notify_all();
        // A roll under way finishes first (it may be waiting for the
        // flusher's last sync), and so does sealing the segment it left:
        // its segments are then the ones closed.
        loop {
            let wait = self.inner.progress.notified();
            let done = {
                let state = self.inner.state.borrow();
                state.flusher_done && !state.rolling && !state.sealing && !matches!(state.spare, Spare::Preparing)
            };
            if done {
                break;
            }
            wait.await;
        }
        let spare = std::mem::replace(&mut self.inner.state.borrow_mut().spare, Spare::Absent);
        if let Spare::Ready { file, .. } = spare {
            // Unused preallocated space goes back; a restart would delete it.
            let path = spare_path(&self.inner.dir);
            let _ = file.close().await;
            if let Err(error) = self.inner.storage.remove(&path).await {
                tracing::warn!(path = %path.display(), %error, "could not remove the spare segment");
            }
        }
        let poisoned = self.inner.state.borrow().poisoned.clone();
        let segments = std::mem::take(&mut self.inner.state.borrow_mut().segments);
        for segment in segments.into_values() {
            // A file still held by a concurrent reader is closed when dropped.
            if let Ok(file) = Rc::try_unwrap(segment.file) {
                file.close().await.map_err(|source| StorageError::io("closing", &segment.path, source))?;
            }
        }
        match poisoned {
            Some(error) => Err(StorageError::Poisoned(error)),
            None => Ok(()),
        }
    }
}

/// An append's place in line. Dropped (pushed, failed or cancelled), it
/// lets the next one go.
struct Ticket<'a, S: Storage> {
    inner: &'a Inner<S>,
    number: u64,
}

impl<'a, S: Storage> Ticket<'a, S> {
    fn take(inner: &'a Inner<S>) -> Self {
        let mut line = inner.line.borrow_mut();
        let number = line.next;
        line.next += 1;
        Ticket { inner, number }
    }

    fn is_turn(&self) -> bool {
        self.inner.line.borrow().serving == self.number
    }
}

impl<S: Storage> Drop for Ticket<'_, S> {
    fn drop(&mut self) {
        let mut line = self.inner.line.borrow_mut();
        if line.serving != self.number {
            // Cancelled while waiting its turn: skipped when the turn comes.
            line.abandoned.insert(self.number);
            return;
        }
        line.serving += 1;
        loop {
            let next = line.serving;
            if !line.abandoned.remove(&next) {
                break;
            }
            line.serving += 1;
        }
        drop(line);
        self.inner.progress.notify_all();
    }
}

/// The order appends are admitted in.
#[derive(Debug, Default)]
struct Line {
    next: u64,
    serving: u64,
    /// Tickets given up before their turn. Bounded by the appends waiting.
    abandoned: std::collections::BTreeSet<u64>,
}

/// What an append must do before it may push its batch.
enum Admission {
    Go,
    Wait,
    Roll,
    /// Reserve the active segment's space up to this many bytes first.
    Extend(u64),
}

/// One write handed to the flusher: contiguous aligned chunks starting at
/// `pos`, written concurrently.
struct WriteJob<F, B> {
    file: Rc<F>,
    path: PathBuf,
    chunks: Vec<B>,
    pos: u64,
    /// Offsets below this are covered once the write completes.
    next: Offset,
    /// Logical end of the active segment after this write.
    end: u64,
    /// How long its first batch waited for the flusher (with an observer),
    /// told to the observer once no state is borrowed.
    queued: Option<Duration>,
}

/// The next segment's file, prepared ahead of the roll.
#[derive(Debug)]
enum Spare<F> {
    Absent,
    Preparing,
    Ready { file: F, allocated_bytes: u64 },
}

/// What the flusher does next.
enum FlushWork<F, B> {
    Write(WriteJob<F, B>),
    Sync { file: Rc<F>, path: PathBuf, next: Offset, end: u64 },
    Wait(Option<Duration>),
    Exit,
}

impl<S: Storage> State<S> {
    fn log_start(&self) -> Offset {
        let oldest = self.segments.first_key_value().map_or(self.next_offset, |(base, _)| *base);
        oldest.max(self.start_floor).min(self.next_offset)
    }

    fn active(&self) -> &Segment<S::File> {
        self.segments.last_key_value().expect("a log always has an active segment").1
    }

    fn active_mut(&mut self) -> &mut Segment<S::File> {
        self.segments.last_entry().expect("a log always has an active segment").into_mut()
    }
}

impl<S: Storage> Inner<S> {
    fn admit(&self, len: usize, count: u64) -> Result<Admission> {
        let state = self.state.borrow();
        if let Some(error) = &state.poisoned {
            return Err(StorageError::Poisoned(Rc::clone(error)));
        }
        if state.closing {
            return Err(StorageError::Closed);
        }
        if state.rolling {
            return Ok(Admission::Wait);
        }
        let active = state.active();
        let active_bytes = active.index.segment_bytes;
        let segment_bytes_max = self.limits.get().segment_bytes_max;
        let too_big = active_bytes + len as u64 > segment_bytes_max;
        let needed = align_up(active_bytes + len as u64);
        let too_old = self
            .config
            .segment_age_max_ms
            .is_some_and(|age_ms| state.active_created.elapsed() >= Duration::from_millis(age_ms));
        // Index entries hold offsets relative to the segment base as u32.
        let offsets_exhausted = state.next_offset.plus(count).distance_from(active.index.base) > u64::from(u32::MAX);
        if active_bytes > 0 && (too_big || too_old || offsets_exhausted) {
            return Ok(Admission::Roll);
        }
        if state.next_offset.plus(count) == Offset::MAX {
            return Err(StorageError::Config("the log has used up its offsets".into()));
        }
        if state.pending_bytes + len > self.config.write_bytes_max {
            return Ok(Admission::Wait);
        }
        if self.config.preallocate && needed > active.allocated_bytes {
            return Ok(Admission::Extend(segment_bytes_max.max(needed)));
        }
        Ok(Admission::Go)
    }

    /// Assigns offsets and queues the batch. No `.await`: nothing else runs
    /// between [`Inner::admit`] and this.
    fn push(&self, mut batch: BytesMut, count: u64, max_timestamp: TimestampMs) -> AppendReceipt {
        let mut state = self.state.borrow_mut();
        let base = state.next_offset;
        let next = base.plus(count);
        set_base_offset(&mut batch, base.to_wire());
        let bytes = batch.freeze();
        let len = bytes.len();
        state.active_mut().index.push_batch(base, next, len as u64, max_timestamp);
        state.next_offset = next;
        if state.pending.is_empty() && self.flush_observer.is_some() {
            state.pending_since = Some(Instant::now());
        }
        state.pending.push_back(bytes.clone());
        state.pending_bytes += len;
        state.cache.push_back(CachedBatch { base, next, bytes });
        state.cache_bytes += len;
        while state.cache_bytes > self.config.tail_cache_bytes && state.cache.len() > 1 {
            let evicted = state.cache.pop_front().expect("cache holds more than one batch");
            state.cache_bytes -= evicted.bytes.len();
        }
        drop(state);
        let mut stats = self.stats.borrow_mut();
        stats.appended_batches += 1;
        stats.appended_bytes += len as u64;
        self.work.notify_all();
        AppendReceipt { base, next }
    }

    fn request_sync(&self) {
        self.state.borrow_mut().sync_requested = true;
        self.work.notify_all();
    }

    /// Decides the flusher's next step, taking the pending batches into a
    /// write buffer if there are any.
    fn next_work(&self) -> FlushWork<S::File, S::Buf> {
        let mut state = self.state.borrow_mut();
        if state.poisoned.is_some() {
            return FlushWork::Exit;
        }
        let unsynced = state.written_next > state.durable_next;
        // Bound the bytes written but not synced (the region a crash can
        // tear, see LogConfig::torn_window_bytes): under the interval policy,
        // sync before a write would take it past write_bytes_max.
        let unsynced_bytes = state.flushed_end - state.active().visible_bytes;
        let must_sync_first =
            unsynced && unsynced_bytes + state.pending_bytes as u64 > self.config.write_bytes_max as u64;
        if !state.pending.is_empty() && !must_sync_first {
            return FlushWork::Write(self.take_write(&mut state));
        }
        if unsynced {
            let due = match self.config.flush {
                FlushPolicy::EveryBatch => Duration::ZERO,
                FlushPolicy::Interval { interval_ms } => {
                    Duration::from_millis(interval_ms).saturating_sub(state.last_sync.elapsed())
                }
            };
            if due.is_zero() || state.sync_requested || state.closing || must_sync_first {
                let active = state.active();
                return FlushWork::Sync {
                    file: Rc::clone(&active.file),
                    path: active.path.clone(),
                    next: state.written_next,
                    end: state.flushed_end,
                };
            }
            return FlushWork::Wait(Some(due));
        }
        state.sync_requested = false;
        if state.closing {
            return FlushWork::Exit;
        }
        FlushWork::Wait(None)
    }

    /// Copies the carried partial block and every pending batch into aligned,
    /// zero-padded chunks of `write_request_bytes`. A carried block goes in
    /// a chunk of its own (see [`ChunkLayout`]).
    fn take_write(&self, state: &mut State<S>) -> WriteJob<S::File, S::Buf> {
        let pos = align_down(state.flushed_end);
        let data_len = state.tail_block.len() + state.pending_bytes;
        let layout = ChunkLayout::new(self.config.write_request_bytes, !state.tail_block.is_empty());
        let total = align_up(data_len as u64) as usize;
        let mut chunks = Vec::with_capacity(layout.locate(total.saturating_sub(1)).0 + 1);
        let mut left = total;
        while left > 0 {
            let len = left.min(layout.chunk_len(chunks.len()));
            chunks.push(self.storage.alloc_buf(len));
            left -= len;
        }
        let mut filled = copy_into_chunks(&mut chunks, &layout, 0, &state.tail_block);
        for batch in state.pending.drain(..) {
            filled = copy_into_chunks(&mut chunks, &layout, filled, &batch);
        }
        // Recovery finds the end of the log where the zeros begin.
        let (last_index, last_from) = layout.locate(filled);
        if let Some(last) = chunks.get_mut(last_index) {
            last.as_mut_slice()[last_from..].fill(0);
        }
        // The block being filled is written again, extended, by the next flush.
        let end = pos + filled as u64;
        let carried_from = (align_down(end) - pos) as usize;
        state.tail_block.clear();
        if carried_from < filled {
            let (index, from) = layout.locate(carried_from);
            state.tail_block.extend_from_slice(&chunks[index].as_slice()[from..from + (filled - carried_from)]);
        }
        state.pending_bytes = 0;
        let queued = state.pending_since.take().map(|since| since.elapsed());
        state.flushed_end = end;
        let active = state.active();
        let (file, path) = (Rc::clone(&active.file), active.path.clone());
        WriteJob { file, path, chunks, pos, next: state.next_offset, end, queued }
    }

    async fn timed_fdatasync(&self, file: &S::File) -> std::io::Result<()> {
        let started = Instant::now();
        let result = file.fdatasync().await;
        self.observe(FlushStage::Fsync, started.elapsed());
        if result.is_ok() {
            self.stats.borrow_mut().fsyncs += 1;
        }
        result
    }

    fn observe(&self, stage: FlushStage, took: Duration) {
        if let Some(observer) = &self.flush_observer {
            (observer.0)(stage, took);
        }
    }

    fn poison(&self, error: StorageError) {
        tracing::error!(dir = %self.dir.display(), %error, "partition log poisoned; it accepts nothing more until reopened");
        self.stats.borrow_mut().write_errors += 1;
        self.state.borrow_mut().poisoned = Some(Rc::new(error));
        self.progress.notify_all();
    }

    fn mark_written(&self, next: Offset, len: usize) {
        self.state.borrow_mut().written_next = next;
        let mut stats = self.stats.borrow_mut();
        stats.writes += 1;
        stats.written_bytes += len as u64;
    }

    fn mark_durable(&self, next: Offset, end: u64) {
        let mut state = self.state.borrow_mut();
        state.durable_next = state.durable_next.max(next);
        state.last_sync = Instant::now();
        state.active_mut().visible_bytes = end;
    }

    /// Serves a read from the tail cache if it holds `from`.
    fn read_cache(
        &self,
        from: Offset,
        visible_end: Offset,
        max_bytes: usize,
        out: &mut impl ReadSink,
    ) -> Option<(usize, Offset)> {
        let state = self.state.borrow();
        if state.cache.front().is_none_or(|oldest| oldest.base > from) {
            return None;
        }
        let first = state.cache.partition_point(|batch| batch.next <= from);
        let (mut bytes, mut next) = (0, from);
        for batch in state.cache.range(first..) {
            let fits = bytes == 0 || bytes + batch.bytes.len() <= max_bytes;
            if batch.base >= visible_end || !fits {
                break;
            }
            out.put(batch.bytes.clone());
            bytes += batch.bytes.len();
            next = batch.next;
        }
        Some((bytes, next))
    }

    async fn read_disk(
        &self,
        from: Offset,
        visible_end: Offset,
        max_bytes: usize,
        out: &mut impl ReadSink,
    ) -> Result<(usize, Offset)> {
        let (file, path, start, limit) = {
            let state = self.state.borrow();
            let (_, segment) = state.segments.range(..=from).next_back().expect("from >= log start");
            (Rc::clone(&segment.file), segment.path.clone(), segment.index.floor_pos(from), segment.visible_bytes)
        };
        let mut cursor = BatchCursor::new(&*file, &path, start, limit, self.config.batch_bytes_max);
        // Sized for what the read returns (at most max_bytes, at most the
        // segment's rest), so it does not grow by copying; only a first
        // batch larger than max_bytes makes it grow.
        let room = max_bytes.min(usize::try_from(limit.saturating_sub(start.0)).unwrap_or(usize::MAX));
        let (mut read, mut next) = (BytesMut::with_capacity(room), from);
        while let Some((info, batch)) = cursor.next().await? {
            if info.next <= from {
                continue;
            }
            let fits = read.is_empty() || read.len() + info.len <= max_bytes;
            if info.base >= visible_end || !fits {
                break;
            }
            // Out of the DMA buffer that the cursor reuses: the one copy.
            read.extend_from_slice(batch);
            next = info.next;
        }
        let bytes = read.len();
        out.put(read.freeze());
        Ok((bytes, next))
    }

    /// Reserves the active segment's disk space up to `target` bytes. Runs
    /// in an append's turn, so appends wait meanwhile; the flusher may go
    /// on writing the bytes already reserved. A full disk fails this append
    /// with `NoSpace` (retriable) and changes nothing: the space shows as
    /// full before any byte is written past what is reserved.
    async fn extend(&self, target: u64) -> Result<()> {
        let (file, path) = {
            let state = self.state.borrow();
            let active = state.active();
            (Rc::clone(&active.file), active.path.clone())
        };
        file.pre_allocate(target).await.map_err(|source| StorageError::io("preallocating", &path, source))?;
        let mut state = self.state.borrow_mut();
        if state.segments.is_empty() {
            return Err(StorageError::Closed); // closed while reserving
        }
        let active = state.active_mut();
        // A roll in between would have started a new segment, whose own
        // reservation this does not describe.
        if active.path == path {
            active.allocated_bytes = active.allocated_bytes.max(target);
        }
        Ok(())
    }

    /// Seals the active segment and starts a new one. Appends wait meanwhile.
    /// The roll runs in a task of its own: an append dropped while it waits
    /// (its client gone) must not leave a roll half done, or `rolling` set
    /// for good, which would stall every later append.
    async fn roll(self: &Rc<Self>) -> Result<()> {
        self.state.borrow_mut().rolling = true;
        let inner = Rc::clone(self);
        let roll = glommio::spawn_local(async move {
            let result = inner.roll_inner().await;
            inner.state.borrow_mut().rolling = false;
            inner.progress.notify_all();
            result
        })
        .detach();
        roll.await.unwrap_or(Err(StorageError::Closed))
    }

    async fn roll_inner(self: &Rc<Self>) -> Result<()> {
        // Everything in the old segment must be durable before it is sealed.
        self.request_sync();
        loop {
            let wait = self.progress.notified();
            {
                let state = self.state.borrow();
                if let Some(error) = &state.poisoned {
                    return Err(StorageError::Poisoned(Rc::clone(error)));
                }
                let spare_settled = !matches!(state.spare, Spare::Preparing);
                let idle = state.durable_next == state.next_offset && state.pending.is_empty();
                if idle && !state.sealing && spare_settled {
                    break;
                }
            }
            wait.await;
        }
        // Create the next segment first: if the disk is full, nothing changes.
        let base = self.state.borrow().next_offset;
        let segment_bytes_max = self.limits.get().segment_bytes_max;
        let spare = std::mem::replace(&mut self.state.borrow_mut().spare, Spare::Absent);
        let new_segment = match spare {
            Spare::Ready { file, allocated_bytes } => {
                adopt_spare(&self.storage, &self.dir, file, allocated_bytes, base, &self.config).await?
            }
            Spare::Absent | Spare::Preparing => {
                create_segment(&self.storage, &self.dir, base, &self.config, segment_bytes_max, Reserve::Whole).await?
            }
        };
        let (old_file, old_path, old_index) = {
            let state = self.state.borrow();
            let active = state.active();
            (Rc::clone(&active.file), active.path.clone(), active.index.clone())
        };
        let mut state = self.state.borrow_mut();
        state.segments.insert(base, new_segment);
        state.flushed_end = 0;
        state.tail_block.clear();
        state.active_created = Instant::now();
        state.sealing = true;
        let previous_base = state.segments.range(..base).next_back().map(|(base, _)| *base);
        drop(state);
        // Appends go on into the new segment while the old one is sealed
        // (trimmed, its index written): about two thirds of a roll's time,
        // measured. Its data is durable already, so a crash before the seal
        // ends leaves a segment without an index, which recovery scans and
        // seals.
        let inner = Rc::clone(self);
        glommio::spawn_local(async move {
            let sealed = seal_segment(&inner.storage, &inner.dir, &*old_file, &old_path, &old_index).await;
            inner.state.borrow_mut().sealing = false;
            match sealed {
                Ok(()) => {}
                // A full disk: the segment stays unsealed until a restart
                // seals it; nothing is lost.
                Err(error) if error.is_retriable() => {
                    tracing::warn!(path = %old_path.display(), %error, "could not seal a segment; a restart will")
                }
                // Any other failure (a failed fdatasync above all) leaves
                // the file state unknown.
                Err(error) => inner.poison(error),
            }
            inner.progress.notify_all();
        })
        .detach();
        self.stats.borrow_mut().segments_rolled += 1;
        // The producers' state as of the new segment's start, taken now
        // (nothing is appended while rolling) and written in the background
        // so appends do not wait for it: a restart reads it instead of the
        // sealed segments. The newest two are kept. Failing costs a restart
        // that knowledge, not the roll.
        let snapshot = self.producers.borrow().encode_snapshot();
        let inner = Rc::clone(self);
        glommio::spawn_local(async move {
            let (tmp, target) = (producers_tmp_path(&inner.dir, base), producers_path(&inner.dir, base));
            if let Err(error) = write_small_file(&inner.storage, &inner.dir, &tmp, &target, &snapshot).await {
                tracing::warn!(dir = %inner.dir.display(), %error, "could not write a producer snapshot");
            }
            inner.remove_producer_snapshots_before(previous_base.unwrap_or(base)).await;
        })
        .detach();
        tracing::debug!(dir = %self.dir.display(), base = %base, "rolled segment");
        Ok(())
    }

    /// Removes producer snapshots of segments before `keep_from`.
    async fn remove_producer_snapshots_before(&self, keep_from: Offset) {
        let Ok(listing) = self.storage.list(&self.dir).await else { return };
        for path in listing {
            if let FileKind::Producers(base) = classify(&path) {
                if base < keep_from {
                    if let Err(error) = self.storage.remove(&path).await {
                        tracing::warn!(path = %path.display(), %error, "could not remove an old producer snapshot");
                    }
                }
            }
        }
    }

    /// Removes a segment already taken out of the log, and its index file.
    async fn remove_segment(&self, victim: Segment<S::File>) -> Result<()> {
        let Segment { file, path, index, .. } = victim;
        // Readers holding the file keep it open; the unlink is safe.
        drop(file);
        let io = |op, source| StorageError::io(op, &path, source);
        self.storage.remove(&path).await.map_err(|source| io("removing segment", source))?;
        let index_file = index_path(&self.dir, index.base);
        if let Err(error) = self.storage.remove(&index_file).await {
            tracing::debug!(path = %index_file.display(), %error, "no index file to remove");
        }
        // One directory sync per segment: a crash must never bring back
        // an older segment without the newer ones (a gap in the log).
        let dir = &self.dir;
        self.storage.sync_dir(dir).await.map_err(|source| StorageError::io("syncing", dir, source))?;
        self.stats.borrow_mut().segments_deleted += 1;
        tracing::info!(segment = %path.display(), "deleted segment");
        Ok(())
    }

    /// Starts preparing the next segment's file once the active segment is
    /// half full, so that its roll only renames it. The flusher asks at each
    /// write.
    fn prepare_spare_if_due(self: &Rc<Self>) {
        if !self.config.preallocate {
            return;
        }
        let segment_bytes_max = self.limits.get().segment_bytes_max;
        {
            let mut state = self.state.borrow_mut();
            let active = state.active();
            let (base, half_full) = (active.index.base, active.index.segment_bytes * 2 >= segment_bytes_max);
            let due = half_full && matches!(state.spare, Spare::Absent) && state.spare_for != Some(base);
            if !due || state.closing || state.poisoned.is_some() {
                return;
            }
            state.spare = Spare::Preparing;
            state.spare_for = Some(base);
        }
        let inner = Rc::clone(self);
        glommio::spawn_local(async move {
            let prepared = create_spare(&inner.storage, &inner.dir, segment_bytes_max, &inner.config).await;
            inner.state.borrow_mut().spare = match prepared {
                Ok(file) => Spare::Ready { file, allocated_bytes: segment_bytes_max },
                Err(error) => {
                    // The roll creates the segment itself, as without a spare.
                    tracing::debug!(dir = %inner.dir.display(), %error, "could not prepare the next segment");
                    Spare::Absent
                }
            };
            inner.progress.notify_all();
        })
        .detach();
    }

    /// Completes once no segment is being sealed.
    async fn seal_done(&self) {
        loop {
            let wait = self.progress.notified();
            if !self.state.borrow().sealing {
                return;
            }
            wait.await;
        }
    }

    /// The oldest segment if every record in it lies below the log start
    /// (never the active segment).
    fn take_segment_below_start(&self) -> Option<Segment<S::File>> {
        let mut state = self.state.borrow_mut();
        let start = state.log_start();
        let second = *state.segments.keys().nth(1)?;
        // The next segment's base is one past the oldest one's last record.
        if second > start {
            return None;
        }
        state.segments.pop_first().map(|(_, victim)| victim)
    }

    fn evict_cached_below_start(&self) {
        let mut state = self.state.borrow_mut();
        let start = state.log_start();
        while state.cache.front().is_some_and(|batch| batch.next <= start) {
            let evicted = state.cache.pop_front().expect("checked non-empty");
            state.cache_bytes -= evicted.bytes.len();
        }
    }

    fn take_expired_segment(&self, now: TimestampMs) -> Option<Segment<S::File>> {
        let mut state = self.state.borrow_mut();
        if state.segments.len() < 2 {
            return None;
        }
        let total: u64 = state.segments.values().map(|seg| seg.index.segment_bytes).sum();
        let (_, oldest) = state.segments.first_key_value()?;
        let limits = self.limits.get();
        let over_size = limits.retention_bytes.is_some_and(|limit| total - oldest.index.segment_bytes >= limit);
        let expired = limits.retention_ms.is_some_and(|limit_ms| {
            let limit_ms = i64::try_from(limit_ms).unwrap_or(i64::MAX);
            oldest.index.max_timestamp.0 < now.0.saturating_sub(limit_ms)
        });
        if !over_size && !expired {
            return None;
        }
        let (_, victim) = state.segments.pop_first()?;
        drop(state);
        self.evict_cached_below_start();
        Some(victim)
    }
}

/// The flusher task: one per log, alive until the log closes or fails.
async fn run_flusher<S: Storage>(inner: Rc<Inner<S>>) {
    loop {
        let wait = inner.work.notified();
        match inner.next_work() {
            FlushWork::Write(job) => {
                // Once per flush rather than per append; it runs beside the write.
                inner.prepare_spare_if_due();
                if let Err(error) = write_and_maybe_sync(&inner, job).await {
                    inner.poison(error);
                }
            }
            FlushWork::Sync { file, path, next, end } => match inner.timed_fdatasync(&*file).await {
                Ok(()) => inner.mark_durable(next, end),
                Err(source) => inner.poison(StorageError::io("fdatasync", path, source)),
            },
            FlushWork::Wait(None) => wait.await,
            FlushWork::Wait(Some(due)) => {
                future::or(wait, async {
                    glommio::timer::sleep(due).await;
                })
                .await
            }
            FlushWork::Exit => break,
        }
        inner.progress.notify_all();
    }
    inner.state.borrow_mut().flusher_done = true;
    inner.progress.notify_all();
}

async fn write_and_maybe_sync<S: Storage>(inner: &Inner<S>, job: WriteJob<S::File, S::Buf>) -> Result<()> {
    let WriteJob { file, path, chunks, pos, next, end, queued } = job;
    if let Some(queued) = queued {
        inner.observe(FlushStage::Queued, queued);
    }
    let len = chunks.iter().map(|chunk| chunk.as_slice().len()).sum();
    let started = Instant::now();
    write_chunks(&*file, chunks, pos).await.map_err(|source| StorageError::io("writing", &path, source))?;
    inner.observe(FlushStage::Write, started.elapsed());
    inner.mark_written(next, len);
    inner.progress.notify_all();
    // The ack rule: a write is durable once it has completed through a
    // file opened with O_DSYNC, or once an fdatasync issued after it
    // completed has completed.
    let durable = match inner.config.segment_sync() {
        SyncMethod::Dsync => true,
        SyncMethod::Fdatasync => {
            let due = match inner.config.flush {
                FlushPolicy::EveryBatch => true,
                FlushPolicy::Interval { interval_ms } => {
                    let state = inner.state.borrow();
                    state.sync_requested
                        || state.closing
                        || state.last_sync.elapsed() >= Duration::from_millis(interval_ms)
                }
            };
            if due {
                let synced = inner.timed_fdatasync(&*file).await;
                synced.map_err(|source| StorageError::io("fdatasync", &path, source))?;
            }
            due
        }
    };
    if durable {
        inner.mark_durable(next, end);
    }
    Ok(())
}

/// How a flush's bytes are cut into write requests: `chunk_bytes` each, but
/// a carried partial block alone in the first.
///
/// The carried block was written by the last flush; the blocks after it are
/// preallocated, which the filesystem marks unwritten. ext4 cannot issue a
/// direct write that spans both kinds of extent without blocking, so
/// io_uring hands such a write to a worker thread on the shard's CPU. Cut
/// apart, both writes are issued inline. Measured with glommio on this
/// project's VM (ext4, kernel 6.18): 1,985 of 2,000 rewrite-and-extend
/// writes went to a worker, and 1 of 2,000 when cut.
#[derive(Debug, Clone, Copy)]
struct ChunkLayout {
    first: usize,
    chunk_bytes: usize,
}

impl ChunkLayout {
    fn new(chunk_bytes: usize, carries_block: bool) -> Self {
        let first = if carries_block { ALIGN as usize } else { chunk_bytes };
        Self { first, chunk_bytes }
    }

    /// The largest size of chunk `index`.
    fn chunk_len(&self, index: usize) -> usize {
        if index == 0 {
            self.first
        } else {
            self.chunk_bytes
        }
    }

    /// The chunk holding logical byte `at` of the write, and where in it.
    fn locate(&self, at: usize) -> (usize, usize) {
        match at.checked_sub(self.first) {
            None => (0, at),
            Some(rest) => (1 + rest / self.chunk_bytes, rest % self.chunk_bytes),
        }
    }
}

/// Copies `src` into the chunks at logical position `at`; returns the
/// position after it.
fn copy_into_chunks<B: IoBuf>(chunks: &mut [B], layout: &ChunkLayout, mut at: usize, mut src: &[u8]) -> usize {
    while !src.is_empty() {
        let (index, offset) = layout.locate(at);
        let chunk = chunks[index].as_mut_slice();
        let n = src.len().min(chunk.len() - offset);
        chunk[offset..offset + n].copy_from_slice(&src[..n]);
        src = &src[n..];
        at += n;
    }
    at
}

/// Writes consecutive chunks starting at `pos`, all in flight at once (the
/// device is fastest with several moderate requests queued), and waits for
/// every one of them before reporting the first error.
async fn write_chunks<F: StorageFile>(file: &F, chunks: Vec<F::Buf>, pos: u64) -> std::io::Result<()> {
    let mut chunk_pos = pos;
    let mut writes: Vec<Pin<Box<dyn Future<Output = std::io::Result<()>> + '_>>> = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        let len = chunk.as_slice().len() as u64;
        writes.push(Box::pin(file.write_at(chunk, chunk_pos)));
        chunk_pos += len;
    }
    let mut first_error = None;
    future::poll_fn(|cx| {
        writes.retain_mut(|write| match write.as_mut().poll(cx) {
            Poll::Ready(result) => {
                if let Err(error) = result {
                    first_error.get_or_insert(error);
                }
                false
            }
            Poll::Pending => true,
        });
        if writes.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    first_error.map_or(Ok(()), Err)
}
