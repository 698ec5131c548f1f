//! The consumer-group coordinator: each group lives on one shard (a stable
//! hash of its name); group requests reaching another shard are forwarded.
//!
//! Membership and assignment are in [`super::groups`]; committed offsets in
//! [`super::offsets`]. A commit is acknowledged only once it is durable.
//! Sessions and hand-over deadlines are judged by the shard's clock
//! ([`super::clock`]), read here and passed in as `now`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;

use crate::protocol::types::{Offset, PartitionId, ShardId};
use crate::protocol::wire::{
    coordinator_of, CommitOffsetsRequest, CommitOffsetsResponse, CommitResult, CommittedOffset, DescribeGroupResponse,
    ErrorCode, FetchCommittedRequest, FetchCommittedResponse, FindCoordinatorResponse, GroupAssignment, GroupListing,
    GroupResult, JoinGroupRequest, ListGroupsResponse, ListOffsetsPartition, OffsetSpec, PartitionLag, Request,
    ResetGroupRequest, ResetTarget, Response,
};
use crate::storage::io::Storage;

use super::groups::{GroupState, JoinOutcome};
use super::kafka_groups::KafkaGroups;
use super::offsets::{OffsetStore, OffsetUpdate};
use super::{Counters, Shard, ShardMessage};

/// Bounds on what members may ask for.
const SESSION_TIMEOUT_MS: std::ops::RangeInclusive<u32> = 500..=300_000;
/// How often sessions and hand-overs are checked (on the real clock; see
/// [`Shard::tick_groups`]).
pub(super) const GROUP_TICK: Duration = Duration::from_millis(100);

/// The coordinator's state: the native and Kafka groups this shard
/// coordinates (bounded, see `GROUPS_MAX`) and the store of their committed
/// offsets, which it owns. Requests reach it through the shard's group
/// entry points, which first route them to the coordinating shard.
#[derive(Debug)]
pub(super) struct GroupCoordinator<S: Storage> {
    /// Native consumer groups.
    pub groups: RefCell<HashMap<String, GroupState>>,
    /// Kafka (classic protocol) groups.
    pub kafka_groups: KafkaGroups,
    /// Committed offsets of both kinds (`None` once closed).
    pub offsets: RefCell<Option<Rc<OffsetStore<S>>>>,
}

impl<S: Storage> GroupCoordinator<S> {
    pub fn new(offsets: OffsetStore<S>) -> GroupCoordinator<S> {
        GroupCoordinator {
            groups: RefCell::new(HashMap::new()),
            kafka_groups: KafkaGroups::default(),
            offsets: RefCell::new(Some(Rc::new(offsets))),
        }
    }

    /// Flushes and closes the offsets store.
    pub async fn close(&self) {
        let offsets = self.offsets.borrow_mut().take();
        if let Some(offsets) = offsets.and_then(|offsets| Rc::try_unwrap(offsets).ok()) {
            offsets.close().await;
        }
    }
}

impl<S: Storage> Shard<S> {
    /// Serves a group request, forwarding it to the coordinating shard.
    pub async fn group_request(self: &Rc<Self>, request: Request) -> Response {
        Counters::add(&self.counters.group_requests, 1);
        if let Request::FindCoordinator(find) = &request {
            let shard = coordinator_of(&find.group, self.shard_count);
            let port = self.shard_ports.get(shard.index()).copied().unwrap_or(0);
            return Response::FindCoordinator(FindCoordinatorResponse { group: find.group.clone(), shard, port });
        }
        if let Request::ListGroups = request {
            return Response::ListGroups(self.list_groups().await);
        }
        let Some(group) = group_of(&request) else {
            return error_response(ErrorCode::INVALID_REQUEST, "not a group request");
        };
        let coordinator = coordinator_of(group, self.shard_count);
        if coordinator == self.id {
            return self.coordinate(request).await;
        }
        let (reply, answer) = oneshot::channel();
        match self.send_to(coordinator, ShardMessage::Group { request, reply }).await {
            Some(()) => {
                answer.await.unwrap_or_else(|_| error_response(ErrorCode::SHUTTING_DOWN, "coordinator stopped"))
            }
            None => error_response(ErrorCode::SHUTTING_DOWN, "coordinator stopped"),
        }
    }

    /// A group request on its coordinating shard.
    pub(super) async fn coordinate(self: &Rc<Self>, request: Request) -> Response {
        let now = self.clock.now();
        match request {
            Request::JoinGroup(join) => Response::JoinGroup(self.join_group(join, now)),
            Request::Heartbeat(heartbeat) => {
                let partitions_of = self.partition_counts();
                let mut groups = self.coordinator.groups.borrow_mut();
                let Some(state) = groups.get_mut(&heartbeat.group) else {
                    return Response::Heartbeat(assignment_error(ErrorCode::UNKNOWN_MEMBER, heartbeat.member_id));
                };
                let before = state.generation;
                let beat = state.heartbeat(&heartbeat.member_id, heartbeat.generation, now, &partitions_of);
                self.count_rebalances(before, state.generation);
                match beat {
                    Ok(()) => Response::Heartbeat(assignment(state, heartbeat.member_id)),
                    Err(code) => Response::Heartbeat(assignment_error(code, heartbeat.member_id)),
                }
            }
            Request::LeaveGroup(leave) => {
                let partitions_of = self.partition_counts();
                let left = self.coordinator.groups.borrow_mut().get_mut(&leave.group).is_some_and(|state| {
                    let before = state.generation;
                    let left = state.leave(&leave.member_id, now, &partitions_of);
                    self.count_rebalances(before, state.generation);
                    left
                });
                let error = if left { ErrorCode::NONE } else { ErrorCode::UNKNOWN_MEMBER };
                Response::LeaveGroup(GroupResult { group: leave.group, error, message: String::new() })
            }
            Request::CommitOffsets(commit) => Response::CommitOffsets(self.commit_offsets(commit).await),
            Request::FetchCommitted(fetch) => Response::FetchCommitted(self.fetch_committed(fetch)),
            Request::DescribeGroup(describe) => Response::DescribeGroup(self.describe_group(describe.group).await),
            Request::ResetGroup(reset) => Response::ResetGroup(self.reset_group(reset).await),
            _ => error_response(ErrorCode::INVALID_REQUEST, "not a group request"),
        }
    }

    fn join_group(&self, join: JoinGroupRequest, now: Instant) -> crate::protocol::wire::GroupAssignment {
        let member = join.member_id.clone().unwrap_or_default();
        if crate::protocol::types::validate_topic_name(&join.group).is_err() {
            return assignment_error(ErrorCode::INVALID_GROUP, member);
        }
        if !SESSION_TIMEOUT_MS.contains(&join.session_timeout_ms) || join.topics.len() > 1024 {
            return assignment_error(ErrorCode::INVALID_REQUEST, member);
        }
        // A Kafka-protocol group of that name is active.
        if self.coordinator.kafka_groups.contains(&join.group) {
            return assignment_error(ErrorCode::INVALID_GROUP, member);
        }
        let partitions_of = self.partition_counts();
        let mut groups = self.coordinator.groups.borrow_mut();
        // Bounded like Kafka groups: a flood of new group names cannot grow
        // the shard's memory without limit (empty groups are forgotten at
        // the next tick, their offsets kept).
        if !groups.contains_key(&join.group) && groups.len() >= super::kafka_groups::GROUPS_MAX {
            return assignment_error(ErrorCode::INVALID_GROUP, member);
        }
        let state = groups.entry(join.group.clone()).or_default();
        let session = Duration::from_millis(u64::from(join.session_timeout_ms));
        let rebalance = Duration::from_millis(u64::from(join.rebalance_timeout_ms.clamp(100, 300_000)));
        let before = state.generation;
        let unique = self.clock.unix_time().as_nanos() as u64;
        let (id, topics) = (join.member_id, join.topics);
        let joined = state.join(&join.group, id, topics, session, rebalance, now, unique, &partitions_of);
        self.count_rebalances(before, state.generation);
        match joined {
            JoinOutcome::Joined(id) => assignment(state, id),
            JoinOutcome::Refused(code) => assignment_error(code, member),
        }
    }

    /// Counts the generations a group went through (each a rebalance).
    fn count_rebalances(&self, before: u32, after: u32) {
        Counters::add(&self.counters.rebalances, u64::from(after.wrapping_sub(before)));
    }

    async fn commit_offsets(self: &Rc<Self>, commit: CommitOffsetsRequest) -> CommitOffsetsResponse {
        let CommitOffsetsRequest { group, member_id, generation, offsets } = commit;
        let checked = match self.coordinator.groups.borrow().get(&group) {
            Some(state) if state.is_member(&member_id) => Ok(offsets
                .iter()
                .map(|o| state.check_commit(&member_id, generation, &o.topic, o.partition.0))
                .collect::<Vec<_>>()),
            _ => Err(ErrorCode::UNKNOWN_MEMBER),
        };
        let allowed = match checked {
            Ok(allowed) => allowed,
            Err(error) => return CommitOffsetsResponse { error, partitions: Vec::new() },
        };
        let Some(store) = self.coordinator.offsets.borrow().clone() else {
            return CommitOffsetsResponse { error: ErrorCode::SHUTTING_DOWN, partitions: Vec::new() };
        };
        // Never past the end of the log.
        let ends = self.log_ends(offsets.iter().map(|o| (o.topic.clone(), o.partition))).await;
        let mut results = Vec::with_capacity(offsets.len());
        let mut updates = Vec::new();
        for ((commit, allowed), end) in offsets.into_iter().zip(allowed).zip(ends) {
            let previous = store.get(&group, &commit.topic, commit.partition.0).map(|c| c.offset);
            let in_range = end.is_some_and(|end| commit.offset <= end) && previous.is_none_or(|p| commit.offset >= p);
            let error = match allowed {
                Err(error) => error,
                Ok(()) if in_range => ErrorCode::NONE,
                Ok(()) => ErrorCode::INVALID_COMMIT,
            };
            let valid = error == ErrorCode::NONE;
            results.push(CommitResult { topic: commit.topic.clone(), partition: commit.partition, error });
            if valid && previous != Some(commit.offset) {
                let (topic, partition, offset, metadata) =
                    (commit.topic, commit.partition.0, commit.offset, commit.metadata);
                updates.push(OffsetUpdate { topic, partition, offset, metadata });
            }
        }
        // Real time: a latency the metrics report.
        let started = Instant::now();
        if let Err(error) = store.commit(&group, updates).await {
            tracing::warn!(%group, %error, "committing offsets failed");
            let code = super::error_code(&error);
            for result in results.iter_mut().filter(|r| r.error.is_ok()) {
                result.error = code;
            }
        }
        self.counters.record_commit(started.elapsed());
        CommitOffsetsResponse { error: ErrorCode::NONE, partitions: results }
    }

    fn fetch_committed(&self, fetch: FetchCommittedRequest) -> FetchCommittedResponse {
        let Some(store) = self.coordinator.offsets.borrow().clone() else {
            return FetchCommittedResponse { error: ErrorCode::SHUTTING_DOWN, offsets: Vec::new() };
        };
        let offsets = match fetch.partitions {
            Some(wanted) => wanted
                .into_iter()
                .flat_map(|t| t.partitions.into_iter().map(move |p| (t.topic.clone(), p)))
                .map(|(topic, partition)| {
                    let committed = store.get(&fetch.group, &topic, partition.0);
                    CommittedOffset {
                        offset: committed.as_ref().map(|c| c.offset),
                        metadata: committed.map(|c| c.metadata).unwrap_or_default(),
                        topic,
                        partition,
                    }
                })
                .collect(),
            None => store
                .group(&fetch.group)
                .into_iter()
                .map(|((topic, partition), c)| CommittedOffset {
                    topic,
                    partition: PartitionId(partition),
                    offset: Some(c.offset),
                    metadata: c.metadata,
                })
                .collect(),
        };
        FetchCommittedResponse { error: ErrorCode::NONE, offsets }
    }

    async fn describe_group(self: &Rc<Self>, group: String) -> DescribeGroupResponse {
        let partitions_of = self.partition_counts();
        let (state, generation, members, mut keys) = match self.coordinator.groups.borrow().get(&group) {
            Some(state) => (
                state.state_name().to_string(),
                state.generation,
                state.describe_members(),
                state.subscribed_partitions(&partitions_of),
            ),
            None => ("empty".to_string(), 0, Vec::new(), Default::default()),
        };
        let store = self.coordinator.offsets.borrow().clone();
        let committed = store.as_ref().map(|store| store.group(&group)).unwrap_or_default();
        // No members and no committed offsets: nothing to describe, whatever
        // the coordinator still remembers until its next tick.
        if members.is_empty() && committed.is_empty() {
            let unknown = ErrorCode::UNKNOWN_GROUP;
            return DescribeGroupResponse { group, error: unknown, state, generation, members, offsets: Vec::new() };
        }
        keys.extend(committed.into_iter().map(|(key, _)| key));
        let ends = self.log_ends(keys.iter().map(|(topic, partition)| (topic.clone(), PartitionId(*partition)))).await;
        let offsets = keys
            .into_iter()
            .zip(ends)
            .map(|((topic, partition), log_end)| {
                let committed = store.as_ref().and_then(|s| s.get(&group, &topic, partition)).map(|c| c.offset);
                let lag = lag_of(committed, log_end);
                PartitionLag { topic, partition: PartitionId(partition), committed, log_end, lag }
            })
            .collect();
        DescribeGroupResponse { group, error: ErrorCode::NONE, state, generation, members, offsets }
    }

    async fn reset_group(self: &Rc<Self>, reset: ResetGroupRequest) -> GroupResult {
        let ResetGroupRequest { group, topic, to } = reset;
        let result = |error: ErrorCode, message: String| GroupResult { group: group.clone(), error, message };
        if self.coordinator.groups.borrow().get(&group).is_some_and(|state| !state.is_empty()) {
            return result(ErrorCode::GROUP_NOT_EMPTY, format!("group {group} has members; stop them first"));
        }
        let Some(count) = self.metadata().topics.get(&topic).map(|t| t.owners.len() as u32) else {
            return result(ErrorCode::UNKNOWN_TOPIC_OR_PARTITION, format!("topic {topic} does not exist"));
        };
        let spec = match to {
            ResetTarget::Earliest => OffsetSpec::Earliest,
            ResetTarget::Latest | ResetTarget::Offset(_) => OffsetSpec::Latest,
        };
        let requests =
            (0..count).map(|p| ListOffsetsPartition { topic: topic.clone(), partition: PartitionId(p), spec });
        let answers = self.list_offsets(requests.collect()).await;
        let mut updates = Vec::new();
        for answer in answers {
            let Some(bound) = answer.offset.filter(|_| answer.error.is_ok()) else {
                return result(answer.error, format!("partition {} is unavailable", answer.partition));
            };
            let offset = match to {
                ResetTarget::Offset(offset) if offset > bound => {
                    return result(
                        ErrorCode::INVALID_COMMIT,
                        format!("offset {offset} is past the end ({bound}) of partition {}", answer.partition),
                    );
                }
                ResetTarget::Offset(offset) => offset,
                _ => bound,
            };
            updates.push(OffsetUpdate {
                topic: topic.clone(),
                partition: answer.partition.0,
                offset,
                metadata: "reset".into(),
            });
        }
        let Some(store) = self.coordinator.offsets.borrow().clone() else {
            return result(ErrorCode::SHUTTING_DOWN, String::new());
        };
        match store.commit(&group, updates).await {
            Ok(()) => result(ErrorCode::NONE, String::new()),
            Err(error) => result(super::error_code(&error), error.to_string()),
        }
    }

    /// Groups of every shard.
    pub async fn list_groups(self: &Rc<Self>) -> ListGroupsResponse {
        let mut groups = self.local_groups();
        for peer in (0..self.shard_count).map(|p| ShardId(p as u16)).filter(|p| *p != self.id) {
            let (reply, answer) = oneshot::channel();
            if self.send_to(peer, ShardMessage::ListGroups { reply }).await.is_some() {
                groups.extend(answer.await.unwrap_or_default());
            }
        }
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        ListGroupsResponse { groups }
    }

    pub(super) fn local_groups(&self) -> Vec<GroupListing> {
        let mut listing: std::collections::BTreeMap<String, GroupListing> = std::collections::BTreeMap::new();
        if let Some(store) = self.coordinator.offsets.borrow().as_ref() {
            for group in store.groups() {
                let entry =
                    GroupListing { group: group.clone(), coordinator: self.id, state: "empty".into(), members: 0 };
                listing.insert(group, entry);
            }
        }
        for (group, state) in self.coordinator.groups.borrow().iter() {
            let entry = GroupListing {
                group: group.clone(),
                coordinator: self.id,
                state: state.state_name().to_string(),
                members: state.member_count() as u32,
            };
            listing.insert(group.clone(), entry);
        }
        listing.into_values().collect()
    }

    /// Expires silent members and overdue hand-overs of every native group
    /// here, as of `now`.
    pub(super) fn tick_native_groups(&self, now: Instant) {
        let partitions_of = self.partition_counts();
        let mut groups = self.coordinator.groups.borrow_mut();
        for state in groups.values_mut() {
            let before = state.generation;
            state.expire(now, &partitions_of);
            self.count_rebalances(before, state.generation);
        }
        // Forget empty groups; their offsets stay in the offset store.
        groups.retain(|_, state| !state.is_empty());
    }

    /// The visible end of each partition (`None`: unknown or unavailable).
    async fn log_ends(self: &Rc<Self>, partitions: impl Iterator<Item = (String, PartitionId)>) -> Vec<Option<Offset>> {
        let requests: Vec<_> = partitions
            .map(|(topic, partition)| ListOffsetsPartition { topic, partition, spec: OffsetSpec::Latest })
            .collect();
        self.list_offsets(requests)
            .await
            .into_iter()
            .map(|answer| answer.offset.filter(|_| answer.error.is_ok()))
            .collect()
    }

    /// Partition counts of topics, from this shard's metadata copy.
    fn partition_counts(&self) -> impl Fn(&str) -> Option<u32> {
        let metadata = self.metadata();
        move |topic: &str| metadata.topics.get(topic).map(|t| t.owners.len() as u32)
    }
}

/// How far a group is behind a partition's end. `None` when the end is
/// unknown, or when the committed offset is past it (a misleading 0 would
/// hide that the group would skip whatever is produced next).
fn lag_of(committed: Option<Offset>, log_end: Option<Offset>) -> Option<u64> {
    let end = log_end?;
    match committed {
        Some(committed) if committed > end => None,
        committed => Some(end.distance_from(committed.unwrap_or(Offset::ZERO))),
    }
}

fn group_of(request: &Request) -> Option<&str> {
    Some(match request {
        Request::JoinGroup(r) => &r.group,
        Request::Heartbeat(r) => &r.group,
        Request::LeaveGroup(r) => &r.group,
        Request::CommitOffsets(r) => &r.group,
        Request::FetchCommitted(r) => &r.group,
        Request::DescribeGroup(r) => &r.group,
        Request::ResetGroup(r) => &r.group,
        _ => return None,
    })
}

fn assignment(state: &GroupState, member_id: String) -> GroupAssignment {
    GroupAssignment {
        error: ErrorCode::NONE,
        generation: state.generation,
        assignment: state.assignment_of(&member_id),
        rebalancing: state.member_rebalancing(&member_id),
        member_id,
    }
}

fn assignment_error(error: ErrorCode, member_id: String) -> GroupAssignment {
    GroupAssignment { error, member_id, generation: 0, assignment: Vec::new(), rebalancing: false }
}

fn error_response(code: ErrorCode, message: &str) -> Response {
    Response::Error(crate::protocol::wire::ErrorResponse { code, message: message.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_unknown_rather_than_zero_past_the_log_end() {
        let offset = |value| Offset::new(value);
        assert_eq!(lag_of(offset(3), offset(10)), Some(7));
        assert_eq!(lag_of(None, offset(10)), Some(10), "nothing committed: the whole partition");
        assert_eq!(lag_of(offset(10), offset(10)), Some(0));
        assert_eq!(lag_of(offset(12), offset(10)), None, "committed past the end");
        assert_eq!(lag_of(offset(3), None), None, "end unknown");
    }

    /// The seam end to end: a shard on a manual clock expires a member when
    /// the clock passes its session timeout, and not a nanosecond before.
    #[test]
    fn a_member_expires_when_the_shards_manual_clock_passes_its_session_timeout() {
        use crate::protocol::wire::HeartbeatRequest;
        use crate::shard::clock::ManualClock;
        use crate::storage::sim::SimStorage;

        const SESSION: Duration = Duration::from_millis(1000);
        let beats = crate::runtime::test_executor().run(async {
            let dir = tempfile::tempdir().unwrap();
            let clock = ManualClock::new();
            let config = super::super::ShardConfig {
                id: ShardId(0),
                shard_count: 1,
                data_dir: dir.path().to_path_buf(),
                log_config: crate::storage::LogConfig { preallocate: false, ..Default::default() },
                default_partitions: 1,
                partitions_max: 10,
                free_bytes_reserved: 0,
                inflated_bytes_max: 1 << 20,
                retention_check_interval: Duration::from_secs(3600),
                metadata: Default::default(),
                shard_ports: vec![0],
                flush_shares: None,
                offsets_compact_after_bytes: super::super::offsets::COMPACT_AFTER_BYTES,
                clock: clock.clone().into(),
            };
            let mesh = super::super::mesh::build(1, 16).pop().unwrap();
            let shard = Shard::start_on(SimStorage::new(), config, mesh).await.unwrap();
            let join = JoinGroupRequest {
                group: "g".into(),
                member_id: None,
                topics: Vec::new(),
                session_timeout_ms: SESSION.as_millis() as u32,
                rebalance_timeout_ms: 1000,
            };
            let Response::JoinGroup(joined) = shard.group_request(Request::JoinGroup(join)).await else {
                panic!("a join answered with something else")
            };
            assert!(joined.error.is_ok(), "{:?}", joined.error);
            let mut beats = Vec::new();
            // Each step moves the clock, ticks the groups (as the
            // simulation does) and heartbeats. Since the last heartbeat:
            // a nanosecond short of the session, twice; the whole session.
            let short = SESSION - Duration::from_nanos(1);
            for step in [short, short, SESSION] {
                clock.advance(step);
                shard.tick_groups();
                let (member_id, generation) = (joined.member_id.clone(), joined.generation);
                let heartbeat = HeartbeatRequest { group: "g".into(), member_id, generation };
                let Response::Heartbeat(beat) = shard.group_request(Request::Heartbeat(heartbeat)).await else {
                    panic!("a heartbeat answered with something else")
                };
                beats.push(beat.error);
            }
            shard.close().await;
            beats
        });
        assert_eq!(beats, [ErrorCode::NONE, ErrorCode::NONE, ErrorCode::UNKNOWN_MEMBER]);
    }
}
