//! ACL checks of Kafka's group APIs at the front door, before a request
//! goes to the group's coordinator: Read on the group to take part in it
//! (JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit, with Read on
//! the topics committed), Describe to look at it (OffsetFetch,
//! DescribeGroups, ListGroups). A refusal is answered in the API's own form
//! with GROUP_AUTHORIZATION_FAILED or TOPIC_AUTHORIZATION_FAILED.

use bytes::Bytes;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::offset_commit_response::OffsetCommitResponseTopic;
use kafka_protocol::messages::offset_fetch_response::OffsetFetchResponseGroup;
use kafka_protocol::messages::{
    ApiKey, DescribeGroupsRequest, DescribeGroupsResponse, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, OffsetCommitRequest, OffsetCommitResponse,
    OffsetFetchRequest, OffsetFetchResponse, ResponseKind, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::protocol::acl::Operation;
use crate::shard::kafka_groups::commit_response;
use crate::shard::Shard;

use super::access::Access;
use super::kafka_codes::codes;

/// What the front door does with a group request.
pub(super) enum GroupGate {
    /// Send it to the coordinator as it is.
    Serve,
    /// Refused: answer this.
    Answer(Box<ResponseKind>),
    /// DescribeGroups naming groups the principal may not describe: send
    /// this body (without them), then add them to the answer as refused.
    WithoutGroups(Bytes, Vec<String>),
    /// OffsetCommit with topics the principal may not read: send this body
    /// (without them), then add their refusals to the answer.
    WithoutTopics(Bytes, Vec<OffsetCommitResponseTopic>),
    /// ListGroups: keep only the groups the principal may describe.
    FilterListing,
}

fn decoded<T: Decodable>(body: &Bytes, version: i16) -> Option<T> {
    T::decode(&mut body.clone(), version).ok()
}

/// Decides what happens to a group request. A body that does not decode
/// goes on to the coordinator, which refuses it in its own way.
pub(super) fn gate(shard: &Shard, access: &Access, api_key: ApiKey, version: i16, body: &Bytes) -> GroupGate {
    let may = |operation: Operation, group: &str| access.group(shard, operation, group);
    let refuse = |response: ResponseKind| GroupGate::Answer(Box::new(response));
    let failed = codes::GROUP_AUTHORIZATION_FAILED;
    match api_key {
        ApiKey::JoinGroup => match decoded::<JoinGroupRequest>(body, version) {
            Some(request) if !may(Operation::Read, &request.group_id) => {
                refuse(ResponseKind::JoinGroup(JoinGroupResponse::default().with_error_code(failed)))
            }
            _ => GroupGate::Serve,
        },
        ApiKey::SyncGroup => match decoded::<SyncGroupRequest>(body, version) {
            Some(request) if !may(Operation::Read, &request.group_id) => {
                refuse(ResponseKind::SyncGroup(SyncGroupResponse::default().with_error_code(failed)))
            }
            _ => GroupGate::Serve,
        },
        ApiKey::Heartbeat => match decoded::<HeartbeatRequest>(body, version) {
            Some(request) if !may(Operation::Read, &request.group_id) => {
                refuse(ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(failed)))
            }
            _ => GroupGate::Serve,
        },
        ApiKey::LeaveGroup => match decoded::<LeaveGroupRequest>(body, version) {
            Some(request) if !may(Operation::Read, &request.group_id) => {
                refuse(ResponseKind::LeaveGroup(LeaveGroupResponse::default().with_error_code(failed)))
            }
            _ => GroupGate::Serve,
        },
        ApiKey::OffsetCommit => match decoded::<OffsetCommitRequest>(body, version) {
            Some(mut request) => {
                let group_ok = may(Operation::Read, &request.group_id);
                let readable = |name: &str| group_ok && access.topic(shard, Operation::Read, name);
                if request.topics.iter().all(|topic| readable(topic.name.as_str())) {
                    return GroupGate::Serve;
                }
                let code = if group_ok { codes::TOPIC_AUTHORIZATION_FAILED } else { failed };
                let mut refused_topics = request.clone();
                refused_topics.topics.retain(|topic| !readable(topic.name.as_str()));
                let refused = commit_response(&refused_topics, |_, _| code).topics;
                request.topics.retain(|topic| readable(topic.name.as_str()));
                if request.topics.is_empty() {
                    return refuse(ResponseKind::OffsetCommit(OffsetCommitResponse::default().with_topics(refused)));
                }
                let mut rewritten = bytes::BytesMut::new();
                match request.encode(&mut rewritten, version) {
                    Ok(()) => GroupGate::WithoutTopics(rewritten.freeze(), refused),
                    Err(_) => GroupGate::Serve,
                }
            }
            None => GroupGate::Serve,
        },
        ApiKey::OffsetFetch => match decoded::<OffsetFetchRequest>(body, version) {
            Some(request) if version >= 8 => {
                if request.groups.iter().all(|group| may(Operation::Describe, &group.group_id)) {
                    return GroupGate::Serve;
                }
                // Refused whole; each group says whether it was the cause.
                let groups = request
                    .groups
                    .iter()
                    .map(|group| {
                        let code = if may(Operation::Describe, &group.group_id) { codes::NONE } else { failed };
                        OffsetFetchResponseGroup::default().with_group_id(group.group_id.clone()).with_error_code(code)
                    })
                    .collect();
                refuse(ResponseKind::OffsetFetch(OffsetFetchResponse::default().with_groups(groups)))
            }
            Some(request) if !may(Operation::Describe, &request.group_id) => {
                refuse(ResponseKind::OffsetFetch(OffsetFetchResponse::default().with_error_code(failed)))
            }
            _ => GroupGate::Serve,
        },
        ApiKey::DescribeGroups => match decoded::<DescribeGroupsRequest>(body, version) {
            Some(mut request) => {
                let refused: Vec<String> = request
                    .groups
                    .iter()
                    .filter(|group| !may(Operation::Describe, group))
                    .map(|group| group.to_string())
                    .collect();
                if refused.is_empty() {
                    return GroupGate::Serve;
                }
                request.groups.retain(|group| may(Operation::Describe, group));
                let mut rewritten = bytes::BytesMut::new();
                match request.encode(&mut rewritten, version) {
                    Ok(()) => GroupGate::WithoutGroups(rewritten.freeze(), refused),
                    Err(_) => refuse(ResponseKind::DescribeGroups(described_refused(
                        DescribeGroupsResponse::default(),
                        refused,
                    ))),
                }
            }
            None => GroupGate::Serve,
        },
        ApiKey::ListGroups => GroupGate::FilterListing,
        _ => GroupGate::Serve,
    }
}

/// The coordinator's answer, with what the gate held back put in.
pub(super) fn finish(shard: &Shard, access: &Access, gate: GroupGate, response: ResponseKind) -> ResponseKind {
    match (gate, response) {
        (GroupGate::WithoutGroups(_, refused), ResponseKind::DescribeGroups(described)) => {
            ResponseKind::DescribeGroups(described_refused(described, refused))
        }
        (GroupGate::WithoutTopics(_, refused), ResponseKind::OffsetCommit(mut committed)) => {
            committed.topics.extend(refused);
            ResponseKind::OffsetCommit(committed)
        }
        (GroupGate::FilterListing, ResponseKind::ListGroups(mut listed)) => {
            listed.groups.retain(|group| access.group(shard, Operation::Describe, &group.group_id));
            ResponseKind::ListGroups(listed)
        }
        (_, response) => response,
    }
}

fn described_refused(mut response: DescribeGroupsResponse, refused: Vec<String>) -> DescribeGroupsResponse {
    for group in refused {
        response.groups.push(
            DescribedGroup::default()
                .with_group_id(kafka_protocol::messages::GroupId(kafka_protocol::protocol::StrBytes::from_string(
                    group,
                )))
                .with_error_code(codes::GROUP_AUTHORIZATION_FAILED),
        );
    }
    response
}
