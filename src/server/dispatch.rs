//! From a decoded request to a response: checks the request's shape and
//! limits, then hands the work to the shard.

use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;

use crate::protocol::acl::Operation;
use crate::protocol::chunks::Chunks;
use crate::protocol::types::AckLevel;
use crate::protocol::wire::{
    AlterAclsRequest, AlterAclsResponse, AlterCredentialsResponse, ConfigValue, DeleteRecordsResponse,
    DescribeAclsResponse, DescribeConfigsResponse, DescribeCredentialsResponse, ErrorCode, ErrorResponse, FetchRequest,
    FetchResponse, ListOffsetsResponse, ProduceRequest, ProduceResponse, ProducerIdentity, Request, Response,
    SaslAuthenticateResponse, TopicConfigs,
};
use crate::shard::topic_config::{ConfigEdit, TopicConfig};
use crate::shard::{AclChange, Counters, ProduceItem, Shard};

use super::access::Access;
use super::limits::Limits;

/// Most partitions one request may name.
const PARTITIONS_PER_REQUEST_MAX: usize = 10_000;
/// Room kept in a fetch response frame for its header: a few dozen bytes
/// per partition, for the most partitions a request may name.
const FETCH_HEADER_ROOM_BYTES: usize = 64 + 64 * PARTITIONS_PER_REQUEST_MAX;

/// The most record bytes one fetch response may carry: what fits a frame
/// next to its header, never less than a quarter of the frame.
pub(super) fn fetch_bytes_max(limits: &Limits) -> usize {
    let frame = limits.max_frame_bytes;
    frame.saturating_sub(FETCH_HEADER_ROOM_BYTES).max(frame / 4)
}

/// Serves one request and counts it by kind and result. `None`: no
/// response is sent (produce with acks none).
pub(super) async fn handle(
    shard: &Rc<Shard>,
    request: Request,
    payload: BytesMut,
    limits: &Limits,
    access: &Access,
) -> Option<(Response, Chunks)> {
    let kind = request.kind();
    let answer = match authorize(shard, access, &request) {
        Ok(()) => serve(shard, request, payload, limits, access).await,
        Err(refusal) => {
            let silent = matches!(&request, Request::Produce(produce) if produce.acks == AckLevel::None);
            let message = refusal.to_string();
            let response = Response::Error(ErrorResponse { code: ErrorCode::NOT_AUTHORIZED, message });
            (!silent).then_some((response, Chunks::new()))
        }
    };
    let code = answer.as_ref().map_or(ErrorCode::NONE, |(response, _)| response.error_code());
    shard.counters().record_request(kind, code);
    answer
}

async fn serve(
    shard: &Rc<Shard>,
    request: Request,
    payload: BytesMut,
    limits: &Limits,
    access: &Access,
) -> Option<(Response, Chunks)> {
    let counters = shard.counters();
    let response = match request {
        Request::SaslAuthenticate(_) => Response::SaslAuthenticate(SaslAuthenticateResponse {
            error: ErrorCode::INVALID_REQUEST,
            message: "already logged in, or this listener requires no login".into(),
            token: Vec::new(),
            done: false,
        }),
        Request::AlterCredentials(request) => {
            Counters::add(&counters.admin_requests, 1);
            let results = shard.alter_credentials(request.upserts, request.deletions).await;
            Response::AlterCredentials(AlterCredentialsResponse { results })
        }
        Request::AlterAcls(request) => {
            Counters::add(&counters.admin_requests, 1);
            Response::AlterAcls(alter_acls(shard, request).await)
        }
        Request::DescribeAcls(filter) => {
            Counters::add(&counters.admin_requests, 1);
            let acls = shard.metadata().acls.iter().filter(|binding| filter.matches(binding)).cloned().collect();
            Response::DescribeAcls(DescribeAclsResponse { error: ErrorCode::NONE, acls })
        }
        Request::DescribeCredentials => {
            Counters::add(&counters.admin_requests, 1);
            let users = shard.describe_credentials(None);
            Response::DescribeCredentials(DescribeCredentialsResponse { error: ErrorCode::NONE, users })
        }
        Request::Ping => {
            Counters::add(&counters.other_requests, 1);
            Response::Pong
        }
        Request::Metadata(request) => {
            Counters::add(&counters.metadata_requests, 1);
            let mut response = shard.metadata_response(request.topics);
            // Topics the principal may not describe are not shown.
            response.topics.retain(|topic| access.topic(shard, Operation::Describe, &topic.name));
            Response::Metadata(response)
        }
        Request::CreateTopic(request) => {
            Counters::add(&counters.admin_requests, 1);
            Response::CreateTopic(shard.create_topic(request.name, request.partitions, TopicConfig::default()).await)
        }
        Request::DeleteTopic(request) => {
            Counters::add(&counters.admin_requests, 1);
            Response::DeleteTopic(shard.delete_topic(request.name).await)
        }
        Request::Produce(request) => {
            Counters::add(&counters.produce_requests, 1);
            let produced = payload.len() as u64;
            let response = produce(shard, request, payload, limits).await;
            // A principal over its produce quota gets its answer later.
            let throttle = access.produce_throttle(produced);
            if !throttle.is_zero() {
                glommio::timer::sleep(throttle).await;
            }
            return response.map(|response| (response, Chunks::new()));
        }
        Request::Fetch(request) => {
            Counters::add(&counters.fetch_requests, 1);
            let (response, data) = fetch(shard, request, limits).await;
            let throttle = access.fetch_throttle(data.len() as u64);
            if !throttle.is_zero() {
                glommio::timer::sleep(throttle).await;
            }
            return Some((response, data));
        }
        Request::ListOffsets(request) => {
            Counters::add(&counters.other_requests, 1);
            if request.partitions.len() > PARTITIONS_PER_REQUEST_MAX {
                too_many_partitions()
            } else {
                Response::ListOffsets(ListOffsetsResponse { partitions: shard.list_offsets(request.partitions).await })
            }
        }
        Request::Stats => {
            Counters::add(&counters.other_requests, 1);
            Response::Stats(shard.stats().await)
        }
        Request::InitProducerId => {
            Counters::add(&counters.other_requests, 1);
            match shard.new_producer_id().await {
                Ok(producer_id) => Response::InitProducerId(ProducerIdentity { producer_id, epoch: 0 }),
                Err(error) => {
                    tracing::warn!(%error, "no producer id could be reserved");
                    Response::Error(ErrorResponse { code: ErrorCode::INTERNAL, message: error.to_string() })
                }
            }
        }
        Request::DescribeConfigs(request) => {
            Counters::add(&counters.admin_requests, 1);
            if request.topics.len() > PARTITIONS_PER_REQUEST_MAX {
                too_many_partitions()
            } else {
                Response::DescribeConfigs(describe_configs(shard, &request.topics))
            }
        }
        Request::AlterConfigs(request) => {
            Counters::add(&counters.admin_requests, 1);
            let edit = ConfigEdit { replace: false, set: request.set, reset: request.reset };
            Response::AlterConfigs(shard.alter_topic_config(request.topic, edit, request.validate_only).await)
        }
        Request::DeleteRecords(request) => {
            Counters::add(&counters.admin_requests, 1);
            if request.partitions.len() > PARTITIONS_PER_REQUEST_MAX {
                too_many_partitions()
            } else {
                Response::DeleteRecords(DeleteRecordsResponse {
                    partitions: shard.delete_records(request.partitions).await,
                })
            }
        }
        group @ (Request::FindCoordinator(_)
        | Request::JoinGroup(_)
        | Request::Heartbeat(_)
        | Request::LeaveGroup(_)
        | Request::CommitOffsets(_)
        | Request::FetchCommitted(_)
        | Request::DescribeGroup(_)
        | Request::ListGroups
        | Request::ResetGroup(_)) => shard.group_request(group).await,
    };
    Some((response, Chunks::new()))
}

/// Adds the bindings, then applies each removal, stopping at the first
/// failure.
async fn alter_acls(shard: &Rc<Shard>, request: AlterAclsRequest) -> AlterAclsResponse {
    let mut removed = Vec::new();
    let changes = std::iter::once(AclChange::Add(request.add))
        .filter(|change| !matches!(change, AclChange::Add(add) if add.is_empty()))
        .chain(request.remove.into_iter().map(AclChange::Delete));
    for change in changes {
        let (result, gone) = shard.change_acls(change).await;
        if !result.error.is_ok() {
            return AlterAclsResponse { error: result.error, message: result.message, removed };
        }
        removed.extend(gone);
    }
    AlterAclsResponse { error: ErrorCode::NONE, message: String::new(), removed }
}

/// What a request may not do; its text is the refusal's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum Refusal {
    #[error("{} on topic {topic} is not allowed", .operation.name())]
    Topic { operation: Operation, topic: String },
    #[error("{} on group {group} is not allowed", .operation.name())]
    Group { operation: Operation, group: String },
    #[error("{} on the cluster is not allowed", .operation.name())]
    Cluster { operation: Operation },
}

/// Whether `access` covers everything `request` does; the refusal says
/// what is missing. A request is refused whole (the native protocol has no
/// per-partition authorization errors).
fn authorize(shard: &Shard, access: &Access, request: &Request) -> Result<(), Refusal> {
    use Operation::*;
    fn each_topic<'a>(
        shard: &Shard,
        access: &Access,
        operation: Operation,
        mut names: impl Iterator<Item = &'a String>,
    ) -> Result<(), Refusal> {
        match names.find(|topic| !access.topic(shard, operation, topic)) {
            Some(topic) => Err(Refusal::Topic { operation, topic: topic.clone() }),
            None => Ok(()),
        }
    }
    let topics =
        |operation: Operation, names: &mut dyn Iterator<Item = &String>| each_topic(shard, access, operation, names);
    let group = |operation: Operation, group: &str| {
        if access.group(shard, operation, group) {
            Ok(())
        } else {
            Err(Refusal::Group { operation, group: group.to_string() })
        }
    };
    let cluster = |operation: Operation| {
        if access.cluster(shard, operation) {
            Ok(())
        } else {
            Err(Refusal::Cluster { operation })
        }
    };
    match request {
        Request::Ping | Request::Metadata(_) | Request::SaslAuthenticate(_) => Ok(()),
        Request::CreateTopic(create) if access.may_create_topic(shard, &create.name) => Ok(()),
        Request::CreateTopic(create) => Err(Refusal::Topic { operation: Create, topic: create.name.clone() }),
        Request::DeleteTopic(delete) => topics(Delete, &mut std::iter::once(&delete.name)),
        Request::Produce(produce) => topics(Write, &mut produce.partitions.iter().map(|p| &p.topic)),
        Request::Fetch(fetch) => topics(Read, &mut fetch.partitions.iter().map(|p| &p.topic)),
        Request::ListOffsets(list) => topics(Describe, &mut list.partitions.iter().map(|p| &p.topic)),
        Request::Stats => cluster(Describe),
        Request::InitProducerId => {
            let metadata = shard.metadata();
            let writes_somewhere = metadata.topics.keys().any(|topic| access.topic(shard, Write, topic));
            if writes_somewhere {
                Ok(())
            } else {
                cluster(IdempotentWrite)
            }
        }
        Request::DescribeConfigs(describe) => topics(DescribeConfigs, &mut describe.topics.iter()),
        Request::AlterConfigs(alter) => topics(AlterConfigs, &mut std::iter::once(&alter.topic)),
        Request::DeleteRecords(delete) => topics(Delete, &mut delete.partitions.iter().map(|p| &p.topic)),
        Request::FindCoordinator(find) => group(Describe, &find.group),
        Request::JoinGroup(join) => group(Read, &join.group),
        Request::Heartbeat(heartbeat) => group(Read, &heartbeat.group),
        Request::LeaveGroup(leave) => group(Read, &leave.group),
        Request::CommitOffsets(commit) => {
            group(Read, &commit.group).and_then(|()| topics(Read, &mut commit.offsets.iter().map(|o| &o.topic)))
        }
        Request::FetchCommitted(fetch) => group(Describe, &fetch.group),
        Request::DescribeGroup(describe) => group(Describe, &describe.group),
        Request::ListGroups => cluster(Describe),
        Request::ResetGroup(reset) => {
            group(Read, &reset.group).and_then(|()| topics(Read, &mut std::iter::once(&reset.topic)))
        }
        Request::AlterCredentials(_) | Request::AlterAcls(_) => cluster(Alter),
        Request::DescribeCredentials | Request::DescribeAcls(_) => cluster(Describe),
    }
}

fn describe_configs(shard: &Rc<Shard>, topics: &[String]) -> DescribeConfigsResponse {
    let topics = shard
        .describe_topic_configs(topics)
        .into_iter()
        .map(|(name, entries)| match entries {
            None => TopicConfigs { name, error: ErrorCode::UNKNOWN_TOPIC_OR_PARTITION, configs: Vec::new() },
            Some(entries) => TopicConfigs {
                name,
                error: ErrorCode::NONE,
                configs: entries
                    .into_iter()
                    .map(|entry| ConfigValue {
                        name: entry.key.name().to_string(),
                        value: entry.value,
                        is_default: entry.is_default,
                    })
                    .collect(),
            },
        })
        .collect();
    DescribeConfigsResponse { topics }
}

async fn produce(
    shard: &Rc<Shard>,
    request: ProduceRequest,
    mut payload: BytesMut,
    limits: &Limits,
) -> Option<Response> {
    let ProduceRequest { acks, timeout_ms, partitions } = request;
    let declared: u64 = partitions.iter().map(|p| u64::from(p.batch_bytes)).sum();
    let problem = if partitions.len() > PARTITIONS_PER_REQUEST_MAX {
        Some(too_many_partitions())
    } else if declared != payload.len() as u64 {
        Some(invalid(format!("the header declares {declared} bytes of batches, the payload holds {}", payload.len())))
    } else {
        None
    };
    if let Some(problem) = problem {
        Counters::add(&shard.counters().errors, 1);
        return (acks != AckLevel::None).then_some(problem);
    }
    let frame_bytes = payload.len();
    let items = partitions
        .into_iter()
        .map(|p| {
            let mut data = payload.split_to(p.batch_bytes as usize);
            // A batch kept in a log's tail cache keeps its whole frame's
            // allocation alive; a small share of a big frame gets its own.
            if data.len() < frame_bytes / 2 {
                data = BytesMut::from(&data[..]);
            }
            ProduceItem { topic: p.topic, partition: p.partition, data }
        })
        .collect();
    let timeout_ms = timeout_ms.min(inner_deadline_ms(limits));
    let started = Instant::now();
    let results = shard.produce(acks, timeout_ms, items).await;
    if acks == AckLevel::None {
        return None;
    }
    shard.counters().record_produce(started.elapsed());
    Some(Response::Produce(ProduceResponse { partitions: results }))
}

async fn fetch(shard: &Rc<Shard>, mut request: FetchRequest, limits: &Limits) -> (Response, Chunks) {
    if request.partitions.len() > PARTITIONS_PER_REQUEST_MAX {
        return (too_many_partitions(), Chunks::new());
    }
    // The response must fit one frame; a long-poll must end before the
    // request deadline does.
    request.max_bytes = request.max_bytes.min(u32::try_from(fetch_bytes_max(limits)).unwrap_or(u32::MAX));
    request.max_wait_ms = request.max_wait_ms.min(inner_deadline_ms(limits));
    let outcome = shard.fetch(request).await;
    (Response::Fetch(FetchResponse { partitions: outcome.results }), outcome.payload)
}

/// A wait a request asks for (long-poll, acks) ends a tenth of the request
/// deadline before it, so the request's own answer beats the deadline's.
pub(super) fn inner_deadline_ms(limits: &Limits) -> u32 {
    let limit = limits.request_timeout.saturating_sub(limits.request_timeout / 10);
    u32::try_from(limit.as_millis()).unwrap_or(u32::MAX)
}

fn too_many_partitions() -> Response {
    invalid(format!("a request may name at most {PARTITIONS_PER_REQUEST_MAX} partitions"))
}

fn invalid(message: String) -> Response {
    Response::Error(ErrorResponse { code: ErrorCode::INVALID_REQUEST, message })
}
