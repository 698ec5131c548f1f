//! A consumer-group member: it joins a group, consumes the partitions the
//! coordinator assigns it, commits how far it got, and gives partitions up
//! when the coordinator moves them to another member.
//!
//! The assignment is cooperative: a partition moving from this member to
//! another first disappears from this member's assignment (in a heartbeat
//! answer with a newer generation). The member then stops fetching it, calls
//! `on_revoked`, commits the position it reached, and only then heartbeats
//! with the newer generation, which is what releases the partition to its
//! next owner. Committing before releasing is what keeps duplicates down: the
//! next owner starts at the committed offset.
//!
//! Delivery is at least once. A partition's position is the offset after the
//! last record `poll` returned, and assignment changes, auto-commits and
//! revocation commits happen only inside `poll`, `commit` and `close` — when
//! the caller is between batches, having processed what the last `poll`
//! returned. A detached heartbeat task keeps the member alive while the
//! caller is busy elsewhere, but it only *records* assignment changes; it
//! never commits or revokes behind the caller's back.
//!
//! Bounds: one fetch in flight per owned partition, each asking for at most
//! `max_bytes`, so one `poll` returns at most `owned partitions × max_bytes`
//! (plus one oversized first batch per partition); assignment changes applied
//! per `poll` are capped at `ASSIGNMENT_ROUNDS_MAX`.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::sync::Semaphore;

use super::cluster::{duration_ms, Client};
use super::consumer::{decode_records, ConsumedRecord, StartPosition};
use super::error::ClientError;
use crate::protocol::types::{Offset, PartitionId};
use crate::protocol::wire::{
    CommitOffsetsResponse, ErrorCode, FetchPartitionResult, GroupAssignment, JoinGroupRequest, OffsetCommit,
    OffsetSpec, TopicPartitions,
};

/// Bytes asked for per partition per fetch by default.
const FETCH_BYTES_DEFAULT: u32 = 1 << 20;
/// How soon to heartbeat again while the coordinator says more changes to
/// this member's assignment are pending.
const REBALANCE_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// The heartbeat task's shortest sleep, so a due heartbeat it has to skip
/// (the consumer is talking to the coordinator itself) is not retried in a
/// spin.
const HEARTBEAT_TICK_MIN: Duration = Duration::from_millis(10);
/// Assignment answers applied in one maintenance pass. Each costs a round
/// trip or two; more changes wait for the next pass, so a coordinator that
/// keeps changing its mind cannot hold a `poll` forever.
const ASSIGNMENT_ROUNDS_MAX: usize = 8;

/// A topic and one of its partitions.
pub type TopicPartition = (String, PartitionId);

/// Called with the partitions just assigned or revoked.
pub type PartitionsCallback = Box<dyn FnMut(&[TopicPartition])>;

/// How a [`GroupConsumer`] joins and behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    pub group: String,
    pub topics: Vec<String>,
    /// The coordinator removes a member it has not heard from for this long.
    pub session_timeout: Duration,
    /// How long this member may take to give up a partition before the
    /// coordinator takes it away anyway.
    pub rebalance_timeout: Duration,
    /// `None`: a third of the session timeout, so two heartbeats may be lost
    /// before the session expires.
    pub heartbeat_interval: Option<Duration>,
    /// Commit the positions of owned partitions this often (from inside
    /// `poll`); `None`: only on [`GroupConsumer::commit`] and revocation.
    pub auto_commit: Option<Duration>,
    /// Where partitions with no committed offset start.
    pub start: StartPosition,
    /// Bytes asked for per partition per fetch.
    pub max_bytes: u32,
}

impl GroupConfig {
    /// Defaults: 10 s session and rebalance timeouts, heartbeats every
    /// third of the session, auto-commit every second, start at the earliest
    /// record, 1 MiB per partition fetch.
    pub fn new(group: impl Into<String>, topics: Vec<String>) -> GroupConfig {
        GroupConfig {
            group: group.into(),
            topics,
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(10),
            heartbeat_interval: None,
            auto_commit: Some(Duration::from_secs(1)),
            start: StartPosition::Earliest,
            max_bytes: FETCH_BYTES_DEFAULT,
        }
    }

    /// The heartbeat interval in effect.
    pub fn heartbeat_every(&self) -> Duration {
        self.heartbeat_interval.unwrap_or(self.session_timeout / 3)
    }

    fn validate(&self) -> Result<(), ClientError> {
        let problem = if self.group.is_empty() {
            Some("the group name is empty".to_string())
        } else if self.topics.is_empty() {
            Some("a group consumer needs at least one topic".to_string())
        } else if self.session_timeout.is_zero() || self.session_timeout.as_millis() > u128::from(u32::MAX) {
            Some(format!("session timeout {:?} out of range", self.session_timeout))
        } else if self.heartbeat_every().is_zero() || self.heartbeat_every() >= self.session_timeout {
            Some(format!(
                "heartbeat interval {:?} must be above zero and below the session timeout {:?}",
                self.heartbeat_every(),
                self.session_timeout
            ))
        } else if self.auto_commit.is_some_and(|every| every.is_zero()) {
            Some("the auto-commit interval must be above zero".to_string())
        } else if self.max_bytes == 0 {
            Some("max_bytes must be above zero".to_string())
        } else {
            None
        };
        match problem {
            Some(problem) => Err(ClientError::InvalidArgument(problem)),
            None => Ok(()),
        }
    }
}

/// One record of an owned partition. The topic name is shared by every
/// record of the partition, so handing out records allocates no strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub topic: Rc<str>,
    pub partition: PartitionId,
    pub record: ConsumedRecord,
}

/// What a member has done so far, for tests and monitoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Commit requests the coordinator accepted in full.
    pub commits: u64,
    /// Commit requests that failed or had a partition refused.
    pub commit_failures: u64,
    /// Assignment changes applied (partitions gained or lost).
    pub assignment_changes: u64,
    /// Joins after the first (removed from the group, or resynchronised).
    pub rejoins: u64,
}

/// A member of a consumer group. Lives on the glommio executor that made it.
///
/// Dropping it without [`close`](Self::close) stops its heartbeats and sends
/// nothing, as a crash would: the coordinator hands its partitions to other
/// members once its session times out, from their last committed offsets.
pub struct GroupConsumer {
    shared: Rc<Shared>,
    /// At most one fetch per owned partition, kept across polls so a
    /// long-poll that has not answered yet is not thrown away.
    fetches: BTreeMap<TopicPartition, InFlightFetch>,
    on_assigned: Option<PartitionsCallback>,
    on_revoked: Option<PartitionsCallback>,
    last_auto_commit: Instant,
}

impl fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state.borrow();
        f.debug_struct("GroupConsumer")
            .field("group", &self.shared.config.group)
            .field("member_id", &state.member_id)
            .field("generation", &state.generation)
            .field("owned", &state.book.len())
            .field("fetches", &self.fetches.len())
            .finish_non_exhaustive()
    }
}

impl GroupConsumer {
    /// Joins the group. The assignment the coordinator answers with is
    /// applied by the first [`poll`](Self::poll), so callbacks set between
    /// `join` and that poll see it.
    pub async fn join(client: Client, config: GroupConfig) -> Result<GroupConsumer, ClientError> {
        config.validate()?;
        // Fail here, with the topic's name, rather than wait for an
        // assignment that never comes.
        for topic in &config.topics {
            client.partitions(topic).await?;
        }
        let answer = client.join_group(join_request(&config, None)).await?;
        let shared = Rc::new(Shared {
            client,
            config,
            lock: Semaphore::new(1),
            state: RefCell::new(Membership::new()),
            closed: Cell::new(false),
        });
        shared.record_join(answer);
        glommio::spawn_local(heartbeat_task(Rc::downgrade(&shared))).detach();
        Ok(GroupConsumer {
            shared,
            fetches: BTreeMap::new(),
            on_assigned: None,
            on_revoked: None,
            last_auto_commit: Instant::now(),
        })
    }

    /// Called with partitions newly assigned, before the first records of
    /// them are fetched.
    pub fn set_on_assigned(&mut self, callback: PartitionsCallback) {
        self.on_assigned = Some(callback);
    }

    /// Called with partitions taken away, before their positions are
    /// committed and they are released; also with every owned partition on
    /// [`close`](Self::close), and with partitions lost when the coordinator
    /// removed this member (those are not committed: they are already
    /// someone else's).
    pub fn set_on_revoked(&mut self, callback: PartitionsCallback) {
        self.on_revoked = Some(callback);
    }

    /// Returns records of owned partitions, waiting up to `max_wait` for
    /// some; an empty vector means none came in time. Heartbeats, applies
    /// assignment changes and auto-commits first, as due.
    pub async fn poll(&mut self, max_wait: Duration) -> Result<Vec<GroupRecord>, ClientError> {
        if self.shared.closed.get() {
            return Err(ClientError::Closed);
        }
        let deadline = Instant::now() + max_wait;
        loop {
            self.maintain().await?;
            self.resolve_positions().await?;
            self.start_fetches(deadline);
            self.wait(deadline).await;
            let records = self.collect()?;
            if !records.is_empty() || Instant::now() >= deadline {
                return Ok(records);
            }
        }
    }

    /// Commits the position of every owned partition (the offset after the
    /// last record `poll` returned) that moved since its last commit.
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        self.maintain().await?;
        let shared = self.shared.clone();
        let _permit = shared.lock.acquire_permit(1).await.map_err(|_| ClientError::Closed)?;
        let offsets = shared.state.borrow().book.uncommitted(None);
        if offsets.is_empty() {
            return Ok(());
        }
        self.send_commit(offsets).await
    }

    /// Commits exactly these offsets ("next offset to consume"), for
    /// partitions this member owns.
    pub async fn commit_offsets(&mut self, offsets: Vec<OffsetCommit>) -> Result<(), ClientError> {
        let shared = self.shared.clone();
        let _permit = shared.lock.acquire_permit(1).await.map_err(|_| ClientError::Closed)?;
        if offsets.is_empty() {
            return Ok(());
        }
        self.send_commit(offsets).await
    }

    /// Continues an owned partition from `offset` on the next poll; `false`
    /// if the partition is not owned. Committing a position before the
    /// group's committed offset is refused (commits never go backwards; an
    /// empty group can be reset instead).
    pub fn seek(&mut self, topic: &str, partition: PartitionId, offset: Offset) -> bool {
        let key = (topic.to_owned(), partition);
        let moved = self.shared.state.borrow_mut().book.seek(&key, offset);
        if moved {
            self.fetches.remove(&key);
        }
        moved
    }

    /// Commits positions (with auto-commit on), leaves the group so its
    /// partitions move at once, and stops heartbeating. Calls `on_revoked`
    /// with every owned partition first. Both steps are tried; the first
    /// error is returned.
    pub async fn close(mut self) -> Result<(), ClientError> {
        let shared = self.shared.clone();
        let _permit = shared.lock.acquire_permit(1).await.map_err(|_| ClientError::Closed)?;
        shared.closed.set(true);
        self.fetches.clear();
        let owned = shared.state.borrow().book.owned();
        self.call_revoked(&owned);
        let mut first_error = None;
        if shared.config.auto_commit.is_some() {
            let offsets = shared.state.borrow().book.uncommitted(None);
            if !offsets.is_empty() {
                first_error = self.send_commit(offsets).await.err();
            }
        }
        let member_id = shared.state.borrow().member_id.clone();
        if let Some(member_id) = member_id {
            if let Err(error) = shared.client.leave_group(&shared.config.group, &member_id).await {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The partitions this member owns now (applied by the last poll).
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.shared.state.borrow().book.owned()
    }

    /// The generation whose assignment this member works in.
    pub fn generation(&self) -> u32 {
        self.shared.state.borrow().generation
    }

    /// `None` while (re)joining.
    pub fn member_id(&self) -> Option<String> {
        self.shared.state.borrow().member_id.clone()
    }

    /// The offset of the next record an owned partition returns; `None`
    /// before the start position is resolved or when it is not owned.
    pub fn position(&self, topic: &str, partition: PartitionId) -> Option<Offset> {
        self.shared.state.borrow().book.position(&(topic.to_owned(), partition))
    }

    /// Whether the coordinator has no change pending for this member and
    /// every change it announced has been applied.
    pub fn is_stable(&self) -> bool {
        let state = self.shared.state.borrow();
        !state.rebalancing && state.pending.is_none() && state.rejoin.is_none() && state.member_id.is_some()
    }

    pub fn stats(&self) -> GroupStats {
        self.shared.state.borrow().stats
    }

    /// Rejoins if the member was removed, heartbeats if due, applies the
    /// newest assignment answer, and auto-commits if due. Holds the lock,
    /// so the heartbeat task stays out of the way meanwhile.
    async fn maintain(&mut self) -> Result<(), ClientError> {
        let shared = self.shared.clone();
        let _permit = shared.lock.acquire_permit(1).await.map_err(|_| ClientError::Closed)?;
        for _ in 0..ASSIGNMENT_ROUNDS_MAX {
            let rejoin = shared.state.borrow_mut().rejoin.take();
            if let Some(rejoin) = rejoin {
                self.rejoin(rejoin).await?;
                continue;
            }
            if shared.heartbeat_due_in().is_zero() {
                shared.heartbeat().await?;
            }
            let pending = shared.state.borrow_mut().pending.take();
            let Some(answer) = pending else { break };
            self.apply(answer).await?;
        }
        self.auto_commit_if_due().await;
        Ok(())
    }

    async fn rejoin(&mut self, rejoin: Rejoin) -> Result<(), ClientError> {
        let shared = self.shared.clone();
        let member_id = match rejoin {
            Rejoin::Fresh => {
                // Removed by the coordinator: its partitions are someone
                // else's now, and so are their positions.
                let lost = {
                    let mut state = shared.state.borrow_mut();
                    state.member_id = None;
                    state.generation = 0;
                    state.pending = None;
                    state.book.clear()
                };
                self.fetches.clear();
                self.call_revoked(&lost);
                None
            }
            Rejoin::Resync => shared.state.borrow().member_id.clone(),
        };
        let fresh = member_id.is_none();
        match shared.client.join_group(join_request(&shared.config, member_id)).await {
            Ok(answer) => {
                shared.state.borrow_mut().stats.rejoins += 1;
                shared.record_join(answer);
                Ok(())
            }
            Err(error) => {
                // Try again on the next maintenance pass.
                shared.state.borrow_mut().rejoin = Some(if fresh { Rejoin::Fresh } else { Rejoin::Resync });
                Err(error)
            }
        }
    }

    /// Moves this member to the assignment in `answer`: revoked partitions
    /// are committed and then released by a heartbeat in the new
    /// generation; new ones start from their committed offsets.
    async fn apply(&mut self, answer: GroupAssignment) -> Result<(), ClientError> {
        let shared = self.shared.clone();
        let diff = diff_assignment(&shared.state.borrow().book.owned_set(), &answer.assignment);
        if !diff.revoked.is_empty() {
            for partition in &diff.revoked {
                self.fetches.remove(partition);
            }
            self.call_revoked(&diff.revoked);
            let offsets = shared.state.borrow().book.uncommitted(Some(&diff.revoked));
            if !offsets.is_empty() {
                if let Err(error) = self.send_commit(offsets).await {
                    // Releasing anyway: holding on would stall the group, and
                    // the next owner re-reads from the last commit.
                    tracing::warn!(group = %shared.config.group, %error, "commit of revoked partitions failed");
                }
            }
            let mut state = shared.state.borrow_mut();
            for partition in &diff.revoked {
                state.book.remove(partition);
            }
        }
        if !diff.assigned.is_empty() {
            let asked = Some(by_topic(&diff.assigned));
            let committed = match shared.client.fetch_committed(&shared.config.group, asked).await {
                Ok(committed) => committed,
                Err(error) => {
                    // Apply it again on the next pass (revocations are done).
                    let mut state = shared.state.borrow_mut();
                    if state.pending.is_none() {
                        state.pending = Some(answer);
                    }
                    return Err(error);
                }
            };
            {
                let mut state = shared.state.borrow_mut();
                for partition in &diff.assigned {
                    let offset = committed
                        .iter()
                        .find(|c| c.topic == partition.0 && c.partition == partition.1)
                        .and_then(|c| c.offset);
                    state.book.assign(partition.clone(), offset);
                }
            }
            self.call_assigned(&diff.assigned);
        }
        {
            let mut state = shared.state.borrow_mut();
            state.generation = answer.generation;
            if !diff.is_empty() {
                state.stats.assignment_changes += 1;
            }
        }
        if !diff.revoked.is_empty() {
            // The heartbeat in the new generation is what hands the revoked
            // partitions to their next owner: send it now, not on schedule.
            shared.heartbeat().await?;
        }
        Ok(())
    }

    async fn auto_commit_if_due(&mut self) {
        let Some(every) = self.shared.config.auto_commit else { return };
        if self.last_auto_commit.elapsed() < every {
            return;
        }
        self.last_auto_commit = Instant::now();
        let offsets = self.shared.state.borrow().book.uncommitted(None);
        if offsets.is_empty() {
            return;
        }
        if let Err(error) = self.send_commit(offsets).await {
            // The next auto-commit covers the same positions; a removed
            // member rejoins on the next pass.
            tracing::warn!(group = %self.shared.config.group, %error, "auto-commit failed");
        }
    }

    /// Sends a commit in the newest generation this member has heard of.
    /// `STALE_GENERATION`: heartbeat to learn the current one and retry once
    /// for the partitions still owned. The caller holds the lock.
    async fn send_commit(&self, mut offsets: Vec<OffsetCommit>) -> Result<(), ClientError> {
        let shared = &self.shared;
        let mut retried = false;
        loop {
            let (member_id, generation) = {
                let state = shared.state.borrow();
                (state.member_id.clone(), state.seen_generation)
            };
            let Some(member_id) = member_id else {
                shared.state.borrow_mut().stats.commit_failures += 1;
                return Err(ClientError::broker(ErrorCode::UNKNOWN_MEMBER, "not a member of the group (rejoining)"));
            };
            let group = &shared.config.group;
            match shared.client.commit_offsets(group, &member_id, generation, offsets.clone()).await {
                Ok(response) => return shared.record_commit(&offsets, &response),
                Err(error) if error.code() == Some(ErrorCode::STALE_GENERATION) && !retried => {
                    retried = true;
                    shared.heartbeat().await?;
                    let state = shared.state.borrow();
                    offsets.retain(|offset| state.book.contains(&(offset.topic.clone(), offset.partition)));
                    if offsets.is_empty() {
                        return Ok(());
                    }
                }
                Err(error) => {
                    let mut state = shared.state.borrow_mut();
                    state.stats.commit_failures += 1;
                    if error.code() == Some(ErrorCode::UNKNOWN_MEMBER) {
                        state.rejoin = Some(Rejoin::Fresh);
                    }
                    return Err(error);
                }
            }
        }
    }

    /// Resolves the start of owned partitions with no position: the start
    /// policy, for partitions the group never committed (or whose committed
    /// offset fell out of the log).
    async fn resolve_positions(&mut self) -> Result<(), ClientError> {
        let unresolved = self.shared.state.borrow().book.unresolved();
        for key in unresolved {
            let spec = match self.shared.config.start {
                StartPosition::Offset(offset) => {
                    self.shared.state.borrow_mut().book.seek(&key, offset);
                    continue;
                }
                StartPosition::Earliest => OffsetSpec::Earliest,
                StartPosition::Latest => OffsetSpec::Latest,
            };
            let offset = self.shared.client.list_offsets(&key.0, key.1, spec).await?.ok_or_else(|| {
                ClientError::UnexpectedResponse(format!("no {spec:?} offset for {}/{}", key.0, key.1))
            })?;
            // Only if it is still owned and unresolved (the partition may
            // have moved while the request was out).
            let mut state = self.shared.state.borrow_mut();
            if state.book.contains(&key) && state.book.position(&key).is_none() {
                state.book.seek(&key, offset);
            }
        }
        Ok(())
    }

    /// Starts a fetch for every owned partition that has none in flight,
    /// long-polling until `deadline`.
    fn start_fetches(&mut self, deadline: Instant) {
        let wait_ms = duration_ms(deadline.saturating_duration_since(Instant::now()));
        let state = self.shared.state.borrow();
        for (key, position) in state.book.iter() {
            let Some(from) = position.next else { continue };
            if self.fetches.contains_key(key) {
                continue;
            }
            let client = self.shared.client.clone();
            let (topic, partition, max_bytes) = (key.0.clone(), key.1, self.shared.config.max_bytes);
            let future: FetchFuture =
                Box::pin(async move { client.fetch(&topic, partition, from, max_bytes, wait_ms).await });
            self.fetches.insert(key.clone(), InFlightFetch { from, future: Some(future), done: None });
        }
    }

    /// Waits until a fetch answers, the membership changes (the heartbeat
    /// task saw a new assignment or was told to rejoin), or `deadline`.
    async fn wait(&mut self, deadline: Instant) {
        let shared = self.shared.clone();
        let fetches = &mut self.fetches;
        let ready = poll_fn(|cx| {
            let mut any = false;
            for fetch in fetches.values_mut() {
                if let Some(future) = fetch.future.as_mut() {
                    if let Poll::Ready(result) = future.as_mut().poll(cx) {
                        fetch.future = None;
                        fetch.done = Some(result);
                    }
                }
                any |= fetch.done.is_some();
            }
            let mut state = shared.state.borrow_mut();
            if any || state.pending.is_some() || state.rejoin.is_some() {
                return Poll::Ready(());
            }
            state.waker = Some(cx.waker().clone());
            Poll::Pending
        });
        let timer = glommio::timer::sleep(deadline.saturating_duration_since(Instant::now()));
        futures_lite::future::or(ready, timer).await;
    }

    /// Takes the answered fetches and turns them into records, advancing
    /// positions. Answers for partitions no longer owned, or whose position
    /// moved meanwhile, are dropped.
    fn collect(&mut self) -> Result<Vec<GroupRecord>, ClientError> {
        let answered: Vec<TopicPartition> =
            self.fetches.iter().filter(|(_, fetch)| fetch.done.is_some()).map(|(key, _)| key.clone()).collect();
        let mut records = Vec::new();
        for key in answered {
            let Some(InFlightFetch { from, done: Some(result), .. }) = self.fetches.remove(&key) else { continue };
            let mut state = self.shared.state.borrow_mut();
            let Some(topic) = state.book.topic_at(&key, from) else { continue };
            match result {
                Ok((_, payload)) => {
                    let mut consumed = Vec::new();
                    if let Some(next) = decode_records(&payload, from, &mut consumed)? {
                        state.book.seek(&key, next.max(from));
                    }
                    records.extend(consumed.into_iter().map(|record| GroupRecord {
                        topic: topic.clone(),
                        partition: key.1,
                        record,
                    }));
                }
                Err(error) if error.code() == Some(ErrorCode::OFFSET_OUT_OF_RANGE) => {
                    // The committed offset is gone (retention) or beyond the
                    // log: fall back to the start policy, as a new group would.
                    tracing::warn!(topic = %key.0, partition = %key.1, %from, "position out of range; using the start policy");
                    state.book.unresolve(&key);
                }
                Err(error) => return Err(error),
            }
        }
        Ok(records)
    }

    fn call_revoked(&mut self, partitions: &[TopicPartition]) {
        if let Some(callback) = self.on_revoked.as_mut().filter(|_| !partitions.is_empty()) {
            callback(partitions);
        }
    }

    fn call_assigned(&mut self, partitions: &[TopicPartition]) {
        if let Some(callback) = self.on_assigned.as_mut().filter(|_| !partitions.is_empty()) {
            callback(partitions);
        }
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        // Stops the heartbeat task; nothing is sent (see the type's doc).
        self.shared.closed.set(true);
    }
}

type FetchResult = Result<(FetchPartitionResult, Bytes), ClientError>;
type FetchFuture = Pin<Box<dyn Future<Output = FetchResult>>>;

struct InFlightFetch {
    /// The position the fetch was sent for.
    from: Offset,
    /// `None` once it answered.
    future: Option<FetchFuture>,
    done: Option<FetchResult>,
}

/// What the consumer and its heartbeat task share.
struct Shared {
    client: Client,
    config: GroupConfig,
    /// Held while talking to the coordinator about membership (heartbeat,
    /// join, commit, applying an assignment), so answers are recorded in the
    /// order requests were sent. One permit.
    lock: Semaphore,
    state: RefCell<Membership>,
    closed: Cell<bool>,
}

/// Why the member has to join again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rejoin {
    /// The coordinator no longer knows the member: join as a new one.
    Fresh,
    /// The coordinator knows the member but not as of the generation it
    /// heartbeats with: join again with the same id to learn its assignment.
    Resync,
}

struct Membership {
    member_id: Option<String>,
    /// The generation whose assignment `book` holds (heartbeats carry it).
    generation: u32,
    /// The generation of the newest answer (commits carry it).
    seen_generation: u32,
    book: PositionBook,
    /// The newest answer that differs from what `book` holds.
    pending: Option<GroupAssignment>,
    rebalancing: bool,
    rejoin: Option<Rejoin>,
    /// When the last heartbeat (or join) was sent.
    last_heartbeat: Instant,
    /// The poll waiting for fetches, woken when the membership changes.
    waker: Option<Waker>,
    stats: GroupStats,
}

impl Membership {
    fn new() -> Membership {
        Membership {
            member_id: None,
            generation: 0,
            seen_generation: 0,
            book: PositionBook::default(),
            pending: None,
            rebalancing: false,
            rejoin: None,
            last_heartbeat: Instant::now(),
            waker: None,
            stats: GroupStats::default(),
        }
    }

    /// Takes in a join or heartbeat answer: what it assigns becomes pending
    /// unless it is what the member already works with.
    fn record_assignment(&mut self, answer: GroupAssignment) {
        self.seen_generation = answer.generation;
        self.rebalancing = answer.rebalancing;
        let changed =
            answer.generation != self.generation || assignment_set(&answer.assignment) != self.book.owned_set();
        if changed {
            self.pending = Some(answer);
            self.wake();
        } else {
            self.pending = None;
        }
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

impl Shared {
    fn record_join(&self, answer: GroupAssignment) {
        let mut state = self.state.borrow_mut();
        state.member_id = Some(answer.member_id.clone());
        state.rejoin = None;
        state.last_heartbeat = Instant::now();
        state.record_assignment(answer);
    }

    fn heartbeat_due_in(&self) -> Duration {
        let state = self.state.borrow();
        heartbeat_due_in(state.last_heartbeat, Instant::now(), self.config.heartbeat_every(), state.rebalancing)
    }

    /// Heartbeats in the applied generation and records the answer. The
    /// caller holds the lock. `UNKNOWN_MEMBER` and `STALE_GENERATION` are
    /// not errors here: they schedule a rejoin.
    async fn heartbeat(&self) -> Result<(), ClientError> {
        let (member_id, generation) = {
            let mut state = self.state.borrow_mut();
            state.last_heartbeat = Instant::now();
            (state.member_id.clone(), state.generation)
        };
        let Some(member_id) = member_id else { return Ok(()) };
        let answer = self.client.heartbeat(&self.config.group, &member_id, generation).await;
        let mut state = self.state.borrow_mut();
        match answer {
            Ok(answer) => {
                state.record_assignment(answer);
                Ok(())
            }
            Err(error) => {
                let rejoin = match error.code() {
                    Some(ErrorCode::UNKNOWN_MEMBER) => Rejoin::Fresh,
                    Some(ErrorCode::STALE_GENERATION) => Rejoin::Resync,
                    _ => return Err(error),
                };
                tracing::info!(group = %self.config.group, %member_id, %error, "rejoining");
                state.rejoin = Some(rejoin);
                state.wake();
                Ok(())
            }
        }
    }

    /// Marks what the coordinator accepted as committed; an error if any
    /// partition was refused.
    fn record_commit(&self, sent: &[OffsetCommit], response: &CommitOffsetsResponse) -> Result<(), ClientError> {
        let mut state = self.state.borrow_mut();
        let mut refused = Vec::new();
        for sent in sent {
            let result = response.partitions.iter().find(|r| r.topic == sent.topic && r.partition == sent.partition);
            match result {
                Some(result) if result.error.is_ok() => {
                    state.book.mark_committed(&(sent.topic.clone(), sent.partition), sent.offset);
                }
                Some(result) => refused.push((format!("{}/{}", sent.topic, sent.partition), result.error)),
                None => refused.push((format!("{}/{}", sent.topic, sent.partition), ErrorCode::INVALID_COMMIT)),
            }
        }
        let Some(&(_, code)) = refused.first() else {
            state.stats.commits += 1;
            return Ok(());
        };
        state.stats.commit_failures += 1;
        let list: Vec<String> =
            refused.iter().map(|(partition, code)| format!("{partition} ({})", code.name())).collect();
        Err(ClientError::broker(code, format!("group {} refused commits for {}", self.config.group, list.join(", "))))
    }
}

/// Keeps the member alive while its owner is busy elsewhere. Holds only a
/// weak reference, so it ends once the consumer is dropped or closed. It
/// records answers but applies nothing (see the module doc).
async fn heartbeat_task(weak: Weak<Shared>) {
    loop {
        let delay = match weak.upgrade() {
            Some(shared) if !shared.closed.get() => shared.heartbeat_due_in(),
            _ => return,
        };
        glommio::timer::sleep(delay.max(HEARTBEAT_TICK_MIN)).await;
        let Some(shared) = weak.upgrade() else { return };
        if shared.closed.get() {
            return;
        }
        if !shared.heartbeat_due_in().is_zero() || shared.state.borrow().rejoin.is_some() {
            continue;
        }
        // Busy: the consumer is talking to the coordinator and heartbeats as
        // part of that.
        let Ok(_permit) = shared.lock.try_acquire_permit(1) else { continue };
        if let Err(error) = shared.heartbeat().await {
            tracing::warn!(group = %shared.config.group, %error, "heartbeat failed");
        }
    }
}

fn join_request(config: &GroupConfig, member_id: Option<String>) -> JoinGroupRequest {
    JoinGroupRequest {
        group: config.group.clone(),
        member_id,
        topics: config.topics.clone(),
        session_timeout_ms: duration_ms(config.session_timeout),
        rebalance_timeout_ms: duration_ms(config.rebalance_timeout),
    }
}

/// How long until the next heartbeat is due: every `interval`, or sooner
/// while the coordinator says changes are pending.
fn heartbeat_due_in(last: Instant, now: Instant, interval: Duration, rebalancing: bool) -> Duration {
    let every = if rebalancing { interval.min(REBALANCE_HEARTBEAT_INTERVAL) } else { interval };
    (last + every).saturating_duration_since(now)
}

/// How an assignment answer changes what a member owns.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct AssignmentDiff {
    /// Owned now, absent from the answer: to be committed and released.
    revoked: Vec<TopicPartition>,
    /// In the answer, not owned yet.
    assigned: Vec<TopicPartition>,
}

impl AssignmentDiff {
    fn is_empty(&self) -> bool {
        self.revoked.is_empty() && self.assigned.is_empty()
    }
}

fn diff_assignment(owned: &BTreeSet<TopicPartition>, answer: &[TopicPartitions]) -> AssignmentDiff {
    let next = assignment_set(answer);
    AssignmentDiff {
        revoked: owned.difference(&next).cloned().collect(),
        assigned: next.difference(owned).cloned().collect(),
    }
}

/// An answer's partitions as a set (duplicates collapse, order is ignored).
fn assignment_set(answer: &[TopicPartitions]) -> BTreeSet<TopicPartition> {
    answer
        .iter()
        .flat_map(|topic| topic.partitions.iter().map(move |partition| (topic.topic.clone(), *partition)))
        .collect()
}

/// The wire's per-topic grouping of a list of partitions.
fn by_topic(partitions: &[TopicPartition]) -> Vec<TopicPartitions> {
    let mut grouped: BTreeMap<&str, Vec<PartitionId>> = BTreeMap::new();
    for (topic, partition) in partitions {
        grouped.entry(topic).or_default().push(*partition);
    }
    grouped.into_iter().map(|(topic, partitions)| TopicPartitions { topic: topic.to_owned(), partitions }).collect()
}

/// Where the member is in each partition it owns, and what the coordinator
/// has committed for it. Plain data, so the bookkeeping is testable alone.
#[derive(Debug, Default)]
struct PositionBook {
    partitions: BTreeMap<TopicPartition, Position>,
}

#[derive(Debug, Clone)]
struct Position {
    topic: Rc<str>,
    /// The next offset to fetch and return; `None` until resolved.
    next: Option<Offset>,
    /// The last offset the coordinator accepted (or had when assigned).
    committed: Option<Offset>,
}

impl PositionBook {
    fn len(&self) -> usize {
        self.partitions.len()
    }

    fn iter(&self) -> impl Iterator<Item = (&TopicPartition, &Position)> {
        self.partitions.iter()
    }

    fn owned(&self) -> Vec<TopicPartition> {
        self.partitions.keys().cloned().collect()
    }

    fn owned_set(&self) -> BTreeSet<TopicPartition> {
        self.partitions.keys().cloned().collect()
    }

    fn contains(&self, key: &TopicPartition) -> bool {
        self.partitions.contains_key(key)
    }

    /// Takes a partition on, starting at its committed offset (`None`: the
    /// start policy decides).
    fn assign(&mut self, key: TopicPartition, committed: Option<Offset>) {
        let topic: Rc<str> = Rc::from(key.0.as_str());
        self.partitions.insert(key, Position { topic, next: committed, committed });
    }

    fn remove(&mut self, key: &TopicPartition) -> Option<Position> {
        self.partitions.remove(key)
    }

    /// Forgets every partition; returns what was owned.
    fn clear(&mut self) -> Vec<TopicPartition> {
        std::mem::take(&mut self.partitions).into_keys().collect()
    }

    fn position(&self, key: &TopicPartition) -> Option<Offset> {
        self.partitions.get(key).and_then(|position| position.next)
    }

    /// Sets an owned partition's position; `false` if it is not owned.
    fn seek(&mut self, key: &TopicPartition, offset: Offset) -> bool {
        match self.partitions.get_mut(key) {
            Some(position) => {
                position.next = Some(offset);
                true
            }
            None => false,
        }
    }

    /// Forgets an owned partition's position so the start policy sets it.
    fn unresolve(&mut self, key: &TopicPartition) {
        if let Some(position) = self.partitions.get_mut(key) {
            position.next = None;
        }
    }

    fn unresolved(&self) -> Vec<TopicPartition> {
        self.partitions.iter().filter(|(_, position)| position.next.is_none()).map(|(key, _)| key.clone()).collect()
    }

    /// The topic name of a partition whose position is still `from`: a
    /// fetch answer sent for `from` applies only then.
    fn topic_at(&self, key: &TopicPartition, from: Offset) -> Option<Rc<str>> {
        self.partitions.get(key).filter(|position| position.next == Some(from)).map(|position| position.topic.clone())
    }

    /// Positions that moved since their last commit, of the partitions in
    /// `only` (`None`: all).
    fn uncommitted(&self, only: Option<&[TopicPartition]>) -> Vec<OffsetCommit> {
        self.partitions
            .iter()
            .filter(|(key, _)| only.is_none_or(|only| only.contains(key)))
            .filter_map(|((topic, partition), position)| {
                let next = position.next?;
                (position.committed != Some(next)).then(|| OffsetCommit {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: next,
                    metadata: String::new(),
                })
            })
            .collect()
    }

    fn mark_committed(&mut self, key: &TopicPartition, offset: Offset) {
        if let Some(position) = self.partitions.get_mut(key) {
            position.committed = Some(offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(topic: &str, partition: u32) -> TopicPartition {
        (topic.to_string(), PartitionId(partition))
    }

    fn offset(value: u64) -> Offset {
        Offset::new(value).unwrap()
    }

    fn answer(topics: &[(&str, &[u32])]) -> Vec<TopicPartitions> {
        topics
            .iter()
            .map(|(topic, partitions)| TopicPartitions {
                topic: topic.to_string(),
                partitions: partitions.iter().map(|p| PartitionId(*p)).collect(),
            })
            .collect()
    }

    #[test]
    fn a_new_assignment_splits_into_revoked_and_assigned() {
        let owned: BTreeSet<TopicPartition> = [tp("a", 0), tp("a", 1), tp("b", 0)].into_iter().collect();
        let diff = diff_assignment(&owned, &answer(&[("a", &[1, 2]), ("c", &[0])]));
        assert_eq!(diff.revoked, vec![tp("a", 0), tp("b", 0)]);
        assert_eq!(diff.assigned, vec![tp("a", 2), tp("c", 0)]);
        // Order and duplicates in the answer do not matter.
        let same = diff_assignment(&owned, &answer(&[("b", &[0]), ("a", &[1, 0, 1])]));
        assert!(same.is_empty(), "{same:?}");
        let from_nothing = diff_assignment(&BTreeSet::new(), &answer(&[("a", &[3, 0])]));
        assert_eq!(from_nothing.assigned, vec![tp("a", 0), tp("a", 3)]);
        assert!(from_nothing.revoked.is_empty());
        let to_nothing = diff_assignment(&owned, &[]);
        assert_eq!(to_nothing.revoked.len(), 3);
    }

    #[test]
    fn partitions_are_grouped_by_topic_for_the_wire() {
        let grouped = by_topic(&[tp("b", 1), tp("a", 2), tp("b", 0)]);
        assert_eq!(grouped, answer(&[("a", &[2]), ("b", &[1, 0])]));
        assert!(by_topic(&[]).is_empty());
    }

    #[test]
    fn positions_start_at_the_commit_and_only_moved_ones_are_committed() {
        let mut book = PositionBook::default();
        book.assign(tp("t", 0), Some(offset(10)));
        book.assign(tp("t", 1), None);
        book.assign(tp("t", 2), Some(offset(0)));
        assert_eq!(book.position(&tp("t", 0)), Some(offset(10)));
        assert_eq!(book.unresolved(), vec![tp("t", 1)]);
        // Nothing moved, nothing resolved: nothing to commit.
        assert!(book.uncommitted(None).is_empty());

        // A fetch answer applies only at the position it was sent for.
        assert_eq!(book.topic_at(&tp("t", 0), offset(10)).as_deref(), Some("t"));
        assert_eq!(book.topic_at(&tp("t", 0), offset(9)), None);
        assert_eq!(book.topic_at(&tp("t", 7), offset(0)), None);

        assert!(book.seek(&tp("t", 0), offset(15)));
        assert!(book.seek(&tp("t", 1), offset(3)));
        assert!(!book.seek(&tp("t", 9), offset(1)), "not owned");
        let pending: Vec<(u32, u64)> =
            book.uncommitted(None).iter().map(|commit| (commit.partition.0, commit.offset.get())).collect();
        assert_eq!(pending, vec![(0, 15), (1, 3)]);
        let only: Vec<u32> =
            book.uncommitted(Some(&[tp("t", 1), tp("t", 2)])).iter().map(|commit| commit.partition.0).collect();
        assert_eq!(only, vec![1]);

        book.mark_committed(&tp("t", 0), offset(15));
        let pending: Vec<u32> = book.uncommitted(None).iter().map(|commit| commit.partition.0).collect();
        assert_eq!(pending, vec![1]);

        // Out of range: the start policy decides again.
        book.unresolve(&tp("t", 2));
        assert_eq!(book.unresolved(), vec![tp("t", 2)]);
        assert!(book.remove(&tp("t", 2)).is_some());
        assert_eq!(book.clear(), vec![tp("t", 0), tp("t", 1)]);
        assert_eq!(book.len(), 0);
    }

    #[test]
    fn heartbeats_come_sooner_while_rebalancing() {
        let start = Instant::now();
        let interval = Duration::from_secs(3);
        assert_eq!(heartbeat_due_in(start, start, interval, false), interval);
        assert_eq!(heartbeat_due_in(start, start, interval, true), REBALANCE_HEARTBEAT_INTERVAL);
        let later = start + Duration::from_secs(1);
        assert_eq!(heartbeat_due_in(start, later, interval, false), Duration::from_secs(2));
        assert_eq!(heartbeat_due_in(start, later, interval, true), Duration::ZERO);
        // A heartbeat interval below the rebalance pace is kept.
        let short = Duration::from_millis(40);
        assert_eq!(heartbeat_due_in(start, start, short, true), short);
    }

    #[test]
    fn an_answer_is_pending_only_when_it_changes_something() {
        let mut state = Membership::new();
        let mut answer = GroupAssignment {
            error: ErrorCode::NONE,
            member_id: "m".into(),
            generation: 3,
            assignment: answer(&[("t", &[0, 1])]),
            rebalancing: true,
        };
        state.record_assignment(answer.clone());
        assert!(state.pending.is_some(), "a new generation is a change");
        assert_eq!(state.seen_generation, 3);
        assert!(state.rebalancing);
        // Applied: the same answer again is no change.
        state.pending = None;
        state.generation = 3;
        state.book.assign(tp("t", 0), None);
        state.book.assign(tp("t", 1), None);
        answer.rebalancing = false;
        state.record_assignment(answer.clone());
        assert!(state.pending.is_none());
        assert!(!state.rebalancing);
        // A newer generation with the same partitions still moves the member on.
        answer.generation = 4;
        state.record_assignment(answer);
        assert_eq!(state.pending.as_ref().map(|pending| pending.generation), Some(4));
    }

    #[test]
    fn configs_are_checked() {
        let config = GroupConfig::new("g", vec!["t".into()]);
        assert_eq!(config.heartbeat_every(), Duration::from_secs(10) / 3);
        assert!(config.validate().is_ok());
        let bad = [
            GroupConfig { group: String::new(), ..config.clone() },
            GroupConfig { topics: Vec::new(), ..config.clone() },
            GroupConfig { session_timeout: Duration::ZERO, ..config.clone() },
            GroupConfig { heartbeat_interval: Some(Duration::from_secs(10)), ..config.clone() },
            GroupConfig { auto_commit: Some(Duration::ZERO), ..config.clone() },
            GroupConfig { max_bytes: 0, ..config.clone() },
        ];
        for config in bad {
            assert!(matches!(config.validate(), Err(ClientError::InvalidArgument(_))), "{config:?}");
        }
        let request = join_request(&config, Some("m-1".into()));
        assert_eq!((request.session_timeout_ms, request.rebalance_timeout_ms), (10_000, 10_000));
        assert_eq!(request.member_id.as_deref(), Some("m-1"));
    }
}
