//! Kafka's classic consumer-group protocol on the coordinating shard:
//! JoinGroup, SyncGroup, Heartbeat and LeaveGroup with client-side
//! assignment (the group leader computes it), and the offsets API.
//!
//! A group lives on the shard `coordinator_of(group)` names, as native
//! groups do; requests reaching another shard are forwarded there over the
//! mesh. Its states are Kafka's: Empty, PreparingRebalance (members
//! (re)join; JoinGroup answers wait until every known member has joined or
//! the rebalance timeout passes), CompletingRebalance (the leader has the
//! members' metadata; SyncGroup waits for the leader's assignment) and
//! Stable. A member that stops heartbeating within its session timeout is
//! removed and the group rebalances. Sessions and deadlines are judged by
//! the shard's clock ([`super::clock`]). Committed offsets go to the same
//! durable offsets store as native groups; a native group and a Kafka group
//! may not share a name.
//!
//! Bounds: at most [`GROUPS_MAX`] Kafka groups per shard (an empty group is
//! forgotten at once; its offsets stay in the store) and
//! [`MEMBERS_PER_GROUP_MAX`] members (pending ids included) per group.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions, OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    ApiKey, DescribeGroupsRequest, DescribeGroupsResponse, GroupId, HeartbeatRequest, HeartbeatResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, ResponseKind, SyncGroupRequest,
    SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};

use crate::protocol::types::{Offset, ShardId};
use crate::protocol::wire::coordinator_of;
use crate::storage::io::Storage;

use super::offsets::OffsetUpdate;
use super::{Shard, ShardMessage};

/// Groups one shard coordinates, at most, of each protocol (Kafka and native).
pub const GROUPS_MAX: usize = 10_000;
/// Members (and member ids handed out, not yet used) per group, at most.
pub const MEMBERS_PER_GROUP_MAX: usize = 1024;
/// Accepted session timeouts (Kafka's defaults are 6 s to 30 min).
const SESSION_TIMEOUT_MS: std::ops::RangeInclusive<i32> = 1_000..=1_800_000;
/// How long a new group waits for more members before its first
/// assignment (Kafka's group.initial.rebalance.delay.ms, shortened).
const INITIAL_REBALANCE_DELAY: Duration = Duration::from_millis(300);

// Kafka error codes used here.
const NONE: i16 = 0;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const ILLEGAL_GENERATION: i16 = 22;
const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
const INVALID_GROUP_ID: i16 = 24;
const UNKNOWN_MEMBER_ID: i16 = 25;
const INVALID_SESSION_TIMEOUT: i16 = 26;
const REBALANCE_IN_PROGRESS: i16 = 27;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const GROUP_MAX_SIZE_REACHED: i16 = 81;
const MEMBER_ID_REQUIRED: i16 = 79;
const KAFKA_STORAGE_ERROR: i16 = 56;

/// Kafka's group states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Empty => "Empty",
            Phase::PreparingRebalance => "PreparingRebalance",
            Phase::CompletingRebalance => "CompletingRebalance",
            Phase::Stable => "Stable",
        }
    }
}

/// What a JoinGroup waits for.
#[derive(Debug, Clone)]
struct JoinResult {
    error: i16,
    generation: i32,
    protocol_name: Option<String>,
    leader: String,
    member_id: String,
    /// The members' metadata for the chosen protocol (the leader's only).
    members: Vec<(String, Option<String>, Bytes)>,
}

#[derive(Debug)]
struct Member {
    client_id: String,
    group_instance_id: Option<String>,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    last_heard: Instant,
    assignment: Bytes,
    join: Option<oneshot::Sender<JoinResult>>,
    sync: Option<oneshot::Sender<(i16, Bytes)>>,
}

/// One Kafka group.
#[derive(Debug)]
struct ClassicGroup {
    phase: Phase,
    generation: i32,
    protocol_type: String,
    protocol_name: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not yet joined with.
    pending: BTreeMap<String, Instant>,
    /// When PreparingRebalance gives up on members that have not rejoined.
    rebalance_deadline: Option<Instant>,
    next_member: u64,
}

impl ClassicGroup {
    fn new(protocol_type: String) -> ClassicGroup {
        ClassicGroup {
            phase: Phase::Empty,
            generation: 0,
            protocol_type,
            protocol_name: None,
            leader: None,
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
            rebalance_deadline: None,
            next_member: 0,
        }
    }

    /// A new member's id; `unix_time` (the clock's wall time) tells it
    /// from the ids handed out before the group was forgotten or the broker
    /// restarted.
    fn new_member_id(&mut self, client_id: &str, unix_time: Duration) -> String {
        self.next_member += 1;
        format!("{client_id}-{:x}-{}", unix_time.as_nanos(), self.next_member)
    }

    /// Starts (or keeps) a rebalance: every member must join again.
    fn prepare_rebalance(&mut self, now: Instant) {
        if self.phase == Phase::PreparingRebalance {
            return;
        }
        // Members waiting for a sync of a generation now abandoned rejoin.
        for member in self.members.values_mut() {
            if let Some(sync) = member.sync.take() {
                let _ = sync.send((REBALANCE_IN_PROGRESS, Bytes::new()));
            }
        }
        // A group starting from empty waits a moment for the rest of its
        // members; otherwise members get their rebalance timeout to rejoin.
        let timeout = self.members.values().map(|member| member.rebalance_timeout).max().unwrap_or_default();
        let wait = if self.phase == Phase::Empty { INITIAL_REBALANCE_DELAY } else { timeout };
        self.rebalance_deadline = Some(now + wait);
        self.phase = Phase::PreparingRebalance;
    }

    /// Completes the rebalance if every member has joined, or if the
    /// deadline passed (members that did not join are removed).
    fn try_complete_join(&mut self, now: Instant) {
        if self.phase != Phase::PreparingRebalance {
            return;
        }
        let all_joined = self.members.values().all(|member| member.join.is_some());
        let due = self.rebalance_deadline.is_some_and(|deadline| now >= deadline);
        // A new group waits out its initial delay even once all have joined.
        let ready = if self.generation == 0 { due } else { all_joined || due };
        if !ready {
            return;
        }
        self.members.retain(|_, member| member.join.is_some());
        if self.members.is_empty() {
            self.phase = Phase::Empty;
            self.leader = None;
            self.protocol_name = None;
            return;
        }
        self.generation += 1;
        self.protocol_name = self.choose_protocol();
        if self.leader.as_ref().is_none_or(|leader| !self.members.contains_key(leader)) {
            self.leader = self.members.keys().next().cloned();
        }
        let leader = self.leader.clone().unwrap_or_default();
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let metadata: Vec<(String, Option<String>, Bytes)> = self
            .members
            .iter()
            .map(|(id, member)| {
                let chosen = member.protocols.iter().find(|(name, _)| *name == protocol).map(|(_, data)| data.clone());
                (id.clone(), member.group_instance_id.clone(), chosen.unwrap_or_default())
            })
            .collect();
        for (id, member) in self.members.iter_mut() {
            member.last_heard = now;
            member.assignment = Bytes::new();
            if let Some(join) = member.join.take() {
                let members = if *id == leader { metadata.clone() } else { Vec::new() };
                let _ = join.send(JoinResult {
                    error: NONE,
                    generation: self.generation,
                    protocol_name: self.protocol_name.clone(),
                    leader: leader.clone(),
                    member_id: id.clone(),
                    members,
                });
            }
        }
        self.rebalance_deadline = None;
        self.phase = Phase::CompletingRebalance;
    }

    /// The protocol every member supports that most members list first.
    fn choose_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(name, _)| name)
            .filter(|name| self.members.values().all(|member| member.protocols.iter().any(|(n, _)| n == *name)))
            .collect();
        let mut votes: Vec<(usize, &String)> = candidates.iter().map(|name| (0, *name)).collect();
        for member in self.members.values() {
            if let Some((name, _)) = member.protocols.iter().find(|(name, _)| candidates.contains(&name)) {
                if let Some(vote) = votes.iter_mut().find(|(_, candidate)| *candidate == name) {
                    vote.0 += 1;
                }
            }
        }
        // Most votes; ties go to the earlier candidate.
        let best = votes.iter().rev().max_by_key(|(count, _)| *count)?;
        Some(best.1.clone())
    }

    fn remove_member(&mut self, id: &str, now: Instant) {
        if let Some(mut member) = self.members.remove(id) {
            if let Some(join) = member.join.take() {
                let _ = join.send(join_error(UNKNOWN_MEMBER_ID, id));
            }
            if let Some(sync) = member.sync.take() {
                let _ = sync.send((UNKNOWN_MEMBER_ID, Bytes::new()));
            }
            if self.members.is_empty() && self.phase != Phase::PreparingRebalance {
                self.phase = Phase::Empty;
                self.leader = None;
            } else {
                self.prepare_rebalance(now);
                self.try_complete_join(now);
            }
        }
    }

    /// Removes members silent past their session timeout, and pending ids
    /// never used; completes a rebalance whose deadline passed.
    fn expire(&mut self, now: Instant) {
        let silent: Vec<String> = self
            .members
            .iter()
            .filter(|(_, member)| {
                member.join.is_none() && now.duration_since(member.last_heard) > member.session_timeout
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in silent {
            tracing::info!(member = %id, "Kafka group member timed out");
            self.remove_member(&id, now);
        }
        self.pending.retain(|_, expires| *expires > now);
        self.try_complete_join(now);
    }

    fn is_forgettable(&self) -> bool {
        self.members.is_empty() && self.pending.is_empty() && self.phase == Phase::Empty
    }
}

fn join_error(error: i16, member_id: &str) -> JoinResult {
    JoinResult {
        error,
        generation: -1,
        protocol_name: None,
        leader: String::new(),
        member_id: member_id.to_string(),
        members: Vec::new(),
    }
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

/// The Kafka groups of one shard.
#[derive(Debug, Default)]
pub struct KafkaGroups {
    groups: RefCell<HashMap<String, ClassicGroup>>,
}

impl KafkaGroups {
    /// Whether `group` is a Kafka group here (native groups may not take
    /// its name).
    pub fn contains(&self, group: &str) -> bool {
        self.groups.borrow().contains_key(group)
    }

    pub(super) fn tick(&self, now: Instant) {
        let mut groups = self.groups.borrow_mut();
        for group in groups.values_mut() {
            group.expire(now);
        }
        groups.retain(|_, group| !group.is_forgettable());
    }
}

/// Why a Kafka group request got no response.
#[derive(Debug, thiserror::Error)]
pub enum KafkaGroupError {
    #[error("unknown Kafka API key {0}")]
    UnknownApiKey(i16),
    #[error("{0:?} does not decode")]
    NoGroup(ApiKey),
    #[error("{api_key:?}: {source}")]
    Undecodable { api_key: ApiKey, source: anyhow::Error },
    #[error("{0}")]
    UndecodableDescribe(#[source] anyhow::Error),
    #[error("{0:?} is not a group request")]
    NotGroupRequest(ApiKey),
    #[error("the coordinator shard stopped")]
    CoordinatorStopped,
}

/// The group id a request is about (the first, for multi-group requests).
fn group_of(api_key: ApiKey, version: i16, body: &Bytes) -> Option<String> {
    let mut body = body.clone();
    let id = match api_key {
        ApiKey::JoinGroup => JoinGroupRequest::decode(&mut body, version).ok()?.group_id,
        ApiKey::SyncGroup => SyncGroupRequest::decode(&mut body, version).ok()?.group_id,
        ApiKey::Heartbeat => HeartbeatRequest::decode(&mut body, version).ok()?.group_id,
        ApiKey::LeaveGroup => LeaveGroupRequest::decode(&mut body, version).ok()?.group_id,
        ApiKey::OffsetCommit => OffsetCommitRequest::decode(&mut body, version).ok()?.group_id,
        ApiKey::OffsetFetch => {
            let request = OffsetFetchRequest::decode(&mut body, version).ok()?;
            if version >= 8 {
                request.groups.first()?.group_id.clone()
            } else {
                request.group_id
            }
        }
        _ => return None,
    };
    Some(id.0.to_string())
}

impl<S: Storage> Shard<S> {
    /// Serves a Kafka group request (already bounds-checked), forwarding
    /// it to the group's coordinator shard.
    pub async fn kafka_group_request(
        self: &Rc<Self>,
        api_key: ApiKey,
        version: i16,
        body: Bytes,
    ) -> Result<ResponseKind, KafkaGroupError> {
        match api_key {
            ApiKey::ListGroups => return Ok(ResponseKind::ListGroups(self.kafka_list_groups(version, body).await)),
            ApiKey::DescribeGroups => {
                return Ok(ResponseKind::DescribeGroups(self.kafka_describe_groups(version, body).await?))
            }
            _ => {}
        }
        let group = group_of(api_key, version, &body).ok_or(KafkaGroupError::NoGroup(api_key))?;
        let coordinator = coordinator_of(&group, self.shard_count);
        if coordinator == self.id {
            return self.kafka_coordinate(api_key, version, body).await;
        }
        let (reply, answer) = oneshot::channel();
        let message = ShardMessage::KafkaGroup { api_key: api_key as i16, version, body, reply };
        match self.send_to(coordinator, message).await {
            Some(()) => answer.await.unwrap_or(Err(KafkaGroupError::CoordinatorStopped)),
            None => Err(KafkaGroupError::CoordinatorStopped),
        }
    }

    /// A group request on its coordinating shard.
    pub(super) async fn kafka_coordinate(
        self: &Rc<Self>,
        api_key: ApiKey,
        version: i16,
        mut body: Bytes,
    ) -> Result<ResponseKind, KafkaGroupError> {
        let bad = |source: anyhow::Error| KafkaGroupError::Undecodable { api_key, source };
        Ok(match api_key {
            ApiKey::JoinGroup => {
                let request = JoinGroupRequest::decode(&mut body, version).map_err(bad)?;
                ResponseKind::JoinGroup(self.kafka_join(version, request).await)
            }
            ApiKey::SyncGroup => {
                let request = SyncGroupRequest::decode(&mut body, version).map_err(bad)?;
                ResponseKind::SyncGroup(self.kafka_sync(version, request).await)
            }
            ApiKey::Heartbeat => {
                let request = HeartbeatRequest::decode(&mut body, version).map_err(bad)?;
                ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(self.kafka_heartbeat(request)))
            }
            ApiKey::LeaveGroup => {
                let request = LeaveGroupRequest::decode(&mut body, version).map_err(bad)?;
                ResponseKind::LeaveGroup(self.kafka_leave(version, request))
            }
            ApiKey::OffsetCommit => {
                let request = OffsetCommitRequest::decode(&mut body, version).map_err(bad)?;
                ResponseKind::OffsetCommit(self.kafka_commit(request).await)
            }
            ApiKey::OffsetFetch => {
                let request = OffsetFetchRequest::decode(&mut body, version).map_err(bad)?;
                ResponseKind::OffsetFetch(self.kafka_fetch_offsets(version, request))
            }
            other => return Err(KafkaGroupError::NotGroupRequest(other)),
        })
    }

    async fn kafka_join(&self, version: i16, request: JoinGroupRequest) -> JoinGroupResponse {
        let group_id = request.group_id.0.to_string();
        let member_id = request.member_id.to_string();
        let respond = |result: JoinResult| join_response(version, &request.protocol_type, result);
        if group_id.is_empty() {
            return respond(join_error(INVALID_GROUP_ID, &member_id));
        }
        if !SESSION_TIMEOUT_MS.contains(&request.session_timeout_ms) {
            return respond(join_error(INVALID_SESSION_TIMEOUT, &member_id));
        }
        if self.coordinator.groups.borrow().get(&group_id).is_some_and(|native| !native.is_empty()) {
            // A native group of that name is active.
            return respond(join_error(INCONSISTENT_GROUP_PROTOCOL, &member_id));
        }
        let now = self.clock.now();
        let waiting = {
            let mut groups = self.coordinator.kafka_groups.groups.borrow_mut();
            if !groups.contains_key(&group_id) && groups.len() >= GROUPS_MAX {
                return respond(join_error(COORDINATOR_NOT_AVAILABLE, &member_id));
            }
            let group =
                groups.entry(group_id.clone()).or_insert_with(|| ClassicGroup::new(request.protocol_type.to_string()));
            if group.phase != Phase::Empty && group.protocol_type != request.protocol_type.as_str() {
                return respond(join_error(INCONSISTENT_GROUP_PROTOCOL, &member_id));
            }
            group.protocol_type = request.protocol_type.to_string();
            let protocols: Vec<(String, Bytes)> =
                request.protocols.iter().map(|p| (p.name.to_string(), p.metadata.clone())).collect();
            if protocols.is_empty()
                || (group.phase != Phase::Empty
                    && !protocols.iter().any(|(name, _)| {
                        group.members.values().all(|member| member.protocols.iter().any(|(n, _)| n == name))
                    }))
            {
                return respond(join_error(INCONSISTENT_GROUP_PROTOCOL, &member_id));
            }
            let client_id = "member".to_string();
            let id = if member_id.is_empty() {
                if group.members.len() + group.pending.len() >= MEMBERS_PER_GROUP_MAX {
                    return respond(join_error(GROUP_MAX_SIZE_REACHED, &member_id));
                }
                let id = group.new_member_id(&client_id, self.clock.unix_time());
                if version >= 4 {
                    // The client must join again with this id.
                    let session = Duration::from_millis(request.session_timeout_ms as u64);
                    group.pending.insert(id.clone(), now + session);
                    return respond(join_error(MEMBER_ID_REQUIRED, &id));
                }
                id
            } else if group.members.contains_key(&member_id) || group.pending.remove(&member_id).is_some() {
                member_id.clone()
            } else {
                return respond(join_error(UNKNOWN_MEMBER_ID, &member_id));
            };
            let (join, joined) = oneshot::channel();
            let member = group.members.entry(id.clone()).or_insert_with(|| Member {
                client_id,
                group_instance_id: None,
                session_timeout: Duration::ZERO,
                rebalance_timeout: Duration::ZERO,
                protocols: Vec::new(),
                last_heard: now,
                assignment: Bytes::new(),
                join: None,
                sync: None,
            });
            member.group_instance_id = request.group_instance_id.as_ref().map(|id| id.to_string());
            member.session_timeout = Duration::from_millis(request.session_timeout_ms as u64);
            let rebalance_ms = if version >= 1 { request.rebalance_timeout_ms } else { request.session_timeout_ms };
            member.rebalance_timeout = Duration::from_millis(rebalance_ms.max(0) as u64);
            member.protocols = protocols;
            member.last_heard = now;
            if let Some(previous) = member.join.replace(join) {
                let _ = previous.send(join_error(UNKNOWN_MEMBER_ID, &id));
            }
            group.prepare_rebalance(now);
            group.try_complete_join(now);
            joined
        };
        match waiting.await {
            Ok(result) => respond(result),
            Err(_) => respond(join_error(UNKNOWN_MEMBER_ID, &member_id)),
        }
    }

    async fn kafka_sync(&self, version: i16, request: SyncGroupRequest) -> SyncGroupResponse {
        let group_id = request.group_id.0.to_string();
        let member_id = request.member_id.to_string();
        let waiting = {
            let mut groups = self.coordinator.kafka_groups.groups.borrow_mut();
            let Some(group) = groups.get_mut(&group_id) else {
                return sync_response(version, None, UNKNOWN_MEMBER_ID, Bytes::new());
            };
            let protocol = group.protocol_name.clone();
            let answer =
                |error, assignment| sync_response(version, Some((&group.protocol_type, &protocol)), error, assignment);
            if !group.members.contains_key(&member_id) {
                return answer(UNKNOWN_MEMBER_ID, Bytes::new());
            }
            if request.generation_id != group.generation {
                return answer(ILLEGAL_GENERATION, Bytes::new());
            }
            match group.phase {
                Phase::Empty => return answer(UNKNOWN_MEMBER_ID, Bytes::new()),
                Phase::PreparingRebalance => return answer(REBALANCE_IN_PROGRESS, Bytes::new()),
                Phase::Stable => {
                    let assignment = group.members[&member_id].assignment.clone();
                    return answer(NONE, assignment);
                }
                Phase::CompletingRebalance => {}
            }
            if group.leader.as_deref() == Some(member_id.as_str()) {
                let assignments: HashMap<String, Bytes> =
                    request.assignments.iter().map(|a| (a.member_id.to_string(), a.assignment.clone())).collect();
                for (id, member) in group.members.iter_mut() {
                    member.assignment = assignments.get(id).cloned().unwrap_or_default();
                    if let Some(sync) = member.sync.take() {
                        let _ = sync.send((NONE, member.assignment.clone()));
                    }
                }
                group.phase = Phase::Stable;
                let assignment = group.members[&member_id].assignment.clone();
                let protocol = group.protocol_name.clone();
                return sync_response(version, Some((&group.protocol_type, &protocol)), NONE, assignment);
            }
            let (sync, synced) = oneshot::channel();
            if let Some(member) = group.members.get_mut(&member_id) {
                member.sync = Some(sync);
            }
            (synced, group.protocol_type.clone(), group.protocol_name.clone())
        };
        let (synced, protocol_type, protocol_name) = waiting;
        let (error, assignment) = synced.await.unwrap_or((REBALANCE_IN_PROGRESS, Bytes::new()));
        sync_response(version, Some((&protocol_type, &protocol_name)), error, assignment)
    }

    fn kafka_heartbeat(&self, request: HeartbeatRequest) -> i16 {
        let mut groups = self.coordinator.kafka_groups.groups.borrow_mut();
        let Some(group) = groups.get_mut(request.group_id.0.as_str()) else { return UNKNOWN_MEMBER_ID };
        let Some(member) = group.members.get_mut(request.member_id.as_str()) else { return UNKNOWN_MEMBER_ID };
        member.last_heard = self.clock.now();
        match group.phase {
            Phase::PreparingRebalance => REBALANCE_IN_PROGRESS,
            _ if request.generation_id != group.generation => ILLEGAL_GENERATION,
            _ => NONE,
        }
    }

    fn kafka_leave(&self, version: i16, request: LeaveGroupRequest) -> LeaveGroupResponse {
        let now = self.clock.now();
        let mut groups = self.coordinator.kafka_groups.groups.borrow_mut();
        let ids: Vec<String> = if version >= 3 {
            request.members.iter().map(|member| member.member_id.to_string()).collect()
        } else {
            vec![request.member_id.to_string()]
        };
        let mut results = Vec::with_capacity(ids.len());
        for id in &ids {
            let known = groups.get(request.group_id.0.as_str()).is_some_and(|group| group.members.contains_key(id));
            if known {
                if let Some(group) = groups.get_mut(request.group_id.0.as_str()) {
                    group.remove_member(id, now);
                }
            }
            results.push(if known { NONE } else { UNKNOWN_MEMBER_ID });
        }
        let mut response = LeaveGroupResponse::default();
        if version >= 3 {
            response = response.with_members(
                ids.iter()
                    .zip(&results)
                    .map(|(id, error)| MemberResponse::default().with_member_id(text(id)).with_error_code(*error))
                    .collect(),
            );
        } else {
            response = response.with_error_code(results.first().copied().unwrap_or(NONE));
        }
        response
    }

    async fn kafka_commit(&self, request: OffsetCommitRequest) -> OffsetCommitResponse {
        let group_id = request.group_id.0.to_string();
        let member_id = request.member_id.to_string();
        let generation = request.generation_id_or_member_epoch;
        // A commit outside group management (generation -1) is accepted
        // for a group without members, as Kafka does.
        let checked = {
            let groups = self.coordinator.kafka_groups.groups.borrow();
            match groups.get(&group_id) {
                None if generation < 0 => NONE,
                None => UNKNOWN_MEMBER_ID,
                Some(group) if generation < 0 && group.members.is_empty() => NONE,
                // Between the join and the sync no generation's assignment
                // holds. While a rebalance is being prepared the old one
                // still does: an eager consumer commits what it consumed
                // before it rejoins, and Kafka accepts that commit.
                Some(group) if group.phase == Phase::CompletingRebalance => REBALANCE_IN_PROGRESS,
                Some(group) if !group.members.contains_key(&member_id) => UNKNOWN_MEMBER_ID,
                Some(group) if generation != group.generation => ILLEGAL_GENERATION,
                Some(_) => NONE,
            }
        };
        if checked == NONE && self.coordinator.groups.borrow().get(&group_id).is_some_and(|native| !native.is_empty()) {
            return commit_response(&request, |_, _| INCONSISTENT_GROUP_PROTOCOL);
        }
        if checked != NONE {
            return commit_response(&request, |_, _| checked);
        }
        let metadata = self.metadata();
        let mut updates = Vec::new();
        for topic in &request.topics {
            for partition in &topic.partitions {
                let known = metadata
                    .topics
                    .get(topic.name.0.as_str())
                    .is_some_and(|placement| (partition.partition_index as usize) < placement.owners.len());
                if let (true, Some(offset)) = (known, Offset::from_wire(partition.committed_offset)) {
                    updates.push(OffsetUpdate {
                        topic: topic.name.0.to_string(),
                        partition: partition.partition_index as u32,
                        offset,
                        metadata: partition.committed_metadata.as_ref().map(|m| m.to_string()).unwrap_or_default(),
                    });
                }
            }
        }
        let Some(store) = self.coordinator.offsets.borrow().clone() else {
            return commit_response(&request, |_, _| COORDINATOR_NOT_AVAILABLE);
        };
        // Real time: a latency the metrics report.
        let started = Instant::now();
        let stored = store.commit(&group_id, updates).await;
        self.counters.record_commit(started.elapsed());
        commit_response(&request, |topic, partition| {
            let known = metadata
                .topics
                .get(topic)
                .is_some_and(|placement| partition >= 0 && (partition as usize) < placement.owners.len());
            match (&stored, known) {
                (_, false) => UNKNOWN_TOPIC_OR_PARTITION,
                (Ok(()), true) => NONE,
                (Err(_), true) => KAFKA_STORAGE_ERROR,
            }
        })
    }

    fn kafka_fetch_offsets(&self, version: i16, request: OffsetFetchRequest) -> OffsetFetchResponse {
        let store = self.coordinator.offsets.borrow().clone();
        let committed = |group: &str, topic: &str, partition: i32| -> (i64, Option<StrBytes>) {
            let found = store.as_ref().and_then(|store| store.get(group, topic, u32::try_from(partition).ok()?));
            match found {
                Some(committed) => (committed.offset.to_wire(), Some(text(&committed.metadata))),
                None => (-1, Some(text(""))),
            }
        };
        let all_of = |group: &str| -> Vec<(String, Vec<i32>)> {
            let mut topics: BTreeMap<String, Vec<i32>> = BTreeMap::new();
            if let Some(store) = &store {
                for ((topic, partition), _) in store.group(group) {
                    topics.entry(topic).or_default().push(partition as i32);
                }
            }
            topics.into_iter().collect()
        };
        if version >= 8 {
            let groups = request
                .groups
                .iter()
                .map(|group| {
                    let id = group.group_id.0.to_string();
                    let asked: Vec<(String, Vec<i32>)> = match &group.topics {
                        Some(topics) => {
                            topics.iter().map(|t| (t.name.0.to_string(), t.partition_indexes.clone())).collect()
                        }
                        None => all_of(&id),
                    };
                    let topics = asked
                        .into_iter()
                        .map(|(topic, partitions)| {
                            let partitions = partitions
                                .into_iter()
                                .map(|partition| {
                                    let (offset, metadata) = committed(&id, &topic, partition);
                                    OffsetFetchResponsePartitions::default()
                                        .with_partition_index(partition)
                                        .with_committed_offset(offset)
                                        .with_metadata(metadata)
                                })
                                .collect();
                            OffsetFetchResponseTopics::default()
                                .with_name(TopicName(text(&topic)))
                                .with_partitions(partitions)
                        })
                        .collect();
                    OffsetFetchResponseGroup::default().with_group_id(GroupId(text(&id))).with_topics(topics)
                })
                .collect();
            return OffsetFetchResponse::default().with_groups(groups);
        }
        let id = request.group_id.0.to_string();
        let asked: Vec<(String, Vec<i32>)> = match &request.topics {
            Some(topics) => topics.iter().map(|t| (t.name.0.to_string(), t.partition_indexes.clone())).collect(),
            None => all_of(&id),
        };
        let topics = asked
            .into_iter()
            .map(|(topic, partitions)| {
                let partitions = partitions
                    .into_iter()
                    .map(|partition| {
                        let (offset, metadata) = committed(&id, &topic, partition);
                        OffsetFetchResponsePartition::default()
                            .with_partition_index(partition)
                            .with_committed_offset(offset)
                            .with_metadata(metadata)
                    })
                    .collect();
                OffsetFetchResponseTopic::default().with_name(TopicName(text(&topic))).with_partitions(partitions)
            })
            .collect();
        OffsetFetchResponse::default().with_topics(topics)
    }

    /// The Kafka groups this shard coordinates, listed.
    pub(super) fn kafka_local_groups(&self) -> Vec<(String, String, String)> {
        self.coordinator
            .kafka_groups
            .groups
            .borrow()
            .iter()
            .map(|(id, group)| (id.clone(), group.protocol_type.clone(), group.phase.name().to_string()))
            .collect()
    }

    async fn kafka_list_groups(self: &Rc<Self>, version: i16, _body: Bytes) -> ListGroupsResponse {
        let mut listed = self.kafka_local_groups();
        for peer in (0..self.shard_count).map(|p| ShardId(p as u16)).filter(|p| *p != self.id) {
            let (reply, answer) = oneshot::channel();
            if self.send_to(peer, ShardMessage::KafkaListGroups { reply }).await.is_some() {
                listed.extend(answer.await.unwrap_or_default());
            }
        }
        listed.sort();
        let groups = listed
            .into_iter()
            .map(|(id, protocol_type, state)| {
                let mut group =
                    ListedGroup::default().with_group_id(GroupId(text(&id))).with_protocol_type(text(&protocol_type));
                if version >= 4 {
                    group = group.with_group_state(text(&state));
                }
                group
            })
            .collect();
        ListGroupsResponse::default().with_groups(groups)
    }

    async fn kafka_describe_groups(
        self: &Rc<Self>,
        version: i16,
        mut body: Bytes,
    ) -> Result<DescribeGroupsResponse, KafkaGroupError> {
        let request =
            DescribeGroupsRequest::decode(&mut body, version).map_err(KafkaGroupError::UndecodableDescribe)?;
        let mut described = Vec::with_capacity(request.groups.len());
        for group in request.groups {
            let id = group.0.to_string();
            let coordinator = coordinator_of(&id, self.shard_count);
            let one = if coordinator == self.id {
                self.kafka_describe_local(&id)
            } else {
                let (reply, answer) = oneshot::channel();
                match self.send_to(coordinator, ShardMessage::KafkaDescribeGroup { group: id.clone(), reply }).await {
                    Some(()) => answer.await.unwrap_or_else(|_| dead_group(&id)),
                    None => dead_group(&id),
                }
            };
            described.push(one);
        }
        Ok(DescribeGroupsResponse::default().with_groups(described))
    }

    pub(super) fn kafka_describe_local(&self, id: &str) -> DescribedGroup {
        let groups = self.coordinator.kafka_groups.groups.borrow();
        let Some(group) = groups.get(id) else { return dead_group(id) };
        let protocol = group.protocol_name.clone().unwrap_or_default();
        let members = group
            .members
            .iter()
            .map(|(member_id, member)| {
                let metadata =
                    member.protocols.iter().find(|(name, _)| *name == protocol).map(|(_, data)| data.clone());
                DescribedGroupMember::default()
                    .with_member_id(text(member_id))
                    .with_client_id(text(&member.client_id))
                    .with_client_host(text("/127.0.0.1"))
                    .with_member_metadata(metadata.unwrap_or_default())
                    .with_member_assignment(member.assignment.clone())
            })
            .collect();
        DescribedGroup::default()
            .with_group_id(GroupId(text(id)))
            .with_group_state(text(group.phase.name()))
            .with_protocol_type(text(&group.protocol_type))
            .with_protocol_data(text(&protocol))
            .with_members(members)
    }

    pub(super) fn tick_kafka_groups(&self, now: Instant) {
        self.coordinator.kafka_groups.tick(now);
    }
}

fn dead_group(id: &str) -> DescribedGroup {
    DescribedGroup::default().with_group_id(GroupId(text(id))).with_group_state(text("Dead"))
}

fn join_response(version: i16, protocol_type: &StrBytes, result: JoinResult) -> JoinGroupResponse {
    let members = result
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            let mut member = JoinGroupResponseMember::default().with_member_id(text(&id)).with_metadata(metadata);
            if version >= 5 {
                member = member.with_group_instance_id(instance.map(|instance| text(&instance)));
            }
            member
        })
        .collect();
    let mut response = JoinGroupResponse::default()
        .with_error_code(result.error)
        .with_generation_id(result.generation)
        .with_leader(text(&result.leader))
        .with_member_id(text(&result.member_id))
        .with_members(members);
    let name = result.protocol_name.map(|name| text(&name));
    if version >= 7 {
        response = response.with_protocol_type(Some(protocol_type.clone())).with_protocol_name(name);
    } else {
        response = response.with_protocol_name(Some(name.unwrap_or_default()));
    }
    response
}

fn sync_response(
    version: i16,
    protocol: Option<(&String, &Option<String>)>,
    error: i16,
    assignment: Bytes,
) -> SyncGroupResponse {
    let mut response = SyncGroupResponse::default().with_error_code(error).with_assignment(assignment);
    if version >= 5 {
        if let Some((protocol_type, name)) = protocol {
            response = response
                .with_protocol_type(Some(text(protocol_type)))
                .with_protocol_name(name.as_ref().map(|name| text(name)));
        }
    }
    response
}

/// An OffsetCommit answer for every partition of `request`, each with the
/// code `code` gives it (topic, partition).
pub fn commit_response(request: &OffsetCommitRequest, code: impl Fn(&str, i32) -> i16) -> OffsetCommitResponse {
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|partition| {
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(partition.partition_index)
                        .with_error_code(code(topic.name.0.as_str(), partition.partition_index))
                })
                .collect();
            OffsetCommitResponseTopic::default().with_name(topic.name.clone()).with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}
