//! A consumer-group member over the Kafka API, so `fanout` and `pipeline`
//! run through the Kafka front door too: Kafka's classic group protocol as
//! its clients speak it, with loadgen's Kafka client underneath.
//!
//! A membership task of the member's own finds the coordinator, joins
//! (JoinGroup, asking for a member id first), assigns the partitions when
//! it leads (Kafka's range assignor), syncs (SyncGroup) and heartbeats. The
//! protocol is eager: when a heartbeat says a rebalance started, the member
//! gives up every partition it owns (the poller stops fetching, commits
//! the positions it reached and releases them), and only then does the task
//! join again. Committing before rejoining is what keeps duplicates down:
//! the next owner starts at the committed offset.
//!
//! As with the native `GroupConsumer`, assignment changes and commits
//! happen only inside `poll`, `commit` and `close`, while the caller is
//! between batches: delivery is at least once. The task only records what
//! the coordinator said.
//!
//! The coordinator gets a connection of the member's own, since the broker
//! holds a JoinGroup until the whole group has joined (see
//! [`CoordinatorLink`]).
//!
//! Bounds: one fetch in flight per owned partition, each for at most
//! `max_bytes`; finished fetches wait in a queue no longer than the number
//! of fetches started.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use glommio::sync::Semaphore;
use glommio::task::JoinHandle;
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedPartitions;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, ConsumerProtocolAssignment, ConsumerProtocolSubscription, GroupId, HeartbeatRequest, HeartbeatResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use ringbroker::client::{
    decode_records, ClientError, GroupConfig, GroupRecord, GroupStats, StartPosition, TopicPartition, Transport,
};
use ringbroker::protocol::types::{Offset, PartitionId};
use ringbroker::protocol::wire::{ErrorCode, FetchPartitionResult, OffsetSpec};

use crate::kafka::{kafka_error, topic_name, CoordinatorLink, KafkaClient};

/// The versions spoken: the newest the broker serves of each (OffsetFetch
/// v7: the newest that asks for one group).
const JOIN_GROUP_VERSION: i16 = 7;
const SYNC_GROUP_VERSION: i16 = 5;
const HEARTBEAT_VERSION: i16 = 4;
const LEAVE_GROUP_VERSION: i16 = 4;
const OFFSET_COMMIT_VERSION: i16 = 8;
const OFFSET_FETCH_VERSION: i16 = 7;
/// The consumer protocol's subscription and assignment layout version.
const CONSUMER_PROTOCOL_VERSION: i16 = 0;
/// The newest consumer protocol layout `kafka-protocol` reads; a newer
/// one only appends fields, so it is read as this one.
const CONSUMER_PROTOCOL_NEWEST: i16 = 3;
const PROTOCOL_TYPE: &str = "consumer";
const ASSIGNOR: &str = "range";

/// Kafka's group error codes (Kafka's numbers).
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const NOT_COORDINATOR: i16 = 16;
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const MEMBER_ID_REQUIRED: i16 = 79;

/// How long the broker may hold a fetch for data.
const FETCH_MAX_WAIT_MS: u32 = 100;
/// Failed join attempts in a row (coordinator gone, connection lost)
/// before the member gives up; with the backoff, about 5 s.
const JOIN_FAILURES_MAX: u32 = 50;
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// How often a membership task waiting for the poller to release its
/// partitions looks again.
const RELEASE_CHECK: Duration = Duration::from_millis(1);

/// What the membership task and the poller share.
struct Shared {
    client: KafkaClient,
    config: GroupConfig,
    /// `None` after a coordinator error: the next call finds it again.
    link: RefCell<Option<CoordinatorLink>>,
    state: RefCell<State>,
}

#[derive(Default)]
struct State {
    member_id: String,
    /// A synced assignment the poller has not taken yet.
    offered: Option<(i32, Vec<TopicPartition>)>,
    /// Set by the task: the poller must give up what it owns (`true`:
    /// committing first; `false`: the assignment is lost already).
    revoke: Option<bool>,
    /// Set by the poller once it gave up what it owned after `revoke`.
    released: bool,
    closing: bool,
    /// Why the task gave up; `poll` reports it.
    failed: Option<ClientError>,
    /// Assignments synced so far.
    syncs: u64,
}

impl Shared {
    async fn link(&self) -> Result<CoordinatorLink, ClientError> {
        if let Some(link) = self.link.borrow().clone() {
            return Ok(link);
        }
        let link = self.client.coordinator(&self.config.group).await?;
        *self.link.borrow_mut() = Some(link.clone());
        Ok(link)
    }

    fn group_id(&self) -> GroupId {
        GroupId(text(&self.config.group))
    }

    fn member_id(&self) -> String {
        self.state.borrow().member_id.clone()
    }
}

/// A fetch that finished, waiting for the poller.
struct Fetched {
    topic: Rc<str>,
    partition: PartitionId,
    from: Offset,
    result: Result<(FetchPartitionResult, Bytes), ClientError>,
}

struct Finished {
    queue: RefCell<VecDeque<Fetched>>,
    /// One unit per fetch pushed.
    signal: Semaphore,
}

/// A member of a consumer group over the Kafka API. Lives on the glommio
/// executor that made it.
pub struct KafkaGroupMember {
    shared: Rc<Shared>,
    /// Dropping it stops the membership task.
    membership: Option<JoinHandle<()>>,
    /// The generation whose assignment is owned.
    generation: i32,
    /// Whether the last synced assignment is applied and still holds.
    applied: bool,
    /// Owned partitions and their positions: the offset after the last
    /// record `poll` returned.
    owned: BTreeMap<(Rc<str>, PartitionId), Offset>,
    /// The positions the coordinator has, as far as this member knows.
    committed: BTreeMap<(Rc<str>, PartitionId), Offset>,
    fetching: BTreeSet<(Rc<str>, PartitionId)>,
    finished: Rc<Finished>,
    last_commit: Instant,
    commits: u64,
    commit_failures: u64,
    assignment_changes: u64,
}

impl KafkaGroupMember {
    /// Finds the group's coordinator and starts joining; the first
    /// assignment arrives in a later `poll`.
    pub async fn join(client: KafkaClient, config: GroupConfig) -> Result<KafkaGroupMember, ClientError> {
        if config.topics.is_empty() {
            return Err(ClientError::InvalidArgument("a group member needs at least one topic".into()));
        }
        let link = client.coordinator(&config.group).await?;
        let shared =
            Rc::new(Shared { client, config, link: RefCell::new(Some(link)), state: RefCell::new(State::default()) });
        let membership = glommio::spawn_local(membership(Rc::clone(&shared))).detach();
        Ok(KafkaGroupMember {
            shared,
            membership: Some(membership),
            generation: -1,
            applied: false,
            owned: BTreeMap::new(),
            committed: BTreeMap::new(),
            fetching: BTreeSet::new(),
            finished: Rc::new(Finished { queue: RefCell::default(), signal: Semaphore::new(0) }),
            last_commit: Instant::now(),
            commits: 0,
            commit_failures: 0,
            assignment_changes: 0,
        })
    }

    /// Applies what the coordinator said, commits when due, and returns the
    /// records of the fetches that finish within `max_wait`.
    pub async fn poll(&mut self, max_wait: Duration) -> Result<Vec<GroupRecord>, ClientError> {
        let deadline = Instant::now() + max_wait;
        self.maintain().await?;
        self.start_fetches();
        while self.finished.queue.borrow().is_empty() {
            let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|left| !left.is_zero()) else {
                break;
            };
            futures_lite::future::or(
                async {
                    let _ = self.finished.signal.acquire(1).await;
                },
                glommio::timer::sleep(left),
            )
            .await;
        }
        let mut records = Vec::new();
        let finished: Vec<Fetched> = self.finished.queue.borrow_mut().drain(..).collect();
        for fetched in finished {
            self.take_fetch(fetched, &mut records).await?;
        }
        Ok(records)
    }

    /// Commits the positions of the owned partitions that moved.
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        let changed: Vec<((Rc<str>, PartitionId), Offset)> = self
            .owned
            .iter()
            .filter(|(key, offset)| self.committed.get(*key) != Some(offset))
            .map(|(key, offset)| (key.clone(), *offset))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        let result = self.send_commit(&changed).await;
        match &result {
            Ok(()) => self.commits += 1,
            Err(_) => self.commit_failures += 1,
        }
        result
    }

    /// Leaves the group: stops fetching, commits what was consumed (with
    /// auto-commit on) and sends LeaveGroup.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.shared.state.borrow_mut().closing = true;
        if let Some(membership) = self.membership.take() {
            membership.cancel();
        }
        self.drain_fetches().await;
        let mut first_error = None;
        if self.shared.config.auto_commit.is_some() && self.applied {
            first_error = self.commit().await.err();
        }
        let member_id = self.shared.member_id();
        if !member_id.is_empty() {
            if let Err(error) = self.leave(member_id).await {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The partitions this member owns now (applied by the last poll).
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.owned.keys().map(|(topic, partition)| (topic.to_string(), *partition)).collect()
    }

    pub fn position(&self, topic: &str, partition: PartitionId) -> Option<Offset> {
        self.owned.iter().find(|((t, p), _)| &**t == topic && *p == partition).map(|(_, offset)| *offset)
    }

    /// Whether the member owns a synced assignment and no change to it is
    /// pending.
    pub fn is_stable(&self) -> bool {
        let state = self.shared.state.borrow();
        self.applied && state.revoke.is_none() && state.offered.is_none()
    }

    pub fn stats(&self) -> GroupStats {
        GroupStats {
            commits: self.commits,
            commit_failures: self.commit_failures,
            assignment_changes: self.assignment_changes,
            rejoins: self.shared.state.borrow().syncs.saturating_sub(1),
        }
    }

    /// Gives partitions up or takes them, as the membership task asked, and
    /// auto-commits when due.
    async fn maintain(&mut self) -> Result<(), ClientError> {
        if let Some(error) = self.shared.state.borrow_mut().failed.take() {
            return Err(error);
        }
        let revoke = self.shared.state.borrow_mut().revoke.take();
        if let Some(commit) = revoke {
            self.drain_fetches().await;
            if commit && self.applied {
                // A failed commit means those records are read again by
                // the next owner, not lost; the stats count it.
                let _ = self.commit().await;
            }
            if !self.owned.is_empty() {
                self.assignment_changes += 1;
            }
            self.owned.clear();
            self.committed.clear();
            self.applied = false;
            self.shared.state.borrow_mut().released = true;
        }
        let offered = self.shared.state.borrow_mut().offered.take();
        if let Some((generation, partitions)) = offered {
            self.generation = generation;
            let positions = self.starting_positions(&partitions).await?;
            if !positions.is_empty() {
                self.assignment_changes += 1;
            }
            self.committed = positions.clone();
            self.owned = positions;
            self.applied = true;
            self.last_commit = Instant::now();
        }
        if let Some(every) = self.shared.config.auto_commit {
            if self.applied && self.last_commit.elapsed() >= every {
                self.last_commit = Instant::now();
                let _ = self.commit().await;
            }
        }
        Ok(())
    }

    /// Starts a fetch for every owned partition without one in flight.
    fn start_fetches(&mut self) {
        for (key, from) in &self.owned {
            if !self.fetching.insert(key.clone()) {
                continue;
            }
            let (topic, partition, from) = (Rc::clone(&key.0), key.1, *from);
            let client = self.shared.client.clone();
            let finished = Rc::clone(&self.finished);
            let max_bytes = self.shared.config.max_bytes;
            glommio::spawn_local(async move {
                let result = client.fetch(&topic, partition, from, max_bytes, FETCH_MAX_WAIT_MS).await;
                finished.queue.borrow_mut().push_back(Fetched { topic, partition, from, result });
                finished.signal.signal(1);
            })
            .detach();
        }
    }

    /// Waits for the fetches in flight and drops what they bring: the
    /// partitions are being given up.
    async fn drain_fetches(&mut self) {
        while !self.fetching.is_empty() {
            let _ = self.finished.signal.acquire(1).await;
            for fetched in self.finished.queue.borrow_mut().drain(..) {
                self.fetching.remove(&(fetched.topic, fetched.partition));
            }
        }
    }

    /// Turns a finished fetch into records and advances the position.
    async fn take_fetch(&mut self, fetched: Fetched, records: &mut Vec<GroupRecord>) -> Result<(), ClientError> {
        let key = (Rc::clone(&fetched.topic), fetched.partition);
        self.fetching.remove(&key);
        let Some(position) = self.owned.get(&key).copied().filter(|position| *position == fetched.from) else {
            return Ok(());
        };
        let payload = match fetched.result {
            Ok((_, payload)) => payload,
            Err(ClientError::Broker { code: ErrorCode::OFFSET_OUT_OF_RANGE, .. }) => {
                // Retention removed what this member had not read yet.
                let start = self.start_offset(&key.0, key.1).await?;
                self.owned.insert(key, start);
                return Ok(());
            }
            Err(error) => return Err(error),
        };
        let mut consumed = Vec::new();
        let next = decode_records(&payload, position, &mut consumed)?;
        let advanced = match consumed.last() {
            Some(last) => last.offset.plus(1),
            None => next.filter(|next| *next > position).unwrap_or(position),
        };
        self.owned.insert(key, advanced);
        records.extend(consumed.into_iter().map(|record| GroupRecord {
            topic: Rc::clone(&fetched.topic),
            partition: fetched.partition,
            record,
        }));
        Ok(())
    }

    /// Where each newly assigned partition starts: its committed offset, or
    /// the configured start where nothing is committed.
    async fn starting_positions(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<(Rc<str>, PartitionId), Offset>, ClientError> {
        let mut positions = BTreeMap::new();
        if partitions.is_empty() {
            return Ok(positions);
        }
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (topic, partition) in partitions {
            by_topic.entry(topic).or_default().push(partition.0 as i32);
        }
        let request = OffsetFetchRequest::default().with_group_id(self.shared.group_id()).with_topics(Some(
            by_topic
                .iter()
                .map(|(topic, indexes)| {
                    OffsetFetchRequestTopic::default()
                        .with_name(topic_name(topic))
                        .with_partition_indexes(indexes.clone())
                })
                .collect(),
        ));
        let link = self.shared.link().await?;
        let response: OffsetFetchResponse =
            link.call(ApiKey::OffsetFetch, OFFSET_FETCH_VERSION, &request, Duration::ZERO).await?;
        if response.error_code != 0 {
            return Err(kafka_error(response.error_code, "fetching committed offsets"));
        }
        let mut committed = BTreeMap::new();
        for topic in &response.topics {
            for partition in &topic.partitions {
                if partition.error_code != 0 {
                    return Err(kafka_error(partition.error_code, "fetching committed offsets"));
                }
                if let Some(offset) = Offset::from_wire(partition.committed_offset) {
                    committed.insert((topic.name.0.to_string(), partition.partition_index), offset);
                }
            }
        }
        for (topic, partition) in partitions {
            let start = match committed.get(&(topic.clone(), partition.0 as i32)) {
                Some(offset) => *offset,
                None => self.start_offset(topic, *partition).await?,
            };
            positions.insert((Rc::from(topic.as_str()), *partition), start);
        }
        Ok(positions)
    }

    async fn start_offset(&self, topic: &str, partition: PartitionId) -> Result<Offset, ClientError> {
        let spec = match self.shared.config.start {
            StartPosition::Earliest => OffsetSpec::Earliest,
            StartPosition::Latest => OffsetSpec::Latest,
            StartPosition::Offset(offset) => return Ok(offset),
        };
        Ok(self.shared.client.list_offsets(topic, partition, spec).await?.unwrap_or(Offset::ZERO))
    }

    async fn send_commit(&mut self, offsets: &[((Rc<str>, PartitionId), Offset)]) -> Result<(), ClientError> {
        let mut by_topic: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
        for ((topic, partition), offset) in offsets {
            by_topic.entry(topic).or_default().push(
                OffsetCommitRequestPartition::default()
                    .with_partition_index(partition.0 as i32)
                    .with_committed_offset(offset.to_wire()),
            );
        }
        let request = OffsetCommitRequest::default()
            .with_group_id(self.shared.group_id())
            .with_generation_id_or_member_epoch(self.generation)
            .with_member_id(text(&self.shared.member_id()))
            .with_topics(
                by_topic
                    .into_iter()
                    .map(|(topic, partitions)| {
                        OffsetCommitRequestTopic::default().with_name(topic_name(topic)).with_partitions(partitions)
                    })
                    .collect(),
            );
        let link = self.shared.link().await?;
        let response: OffsetCommitResponse =
            link.call(ApiKey::OffsetCommit, OFFSET_COMMIT_VERSION, &request, Duration::ZERO).await?;
        let mut refused = None;
        for topic in &response.topics {
            for partition in &topic.partitions {
                let key =
                    offsets.iter().find(|((t, p), _)| **t == *topic.name.0 && p.0 as i32 == partition.partition_index);
                match (partition.error_code, key) {
                    (0, Some((key, offset))) => {
                        self.committed.insert(key.clone(), *offset);
                    }
                    (0, None) => {}
                    (code, _) => {
                        refused.get_or_insert(code);
                    }
                }
            }
        }
        match refused {
            Some(code) => Err(kafka_error(code, &format!("committing offsets of group {}", self.shared.config.group))),
            None => Ok(()),
        }
    }

    async fn leave(&self, member_id: String) -> Result<(), ClientError> {
        let request = LeaveGroupRequest::default()
            .with_group_id(self.shared.group_id())
            .with_members(vec![MemberIdentity::default().with_member_id(text(&member_id))]);
        let link = self.shared.link().await?;
        let response: LeaveGroupResponse =
            link.call(ApiKey::LeaveGroup, LEAVE_GROUP_VERSION, &request, Duration::ZERO).await?;
        let code = response.members.first().map_or(response.error_code, |member| member.error_code);
        match code {
            0 => Ok(()),
            code => Err(kafka_error(code, &format!("leaving group {}", self.shared.config.group))),
        }
    }
}

impl Drop for KafkaGroupMember {
    fn drop(&mut self) {
        // Like a crash: no more heartbeats; the coordinator hands the
        // partitions on once the session times out.
        self.shared.state.borrow_mut().closing = true;
    }
}

/// How a join attempt ended.
enum Joined {
    Assigned(i32, Vec<TopicPartition>),
    /// Join again at once (a member id was handed out, or the group moved on).
    Again,
}

/// The membership task: join, sync, heartbeat until a rebalance; again.
async fn membership(shared: Rc<Shared>) {
    let failures = Cell::new(0);
    while !shared.state.borrow().closing {
        match join_and_sync(&shared).await {
            Ok(Joined::Assigned(generation, partitions)) => {
                failures.set(0);
                {
                    let mut state = shared.state.borrow_mut();
                    state.offered = Some((generation, partitions));
                    state.syncs += 1;
                }
                heartbeat_until_rebalance(&shared, generation).await;
            }
            Ok(Joined::Again) => {}
            Err(error) => {
                failures.set(failures.get() + 1);
                if failures.get() >= JOIN_FAILURES_MAX {
                    shared.state.borrow_mut().failed = Some(error);
                    return;
                }
                if matches!(error, ClientError::Broker { code: ErrorCode::NOT_COORDINATOR, .. })
                    || matches!(error, ClientError::Io(_) | ClientError::Closed | ClientError::Timeout)
                {
                    *shared.link.borrow_mut() = None;
                }
                glommio::timer::sleep(RETRY_BACKOFF).await;
            }
        }
    }
}

async fn join_and_sync(shared: &Shared) -> Result<Joined, ClientError> {
    let config = &shared.config;
    let link = shared.link().await?;
    let request = JoinGroupRequest::default()
        .with_group_id(shared.group_id())
        .with_session_timeout_ms(millis(config.session_timeout))
        .with_rebalance_timeout_ms(millis(config.rebalance_timeout))
        .with_member_id(text(&shared.member_id()))
        .with_protocol_type(text(PROTOCOL_TYPE))
        .with_protocols(vec![JoinGroupRequestProtocol::default().with_name(text(ASSIGNOR)).with_metadata(versioned(
            &ConsumerProtocolSubscription::default()
                .with_topics(config.topics.iter().map(|topic| text(topic)).collect()),
        )?)]);
    let joined: JoinGroupResponse =
        link.call(ApiKey::JoinGroup, JOIN_GROUP_VERSION, &request, config.rebalance_timeout).await?;
    match joined.error_code {
        0 => {}
        MEMBER_ID_REQUIRED => {
            shared.state.borrow_mut().member_id = joined.member_id.to_string();
            return Ok(Joined::Again);
        }
        UNKNOWN_MEMBER_ID => {
            shared.state.borrow_mut().member_id.clear();
            return Ok(Joined::Again);
        }
        REBALANCE_IN_PROGRESS => return Ok(Joined::Again),
        code @ (NOT_COORDINATOR | COORDINATOR_NOT_AVAILABLE) => {
            return Err(kafka_error(code, &format!("joining group {}", config.group)))
        }
        code => {
            // Anything else (an inconsistent protocol, a full group) does
            // not go away by retrying.
            let error = kafka_error(code, &format!("joining group {}", config.group));
            shared.state.borrow_mut().failed = Some(error.clone());
            shared.state.borrow_mut().closing = true;
            return Err(error);
        }
    }
    shared.state.borrow_mut().member_id = joined.member_id.to_string();
    let generation = joined.generation_id;
    let assignments = if joined.leader == joined.member_id { assign(shared, &joined).await? } else { Vec::new() };
    let request = SyncGroupRequest::default()
        .with_group_id(shared.group_id())
        .with_generation_id(generation)
        .with_member_id(joined.member_id.clone())
        .with_protocol_type(Some(text(PROTOCOL_TYPE)))
        .with_protocol_name(Some(text(ASSIGNOR)))
        .with_assignments(assignments);
    let synced: SyncGroupResponse =
        link.call(ApiKey::SyncGroup, SYNC_GROUP_VERSION, &request, config.rebalance_timeout).await?;
    match synced.error_code {
        0 => Ok(Joined::Assigned(generation, assigned_partitions(&synced.assignment)?)),
        REBALANCE_IN_PROGRESS | ILLEGAL_GENERATION => Ok(Joined::Again),
        UNKNOWN_MEMBER_ID => {
            shared.state.borrow_mut().member_id.clear();
            Ok(Joined::Again)
        }
        code => Err(kafka_error(code, &format!("syncing group {}", config.group))),
    }
}

/// The leader's work: reads what each member subscribes to and assigns
/// the partitions with [`range_assignment`].
async fn assign(shared: &Shared, joined: &JoinGroupResponse) -> Result<Vec<SyncGroupRequestAssignment>, ClientError> {
    let mut subscriptions = Vec::new();
    for member in &joined.members {
        let subscription: ConsumerProtocolSubscription = unversioned(&member.metadata)?;
        let topics: Vec<String> = subscription.topics.iter().map(|topic| topic.to_string()).collect();
        subscriptions.push((member.member_id.as_str(), topics));
    }
    let mut counts = BTreeMap::new();
    for (_, topics) in &subscriptions {
        for topic in topics {
            if !counts.contains_key(topic) {
                counts.insert(topic.clone(), shared.client.partitions(topic).await?);
            }
        }
    }
    range_assignment(&subscriptions, &counts)
        .into_iter()
        .map(|(member, topics)| {
            let partitions = topics
                .into_iter()
                .map(|(topic, partitions)| {
                    AssignedPartitions::default().with_topic(topic_name(&topic)).with_partitions(partitions)
                })
                .collect();
            let assignment = versioned(&ConsumerProtocolAssignment::default().with_assigned_partitions(partitions))?;
            Ok(SyncGroupRequestAssignment::default().with_member_id(text(member)).with_assignment(assignment))
        })
        .collect()
}

/// Kafka's range assignor: per topic, the members subscribing to it, in
/// member id order, each get a contiguous run of its partitions, the first
/// ones one more when the count does not divide evenly. Every member gets
/// an entry, possibly empty.
fn range_assignment<'a>(
    subscriptions: &[(&'a str, Vec<String>)],
    partition_counts: &BTreeMap<String, u32>,
) -> BTreeMap<&'a str, Vec<(String, Vec<i32>)>> {
    let mut assigned: BTreeMap<&str, Vec<(String, Vec<i32>)>> =
        subscriptions.iter().map(|(member, _)| (*member, Vec::new())).collect();
    for (topic, count) in partition_counts {
        let mut members: Vec<&str> =
            subscriptions.iter().filter(|(_, topics)| topics.contains(topic)).map(|(member, _)| *member).collect();
        members.sort_unstable();
        members.dedup();
        if members.is_empty() {
            continue;
        }
        let count = *count as usize;
        let (each, extra) = (count / members.len(), count % members.len());
        let mut next = 0;
        for (index, member) in members.into_iter().enumerate() {
            let take = each + usize::from(index < extra);
            if take > 0 {
                let partitions = (next..next + take).map(|partition| partition as i32).collect();
                assigned.entry(member).or_default().push((topic.clone(), partitions));
            }
            next += take;
        }
    }
    assigned
}

async fn heartbeat_until_rebalance(shared: &Shared, generation: i32) {
    let every = shared.config.heartbeat_every();
    loop {
        glommio::timer::sleep(every).await;
        if shared.state.borrow().closing {
            return;
        }
        let request = HeartbeatRequest::default()
            .with_group_id(shared.group_id())
            .with_generation_id(generation)
            .with_member_id(text(&shared.member_id()));
        let answer = match shared.link().await {
            Ok(link) => {
                link.call::<_, HeartbeatResponse>(ApiKey::Heartbeat, HEARTBEAT_VERSION, &request, Duration::ZERO).await
            }
            Err(error) => Err(error),
        };
        match answer.map(|response| response.error_code) {
            Ok(0) => {}
            Ok(REBALANCE_IN_PROGRESS) => return give_up(shared, true).await,
            Ok(UNKNOWN_MEMBER_ID) => {
                give_up(shared, false).await;
                shared.state.borrow_mut().member_id.clear();
                return;
            }
            Ok(ILLEGAL_GENERATION) => return give_up(shared, false).await,
            // The coordinator moved or the connection broke: find it again
            // and keep heartbeating; the session outlasts a few misses.
            Ok(_) | Err(_) => *shared.link.borrow_mut() = None,
        }
    }
}

/// Asks the poller to give up what it owns and waits until it has.
async fn give_up(shared: &Shared, commit: bool) {
    {
        let mut state = shared.state.borrow_mut();
        // An assignment not taken yet is stale now.
        state.offered = None;
        state.revoke = Some(commit);
        state.released = false;
    }
    loop {
        {
            let state = shared.state.borrow();
            if state.released || state.closing {
                return;
            }
        }
        glommio::timer::sleep(RELEASE_CHECK).await;
    }
}

/// A consumer-protocol message with its version in front, as members and
/// the leader exchange them through the coordinator.
fn versioned<M: Encodable>(message: &M) -> Result<Bytes, ClientError> {
    let mut out = BytesMut::new();
    out.extend_from_slice(&CONSUMER_PROTOCOL_VERSION.to_be_bytes());
    message
        .encode(&mut out, CONSUMER_PROTOCOL_VERSION)
        .map_err(|error| ClientError::InvalidArgument(format!("encoding a consumer protocol message: {error}")))?;
    Ok(out.freeze())
}

fn unversioned<M: Decodable + Default>(bytes: &Bytes) -> Result<M, ClientError> {
    let Some(prefix) = bytes.get(..2) else {
        return Ok(M::default());
    };
    let version = i16::from_be_bytes([prefix[0], prefix[1]]);
    if version < 0 {
        return Err(ClientError::UnexpectedResponse(format!("consumer protocol version {version}")));
    }
    let mut body = bytes.slice(2..);
    M::decode(&mut body, version.min(CONSUMER_PROTOCOL_NEWEST))
        .map_err(|error| ClientError::UnexpectedResponse(format!("undecodable consumer protocol message: {error}")))
}

fn assigned_partitions(assignment: &Bytes) -> Result<Vec<TopicPartition>, ClientError> {
    let assignment: ConsumerProtocolAssignment = unversioned(assignment)?;
    let mut partitions = Vec::new();
    for topic in assignment.assigned_partitions {
        for partition in topic.partitions {
            let partition = u32::try_from(partition)
                .map_err(|_| ClientError::UnexpectedResponse(format!("assigned partition {partition}")))?;
            partitions.push((topic.topic.0.to_string(), PartitionId(partition)));
        }
    }
    Ok(partitions)
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

fn millis(duration: Duration) -> i32 {
    i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_and_an_assignment_read_back_as_written() {
        let subscription = ConsumerProtocolSubscription::default().with_topics(vec![text("a"), text("b")]);
        let read: ConsumerProtocolSubscription = unversioned(&versioned(&subscription).unwrap()).unwrap();
        assert_eq!(read.topics, vec![text("a"), text("b")]);
        let assignment =
            ConsumerProtocolAssignment::default().with_assigned_partitions(vec![AssignedPartitions::default()
                .with_topic(topic_name("a"))
                .with_partitions(vec![0, 2])]);
        let read = assigned_partitions(&versioned(&assignment).unwrap()).unwrap();
        assert_eq!(read, vec![("a".to_string(), PartitionId(0)), ("a".to_string(), PartitionId(2))]);
        assert!(assigned_partitions(&Bytes::new()).unwrap().is_empty(), "no assignment: nothing owned");
        assert!(assigned_partitions(&Bytes::from_static(&[0xff, 0xff, 1])).is_err(), "a negative version");
        assert!(assigned_partitions(&Bytes::from_static(&[0, 0, 0, 0, 0, 9])).is_err(), "cut short");
    }

    #[test]
    fn the_range_assignor_gives_each_subscriber_a_contiguous_run() {
        let both = vec!["a".to_string(), "b".to_string()];
        let subscriptions = [("m2", both.clone()), ("m1", both), ("m3", vec!["a".to_string()])];
        let counts = BTreeMap::from([("a".to_string(), 8), ("b".to_string(), 1)]);
        let assigned = range_assignment(&subscriptions, &counts);
        let expect = |runs: &[(&str, &[i32])]| -> Vec<(String, Vec<i32>)> {
            runs.iter().map(|(topic, partitions)| (topic.to_string(), partitions.to_vec())).collect()
        };
        // a: 8 over m1, m2, m3 (3, 3, 2); b: its one partition to m1.
        assert_eq!(assigned["m1"], expect(&[("a", &[0, 1, 2]), ("b", &[0])]));
        assert_eq!(assigned["m2"], expect(&[("a", &[3, 4, 5])]));
        assert_eq!(assigned["m3"], expect(&[("a", &[6, 7])]));
        // More members than partitions: the last ones get nothing.
        let subscriptions = [("x", vec!["b".to_string()]), ("y", vec!["b".to_string()])];
        let assigned = range_assignment(&subscriptions, &BTreeMap::from([("b".to_string(), 1)]));
        assert_eq!((assigned["x"].len(), assigned["y"].len()), (1, 0));
    }
}
